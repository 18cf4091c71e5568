//! The server thread's side of an isolated call: take a free slot, send the
//! request (environment built with Apache's functions, body), then turn each
//! message of the worker into what the in-process path does with the same
//! call: output through `request::Request` (Apache's CGI header parser,
//! brigades down the filter chain), `get_remote_host` answered here, and the
//! end decided as the handler decides it.

use super::transport::{self, Ctl, Ident, Segment, Slot, DATA, DEAD, EMPTY, IDLE, TO_SERVER, TO_WORKER};
use crate::config::Settings;
use crate::log;
use crate::metrics;
use crate::request::{self, Active, Phase, Request};
use crate::sys;
use std::ffi::{c_char, c_int, c_void, CStr};
use std::ptr;
use std::sync::atomic::{AtomicI32, AtomicU32, Ordering};
use std::time::{Duration, Instant};

const OK: c_int = sys::OK as c_int;
const HTTP_INTERNAL_SERVER_ERROR: c_int = sys::HTTP_INTERNAL_SERVER_ERROR as c_int;
const HTTP_SERVICE_UNAVAILABLE: c_int = sys::HTTP_SERVICE_UNAVAILABLE as c_int;

/// How long a request waits for a free worker before it gets a 503.
fn claim_wait(seg: &Segment) -> Duration {
    Duration::from_millis(seg.header().claim_wait_ms.into())
}

struct Held<'a> {
    seg: &'a Segment,
    slot: &'a mut Slot,
    ctl: &'a mut Ctl,
    /// The worker this thread had killed to take its slot: the request
    /// waits for the next one (the old one may still turn IDLE, finishing
    /// its last request, before the kill reaches it).
    replaced: i32,
    /// Which slot, and how it was chosen: for the debug line of a claim
    /// that did not get the worker already running the script.
    index: usize,
    how: How,
    /// `LogLevel libcgi:debug` only: the slots of this script's workers
    /// that the claim passed over, and why (empty otherwise: no allocation).
    passed: Vec<Passed>,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum How {
    /// A worker that runs this script already.
    Same,
    /// A fresh worker.
    Fresh,
    /// Any free slot: its worker is replaced.
    Replace,
}

/// A slot marked with the claimer's script that it did not take, as the
/// scan saw it.
struct Passed {
    index: usize,
    owner: u32,
    owner_pid: i32,
    pid: i32,
    state: u32,
    same_ident: bool,
    /// Free when looked at, but another thread took it first.
    lost_race: bool,
}

impl std::fmt::Display for Passed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let why = if self.lost_race {
            "taken by another thread first"
        } else if self.owner != 0 {
            "held"
        } else if self.pid <= 0 {
            "no worker"
        } else if !self.same_ident {
            "another identity"
        } else {
            "?"
        };
        write!(
            f,
            "slot {} ({why}: owner {} owner_pid {} state {} pid {})",
            self.index, self.owner, self.owner_pid, self.state, self.pid
        )
    }
}

impl Passed {
    fn of(seg: &Segment, index: usize, want: Ident, lost_race: bool) -> Passed {
        // SAFETY: slots and the header live as long as the segment; these
        // are reads for a log line.
        let (s, c) = unsafe { (&*seg.slot(index), &*seg.ctl(index)) };
        Passed {
            index,
            owner: c.owner.load(Ordering::Relaxed),
            owner_pid: c.owner_pid.load(Ordering::Relaxed),
            pid: c.pid.load(Ordering::Relaxed),
            state: s.state.load(Ordering::Relaxed),
            same_ident: c.have == want,
            lost_race,
        }
    }
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // A panic in the module left the call half done (the worker
            // waits for an answer, or the slot was never turned IDLE): the
            // worker is killed, its slot goes DEAD, and the next claimer
            // gets a fresh one instead of waiting on it for claim_wait.
            self.ctl.kill.store(1, Ordering::Release);
            transport::ring(&self.seg.header().doorbell);
        }
        self.ctl.owner.store(0, Ordering::Release);
        // Store, fence, load, as `claim` does the other way round: either
        // this sees its `waiting` or it sees this slot free when it scans.
        std::sync::atomic::fence(Ordering::SeqCst);
        let h = self.seg.header();
        if h.waiting.load(Ordering::Relaxed) != 0 {
            transport::ring(&h.released);
        }
    }
}

/// Counts this thread in `waiting` while it lives.
struct Waiting<'a>(&'a AtomicU32);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// This server process's id, set by child_init (a getpid per request
/// otherwise); isolated requests run only in server processes.
static PID: AtomicI32 = AtomicI32::new(0);

/// child_init: the process is a server process from here on.
pub fn child_init() {
    PID.store(std::process::id() as libc::pid_t, Ordering::Relaxed);
}

/// A free slot: the worker that already runs this script, else a fresh
/// worker of the right identity, else any free one, whose worker the manager
/// then replaces.
///
/// `debug`: note in `Held::passed` each slot of this script's workers the
/// scan passed over (for `LogLevel libcgi:debug`).
fn claim(seg: &Segment, want: Ident, script: u64, debug: bool) -> Option<Held<'_>> {
    let deadline = Instant::now() + claim_wait(seg);
    let mut waiting = None;
    let mut passed = Vec::new();
    loop {
        let seen = seg.header().released.load(Ordering::Acquire);
        let (mut fresh, mut other) = (None, None);
        passed.clear();
        for i in 0..seg.nslots() {
            // SAFETY: the header lives as long as the segment; `owner`
            // decides who may write the rest of the entry.
            let c = unsafe { &*seg.ctl(i) };
            if c.owner.load(Ordering::Relaxed) != 0 {
                if debug && c.script == script {
                    passed.push(Passed::of(seg, i, want, false));
                }
                continue;
            }
            let live = c.have == want && c.pid.load(Ordering::Relaxed) > 0;
            if live && c.script == script {
                if let Some(mut h) = take(seg, i, want, How::Same) {
                    h.passed = passed;
                    return Some(h);
                }
                if debug {
                    passed.push(Passed::of(seg, i, want, true));
                }
            } else if live && c.script == 0 {
                fresh = fresh.or(Some(i));
            } else {
                if debug && c.script == script {
                    passed.push(Passed::of(seg, i, want, false));
                }
                other = other.or(Some(i));
            }
        }
        for (i, how) in [(fresh, How::Fresh), (other, How::Replace)] {
            if let Some(mut h) = i.and_then(|i| take(seg, i, want, how)) {
                h.passed = passed;
                return Some(h);
            }
        }
        if Instant::now() >= deadline {
            return None;
        }
        if waiting.is_none() {
            // Counted before the rescan: a slot released between the scan
            // and the count rang no bell, and the rescan finds it.
            let w = &seg.header().waiting;
            w.fetch_add(1, Ordering::SeqCst);
            std::sync::atomic::fence(Ordering::SeqCst);
            waiting = Some(Waiting(w));
            continue;
        }
        transport::wait(&seg.header().released, seen, Some(deadline));
    }
}

fn take(seg: &Segment, i: usize, want: Ident, how: How) -> Option<Held<'_>> {
    // SAFETY: as in `claim`; the CAS makes this thread the slot's owner.
    let (s, c) = unsafe { (&mut *seg.slot(i), &mut *seg.ctl(i)) };
    c.owner.compare_exchange(0, 1, Ordering::AcqRel, Ordering::Relaxed).ok()?;
    c.owner_pid.store(PID.load(Ordering::Relaxed), Ordering::Release);
    let mut replaced = 0;
    if how == How::Replace {
        c.want = want;
        let p = c.pid.load(Ordering::Acquire);
        if p > 0 {
            // The server thread waits until a new worker is IDLE.
            let _ = s.state.compare_exchange(transport::IDLE, EMPTY, Ordering::AcqRel, Ordering::Acquire);
            c.kill.store(1, Ordering::Release);
            replaced = p;
        }
        transport::ring(&seg.header().doorbell);
    }
    Some(Held { seg, slot: s, ctl: c, replaced, index: i, how, passed: Vec::new() })
}

fn script_key(path: &[u8]) -> u64 {
    // The policy's key: the manager finds a worker's script by it.
    super::policy::key(path)
}

/// Appends `b` and a NUL at `at`; false when it does not fit.
fn put(d: &mut [u8], at: &mut usize, b: &[u8]) -> bool {
    if *at + b.len() + 1 > d.len() {
        return false;
    }
    d[*at..*at + b.len()].copy_from_slice(b);
    d[*at + b.len()] = 0;
    *at += b.len() + 1;
    true
}

/// Runs the script of `r` in a worker; the handler's return value.  On one
/// request in `SAMPLE`, `cross` gets the CPU cost of its crossings in ns:
/// this thread's CPU time from handing the request over to "done", less its
/// time pushing output down the filter chain (which the in-process path
/// pays too), plus the worker's CPU time since its previous request ended,
/// less the script's own (processfunc less its callbacks' round trips),
/// bounded by decide::WORKER_CLAIM_MAX (the worker's part is its own
/// word); not when the call loaded the script or did not end normally.
///
/// # Safety
/// `r` is the live request; `input` its body (NUL-terminated) or null.
#[allow(clippy::too_many_arguments)]
pub unsafe fn run(
    seg: &Segment,
    r: *mut sys::request_rec,
    ident: crate::registry::FileIdent,
    input: *mut c_char,
    input_len: usize,
    cfg: &Settings,
    want: Ident,
    m: &mut metrics::Req,
    mslot: u32,
    cross: &mut Option<u64>,
) -> c_int {
    // Formatted only when a message is written (a String per request was
    // an allocation and a UTF-8 check on every call).
    let name = crate::handler::Name(CStr::from_ptr((*r).filename));
    let key = script_key(CStr::from_ptr((*r).filename).to_bytes());
    let debug = log::r_enabled(r, sys::APLOG_DEBUG);
    let Some(mut held) = claim(seg, want, key, debug) else {
        let (n, w) = (seg.nslots(), claim_wait(seg).as_secs());
        log::rerror(
            r,
            sys::APLOG_ERR,
            0,
            &format!("{name}: all {n} isolated workers busy for {w} s (LibCGIIsolationWorkers); 503"),
        );
        return HTTP_SERVICE_UNAVAILABLE;
    };
    if debug && held.how != How::Same {
        let list: Vec<String> = std::mem::take(&mut held.passed).iter().map(|p| p.to_string()).collect();
        let over =
            if list.is_empty() { String::new() } else { format!(", passing over this script's {}", list.join(", ")) };
        log::rerror(r, sys::APLOG_DEBUG, 0, &format!("{name}: claimed slot {} ({:?}){over}", held.index, held.how));
    }
    // SAFETY: the slot outlives `held`; after `held` drops (the slot is
    // released) it is no longer touched.
    let s = &mut *(held.slot as *mut Slot);
    let c = &mut *(held.ctl as *mut Ctl);
    // Wait for the worker to be ready (a fresh one starts in a millisecond).
    let ready = Instant::now() + claim_wait(seg);
    // (The manager marks a reaped worker's slot before it clears its pid,
    // and stores a new worker's pid once it is back from fork, waking this
    // wait; so a slot that is IDLE under a pid other than the replaced one
    // has a live worker, and the pid the dead-worker line names is its.)
    let replaced = held.replaced;
    while s.state.load(Ordering::Acquire) != IDLE || {
        let p = c.pid.load(Ordering::Acquire);
        p <= 0 || p == replaced
    } {
        let st = s.state.load(Ordering::Acquire);
        if Instant::now() >= ready {
            log::rerror(r, sys::APLOG_ERR, 0, &format!("{name}: the isolated worker did not start"));
            return HTTP_SERVICE_UNAVAILABLE;
        }
        if st == DEAD {
            let _ = s.state.compare_exchange(DEAD, EMPTY, Ordering::AcqRel, Ordering::Acquire);
            transport::ring(&seg.header().doorbell);
        }
        transport::wait(&s.state, st, Some((Instant::now() + Duration::from_millis(50)).min(ready)));
    }
    // One request in SAMPLE measures the crossing cost (CPU time): which
    // one, the slot's count says, kept where the worker cannot write it
    // (a script that wrote its slot's count had every request sampled);
    // the worker gets a copy, to know one request ahead.
    let served = c.served.load(Ordering::Relaxed);
    let sample = transport::sampled(served);
    let cpu_call = if sample { transport::thread_cpu_ns() } else { 0 };
    let mut cpu_out = 0u64;
    let file = [ident.dev as i64, ident.ino as i64, ident.size, ident.mtime, ident.ctime];
    let (worker, may_load) = expect_load(c, key, &file);
    // The environment mod_cgi would give the process: Apache's variables,
    // written from the table as ap_create_environment would write them.
    sys::ap_add_common_vars(r);
    sys::ap_add_cgi_vars(r);
    let envp = Vars::of(r);
    if log::r_enabled(r, sys::APLOG_TRACE8) {
        envp.check_against_apache(r);
    }
    let path = CStr::from_ptr((*r).filename).to_bytes();
    let body: &[u8] = if input.is_null() { &[] } else { std::slice::from_raw_parts(input as *const u8, input_len) };
    // The path and environment straight into the slot; an environment
    // larger than the buffer (Apache accepts LimitRequestFields times
    // LimitRequestFieldSize of headers) goes in pieces the worker asks for,
    // as the body does.
    let mut at = 0;
    let mut head_rest: Vec<u8> = Vec::new();
    if !envp.put(&mut s.data, &mut at, path) {
        let mut all = vec![0u8; envp.len(path)];
        at = 0;
        envp.put(&mut all, &mut at, path);
        s.data.copy_from_slice(&all[..DATA]);
        head_rest = all.split_off(DATA);
        at = DATA;
    }
    let head = at + head_rest.len();
    let first = body.len().min(DATA - at);
    s.data[at..at + first].copy_from_slice(&body[..first]);
    let mut sent = first;
    let mut head_sent = 0;
    s.op = transport::OP_REQ;
    s.len = (at + first) as u64;
    s.head = head as u64;
    s.total = input_len as u64;
    s.has_body = u32::from(!input.is_null());
    s.file = file;
    s.served = served;
    s.sample = u32::from(sample);
    s.phase.store(0, Ordering::Relaxed);
    let deadline = cfg.timeout.map(|t| Instant::now() + t);
    let mut req = Request::new(r, input_len);
    let reqp: *mut Request = &mut req;
    // The output callbacks of the in-process path do the work, on this
    // thread, for the request in `req`.
    let _active = Active::enter(reqp);
    // For the log line if it dies: by then the manager has cleared `pid`.
    let wpid = c.pid.load(Ordering::Acquire);
    let handed = transport::pass(&s.state, IDLE, TO_WORKER);
    if handed {
        // Marked only once this worker has the request: the manager marks a
        // slot fresh (0) before it forks the slot's next worker, so even if
        // the worker died meanwhile and its successor took the request, this
        // mark comes after the manager's.
        c.script = key;
    }
    let w = Worker { seg, c, number: worker, pid: wpid };
    if !handed {
        return died(&w, s, reqp, &name, m, mslot, "died before the call");
    }
    loop {
        let st = transport::wait_change(&s.state, TO_WORKER, deadline);
        match st {
            TO_SERVER => {}
            TO_WORKER => {
                // Past the deadline: the manager kills the worker, and the
                // slot turns DEAD.
                w.kill();
                let t = cfg.timeout.unwrap_or_default();
                let end = Instant::now() + Duration::from_secs(10);
                while transport::wait_change(&s.state, TO_WORKER, Some(end)) == TO_WORKER && Instant::now() < end {}
                count_fault(r, &w, ident, cfg);
                metrics::isolated_fault(mslot, CStr::from_ptr((*r).filename), 0, true);
                return died(&w, s, reqp, &name, m, mslot, &format!("timed out after {} s", t.as_secs_f64()));
            }
            _ => {
                count_fault(r, &w, ident, cfg);
                return died(&w, s, reqp, &name, m, mslot, "crashed");
            }
        }
        let out = (s.len as usize).min(DATA);
        let c_o = if sample { transport::thread_cpu_ns() } else { 0 };
        // The callbacks' own code, not their extern "C" wrappers: those
        // catch a panic and return -1 for a script to see, and here nobody
        // looked at it (the rest of the output was dropped and the response
        // ended as if complete).  Unwinding, a panic reaches the handler's
        // catch, which answers 500 or cuts the connection, with one line.
        if out > 0 {
            request::lwrite_impl(s.data.as_ptr() as *const c_void, out);
        }
        match s.op {
            transport::OP_OUT => {
                let mut rc = 0;
                if s.arg & transport::OUT_FLUSH != 0 {
                    rc = request::lflush_impl();
                }
                if sample {
                    cpu_out += transport::thread_cpu_ns() - c_o;
                }
                let refused = matches!((*reqp).phase, Phase::BadHeaders | Phase::ClientGone);
                s.op = transport::OP_ACK;
                s.arg = if refused || rc < 0 { -1 } else { 0 };
            }
            transport::OP_NEED_BODY => {
                let h = (head_rest.len() - head_sent).min(DATA);
                s.data[..h].copy_from_slice(&head_rest[head_sent..head_sent + h]);
                head_sent += h;
                let n = (body.len() - sent).min(DATA - h);
                s.data[h..h + n].copy_from_slice(&body[sent..sent + n]);
                sent += n;
                s.op = transport::OP_BODY;
                s.len = (h + n) as u64;
            }
            transport::OP_GET_HOST => {
                let h = request::get_remote_host_impl();
                let b = if h.is_null() { &b""[..] } else { CStr::from_ptr(h).to_bytes() };
                let n = b.len().min(DATA - 1);
                s.data[..n].copy_from_slice(&b[..n]);
                s.data[n] = 0;
                s.op = transport::OP_HOST;
                s.len = n as u64 + 1;
            }
            transport::OP_LOADFAIL => {
                let msg = String::from_utf8_lossy(&s.data[..out]).into_owned();
                let loaded = took_load(r, &w, s.loaded, may_load, &name);
                count_load(r, loaded, wpid, mslot, &name, true, msg.starts_with("initfunc"), false);
                // Nothing of the script is loaded there now: the next
                // request loads it again.
                c.last_key.store(0, Ordering::Relaxed);
                s.op = transport::OP_ACK;
                transport::pass(&s.state, TO_SERVER, TO_WORKER);
                drop(held);
                log::rerror(r, sys::APLOG_ERR, 0, &format!("{name}: cannot load script: {msg}"));
                (*reqp).discard_body();
                return HTTP_INTERNAL_SERVER_ERROR;
            }
            transport::OP_DONE => {
                m.isolated_done();
                c.served.store(served.wrapping_add(1), Ordering::Relaxed);
                let loaded = took_load(r, &w, s.loaded, may_load, &name);
                if sample && loaded == 0 {
                    let now = transport::thread_cpu_ns();
                    let server = (now - cpu_call).saturating_sub(cpu_out + (now - c_o));
                    *cross = Some(super::decide::crossing_cost(server, s.worker_cpu_ns));
                    log::rlog!(
                        r,
                        APLOG_DEBUG,
                        "{name}: crossing cost {server} ns here + {} ns in the worker",
                        s.worker_cpu_ns
                    );
                }
                if s.arg == crate::guard::EXITED {
                    metrics::isolated_exit(mslot);
                }
                let rc = s.rc;
                // Read now: a worker that went IDLE the moment it was forked
                // may have been handed the call before the manager wrote it.
                let pid = c.pid.load(Ordering::Relaxed);
                let bad = matches!((*reqp).phase, Phase::Headers | Phase::BadHeaders);
                count_load(r, loaded, pid, mslot, &name, false, false, bad);
                if bad {
                    c.last_key.store(0, Ordering::Relaxed);
                }
                let how = if s.arg == crate::guard::EXITED { "called exit" } else { "returned" };
                log::rlog!(r, APLOG_DEBUG, "{name}: processfunc {how} {rc} in isolated worker {pid}");
                if debug && w.c.script != key {
                    let (i, other) = (held.index, w.c.script);
                    log::rerror(
                        r,
                        sys::APLOG_DEBUG,
                        0,
                        &format!("{name}: slot {i} of worker {pid} marked {other:#x} after the call, not this script"),
                    );
                }
                // Bad output unloads the script, as in process: the worker
                // reads the answer when it next looks at the slot.  IDLE
                // without a wake-up (the worker does not wait for it; the
                // next request's hand-over wakes it), and only from
                // TO_SERVER: a worker that died meanwhile left it DEAD for
                // the next claimer.
                s.unload = u32::from(bad);
                let _ = s.state.compare_exchange(TO_SERVER, IDLE, Ordering::AcqRel, Ordering::Acquire);
                drop(held);
                return finish(&mut *reqp, rc, &name);
            }
            _ => {
                w.kill();
                return died(&w, s, reqp, &name, m, mslot, "broke the protocol");
            }
        }
        if !transport::pass(&s.state, TO_SERVER, TO_WORKER) {
            count_fault(r, &w, ident, cfg);
            return died(&w, s, reqp, &name, m, mslot, "crashed");
        }
    }
}

/// The CGI environment of a request as `ap_create_environment` makes it
/// of `r->subprocess_env`, read from the table's entries and written
/// straight into the slot: without the pool strings and the pointer array
/// Apache builds first (about 10,700 instructions a request at 28 B, the
/// largest part of an isolated request's server-side cost).  What it must
/// reproduce (server/util_script.c): "TZ=" and the process's TZ first when
/// the table has no TZ; then each entry with a key, in order, as
/// "key=value" (a null value as empty); in the name up to its first '=',
/// a leading digit and every byte that is not alphanumeric (isalnum, as
/// apr_isalnum) become '_'.  `LogLevel libcgi:trace8` compares the two on
/// every request (test `env.rs environment_as_apache_makes_it`).
struct Vars {
    elts: *const sys::apr_table_entry_t,
    n: usize,
    tz: *const c_char,
}

/// This process's ctype (the locale Apache runs its children in; built
/// once): per byte, what ap_create_environment writes for it in a name
/// ('_' unless isalnum, as apr_isalnum), and whether it is a digit.
struct Ctype {
    name: [u8; 256],
    digit: [bool; 256],
}

fn ctype() -> &'static Ctype {
    static T: std::sync::OnceLock<Ctype> = std::sync::OnceLock::new();
    T.get_or_init(|| {
        let mut t = Ctype { name: [b'_'; 256], digit: [false; 256] };
        for c in 0..256 {
            // SAFETY: isalnum and isdigit take any unsigned char value.
            unsafe {
                if libc::isalnum(c as c_int) != 0 {
                    t.name[c] = c as u8;
                }
                t.digit[c] = libc::isdigit(c as c_int) != 0;
            }
        }
        t
    })
}

impl Vars {
    /// # Safety
    /// `r` is live; its subprocess_env stays unchanged while this is used.
    unsafe fn of(r: *mut sys::request_rec) -> Vars {
        let t = (*r).subprocess_env;
        // apr_table_elts(t): the table starts with its array of entries.
        let a = t as *const sys::apr_array_header_t;
        let tz = libc::getenv(c"TZ".as_ptr());
        let tz = if !tz.is_null() && sys::apr_table_get(t, c"TZ".as_ptr()).is_null() { tz } else { ptr::null() };
        Vars { elts: (*a).elts as *const sys::apr_table_entry_t, n: (*a).nelts.max(0) as usize, tz }
    }

    /// Each variable as (name, value), unsanitised.
    fn each(&self, mut f: impl FnMut(&[u8], &[u8]) -> bool) -> bool {
        // SAFETY: the strings live in the request pool or are static.
        unsafe {
            if !self.tz.is_null() && !f(b"TZ", CStr::from_ptr(self.tz).to_bytes()) {
                return false;
            }
            for i in 0..self.n {
                let e = &*self.elts.add(i);
                if e.key.is_null() {
                    continue;
                }
                let v = if e.val.is_null() { &b""[..] } else { CStr::from_ptr(e.val).to_bytes() };
                if !f(CStr::from_ptr(e.key).to_bytes(), v) {
                    return false;
                }
            }
        }
        true
    }

    /// Bytes `put` writes for the path and these variables.
    fn len(&self, path: &[u8]) -> usize {
        let mut n = path.len() + 2;
        self.each(|k, v| {
            n += k.len() + v.len() + 2;
            true
        });
        n
    }

    /// Appends the path and the variables (each NUL-terminated, an empty
    /// string at the end); false when they do not fit.
    fn put(&self, d: &mut [u8], at: &mut usize, path: &[u8]) -> bool {
        if !put(d, at, path) {
            return false;
        }
        let ct = ctype();
        self.each(|k, v| {
            let n = k.len() + v.len() + 2;
            if *at + n > d.len() {
                return false;
            }
            let o = &mut d[*at..*at + n];
            // Every byte through the table, no branch: an '=' in a name (which
            // ends the part Apache rewrites) is rare enough to redo.
            let mut eq = false;
            for (dst, &c) in o.iter_mut().zip(k) {
                *dst = ct.name[c as usize];
                eq |= c == b'=';
            }
            if eq {
                let e = k.iter().position(|&c| c == b'=').unwrap_or(k.len());
                o[e..k.len()].copy_from_slice(&k[e..]);
            }
            if k.first().is_some_and(|&c| ct.digit[c as usize]) {
                o[0] = b'_';
            }
            o[k.len()] = b'=';
            o[k.len() + 1..n - 1].copy_from_slice(v);
            o[n - 1] = 0;
            *at += n;
            true
        }) && put(d, at, b"")
    }

    /// `LogLevel libcgi:trace8`: the environment written here against
    /// Apache's own, one error line per difference.
    #[cold]
    #[inline(never)]
    unsafe fn check_against_apache(&self, r: *mut sys::request_rec) {
        let mut mine = vec![0u8; self.len(b"")];
        let mut at = 0;
        self.put(&mut mine, &mut at, b"");
        let mut envp = sys::ap_create_environment((*r).pool, (*r).subprocess_env);
        let mut theirs: Vec<u8> = vec![0];
        while !(*envp).is_null() {
            theirs.extend_from_slice(CStr::from_ptr(*envp).to_bytes_with_nul());
            envp = envp.add(1);
        }
        theirs.push(0);
        if mine != theirs {
            let show = |b: &[u8]| String::from_utf8_lossy(b).replace('\0', "\n");
            log::rerror(
                r,
                sys::APLOG_ERR,
                0,
                &format!(
                    "isolated environment differs from ap_create_environment's:\n--- mod_libcgi\n{}\n--- Apache\n{}",
                    show(&mine),
                    show(&theirs)
                ),
            );
        } else {
            log::rerror(r, sys::APLOG_TRACE8, 0, "isolated environment identical to ap_create_environment's");
        }
    }
}

/// The worker of a call as the server knows it (Ctl, not the slot).
struct Worker<'a> {
    seg: &'a Segment,
    c: &'a Ctl,
    /// Its number in the slot (Ctl::spawned) and its pid, when the call
    /// was handed over.
    number: u32,
    pid: i32,
}

impl Worker<'_> {
    /// The manager kills it.
    fn kill(&self) {
        self.c.kill.store(1, Ordering::Release);
        transport::ring(&self.seg.header().doorbell);
    }

    /// How it ended, by the manager's word (waitpid, or MANAGER_DIED);
    /// None while the manager has not reaped it.
    fn ended(&self) -> Option<i32> {
        (self.c.died_of.load(Ordering::Acquire) == self.number).then(|| self.c.died.load(Ordering::Relaxed))
    }
}

/// Before the hand-over: the worker's number and which `Slot::loaded` bits
/// the call may report.  A load is possible only in a worker that has not
/// run this script since its last load (a new worker, or the script gone
/// since: a failed load, an unload after bad output), and a reload only
/// when the file the server names differs from last time; otherwise the
/// bits are the script's own writing and would count a load per request.
/// The memory is the slot's Ctl entry, the owner's alone: plain loads,
/// stores only when something changed.
fn expect_load(c: &Ctl, key: u64, file: &[i64; 5]) -> (u32, u32) {
    let worker = c.spawned.load(Ordering::Acquire);
    let fresh = c.last_worker.load(Ordering::Relaxed) != worker || c.last_key.load(Ordering::Relaxed) != key;
    let changed = fresh || c.last_file.iter().zip(file).any(|(a, &b)| a.load(Ordering::Relaxed) != b);
    if !changed {
        return (worker, 0);
    }
    c.last_worker.store(worker, Ordering::Relaxed);
    c.last_key.store(key, Ordering::Relaxed);
    for (a, &b) in c.last_file.iter().zip(file) {
        a.store(b, Ordering::Relaxed);
    }
    (worker, if fresh { transport::LOADED } else { transport::LOADED | transport::LOADED_REPLACED })
}

/// The `loaded` bits the worker reported, less those it could not have
/// (`expect_load`): those are ignored, with one warning per worker.
unsafe fn took_load(r: *mut sys::request_rec, w: &Worker, reported: u32, may: u32, name: &crate::handler::Name) -> u32 {
    let forged = reported & !may;
    if forged != 0 && w.c.forged_logged.swap(w.number, Ordering::Relaxed) != w.number {
        log::rerror(
            r,
            sys::APLOG_WARNING,
            0,
            &format!(
                "{name}: isolated worker {} reported a load it had no reason to make (loaded bits {forged:#x}); \
                 ignored, as any further one of this worker",
                w.c.pid.load(Ordering::Relaxed)
            ),
        );
    }
    reported & may
}

/// The loads, reloads and unloads of a call (`loaded`, as `took_load`
/// bounded the worker's report) and the unload after bad output
/// (`unload`), in the metrics and the debug log as in process (the worker
/// writes neither).
#[allow(clippy::too_many_arguments)]
unsafe fn count_load(
    r: *mut sys::request_rec,
    loaded: u32,
    pid: i32,
    mslot: u32,
    name: &crate::handler::Name,
    failed: bool,
    init_failed: bool,
    unload: bool,
) {
    let (replaced, loaded) = (loaded & transport::LOADED_REPLACED != 0, loaded & transport::LOADED != 0);
    if !(loaded || replaced || unload) {
        return;
    }
    let path = CStr::from_ptr((*r).filename);
    metrics::isolated_load(mslot, path, loaded, replaced, failed, init_failed, unload);
    if replaced {
        log::rlog!(r, APLOG_DEBUG, "{name}: file changed, loaded again in isolated worker {pid}");
    }
    if loaded && !failed {
        log::rlog!(r, APLOG_DEBUG, "{name}: loaded in isolated worker {pid}");
    }
    if unload {
        log::rlog!(r, APLOG_DEBUG, "{name}: unloaded in isolated worker {pid} (bad output)");
    }
}

/// A crash or timeout of the script itself (not the manager's death)
/// counts towards its quarantine, as in process; so does a worker that
/// marked its slot dead itself (the manager has no record of its end).
unsafe fn count_fault(r: *mut sys::request_rec, w: &Worker, ident: crate::registry::FileIdent, cfg: &Settings) {
    if w.ended() != Some(transport::MANAGER_DIED) {
        super::count_fault(r, ident, cfg);
    }
}

/// The worker died in the call (or was killed at its deadline).
#[cold]
#[inline(never)]
#[allow(clippy::too_many_arguments)]
unsafe fn died(
    w: &Worker,
    s: &mut Slot,
    req: *mut Request,
    name: &crate::handler::Name,
    m: &mut metrics::Req,
    mslot: u32,
    what: &str,
) -> c_int {
    let req = &mut *req;
    let r = req.r;
    m.isolated_done();
    let (seg, wpid) = (w.seg, w.pid);
    let Some(st) = w.ended() else {
        // The slot left the protocol and the manager has no record of the
        // worker's end: the worker wrote the slot's state itself (or
        // outlived its kill).  Killed, and the slot EMPTY, which the
        // manager refills once it has reaped it.
        w.kill();
        s.state.store(EMPTY, Ordering::Release);
        let func = if s.phase.load(Ordering::Acquire) == 1 { "initfunc" } else { "processfunc" };
        log::rerror(
            r,
            sys::APLOG_ERR,
            0,
            &format!(
                "{name}: {func} {what} in its isolated worker (no end the manager saw: the worker wrote its slot's \
                 state itself, or outlived its kill; killed); worker replaced; worker pid {wpid}"
            ),
        );
        return end_died(req);
    };
    if libc::WIFSIGNALED(st) && !what.starts_with("timed out") {
        metrics::isolated_fault(mslot, CStr::from_ptr((*r).filename), libc::WTERMSIG(st), false);
    }
    let how = if libc::WIFSIGNALED(st) {
        format!("signal {}", libc::WTERMSIG(st))
    } else {
        format!("exit status {}", libc::WEXITSTATUS(st))
    };
    // Where, when the worker's fault handler had time to say (a synchronous
    // fault), as the in-process line says it; after the rest of the line,
    // which stays as it was for whoever matches it.  The signal is the
    // manager's (waitpid); the address only the worker's word, which its
    // script could have written.
    let at = if libc::WIFSIGNALED(st) && s.fault_sig.load(Ordering::Acquire) == libc::WTERMSIG(st) {
        format!("; the worker said the fault was at address {:#x}", s.fault_addr.load(Ordering::Relaxed))
    } else {
        String::new()
    };
    let func = if s.phase.load(Ordering::Acquire) == 1 { "initfunc" } else { "processfunc" };
    let _ = s.state.compare_exchange(DEAD, EMPTY, Ordering::AcqRel, Ordering::Acquire);
    transport::ring(&seg.header().doorbell);
    let msg = if st == transport::MANAGER_DIED {
        format!("{name}: {func} cut off: the isolation manager died, and its workers with it; worker replaced")
    } else {
        format!("{name}: {func} {what} in its isolated worker ({how}); worker replaced{at}; worker pid {wpid}")
    };
    log::rerror(r, sys::APLOG_ERR, 0, &msg);
    end_died(req)
}

/// The answer after a worker's death: 500, or the connection cut if
/// output was sent.
unsafe fn end_died(req: &mut Request) -> c_int {
    let r = req.r;
    req.discard_body();
    if (*r).sent_bodyct == 0 {
        return HTTP_INTERNAL_SERVER_ERROR;
    }
    let c = (*r).connection;
    (*c).keepalive = sys::ap_conn_keepalive_e_AP_CONN_CLOSE;
    (*c).aborted = 1;
    OK
}

/// The end of a call as the handler decides it in process: the same code
/// (handler.rs), with nothing to unload after bad output.
unsafe fn finish(req: &mut Request, rc: c_int, name: &crate::handler::Name) -> c_int {
    if rc == 0 && req.phase == Phase::Body {
        return req.finish_body();
    }
    crate::handler::finish_other(req, rc, name, &mut || {})
}
