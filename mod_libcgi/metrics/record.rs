//! What a request records, and the rare events.
//!
//! Per request (metrics on), beyond the probes (a nop each when no tracer
//! is attached):
//! - clock reads: CLOCK_MONOTONIC through the vDSO (no syscall): 4 in the
//!   handler (start, script found, processfunc returned, end), one more
//!   after reading a body, 2 per callback from the script (outermost only,
//!   in shim.c);
//! - writes, all to the running thread's own row: `started` when the script
//!   is known, then `ended`, one status class, the byte counts, and one
//!   bucket plus one sum for each of the 5 phases (about 8 cache lines), and
//!   once per thread and script a bit in the thread's own used-row bitmap.
//!   Plain loads and stores: nobody else writes these lines.

use super::segment::{self, Domains, Row, Seg, P_CALLBACKS, P_LOAD, P_OUTPUT, P_SCRIPT, P_TOTAL};
use super::{probes, seg};
use crate::guard;
use crate::sys;
use std::ffi::{c_int, CStr};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

unsafe extern "C" {
    // In shim.c: the time this thread spent inside callbacks (outermost
    // enter to leave) and inside Apache's header parser since the last
    // call; both are zeroed.
    fn libcgi_cb_take(hdr_ns: *mut u64) -> u64;
    fn libcgi_hdr_done();
    fn libcgi_cb_timing(on: c_int);
}

use super::clock::{mult, ticks as now_ns, to_ns};

/// 0: off; otherwise what clock::setup chose.
pub fn set_callback_timing(how: i32) {
    // SAFETY: sets a plain int in shim.c, before the children start.
    unsafe { libcgi_cb_timing(how as c_int) };
}

/// The scoreboard slot of this process, learnt from its first request (for
/// events outside a request: unloads at exit).
static PROC_SLOT: AtomicI64 = AtomicI64::new(-1);

/// ap_sb_handle_t, which scoreboard.h keeps opaque: scoreboard.c defines it
/// as these two ints, unchanged since 2.0 (and 2.4's ABI is frozen).
/// `check_sbh` verifies the mirror once per process against the public API.
#[repr(C)]
struct SbHandle {
    child_num: c_int,
    thread_num: c_int,
}

/// One request's measurement.
pub struct Req {
    rows: *const Row,
    t0: u64,
    t_body: u64,
    t_load: u64,
    t_proc: u64,
    cb_ns: u64,
    hdr_ns: u64,
    bytes_in: u64,
    slot: usize,
    slot_known: bool,
    worker: usize,
    quarantined: bool,
    /// The row may be written by other threads at the same time: an
    /// HTTP/2 stream (mod_http2 runs the streams of a connection on its own
    /// threads, all with the connection's scoreboard handle).  Atomic adds.
    shared: bool,
    /// A script with an isolation policy entry: its counts per domain go
    /// into the row, or into this (the entry's) when no named row takes
    /// them.  Null otherwise.
    dom: *const Domains,
    dom_isolated: bool,
    /// The sampled crossing cost in ns, if this request measured it.
    cross: Option<u64>,
}

impl Req {
    /// A measurement that records nothing until `start` turns it on.
    #[inline(always)]
    pub fn off() -> Req {
        Req {
            rows: std::ptr::null(),
            t0: 0,
            t_body: 0,
            t_load: 0,
            t_proc: 0,
            cb_ns: 0,
            hdr_ns: 0,
            bytes_in: 0,
            slot: 0,
            slot_known: false,
            worker: 0,
            quarantined: false,
            shared: false,
            dom: std::ptr::null(),
            dom_isolated: false,
            cross: None,
        }
    }

    /// Turns the measurement on for `r` if the metrics are on and the thread
    /// has rows.  In place rather than a constructor: a returned Req was
    /// copied field by field on every request.
    ///
    /// # Safety
    /// `r` is the live request being handled.
    #[inline(always)]
    pub unsafe fn start(&mut self, r: *mut sys::request_rec) {
        let Some(s) = seg() else { return };
        let c = (*r).connection;
        if !(*c).master.is_null() {
            self.start_secondary(s, r);
            return;
        }
        let sbh = (*c).sbh as *const SbHandle;
        if sbh.is_null() {
            return;
        }
        let (child, thread) = ((*sbh).child_num as usize, (*sbh).thread_num as usize);
        if child >= s.servers || thread >= s.threads {
            return;
        }
        if PROC_SLOT.load(Ordering::Relaxed) < 0 && !first_request(s, c, child, thread) {
            return;
        }
        self.worker = child * s.threads + thread;
        self.begin(s, r);
    }

    /// A request on a secondary connection (an HTTP/2 stream): its thread
    /// has no scoreboard slot of its own, so it writes its process's shared
    /// block, with atomic adds.
    #[cold]
    #[inline(never)]
    unsafe fn start_secondary(&mut self, s: &Seg, r: *mut sys::request_rec) {
        let server = match PROC_SLOT.load(Ordering::Relaxed) {
            p if p >= 0 => p as usize,
            _ => {
                let mut c = (*r).connection;
                while !(*c).master.is_null() {
                    c = (*c).master;
                }
                let sbh = (*c).sbh as *const SbHandle;
                if sbh.is_null() || (*sbh).child_num as usize >= s.servers {
                    return;
                }
                PROC_SLOT.store((*sbh).child_num as i64, Ordering::Relaxed);
                (*sbh).child_num as usize
            }
        };
        self.worker = s.shared_block(server);
        self.shared = true;
        self.begin(s, r);
    }

    #[inline(always)]
    unsafe fn begin(&mut self, s: &Seg, r: *mut sys::request_rec) {
        let m = self;
        m.rows = s.rows_of(m.worker);
        // The callback time accumulated since the last request (initfunc of
        // a load, terminatefunc) was dropped where it happened: see
        // `loaded`, `unloaded` and shim.c's leave().
        // t_body stays 0 without a body: `record` takes it as t0.
        m.t0 = now_ns();
        probes::request_start((*r).filename);
    }

    #[inline]
    pub fn on(&self) -> bool {
        !self.rows.is_null()
    }

    /// After the body was read (only called when there was one).
    #[inline]
    pub fn body_read(&mut self, len: usize) {
        if self.on() {
            self.t_body = now_ns();
            self.bytes_in = len as u64;
        }
    }

    /// The script is known: from here on it is a request in flight of it.
    #[inline]
    pub fn script(&mut self, slot: u32) {
        if !self.on() {
            return;
        }
        self.t_load = now_ns();
        self.set_slot(slot as usize);
    }

    #[inline]
    fn set_slot(&mut self, slot: usize) {
        self.slot = slot;
        self.slot_known = true;
        // SAFETY: the slot index is at most `slots` (segment::slot_for), and
        // this thread's rows are written only by this thread.
        let row = unsafe { &*self.rows.add(slot) };
        if self.shared {
            if row.started.fetch_add(1, Ordering::Relaxed) == 0 {
                self.mark_used(slot);
            }
            return;
        }
        // The row's bit in the used-row bitmap is set exactly when its first
        // request starts: `started` is 0 until then (both are zeroed
        // together), and it is loaded here anyway.
        let n = row.started.load(Ordering::Relaxed);
        row.started.store(n.wrapping_add(1), Ordering::Relaxed);
        if n == 0 {
            self.mark_used(slot);
        }
    }

    /// The first request of this row block's `slot`: its bit in the block's
    /// used-row bitmap (once per thread and script).
    #[cold]
    #[inline(never)]
    fn mark_used(&self, slot: usize) {
        let Some(s) = seg() else { return };
        // SAFETY: the bitmap has a bit for every slot up to `slots`.
        let used = unsafe { &*s.used(self.worker).as_ptr().add(slot / 64) };
        let bit = 1u64 << (slot % 64);
        if self.shared {
            used.fetch_or(bit, Ordering::Relaxed);
        } else {
            used.store(used.load(Ordering::Relaxed) | bit, Ordering::Relaxed);
        }
    }

    /// The script could not be had (load failure, quarantine, refusal of an
    /// existing file).
    #[cold]
    #[inline(never)]
    pub fn not_loaded(&mut self, path: &CStr, quarantined: bool, init_failed: bool, failed: bool, recycled: bool) {
        if !self.on() {
            return;
        }
        let Some(s) = seg() else { return };
        let slot = s.slot_for(path.to_bytes());
        self.t_load = now_ns();
        self.set_slot(slot);
        self.quarantined = quarantined;
        let e = s.events(slot);
        if failed {
            e.load_failures.fetch_add(1, Ordering::Relaxed);
        }
        if init_failed {
            e.init_failures.fetch_add(1, Ordering::Relaxed);
        }
        if recycled {
            e.recycles.fetch_add(1, Ordering::Relaxed);
            s.procs(proc_slot()).recycles.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// An isolated request refused before the call, in the row `script`
    /// chose: a quarantine 503, or (not `quarantined`) a refused load, as
    /// `not_loaded` counts them in process.
    #[cold]
    #[inline(never)]
    pub fn isolated_refused(&mut self, quarantined: bool) {
        if !self.on() {
            return;
        }
        let Some(s) = seg() else { return };
        self.quarantined = quarantined;
        if !quarantined {
            s.events(self.slot).load_failures.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// processfunc returned (or was cut short).
    #[inline]
    pub fn called(&mut self, out: &guard::Outcome, path: &CStr, recycle: bool) {
        if !self.on() {
            return;
        }
        self.t_proc = now_ns();
        // SAFETY: reads and zeroes two thread-locals in shim.c.
        self.cb_ns = unsafe { libcgi_cb_take(&mut self.hdr_ns) };
        if out.kind != guard::RETURNED {
            self.outcome(out, path, recycle);
        }
    }

    /// The request is counted in its domain, in process or isolated (the
    /// isolation policy's rate and the status page's split); `fallback`
    /// takes the count when metrics are off or the script has no row of
    /// its own.  The time is the request's total as measured here: no
    /// clock read of its own.
    #[inline]
    pub fn domain(&mut self, fallback: &'static Domains, isolated: bool) {
        self.dom = fallback;
        self.dom_isolated = isolated;
    }

    /// The crossing cost this isolated request sampled.
    #[inline]
    pub fn crossing(&mut self, ns: u64) {
        self.cross = Some(ns);
    }

    /// An isolated call ended (or its worker died): the script phase is
    /// the whole call as the server thread saw it.
    #[inline]
    pub fn isolated_done(&mut self) {
        if self.on() {
            self.t_proc = now_ns();
        }
    }

    #[cold]
    #[inline(never)]
    fn outcome(&self, out: &guard::Outcome, path: &CStr, recycle: bool) {
        let Some(s) = seg() else { return };
        let e = s.events(if self.slot_known { self.slot } else { s.slots });
        let p = s.procs(proc_slot());
        match out.kind {
            guard::FAULT => {
                let k = segment::FAULT_KINDS
                    .iter()
                    .position(|&(_, sig)| sig == out.signo)
                    .unwrap_or(segment::FAULT_KINDS.len() - 1);
                e.faults[k].fetch_add(1, Ordering::Relaxed);
                p.faults.fetch_add(1, Ordering::Relaxed);
                // SAFETY: apr_time_now and getpid have no preconditions.
                let (now, pid) = unsafe { (sys::apr_time_now(), libc::getpid()) };
                e.last_fault_us.store(now as u64, Ordering::Relaxed);
                e.last_fault_signal.store(out.signo as u64, Ordering::Relaxed);
                e.last_fault_pid.store(pid as u64, Ordering::Relaxed);
                let synchronous =
                    out.si_code > 0 && matches!(out.signo, libc::SIGSEGV | libc::SIGBUS | libc::SIGFPE | libc::SIGILL);
                e.last_fault_addr.store(if synchronous { out.addr as u64 } else { u64::MAX }, Ordering::Relaxed);
                probes::fault(path.as_ptr(), out.signo as i64);
            }
            guard::TIMEOUT => {
                e.timeouts.fetch_add(1, Ordering::Relaxed);
                p.timeouts.fetch_add(1, Ordering::Relaxed);
                probes::timeout(path.as_ptr());
            }
            guard::EXITED => {
                e.exits.fetch_add(1, Ordering::Relaxed);
                p.exits.fetch_add(1, Ordering::Relaxed);
            }
            _ => {}
        }
        if recycle && out.is_fault() {
            e.recycles.fetch_add(1, Ordering::Relaxed);
            p.recycles.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The handler is returning `rc`.
    ///
    /// # Safety
    /// `r` is the live request being handled.
    #[inline]
    pub unsafe fn end(&mut self, r: *mut sys::request_rec, rc: c_int) {
        if !self.on() {
            if !self.dom.is_null() {
                self.domain_fallback(0);
            }
            return;
        }
        if self.shared {
            return self.end_shared(r, rc);
        }
        self.record::<false>(r, rc);
    }

    #[cold]
    #[inline(never)]
    unsafe fn end_shared(&mut self, r: *mut sys::request_rec, rc: c_int) {
        self.record::<true>(r, rc);
    }

    /// Refused before a script file was identified: "other".
    #[cold]
    #[inline(never)]
    fn refused(&mut self, t_end: u64) {
        self.t_load = t_end;
        self.set_slot(seg().map_or(0, |s| s.slots));
    }

    #[inline(always)]
    unsafe fn record<const SHARED: bool>(&mut self, r: *mut sys::request_rec, rc: c_int) {
        let bump = |c: &AtomicU64, n: u64| {
            if SHARED {
                c.fetch_add(n, Ordering::Relaxed);
            } else {
                bump(c, n)
            }
        };
        let t_end = now_ns();
        if !self.slot_known {
            self.refused(t_end);
        }
        // Missing boundaries collapse onto the previous one, so the phases
        // always add up to the total exactly.  Each boundary is also held to
        // be no earlier than the one before: the TSC of the CPU a thread
        // moved to may trail by a few ticks, and a negative phase would wrap
        // into the top bucket and the sums for good.
        // (An unset t_proc is 0, and so becomes t_load here.)
        let t_body = self.t_body.max(self.t0);
        let t_load = self.t_load.max(t_body);
        let t_proc = self.t_proc.max(t_load);
        let t_end = t_end.max(t_proc);
        let cb = self.cb_ns.min(t_proc - t_load);
        let hdr = self.hdr_ns.min(cb);
        // Each phase converted to ns on its own and the total as their sum,
        // so that the rounding cannot make them disagree.
        let m = mult();
        let mut phases = [
            to_ns(m, t_load - t_body),
            to_ns(m, (t_proc - t_load) - cb),
            to_ns(m, (t_body - self.t0) + (cb - hdr)),
            to_ns(m, hdr + (t_end - t_proc)),
            0,
        ];
        phases[P_TOTAL] = phases[P_LOAD] + phases[P_SCRIPT] + phases[P_CALLBACKS] + phases[P_OUTPUT];
        let status = if rc == sys::OK as c_int || rc == sys::DONE { (*r).status } else { rc };
        let class = status_class(status);
        let row = &*self.rows.add(self.slot);
        bump(&row.class[class], 1);
        bump(&row.bytes_out, (*r).bytes_sent.max(0) as u64);
        if self.bytes_in != 0 {
            bump(&row.bytes_in, self.bytes_in);
        }
        if self.quarantined {
            bump(&row.quarantined, 1);
        }
        // The total's sum is the sum of the phases' (the reader adds them).
        for (p, &ns) in phases.iter().enumerate() {
            // SAFETY: bucket() is below NB, the length of a histogram.
            bump(row.hist[p].get_unchecked(segment::bucket(ns)), 1);
            if p != P_TOTAL {
                bump(&row.sum_ns[p], ns);
            }
        }
        if !self.dom.is_null() {
            self.count_domain(row, phases[P_TOTAL], bump);
        }
        let f = (*r).filename;
        probes::phase_load(f, phases[P_LOAD]);
        probes::phase_script(f, phases[P_SCRIPT]);
        probes::phase_callbacks(f, phases[P_CALLBACKS]);
        probes::phase_output(f, phases[P_OUTPUT]);
        probes::request_end(f, status as i64, phases[P_TOTAL]);
    }
}

impl Req {
    #[inline(always)]
    fn count_domain(&self, row: &Row, ns: u64, bump: impl Fn(&AtomicU64, u64)) {
        // "other" mixes scripts: the policy reads named rows only.
        if seg().is_none_or(|s| self.slot >= s.slots) {
            return self.domain_fallback(ns);
        }
        let d = &row.dom;
        if self.dom_isolated {
            bump(&d.iso_reqs, 1);
            bump(&d.iso_ns, ns);
            if let Some(c) = self.cross {
                bump(&d.cross_n, 1);
                bump(&d.cross_ns, c);
            }
        } else {
            bump(&d.in_reqs, 1);
            bump(&d.in_ns, ns);
        }
    }

    /// Into the policy entry, shared by every thread: only for requests no
    /// named row takes.
    #[cold]
    #[inline(never)]
    fn domain_fallback(&self, ns: u64) {
        // SAFETY: `dom` points into the isolation segment, which outlives
        // every request of its configuration.
        let d = unsafe { &*self.dom };
        if self.dom_isolated {
            d.iso_reqs.fetch_add(1, Ordering::Relaxed);
            d.iso_ns.fetch_add(ns, Ordering::Relaxed);
            if let Some(c) = self.cross {
                d.cross_n.fetch_add(1, Ordering::Relaxed);
                d.cross_ns.fetch_add(c, Ordering::Relaxed);
            }
        } else {
            d.in_reqs.fetch_add(1, Ordering::Relaxed);
            d.in_ns.fetch_add(ns, Ordering::Relaxed);
        }
    }
}

/// The index in `Row::class` of a status: 1xx (and anything below 200 or
/// out of range), 2xx ... 5xx.  A 2xx takes one comparison.
#[inline(always)]
fn status_class(status: c_int) -> usize {
    if (status as u32).wrapping_sub(200) < 100 {
        return 1;
    }
    other_class(status)
}

#[cold]
#[inline(never)]
fn other_class(status: c_int) -> usize {
    ((status / 100) as usize).clamp(1, 5) - 1
}

/// Adds to a counter only this thread writes: a load and a store, no
/// read-modify-write instruction.
#[inline(always)]
fn bump(c: &AtomicU64, n: u64) {
    c.store(c.load(Ordering::Relaxed).wrapping_add(n), Ordering::Relaxed);
}

/// Once per process: learn its scoreboard slot, and check the SbHandle
/// mirror against Apache's own accessor (metrics stay off in this process
/// if they disagree).
#[cold]
#[inline(never)]
unsafe fn first_request(s: &Seg, c: *mut sys::conn_rec, child: usize, thread: usize) -> bool {
    let via_api = sys::ap_get_scoreboard_worker((*c).sbh.cast());
    let via_idx = sys::ap_get_scoreboard_worker_from_indexes(child as c_int, thread as c_int);
    if via_api.is_null() || via_api != via_idx {
        crate::log::serror(
            std::ptr::null(),
            sys::APLOG_ERR,
            "libcgi-status: the scoreboard handle does not have the expected layout; metrics are off in this process",
        );
        return false;
    }
    let _ = s;
    PROC_SLOT.store(child as i64, Ordering::Relaxed);
    true
}

fn proc_slot() -> usize {
    let p = PROC_SLOT.load(Ordering::Relaxed);
    if p < 0 {
        usize::MAX
    } else {
        p as usize
    }
}

// ---- Rare events, outside the per-request path ---------------------------

/// The row index of a script path (at load).
pub fn slot_for(path: &CStr) -> u32 {
    seg().map_or(0, |s| s.slot_for(path.to_bytes()) as u32)
}

pub fn loaded(slot: u32, path: &CStr) {
    discard_callback_time();
    if let Some(s) = seg() {
        s.events(slot as usize).loads.fetch_add(1, Ordering::Relaxed);
        s.procs(proc_slot()).loads.fetch_add(1, Ordering::Relaxed);
    }
    probes::load(path.as_ptr());
}

/// Callback time of initfunc belongs to the load, not to processfunc, and
/// terminatefunc's to no request: dropped once either has run.
pub fn discard_callback_time() {
    let mut hdr = 0;
    // SAFETY: reads and zeroes two thread-locals in shim.c.
    unsafe { libcgi_cb_take(&mut hdr) };
}

pub fn reloaded(path: &CStr) {
    if let Some(s) = seg() {
        s.events(s.slot_for(path.to_bytes())).reloads.fetch_add(1, Ordering::Relaxed);
    }
}

pub fn unloaded(slot: u32, path: &CStr) {
    if let Some(s) = seg() {
        s.events(slot as usize).unloads.fetch_add(1, Ordering::Relaxed);
        s.procs(proc_slot()).unloads.fetch_add(1, Ordering::Relaxed);
    }
    probes::unload(path.as_ptr());
}

/// An isolated worker died in processfunc (`signo`) or was killed at its
/// deadline (`timeout`).  Counted for the script only: the server process
/// was not touched.
#[cold]
pub fn isolated_fault(slot: u32, path: &CStr, signo: i32, timeout: bool) {
    // The probes fire in the server process, as for a fault in process.
    if timeout {
        probes::timeout(path.as_ptr());
    } else {
        probes::fault(path.as_ptr(), signo.into());
    }
    let Some(s) = seg() else { return };
    let e = s.events(slot as usize);
    if timeout {
        e.timeouts.fetch_add(1, Ordering::Relaxed);
        return;
    }
    let k = segment::FAULT_KINDS.iter().position(|&(_, sig)| sig == signo).unwrap_or(segment::FAULT_KINDS.len() - 1);
    e.faults[k].fetch_add(1, Ordering::Relaxed);
    // SAFETY: apr_time_now has no preconditions.
    e.last_fault_us.store(unsafe { sys::apr_time_now() } as u64, Ordering::Relaxed);
    e.last_fault_signal.store(signo as u64, Ordering::Relaxed);
    e.last_fault_pid.store(0, Ordering::Relaxed);
    e.last_fault_addr.store(u64::MAX, Ordering::Relaxed);
}

/// What an isolated worker did with the script for one request: loaded it
/// (`failed`: the load failed, `init_failed`: in initfunc), dropped the
/// version it had first because the file was replaced (`replaced`: a
/// reload and an unload), or, told by the server after bad output, will
/// drop it (`unload`).  Counted as in process; no callback time to discard
/// (an isolated request has none).
#[cold]
pub fn isolated_load(
    slot: u32,
    path: &CStr,
    loaded: bool,
    replaced: bool,
    failed: bool,
    init_failed: bool,
    unload: bool,
) {
    let Some(s) = seg() else { return };
    let e = s.events(slot as usize);
    let p = s.procs(proc_slot());
    if replaced {
        e.reloads.fetch_add(1, Ordering::Relaxed);
    }
    if replaced || unload {
        e.unloads.fetch_add(1, Ordering::Relaxed);
        p.unloads.fetch_add(1, Ordering::Relaxed);
        probes::unload(path.as_ptr());
    }
    if loaded && failed {
        e.load_failures.fetch_add(1, Ordering::Relaxed);
        if init_failed {
            e.init_failures.fetch_add(1, Ordering::Relaxed);
        }
    } else if loaded {
        e.loads.fetch_add(1, Ordering::Relaxed);
        p.loads.fetch_add(1, Ordering::Relaxed);
        probes::load(path.as_ptr());
    }
}

#[cold]
pub fn isolated_exit(slot: u32) {
    if let Some(s) = seg() {
        s.events(slot as usize).exits.fetch_add(1, Ordering::Relaxed);
    }
}

pub fn quarantined(path: &CStr) {
    if let Some(s) = seg() {
        s.events(s.slot_for(path.to_bytes())).quarantines.fetch_add(1, Ordering::Relaxed);
    }
}

/// Apache's header parser has just run (called from request.rs): shim.c
/// marks the callback it ran in, whose time is then the output phase's.
#[inline]
pub fn header_parse_done() {
    if seg().is_some() {
        // SAFETY: sets a thread-local in shim.c.
        unsafe { libcgi_hdr_done() };
    }
}
