//! Per-script metrics shared by all server processes (issue 11): the
//! segment (`segment`), what requests record (`record`), the status page in
//! HTML, JSON and Prometheus text (`page`, from a `snapshot`), and static
//! probes for tracers (`probes`).
//!
//! Lifecycle, as the scoreboard's: the segment is anonymous shared memory
//! made by the parent in post_config and kept (apr_pool_userdata on the
//! process pool, which lives as long as the parent) across configuration
//! passes; a graceful restart reattaches it with its counts; the pre_mpm
//! hook, which the MPMs run only at start and at a full restart, zeroes it.

mod clock;
mod page;
mod probes;
pub mod quarantine;
mod record;
mod segment;
mod snapshot;

pub use record::{
    discard_callback_time, header_parse_done, isolated_exit, isolated_fault, isolated_load, loaded, quarantined,
    reloaded, slot_for, unloaded, Req,
};

pub use segment::{DomainSums, Domains};

use crate::log;
use crate::sys;
use segment::Seg;
use std::ffi::{c_char, c_int, c_void, CStr};
use std::ptr;
use std::sync::atomic::{AtomicI64, AtomicPtr, Ordering};

/// LibCGIStatusSlots when not configured.
pub const DEFAULT_SLOTS: usize = 32;
const MAX_SLOTS: i64 = 65536;
const USERDATA_KEY: &CStr = c"mod_libcgi-metrics-shm";

/// LibCGIStatusSlots of the configuration being read (-1: not given).
static SLOTS: AtomicI64 = AtomicI64::new(-1);

/// This process's view of the segment; null when metrics are off.  Set by
/// the parent in post_config, before it forks the children that use it.
static SEG: AtomicPtr<Seg> = AtomicPtr::new(ptr::null_mut());

#[inline(always)]
fn seg() -> Option<&'static Seg> {
    // SAFETY: SEG points into pconf, which outlives every child of this
    // configuration generation (and this copy of the module).
    unsafe { SEG.load(Ordering::Relaxed).as_ref() }
}

/// `LibCGIStatusSlots <n>`: server config only.
///
/// # Safety
/// Called by Apache's config parser.
pub unsafe extern "C" fn set_status_slots(
    cmd: *mut sys::cmd_parms,
    _conf: *mut c_void,
    w: *const c_char,
) -> *const c_char {
    let e = sys::ap_check_cmd_context(cmd, sys::GLOBAL_ONLY);
    if !e.is_null() {
        return e;
    }
    match CStr::from_ptr(w).to_str().ok().and_then(|s| s.parse::<i64>().ok()) {
        Some(n) if (0..=MAX_SLOTS).contains(&n) => {
            SLOTS.store(n, Ordering::Relaxed);
            ptr::null()
        }
        _ => c"LibCGIStatusSlots takes a number of script rows from 0 (metrics off) to 65536".as_ptr(),
    }
}

pub unsafe fn register_hooks() {
    // Before the isolation manager is forked (its post_config is
    // REALLY_FIRST): the manager's policy evaluator reads the segment.
    sys::ap_hook_post_config(Some(post_config), ptr::null(), ptr::null(), sys::APR_HOOK_REALLY_FIRST as c_int - 1);
    sys::ap_hook_pre_mpm(Some(pre_mpm), ptr::null(), ptr::null(), sys::APR_HOOK_MIDDLE as c_int);
    sys::ap_hook_handler(Some(page::handler), ptr::null(), ptr::null(), sys::APR_HOOK_MIDDLE as c_int);
    // mod_status's hook, if mod_status is loaded (an optional hook costs
    // nothing when it is not).
    // SAFETY: status_hook has the signature mod_status.h declares for it,
    // int (*)(request_rec *, int); the optional hook stores it untyped.
    let f: unsafe extern "C" fn(*mut sys::request_rec, c_int) -> c_int = page::status_hook;
    sys::apr_optional_hook_add(
        c"status_hook".as_ptr(),
        Some(
            std::mem::transmute::<unsafe extern "C" fn(*mut sys::request_rec, c_int) -> c_int, unsafe extern "C" fn()>(
                f,
            ),
        ),
        ptr::null(),
        ptr::null(),
        sys::APR_HOOK_MIDDLE as c_int,
    );
}

fn mpm_query(q: u32) -> usize {
    let mut v: c_int = 0;
    // SAFETY: ap_mpm_query writes one int.
    unsafe { sys::ap_mpm_query(q as c_int, &mut v) };
    v.max(1) as usize
}

unsafe extern "C" fn post_config(
    pconf: *mut sys::apr_pool_t,
    _plog: *mut sys::apr_pool_t,
    _ptemp: *mut sys::apr_pool_t,
    s: *mut sys::server_rec,
) -> c_int {
    crate::panic::catch(|| make_segment(pconf, s)).unwrap_or_else(|()| {
        crate::panic::in_hook("post_config (metrics)", s);
        SEG.store(ptr::null_mut(), Ordering::Relaxed);
        sys::OK as c_int
    })
}

unsafe fn make_segment(pconf: *mut sys::apr_pool_t, s: *mut sys::server_rec) -> c_int {
    SEG.store(ptr::null_mut(), Ordering::Relaxed);
    // The first, trial pass of the configuration makes nothing.
    if sys::ap_state_query(sys::AP_SQ_MAIN_STATE as c_int) == sys::AP_SQ_MS_CREATE_PRE_CONFIG as c_int {
        return sys::OK as c_int;
    }
    let slots = match SLOTS.load(Ordering::Relaxed) {
        n if n < 0 => DEFAULT_SLOTS,
        n => n as usize,
    };
    if slots == 0 {
        record::set_callback_timing(0);
        return sys::OK as c_int;
    }
    let servers = mpm_query(sys::AP_MPMQ_HARD_LIMIT_DAEMONS);
    let threads = mpm_query(sys::AP_MPMQ_HARD_LIMIT_THREADS);
    let mut layout = Seg::layout(slots, servers, threads);
    let ppool = (*(*s).process).pool;

    let mut old: *mut c_void = ptr::null_mut();
    sys::apr_pool_userdata_get(&mut old, USERDATA_KEY.as_ptr(), ppool);
    let old = old as *mut sys::apr_shm_t;
    if !old.is_null() {
        layout.base = sys::apr_shm_baseaddr_get(old) as *mut u8;
        if sys::apr_shm_size_get(old) >= layout.bytes && layout.matches() {
            return publish(pconf, layout);
        }
        // Another shape (LibCGIStatusSlots changed): counting starts again.
        // Children of the old generation keep their own mapping of the old
        // segment until they exit.
        log::serror(
            s,
            sys::APLOG_NOTICE,
            "libcgi-status: LibCGIStatusSlots or the MPM's limits changed; the counters start again",
        );
        sys::apr_pool_userdata_set(ptr::null(), USERDATA_KEY.as_ptr(), None, ppool);
        sys::apr_shm_destroy(old);
    }
    let mut shm: *mut sys::apr_shm_t = ptr::null_mut();
    // Anonymous: inherited by fork, nothing left in the file system.
    let rv = sys::apr_shm_create(&mut shm, layout.bytes, ptr::null(), ppool);
    if rv != 0 {
        sys::ap_log_error_(
            c"mod_libcgi".as_ptr(),
            0,
            log::module_index(),
            sys::APLOG_ERR as c_int,
            rv,
            s,
            c"libcgi-status: cannot create the shared memory segment of %lu bytes; metrics are off".as_ptr(),
            layout.bytes as std::ffi::c_ulong,
        );
        record::set_callback_timing(0);
        return sys::OK as c_int;
    }
    layout.base = sys::apr_shm_baseaddr_get(shm) as *mut u8;
    layout.reset(sys::apr_time_now() as u64);
    sys::apr_pool_userdata_set(shm as *const c_void, USERDATA_KEY.as_ptr(), None, ppool);
    publish(pconf, layout)
}

unsafe fn publish(pconf: *mut sys::apr_pool_t, layout: Seg) -> c_int {
    let p = sys::apr_palloc(pconf, std::mem::size_of::<Seg>()) as *mut Seg;
    p.write(layout);
    SEG.store(p, Ordering::Relaxed);
    record::set_callback_timing(clock::setup());
    sys::OK as c_int
}

/// Run by the MPM at start and at a full restart (never at a graceful one),
/// when no child of an older generation is left.
unsafe extern "C" fn pre_mpm(_p: *mut sys::apr_pool_t, _t: sys::ap_scoreboard_e) -> c_int {
    if let Some(s) = seg() {
        s.reset(sys::apr_time_now() as u64);
    }
    sys::OK as c_int
}

/// The policy's per-domain counts of the given rows, summed over threads
/// (the isolation manager's evaluator); `out` untouched when metrics are off.
pub fn domain_sums(rows: &[usize], out: &mut [DomainSums]) {
    if let Some(s) = seg() {
        s.domain_sums(rows, out);
    }
}

/// Rows of scripts with a name (below this: the policy may sum them).
pub fn named_rows() -> usize {
    seg().map_or(0, |s| s.slots)
}

/// In an isolated worker: the segment is unmapped (a script must not
/// write the server's counters) and metrics are off there.
///
/// # Safety
/// In a freshly forked worker, before any script runs.
pub unsafe fn detach() {
    let p = SEG.swap(ptr::null_mut(), Ordering::Relaxed);
    if let Some(s) = p.as_ref() {
        // Page-rounded: APR's anonymous segment starts with its own size word
        // in the first page of the mapping.
        let page = 4096usize;
        let start = s.base as usize & !(page - 1);
        let end = (s.base as usize + s.bytes).next_multiple_of(page);
        libc::munmap(start as *mut c_void, end - start);
    }
}
