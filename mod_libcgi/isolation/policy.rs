//! The adaptive policy (`LibCGIIsolation adaptive`, issue 12 phase 2): per
//! script, server-wide, whether it runs isolated or in the server processes.
//!
//! - **Where the decision lives.** A table of script entries in the header
//!   of the isolation segment (which every server process and the manager
//!   map; workers unmap it).  An entry's `domain` word is read once per
//!   request, at its start: a request finishes in the domain it started in.
//!   It is written by the evaluator, and by a server thread in exactly one
//!   case: an in-process fault demotes the script at once (a CAS), without
//!   waiting for the next evaluation.
//! - **Who evaluates.** The isolation manager, every `TICK`: it is single
//!   and server-wide already, single-threaded, holds no request data, and
//!   outlives server processes; a thread in the Apache parent would make the
//!   parent multi-threaded before it forks.
//! - **The estimate.** Per script: the request rate (isolated plus in
//!   process, exponentially smoothed) times the cost of one crossing,
//!   sampled on one isolated request in 8 as CPU time: the server thread's
//!   from handing the request over to "done" less its time pushing output
//!   down the filter chain (which the in-process path pays too), plus the
//!   worker's outside processfunc (smoothed, frozen while the script is in
//!   process).  Wall time would count the run queue of a loaded machine.  Their sum over the isolated adaptive
//!   scripts is the estimated isolation overhead, in CPU-seconds per second,
//!   against `LibCGIIsolationBudget` percent of the CPUs the server may use.
//! - **Hysteresis.** Promote, costliest first, while the overhead is above
//!   the budget (the high watermark); demote a promoted script only if the
//!   overhead with it back out stays under 3/4 of the budget (the low
//!   watermark); no script changes domain twice within `DWELL`.
//! - **Faults.** A fault or timeout in process demotes at once; the script
//!   then stays isolated for `COOL_DOWN`.  Faults while isolated change
//!   nothing (the worker is replaced; the server processes are not touched).

use super::decide::{Moves, Obs, Planner, Tick};
use super::transport::{self, Segment};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

pub const ENTRIES: usize = 256;
pub const PATH_MAX: usize = 448;

/// `domain`: the script runs in a worker.
pub const ISOLATED: u32 = 0;
/// `domain`: the script runs in the server processes.
pub const INPROCESS: u32 = 1;
/// `mode`: `LibCGIIsolation process`, never changed.
pub const FIXED: u32 = 1;
/// `mode`: `LibCGIIsolation adaptive`.
pub const ADAPTIVE: u32 = 2;

const FREE: u32 = 0;
const CLAIMING: u32 = 1;
const READY: u32 = 2;

pub use super::decide::TICK;

/// Read by every request of the script; written at transitions only.
#[repr(C, align(64))]
pub struct Hot {
    pub state: AtomicU32,
    pub domain: AtomicU32,
    pub mode: AtomicU32,
    pub len: u32,
    pub key: u64,
    /// The script's row in the metrics segment plus one (0: not known yet).
    pub metrics_slot: AtomicU32,
}

/// Rare: transitions and in-process faults.
#[repr(C, align(64))]
pub struct Rare {
    pub promotions: AtomicU64,
    pub demotions: AtomicU64,
    /// In-process faults and timeouts, counted by the server threads.
    pub faults: AtomicU64,
    /// Unix ms until which the script stays isolated (for the page).
    pub cool_until_ms: AtomicU64,
}

/// The per-domain counts of the requests that no named metrics row takes
/// (metrics off, a script in the "other" row), with atomic adds.  Every
/// other request counts in its own thread's metrics row, which the
/// evaluator sums: no request writes a line that another one writes.
#[repr(C, align(64))]
pub struct Fallback(pub crate::metrics::Domains);

#[repr(C)]
pub struct Entry {
    pub hot: Hot,
    pub rare: Rare,
    pub fallback: Fallback,
    pub path: [u8; PATH_MAX],
}

#[repr(C, align(64))]
pub struct Table {
    /// Non-zero when some directory says `adaptive`: the manager evaluates.
    pub adaptive: u32,
    /// LibCGIIsolationBudget in millionths of the server's CPU.
    pub budget_ppm: u32,
    pub ncpu: u32,
    /// The manager logs transitions at info when this is >= APLOG_INFO.
    pub loglevel: i32,
    pub full: AtomicU64,
    /// The evaluator's own cost: evaluations, CPU ns spent in them.
    pub evals: AtomicU64,
    pub eval_cpu_ns: AtomicU64,
    /// Estimated isolation overhead at the last evaluation, ppm of the CPU.
    pub overhead_ppm: AtomicU64,
    pub entries: [Entry; ENTRIES],
}

/// FNV-1a, `| 1` so that 0 stays "no script" (a worker's `script`).
pub fn key(path: &[u8]) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for &c in path {
        h = (h ^ c as u64).wrapping_mul(0x100_0000_01b3);
    }
    h | 1
}

impl Table {
    /// The entry of `path`, made (isolated) on first sight; None when the
    /// table is full (the script then stays isolated).
    pub fn entry(&self, path: &[u8], mode: u32) -> Option<(usize, &Entry)> {
        let k = key(path);
        let start = (k % ENTRIES as u64) as usize;
        let plen = path.len().min(PATH_MAX);
        for n in 0..ENTRIES {
            let i = (start + n) % ENTRIES;
            let e = &self.entries[i];
            let mut st = e.hot.state.load(Ordering::Acquire);
            if st == FREE {
                match e.hot.state.compare_exchange(FREE, CLAIMING, Ordering::AcqRel, Ordering::Acquire) {
                    Ok(_) => {
                        // SAFETY: the CAS made this entry ours until READY;
                        // nobody reads its plain fields before then.
                        unsafe {
                            let ep = e as *const Entry as *mut Entry;
                            (*ep).hot.key = k;
                            (*ep).hot.len = plen as u32;
                            (&mut (*ep).path)[..plen].copy_from_slice(&path[..plen]);
                        }
                        e.hot.domain.store(ISOLATED, Ordering::Relaxed);
                        e.hot.mode.store(mode, Ordering::Relaxed);
                        e.hot.state.store(READY, Ordering::Release);
                        return Some((i, e));
                    }
                    Err(s) => st = s,
                }
            }
            let mut spins = 0;
            while st == CLAIMING && spins < 100_000 {
                std::thread::yield_now();
                st = e.hot.state.load(Ordering::Acquire);
                spins += 1;
            }
            if st == READY && e.hot.key == k && e.hot.len as usize == plen && e.path[..plen] == path[..plen] {
                // A directory may change its mode across a graceful restart.
                if e.hot.mode.load(Ordering::Relaxed) != mode {
                    e.hot.mode.store(mode, Ordering::Relaxed);
                    if mode == FIXED {
                        e.hot.domain.store(ISOLATED, Ordering::Relaxed);
                    }
                }
                return Some((i, e));
            }
        }
        self.full.fetch_add(1, Ordering::Relaxed);
        None
    }

    /// The entry of `path` if it has one (the status page).
    pub fn find(&self, path: &[u8]) -> Option<&Entry> {
        let k = key(path);
        let start = (k % ENTRIES as u64) as usize;
        let plen = path.len().min(PATH_MAX);
        for n in 0..ENTRIES {
            let e = &self.entries[(start + n) % ENTRIES];
            match e.hot.state.load(Ordering::Acquire) {
                FREE => return None,
                READY if e.hot.key == k && e.hot.len as usize == plen && e.path[..plen] == path[..plen] => {
                    return Some(e)
                }
                _ => {}
            }
        }
        None
    }
}

impl Entry {
    /// The script's row in the metrics segment, if it has a named one.
    pub fn metrics_row(&self) -> Option<usize> {
        match self.hot.metrics_slot.load(Ordering::Relaxed) as usize {
            0 => None,
            n if n - 1 < crate::metrics::named_rows() => Some(n - 1),
            _ => None,
        }
    }

    /// Its counts per domain (`metrics::DomainSums`), given its row's sum
    /// over threads.
    pub fn counts(&self, rows: &crate::metrics::DomainSums) -> crate::metrics::DomainSums {
        let mut c = self.fallback.0.read();
        for (a, b) in c.iter_mut().zip(rows) {
            *a += b;
        }
        c
    }

    pub fn name(&self) -> String {
        String::from_utf8_lossy(&self.path[..(self.hot.len as usize).min(PATH_MAX)]).into_owned()
    }
}

pub struct Evaluator {
    planner: Planner,
    last: Instant,
    pub next: Instant,
}

/// The planner's moves, on the shared table.
struct OnTable<'a>(&'a Table);

impl Moves for OnTable<'_> {
    fn promote(&mut self, i: usize) -> bool {
        let e = &self.0.entries[i];
        let ok = e.hot.domain.compare_exchange(ISOLATED, INPROCESS, Ordering::AcqRel, Ordering::Acquire).is_ok();
        if ok {
            e.rare.promotions.fetch_add(1, Ordering::Relaxed);
        }
        ok
    }
    fn demote(&mut self, i: usize) -> bool {
        let e = &self.0.entries[i];
        let ok = e.hot.domain.compare_exchange(INPROCESS, ISOLATED, Ordering::AcqRel, Ordering::Acquire).is_ok();
        if ok {
            e.rare.demotions.fetch_add(1, Ordering::Relaxed);
        }
        ok
    }
    fn fault(&mut self, i: usize, promoted: bool, cool: Duration) {
        let e = &self.0.entries[i];
        if e.hot.domain.swap(ISOLATED, Ordering::AcqRel) == INPROCESS || promoted {
            e.rare.demotions.fetch_add(1, Ordering::Relaxed);
        }
        e.rare.cool_until_ms.store(unix_ms() + cool.as_millis() as u64, Ordering::Relaxed);
    }
    fn cooled(&mut self, i: usize) {
        self.0.entries[i].rare.cool_until_ms.store(0, Ordering::Relaxed);
    }
}

impl Evaluator {
    pub fn new() -> Evaluator {
        let now = Instant::now();
        Evaluator { planner: Planner::new(ENTRIES), last: now, next: now + TICK }
    }

    /// One evaluation; `log` writes a line to the error log at info level.
    pub fn run(&mut self, t: &Table, seg: &Segment, me: libc::pid_t, log: &dyn Fn(&str)) {
        let cpu0 = transport::thread_cpu_ns();
        let now = Instant::now();
        let dt = now.duration_since(self.last).as_secs_f64();
        self.last = now;
        self.next = now + TICK;
        let capacity = t.ncpu.max(1) as f64;
        let budget = t.budget_ppm as f64 / 1e6 * capacity;
        // The requests' own counts are in the metrics rows of the threads
        // that ran them: summed here, in one pass over the rows in use.
        let ready: Vec<usize> =
            (0..ENTRIES).filter(|&i| t.entries[i].hot.state.load(Ordering::Acquire) == READY).collect();
        let rows: Vec<usize> = ready.iter().map(|&i| t.entries[i].metrics_row().unwrap_or(usize::MAX)).collect();
        let mut sums = vec![[0u64; 6]; ready.len()];
        crate::metrics::domain_sums(&rows, &mut sums);
        let obs: Vec<Obs> = ready
            .iter()
            .zip(&sums)
            // Not before its first request reached its row: a baseline taken
            // now would miss what the row holds from before a graceful restart.
            .filter(|(&i, _)| t.entries[i].hot.metrics_slot.load(Ordering::Relaxed) != 0)
            .map(|(&i, sum)| {
                let e = &t.entries[i];
                let [in_reqs, _, iso_reqs, _, crossings, crossing_ns] = e.counts(sum);
                Obs {
                    index: i,
                    adaptive: e.hot.mode.load(Ordering::Relaxed) == ADAPTIVE,
                    inprocess: e.hot.domain.load(Ordering::Acquire) == INPROCESS,
                    requests: in_reqs + iso_reqs,
                    crossings,
                    crossing_ns,
                    faults: e.rare.faults.load(Ordering::Acquire),
                }
            })
            .collect();
        let total = self.planner.step(
            Tick { now, dt, budget, capacity },
            &obs,
            &mut OnTable(t),
            &|i| t.entries[i].name(),
            &mut |line| log(&line),
        );
        t.overhead_ppm.store((total / capacity * 1e6) as u64, Ordering::Relaxed);
        self.retire(t, seg, me);
        t.evals.fetch_add(1, Ordering::Relaxed);
        t.eval_cpu_ns.fetch_add(transport::thread_cpu_ns().saturating_sub(cpu0), Ordering::Relaxed);
    }

    /// Workers that hold a script now in process drop it (terminatefunc
    /// runs there): an idle one is taken (owner set to the manager, so no
    /// server thread claims it), sent SIGTERM, and released once replaced.
    fn retire(&self, t: &Table, seg: &Segment, me: libc::pid_t) {
        for i in 0..seg.nslots() {
            // SAFETY: slots live as long as the segment; `owner` decides who
            // may touch the rest of a slot.
            let (s, c) = unsafe { (&*seg.slot(i), &*seg.ctl(i)) };
            if c.owner.load(Ordering::Acquire) != 0 || c.script == 0 {
                continue;
            }
            let promoted = t.find_key(c.script).is_some_and(|e| e.hot.domain.load(Ordering::Relaxed) == INPROCESS);
            let pid = c.pid.load(Ordering::Acquire);
            if !promoted || pid <= 0 || s.state.load(Ordering::Acquire) != transport::IDLE {
                continue;
            }
            if c.owner.compare_exchange(0, 1, Ordering::AcqRel, Ordering::Relaxed).is_err() {
                continue;
            }
            c.owner_pid.store(me, Ordering::Release);
            // SAFETY: signals our own child.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
    }
}

impl Table {
    fn find_key(&self, k: u64) -> Option<&Entry> {
        let start = (k % ENTRIES as u64) as usize;
        for n in 0..ENTRIES {
            let e = &self.entries[(start + n) % ENTRIES];
            match e.hot.state.load(Ordering::Acquire) {
                FREE => return None,
                READY if e.hot.key == k => return Some(e),
                _ => {}
            }
        }
        None
    }
}

pub fn unix_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}
