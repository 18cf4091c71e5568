//! The per-request environment behind a script's getenv & co.
//!
//! The variables are the ones mod_cgi/mod_cgid would hand a CGI process for
//! the same request: `ap_add_common_vars`, `ap_add_cgi_vars`, then
//! `ap_create_environment` (which also applies mod_cgi's name clean-up).  They
//! are built on the first call that needs them, so a script that never reads
//! its environment never pays for it.  Everything lives in the request pool
//! or in the request's own context: nothing reaches the process `environ`,
//! and nothing outlives the request.

use crate::request::{current, Request};
use crate::sys;
use std::ffi::{c_char, c_int, CStr};
use std::ptr;

#[derive(Default)]
pub struct Env {
    /// `NAME=value` strings; `None` until first used.
    vars: Option<Vec<*mut c_char>>,
}

impl Env {
    fn vars(&mut self, r: *mut sys::request_rec) -> &mut Vec<*mut c_char> {
        self.vars.get_or_insert_with(|| {
            // SAFETY: `r` is the live request this Env belongs to; the
            // strings ap_create_environment returns live in its pool.
            unsafe {
                sys::ap_add_common_vars(r);
                sys::ap_add_cgi_vars(r);
                let mut envp = sys::ap_create_environment((*r).pool, (*r).subprocess_env);
                let mut v = Vec::with_capacity(48);
                while !(*envp).is_null() {
                    v.push(*envp);
                    envp = envp.add(1);
                }
                v
            }
        })
    }
}

/// Index of `name`'s entry: `name` must be followed by '=' in the entry.
/// Compares in place instead of measuring each entry first: a lookup used to
/// strlen every entry before it (about 700 instructions for a missing name
/// in a typical 30-variable environment; the http adapter makes a dozen).
fn position(vars: &[*mut c_char], name: &[u8]) -> Option<usize> {
    vars.iter().position(|&e| {
        let e = e as *const u8;
        // SAFETY: every entry is a NUL-terminated string and `name` holds no
        // NUL, so a shorter entry differs from `name` at its terminator at
        // the latest: no byte past it is read.
        unsafe { name.iter().enumerate().all(|(i, &b)| *e.add(i) == b) && *e.add(name.len()) == b'=' }
    })
}

fn valid_name<'a>(name: *const c_char) -> Option<&'a [u8]> {
    if name.is_null() {
        return None;
    }
    // SAFETY: the script passes a NUL-terminated string, as libc requires.
    let n = unsafe { CStr::from_ptr(name) }.to_bytes();
    (!n.is_empty() && !n.contains(&b'=')).then_some(n)
}

fn set_errno(e: c_int) {
    // SAFETY: errno is thread-local.
    unsafe { *libc::__errno_location() = e };
}

fn lookup(req: &mut Request, name: *const c_char) -> *mut c_char {
    let Some(name) = valid_name(name) else {
        return ptr::null_mut();
    };
    let r = req.r;
    let vars = req.env.vars(r);
    match position(vars, name) {
        // SAFETY: the entry is "name=value": the value starts after the '='.
        Some(i) => unsafe { vars[i].add(name.len() + 1) },
        None => ptr::null_mut(),
    }
}

// The implementations behind the C wrappers (shim.c, libcgi_c_getenv & co.)
// that each script's imports of the libc functions of the same names are
// bound to (see registry::bindings and elfpatch).  Outside a request
// (terminatefunc, a thread the script started) reads go to the real process
// environment and writes are refused: the server's own environment is shared
// by every script and thread of the process.

unsafe fn getenv_impl(name: *const c_char) -> *mut c_char {
    #[cfg(feature = "fault-injection")]
    if !name.is_null() && CStr::from_ptr(name) == c"LIBCGI_PANIC" {
        panic!("fault injection: getenv(\"LIBCGI_PANIC\")");
    }
    match current() {
        Some(req) => lookup(req, name),
        None => libc::getenv(name),
    }
}

unsafe extern "C" {
    // glibc's; not in the libc crate.
    fn secure_getenv(name: *const c_char) -> *mut c_char;
}

unsafe fn secure_getenv_impl(name: *const c_char) -> *mut c_char {
    match current() {
        Some(req) => lookup(req, name),
        None => secure_getenv(name),
    }
}

unsafe fn setenv_impl(name: *const c_char, value: *const c_char, overwrite: c_int) -> c_int {
    let Some(req) = current() else {
        set_errno(libc::EPERM);
        return -1;
    };
    let Some(n) = valid_name(name) else {
        set_errno(libc::EINVAL);
        return -1;
    };
    let r = req.r;
    let vars = req.env.vars(r);
    let existing = position(vars, n);
    if existing.is_some() && overwrite == 0 {
        return 0;
    }
    let value = if value.is_null() { c"".as_ptr() } else { value };
    let entry = sys::apr_pstrcat((*r).pool, name, c"=".as_ptr(), value, ptr::null::<c_char>());
    match existing {
        Some(i) => vars[i] = entry,
        None => vars.push(entry),
    }
    0
}

unsafe fn unsetenv_impl(name: *const c_char) -> c_int {
    let Some(req) = current() else {
        set_errno(libc::EPERM);
        return -1;
    };
    let Some(n) = valid_name(name) else {
        set_errno(libc::EINVAL);
        return -1;
    };
    let r = req.r;
    let vars = req.env.vars(r);
    while let Some(i) = position(vars, n) {
        vars.remove(i);
    }
    0
}

unsafe fn putenv_impl(string: *mut c_char) -> c_int {
    let Some(req) = current() else {
        set_errno(libc::EPERM);
        return -1;
    };
    if string.is_null() {
        set_errno(libc::EINVAL);
        return -1;
    }
    let s = CStr::from_ptr(string).to_bytes();
    let Some(eq) = s.iter().position(|&b| b == b'=') else {
        // glibc: putenv("NAME") removes NAME.
        return unsetenv_impl(string);
    };
    let r = req.r;
    let vars = req.env.vars(r);
    // As with libc, the caller's string itself becomes the entry.
    match position(vars, &s[..eq]) {
        Some(i) => vars[i] = string,
        None => vars.push(string),
    }
    0
}

unsafe fn clearenv_impl() -> c_int {
    let Some(req) = current() else {
        set_errno(libc::EPERM);
        return -1;
    };
    req.env.vars = Some(Vec::new());
    0
}

// The entry points: a panic inside ends the script's call (crate::panic).
crate::panic::callback!(libcgi_getenv => getenv_impl(name: *const c_char) -> *mut c_char, ptr::null_mut(), "getenv");
crate::panic::callback!(libcgi_secure_getenv => secure_getenv_impl(name: *const c_char) -> *mut c_char, ptr::null_mut(), "secure_getenv");
crate::panic::callback!(libcgi_setenv => setenv_impl(name: *const c_char, value: *const c_char, overwrite: c_int) -> c_int, -1, "setenv");
crate::panic::callback!(libcgi_unsetenv => unsetenv_impl(name: *const c_char) -> c_int, -1, "unsetenv");
crate::panic::callback!(libcgi_putenv => putenv_impl(string: *mut c_char) -> c_int, -1, "putenv");
crate::panic::callback!(libcgi_clearenv => clearenv_impl() -> c_int, -1, "clearenv");
