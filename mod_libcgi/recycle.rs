//! LibCGIFaultAction recycle: after a fault, the server process finishes the
//! response it is writing and is then replaced by the MPM, so that whatever
//! the script may have corrupted outside itself goes with it.
//!
//! prefork: AP_SIG_GRACEFUL (SIGUSR1) to the child itself, which stops
//! listening and exits after its connection.
//!
//! worker and event give a module no call to end one process gracefully:
//! the child's main thread waits on the pipe of death, which all children
//! of a bucket share (a byte written there ends whichever child reads it),
//! SIGTERM only wakes that thread, and MaxConnectionsPerChild counts in a
//! static of the MPM.  What both MPMs do have is their reaction to a failing
//! accept: when a listener's `accept_func` returns APR_EGENERAL (the MPM
//! reads it as "out of descriptors or memory"), the listener thread calls
//! signal_threads(ST_GRACEFUL) — the same path MaxConnectionsPerChild takes:
//! it closes this process's listeners, closes idle keep-alive connections,
//! lets the workers finish the requests they have, and the child exits; the
//! parent starts a replacement as it does for any exited child.  So the
//! faulted process swaps its own (per-process, copied at fork) listener
//! records' accept_func for one that refuses without accepting: the
//! connection stays queued for another process, and nothing is lost.
//!
//! That path makes the child exit with APEXIT_CHILDSICK, which the parent
//! reads as a resource shortage (slower respawning; and if no child had been
//! healthy yet in this generation, a shutdown of the whole server), so an
//! exit handler turns the exit status into 0 once the MPM's own cleanup
//! (including our terminatefuncs in the child pool's cleanup) is done.
//!
//! A backstop thread bounds all of it: GracefulShutdownTimeout, or the
//! server's Timeout when that is 0.  And when no connection comes to take
//! the listener through accept within a second (a quiet process, or a
//! listener of another bucket that this process cannot reach), the process
//! exits on its own as soon as none of its threads is serving a request.

use crate::log;
use crate::registry::REGISTRY;
use crate::sys;
use std::ffi::{c_int, c_void};
use std::ptr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

static SCHEDULED: AtomicBool = AtomicBool::new(false);
/// The MPM has called our accept_func: its graceful exit is under way.
static REFUSED: AtomicBool = AtomicBool::new(false);

/// # Safety
/// `r` is a live request.
pub unsafe fn schedule(r: *mut sys::request_rec) {
    (*(*r).connection).keepalive = sys::ap_conn_keepalive_e_AP_CONN_CLOSE;
    if SCHEDULED.load(Ordering::Relaxed) {
        return;
    }
    log::rerror(
        r,
        sys::APLOG_NOTICE,
        0,
        "recycling this server process after the response (LibCGIFaultAction recycle)",
    );
    // The request pool goes when the response has been written and logged.
    sys::apr_pool_cleanup_register((*r).pool, ptr::null(), Some(after_request), Some(sys::apr_pool_cleanup_null));
}

unsafe extern "C" fn after_request(_data: *mut c_void) -> sys::apr_status_t {
    crate::panic::catch(|| recycle_now()).unwrap_or_else(|()| {
        crate::panic::in_hook("recycle", ptr::null());
        0
    })
}

unsafe fn recycle_now() -> sys::apr_status_t {
    if SCHEDULED.swap(true, Ordering::SeqCst) {
        return 0;
    }
    let mut threaded: c_int = 0;
    sys::ap_mpm_query(sys::AP_MPMQ_IS_THREADED as c_int, &mut threaded);
    if threaded == sys::AP_MPMQ_NOT_SUPPORTED as c_int {
        // prefork: AP_SIG_GRACEFUL (SIGUSR1) makes a child stop listening and
        // exit once its current connection is done; the parent starts a new
        // one.
        libc::kill(libc::getpid(), libc::SIGUSR1);
        return 0;
    }
    stop_accepting(
        "server process exiting to be replaced once its requests are done (LibCGIFaultAction recycle)",
        "LibCGIFaultAction recycle",
    );
    0
}

/// Ends a worker or event process through the MPM's own graceful path
/// unless a recycle is already under way (for `surplus`, which finds
/// processes the MPM cannot reach); `why` is logged first.  Whether it did.
///
/// # Safety
/// Only under a threaded MPM, in a server process.
pub unsafe fn retire(why: &str, label: &'static str) -> bool {
    if SCHEDULED.swap(true, Ordering::SeqCst) {
        return false;
    }
    stop_accepting(why, label);
    true
}

/// `label` names the cause in the backstop's line.
unsafe fn stop_accepting(why: &str, label: &'static str) {
    let server = REGISTRY.get().map_or(ptr::null_mut(), |r| r.server.load(Ordering::Relaxed));
    log::serror(server, sys::APLOG_NOTICE, why);
    let buckets = sys::ap_num_listen_buckets;
    if buckets > 1 {
        // The records of buckets after the first are private to listen.c.
        log::serror(
            server,
            sys::APLOG_NOTICE,
            &format!(
                "{} listener buckets (ListenCoresBucketsRatio): if this process's are not the first, it exits \
                 when it serves no request, or after {} s",
                buckets,
                bound().as_secs()
            ),
        );
    }
    libc::atexit(exit_status_zero);
    let mut lr = sys::ap_listeners;
    while !lr.is_null() {
        // SAFETY: the listener records are this process's own copy (made at
        // fork); the listener thread reads accept_func before every accept.
        // An aligned pointer store is single-copy atomic on the platforms
        // we support, so it sees the old or the new function, never a mix.
        ptr::write_volatile(&raw mut (*lr).accept_func, Some(refuse_accept));
        lr = (*lr).next;
    }
    if let Err(e) = std::thread::Builder::new().name("libcgi-recycle".into()).spawn(move || backstop(label)) {
        // The MPM's graceful path still ends the process, once a connection
        // reaches the refusing listener; the bounds are what is missing.
        log::serror(
            server,
            sys::APLOG_WARNING,
            &format!(
                "cannot start the recycle backstop thread: {e}; the process exits when the next connection \
                 reaches its listener, GracefulShutdownTimeout is not enforced"
            ),
        );
    }
}

/// Makes the MPM's listener take its graceful-exit path (see the module
/// comment) without accepting: the connection stays queued for another
/// process.
unsafe extern "C" fn refuse_accept(
    csd: *mut *mut c_void,
    _lr: *mut sys::ap_listen_rec,
    _ptrans: *mut sys::apr_pool_t,
) -> sys::apr_status_t {
    *csd = ptr::null_mut();
    REFUSED.store(true, Ordering::Relaxed);
    sys::APR_EGENERAL as sys::apr_status_t
}

/// Runs in exit(), after the MPM destroyed the child pool: the recycled
/// process is not sick, whatever its MPM says.
extern "C" fn exit_status_zero() {
    // SAFETY: _exit ends the process at once; everything that had to run
    // (the child pool's cleanups) already has.
    unsafe { libc::_exit(0) }
}

/// Whether any worker of this process is in the middle of a request.
unsafe fn busy() -> bool {
    let mut proc_: sys::apr_proc_t = std::mem::zeroed();
    proc_.pid = libc::getpid();
    let slot = sys::ap_find_child_by_pid(&mut proc_);
    if slot < 0 {
        return false;
    }
    let mut threads: c_int = 0;
    sys::ap_mpm_query(sys::AP_MPMQ_HARD_LIMIT_THREADS as c_int, &mut threads);
    (0..threads.max(1)).any(|t| {
        let ws = sys::ap_get_scoreboard_worker_from_indexes(slot, t);
        !ws.is_null()
            && matches!(
                (*ws).status as u32,
                sys::SERVER_BUSY_READ | sys::SERVER_BUSY_WRITE | sys::SERVER_BUSY_LOG | sys::SERVER_BUSY_DNS
            )
    })
}

/// How long the MPM gets to finish the process's requests.
unsafe fn bound() -> Duration {
    if sys::ap_graceful_shutdown_timeout > 0 {
        return Duration::from_secs(sys::ap_graceful_shutdown_timeout as u64);
    }
    let s = REGISTRY.get().map_or(ptr::null_mut(), |r| r.server.load(Ordering::Relaxed));
    let t = if s.is_null() { 0 } else { (*s).timeout };
    Duration::from_micros(t.max(1_000_000) as u64)
}

fn backstop(label: &str) {
    // SAFETY: reads of the shared scoreboard and of the MPM's settings;
    // _exit ends the process.
    unsafe {
        let start = Instant::now();
        let limit = bound();
        let server = REGISTRY.get().map_or(ptr::null_mut(), |r| r.server.load(Ordering::Relaxed));
        loop {
            std::thread::sleep(Duration::from_millis(20));
            let waited = start.elapsed();
            let quiet = !REFUSED.load(Ordering::Relaxed) && waited > Duration::from_secs(1) && !busy();
            if !quiet && waited < limit {
                continue;
            }
            let why = if quiet {
                "no connection came to stop its listener, and it serves no request".to_string()
            } else {
                format!("its requests did not finish within {} s", limit.as_secs())
            };
            let what = format!("server process exiting now ({label}): {why}");
            log::serror(server, sys::APLOG_NOTICE, &what);
            if let Some(reg) = REGISTRY.get() {
                reg.shutdown();
            }
            libc::_exit(0);
        }
    }
}
