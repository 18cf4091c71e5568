//! A shared object is checked to be whole before dlopen sees it.  glibc
//! maps each PT_LOAD segment of the file as its program header says; a
//! segment that extends past the end of a truncated file (an interrupted
//! copy, a full disk) is mapped all the same, and the loader's first touch
//! of the missing pages (relocation, in the server's own code) raises
//! SIGBUS: the server process dies with every request in it.  Reading the
//! ELF and program headers (two preads, at load only) turns that into a
//! "not a loadable shared object" 500 like any other bad file.

use std::os::fd::{AsRawFd, BorrowedFd};

const PT_LOAD: u32 = 1;

fn pread(fd: BorrowedFd<'_>, buf: &mut [u8], off: u64) -> Result<(), String> {
    // SAFETY: `buf` is a valid, writable buffer of the length given.
    let n = unsafe { libc::pread(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), off as libc::off_t) };
    if n == buf.len() as isize {
        Ok(())
    } else {
        Err(format!("truncated: the file ends inside its ELF headers (at byte {})", off + n.max(0) as u64))
    }
}

fn u16_at(b: &[u8], i: usize) -> u64 {
    u16::from_le_bytes([b[i], b[i + 1]]) as u64
}
fn u32_at(b: &[u8], i: usize) -> u32 {
    u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]])
}
fn u64_at(b: &[u8], i: usize) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&b[i..i + 8]);
    u64::from_le_bytes(w)
}

/// Ok when every loadable segment lies within the file.  Anything that is
/// not a 64-bit little-endian ELF file is left to dlopen, whose own message
/// ("invalid ELF header", "file too short") is the right one.
pub fn whole(fd: BorrowedFd<'_>) -> Result<(), String> {
    // SAFETY: fstat on our own descriptor into a zeroed struct.
    let size = unsafe {
        let mut st: libc::stat = std::mem::zeroed();
        if libc::fstat(fd.as_raw_fd(), &mut st) != 0 {
            return Err(format!("cannot stat: {}", std::io::Error::last_os_error()));
        }
        st.st_size as u64
    };
    let mut eh = [0u8; 64];
    if size < 64 || pread(fd, &mut eh, 0).is_err() || &eh[..4] != b"\x7fELF" || eh[4] != 2 || eh[5] != 1 {
        return Ok(());
    }
    let (phoff, phentsize, phnum) = (u64_at(&eh, 32), u16_at(&eh, 54), u16_at(&eh, 56));
    if phentsize < 56 || phnum == 0 || phnum > 4096 {
        return Err(format!("bad ELF program header table ({phnum} entries of {phentsize} bytes)"));
    }
    let mut ph = vec![0u8; (phentsize * phnum) as usize];
    if phoff.checked_add(ph.len() as u64).is_none_or(|end| end > size) {
        return Err(format!("truncated: the program headers end past the end of the file ({size} bytes)"));
    }
    pread(fd, &mut ph, phoff)?;
    for e in ph.chunks_exact(phentsize as usize) {
        if u32_at(e, 0) != PT_LOAD {
            continue;
        }
        let (off, filesz) = (u64_at(e, 8), u64_at(e, 32));
        match off.checked_add(filesz) {
            Some(end) if end <= size => {}
            _ => {
                return Err(format!(
                    "truncated: a loadable segment ends at byte {}, the file has {size}",
                    off.saturating_add(filesz)
                ))
            }
        }
    }
    Ok(())
}
