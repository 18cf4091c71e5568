//! Server processes that the event MPM can no longer tell to stop.
//!
//! The event MPM's parent tells its children to stop (graceful restart,
//! graceful stop, stop) by writing one byte per process it may run
//! (MaxRequestWorkers / ThreadsPerChild, its `active_daemons_limit`) into
//! the pipe of death, which all children of a generation share; a child
//! ignores SIGTERM unless such a byte, or its own listener, told it to stop.
//! But when a child dies of a signal (kill -9, the OOM killer, a crash), the
//! parent starts a replacement without checking that limit
//! (`server_main_loop`: `++remaining_children_to_start`, then
//! `startup_children`), and right after a graceful restart it replaces such
//! a child twice.  So if the dead child was one of the old generation still
//! finishing its requests, or died just before a restart and is reaped just
//! after it, the new generation gets one process too many:
//! the next graceful restart writes a byte too few, and one process keeps
//! serving the old configuration for ever and makes the final stop wait for
//! the parent's SIGKILL (AH00045, AH00046).  Apache without this module does
//! the same (tests/surplus.rs shows the sequence; httpd 2.4.62 and trunk
//! have the code).  worker keeps one process per scoreboard slot below its
//! limit and cannot get there; prefork signals every child.
//!
//! So under event and worker every server process looks once a second at
//! the scoreboard and leaves, through the MPM's own graceful path (see
//! recycle.rs), when
//! - it belongs to an older generation than the running one and its MPM has
//!   not begun to stop it (it missed its byte), or
//! - there are more live, non-quiescing processes of the running generation
//!   than the MPM's limit and it is one of the extra ones by slot order
//!   (every process ranks them alike, so exactly the extra ones leave):
//!   this removes the surplus before a restart can miss it.
//!
//! Each condition must hold at two checks in a row: the pipe's byte is read
//! within microseconds, and a child that died is reaped (its slot emptied)
//! within a second, so neither is mistaken for the defect.

use crate::recycle;
use crate::sys;
use std::ffi::c_int;
use std::time::Duration;

const CHECK_EVERY: Duration = Duration::from_secs(1);
const STRIKES: u32 = 2;

fn query(what: u32) -> Option<c_int> {
    let mut v: c_int = 0;
    // SAFETY: ap_mpm_query writes one int.
    let rv = unsafe { sys::ap_mpm_query(what as c_int, &mut v) };
    (rv == 0).then_some(v)
}

/// child_init: starts the check under threaded MPMs.
pub fn start() {
    if query(sys::AP_MPMQ_IS_THREADED).is_none_or(|t| t == sys::AP_MPMQ_NOT_SUPPORTED as c_int) {
        return;
    }
    // Born with every signal blocked: the MPM's main thread is the only one
    // that may take the SIGTERM its listener sends it (kill(), to the
    // process) when the process is to stop; a thread of ours that took it
    // would leave the main thread waiting on the pipe for ever.
    // SAFETY: signal-set calls on local sets; the old mask is restored.
    unsafe {
        let mut all: libc::sigset_t = std::mem::zeroed();
        let mut old: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_BLOCK, &all, &mut old);
        // A process that cannot start it runs as it would without the module.
        let _ = std::thread::Builder::new().name("libcgi-surplus".into()).spawn(run);
        libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut());
    }
}

fn stopping() -> bool {
    query(sys::AP_MPMQ_MPM_STATE) == Some(sys::AP_MPMQ_STOPPING as c_int)
}

/// A process that has not exited (a dead child keeps its slot until the
/// parent reaps it).
fn alive(pid: libc::pid_t) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => s.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().next()).is_some_and(|st| st != "Z"),
        Err(_) => false,
    }
}

/// The running generation's live, non-quiescing processes, and this
/// process's rank among them by slot.
///
/// # Safety
/// In a server process, with the scoreboard attached.
unsafe fn census(running: c_int, me: libc::pid_t, check_alive: bool) -> (c_int, Option<c_int>) {
    let slots = query(sys::AP_MPMQ_HARD_LIMIT_DAEMONS).unwrap_or(0);
    let (mut n, mut rank) = (0, None);
    for i in 0..slots {
        let ps = sys::ap_get_scoreboard_process(i);
        if ps.is_null() {
            continue;
        }
        // Written by the parent and by each child for itself: read once.
        let p = std::ptr::read_volatile(ps);
        if p.pid == 0 || p.generation != running || p.quiescing != 0 || (check_alive && !alive(p.pid)) {
            continue;
        }
        if p.pid == me {
            rank = Some(n);
        }
        n += 1;
    }
    (n, rank)
}

fn run() {
    let me = std::process::id() as libc::pid_t;
    let Some(mine) = query(sys::AP_MPMQ_GENERATION) else {
        return;
    };
    let (mut old, mut extra) = (0u32, 0u32);
    loop {
        std::thread::sleep(CHECK_EVERY);
        if stopping() {
            return;
        }
        // SAFETY: the scoreboard is mapped for the life of the process.
        let global = unsafe { sys::ap_get_scoreboard_global() };
        if global.is_null() {
            continue;
        }
        // SAFETY: as above; the parent writes this word at each restart.
        let running = unsafe { std::ptr::read_volatile(&raw const (*global).running_generation) };
        old = if running != mine { old + 1 } else { 0 };
        if old >= STRIKES {
            let why = format!(
                "server process of generation {mine} still serving after the restart to generation {running}: \
                 the MPM's stop signal did not reach it (the event MPM starts one process too many after one dies \
                 of a signal); it exits as at MaxConnectionsPerChild"
            );
            // SAFETY: a threaded MPM's server process (start).
            unsafe { recycle::retire(&why, "old generation") };
            return;
        }
        let limit = query(sys::AP_MPMQ_MAX_DAEMONS).unwrap_or(c_int::MAX);
        // SAFETY: as above.
        let (n, rank) = unsafe { census(running, me, false) };
        let surplus = n > limit && rank.is_some_and(|r| r >= limit) && {
            // SAFETY: as above.
            let (n, rank) = unsafe { census(running, me, true) };
            n > limit && rank.is_some_and(|r| r >= limit)
        };
        extra = if surplus { extra + 1 } else { 0 };
        if extra >= STRIKES {
            let why = format!(
                "one server process too many: {n} of generation {running} run, the MPM allows {limit} \
                 (MaxRequestWorkers / ThreadsPerChild) and could not tell the extra one to stop at the next restart \
                 (the event MPM starts one process too many after one dies of a signal); this one exits as at \
                 MaxConnectionsPerChild"
            );
            // SAFETY: as above.
            unsafe { recycle::retire(&why, "one process too many") };
            return;
        }
    }
}
