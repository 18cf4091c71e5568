//! Server-wide fault counts and quarantine, in the script's row of the
//! shared segment (its `Events`), so that a script faulting in 32 prefork
//! children is quarantined after LibCGIMaxFaults faults in total, not per
//! child.
//!
//! Costs: a request of a loaded script reads one word (`q_until`), which is
//! written only when a quarantine starts or ends; a fault (rare) does a few
//! compare-exchanges on its script's row.  Times are milliseconds of
//! CLOCK_MONOTONIC_COARSE, one clock for every process of the machine.
//!
//! Scripts without a row of their own (the table is full: the "other" row;
//! metrics off, LibCGIStatusSlots 0) get None from `slot` and are counted
//! per process by the registry, as before.
//!
//! The window is fixed rather than sliding: it starts at the first fault
//! after the previous window ended (one word, updated with one CAS, where a
//! sliding window would need a shared list of times).

use super::seg;
use super::segment::Events;
use std::ffi::CStr;
use std::sync::atomic::{AtomicU64, Ordering};

const COUNT_BITS: u32 = 24;
const COUNT_MASK: u64 = (1 << COUNT_BITS) - 1;

/// The row of `path` if it has one of its own (a lookup in the shared name
/// table: for the slow path and the fault path only).
pub fn slot(path: &CStr) -> Option<u32> {
    let s = seg()?;
    let i = s.slot_quietly(path.to_bytes());
    (i < s.slots).then_some(i as u32)
}

fn events(slot: u32) -> Option<&'static Events> {
    let s = seg()?;
    ((slot as usize) < s.slots).then(|| s.events(slot as usize))
}

/// The word `maybe` reads for the script of row `slot`: None when the script
/// has no row of its own (metrics off, or the "other" row).  Found once, at
/// load, so that a request does not compute the row's address again.
pub fn word(slot: u32) -> Option<&'static AtomicU64> {
    events(slot).map(|e| &e.q_until)
}

/// Whether the script whose `word` this is may be in quarantine somewhere
/// (one load of a word that is nearly always 0): the per-request check.
#[inline(always)]
pub fn maybe(word: Option<&AtomicU64>) -> bool {
    word.is_some_and(|w| w.load(Ordering::Relaxed) != 0)
}

/// Milliseconds of the quarantine left for the file `ident` (a hash of its
/// identity, never 0), if any.  An expired quarantine, or one of another
/// file (the script was replaced: a new file counts as a fix until it
/// faults), is ended here for every process.
pub fn left(slot: u32, ident: u64, now_ms: u64) -> Option<u64> {
    let e = events(slot)?;
    let until = e.q_until.load(Ordering::Acquire);
    if until == 0 {
        return None;
    }
    if now_ms < until && e.q_ident.load(Ordering::Acquire) == ident {
        return Some(until - now_ms);
    }
    let _ = e.q_until.compare_exchange(until, 0, Ordering::AcqRel, Ordering::Relaxed);
    None
}

/// Counts a fault of the file `ident` in row `slot`.  True for exactly one
/// fault server-wide, the one that reaches `max` within `window_ms`: its
/// process logs the quarantine.  Faults while the script is in quarantine
/// (requests that were already running) are not counted.
pub fn record(slot: u32, ident: u64, now_ms: u64, max: u32, window_ms: u64) -> bool {
    let Some(e) = events(slot) else { return false };
    if max == 0 {
        return false;
    }
    let cur = e.q_ident.load(Ordering::Acquire);
    if cur != ident && e.q_ident.compare_exchange(cur, ident, Ordering::AcqRel, Ordering::Acquire).is_ok() {
        // Another file than the one the counts were for: it starts afresh.
        e.q_window.store(0, Ordering::Release);
        e.q_until.store(0, Ordering::Release);
    }
    let until = e.q_until.load(Ordering::Acquire);
    if until != 0 && now_ms < until {
        return false;
    }
    let mut w = e.q_window.load(Ordering::Acquire);
    loop {
        let (start, n) = (w >> COUNT_BITS, w & COUNT_MASK);
        // A count already at `max` is one a racing fault left as the
        // quarantine began: it starts a new window.
        let fresh = w == 0 || now_ms.saturating_sub(start) >= window_ms || n >= max as u64;
        let (start, n) = if fresh { (now_ms, 1) } else { (start, n + 1) };
        let new = (start << COUNT_BITS) | n.min(COUNT_MASK);
        match e.q_window.compare_exchange_weak(w, new, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) if n == max as u64 => {
                // The end first, then the count: a fault racing with this one
                // sees the quarantine rather than a fresh window.
                e.q_until.store((now_ms + window_ms).max(1), Ordering::Release);
                e.q_window.store(0, Ordering::Release);
                return true;
            }
            Ok(_) => return false,
            Err(x) => w = x,
        }
    }
}
