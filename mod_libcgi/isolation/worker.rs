//! A worker: one process, one request at a time, the script's ABI as in the
//! server.  Its `environ` is the request's environment (so `getenv` from any
//! library the script uses sees it); its lwrite fills the slot's buffer and
//! hands it to the server thread when full, on lflush and at the end.  A
//! fault or a deadline kills the worker: nothing here catches signals.

use super::transport::{self, Ident, Segment, Slot, DATA, IDLE, TO_SERVER, TO_WORKER};
use crate::elfpatch;
use crate::guard;
use libloading::os::unix::{Library, RTLD_LOCAL, RTLD_NOW};
use std::collections::HashMap;
use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::sync::atomic::Ordering;

unsafe extern "C" {
    static mut environ: *mut *mut c_char;
}

struct Loaded {
    /// Device and inode of what was actually opened (fstat of the
    /// descriptor): one object is one load, as in process (registry.rs),
    /// whatever its ctime or the request's stat says.
    object: (i64, i64),
    process: unsafe extern "C" fn(*mut c_char) -> c_int,
    terminate: Option<unsafe extern "C" fn()>,
    _lib: Library,
    /// Open while the library is: glibc would hand back this library for
    /// the next script opened under the same /proc/self/fd name.
    _fd: std::os::fd::OwnedFd,
    /// Where the script's code is, for the guard (names `_path`).
    code: Box<guard::Code>,
    _path: Box<CString>,
}

impl Drop for Loaded {
    fn drop(&mut self) {
        if let Some(t) = self.terminate {
            // SAFETY: the library is still open.
            unsafe { guard::call(t as *const c_void, guard::CALL_VOID_VOID, std::ptr::null_mut(), None, &self.code) };
        }
    }
}

/// The worker's one request: where its output goes.
struct Call {
    slot: *mut Slot,
    /// Output bytes waiting in the slot's buffer.
    out: usize,
    refused: bool,
    input_len: usize,
    host: CString,
    /// On a sampled request: CPU ns spent in round trips the script's
    /// callbacks made (output, body, host), which are crossing, not script.
    sample: bool,
    rt_cpu: u64,
}

/// This worker's CPU clock at the end of the request before a sampled one
/// (0: none), so that a sampled request's cost runs from there: the
/// wake-up, the waits and the hand-overs between requests are crossing
/// costs no window inside a request sees (measured in the 2026-12-03 mixed
/// workload: windows saw 2-4 us per request where the throughput lost
/// 25 us).  Read only then (transport::sampled), not on every request: it
/// is a syscall.
static LAST_END: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

static mut CALL: *mut Call = std::ptr::null_mut();

fn call<'a>() -> Option<&'a mut Call> {
    // SAFETY: a worker is single-threaded for our purposes: CALL is set
    // around processfunc/initfunc only, by the one thread that runs them.
    unsafe { CALL.as_mut() }
}

impl Call {
    fn slot(&mut self) -> &mut Slot {
        // SAFETY: the slot stays mapped for the worker's life.
        unsafe { &mut *self.slot }
    }

    /// Hands the turn to the server with `op` and the buffered output,
    /// without waiting for an answer (OP_DONE: the server turns the slot
    /// IDLE itself, so a request costs one round trip, not two).
    fn hand_over(&mut self, op: u32, arg: i32) {
        let n = self.out;
        self.out = 0;
        let s = self.slot();
        s.op = op;
        s.arg = arg;
        s.len = n as u64;
        if !transport::pass(&s.state, TO_WORKER, TO_SERVER) {
            die();
        }
    }

    /// Sends `op` with the buffered output and waits for the answer.
    fn round_trip(&mut self, op: u32, arg: i32) -> bool {
        let c0 = if self.sample { transport::thread_cpu_ns() } else { 0 };
        self.hand_over(op, arg);
        if transport::wait_change(&self.slot().state, TO_SERVER, None) != TO_WORKER {
            die();
        }
        if self.sample {
            self.rt_cpu += transport::thread_cpu_ns() - c0;
        }
        true
    }

    fn write(&mut self, mut data: &[u8]) -> c_int {
        let total = data.len();
        while !data.is_empty() {
            if self.refused {
                return -1;
            }
            let room = DATA - self.out;
            let n = room.min(data.len());
            let at = self.out;
            self.slot().data[at..at + n].copy_from_slice(&data[..n]);
            self.out += n;
            data = &data[n..];
            if self.out == DATA {
                self.flush(0);
            }
        }
        if self.refused {
            -1
        } else {
            total as c_int
        }
    }

    fn flush(&mut self, arg: i32) -> c_int {
        self.round_trip(transport::OP_OUT, arg);
        let s = self.slot();
        if s.op == transport::OP_ACK && s.arg < 0 {
            self.refused = true;
        }
        if self.refused {
            -1
        } else {
            0
        }
    }
}

extern "C" fn forked_child() {
    // SAFETY: the only thread of the new process; the request is the
    // worker's, not this copy's.
    unsafe { CALL = std::ptr::null_mut() };
}

/// The guard ended a call of the script without a signal: a callback found
/// the thread's stack all but used up (recursion through lprintf), which the
/// guard treats as the SIGSEGV it would soon be.  Nothing is caught in a
/// worker, so the worker dies of that signal, as it would have a moment
/// later, and the server thread answers as after any crash.  (Taken for a
/// return, it sent the output so far as a complete 200.)
fn fault_ends_the_worker(out: &guard::Outcome) -> ! {
    let sig = if out.signo > 0 { out.signo } else { libc::SIGSEGV };
    // SAFETY: ends this process only; the signal's default action, unblocked.
    unsafe {
        libc::signal(sig, libc::SIG_DFL);
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, sig);
        libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
        libc::raise(sig);
        libc::_exit(128 + sig)
    }
}

/// The server thread is gone or the slot was taken from us: nothing to
/// answer to.
fn die() -> ! {
    // SAFETY: ends this process only.
    unsafe { libc::_exit(3) }
}

unsafe extern "C" fn w_lwrite(buf: *const c_void, len: usize) -> c_int {
    let Some(c) = call() else { return -1 };
    if len == 0 {
        return 0;
    }
    if buf.is_null() || len > c_int::MAX as usize {
        return -1;
    }
    c.write(std::slice::from_raw_parts(buf as *const u8, len))
}

unsafe extern "C" fn w_lflush() -> c_int {
    match call() {
        Some(c) => c.flush(transport::OUT_FLUSH),
        None => -1,
    }
}

unsafe extern "C" fn w_get_remote_host() -> *const c_char {
    let Some(c) = call() else { return std::ptr::null() };
    if c.host.is_empty() {
        c.round_trip(transport::OP_GET_HOST, 0);
        let s = c.slot();
        let n = (s.len as usize).min(DATA);
        let end = s.data[..n].iter().position(|&b| b == 0).unwrap_or(n);
        c.host = CString::new(&s.data[..end]).unwrap_or_default();
    }
    c.host.as_ptr()
}

unsafe extern "C" fn w_linput_length() -> usize {
    call().map_or(0, |c| c.input_len)
}

// The environment functions are the libc ones: in a worker `environ` is the
// request's own.  (Scripts' imports of them are not rebound here.)
unsafe extern "C" fn w_getenv(n: *const c_char) -> *mut c_char {
    libc::getenv(n)
}
unsafe extern "C" fn w_secure_getenv(n: *const c_char) -> *mut c_char {
    libc::getenv(n)
}
unsafe extern "C" fn w_setenv(n: *const c_char, v: *const c_char, o: c_int) -> c_int {
    libc::setenv(n, v, o)
}
unsafe extern "C" fn w_unsetenv(n: *const c_char) -> c_int {
    libc::unsetenv(n)
}
unsafe extern "C" fn w_putenv(s: *mut c_char) -> c_int {
    libc::putenv(s)
}
unsafe extern "C" fn w_clearenv() -> c_int {
    libc::clearenv()
}

static WORKER_API: guard::RsApi = guard::RsApi {
    lwrite: w_lwrite,
    lflush: w_lflush,
    get_remote_host: w_get_remote_host,
    linput_length: w_linput_length,
    getenv: w_getenv,
    secure_getenv: w_secure_getenv,
    setenv: w_setenv,
    unsetenv: w_unsetenv,
    putenv: w_putenv,
    clearenv: w_clearenv,
    thread_gone: guard::thread_gone,
};

/// exit() & co. end the request, as in the server (the worker lives on),
/// and so does pthread_exit on the request's thread (unbound, it ended the
/// worker's only thread, so the worker, and the request got a 500 instead
/// of its output); vfork is fork, as in the server (registry.rs): a vfork
/// child shares the worker's memory and stack, and its exit would end the
/// worker's request.
fn exit_bindings() -> [(&'static CStr, usize); 7] {
    [
        (c"exit", guard::libcgi_c_exit as *const () as usize),
        (c"_exit", guard::libcgi_c__exit as *const () as usize),
        (c"_Exit", guard::libcgi_c__Exit as *const () as usize),
        (c"quick_exit", guard::libcgi_c_quick_exit as *const () as usize),
        (c"pthread_exit", guard::libcgi_c_pthread_exit as *const () as usize),
        (c"vfork", libc::fork as *const () as usize),
        (c"__vfork", libc::fork as *const () as usize),
    ]
}

unsafe fn limit(res: libc::__rlimit_resource_t, v: u64) {
    if v > 0 {
        let l = libc::rlimit { rlim_cur: v, rlim_max: v };
        libc::setrlimit(res, &l);
    }
}

/// Takes the identity: limits first (raising them needs root), then the
/// group, then the user.  A worker that cannot drop its privileges exits.
unsafe fn become_(ident: Ident) {
    limit(libc::RLIMIT_AS, ident.limit_as);
    limit(libc::RLIMIT_CPU, ident.limit_cpu);
    limit(libc::RLIMIT_NOFILE, ident.limit_nofile);
    if libc::geteuid() == 0 {
        let g = ident.gid;
        if libc::setgroups(1, &g) != 0 || libc::setgid(ident.gid) != 0 || libc::setuid(ident.uid) != 0 {
            libc::_exit(4);
        }
        if ident.uid != 0 && libc::setuid(0) == 0 {
            libc::_exit(4);
        }
    }
    libc::prctl(libc::PR_SET_DUMPABLE, 0);
}

/// The worker's life.  Never returns.
///
/// # Safety
/// In a freshly forked worker, `slot` one of `seg`'s slots.
pub unsafe fn run(seg: &'static Segment, slot: *mut Slot, ident: Ident) -> ! {
    libc::prctl(libc::PR_SET_NAME, c"libcgi-worker".as_ptr());
    let manager = libc::getppid();
    become_(ident);
    // A change of credentials clears the parent-death signal: set it again,
    // or a manager killed outright would leave its workers as orphans.
    super::supervisor::die_with_parent(manager);
    // Of the segment, the worker keeps only its own slot: a script cannot
    // read or write another worker's request, nor the header.
    // The whole mapping, page-rounded: munmap takes pages, and APR's own
    // size word sits in the first one.
    let start = (seg.map as usize) & !(transport::PAGE - 1);
    let end = (seg.map as usize + seg.map_len).next_multiple_of(transport::PAGE);
    let mine = slot as usize;
    let slot_len = std::mem::size_of::<Slot>();
    libc::munmap(start as *mut c_void, mine - start);
    if mine + slot_len < end {
        libc::munmap((mine + slot_len) as *mut c_void, end - mine - slot_len);
    }
    // Nor the server's metrics (mapped since the parent made them before
    // forking the manager, which reads them for the policy).
    crate::metrics::detach();
    guard::libcgi_set_api(&WORKER_API);
    // The child of a script's fork(): exit() and the return from
    // processfunc end it (shim.c), and its lwrite & co. reach no slot.
    guard::libcgi_watch_forks();
    libc::pthread_atfork(None, None, Some(forked_child));
    report_faults(slot);
    // As in a server process (the MPMs ignore SIGPIPE, and shim.c keeps a
    // script from changing that): a write to a pipe or socket whose reader
    // is gone fails with EPIPE, it does not end the worker and its request.
    libc::signal(libc::SIGPIPE, libc::SIG_IGN);
    let s = &mut *slot;
    let mut scripts: HashMap<Vec<u8>, Loaded> = HashMap::new();
    let mut bufs = Bufs::default();
    // Ready: the server thread that waits for this slot may go on once the
    // manager has stored this worker's pid in its Ctl entry (which only the
    // manager writes).  The slot's own copy is for this side (and forge.c),
    // set here since the manager may still be on its way back from fork.
    s.pid.store(libc::getpid(), Ordering::Release);
    transport::pass(&s.state, transport::EMPTY, IDLE);
    let mut sa: libc::sigaction = std::mem::zeroed();
    sa.sa_sigaction = on_term as *const () as usize;
    libc::sigaction(libc::SIGTERM, &sa, std::ptr::null_mut());
    loop {
        // After OP_DONE the slot is the server's (TO_SERVER) until it turns
        // it IDLE, without waking this worker: the next request's hand-over
        // does.  Told to go (stop, graceful restart) while idle: the
        // scripts' terminatefunc runs, as when a server process exits.
        loop {
            let st = s.state.load(Ordering::Acquire);
            if st == TO_WORKER {
                break;
            }
            if st != IDLE && st != TO_SERVER {
                die();
            }
            if st == IDLE && TERM.load(Ordering::Relaxed) {
                drop(scripts);
                libc::_exit(0);
            }
            transport::wait(&s.state, st, Some(std::time::Instant::now() + transport::SECOND));
        }
        // The answer to the last OP_DONE (written before IDLE, which the
        // load above acquired, directly or through TO_WORKER).  A worker
        // holds one script at most (Slot::script), so that is the one.
        if s.unload != 0 {
            s.unload = 0;
            scripts.clear();
        }
        if s.op != transport::OP_REQ {
            die();
        }
        serve(s, &mut scripts, &mut bufs);
    }
}

static TERM: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// The slot this worker's fault handler reports to, and the worker's pid: a
/// child of the script's fork() shares the slot's mapping, and its faults
/// are its own.
static FAULT_SLOT: std::sync::atomic::AtomicPtr<Slot> = std::sync::atomic::AtomicPtr::new(std::ptr::null_mut());
static WORKER_PID: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(0);

/// Nothing is caught in a worker, but where a synchronous fault happened is
/// written down first, so that the server's line names the address as the
/// in-process guard's does.  One shot (SA_RESETHAND): on return the
/// faulting instruction runs again and meets the default action; on the
/// alternate stack the guard gives the thread, so a stack overflow is
/// reported too.
unsafe fn report_faults(slot: *mut Slot) {
    FAULT_SLOT.store(slot, Ordering::Relaxed);
    WORKER_PID.store(libc::getpid(), Ordering::Relaxed);
    let mut sa: libc::sigaction = std::mem::zeroed();
    sa.sa_sigaction = on_fault as *const () as usize;
    sa.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK | libc::SA_RESETHAND;
    libc::sigemptyset(&mut sa.sa_mask);
    for sig in [libc::SIGSEGV, libc::SIGBUS, libc::SIGFPE, libc::SIGILL] {
        libc::sigaction(sig, &sa, std::ptr::null_mut());
    }
}

extern "C" fn on_fault(sig: c_int, info: *mut libc::siginfo_t, _: *mut c_void) {
    // SAFETY: async-signal-safe only: getpid, atomic stores into the slot
    // (mapped for the worker's life), raise.  `info` is the kernel's.
    unsafe {
        let s = FAULT_SLOT.load(Ordering::Relaxed);
        let sent = (*info).si_code <= 0;
        if !sent && !s.is_null() && libc::getpid() == WORKER_PID.load(Ordering::Relaxed) {
            (*s).fault_addr.store((*info).si_addr() as u64, Ordering::Relaxed);
            (*s).fault_sig.store(sig, Ordering::Release);
        }
        if sent {
            // kill() or raise(): no instruction raises it again on return;
            // pending now, it is taken (by the default action) then.
            libc::raise(sig);
        }
    }
}

extern "C" fn on_term(_: c_int) {
    TERM.store(true, Ordering::Relaxed);
}

/// A worker's request buffers, kept from one request to the next (no
/// allocation per request once they are large enough).
#[derive(Default)]
struct Bufs {
    /// The path and the environment, NUL-terminated strings as the server
    /// wrote them: `environ` points into it.  A copy, because the slot's
    /// buffer carries the output while the script still reads variables.
    head: Vec<u8>,
    envp: Vec<*mut c_char>,
    body: Vec<u8>,
}

unsafe fn serve(s: &mut Slot, scripts: &mut HashMap<Vec<u8>, Loaded>, b: &mut Bufs) {
    s.fault_sig.store(0, Ordering::Relaxed);
    let sample = s.sample != 0;
    let cpu0 = if sample { transport::thread_cpu_ns() } else { 0 };
    let len = (s.len as usize).min(DATA);
    let head = s.head as usize;
    let total = s.total as usize;
    let has_body = s.has_body != 0;
    let mut c = Call { slot: s, out: 0, refused: false, input_len: total, host: CString::default(), sample, rt_cpu: 0 };
    // An environment larger than one message: the rest of it comes first,
    // then the body (the first message is all of it almost always).
    b.head.clear();
    b.body.clear();
    let first = &c.slot().data[..len];
    b.head.extend_from_slice(&first[..head.min(len)]);
    b.body.extend_from_slice(&first[head.min(len)..]);
    while b.head.len() < head {
        c.round_trip(transport::OP_NEED_BODY, 0);
        let s = c.slot();
        let n = (s.len as usize).min(DATA);
        let h = n.min(head - b.head.len());
        b.head.extend_from_slice(&s.data[..h]);
        b.body.extend_from_slice(&s.data[h..n]);
    }
    while b.body.len() < total {
        c.round_trip(transport::OP_NEED_BODY, 0);
        let s = c.slot();
        let n = (s.len as usize).min(DATA).min(total - b.body.len());
        b.body.extend_from_slice(&s.data[..n]);
    }
    b.body.truncate(total);
    b.body.push(0);
    // The request's environment is the process's: getenv anywhere sees it.
    b.envp.clear();
    let base = b.head.as_mut_ptr();
    let path_len = CStr::from_bytes_until_nul(&b.head).map_or(b.head.len(), |p| p.to_bytes().len());
    let mut at = path_len + 1;
    while at < b.head.len() {
        let n = CStr::from_bytes_until_nul(&b.head[at..]).map_or(0, |e| e.to_bytes().len());
        if n == 0 {
            break;
        }
        b.envp.push(base.add(at) as *mut c_char);
        at += n + 1;
    }
    b.envp.push(std::ptr::null_mut());
    environ = b.envp.as_mut_ptr();
    CALL = &mut c;
    let path = &b.head[..path_len.min(b.head.len())];
    let file = (*c.slot).file;
    (*c.slot).loaded = 0;
    // Loaded again only for another object than the one loaded, as in
    // process: not for a chmod or touch (the ctime; the server has checked
    // the trust again), and not for a request whose stat is older than the
    // load (a stale stat of a version replaced since: the path still names
    // what is loaded, which it runs whole).
    // One lookup on the usual request (the script loaded, the same
    // object); `code` is boxed, so its address outlives moving `Loaded`
    // into the map.
    let mut stale = false;
    let hit = match scripts.get(path) {
        Some(l) if l.object == (file[0], file[1]) || path_object(path) == Some(l.object) => {
            Some((l.process, &*l.code as *const guard::Code))
        }
        Some(_) => {
            stale = true;
            None
        }
        None => None,
    };
    let (process, code) = match hit {
        Some(x) => x,
        None => {
            if stale {
                scripts.remove(path);
                (*c.slot).loaded = transport::LOADED_REPLACED;
            }
            (*c.slot).loaded |= transport::LOADED;
            (*c.slot).phase.store(1, Ordering::Release);
            match load(path) {
                Ok(l) => {
                    let x = (l.process, &*l.code as *const guard::Code);
                    scripts.insert(path.to_vec(), l);
                    x
                }
                Err((msg, fault)) => {
                    CALL = std::ptr::null_mut();
                    environ = std::ptr::null_mut();
                    let s = c.slot();
                    let m = msg.as_bytes();
                    let n = m.len().min(DATA);
                    s.data[..n].copy_from_slice(&m[..n]);
                    c.out = n;
                    c.round_trip(transport::OP_LOADFAIL, fault as i32);
                    LAST_END.store(0, Ordering::Relaxed);
                    transport::pass(&c.slot().state, TO_WORKER, IDLE);
                    return;
                }
            }
        }
    };
    let input = if has_body { b.body.as_mut_ptr() as *mut c_char } else { std::ptr::null_mut() };
    (*c.slot).phase.store(2, Ordering::Release);
    let cpu1 = if sample { transport::thread_cpu_ns() } else { 0 };
    c.rt_cpu = 0;
    let out = guard::call(process as *const c_void, guard::CALL_INT_STR, input, None, &*code);
    let cpu2 = if sample { transport::thread_cpu_ns() } else { 0 };
    CALL = std::ptr::null_mut();
    let (kind, rc) = match out.kind {
        guard::EXITED => (guard::EXITED, out.exit_status),
        guard::FAULT | guard::TIMEOUT | guard::PANIC => fault_ends_the_worker(&out),
        _ => (guard::RETURNED, out.rc),
    };
    let rt_cpu = c.rt_cpu;
    let sl = c.slot();
    sl.rc = rc;
    // The server's count (it keeps its own: a count here was the script's
    // to write), which it raises at this OP_DONE.
    let next_sampled = transport::sampled(sl.served.wrapping_add(1));
    let end = if sample || next_sampled { transport::thread_cpu_ns() } else { 0 };
    let last = if sample { LAST_END.swap(0, Ordering::Relaxed) } else { 0 };
    if next_sampled {
        LAST_END.store(end, Ordering::Relaxed);
    }
    // The script's own time is processfunc less the round trips its
    // callbacks made.
    let own = (cpu2 - cpu1).saturating_sub(rt_cpu);
    sl.worker_cpu_ns = match (sample, last) {
        (false, _) => 0,
        (true, 0) => (cpu1 - cpu0) + (end - cpu2) + rt_cpu,
        (true, _) => (end - last).saturating_sub(own),
    };
    // Nothing of the slot is this worker's after the hand-over.
    c.hand_over(transport::OP_DONE, kind);
    environ = std::ptr::null_mut();
}

/// Device and inode the path names now.
fn path_object(path: &[u8]) -> Option<(i64, i64)> {
    let p = CString::new(path).ok()?;
    // SAFETY: stat into a zeroed struct.
    unsafe {
        let mut st: libc::stat = std::mem::zeroed();
        (libc::stat(p.as_ptr(), &mut st) == 0).then_some((st.st_dev as i64, st.st_ino as i64))
    }
}

unsafe fn load(path: &[u8]) -> Result<Loaded, (String, bool)> {
    let p = CString::new(path).map_err(|_| ("bad path".to_string(), false))?;
    let fd = libc::open(p.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC);
    if fd < 0 {
        return Err((format!("cannot open: {}", std::io::Error::last_os_error()), false));
    }
    let fd = <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd);
    let mut st: libc::stat = std::mem::zeroed();
    if libc::fstat(std::os::fd::AsRawFd::as_raw_fd(&fd), &mut st) != 0 {
        return Err((format!("cannot stat: {}", std::io::Error::last_os_error()), false));
    }
    let object = (st.st_dev as i64, st.st_ino as i64);
    // The ELF program headers checked before dlopen, as in process: a
    // truncated object would be a SIGBUS inside the loader, reported as a
    // crash of the script instead of the reason.
    crate::elfcheck::whole(std::os::fd::AsFd::as_fd(&fd))
        .map_err(|e| (format!("not a loadable shared object: {e}"), false))?;
    let name = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&fd));
    let lib = Library::open(Some(&name), RTLD_NOW | RTLD_LOCAL | libc::RTLD_DEEPBIND);
    let lib = lib.map_err(|e| {
        (format!("not a loadable shared object: {}", e.to_string().replace(&format!("{name}: "), "")), false)
    })?;
    let process = *lib
        .get::<unsafe extern "C" fn(*mut c_char) -> c_int>(b"processfunc\0")
        .map_err(|_| ("the script does not export processfunc".to_string(), false))?;
    let init = lib.get::<unsafe extern "C" fn() -> c_int>(b"initfunc\0").ok().map(|s| *s);
    let terminate = lib.get::<unsafe extern "C" fn()>(b"terminatefunc\0").ok().map(|s| *s);
    elfpatch::patch_imports(process as usize, &exit_bindings())
        .map_err(|e| (format!("cannot bind the script's imports: {e}"), false))?;
    let path = Box::new(p.clone());
    let code = Box::new(guard::Code::of(process as usize, &path));
    if let Some(init) = init {
        let out = guard::call(init as *const c_void, guard::CALL_INT_VOID, std::ptr::null_mut(), None, &code);
        match out.kind {
            guard::RETURNED if out.rc == 0 => {}
            guard::RETURNED => return Err((format!("initfunc returned {}", out.rc), false)),
            guard::FAULT | guard::TIMEOUT | guard::PANIC => fault_ends_the_worker(&out),
            _ => return Err((format!("initfunc {}", out.describe(None)), false)),
        }
    }
    Ok(Loaded { object, process, terminate, _lib: lib, _fd: fd, code, _path: path })
}
