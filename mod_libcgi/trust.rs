//! Whether a script file may be loaded at all.
//!
//! Loading a script hands it the server's address space: whoever can write
//! the file, or replace it in its directory, owns the server.  So a script
//! must be owned by root (or the LibCGIOwner user), writable by nobody else,
//! sit in directories nobody else can write to, and, once symlinks are
//! resolved, lie inside the directory the configuration serves it from.

use crate::config::Settings;
use crate::sys;
use std::ffi::{CStr, CString};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

fn stat_path(p: &Path) -> Result<libc::stat, String> {
    let c = CString::new(p.as_os_str().as_encoded_bytes()).map_err(|_| "bad path".to_string())?;
    // SAFETY: stat into a zeroed struct we own.
    unsafe {
        let mut st: libc::stat = std::mem::zeroed();
        if libc::stat(c.as_ptr(), &mut st) != 0 {
            return Err(format!("cannot stat {}: {}", p.display(), std::io::Error::last_os_error()));
        }
        Ok(st)
    }
}

fn owner_ok(uid: u32, cfg: &Settings) -> bool {
    uid == 0 || cfg.owner_uid == Some(uid)
}

fn owner_rule(cfg: &Settings) -> String {
    match cfg.owner_uid {
        Some(u) => format!("root or uid {u} (LibCGIOwner)"),
        None => "root (or the user set by LibCGIOwner)".into(),
    }
}

/// The directory the handler is configured for: the innermost <Directory>
/// that applies, else the directory the request mapped the script into.
///
/// # Safety
/// `r` is a live request.
unsafe fn allowed_root(r: *const sys::request_rec, cfg: &Settings) -> Option<PathBuf> {
    let configured = if cfg.root.is_null() {
        Path::new(CStr::from_ptr((*r).filename).to_str().ok()?).parent()?.to_path_buf()
    } else {
        PathBuf::from(CStr::from_ptr(cfg.root).to_str().ok()?)
    };
    std::fs::canonicalize(configured).ok()
}

/// # Safety
/// `r` is a live request whose r->filename the descriptor was opened from.
pub unsafe fn check(fd: &OwnedFd, r: *const sys::request_rec, cfg: &Settings) -> Result<(), String> {
    let real = std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()))
        .map_err(|e| format!("cannot resolve the script's path: {e}"))?;
    let mut st: libc::stat = std::mem::zeroed();
    if libc::fstat(fd.as_raw_fd(), &mut st) != 0 {
        return Err(format!("cannot stat: {}", std::io::Error::last_os_error()));
    }
    if st.st_mode & libc::S_IFMT != libc::S_IFREG {
        return Err(format!("refusing to load {}: not a regular file", real.display()));
    }
    if st.st_mode & 0o022 != 0 {
        return Err(format!("refusing to load {}: the file is group- or world-writable", real.display()));
    }
    if !owner_ok(st.st_uid, cfg) {
        return Err(format!(
            "refusing to load {}: owned by uid {}, but scripts must be owned by {}",
            real.display(),
            st.st_uid,
            owner_rule(cfg)
        ));
    }
    let root = allowed_root(r, cfg).ok_or("cannot resolve the configured script directory")?;
    if !real.starts_with(&root) {
        return Err(format!(
            "refusing to load {}: it resolves outside {}, where the handler is configured",
            real.display(),
            root.display()
        ));
    }
    // Every directory from the script's up to the configured one: anyone who
    // can write to one of them can swap the file.
    let mut dir = real.parent();
    while let Some(d) = dir {
        let ds = stat_path(d)?;
        if ds.st_mode & 0o022 != 0 {
            return Err(format!(
                "refusing to load {}: the directory {} is group- or world-writable",
                real.display(),
                d.display()
            ));
        }
        if !owner_ok(ds.st_uid, cfg) {
            return Err(format!(
                "refusing to load {}: the directory {} is owned by uid {}, not {}",
                real.display(),
                d.display(),
                ds.st_uid,
                owner_rule(cfg)
            ));
        }
        if d == root {
            break;
        }
        dir = d.parent();
    }
    Ok(())
}
