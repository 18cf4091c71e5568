//! A consistent-enough reading of the segment: every counter summed over
//! the worker rows that were ever written (the used-row bitmaps), so that a
//! reader touches only memory that requests touched.  Counters are read
//! while requests go on; each one is exact at some instant during the read.

use super::segment::{self, Seg, NB, P_TOTAL};
use crate::sys;
use std::sync::atomic::Ordering;

#[derive(Default, Clone)]
pub struct Counters {
    pub requests: u64,
    pub ended: u64,
    pub class: [u64; 5],
    pub quarantined: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub loads: u64,
    pub reloads: u64,
    pub unloads: u64,
    pub load_failures: u64,
    pub init_failures: u64,
    pub faults: [u64; segment::FAULT_KINDS.len()],
    pub timeouts: u64,
    pub exits: u64,
    pub quarantines: u64,
    pub recycles: u64,
}

impl Counters {
    pub fn in_flight(&self) -> u64 {
        self.requests.saturating_sub(self.ended)
    }
    pub fn faults_total(&self) -> u64 {
        self.faults.iter().sum()
    }
    fn add(&mut self, o: &Counters) {
        self.requests += o.requests;
        self.ended += o.ended;
        for i in 0..5 {
            self.class[i] += o.class[i];
        }
        self.quarantined += o.quarantined;
        self.bytes_in += o.bytes_in;
        self.bytes_out += o.bytes_out;
        self.loads += o.loads;
        self.reloads += o.reloads;
        self.unloads += o.unloads;
        self.load_failures += o.load_failures;
        self.init_failures += o.init_failures;
        for i in 0..self.faults.len() {
            self.faults[i] += o.faults[i];
        }
        self.timeouts += o.timeouts;
        self.exits += o.exits;
        self.quarantines += o.quarantines;
        self.recycles += o.recycles;
    }
}

#[derive(Clone, Copy)]
pub struct Hist {
    pub buckets: [u64; NB],
    pub sum_ns: u64,
}

impl Default for Hist {
    fn default() -> Self {
        Hist { buckets: [0; NB], sum_ns: 0 }
    }
}

impl Hist {
    pub fn count(&self) -> u64 {
        self.buckets.iter().sum()
    }
    /// The q-quantile in seconds, interpolated within its bucket (as
    /// Prometheus' histogram_quantile does); None without observations.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let n = self.count();
        if n == 0 {
            return None;
        }
        let rank = q * n as f64;
        let mut cum = 0u64;
        for (i, &c) in self.buckets.iter().enumerate() {
            if c > 0 && (cum + c) as f64 >= rank {
                if i >= segment::BOUNDS_NS.len() {
                    return Some(segment::BOUNDS_NS[i - 1] as f64 / 1e9);
                }
                let lo = if i == 0 { 0.0 } else { segment::BOUNDS_NS[i - 1] as f64 };
                let hi = segment::BOUNDS_NS[i] as f64;
                let f = ((rank - cum as f64) / c as f64).clamp(0.0, 1.0);
                return Some((lo + (hi - lo) * f) / 1e9);
            }
            cum += c;
        }
        None
    }
    fn add(&mut self, o: &Hist) {
        for i in 0..NB {
            self.buckets[i] += o.buckets[i];
        }
        self.sum_ns += o.sum_ns;
    }
}

#[derive(Clone, Default)]
pub struct Script {
    /// The path (lossily UTF-8); empty for the "other" row.
    pub name: String,
    pub other: bool,
    pub c: Counters,
    pub h: [Hist; 5],
    /// (apr time in us, signal, pid, address or 0)
    pub last_fault: Option<(u64, u64, u64, u64)>,
    /// The isolation policy's counts per domain (segment::Domains).
    pub dom: segment::DomainSums,
}

impl Script {
    pub fn label(&self) -> &str {
        if self.other {
            "(other)"
        } else {
            &self.name
        }
    }
    pub fn total_ns(&self) -> u64 {
        self.h[P_TOTAL].sum_ns
    }
}

#[derive(Clone, Default)]
pub struct Proc {
    pub slot: usize,
    pub pid: i64,
    pub c: Counters,
}

pub struct Snapshot {
    pub since_us: u64,
    pub now_us: u64,
    pub slots: usize,
    pub slots_used: usize,
    pub names_full: u64,
    pub bytes: usize,
    pub row_bytes: usize,
    pub servers: usize,
    pub threads: usize,
    pub scripts: Vec<Script>,
    pub procs: Vec<Proc>,
    pub totals: Script,
}

pub fn take(s: &Seg) -> Snapshot {
    let r = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    let mut scripts: Vec<Script> = (0..=s.slots)
        .map(|i| Script {
            name: if i < s.slots {
                s.name_of(i).map(|b| String::from_utf8_lossy(b).into_owned()).unwrap_or_default()
            } else {
                String::new()
            },
            other: i == s.slots,
            ..Default::default()
        })
        .collect();
    let mut procs: Vec<Proc> = (0..s.servers).map(|i| Proc { slot: i, ..Default::default() }).collect();
    for w in 0..s.blocks() {
        for (wi, word) in s.used(w).iter().enumerate() {
            let mut bits = word.load(Ordering::Relaxed);
            while bits != 0 {
                let slot = wi * 64 + bits.trailing_zeros() as usize;
                bits &= bits - 1;
                if slot > s.slots {
                    continue;
                }
                let row = s.row(w, slot);
                let mut c = Counters {
                    requests: r(&row.started),
                    quarantined: r(&row.quarantined),
                    bytes_in: r(&row.bytes_in),
                    bytes_out: r(&row.bytes_out),
                    ..Default::default()
                };
                for k in 0..5 {
                    c.class[k] = r(&row.class[k]);
                }
                c.ended = c.class.iter().sum();
                let sc = &mut scripts[slot];
                sc.c.add(&c);
                for (a, b) in sc.dom.iter_mut().zip(row.dom.read()) {
                    *a += b;
                }
                procs[s.server_of(w)].c.add(&c);
                for p in 0..5 {
                    let sum =
                        if p == P_TOTAL { (0..P_TOTAL).map(|q| r(&row.sum_ns[q])).sum() } else { r(&row.sum_ns[p]) };
                    let mut h = Hist { sum_ns: sum, ..Default::default() };
                    for b in 0..NB {
                        h.buckets[b] = r(&row.hist[p][b]);
                    }
                    sc.h[p].add(&h);
                }
            }
        }
    }
    for (i, sc) in scripts.iter_mut().enumerate() {
        let e = s.events(i);
        sc.c.loads = r(&e.loads);
        sc.c.reloads = r(&e.reloads);
        sc.c.unloads = r(&e.unloads);
        sc.c.load_failures = r(&e.load_failures);
        sc.c.init_failures = r(&e.init_failures);
        for k in 0..sc.c.faults.len() {
            sc.c.faults[k] = r(&e.faults[k]);
        }
        sc.c.timeouts = r(&e.timeouts);
        sc.c.exits = r(&e.exits);
        sc.c.quarantines = r(&e.quarantines);
        sc.c.recycles = r(&e.recycles);
        let t = r(&e.last_fault_us);
        if t != 0 {
            sc.last_fault = Some((t, r(&e.last_fault_signal), r(&e.last_fault_pid), r(&e.last_fault_addr)));
        }
    }
    for p in procs.iter_mut() {
        let e = s.procs(p.slot);
        p.c.loads = r(&e.loads);
        p.c.unloads = r(&e.unloads);
        p.c.faults[segment::FAULT_KINDS.len() - 1] = r(&e.faults);
        p.c.timeouts = r(&e.timeouts);
        p.c.exits = r(&e.exits);
        p.c.recycles = r(&e.recycles);
        // SAFETY: the scoreboard exists in every process after pre_mpm.
        p.pid = unsafe {
            let ps = sys::ap_get_scoreboard_process(p.slot as i32);
            if ps.is_null() {
                0
            } else {
                (*ps).pid as i64
            }
        };
    }
    let slots_used = scripts.iter().filter(|x| !x.other && !x.name.is_empty()).count();
    // Named rows, then "other"; unnamed (never used) entries are dropped.
    let mut list: Vec<Script> = scripts.into_iter().filter(|x| x.other || !x.name.is_empty()).collect();
    let mut totals = Script { name: "(all)".into(), ..Default::default() };
    for sc in &list {
        totals.c.add(&sc.c);
        for p in 0..5 {
            totals.h[p].add(&sc.h[p]);
        }
        if sc.last_fault.map(|f| f.0) > totals.last_fault.map(|f| f.0) {
            totals.last_fault = sc.last_fault;
        }
    }
    list.sort_by(|a, b| b.total_ns().cmp(&a.total_ns()).then_with(|| a.name.cmp(&b.name)));
    let procs = procs.into_iter().filter(|p| p.pid != 0 || p.c.requests != 0 || p.c.loads != 0).collect();
    let h = s.header();
    Snapshot {
        since_us: h.since_us.load(Ordering::Relaxed),
        // SAFETY: no preconditions.
        now_us: unsafe { sys::apr_time_now() } as u64,
        slots: s.slots,
        slots_used,
        names_full: h.names_full.load(Ordering::Relaxed),
        bytes: s.bytes,
        row_bytes: std::mem::size_of::<segment::Row>(),
        servers: s.servers,
        threads: s.threads,
        scripts: list,
        procs,
        totals,
    }
}
