//! The isolated domain (`LibCGIIsolation process`, issue 12 phase 1): a
//! script runs in a worker process of mod_libcgi's own, with the same ABI.
//!
//! Design (README "Isolation" says it for users):
//! - **Who starts the workers.** A manager process, forked by the Apache
//!   parent in post_config (hook REALLY_FIRST, before other modules load
//!   keys), registered with `ap_register_extra_mpm_process` as mod_cgid does
//!   with its daemon.  One manager per server, not workers per server
//!   process: a fork from a threaded server process would copy its locks
//!   mid-use and every request's memory, and the parent is the one process
//!   that is single-threaded and holds no request data.  The manager forks
//!   one worker per slot, respawns a worker that dies, kills one a server
//!   thread gives up on, and on SIGTERM (stop, graceful restart: a pconf
//!   cleanup sends it) kills and reaps them all.  PR_SET_PDEATHSIG on the
//!   manager and on each worker: no orphan even if the parent is killed -9.
//! - **Transport** (`transport`): an anonymous `apr_shm` segment made in the
//!   parent, inherited by server processes, manager and workers.  One slot
//!   per worker; a server thread claims a free slot with a CAS; the turn is
//!   a futex word in the slot (two syscalls per round trip: wake and wait);
//!   one buffer carries one message at a time.  A small response is one
//!   round trip (the request out, the output and DONE back).
//! - **Streaming.** The worker's lwrite fills the slot's buffer; when it is
//!   full (or on lflush) the worker hands it over and waits, and the server
//!   thread feeds it to the same `Request` the in-process path uses (Apache's
//!   CGI header parser, brigades down the filter chain).  Memory is bounded
//!   by one buffer per worker; the worker waiting is the back-pressure.
//! - **Environment and body.** Built in the server with
//!   `ap_add_common_vars`/`ap_add_cgi_vars`/`ap_create_environment`,
//!   serialised into the slot with the body (more body follows in chunks the
//!   worker asks for); in the worker `environ` itself is the request's
//!   environment, so getenv from the script's own libraries works too.
//! - **Faults and timeouts.** Nothing is caught in the worker: a fault kills
//!   it; the manager reaps it and marks the slot DEAD (futex wake); the
//!   server thread answers 500 (or cuts the connection if output was sent)
//!   and the manager starts a new worker.  At the deadline the server thread
//!   asks the manager to SIGKILL the worker.  No siglongjmp.  exit() is bound
//!   as in process (it ends the request; the worker lives on).
//! - **What a worker holds.** Every descriptor but /dev/null on 0-2 closed
//!   (no listeners, no logs), only its own slot of the segment mapped, the
//!   configured user and group (default: Apache's User/Group; root never),
//!   rlimits from LibCGIIsolationLimits, not dumpable.  It is a fork of the
//!   parent as of post_config: it holds the configuration's memory, never a
//!   server process's requests.

mod client;
pub mod decide;
pub use client::child_init as client_child_init;
pub mod policy;
mod relay;
mod supervisor;
mod transport;
mod worker;

use crate::log;
use crate::sys;
use std::ffi::{c_char, c_int, c_void, CStr};
use std::ptr;
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU32, AtomicUsize, Ordering};
use std::sync::Mutex;
use transport::{Ident, Segment, MAX_IDENTS};

/// Workers (slots) the manager keeps unless `LibCGIIsolationWorkers` says.
const DEFAULT_WORKERS: usize = 16;
/// Each slot is 256 KiB of shared memory, zeroed (so touched) at start.
const MAX_WORKERS: usize = transport::MAX_SLOTS;
/// How long a request waits for a free worker before its 503, by default.
const DEFAULT_CLAIM_WAIT_MS: u32 = 10_000;

/// Per-directory settings (in config::DirConf).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct DirIso {
    /// -1 unset, 0 inprocess, 1 process, 2 adaptive.
    pub mode: c_int,
    /// -1 unset.
    pub uid: i64,
    pub gid: i64,
    /// -1 unset; then address space (bytes), CPU seconds, open files.
    pub limits: [i64; 3],
}

impl DirIso {
    pub const UNSET: DirIso = DirIso { mode: -1, uid: -1, gid: -1, limits: [-1; 3] };
    pub fn merge(b: &DirIso, a: &DirIso) -> DirIso {
        let pick = |x: i64, y: i64| if x >= 0 { x } else { y };
        DirIso {
            mode: if a.mode >= 0 { a.mode } else { b.mode },
            uid: pick(a.uid, b.uid),
            gid: pick(a.gid, b.gid),
            limits: [pick(a.limits[0], b.limits[0]), pick(a.limits[1], b.limits[1]), pick(a.limits[2], b.limits[2])],
        }
    }
}

/// Some directory said `LibCGIIsolation process`: the manager is needed.
static WANTED: AtomicBool = AtomicBool::new(false);
/// Some directory said `LibCGIIsolation adaptive`: the manager evaluates.
static ADAPTIVE: AtomicBool = AtomicBool::new(false);
/// LibCGIIsolationBudget in millionths of the server's CPU (default 10%).
static BUDGET_PPM: AtomicU32 = AtomicU32::new(100_000);
/// The (uid, gid) pairs the configuration names, for the manager.
static IDENTS: Mutex<Vec<(u32, u32)>> = Mutex::new(Vec::new());
static SEGMENT: AtomicPtr<Segment> = AtomicPtr::new(ptr::null_mut());
/// LibCGIIsolationWorkers of the configuration being read (0: unset).
static WORKERS: AtomicUsize = AtomicUsize::new(0);
static CLAIM_WAIT_MS: AtomicU32 = AtomicU32::new(DEFAULT_CLAIM_WAIT_MS);

fn err(p: *mut sys::apr_pool_t, msg: &str) -> *const c_char {
    let m = std::ffi::CString::new(msg).unwrap_or_default();
    // SAFETY: copies the message into the configuration pool.
    unsafe { sys::apr_pstrdup(p, m.as_ptr()) }
}

unsafe fn iso(conf: *mut c_void) -> &'static mut DirIso {
    &mut (*(conf as *mut crate::config::DirConf)).iso
}

pub unsafe extern "C" fn set_mode(cmd: *mut sys::cmd_parms, conf: *mut c_void, w: *const c_char) -> *const c_char {
    let c = iso(conf);
    match CStr::from_ptr(w).to_string_lossy().to_ascii_lowercase().as_str() {
        "inprocess" => c.mode = 0,
        "process" => {
            c.mode = 1;
            WANTED.store(true, Ordering::Relaxed);
        }
        "adaptive" => {
            c.mode = 2;
            WANTED.store(true, Ordering::Relaxed);
            ADAPTIVE.store(true, Ordering::Relaxed);
        }
        _ => {
            let w = CStr::from_ptr(w).to_string_lossy();
            return err((*cmd).pool, &format!("LibCGIIsolation '{w}': takes 'inprocess', 'process' or 'adaptive'"));
        }
    }
    ptr::null()
}

/// `LibCGIIsolationBudget <percent>`: server config only.
pub unsafe extern "C" fn set_budget(cmd: *mut sys::cmd_parms, _conf: *mut c_void, w: *const c_char) -> *const c_char {
    let e = sys::ap_check_cmd_context(cmd, sys::GLOBAL_ONLY);
    if !e.is_null() {
        return e;
    }
    let v = CStr::from_ptr(w).to_string_lossy();
    match v.parse::<f64>() {
        Ok(x) if x > 0.0 && x <= 100.0 && x.is_finite() && (x * 1e4).round() >= 1.0 => {
            BUDGET_PPM.store((x * 1e4).round() as u32, Ordering::Relaxed);
            ptr::null()
        }
        _ => err(
            (*cmd).pool,
            &format!("LibCGIIsolationBudget '{v}': a percent of the server's CPU above 0 (at least 0.0001) up to 100"),
        ),
    }
}

/// `LibCGIIsolationWorkers <n> [<seconds>]`: the number of workers (slots)
/// and how long a request waits for one of them to be free (then 503).
pub unsafe extern "C" fn set_workers(
    cmd: *mut sys::cmd_parms,
    _conf: *mut c_void,
    n: *const c_char,
    wait: *const c_char,
) -> *const c_char {
    let e = sys::ap_check_cmd_context(cmd, sys::GLOBAL_ONLY);
    if !e.is_null() {
        return e;
    }
    let nv = CStr::from_ptr(n).to_string_lossy();
    match nv.parse::<usize>() {
        Ok(k) if (1..=MAX_WORKERS).contains(&k) => WORKERS.store(k, Ordering::Relaxed),
        _ => {
            return err(
                (*cmd).pool,
                &format!(
                "LibCGIIsolationWorkers '{nv}': the number of workers must be a whole number from 1 to {MAX_WORKERS}"
            ),
            )
        }
    }
    let ms = if wait.is_null() {
        DEFAULT_CLAIM_WAIT_MS
    } else {
        let wv = CStr::from_ptr(wait).to_string_lossy();
        match wv.parse::<u32>() {
            Ok(x) if (1..=3600).contains(&x) => x * 1000,
            _ => {
                return err(
                    (*cmd).pool,
                    &format!(
                        "LibCGIIsolationWorkers: the wait for a free worker '{wv}' must be a whole number of seconds from 1 to 3600"
                    ),
                )
            }
        }
    };
    CLAIM_WAIT_MS.store(ms, Ordering::Relaxed);
    ptr::null()
}

pub unsafe extern "C" fn set_user(
    cmd: *mut sys::cmd_parms,
    conf: *mut c_void,
    u: *const c_char,
    g: *const c_char,
) -> *const c_char {
    let c = iso(conf);
    let name = CStr::from_ptr(u).to_string_lossy().into_owned();
    let pw = libc::getpwnam(u);
    if pw.is_null() {
        return err((*cmd).pool, &format!("LibCGIIsolationUser: no such user '{name}'"));
    }
    if (*pw).pw_uid == 0 {
        return err((*cmd).pool, "LibCGIIsolationUser: workers never run as root");
    }
    let gid = if g.is_null() {
        (*pw).pw_gid
    } else {
        let gr = libc::getgrnam(g);
        if gr.is_null() {
            return err(
                (*cmd).pool,
                &format!("LibCGIIsolationUser: no such group '{}'", CStr::from_ptr(g).to_string_lossy()),
            );
        }
        (*gr).gr_gid
    };
    c.uid = (*pw).pw_uid as i64;
    c.gid = gid as i64;
    let mut l = IDENTS.lock().unwrap_or_else(|e| e.into_inner());
    if !l.contains(&((*pw).pw_uid, gid)) && l.len() < MAX_IDENTS - 1 {
        l.push(((*pw).pw_uid, gid));
    }
    ptr::null()
}

pub unsafe extern "C" fn set_limits(
    cmd: *mut sys::cmd_parms,
    conf: *mut c_void,
    a: *const c_char,
    b: *const c_char,
    n: *const c_char,
) -> *const c_char {
    let c = iso(conf);
    let mut v = [0i64; 3];
    for (i, w) in [a, b, n].into_iter().enumerate() {
        match CStr::from_ptr(w).to_str().ok().and_then(|s| s.parse::<u64>().ok()) {
            Some(x) if x <= i64::MAX as u64 / (1 << 20) => v[i] = x as i64,
            _ => {
                return err(
                    (*cmd).pool,
                    "LibCGIIsolationLimits takes <address space MiB> <CPU seconds> <open files> (0: no limit)",
                )
            }
        }
    }
    v[0] *= 1 << 20;
    c.limits = v;
    ptr::null()
}

/// The identity a directory's workers run as: its LibCGIIsolationUser, or
/// Apache's own User/Group.
fn ident_for(c: &DirIso) -> Ident {
    // SAFETY: ap_unixd_config is filled by mod_unixd while the configuration
    // is read, and not written after.
    let (du, dg) = unsafe { (sys::ap_unixd_config.user_id, sys::ap_unixd_config.group_id) };
    let lim = |i: usize| c.limits[i].max(0) as u64;
    Ident {
        uid: if c.uid >= 0 { c.uid as u32 } else { du },
        gid: if c.gid >= 0 { c.gid as u32 } else { dg },
        limit_as: lim(0),
        limit_cpu: lim(1),
        limit_nofile: lim(2),
    }
}

/// Where a request runs, decided once at its start.
pub enum Route {
    /// `inprocess` (or nothing said).
    InProcess,
    /// In a worker; the script's policy entry if it has one.
    Isolated(&'static DirIso, Option<(usize, &'static policy::Entry)>),
    /// `adaptive`, promoted now: in process, counted in its entry.
    Promoted(usize, &'static policy::Entry),
}

/// # Safety
/// `r` is a live request.
#[inline]
pub unsafe fn route(r: *const sys::request_rec) -> Route {
    let c = &*(sys::ap_get_module_config((*r).per_dir_config, ptr::addr_of!(crate::libcgi_module))
        as *const crate::config::DirConf);
    if c.iso.mode <= 0 {
        return Route::InProcess;
    }
    route_isolated(r, &c.iso)
}

#[inline(never)]
unsafe fn route_isolated(r: *const sys::request_rec, d: &'static DirIso) -> Route {
    let Some(seg) = SEGMENT.load(Ordering::Acquire).as_ref() else {
        return Route::Isolated(d, None);
    };
    let mode = if d.mode == 2 { policy::ADAPTIVE } else { policy::FIXED };
    let e = seg.header().policy.entry(CStr::from_ptr((*r).filename).to_bytes(), mode);
    match e {
        Some((i, e)) if mode == policy::ADAPTIVE && e.hot.domain.load(Ordering::Acquire) == policy::INPROCESS => {
            Route::Promoted(i, e)
        }
        e => Route::Isolated(d, e),
    }
}

/// Per server process: which entries' scripts this process has loaded in
/// process, so that the first isolated request after a demotion drops the
/// in-process copy (its terminatefunc runs when the last request using it
/// ends).
static LOADED_HERE: [AtomicBool; policy::ENTRIES] = [const { AtomicBool::new(false) }; policy::ENTRIES];

/// An in-process request of a promoted script: counted in its domain by
/// the request's metrics, in its own thread's row.
pub struct InProcess {
    e: &'static policy::Entry,
}

impl InProcess {
    pub fn start(i: usize, e: &'static policy::Entry, m: &mut crate::metrics::Req) -> InProcess {
        if !LOADED_HERE[i].load(Ordering::Relaxed) {
            LOADED_HERE[i].store(true, Ordering::Relaxed);
        }
        m.domain(&e.fallback.0, false);
        InProcess { e }
    }
    /// processfunc faulted or timed out here: isolated at once (the
    /// evaluator starts the cool-down at its next tick).
    #[cold]
    pub fn faulted(&self) {
        let _ = self.e.hot.domain.compare_exchange(
            policy::INPROCESS,
            policy::ISOLATED,
            Ordering::AcqRel,
            Ordering::Relaxed,
        );
        self.e.rare.faults.fetch_add(1, Ordering::Release);
    }
}

/// What the status page shows of a script's domain.
pub struct View {
    /// "inprocess", "process" or "adaptive".
    pub mode: &'static str,
    /// "inprocess" or "process".
    pub domain: &'static str,
    pub promote: u64,
    pub demote: u64,
    pub cooling: bool,
    /// Requests and seconds in process and isolated (None: not counted
    /// apart; the script's own counters say it all).
    pub split: Option<[(u64, f64); 2]>,
}

/// `rows`: the script's metrics row summed over threads.
pub fn view(path: &[u8], rows: &crate::metrics::DomainSums) -> View {
    let plain = View { mode: "inprocess", domain: "inprocess", promote: 0, demote: 0, cooling: false, split: None };
    // SAFETY: the segment lives as long as this configuration.
    let Some(seg) = (unsafe { SEGMENT.load(Ordering::Acquire).as_ref() }) else { return plain };
    let Some(e) = seg.header().policy.find(path) else { return plain };
    let adaptive = e.hot.mode.load(Ordering::Relaxed) == policy::ADAPTIVE;
    let r = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    View {
        mode: if adaptive { "adaptive" } else { "process" },
        domain: if e.hot.domain.load(Ordering::Relaxed) == policy::INPROCESS { "inprocess" } else { "process" },
        promote: r(&e.rare.promotions),
        demote: r(&e.rare.demotions),
        cooling: r(&e.rare.cool_until_ms) > policy::unix_ms(),
        split: {
            let [ir, ins, pr, pns, _, _] = e.counts(rows);
            Some([(ir, ins as f64 / 1e9), (pr, pns as f64 / 1e9)])
        },
    }
}

/// The policy as a whole, for the status page: (budget %, estimated
/// overhead %, evaluations, evaluator CPU seconds); None unless adaptive.
pub fn policy_view() -> Option<(f64, f64, u64, f64)> {
    // SAFETY: as in `view`.
    let seg = unsafe { SEGMENT.load(Ordering::Acquire).as_ref() }?;
    let t = &seg.header().policy;
    (t.adaptive != 0).then(|| {
        (
            t.budget_ppm as f64 / 1e4,
            t.overhead_ppm.load(Ordering::Relaxed) as f64 / 1e4,
            t.evals.load(Ordering::Relaxed),
            t.eval_cpu_ns.load(Ordering::Relaxed) as f64 / 1e9,
        )
    })
}

/// Runs an isolated request; the handler's return value.
///
/// # Safety
/// `r` is a live request, `input`/`input_len` its body as body::read gave it.
#[allow(clippy::too_many_arguments)]
pub unsafe fn handle(
    r: *mut sys::request_rec,
    d: &DirIso,
    entry: Option<(usize, &'static policy::Entry)>,
    ident: crate::registry::FileIdent,
    input: *mut c_char,
    input_len: usize,
    cfg: &crate::config::Settings,
    m: &mut crate::metrics::Req,
) -> c_int {
    let path = CStr::from_ptr((*r).filename);
    // Counted under the script's own row, as an in-process request is.
    let mslot = match entry.map(|(_, e)| e.hot.metrics_slot.load(Ordering::Relaxed)) {
        Some(n) if n > 0 => n - 1,
        _ => {
            let n = crate::metrics::slot_for(path);
            if let Some((_, e)) = entry {
                e.hot.metrics_slot.store(n + 1, Ordering::Relaxed);
            }
            n
        }
    };
    m.script(mslot);
    if let Some((i, _)) = entry {
        if LOADED_HERE[i].load(Ordering::Relaxed) && LOADED_HERE[i].swap(false, Ordering::Relaxed) {
            if let Some(reg) = crate::registry::REGISTRY.get() {
                reg.forget(path.to_bytes());
                log::rlog!(
                    r,
                    APLOG_DEBUG,
                    "{}: in-process copy dropped (the script is isolated now)",
                    path.to_string_lossy()
                );
            }
        }
    }
    let Some(seg) = SEGMENT.load(Ordering::Acquire).as_ref() else {
        log::rerror(r, sys::APLOG_ERR, 0, "mod_libcgi: the isolation manager is not running");
        return sys::HTTP_INTERNAL_SERVER_ERROR as c_int;
    };
    if let Err(e) = trusted(r, ident, cfg) {
        let name = CStr::from_ptr((*r).filename).to_string_lossy();
        log::rerror(r, sys::APLOG_ERR, 0, &format!("{name}: cannot load script: {e}"));
        // Counted as the refusal of a load in process is.
        m.isolated_refused(false);
        return sys::HTTP_FORBIDDEN as c_int;
    }
    // Quarantine as in process: a script that faults too often in its
    // workers gets 503 for a while (one call, so that it follows the
    // registry's quarantine wherever that lives).
    if let Some(secs) = quarantine_left(CStr::from_ptr((*r).filename), ident) {
        let v = std::ffi::CString::new(secs.to_string()).unwrap_or_default();
        sys::apr_table_setn((*r).err_headers_out, c"Retry-After".as_ptr(), sys::apr_pstrdup((*r).pool, v.as_ptr()));
        // A quarantined 503, as in process (quarantined_503).
        m.isolated_refused(true);
        return sys::HTTP_SERVICE_UNAVAILABLE as c_int;
    }
    // Counted in the domain only from here: a refusal above ran nowhere
    // (and a quarantined script's 503s must not look like traffic to move).
    if let Some((_, e)) = entry {
        m.domain(&e.fallback.0, true);
    }
    let mut cross = None;
    let rc = client::run(seg, r, ident, input, input_len, cfg, ident_for(d), m, mslot, &mut cross);
    if let Some(c) = cross {
        m.crossing(c);
    }
    rc
}

/// Seconds the script has left in quarantine (the registry's, as in process).
fn quarantine_left(path: &CStr, ident: crate::registry::FileIdent) -> Option<u64> {
    let left = crate::registry::REGISTRY.get()?.quarantined(path, ident)?;
    Some(left.as_secs_f64().ceil() as u64)
}

/// A fault or timeout of an isolated script counts towards its quarantine
/// as one in process does.
pub(super) unsafe fn count_fault(
    r: *mut sys::request_rec,
    ident: crate::registry::FileIdent,
    cfg: &crate::config::Settings,
) {
    let path = CStr::from_ptr((*r).filename);
    if let Some(reg) = crate::registry::REGISTRY.get() {
        if reg.record_fault(path, ident, cfg) {
            crate::metrics::quarantined(path);
            log::rerror(r, sys::APLOG_ERR, 0, &crate::registry::quarantine_message(path, cfg));
        }
    }
}

/// The same trust checks as a load in process, once per file version per
/// server process (the worker loads what passed them here).
unsafe fn trusted(
    r: *mut sys::request_rec,
    ident: crate::registry::FileIdent,
    cfg: &crate::config::Settings,
) -> Result<(), String> {
    use std::collections::HashMap;
    use std::os::fd::{FromRawFd, OwnedFd};
    static SEEN: Mutex<Option<HashMap<Vec<u8>, crate::registry::FileIdent>>> = Mutex::new(None);
    let path = CStr::from_ptr((*r).filename).to_bytes().to_vec();
    if SEEN.lock().unwrap_or_else(|e| e.into_inner()).as_ref().and_then(|m| m.get(&path)) == Some(&ident) {
        return Ok(());
    }
    let raw = libc::open((*r).filename, libc::O_RDONLY | libc::O_CLOEXEC);
    if raw < 0 {
        return Err(format!("cannot open: {}", std::io::Error::last_os_error()));
    }
    let fd = OwnedFd::from_raw_fd(raw);
    crate::trust::check(&fd, r, cfg)?;
    SEEN.lock().unwrap_or_else(|e| e.into_inner()).get_or_insert_with(HashMap::new).insert(path, ident);
    Ok(())
}

pub fn register_hooks() {
    // SAFETY: hook registration at register_hooks time.
    unsafe {
        sys::ap_hook_post_config(Some(post_config), ptr::null(), ptr::null(), sys::APR_HOOK_REALLY_FIRST as c_int);
    }
}

/// This generation's manager (in pconf): the parent starts it again when it
/// dies outside a stop, as mod_cgid does with its daemon.
struct Manager {
    proc_: sys::apr_proc_t,
    seg: &'static Segment,
    pconf: *mut sys::apr_pool_t,
    s: *mut sys::server_rec,
    /// Registered as an "other child" with APR (unregistering a record that
    /// is not registered would crash APR).
    registered: bool,
}

unsafe extern "C" fn post_config(
    pconf: *mut sys::apr_pool_t,
    _plog: *mut sys::apr_pool_t,
    _ptemp: *mut sys::apr_pool_t,
    s: *mut sys::server_rec,
) -> c_int {
    // The first pass only checks the configuration.
    if sys::ap_state_query(sys::AP_SQ_MAIN_STATE as c_int) == sys::AP_SQ_MS_CREATE_PRE_CONFIG as c_int {
        return sys::OK as c_int;
    }
    SEGMENT.store(ptr::null_mut(), Ordering::Release);
    // Read once per generation: a directive removed at a restart goes back
    // to its default.
    let workers = match WORKERS.swap(0, Ordering::Relaxed) {
        0 => DEFAULT_WORKERS,
        n => n,
    };
    let claim_wait = CLAIM_WAIT_MS.swap(DEFAULT_CLAIM_WAIT_MS, Ordering::Relaxed);
    if !WANTED.swap(false, Ordering::Relaxed) {
        return sys::OK as c_int;
    }
    let size = Segment::alloc_size(workers);
    let mut shm: *mut sys::apr_shm_t = ptr::null_mut();
    if sys::apr_shm_create(&mut shm, size, ptr::null(), pconf) != 0 {
        log::serror(s, sys::APLOG_CRIT, "mod_libcgi: cannot create the isolation segment");
        return sys::HTTP_INTERNAL_SERVER_ERROR as c_int;
    }
    let base = sys::apr_shm_baseaddr_get(shm) as *mut u8;
    ptr::write_bytes(base, 0, size);
    let seg: &'static Segment = Box::leak(Box::new(Segment::new(base, size)));
    let h = &mut *seg.header_mut();
    h.nslots = workers as u32;
    h.claim_wait_ms = claim_wait;
    let def = ident_for(&DirIso::UNSET);
    let mut ids = vec![(def.uid, def.gid)];
    for &i in IDENTS.lock().unwrap_or_else(|e| e.into_inner()).iter() {
        if !ids.contains(&i) {
            ids.push(i);
        }
    }
    for (k, (u, g)) in ids.iter().take(MAX_IDENTS).enumerate() {
        h.idents[k] = Ident { uid: *u, gid: *g, ..Ident::default() };
    }
    h.nidents = ids.len().min(MAX_IDENTS) as u32;
    h.policy.adaptive = u32::from(ADAPTIVE.swap(false, Ordering::Relaxed));
    h.policy.budget_ppm = BUDGET_PPM.swap(100_000, Ordering::Relaxed);
    h.policy.ncpu = std::thread::available_parallelism().map_or(1, |n| n.get()) as u32;
    h.policy.loglevel = sys::ap_get_server_module_loglevel(s, log::module_index());
    for i in 0..workers {
        (*seg.ctl(i)).want = def;
    }
    let m = sys::apr_palloc(pconf, std::mem::size_of::<Manager>()) as *mut Manager;
    m.write(Manager { proc_: std::mem::zeroed(), seg, pconf, s, registered: false });
    // The manager's stop runs after APR's own cleanup of the registration
    // (registered later, run earlier): at that point no death is reported.
    sys::apr_pool_cleanup_register(pconf, m as *const c_void, Some(stop_manager), Some(sys::apr_pool_cleanup_null));
    if !start_manager(m) {
        log::serror(s, sys::APLOG_CRIT, "mod_libcgi: cannot fork the isolation manager");
        return sys::HTTP_INTERNAL_SERVER_ERROR as c_int;
    }
    SEGMENT.store(seg as *const Segment as *mut Segment, Ordering::Release);
    sys::OK as c_int
}

/// Forks the manager and has APR tell us when it dies.  Not
/// `ap_register_extra_mpm_process`: the MPM would reap the manager as its
/// own extra process and never report the death to us.
unsafe fn start_manager(m: *mut Manager) -> bool {
    let pid = supervisor::start((*m).seg);
    if pid < 0 {
        return false;
    }
    (*m).proc_.pid = pid;
    sys::apr_proc_other_child_register(
        &mut (*m).proc_,
        Some(manager_event),
        m as *mut c_void,
        ptr::null_mut(),
        (*m).pconf,
    );
    (*m).registered = true;
    true
}

/// APR's report about the manager, in the Apache parent (its main loop).
unsafe extern "C" fn manager_event(reason: c_int, data: *mut c_void, status: c_int) {
    let m = data as *mut Manager;
    match reason as u32 {
        sys::APR_OC_REASON_UNREGISTER => (*m).registered = false,
        // DEATH with status -1: asked while the MPM reclaims its children,
        // the manager still runs (the pconf cleanup stops it).
        sys::APR_OC_REASON_DEATH if status == -1 => {}
        sys::APR_OC_REASON_DEATH | sys::APR_OC_REASON_LOST => {
            let old = (*m).proc_.pid;
            // Never signalled again: the number may belong to another
            // process by now.
            (*m).proc_.pid = 0;
            if (*m).registered {
                sys::apr_proc_other_child_unregister(data);
            }
            let mut state: c_int = 0;
            if sys::ap_mpm_query(sys::AP_MPMQ_MPM_STATE as c_int, &mut state) != 0
                || state == sys::AP_MPMQ_STOPPING as c_int
            {
                return;
            }
            // Its workers died with it (PDEATHSIG): requests in flight fail,
            // the new manager fills every slot again.
            supervisor::orphaned((*m).seg);
            if start_manager(m) {
                log::serror(
                    (*m).s,
                    sys::APLOG_ERR,
                    &format!(
                        "mod_libcgi: the isolation manager (pid {old}) died (status {status}); isolated requests in \
                         flight failed; started again as pid {}",
                        (*m).proc_.pid
                    ),
                );
            } else {
                log::serror(
                    (*m).s,
                    sys::APLOG_CRIT,
                    &format!("mod_libcgi: the isolation manager (pid {old}) died and cannot be forked again"),
                );
            }
        }
        _ => {}
    }
}

/// At stop and graceful restart (pconf is cleared): the manager takes its
/// workers down and exits; it is reaped here so none is left behind.
unsafe extern "C" fn stop_manager(data: *mut c_void) -> sys::apr_status_t {
    let m = data as *mut Manager;
    if (*m).registered {
        sys::apr_proc_other_child_unregister(data);
    }
    let pid = (*m).proc_.pid;
    if pid <= 0 {
        return 0;
    }
    libc::kill(pid, libc::SIGTERM);
    for i in 0..300 {
        let mut st = 0;
        let p = libc::waitpid(pid, &mut st, libc::WNOHANG);
        if p == pid || (p < 0 && *libc::__errno_location() == libc::ECHILD) {
            break;
        }
        if i == 200 {
            libc::kill(pid, libc::SIGKILL);
        }
        libc::usleep(10_000);
    }
    0
}
