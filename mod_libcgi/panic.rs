//! Panics inside the module on a request path cost that request, not the
//! server process.
//!
//! The profile unwinds (`panic = "unwind"`), and Rust aborts the process
//! when a panic reaches an `extern "C"` boundary, so every entry point Apache
//! or a script calls catches it first (`catch`):
//! - the handler: the request gets a 500 (or, when part of the response was
//!   sent, a connection cut short) and one log line naming the script and
//!   the panic;
//! - a script's callbacks (getenv, lwrite, ...): the panic must not unwind
//!   through the script's C frames, so the callback returns an error value
//!   and notes the panic in the thread's guard (shim.c), whose wrapper then
//!   ends the script's call with the guard's jump, as after a timeout inside
//!   a callback (no Rust frame is jumped over).  The handler answers as
//!   after a fault and logs the panic; the script is unloaded (its call was
//!   cut short) but the fault is not counted against it;
//! - the other hooks: logged, and the hook's neutral answer.
//!
//! The hook (installed in child_init) only remembers the message for the
//! catcher's log line: Rust's default hook would write a second, unformatted
//! line to stderr (the error log).

use crate::log;
use crate::sys;
use std::cell::RefCell;
use std::panic::AssertUnwindSafe;

thread_local! {
    /// The last panic of this thread: message and location.
    static LAST: RefCell<String> = const { RefCell::new(String::new()) };
}

unsafe extern "C" {
    fn libcgi_callback_panicked() -> std::ffi::c_int;
}

/// Installs the panic hook (once per process).
pub fn install_hook() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        std::panic::set_hook(Box::new(|info| {
            let p = info.payload();
            let msg = p
                .downcast_ref::<&str>()
                .copied()
                .or_else(|| p.downcast_ref::<String>().map(String::as_str))
                .unwrap_or("(no message)");
            let text = match info.location() {
                Some(l) => format!("{msg} at {}:{}", l.file(), l.line()),
                None => msg.to_string(),
            };
            // The module's own threads (watchdog, recycle backstop) have no
            // catcher: their panic is said here, in the error log.
            if std::thread::current().name().is_some_and(|n| n.starts_with("libcgi-")) {
                eprintln!("[libcgi:crit] thread {:?} panicked: {text}", std::thread::current().name());
            }
            let _ = LAST.try_with(|l| {
                if let Ok(mut l) = l.try_borrow_mut() {
                    *l = text;
                }
            });
        }));
    });
}

/// The message of this thread's last panic.
pub fn message() -> String {
    LAST.try_with(|l| l.try_borrow().map(|s| s.clone()).unwrap_or_default()).unwrap_or_default()
}

/// Runs `f`, catching a panic (its message: `message()`).
#[inline(always)]
pub fn catch<R>(f: impl FnOnce() -> R) -> Result<R, ()> {
    std::panic::catch_unwind(AssertUnwindSafe(f)).map_err(drop)
}

/// A callback (`which`) caught a panic: the script's call is ended by its
/// wrapper's jump when the callback returns, and the handler logs it; with
/// no call to end (a thread the script started) it is logged here.
#[cold]
#[inline(never)]
pub fn in_callback(which: &str) {
    LAST.with(|l| {
        if let Ok(mut l) = l.try_borrow_mut() {
            *l = format!("in {which}: {l}");
        }
    });
    // SAFETY: sets a field of this thread's own guard.
    if unsafe { libcgi_callback_panicked() } == 0 {
        log::serror(std::ptr::null(), sys::APLOG_ERR, &format!("a panic in mod_libcgi {}", message()));
    }
}

/// A hook (`which`) caught a panic: one line.
#[cold]
#[inline(never)]
pub fn in_hook(which: &str, s: *const sys::server_rec) {
    log::serror(s, sys::APLOG_ERR, &format!("a panic in mod_libcgi's {which}: {}", message()));
}

/// Wraps a script callback `$imp` as the `extern "C"` function `$name`:
/// a panic returns `$err` and ends the script's call (see `in_callback`).
macro_rules! callback {
    ($name:ident => $imp:ident($($a:ident: $t:ty),*) -> $r:ty, $err:expr, $what:literal) => {
        pub unsafe extern "C" fn $name($($a: $t),*) -> $r {
            // SAFETY: the caller's contract is $imp's.
            match $crate::panic::catch(|| unsafe { $imp($($a),*) }) {
                Ok(v) => v,
                Err(()) => {
                    $crate::panic::in_callback($what);
                    $err
                }
            }
        }
    };
}
pub(crate) use callback;
