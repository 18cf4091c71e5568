//! The adaptive policy's decisions, apart from the shared memory they act
//! on (policy.rs gathers the counts and applies the moves): given, per
//! script, its counts so far, which ones move between the domains.  Plain
//! std, no FFI, so that `tests/policy.rs` compiles this very file and
//! drives it tick by tick with made-up traffic and a made-up clock: the
//! watermarks, the dwell time, the sustained-over rule and the cool-down
//! are checked there without a server or a wall clock.

use std::time::{Duration, Instant};

pub const TICK: Duration = Duration::from_millis(250);
pub const DWELL: Duration = Duration::from_secs(2);
pub const COOL_DOWN: Duration = Duration::from_secs(10);
/// The low watermark as a share of the budget.  Half was too low: in the
/// 2026-12-03 load shift (40k req/s) the 20 cold scripts alone came to
/// about 4.5% of a 10% budget, so the old hot script, promoted and now
/// cold, could never go back out.  A quarter of the budget is still a band
/// a script's traffic must cross (by a third) to flap.
pub const LOW: f64 = 0.75;
/// Evaluations in a row over the budget before a promotion (750 ms).
pub const SUSTAINED: u32 = 3;
/// Weight of the newest tick in the smoothed rate and cost.
pub const ALPHA: f64 = 0.4;

/// The most of a sampled crossing's cost the worker's own report may make,
/// as a multiple of what the server thread measured itself.  The worker
/// writes its part into shared memory, and so can the script it runs: a
/// script that wants into the server processes (adaptive mode) could
/// otherwise claim crossings as costly as it likes.  The two sides do
/// symmetric work (a wake-up, a wait, a copy), so an honest report stays
/// near the server's: measured 2026-12-04 (isolated 28 B and 10 KiB under
/// wrk, event and prefork), worker/server p50 1.1-1.3, p90 1.5-2.0, p99
/// 2.1-2.6, rare outliers up to 19 (a preempted worker).  Capped at 3, a
/// forged report makes a crossing look at most 4 times its server-side
/// cost.
pub const WORKER_CLAIM_MAX: u64 = 3;

/// A sampled crossing's cost in ns: the server thread's own measurement
/// plus the worker's report, bounded by `WORKER_CLAIM_MAX`.
pub fn crossing_cost(server_ns: u64, worker_ns: u64) -> u64 {
    server_ns.saturating_add(worker_ns.min(WORKER_CLAIM_MAX.saturating_mul(server_ns)))
}

/// One script as the evaluator sees it at a tick.
#[derive(Clone, Copy, Debug, Default)]
pub struct Obs {
    /// Its index in the script table (and in the planner's memory).
    pub index: usize,
    /// `LibCGIIsolation adaptive` (else a fixed boundary: counted, never moved).
    pub adaptive: bool,
    /// It runs in the server processes now.
    pub inprocess: bool,
    /// Requests so far, both domains.
    pub requests: u64,
    /// Sampled crossings so far and the sum of their costs in ns.
    pub crossings: u64,
    pub crossing_ns: u64,
    /// In-process faults and timeouts so far.
    pub faults: u64,
}

/// What the planner asks of the script table.  Each move is a CAS there
/// and may fail (a server thread's fault demotion got there first): then
/// nothing about that script changes in the planner either.
pub trait Moves {
    /// Isolated -> in process; false if it was not isolated any more.
    fn promote(&mut self, i: usize) -> bool;
    /// In process -> isolated; false if it was not in process any more.
    fn demote(&mut self, i: usize) -> bool;
    /// After an in-process fault: isolated now whatever it was, cooling
    /// down for `cool`; `promoted` says whether this planner had it in
    /// process (the table counts a demotion if either says so).
    fn fault(&mut self, i: usize, promoted: bool, cool: Duration);
    /// Its cool-down is over.
    fn cooled(&mut self, i: usize);
}

/// The planner's memory of one script.
#[derive(Clone, Default)]
struct Track {
    /// The counts have a baseline: the rows outlive a graceful restart and
    /// a new manager, the planner's memory does not.
    seen: bool,
    seen_reqs: u64,
    seen_cross_n: u64,
    seen_cross_ns: u64,
    seen_faults: u64,
    /// Requests per second, smoothed.
    rate: f64,
    /// Seconds per crossing, smoothed; 0 until measured.
    cost: f64,
    /// The last transition (or when first seen).
    since: Option<Instant>,
    /// Consecutive evaluations that found it isolated and the overhead
    /// over the budget: a promotion needs `SUSTAINED` of them, so that the
    /// noisy first samples of a new script (one tick, a worker's first
    /// wake-ups) promote nothing.
    over: u32,
    /// Promoted by this planner (and not demoted since).
    inproc: bool,
    cool_until: Option<Instant>,
}

/// When an evaluation runs and against what.
#[derive(Clone, Copy, Debug)]
pub struct Tick {
    pub now: Instant,
    /// Seconds since the previous evaluation.
    pub dt: f64,
    /// The budget in CPU-seconds per second (LibCGIIsolationBudget of the
    /// CPUs), and those CPUs.
    pub budget: f64,
    pub capacity: f64,
}

pub struct Planner {
    tracks: Vec<Track>,
}

impl Planner {
    pub fn new(entries: usize) -> Planner {
        Planner { tracks: vec![Track::default(); entries] }
    }

    /// The smoothed rate (requests/s) and cost (s per crossing) of script
    /// `i`, as the last step left them (tests/policy.rs reads it).
    #[allow(dead_code)]
    pub fn estimate(&self, i: usize) -> (f64, f64) {
        let t = &self.tracks[i];
        (t.rate, t.cost)
    }

    /// One evaluation.  Returns the estimated isolation overhead that
    /// remains (CPU-s/s).  `name` gives a script's name for the log lines
    /// `log` receives.
    pub fn step(
        &mut self,
        tick: Tick,
        obs: &[Obs],
        moves: &mut dyn Moves,
        name: &dyn Fn(usize) -> String,
        log: &mut dyn FnMut(String),
    ) -> f64 {
        let Tick { now, dt, budget, capacity } = tick;
        let dt = dt.max(1e-3);
        let pct = |x: f64| x / capacity * 100.0;
        // (index, overhead in CPU-s/s) of adaptive scripts by domain.
        let mut isolated: Vec<(usize, f64)> = Vec::new();
        let mut promoted: Vec<(usize, f64)> = Vec::new();
        for o in obs {
            let i = o.index;
            let tr = &mut self.tracks[i];
            if !tr.seen {
                // First seen now: the dwell time holds from here, as after
                // a transition, and counting starts from what is there.
                tr.seen = true;
                tr.since = Some(now);
                tr.seen_faults = o.faults;
            } else {
                let inst = o.requests.saturating_sub(tr.seen_reqs) as f64 / dt;
                tr.rate = ALPHA * inst + (1.0 - ALPHA) * tr.rate;
                if o.crossings > tr.seen_cross_n {
                    let sample = o.crossing_ns.saturating_sub(tr.seen_cross_ns) as f64
                        / 1e9
                        / (o.crossings - tr.seen_cross_n) as f64;
                    tr.cost = if tr.cost == 0.0 { sample } else { ALPHA * sample + (1.0 - ALPHA) * tr.cost };
                }
            }
            tr.seen_reqs = o.requests;
            tr.seen_cross_n = o.crossings;
            tr.seen_cross_ns = o.crossing_ns;
            if !o.adaptive {
                continue;
            }
            let over = tr.rate * tr.cost;
            if o.faults != tr.seen_faults {
                tr.seen_faults = o.faults;
                // The server thread that saw the fault has demoted it already
                // (or it was isolated by then): the cool-down starts now.
                moves.fault(i, tr.inproc, COOL_DOWN);
                tr.inproc = false;
                tr.since = Some(now);
                tr.cool_until = Some(now + COOL_DOWN);
                tr.over = 0;
                log(format!(
                    "{}: demoted to isolated after a fault in process (rate {:.1}/s x {:.1} us per crossing = {:.3}% \
                     of server CPU; budget {:.3}%); isolated for {} s",
                    name(i),
                    tr.rate,
                    tr.cost * 1e6,
                    pct(over),
                    pct(budget),
                    COOL_DOWN.as_secs()
                ));
                continue;
            }
            if tr.cool_until.is_some_and(|c| now < c) {
                continue;
            }
            if tr.cool_until.take().is_some() {
                moves.cooled(i);
            }
            if o.inprocess {
                promoted.push((i, over));
            } else {
                isolated.push((i, over));
            }
        }
        let mut total: f64 = isolated.iter().map(|x| x.1).sum();
        for &(i, over) in &isolated {
            let tr = &mut self.tracks[i];
            tr.over = if total > budget && over > 0.0 { tr.over + 1 } else { 0 };
        }
        let settled = |tr: &Track| tr.since.is_none_or(|s| now.duration_since(s) >= DWELL);
        if total > budget {
            isolated.sort_by(|a, b| b.1.total_cmp(&a.1));
            for &(i, over) in &isolated {
                if total <= budget || over <= 0.0 {
                    break;
                }
                if !settled(&self.tracks[i]) || self.tracks[i].over < SUSTAINED || !moves.promote(i) {
                    continue;
                }
                let tr = &mut self.tracks[i];
                tr.since = Some(now);
                tr.inproc = true;
                log(format!(
                    "{}: promoted into the server processes (rate {:.1}/s x {:.1} us per crossing = {:.3}% of server \
                     CPU; isolated overhead {:.3}% > budget {:.3}%)",
                    name(i),
                    tr.rate,
                    tr.cost * 1e6,
                    pct(over),
                    pct(total),
                    pct(budget)
                ));
                total -= over;
            }
        } else {
            promoted.sort_by(|a, b| a.1.total_cmp(&b.1));
            for &(i, over) in &promoted {
                if total + over > budget * LOW {
                    break;
                }
                if !settled(&self.tracks[i]) || !moves.demote(i) {
                    continue;
                }
                let tr = &mut self.tracks[i];
                tr.since = Some(now);
                tr.inproc = false;
                log(format!(
                    "{}: demoted to isolated (rate {:.1}/s x {:.1} us per crossing = {:.3}% of server CPU; isolated \
                     overhead with it {:.3}% <= low watermark {:.3}% (budget {:.3}%))",
                    name(i),
                    tr.rate,
                    tr.cost * 1e6,
                    pct(over),
                    pct(total + over),
                    pct(budget * LOW),
                    pct(budget)
                ));
                total += over;
            }
        }
        total
    }
}
