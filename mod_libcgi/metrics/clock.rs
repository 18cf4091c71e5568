//! The metrics' clock.  CLOCK_MONOTONIC through the vDSO costs no syscall,
//! but still a call and a conversion per read (about 20 ns); a request reads
//! the clock 8 times or more.  Where the kernel's own clocksource is the TSC
//! (the vDSO then computes CLOCK_MONOTONIC from it: invariant, synchronised
//! across CPUs, or the kernel would have switched away from it), the module
//! reads the TSC itself (one `rdtsc`) and converts only the request's phase
//! durations to nanoseconds, with a factor calibrated against
//! CLOCK_MONOTONIC when the configuration is loaded.  Elsewhere it uses
//! CLOCK_MONOTONIC and the factor is 1.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

static TSC: AtomicBool = AtomicBool::new(false);
/// Nanoseconds per tick, as a 32.32 fixed-point number.
static MULT: AtomicU64 = AtomicU64::new(1 << 32);

pub fn mono_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid timespec to write.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// The current time in ticks (see `to_ns`).
#[inline(always)]
pub fn ticks() -> u64 {
    #[cfg(target_arch = "x86_64")]
    if TSC.load(Ordering::Relaxed) {
        // SAFETY: rdtsc exists on every x86-64 CPU and has no preconditions.
        return unsafe { core::arch::x86_64::_rdtsc() };
    }
    mono_ticks()
}

/// Out of line, so that the usual `rdtsc` falls through without a jump over
/// this one at every read.
#[cold]
#[inline(never)]
fn mono_ticks() -> u64 {
    mono_ns()
}

/// The factor `to_ns` applies: loaded once per request, since the compiler
/// may not merge loads of an atomic.
#[inline(always)]
pub fn mult() -> u64 {
    MULT.load(Ordering::Relaxed)
}

/// Ticks to nanoseconds with the factor `mult()` returned.
#[inline(always)]
pub fn to_ns(mult: u64, ticks: u64) -> u64 {
    ((ticks as u128 * mult as u128) >> 32) as u64
}

/// Whether CLOCK_MONOTONIC is the TSC here.
fn kernel_uses_tsc() -> bool {
    if !cfg!(target_arch = "x86_64") {
        return false;
    }
    let src = std::fs::read_to_string("/sys/devices/system/clocksource/clocksource0/current_clocksource");
    let flags = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let flags = flags.lines().find(|l| l.starts_with("flags")).unwrap_or("");
    src.is_ok_and(|s| s.trim() == "tsc")
        && flags.split_whitespace().any(|f| f == "constant_tsc")
        && flags.split_whitespace().any(|f| f == "nonstop_tsc")
}

/// Chooses the clock (in the parent, before the children are forked) and
/// returns the callback timing mode for shim.c: 1 CLOCK_MONOTONIC, 2 TSC.
pub fn setup() -> i32 {
    TSC.store(false, Ordering::Relaxed);
    MULT.store(1 << 32, Ordering::Relaxed);
    if !kernel_uses_tsc() {
        return 1;
    }
    TSC.store(true, Ordering::Relaxed);
    // 20 ms against CLOCK_MONOTONIC: the factor to better than 1e-4.
    let (n0, t0) = (mono_ns(), ticks());
    std::thread::sleep(std::time::Duration::from_millis(20));
    let (n1, t1) = (mono_ns(), ticks());
    if t1 <= t0 || n1 <= n0 {
        TSC.store(false, Ordering::Relaxed);
        return 1;
    }
    MULT.store((((n1 - n0) as u128) << 32).div_euclid((t1 - t0) as u128) as u64, Ordering::Relaxed);
    2
}
