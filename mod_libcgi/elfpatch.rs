//! Re-points a loaded script's own imports (its GOT and data relocations) at
//! functions of ours.
//!
//! Why: the CGI contract says a script reads its variables with plain
//! `getenv()`, but the process has one `environ` and a threaded MPM runs many
//! requests at once.  Rather than touching `environ`, each script's references
//! to getenv & co. are bound to per-request implementations right after
//! `dlopen` (RTLD_NOW has resolved them all by then) and before `initfunc`.
//!
//! Covered: calls through the PLT (R_*_JUMP_SLOT), `-fno-plt` and `&getenv`
//! (R_*_GLOB_DAT, in RELRO under `-z relro`/`-z now`), and function pointers
//! stored in data (R_X86_64_64 / R_AARCH64_ABS64).  Not covered, by
//! construction: calls made from inside other libraries the script links
//! against, `dlsym(RTLD_DEFAULT, "getenv")`, and direct reads of `environ`.

use std::ffi::{c_int, c_void, CStr};

#[repr(C)]
struct Dyn {
    tag: i64,
    val: u64,
}

#[repr(C)]
struct Rela {
    offset: u64,
    info: u64,
    addend: i64,
}

#[repr(C)]
struct Sym {
    name: u32,
    info: u8,
    other: u8,
    shndx: u16,
    value: u64,
    size: u64,
}

const DT_NULL: i64 = 0;
const DT_PLTRELSZ: i64 = 2;
const DT_STRTAB: i64 = 5;
const DT_SYMTAB: i64 = 6;
const DT_RELA: i64 = 7;
const DT_RELASZ: i64 = 8;
const DT_JMPREL: i64 = 23;

#[cfg(target_arch = "x86_64")]
mod reloc {
    pub const ABS64: u32 = 1; // R_X86_64_64
    pub const GLOB_DAT: u32 = 6;
    pub const JUMP_SLOT: u32 = 7;
}
#[cfg(target_arch = "aarch64")]
mod reloc {
    pub const ABS64: u32 = 257; // R_AARCH64_ABS64
    pub const GLOB_DAT: u32 = 1025;
    pub const JUMP_SLOT: u32 = 1026;
}
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
compile_error!("mod_libcgi patches ELF relocations for x86_64 and aarch64 only");

/// Where one loaded object lives: its load bias and program headers.
struct Object {
    base: usize,
    phdr: *const libc::Elf64_Phdr,
    phnum: usize,
}

struct Find {
    addr: usize,
    found: Option<Object>,
}

unsafe extern "C" fn find_cb(info: *mut libc::dl_phdr_info, _size: usize, data: *mut c_void) -> c_int {
    let find = &mut *(data as *mut Find);
    let info = &*info;
    let base = info.dlpi_addr as usize;
    for i in 0..info.dlpi_phnum as usize {
        let ph = &*info.dlpi_phdr.add(i);
        if ph.p_type == libc::PT_LOAD {
            let start = base + ph.p_vaddr as usize;
            if find.addr >= start && find.addr < start + ph.p_memsz as usize {
                find.found = Some(Object { base, phdr: info.dlpi_phdr, phnum: info.dlpi_phnum as usize });
                return 1;
            }
        }
    }
    0
}

fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    unsafe { libc::sysconf(libc::_SC_PAGESIZE) as usize }
}

/// Rewrites, in the object that contains `inside` (any address of the
/// script, e.g. its processfunc), every relocation against an *undefined*
/// symbol named in `table` so that it points at the paired address.
/// Returns how many places were rewritten.
///
/// # Safety
/// `inside` is an address in a loaded object that no other thread is using
/// yet (called right after dlopen, before the script's first function runs).
pub unsafe fn patch_imports(inside: usize, table: &[(&CStr, usize)]) -> Result<usize, String> {
    let mut find = Find { addr: inside, found: None };
    libc::dl_iterate_phdr(Some(find_cb), &mut find as *mut Find as *mut c_void);
    let obj = find.found.ok_or("the loaded object was not found among the process's objects")?;
    let phdrs = std::slice::from_raw_parts(obj.phdr, obj.phnum);

    let dynamic = phdrs
        .iter()
        .find(|p| p.p_type == libc::PT_DYNAMIC)
        .map(|p| (obj.base + p.p_vaddr as usize) as *const Dyn)
        .ok_or("the object has no dynamic section")?;
    // glibc relocates these d_ptr values in place on most targets but not on
    // all; a value below the load bias is still a link-time address.
    let abs = |v: u64| -> usize {
        let v = v as usize;
        if v < obj.base {
            obj.base + v
        } else {
            v
        }
    };
    let (mut symtab, mut strtab, mut rela, mut relasz, mut jmprel, mut pltrelsz) = (0, 0, 0, 0, 0, 0);
    let mut d = dynamic;
    while (*d).tag != DT_NULL {
        match (*d).tag {
            DT_SYMTAB => symtab = abs((*d).val),
            DT_STRTAB => strtab = abs((*d).val),
            DT_RELA => rela = abs((*d).val),
            DT_RELASZ => relasz = (*d).val as usize,
            DT_JMPREL => jmprel = abs((*d).val),
            DT_PLTRELSZ => pltrelsz = (*d).val as usize,
            _ => {}
        }
        d = d.add(1);
    }
    if symtab == 0 || strtab == 0 {
        return Err("the object has no dynamic symbol table".into());
    }

    // RELRO as glibc protects it: whole pages only, the partial last page
    // stays writable.  Outside RELRO only writable segments may be written.
    let page = page_size();
    let relro = phdrs.iter().find(|p| p.p_type == libc::PT_GNU_RELRO).map(|p| {
        let start = obj.base + p.p_vaddr as usize;
        (start & !(page - 1), (start + p.p_memsz as usize) & !(page - 1))
    });
    let writable = |a: usize| {
        phdrs.iter().any(|p| {
            let s = obj.base + p.p_vaddr as usize;
            p.p_type == libc::PT_LOAD && p.p_flags & libc::PF_W != 0 && a >= s && a + 8 <= s + p.p_memsz as usize
        })
    };

    let mut patched = 0;
    for (start, size) in [(rela, relasz), (jmprel, pltrelsz)] {
        if start == 0 {
            continue;
        }
        let relas = std::slice::from_raw_parts(start as *const Rela, size / std::mem::size_of::<Rela>());
        for r in relas {
            let (sym_idx, rtype) = ((r.info >> 32) as usize, (r.info & 0xffff_ffff) as u32);
            if sym_idx == 0 || !matches!(rtype, reloc::ABS64 | reloc::GLOB_DAT | reloc::JUMP_SLOT) {
                continue;
            }
            let sym = &*(symtab as *const Sym).add(sym_idx);
            if sym.shndx != 0 {
                // The script defines this name itself: its own wins.
                continue;
            }
            let name = CStr::from_ptr((strtab + sym.name as usize) as *const libc::c_char);
            let Some(&(_, target)) = table.iter().find(|(n, _)| *n == name) else {
                continue;
            };
            let value = if rtype == reloc::ABS64 { target.wrapping_add(r.addend as usize) } else { target };
            let at = obj.base + r.offset as usize;
            let in_relro = relro.is_some_and(|(s, e)| at >= s && at < e);
            if in_relro {
                let pg = (at & !(page - 1)) as *mut c_void;
                if libc::mprotect(pg, page, libc::PROT_READ | libc::PROT_WRITE) != 0 {
                    return Err(format!("mprotect: {}", std::io::Error::last_os_error()));
                }
                std::ptr::write_volatile(at as *mut usize, value);
                libc::mprotect(pg, page, libc::PROT_READ);
            } else if writable(at) {
                std::ptr::write_volatile(at as *mut usize, value);
            } else {
                return Err(format!("relocation for {name:?} at {at:#x} is in no writable segment"));
            }
            patched += 1;
        }
    }
    Ok(patched)
}
