//! Error-log output through Apache's own logger, tagged with this module's
//! index so that `LogLevel libcgi:debug` selects it.

use crate::sys;
use std::ffi::{c_int, CString};

/// The index Apache gave this module (-1 until the module is loaded).
pub fn module_index() -> c_int {
    // SAFETY: Apache writes module_index once while loading the module, before
    // any hook of ours can run; afterwards it is only read.
    unsafe { (*std::ptr::addr_of!(crate::libcgi_module)).module_index }
}

fn cstring(msg: &str) -> CString {
    CString::new(msg.replace('\0', "\\0")).unwrap_or_default()
}

/// Whether a message of `level` would be logged for this request; checked
/// before formatting so that debug messages cost nothing when they are off.
pub fn r_enabled(r: *const sys::request_rec, level: u32) -> bool {
    if level <= sys::APLOG_NOTICE {
        return true;
    }
    // SAFETY: `r` is the live request the caller is handling.
    unsafe { sys::ap_get_request_module_loglevel(r, module_index()) >= level as c_int }
}

pub fn rerror(r: *const sys::request_rec, level: u32, status: sys::apr_status_t, msg: &str) {
    let m = cstring(msg);
    // SAFETY: `r` is live; the format is a constant "%s" with one C string.
    unsafe {
        sys::ap_log_rerror_(
            c"mod_libcgi".as_ptr(),
            0,
            module_index(),
            level as c_int,
            status,
            r,
            c"%s".as_ptr(),
            m.as_ptr(),
        )
    }
}

/// Server-level message, for events outside a request (unload at exit).
pub fn serror(s: *const sys::server_rec, level: u32, msg: &str) {
    let m = cstring(msg);
    // SAFETY: `s` is null or the process's main server_rec, which outlives
    // every request and cleanup of the child.
    unsafe {
        sys::ap_log_error_(c"mod_libcgi".as_ptr(), 0, module_index(), level as c_int, 0, s, c"%s".as_ptr(), m.as_ptr())
    }
}

/// The descriptor of the main server's error log (-1 if it has none), for
/// lines written without Apache's logger (the guard's last resort).
pub fn error_log_fd(s: *const sys::server_rec) -> c_int {
    let mut fd: c_int = -1;
    // SAFETY: `s` is the live main server_rec; apr_os_file_get only reads
    // the apr_file_t.
    unsafe {
        if !s.is_null() && !(*s).error_log.is_null() {
            sys::apr_os_file_get(&mut fd, (*s).error_log);
        }
    }
    fd
}

/// `rerror` with the message still to be formatted.  Out of line and cold:
/// messages are the exception, and the formatting code would otherwise sit
/// between the instructions every request runs, costing instruction cache.
#[cold]
#[inline(never)]
pub fn rerror_fmt(r: *const sys::request_rec, level: u32, status: sys::apr_status_t, msg: std::fmt::Arguments) {
    rerror(r, level, status, &msg.to_string());
}

/// `rlog!(r, LEVEL, "fmt", args..)`: formats only when the level is enabled.
macro_rules! rlog {
    ($r:expr, $level:ident, $($arg:tt)+) => {{
        let r = $r;
        if $crate::log::r_enabled(r, $crate::sys::$level) {
            $crate::log::rerror_fmt(r, $crate::sys::$level, 0, format_args!($($arg)+));
        }
    }};
}
pub(crate) use rlog;
