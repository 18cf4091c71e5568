//! The functions a script calls: in production mod_libcgi's exports (or
//! `libcgi-run`'s), bound by the dynamic linker when the script is loaded; in
//! `libcgi::testing`, in-memory versions.
//!
//! The table is built by [`script!`](crate::script) in the script's own crate
//! from `extern "C"` imports, so the script object has real undefined
//! symbols (`nm -D` shows `U lwrite`, `U getenv`, ...) and the module's
//! relocation rewriting sees `getenv` as an import of the script.  Calling
//! through the table costs what a call through the PLT/GOT costs: one
//! indirect call to the resolved function.

use std::ffi::{c_char, c_int, c_void};

/// The callbacks of one host (mod_libcgi, `libcgi-run`, or the in-memory
/// test host).  Not for scripts to build: [`script!`](crate::script) does.
#[doc(hidden)]
pub struct Host {
    pub lwrite: unsafe extern "C" fn(*const c_void, usize) -> c_int,
    pub lflush: unsafe extern "C" fn() -> c_int,
    pub getenv: unsafe extern "C" fn(*const c_char) -> *mut c_char,
    pub get_remote_host: unsafe extern "C" fn() -> *const c_char,
    pub linput_length: unsafe extern "C" fn() -> usize,
}

/// Emits the script's imports and the static [`Host`] table `__LIBCGI_HOST`.
#[doc(hidden)]
#[macro_export]
macro_rules! __libcgi_host {
    () => {
        extern "C" {
            fn lwrite(buf: *const ::std::ffi::c_void, len: usize) -> ::std::ffi::c_int;
            fn lflush() -> ::std::ffi::c_int;
            fn getenv(name: *const ::std::ffi::c_char) -> *mut ::std::ffi::c_char;
            fn get_remote_host() -> *const ::std::ffi::c_char;
            fn linput_length() -> usize;
        }
        static __LIBCGI_HOST: $crate::__private::Host =
            $crate::__private::Host { lwrite, lflush, getenv, get_remote_host, linput_length };
    };
}
