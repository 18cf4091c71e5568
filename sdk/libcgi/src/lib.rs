//! Write LibCGI scripts — CGI programs that the Apache httpd module
//! mod_libcgi runs as shared objects inside the server (after Venkitachalam
//! & Chiueh, *High-Performance Common Gateway Interface Invocation*) — in
//! safe Rust.
//!
//! A script is a `cdylib` crate with one macro call:
//!
//! ```toml
//! [lib]
//! crate-type = ["cdylib"]
//!
//! [dependencies]
//! libcgi = "0.1"
//! ```
//!
//! ```ignore
//! // src/lib.rs
//! use std::io::Write;
//!
//! fn hello(_req: &libcgi::Request, resp: &mut libcgi::Response) -> libcgi::Result<()> {
//!     resp.header("Content-Type", "text/plain")?;
//!     resp.write_all(b"Hello from Rust\n")?;
//!     Ok(())
//! }
//!
//! libcgi::script!(hello);
//! ```
//!
//! The handler is plain Rust, testable without a server ([`testing`]):
//!
//! ```
//! # use std::io::Write;
//! # fn hello(_req: &libcgi::Request, resp: &mut libcgi::Response) -> libcgi::Result<()> {
//! #     resp.header("Content-Type", "text/plain")?;
//! #     resp.write_all(b"Hello from Rust\n")?;
//! #     Ok(())
//! # }
//! let out = libcgi::testing::TestRequest::get("/hello.so").run(hello);
//! assert_eq!(out.status, 200);
//! assert_eq!(out.header("Content-Type"), Some("text/plain"));
//! assert_eq!(out.body, b"Hello from Rust\n");
//! ```
//!
//! `cargo build --release` gives `target/release/lib<name>.so`: copy it into
//! a libcgi-bin directory as `<name>.so` (by atomic rename) and it is served
//! at `/libcgi-bin/<name>.so`.
//!
//! # What a script gets
//!
//! * [`Request`]: the method, `PATH_INFO`, the query string, any CGI
//!   variable and request header, borrowed from the server without a copy
//!   (as `&str` or raw bytes), the body as `&[u8]` of exactly
//!   `linput_length()` bytes (binary-safe), and [`Request::remote_host`].
//! * [`Response`]: [`Response::status`], [`Response::header`] (which refuses
//!   names that are not HTTP tokens and values with CR, LF, NUL or other
//!   control characters, so a header can never be injected), then the body
//!   through [`std::io::Write`], buffered into `lwrite`; `flush` is
//!   `lflush`.  Setting a header once the body has begun is an
//!   [`Error::HeadersSent`], not garbage in the body.
//! * The [`http`] crate: `libcgi::script! { http: handler }` serves a
//!   `fn(http::Request<&[u8]>) -> http::Response<impl AsRef<[u8]>>` (or a
//!   `Result` of one), so existing code ports directly (see [`adapter`]).
//! * State: `libcgi::script! { init: .., process: .., terminate: .., thread_safe: true }`
//!   (see [`script!`]).
//! * [`testing`]: run a handler against a synthetic request in a plain
//!   `cargo test`; and the `libcgi-run` command runs a built `.so` (Rust, C
//!   or C++) for one request without Apache, under gdb or valgrind.
//!
//! # Panics never cross the C boundary
//!
//! Every function the macro exports runs the script's code under
//! [`std::panic::catch_unwind`].  A panic is written as one line to the
//! process's standard error — which Apache sends to the server's error log —
//! naming the script, the function, the place and the message; the request
//! then fails: a 500 when nothing was sent yet (the buffered output is
//! dropped), otherwise a response cut short.  `processfunc` returns 101
//! after a panic and 1 after a handler's `Err`, and mod_libcgi logs that
//! too ("processfunc returned 101").
//!
//! This needs `panic = "unwind"`, Cargo's default.  **Keep it**: with
//! `panic = "abort"` in the script's profile a panic cannot be caught, and
//! [`script!`] refuses to compile.  (A panic that aborts anyway — a panic
//! while panicking, say — is a `SIGABRT` inside the script, which
//! mod_libcgi's fault guard turns into a 500 and an unload.)
//!
//! # Threads
//!
//! [`Request`] and [`Response`] are `!Send` and `!Sync`: mod_libcgi's
//! callbacks work only on the thread running the request, so the types
//! cannot leave it.  Without `thread_safe: true`, the module never runs
//! two `processfunc` calls of the script at once in one process.
//!
//! ```compile_fail
//! fn send<T: Send>(_: T) {}
//! fn handler(req: &libcgi::Request, _: &mut libcgi::Response) {
//!     send(req); // error: `*const ()` cannot be shared between threads safely
//! }
//! ```
//!
//! ```compile_fail
//! fn handler(_: &libcgi::Request, resp: &mut libcgi::Response) {
//!     std::thread::scope(|s| {
//!         s.spawn(|| resp.header("X-From", "another thread")); // error: Response is not Send
//!     });
//! }
//! ```
//!
//! # Variables and `std::env`
//!
//! CGI variables are per request: mod_libcgi rewrites the script object's
//! imports of `getenv` (and `setenv`, `unsetenv`, ...) to read the current
//! request's table.  [`Request::var`] calls that `getenv` and borrows the
//! value.  `std::env::var` works too (the standard library's own `getenv`
//! call is in the same object, so it is rewritten as well), but it copies
//! the value into a `String` and takes the standard library's environment
//! lock; `std::env::vars()` reads `environ` directly and sees the server's
//! environment, not the request's: do not use it for CGI variables.

#![warn(missing_docs)]

pub mod adapter;
mod host;
mod request;
mod response;
mod runtime;
pub mod testing;

pub use http;
pub use request::Request;
pub use response::{Error, Response, Result};

/// Not public API: what [`script!`] expands to uses these.
#[doc(hidden)]
pub mod __private {
    pub use crate::host::Host;
    pub use crate::runtime::{init, process, process_http, terminate};
}

/// Defines the script: emits `processfunc`, and when asked `initfunc`,
/// `terminatefunc` and `libcgi_thread_safe`, with the exact C ABI of
/// `libcgi.h`, each running the script's code with panics caught.
///
/// ```ignore
/// // The whole script: a handler.
/// libcgi::script!(handler);
///
/// // Or named parts (any order; only one of process/http):
/// libcgi::script! {
///     init: init,           // fn() -> Result<(), E: Display> or fn(); Err: the load fails
///     process: handler,     // fn(&Request, &mut Response) -> Result<(), E: Display> or ()
///     terminate: terminate, // fn()
///     thread_safe: true,    // exports libcgi_thread_safe = 1
/// }
///
/// // An http crate handler: fn(http::Request<&[u8]>) -> http::Response<B>
/// // or Result<http::Response<B>, E: Display>, B: AsRef<[u8]>.
/// libcgi::script! { http: handler }
/// ```
///
/// The exports are left out of the crate's own unit tests (`cfg(test)`), so
/// a script crate's `cargo test` links without the module and tests its
/// handlers with [`testing`].
///
/// The macro refuses to compile under `panic = "abort"`: a script must be
/// able to catch its panics.
#[macro_export]
macro_rules! script {
    ($handler:path $(,)?) => {
        $crate::script! { process: $handler }
    };
    ($($key:ident : $value:expr),+ $(,)?) => {
        #[cfg(panic = "abort")]
        compile_error!(
            "libcgi scripts need panic = \"unwind\" (Cargo's default): under panic = \"abort\" a panic \
             cannot be caught and would take the Apache process down. Remove panic = \"abort\" from the \
             profile."
        );
        #[cfg(not(test))]
        const _: () = {
            $crate::__libcgi_host!();
            $( $crate::__libcgi_item!($key: $value); )+
        };
        // In the crate's own tests the parts are still used (no dead-code
        // warnings), only not exported.
        #[cfg(test)]
        const _: () = {
            $( let _ = &$value; )+
        };
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __libcgi_item {
    (process: $f:expr) => {
        /// The script's entry point, called by mod_libcgi per request.
        ///
        /// # Safety
        /// Called by the host with the request body (or NULL).
        #[no_mangle]
        pub unsafe extern "C" fn processfunc(input: *mut ::std::ffi::c_char) -> ::std::ffi::c_int {
            $crate::__private::process(&__LIBCGI_HOST, input, $f)
        }
    };
    (http: $f:expr) => {
        /// The script's entry point, called by mod_libcgi per request.
        ///
        /// # Safety
        /// Called by the host with the request body (or NULL).
        #[no_mangle]
        pub unsafe extern "C" fn processfunc(input: *mut ::std::ffi::c_char) -> ::std::ffi::c_int {
            $crate::__private::process_http(&__LIBCGI_HOST, input, $f)
        }
    };
    (init: $f:expr) => {
        #[no_mangle]
        pub extern "C" fn initfunc() -> ::std::ffi::c_int {
            $crate::__private::init(&__LIBCGI_HOST, $f)
        }
    };
    (terminate: $f:expr) => {
        #[no_mangle]
        pub extern "C" fn terminatefunc() {
            $crate::__private::terminate(&__LIBCGI_HOST, $f)
        }
    };
    (thread_safe: $b:expr) => {
        #[no_mangle]
        pub static libcgi_thread_safe: ::std::ffi::c_int = if $b { 1 } else { 0 };
    };
}
