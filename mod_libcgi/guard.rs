//! Calls into scripts under the C guard (shim.c), and the watchdog that
//! interrupts calls running past their deadline.
//!
//! The watchdog is one thread per server process that looks, every tick, at
//! the deadline each server thread publishes for its call in progress.  A
//! call costs a load and two stores of its own atomic and a read of the coarse clock (no lock, no
//! syscall, no cache line shared between server threads), where a per-call
//! POSIX timer would cost two syscalls per request.  When a deadline passes,
//! the watchdog marks that thread's guard and sends it the timer signal.  The
//! handler jumps back to the guard only if the thread is executing the
//! script's own code (`Code`, the script's executable segments): anywhere
//! else (libc, the loader, Apache) a jump could leave a lock held, so it
//! declines and the watchdog signals again every few milliseconds; inside
//! one of our callbacks it leaves a note that the callback's wrapper acts on
//! when it returns.  After a grace the next signal jumps wherever the thread
//! is (the process is then recycled), and a thread that never acts on the
//! signal makes the watchdog end the process (shim.c's last resort).  The
//! same thread ends a process that a jump from unsafe code left unsound and
//! that has not gone within a few seconds.

use std::ffi::{c_char, c_int, c_void};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

pub const RETURNED: c_int = 0;
pub const FAULT: c_int = 1;
pub const TIMEOUT: c_int = 2;
pub const EXITED: c_int = 3;
/// A callback the script called panicked (caught there: crate::panic); the
/// call was ended by the callback's wrapper.
pub const PANIC: c_int = 4;
/// Not called: the call needs a deadline and the watchdog thread that
/// enforces it cannot be started (pthread_create failed; `rc` is the errno).
pub const NO_WATCHDOG: c_int = 5;

pub const CALL_INT_STR: c_int = 0;
pub const CALL_INT_VOID: c_int = 1;
pub const CALL_VOID_VOID: c_int = 2;
/// `int dlclose(void *)` and the like: code of the loader, inside which any
/// jump leaves the loader lock held.
pub const CALL_LOADER: c_int = 3;

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
    /// The jump left code that is not the script's own (libc, the loader, a
    /// callback): the process is unsound and is recycled.
    pub unsafe_jump: c_int,
    /// The fault was the thread's stack running out.
    pub stack: c_int,
}

impl Default for Outcome {
    fn default() -> Self {
        Outcome {
            kind: RETURNED,
            rc: 0,
            signo: 0,
            si_code: 0,
            addr: std::ptr::null_mut(),
            exit_status: 0,
            unsafe_jump: 0,
            stack: 0,
        }
    }
}

impl Outcome {
    /// A fault or a timeout: the script's state can no longer be trusted.
    pub fn is_fault(&self) -> bool {
        self.kind == FAULT || self.kind == TIMEOUT
    }

    /// Says what happened, for the error log.
    pub fn describe(&self, timeout: Option<Duration>) -> String {
        let mut what = self.describe_kind(timeout);
        if self.stack != 0 {
            what.push_str(" (stack exhausted)");
        }
        if self.unsafe_jump != 0 {
            what.push_str(
                " outside the script's own code (in libc, the loader or a callback): \
                 this server process will be recycled",
            );
        }
        what
    }

    fn describe_kind(&self, timeout: Option<Duration>) -> String {
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
            PANIC => format!("ended by a panic in mod_libcgi {}", crate::panic::message()),
            NO_WATCHDOG => format!(
                "not run: the watchdog thread that enforces LibCGITimeout cannot be started ({}); \
                 tried again on the next request",
                std::io::Error::from_raw_os_error(self.rc)
            ),
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
    pub thread_gone: unsafe extern "C" fn(*mut c_void),
}

unsafe extern "C" {
    pub fn libcgi_install_handlers(timer_signal: c_int, error_log_fd: c_int) -> c_int;
    pub fn libcgi_set_api(api: *const RsApi);
    pub fn libcgi_watch_forks() -> c_int;
    fn libcgi_thread_guard() -> *mut c_void;
    fn libcgi_guard_expire(guard: *mut c_void);
    fn libcgi_guard_force(guard: *mut c_void);
    fn libcgi_guard_depth(guard: *mut c_void) -> c_int;
    fn libcgi_guard_seen(guard: *mut c_void) -> c_int;
    fn libcgi_guard_reset(guard: *mut c_void);
    fn libcgi_guard_script(guard: *mut c_void) -> *const c_char;
    fn libcgi_thread_watch() -> *mut *mut c_void;
    fn libcgi_call(f: *const c_void, how: c_int, arg: *mut c_char, code: *const Code, out: *mut Outcome) -> c_int;
    fn libcgi_doomed_at() -> u64;
    fn libcgi_doom_expired() -> !;
    fn libcgi_unsound() -> c_int;
    fn libcgi_running_here(code: *const c_void) -> c_int;
    fn libcgi_last_resort(script: *const c_char, why: *const c_char) -> !;

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
    pub fn libcgi_c_pthread_exit(retval: *mut c_void);
    pub fn libcgi_c_abort();
    pub fn libcgi_c___assert_fail(a: *const c_char, f: *const c_char, l: u32, func: *const c_char);
    pub fn libcgi_c_pthread_sigmask(how: c_int, set: *const c_void, old: *mut c_void) -> c_int;
    pub fn libcgi_c_sigprocmask(how: c_int, set: *const c_void, old: *mut c_void) -> c_int;
    pub fn libcgi_c_sigsuspend(mask: *const c_void) -> c_int;
    pub fn libcgi_c_sigaction(sig: c_int, act: *const c_void, old: *mut c_void) -> c_int;
    pub fn libcgi_c_signal(sig: c_int, handler: usize) -> usize;
    pub fn libcgi_c_sysv_signal(sig: c_int, handler: usize) -> usize;
    pub fn libcgi_c_sigset(sig: c_int, handler: usize) -> usize;
    pub fn libcgi_c_sighold(sig: c_int) -> c_int;
    pub fn libcgi_c_sigignore(sig: c_int) -> c_int;
    pub fn libcgi_c_sigaltstack(ss: *const c_void, old: *mut c_void) -> c_int;
}

/// Where a script's code is: its executable PT_LOAD segments (as `struct
/// libcgi_code` in shim.c).  A timeout jumps only while the interrupted
/// thread runs inside these, and a fault elsewhere makes the process unsound.
#[repr(C)]
pub struct Code {
    start: [usize; 4],
    end: [usize; 4],
    n: c_int,
    name: *const c_char,
}

// SAFETY: plain addresses, and a name that lives as long as the Script that
// owns this Code (both are immutable after load).
unsafe impl Send for Code {}
unsafe impl Sync for Code {}

impl Code {
    /// Code that is nobody's: every jump out of a call with it is unsafe.
    pub fn none() -> Code {
        Code { start: [0; 4], end: [0; 4], n: 0, name: std::ptr::null() }
    }

    /// The executable segments of the loaded object that contains `addr`
    /// (a function of the script), found once at load with
    /// dl_iterate_phdr.  `name` (the script's path) must outlive the Code.
    pub fn of(addr: usize, name: &std::ffi::CStr) -> Code {
        struct Find {
            addr: usize,
            code: Code,
        }
        unsafe extern "C" fn each(info: *mut libc::dl_phdr_info, _size: usize, data: *mut c_void) -> c_int {
            // SAFETY: the loader hands valid program headers of a loaded
            // object for the duration of this callback; `data` is our Find.
            unsafe {
                let f = &mut *(data as *mut Find);
                let info = &*info;
                let base = info.dlpi_addr as usize;
                let phdrs = std::slice::from_raw_parts(info.dlpi_phdr, info.dlpi_phnum as usize);
                let exec = |p: &&libc::Elf64_Phdr| p.p_type == libc::PT_LOAD && p.p_flags & libc::PF_X != 0;
                let contains = phdrs.iter().filter(exec).any(|p| {
                    let s = base + p.p_vaddr as usize;
                    f.addr >= s && f.addr < s + p.p_memsz as usize
                });
                if !contains {
                    return 0;
                }
                for p in phdrs.iter().filter(exec).take(4) {
                    let i = f.code.n as usize;
                    f.code.start[i] = base + p.p_vaddr as usize;
                    f.code.end[i] = base + (p.p_vaddr + p.p_memsz) as usize;
                    f.code.n += 1;
                }
                1
            }
        }
        let mut f = Find { addr, code: Code::none() };
        // SAFETY: `each` only reads what the loader hands it and writes `f`.
        unsafe { libc::dl_iterate_phdr(Some(each), &mut f as *mut Find as *mut c_void) };
        f.code.name = name.as_ptr();
        f.code
    }

    /// Whether a call of this script is in progress on this thread (a
    /// subrequest into the script that is running, e.g. an include of itself).
    pub fn running_here(&self) -> bool {
        // SAFETY: reads this thread's own guard.
        unsafe { libcgi_running_here(self as *const Code as *const c_void) != 0 }
    }
}

/// Whether an unsafe jump has happened in this process: it is then recycled
/// after the response whatever LibCGIFaultAction says.
pub fn unsound() -> bool {
    // SAFETY: reads one atomic of shim.c.
    unsafe { libcgi_unsound() != 0 }
}

/// The real-time signal the watchdog sends.  Not SIGUSR1, SIGHUP or SIGWINCH:
/// the MPMs own those.  glibc keeps the first real-time signals for itself;
/// SIGRTMIN() already skips them.
pub fn timer_signal() -> c_int {
    libc::SIGRTMIN() + 4
}

/// How late the watchdog may notice a deadline at most.
const TICK: Duration = Duration::from_millis(100);
/// How often a signalled call that has not ended is signalled again: the
/// handler jumps only when the thread runs the script's own code, so a
/// script that spends most of its time inside libc is caught on a later try.
const RESIGNAL_MS: u64 = 5;
/// How many signals a late call must have taken outside the script's code,
/// over at least GRACE_MS, before the next one jumps wherever the thread is
/// (the process is then recycled).  A loop that spends 5% of its time in its
/// own code escapes 200 tries with odds of 1 in 30,000.
const FORCE_AFTER_SAMPLES: u64 = 200;
const GRACE_MS: u64 = 1000;
/// A signalled call that has taken no signal for this long does not act on
/// signals at all (it blocked them by a raw system call, or is stuck in the
/// kernel): the process is ended.
const STUCK_MS: u64 = 2500;

// States of a Deadline besides a deadline itself (which is always larger).
/// No call with a deadline in progress.
const IDLE: u64 = 0;
/// The watchdog is marking and signalling this call right now.
const CLAIMED: u64 = 1;
/// The watchdog has signalled this call.
const SIGNALLED: u64 = 2;

/// What a server thread publishes for the watchdog.  One per thread, made on
/// its first call with a deadline and freed when the thread exits (shim.c's
/// thread key destructor calls `thread_gone`); the guard in shim.c holds the
/// pointer to it (a Rust thread_local! would cost a call into the loader per
/// access).  A cache line each: two threads' deadlines side by side would
/// make every request of one thread take the line away from the other.
#[repr(align(64))]
struct Deadline {
    /// IDLE, CLAIMED, SIGNALLED, or the deadline in milliseconds of
    /// CLOCK_MONOTONIC_COARSE.  Written by its thread (arm, disarm) and by the
    /// watchdog only through compare-exchange, so neither loses the other's
    /// update.
    state: AtomicU64,
    /// The watchdog's own bookkeeping of the current late call: when it was
    /// first signalled, when it last took a signal, the guard's count of
    /// signals taken then, and how many it has taken.
    signalled_at: AtomicU64,
    progress_at: AtomicU64,
    last_seen: AtomicU64,
    samples: AtomicU64,
    guard: usize,
    thread: libc::pthread_t,
}

/// A registered Deadline (its address; freed only under the watchdog's lock).
struct Entry(*const Deadline);
// SAFETY: the pointee is shared through atomics only, and freed only by
// `thread_gone` under the lock that every reader holds.
unsafe impl Send for Entry {}

struct Watchdog {
    threads: Mutex<Vec<Entry>>,
    /// The coarse clock's resolution in ms, added to every deadline so that
    /// a call is never cut before its timeout has fully passed.
    slack_ms: u64,
    /// Its thread runs.  Starting it can fail (EAGAIN: RLIMIT_NPROC, the
    /// kernel's thread limit, memory): then every call that needs a deadline
    /// tries again, under `starting`, and is refused meanwhile.
    running: AtomicBool,
    starting: Mutex<()>,
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
        Watchdog {
            threads: Mutex::new(Vec::new()),
            slack_ms,
            running: AtomicBool::new(false),
            starting: Mutex::new(()),
        }
    })
}

/// The watchdog, its thread started if it was not yet.
#[inline]
fn running() -> std::io::Result<&'static Watchdog> {
    let w = watchdog();
    if w.running.load(Ordering::Acquire) {
        return Ok(w);
    }
    w.start()
}

/// Starts the watchdog now (child_init), so that the last resort for an
/// unsound process is there even if no call ever had a deadline.  A failure
/// is not final: the next call with a deadline tries again.
pub fn start_watchdog() -> std::io::Result<()> {
    running().map(|_| ())
}

impl Watchdog {
    #[cold]
    #[inline(never)]
    fn start(&'static self) -> std::io::Result<&'static Watchdog> {
        let _one = self.starting.lock().unwrap_or_else(|e| e.into_inner());
        if !self.running.load(Ordering::Acquire) {
            std::thread::Builder::new().name("libcgi-watchdog".into()).spawn(move || self.run())?;
            self.running.store(true, Ordering::Release);
        }
        Ok(self)
    }

    fn run(&self) {
        // Signals sent to the process (prefork's SIGTERM, SIGUSR1, SIGHUP)
        // are for the MPM's own threads, which wait for them in accept or
        // poll: never this one.
        // SAFETY: plain signal-set calls on a local set.
        unsafe {
            let mut all: libc::sigset_t = std::mem::zeroed();
            libc::sigfillset(&mut all);
            for sig in [libc::SIGSEGV, libc::SIGBUS, libc::SIGFPE, libc::SIGILL, libc::SIGABRT, libc::SIGSYS] {
                libc::sigdelset(&mut all, sig);
            }
            libc::pthread_sigmask(libc::SIG_BLOCK, &all, std::ptr::null_mut());
        }
        loop {
            let now = now_ms();
            // SAFETY: reads one atomic of shim.c.
            let doomed = unsafe { libcgi_doomed_at() };
            if doomed != 0 && now >= doomed {
                // SAFETY: formats into static memory and ends the process.
                unsafe { libcgi_doom_expired() }
            }
            let mut next: Option<u64> = (doomed != 0).then_some(doomed);
            // Scanned under the lock: only a thread's first call and its exit
            // take it too.
            let threads = self.threads.lock().unwrap_or_else(|e| e.into_inner());
            for e in threads.iter() {
                // SAFETY: entries are freed only under this lock.
                let d = unsafe { &*e.0 };
                let state = d.state.load(Ordering::Acquire);
                if state == SIGNALLED {
                    self.escalate(d, now);
                    next = Some(next.map_or(now + RESIGNAL_MS, |n| n.min(now + RESIGNAL_MS)));
                    continue;
                }
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
                    d.signalled_at.store(now, Ordering::Relaxed);
                    d.progress_at.store(now, Ordering::Relaxed);
                    d.samples.store(0, Ordering::Relaxed);
                    // SAFETY: while the state is CLAIMED the thread's call
                    // cannot be disarmed (disarm waits), so its guard and the
                    // thread are live.
                    unsafe {
                        let seen = libcgi_guard_seen(d.guard as *mut c_void);
                        d.last_seen.store(seen as u32 as u64, Ordering::Relaxed);
                        libcgi_guard_expire(d.guard as *mut c_void);
                        libc::pthread_kill(d.thread, timer_signal());
                    }
                    d.state.store(SIGNALLED, Ordering::Release);
                    next = Some(next.map_or(now + RESIGNAL_MS, |n| n.min(now + RESIGNAL_MS)));
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

    /// A signalled call that has not ended: signal it again once it has
    /// taken the last signal (the handler declined, the thread being outside
    /// the script's code), after enough such tries let the next signal jump
    /// anyway, and end the process if the thread takes no signal at all.
    fn escalate(&self, d: &Deadline, now: u64) {
        if d.state.compare_exchange(SIGNALLED, CLAIMED, Ordering::AcqRel, Ordering::Acquire).is_err() {
            return;
        }
        let guard = d.guard as *mut c_void;
        // SAFETY: CLAIMED: the call cannot be disarmed, the guard and thread
        // are live (see run).
        unsafe {
            // Inside our callbacks (writing to a slow client, say) the
            // thread is bounded by Apache's own timeouts and jumps when the
            // callback returns if the signal found it there: no escalation,
            // and no signal that would only interrupt Apache's system calls.
            if libcgi_guard_depth(guard) == 0 {
                let seen = libcgi_guard_seen(guard) as u32 as u64;
                let last = d.last_seen.swap(seen, Ordering::Relaxed);
                if seen != last {
                    d.progress_at.store(now, Ordering::Relaxed);
                    let samples = d.samples.fetch_add(seen.wrapping_sub(last) & 0xffff_ffff, Ordering::Relaxed);
                    let since = now.saturating_sub(d.signalled_at.load(Ordering::Relaxed));
                    if samples >= FORCE_AFTER_SAMPLES && since >= GRACE_MS {
                        libcgi_guard_force(guard);
                    }
                    libc::pthread_kill(d.thread, timer_signal());
                } else if now.saturating_sub(d.progress_at.load(Ordering::Relaxed)) >= STUCK_MS {
                    libcgi_last_resort(
                        libcgi_guard_script(guard),
                        c"still running after its LibCGITimeout and not interruptible (signals blocked, or stuck in the kernel)".as_ptr(),
                    );
                }
            }
        }
        d.state.store(SIGNALLED, Ordering::Release);
    }

    /// This thread's Deadline, registered with the watchdog on first use;
    /// None if the thread's guard cannot be set up (the call then runs
    /// without a deadline, and libcgi_call reports why).
    fn mine(&self) -> Option<&Deadline> {
        // SAFETY: the slot is in this thread's own guard, only ever used
        // from this thread.
        let watch = unsafe { libcgi_thread_watch() };
        if watch.is_null() {
            return None;
        }
        let p = unsafe { *watch } as *const Deadline;
        if !p.is_null() {
            // SAFETY: set in `register`; freed only when this thread exits.
            return Some(unsafe { &*p });
        }
        Some(self.register(watch))
    }

    #[cold]
    #[inline(never)]
    fn register(&self, watch: *mut *mut c_void) -> &Deadline {
        let d = Box::into_raw(Box::new(Deadline {
            state: AtomicU64::new(IDLE),
            signalled_at: AtomicU64::new(0),
            progress_at: AtomicU64::new(0),
            last_seen: AtomicU64::new(0),
            samples: AtomicU64::new(0),
            // SAFETY: the guard exists (its watch slot was just read).
            guard: unsafe { libcgi_thread_guard() } as usize,
            // SAFETY: pthread_self has no preconditions.
            thread: unsafe { libc::pthread_self() },
        }));
        self.threads.lock().unwrap_or_else(|e| e.into_inner()).push(Entry(d));
        // SAFETY: as in `mine`; `d` lives until this thread exits.
        unsafe {
            *watch = d as *mut c_void;
            &*d
        }
    }

    /// Arms this thread's deadline; returns what was there before (the
    /// deadline of the call this one is nested in, or IDLE).
    fn arm(&self, timeout: Duration) -> Option<(&Deadline, u64)> {
        let d = self.mine()?;
        let ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX / 4);
        let mine = (now_ms() + ms + self.slack_ms).max(SIGNALLED + 1);
        loop {
            let prev = d.state.load(Ordering::Acquire);
            let new = match prev {
                IDLE => mine,
                // The watchdog is signalling the outer call: let it finish.
                CLAIMED => {
                    std::thread::yield_now();
                    continue;
                }
                // The outer call is already late: the nested one is too.
                SIGNALLED => SIGNALLED,
                outer => mine.min(outer),
            };
            if prev == IDLE {
                // Only this thread moves the state away from IDLE.
                d.state.store(new, Ordering::Release);
                return Some((d, prev));
            }
            if d.state.compare_exchange(prev, new, Ordering::AcqRel, Ordering::Acquire).is_ok() {
                return Some((d, prev));
            }
        }
    }

    /// Ends the call's deadline and puts back `prev`, the outer call's.
    fn disarm(d: &Deadline, prev: u64) {
        loop {
            match d.state.load(Ordering::Acquire) {
                // The watchdog is between marking the guard and sending the
                // signal: let it finish, so that it cannot mark the next call.
                CLAIMED => std::thread::yield_now(),
                state => {
                    if state == prev && prev != SIGNALLED {
                        return;
                    }
                    if d.state.compare_exchange(state, prev, Ordering::AcqRel, Ordering::Acquire).is_ok() {
                        if state == SIGNALLED && prev != SIGNALLED {
                            // The call may have ended before the signal came:
                            // the mark must not outlive it into the next call
                            // (a late signal finds no mark and is ignored).
                            // An outer deadline put back that has passed too
                            // is marked again by the watchdog's next look.
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

/// A server thread is exiting: its Deadline leaves the watchdog's list (under
/// the lock, so the watchdog never touches it again) and is freed.
///
/// # Safety
/// `watch` is the pointer `register` stored, of the calling thread, which is
/// in no call.
pub unsafe extern "C" fn thread_gone(watch: *mut c_void) {
    if crate::panic::catch(|| forget_thread(watch)).is_err() {
        crate::panic::in_hook("thread exit", std::ptr::null());
    }
}

unsafe fn forget_thread(watch: *mut c_void) {
    let Some(w) = WATCHDOG.get() else { return };
    let p = watch as *const Deadline;
    let mut threads = w.threads.lock().unwrap_or_else(|e| e.into_inner());
    threads.retain(|e| !std::ptr::eq(e.0, p));
    drop(threads);
    drop(Box::from_raw(p as *mut Deadline));
}

/// Calls `f` (a script function of shape `how`) under the guard, with a
/// deadline when `timeout` is given.  `code` is where the script's code is.
///
/// # Safety
/// `f` is a function of the loaded script with the signature `how` names
/// (for CALL_LOADER: `int f(void *)` given `arg`), and the script stays
/// loaded during the call.
pub unsafe fn call(f: *const c_void, how: c_int, arg: *mut c_char, timeout: Option<Duration>, code: &Code) -> Outcome {
    let mut out = Outcome::default();
    let armed = match timeout {
        Some(t) if !t.is_zero() => match running() {
            Ok(w) => w.arm(t),
            // initfunc and processfunc are not run untimed; terminatefunc
            // and the destructors are, since the script must be closed (and
            // with no watchdog, nothing of it ever ran with a deadline).
            Err(e) if matches!(how, CALL_INT_STR | CALL_INT_VOID) => {
                out.kind = NO_WATCHDOG;
                out.rc = e.raw_os_error().unwrap_or(libc::EAGAIN);
                return out;
            }
            Err(_) => None,
        },
        _ => None,
    };
    libcgi_call(f, how, arg, code, &mut out);
    if let Some((d, prev)) = armed {
        Watchdog::disarm(d, prev);
    }
    out
}
