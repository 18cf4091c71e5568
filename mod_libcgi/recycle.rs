//! LibCGIFaultAction recycle: after a fault, the server process finishes the
//! response it is writing and is then replaced by the MPM, so that whatever
//! the script may have corrupted outside itself goes with it.

use crate::log;
use crate::registry::REGISTRY;
use crate::sys;
use std::ffi::{c_int, c_void};
use std::ptr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

static SCHEDULED: AtomicBool = AtomicBool::new(false);

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
    } else {
        // Threaded MPMs give modules no way to ask for a graceful exit of one
        // process: wait until no other thread of this process is serving a
        // request, then exit cleanly; the parent starts a replacement.
        let _ = std::thread::Builder::new().name("libcgi-recycle".into()).spawn(drain_then_exit);
    }
    0
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

fn drain_then_exit() {
    // SAFETY: reads of the shared scoreboard; exit ends the process.
    unsafe {
        // Everything slow first (terminatefuncs, the log line), so that the
        // last idle check and the exit are as close together as they can be.
        if let Some(reg) = REGISTRY.get() {
            let s = reg.server.load(Ordering::Relaxed);
            log::serror(s, sys::APLOG_NOTICE, "server process exiting to be replaced (LibCGIFaultAction recycle)");
            reg.shutdown();
        }
        while busy() {
            std::thread::sleep(Duration::from_millis(10));
        }
        libc::_exit(0);
    }
}
