//! Calls into scripts under the C guard (shim.c), and the watchdog that
//! interrupts calls running past their deadline.
//!
//! The watchdog is one thread per server process that looks, every tick, at
//! the deadline each server thread publishes for its call in progress.  A
//! call costs two atomic stores and a read of the coarse clock (no lock, no
//! syscall, no cache line shared between server threads), where a per-call
//! POSIX timer would cost two syscalls per request.  When a deadline passes,
//! the watchdog marks that thread's guard and sends it the timer signal; the
//! handler jumps back to the guard, or, if the thread is inside one of our
//! callbacks, leaves a note that the callback's wrapper acts on when it
//! returns.

use std::ffi::{c_char, c_int, c_void};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

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
    fn libcgi_guard_reset(guard: *mut c_void);
    fn libcgi_thread_watch() -> *mut *mut c_void;
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

// States of a Deadline besides a deadline itself (which is always larger).
/// No call with a deadline in progress.
const IDLE: u64 = 0;
/// The watchdog is marking and signalling this call right now.
const CLAIMED: u64 = 1;
/// The watchdog has signalled this call.
const SIGNALLED: u64 = 2;

/// What a server thread publishes for the watchdog.  One per thread, made on
/// its first call with a deadline and never freed: server threads live as
/// long as their process, like the guard in shim.c, which holds the pointer
/// to it (a Rust thread_local! would cost a call into the loader per access).
/// A cache line each: two threads' deadlines side by side would make every
/// request of one thread take the line away from the other.
#[repr(align(64))]
struct Deadline {
    /// IDLE, CLAIMED, SIGNALLED, or the deadline in milliseconds of
    /// CLOCK_MONOTONIC_COARSE.  Written by its thread (arm, disarm) and by the
    /// watchdog only through compare-exchange, so neither loses the other's
    /// update.
    state: AtomicU64,
    guard: usize,
    thread: libc::pthread_t,
}

struct Watchdog {
    threads: Mutex<Vec<&'static Deadline>>,
    /// The coarse clock's resolution in ms, added to every deadline so that
    /// a call is never cut before its timeout has fully passed.
    slack_ms: u64,
}

static WATCHDOG: OnceLock<Watchdog> = OnceLock::new();

/// Milliseconds of the coarse monotonic clock: read from the vDSO without a
/// syscall, cheaper than Instant::now, and precise enough for deadlines the
/// watchdog looks at once per tick.
fn now_ms() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid timespec to write; the clock exists on every
    // Linux the module builds for.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts) };
    ts.tv_sec as u64 * 1000 + ts.tv_nsec as u64 / 1_000_000
}

fn watchdog() -> &'static Watchdog {
    WATCHDOG.get_or_init(|| {
        let mut res = libc::timespec { tv_sec: 0, tv_nsec: 0 };
        // SAFETY: `res` is a valid timespec to write.
        unsafe { libc::clock_getres(libc::CLOCK_MONOTONIC_COARSE, &mut res) };
        let slack_ms = (res.tv_sec as u64 * 1000 + (res.tv_nsec as u64).div_ceil(1_000_000)).max(1);
        std::thread::Builder::new()
            .name("libcgi-watchdog".into())
            .spawn(|| watchdog().run())
            .expect("starting the mod_libcgi watchdog thread");
        Watchdog { threads: Mutex::new(Vec::new()), slack_ms }
    })
}

impl Watchdog {
    fn run(&self) {
        loop {
            let now = now_ms();
            let mut next: Option<u64> = None;
            // Scanned under the lock: only a thread's first call takes it too.
            let threads = self.threads.lock().unwrap_or_else(|e| e.into_inner());
            for d in threads.iter() {
                let state = d.state.load(Ordering::Acquire);
                if state <= SIGNALLED {
                    continue;
                }
                if state > now {
                    next = Some(next.map_or(state, |n| n.min(state)));
                    continue;
                }
                // Claimed only if it is still the same call: a thread that
                // has disarmed (or armed anew) in the meantime is left alone.
                if d.state.compare_exchange(state, CLAIMED, Ordering::AcqRel, Ordering::Acquire).is_ok() {
                    // SAFETY: while the state is CLAIMED the thread's call
                    // cannot be disarmed (disarm waits), so its guard and the
                    // thread are live.
                    unsafe {
                        libcgi_guard_expire(d.guard as *mut c_void);
                        libc::pthread_kill(d.thread, timer_signal());
                    }
                    d.state.store(SIGNALLED, Ordering::Release);
                }
            }
            // Never sleeps longer than a tick, so that `arm` need not wake it
            // (a futex wake and a context switch on every request): a new
            // deadline is at worst noticed one tick late.
            drop(threads);
            let nap = next.map_or(TICK, |t| Duration::from_millis(t.saturating_sub(now_ms())).min(TICK));
            std::thread::sleep(nap.max(Duration::from_millis(1)));
        }
    }

    /// This thread's Deadline, registered with the watchdog on first use;
    /// None if the thread's guard cannot be set up (the call then runs
    /// without a deadline, and libcgi_call reports why).
    fn mine(&self) -> Option<&'static Deadline> {
        // SAFETY: the slot is in this thread's own guard, only ever used
        // from this thread.
        let watch = unsafe { libcgi_thread_watch() };
        if watch.is_null() {
            return None;
        }
        let p = unsafe { *watch } as *const Deadline;
        if !p.is_null() {
            // SAFETY: set in `register` from a leaked, never-freed Deadline.
            return Some(unsafe { &*p });
        }
        Some(self.register(watch))
    }

    #[cold]
    #[inline(never)]
    fn register(&self, watch: *mut *mut c_void) -> &'static Deadline {
        let d: &'static Deadline = Box::leak(Box::new(Deadline {
            state: AtomicU64::new(IDLE),
            // SAFETY: the guard exists (its watch slot was just read).
            guard: unsafe { libcgi_thread_guard() } as usize,
            // SAFETY: pthread_self has no preconditions.
            thread: unsafe { libc::pthread_self() },
        }));
        self.threads.lock().unwrap_or_else(|e| e.into_inner()).push(d);
        // SAFETY: as in `mine`.
        unsafe { *watch = d as *const Deadline as *mut c_void };
        d
    }

    fn arm(&self, timeout: Duration) -> Option<&'static Deadline> {
        let d = self.mine()?;
        let ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX / 4);
        let deadline = (now_ms() + ms + self.slack_ms).max(SIGNALLED + 1);
        d.state.store(deadline, Ordering::Release);
        Some(d)
    }

    fn disarm(d: &Deadline) {
        loop {
            match d.state.load(Ordering::Acquire) {
                // The watchdog is between marking the guard and sending the
                // signal: let it finish, so that it cannot mark the next call.
                CLAIMED => std::thread::yield_now(),
                IDLE => return,
                state => {
                    if d.state.compare_exchange(state, IDLE, Ordering::AcqRel, Ordering::Acquire).is_ok() {
                        if state == SIGNALLED {
                            // The call may have ended before the signal came:
                            // the mark must not outlive it into the next call
                            // (a late signal finds no mark and is ignored).
                            // SAFETY: the guard is this thread's own, live.
                            unsafe { libcgi_guard_reset(d.guard as *mut c_void) };
                        }
                        return;
                    }
                }
            }
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
    let armed = match timeout {
        Some(t) if !t.is_zero() => watchdog().arm(t),
        _ => None,
    };
    libcgi_call(f, how, arg, &mut out);
    if let Some(d) = armed {
        Watchdog::disarm(d);
    }
    out
}
