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
use std::os::unix::ffi::OsStrExt;
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
/// (or <DirectoryMatch>) section that applies to the request, as the
/// directory it matched (a wildcard or a regex resolves to the real one);
/// with none, "/".
///
/// Per-directory configs cannot say: Apache creates one for a section only
/// when a module's directive is used in it, and <Location>/<Files> merged
/// later overwrite the core's `d`.  So the server's <Directory> sections
/// (core_server_config->sec_dir) are matched against r->filename the way
/// ap_directory_walk matches them (server/request.c): a plain or wildcard
/// section of n components against the path up to its n-th '/' (strcmp,
/// or apr_fnmatch with APR_FNM_PATHNAME), `<Directory />` always, a regex
/// against the whole r->filename.  This runs when a script is loaded, never
/// per request.
///
/// # Safety
/// `r` is a live request.
unsafe fn allowed_root(r: *const sys::request_rec) -> Option<PathBuf> {
    let filename = CStr::from_ptr((*r).filename);
    // SAFETY: the server's core config and its sec_dir array are built at
    // startup and only read afterwards; every element is a section's config
    // vector, whose core entry is that section's core_dir_config.
    let sconf = sys::ap_get_core_module_config((*(*r).server).module_config) as *const sys::core_server_config;
    let secs = (*sconf).sec_dir;
    let mut best: Option<&[u8]> = None;
    let mut best_depth = 0;
    if !secs.is_null() {
        let ents = (*secs).elts as *const *mut sys::ap_conf_vector_t;
        for i in 0..(*secs).nelts.max(0) as usize {
            let core = sys::ap_get_core_module_config(*ents.add(i)) as *const sys::core_dir_config;
            if core.is_null() || (*core).d.is_null() {
                continue;
            }
            let matched =
                if (*core).r.is_null() { plain_match(&*core, filename) } else { regex_match(&*core, filename) };
            if let Some(dir) = matched {
                let depth = dir.split(|&b| b == b'/').filter(|c| !c.is_empty()).count();
                if best.is_none() || depth >= best_depth {
                    (best, best_depth) = (Some(dir), depth);
                }
            }
        }
    }
    let root = best.unwrap_or(b"/");
    std::fs::canonicalize(Path::new(std::ffi::OsStr::from_bytes(root))).ok()
}

/// A plain or wildcard <Directory>: the directory of r->filename it
/// matches, as ap_directory_walk matches it at the level of its components.
///
/// # Safety
/// `core` is a live section's core config (`d` a C string).
unsafe fn plain_match<'a>(core: &sys::core_dir_config, filename: &'a CStr) -> Option<&'a [u8]> {
    let f = filename.to_bytes();
    let n = core.d_components as usize;
    if n == 0 {
        return Some(b"/"); // <Directory />: merged for every request
    }
    // The path up to and including its n-th '/'.
    let end = f.iter().enumerate().filter(|&(_, &b)| b == b'/').nth(n - 1)?.0 + 1;
    let prefix = &f[..end];
    let d = CStr::from_ptr(core.d);
    let hit = if core.d_is_fnmatch() != 0 {
        let c = CString::new(prefix).ok()?;
        sys::apr_fnmatch(core.d, c.as_ptr(), sys::APR_FNM_PATHNAME as i32) == 0
    } else {
        d.to_bytes() == prefix
    };
    hit.then(|| trim_slash(prefix))
}

/// A <DirectoryMatch> (or <Directory ~>): matched against the whole
/// r->filename, as ap_directory_walk does; the directory is where the match
/// ends, or, when it ends inside a name, the directory holding that name
/// (checking more directories, never fewer).
///
/// # Safety
/// `core` is a live regex section's core config (`r` its compiled regex).
unsafe fn regex_match<'a>(core: &sys::core_dir_config, filename: &'a CStr) -> Option<&'a [u8]> {
    let mut m = sys::ap_regmatch_t { rm_so: -1, rm_eo: -1 };
    if sys::ap_regexec(core.r, filename.as_ptr(), 1, &mut m, 0) != 0 || m.rm_eo < 0 {
        return None;
    }
    let f = filename.to_bytes();
    let end = (m.rm_eo as usize).min(f.len());
    if end > 0 && (f[end - 1] == b'/' || f.get(end) == Some(&b'/')) {
        return Some(trim_slash(&f[..end]));
    }
    let slash = f[..end].iter().rposition(|&b| b == b'/')?;
    Some(trim_slash(&f[..=slash]))
}

fn trim_slash(p: &[u8]) -> &[u8] {
    if p.len() > 1 && p.ends_with(b"/") {
        &p[..p.len() - 1]
    } else {
        p
    }
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
    let root = allowed_root(r).ok_or("cannot resolve the configured script directory")?;
    crate::log::rlog!(r, APLOG_DEBUG, "{}: trusted if safe up to {}", real.display(), root.display());
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
