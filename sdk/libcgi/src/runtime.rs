//! What the exported functions do around the script's code: build the
//! request and response, catch panics, log failures, map to the C ABI.

use crate::host::Host;
use crate::request::Request;
use crate::response::Response;
use std::any::Any;
use std::cell::{Cell, RefCell};
use std::ffi::{c_char, c_int, CStr};
use std::fmt::Display;
use std::io::Write;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Once;

/// processfunc's return after a handler's `Err`.
pub const RC_ERROR: c_int = 1;
/// processfunc's return after a panic (Rust's exit status for a panic).
pub const RC_PANIC: c_int = 101;

/// What a handler may return: `()` or `Result<(), E: Display>`.
pub trait Outcome {
    /// `Err(message)` for a failure.
    fn into_outcome(self) -> Result<(), String>;
}

impl Outcome for () {
    fn into_outcome(self) -> Result<(), String> {
        Ok(())
    }
}

impl<E: Display> Outcome for Result<(), E> {
    fn into_outcome(self) -> Result<(), String> {
        self.map_err(|e| e.to_string())
    }
}

thread_local! {
    /// Where the last panic on this thread happened (set by the hook, taken
    /// by the catcher).
    static PANIC: RefCell<Option<String>> = const { RefCell::new(None) };
    /// True while this thread runs script code under `guarded`: a panic
    /// anywhere else (a thread the script started) keeps the default
    /// message.
    static GUARDED: Cell<bool> = const { Cell::new(false) };
}

/// Replaces the default panic message (several lines, `thread '<unnamed>'
/// panicked`) with a note of its place, which the catcher logs in one line
/// with the script's name.  The hook is this script's own: each cdylib has
/// its own copy of the standard library.
fn install_hook() {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let prev = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let noted = GUARDED.try_with(Cell::get).unwrap_or(false)
                && PANIC
                    .try_with(|p| {
                        let loc = info.location().map(|l| format!(" at {}:{}:{}", l.file(), l.line(), l.column()));
                        p.try_borrow_mut().map(|mut p| *p = Some(loc.unwrap_or_default())).is_ok()
                    })
                    .unwrap_or(false);
            if !noted {
                prev(info);
            }
        }));
    });
}

fn payload_message(p: &(dyn Any + Send)) -> &str {
    if let Some(s) = p.downcast_ref::<&str>() {
        s
    } else if let Some(s) = p.downcast_ref::<String>() {
        s
    } else {
        "(a panic payload that is not a string)"
    }
}

/// The script's name for log lines: SCRIPT_FILENAME in a request, else the
/// file the script was loaded from.
fn script_name(host: &Host) -> String {
    // SAFETY: a NUL-terminated name; getenv returns NULL or a C string.
    let p = unsafe { (host.getenv)(c"SCRIPT_FILENAME".as_ptr()) };
    if !p.is_null() {
        // SAFETY: as above.
        return unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned();
    }
    let mut info: libc_dl::DlInfo = libc_dl::DlInfo::default();
    // SAFETY: dladdr only reads its first argument's address and fills info.
    let ok = unsafe { libc_dl::dladdr(script_name as *const std::ffi::c_void, &mut info) };
    if ok != 0 && !info.dli_fname.is_null() {
        // SAFETY: dladdr's file name is a C string owned by the loader.
        return unsafe { CStr::from_ptr(info.dli_fname) }.to_string_lossy().into_owned();
    }
    "(script)".to_string()
}

mod libc_dl {
    use std::ffi::{c_char, c_int, c_void};
    #[repr(C)]
    pub struct DlInfo {
        pub dli_fname: *const c_char,
        pub dli_fbase: *mut c_void,
        pub dli_sname: *const c_char,
        pub dli_saddr: *mut c_void,
    }
    impl Default for DlInfo {
        fn default() -> Self {
            DlInfo {
                dli_fname: std::ptr::null(),
                dli_fbase: std::ptr::null_mut(),
                dli_sname: std::ptr::null(),
                dli_saddr: std::ptr::null_mut(),
            }
        }
    }
    extern "C" {
        pub fn dladdr(addr: *const c_void, info: *mut DlInfo) -> c_int;
    }
}

/// One line on stderr, which Apache writes to the server's error log; one
/// write(2), so lines of concurrent requests do not interleave.
#[cold]
pub(crate) fn log_line(host: &Host, what: &str) {
    let line = format!("[libcgi] {}: {what}\n", script_name(host));
    let _ = std::io::stderr().lock().write_all(line.as_bytes());
}

#[cold]
fn log_panic(host: &Host, func: &str, payload: &(dyn Any + Send)) {
    let place = PANIC.with(|p| p.borrow_mut().take()).unwrap_or_default();
    log_line(host, &format!("{func} panicked{place}: {}", payload_message(payload)));
}

/// Runs `f` with panics caught: Ok(its value), or None after logging.
fn guarded<T>(host: &Host, func: &str, f: impl FnOnce() -> T) -> Option<T> {
    install_hook();
    // Calls nest (a handler that runs libcgi::testing inside): restore.
    let was = GUARDED.replace(true);
    let r = catch_unwind(AssertUnwindSafe(f));
    GUARDED.set(was);
    match r {
        Ok(v) => Some(v),
        Err(payload) => {
            log_panic(host, func, &*payload);
            // The payload's drop could itself panic: never let that unwind.
            let _ = catch_unwind(AssertUnwindSafe(move || drop(payload)));
            None
        }
    }
}

/// The body the module passed: `linput_length()` bytes at `input`.
///
/// # Safety
/// `input` is NULL or points at `linput_length()` readable bytes for the
/// rest of the call.
unsafe fn body<'a>(host: &Host, input: *mut c_char) -> &'a [u8] {
    if input.is_null() {
        return &[];
    }
    // SAFETY: the caller's contract.
    unsafe { std::slice::from_raw_parts(input.cast::<u8>(), (host.linput_length)()) }
}

/// processfunc with a native handler.
///
/// # Safety
/// Called as processfunc by the host: `input` is NULL or points at
/// `linput_length()` readable bytes for the rest of the call.
pub unsafe fn process<F, R>(host: &'static Host, input: *mut c_char, handler: F) -> c_int
where
    F: FnOnce(&Request<'_>, &mut Response<'_>) -> R,
    R: Outcome,
{
    // SAFETY: the caller's contract.
    let req = Request::new(host, unsafe { body(host, input) });
    let mut resp = Response::new(host);
    match guarded(host, "processfunc", || handler(&req, &mut resp).into_outcome()) {
        Some(Ok(())) => match resp.finish() {
            Ok(()) => 0,
            // Output refused: the module knows why and has logged it.
            Err(_) => RC_ERROR,
        },
        Some(Err(msg)) => {
            resp.abandon();
            log_line(host, &format!("processfunc failed: {msg}"));
            RC_ERROR
        }
        None => {
            resp.abandon();
            RC_PANIC
        }
    }
}

/// What an http handler may return: a response, or a `Result` of one.
pub trait HttpOutcome {
    /// The body type.
    type Body: AsRef<[u8]>;
    /// `Err(message)` for a failure.
    fn into_http(self) -> Result<http::Response<Self::Body>, String>;
}

impl<B: AsRef<[u8]>> HttpOutcome for http::Response<B> {
    type Body = B;
    fn into_http(self) -> Result<http::Response<B>, String> {
        Ok(self)
    }
}

impl<B: AsRef<[u8]>, E: Display> HttpOutcome for Result<http::Response<B>, E> {
    type Body = B;
    fn into_http(self) -> Result<http::Response<B>, String> {
        self.map_err(|e| e.to_string())
    }
}

/// processfunc with an `http` crate handler.
///
/// # Safety
/// As [`process`].
pub unsafe fn process_http<F, R>(host: &'static Host, input: *mut c_char, handler: F) -> c_int
where
    F: FnOnce(http::Request<&[u8]>) -> R,
    R: HttpOutcome,
{
    // SAFETY: the caller's contract.
    unsafe {
        process(host, input, |req: &Request<'_>, resp: &mut Response<'_>| -> Result<(), String> {
            let hreq = match crate::adapter::to_http(req) {
                Ok(r) => r,
                // What the client sent does not fit the http crate's types
                // (a URI or method it refuses): the client's error, a 400.
                Err(e) => {
                    log_line(host, &format!("http adapter: request refused with 400: {e}"));
                    resp.status(400).map_err(|e| e.to_string())?;
                    resp.header("Content-Type", "text/plain").map_err(|e| e.to_string())?;
                    return resp.write_all(b"Bad Request\n").map_err(|e| e.to_string());
                }
            };
            let hresp = handler(hreq).into_http()?;
            crate::adapter::write_http(&hresp, resp).map_err(|e| e.to_string())
        })
    }
}

/// What an init function may return: `()` or `Result<(), E: Display>`.
pub fn init<F, R>(host: &'static Host, f: F) -> c_int
where
    F: FnOnce() -> R,
    R: Outcome,
{
    match guarded(host, "initfunc", || f().into_outcome()) {
        Some(Ok(())) => 0,
        Some(Err(msg)) => {
            log_line(host, &format!("initfunc failed: {msg}"));
            RC_ERROR
        }
        None => RC_PANIC,
    }
}

/// terminatefunc: a panic is logged and goes no further.
pub fn terminate<F: FnOnce()>(host: &'static Host, f: F) {
    let _ = guarded(host, "terminatefunc", f);
}
