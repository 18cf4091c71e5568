//! Calls into scripts under the C guard (shim.c), and the watchdog that
//! interrupts calls running past their deadline.
//!
//! The watchdog is one thread per server process holding the deadlines of
//! the calls in progress; a call costs a lock and a vector push/remove, not
//! the two timer syscalls per request a per-call POSIX timer would.  When a
//! deadline passes, the watchdog marks that thread's guard and sends it the
//! timer signal; the handler jumps back to the guard, or, if the thread is
//! inside one of our callbacks, leaves a note that the callback's wrapper
//! acts on when it returns.

use std::ffi::{c_char, c_int, c_void};
use std::sync::{Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

pub const RETURNED: c_int = 0;
pub const FAULT: c_int = 1;
pub const TIMEOUT: c_int = 2;
pub const EXITED: c_int = 3;

pub const CALL_INT_STR: c_int = 0;
pub const CALL_INT_VOID: c_int = 1;
pub const CALL_VOID_VOID: c_int = 2;

#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct Outcome {
    /// RETURNED, FAULT, TIMEOUT, EXITED; negative: the guard could not be set
    /// up on this thread (-errno).
    pub kind: c_int,
    pub rc: c_int,
    pub signo: c_int,
    pub si_code: c_int,
    pub addr: *mut c_void,
    pub exit_status: c_int,
}

impl Default for Outcome {
    fn default() -> Self {
        Outcome { kind: RETURNED, rc: 0, signo: 0, si_code: 0, addr: std::ptr::null_mut(), exit_status: 0 }
    }
}

impl Outcome {
    /// A fault or a timeout: the script's state can no longer be trusted.
    pub fn is_fault(&self) -> bool {
        self.kind == FAULT || self.kind == TIMEOUT
    }

    /// Says what happened, for the error log.
    pub fn describe(&self, timeout: Option<Duration>) -> String {
        match self.kind {
            FAULT => {
                // SAFETY: strsignal returns a static or thread-local string.
                let name = unsafe { std::ffi::CStr::from_ptr(libc::strsignal(self.signo)) }.to_string_lossy();
                let synchronous = matches!(self.signo, libc::SIGSEGV | libc::SIGBUS | libc::SIGFPE | libc::SIGILL)
                    && self.si_code > 0;
                if synchronous {
                    format!("signal {} ({name}) at address {:p}", self.signo, self.addr)
                } else {
                    format!("signal {} ({name})", self.signo)
                }
            }
            TIMEOUT => {
                format!("still running after {:.1} s (LibCGITimeout)", timeout.unwrap_or_default().as_secs_f64())
            }
            EXITED => format!("called exit({})", self.exit_status),
            k if k < 0 => format!("cannot set up the fault guard: {}", std::io::Error::from_raw_os_error(-k)),
            _ => format!("returned {}", self.rc),
        }
    }
}

#[repr(C)]
pub struct RsApi {
    pub lwrite: unsafe extern "C" fn(*const c_void, usize) -> c_int,
    pub lflush: unsafe extern "C" fn() -> c_int,
    pub get_remote_host: unsafe extern "C" fn() -> *const c_char,
    pub linput_length: unsafe extern "C" fn() -> usize,
    pub getenv: unsafe extern "C" fn(*const c_char) -> *mut c_char,
    pub secure_getenv: unsafe extern "C" fn(*const c_char) -> *mut c_char,
    pub setenv: unsafe extern "C" fn(*const c_char, *const c_char, c_int) -> c_int,
    pub unsetenv: unsafe extern "C" fn(*const c_char) -> c_int,
    pub putenv: unsafe extern "C" fn(*mut c_char) -> c_int,
    pub clearenv: unsafe extern "C" fn() -> c_int,
}

unsafe extern "C" {
    pub fn libcgi_install_handlers(timer_signal: c_int) -> c_int;
    pub fn libcgi_set_api(api: *const RsApi);
    fn libcgi_thread_guard() -> *mut c_void;
    fn libcgi_guard_expire(guard: *mut c_void);
    fn libcgi_call(f: *const c_void, how: c_int, arg: *mut c_char, out: *mut Outcome) -> c_int;

    // The wrappers scripts' imports are bound to (see registry::bindings).
    pub fn libcgi_c_getenv(name: *const c_char) -> *mut c_char;
    pub fn libcgi_c_secure_getenv(name: *const c_char) -> *mut c_char;
    pub fn libcgi_c_setenv(name: *const c_char, value: *const c_char, overwrite: c_int) -> c_int;
    pub fn libcgi_c_unsetenv(name: *const c_char) -> c_int;
    pub fn libcgi_c_putenv(string: *mut c_char) -> c_int;
    pub fn libcgi_c_clearenv() -> c_int;
    pub fn libcgi_c_exit(status: c_int);
    pub fn libcgi_c__exit(status: c_int);
    pub fn libcgi_c__Exit(status: c_int);
    pub fn libcgi_c_quick_exit(status: c_int);
}

/// The real-time signal the watchdog sends.  Not SIGUSR1, SIGHUP or SIGWINCH:
/// the MPMs own those.  glibc keeps the first real-time signals for itself;
/// SIGRTMIN() already skips them.
pub fn timer_signal() -> c_int {
    libc::SIGRTMIN() + 4
}

/// How late the watchdog may notice a deadline at most.
const TICK: Duration = Duration::from_millis(100);

struct Entry {
    id: u64,
    guard: usize,
    thread: libc::pthread_t,
    deadline: Instant,
    signalled: bool,
}

struct Watchdog {
    state: Mutex<(u64, Vec<Entry>)>,
    /// Only ever waited on with a timeout (the tick); never notified.
    wake: Condvar,
}

static WATCHDOG: OnceLock<&'static Watchdog> = OnceLock::new();

fn watchdog() -> &'static Watchdog {
    WATCHDOG.get_or_init(|| {
        let w: &'static Watchdog =
            Box::leak(Box::new(Watchdog { state: Mutex::new((0, Vec::new())), wake: Condvar::new() }));
        std::thread::Builder::new()
            .name("libcgi-watchdog".into())
            .spawn(move || w.run())
            .expect("starting the mod_libcgi watchdog thread");
        w
    })
}

impl Watchdog {
    fn run(&self) {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            let now = Instant::now();
            let mut next: Option<Instant> = None;
            for e in st.1.iter_mut() {
                if e.signalled {
                    continue;
                }
                if e.deadline <= now {
                    // SAFETY: the entry is still registered, so its call has
                    // not returned and its guard and thread are live.
                    unsafe {
                        libcgi_guard_expire(e.guard as *mut c_void);
                        libc::pthread_kill(e.thread, timer_signal());
                    }
                    e.signalled = true;
                } else {
                    next = Some(next.map_or(e.deadline, |n| n.min(e.deadline)));
                }
            }
            // Never sleeps longer than a tick, so that `arm` need not wake it
            // (a futex wake and a context switch on every request): a new
            // deadline is at worst noticed one tick late.
            let nap = next.map_or(TICK, |t| t.saturating_duration_since(now).min(TICK));
            st = self.wake.wait_timeout(st, nap).unwrap_or_else(|e| e.into_inner()).0;
        }
    }

    fn arm(&self, guard: *mut c_void, deadline: Instant) -> u64 {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        st.0 += 1;
        let id = st.0;
        // SAFETY: pthread_self has no preconditions.
        st.1.push(Entry {
            id,
            guard: guard as usize,
            thread: unsafe { libc::pthread_self() },
            deadline,
            signalled: false,
        });
        id
    }

    fn disarm(&self, id: u64) {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(i) = st.1.iter().position(|e| e.id == id) {
            st.1.swap_remove(i);
        }
    }
}

/// Calls `f` (a script function of shape `how`) under the guard, with a
/// deadline when `timeout` is given.
///
/// # Safety
/// `f` is a function of the loaded script with the signature `how` names,
/// and the script stays loaded during the call.
pub unsafe fn call(f: *const c_void, how: c_int, arg: *mut c_char, timeout: Option<Duration>) -> Outcome {
    let mut out = Outcome::default();
    let token = match timeout {
        Some(t) if !t.is_zero() => {
            let g = libcgi_thread_guard();
            (!g.is_null()).then(|| watchdog().arm(g, Instant::now() + t))
        }
        _ => None,
    };
    libcgi_call(f, how, arg, &mut out);
    if let Some(id) = token {
        watchdog().disarm(id);
    }
    out
}
