//! The per-process list of loaded scripts.
//!
//! Keyed by the script's path (O(1) lookup however many scripts a site has),
//! each entry remembers the identity of the file it loaded (device, inode,
//! size, mtime, ctime).  A request whose file no longer matches loads the new
//! file; the old version stays alive while requests in flight still hold it
//! (`Arc`), and its terminatefunc runs and the library is closed when the last
//! one lets go.

use crate::config::Settings;
use crate::elfpatch;
use crate::guard::{self, Outcome};
use crate::log;
use crate::request::Active;
use crate::sys;
use crate::trust;
use libloading::os::unix::{Library, Symbol, RTLD_LOCAL, RTLD_NOW};
use std::collections::HashMap;
use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicPtr, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::{Duration, Instant};

pub type ProcessFn = unsafe extern "C" fn(*mut c_char) -> c_int;
type InitFn = unsafe extern "C" fn() -> c_int;
type TermFn = unsafe extern "C" fn();

/// What identifies the file a script was loaded from.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct FileIdent {
    pub dev: u64,
    pub ino: u64,
    pub size: i64,
    pub mtime: i64,
    /// A chmod or chown changes only this: the script is then reloaded, and
    /// the trust checks run again.
    pub ctime: i64,
}

/// The imports of a script that are bound to ours: the environment goes to
/// the per-request table, and exit() & co. end the request, not the server.
/// All point at the C wrappers in shim.c, which defer a timeout until they
/// return.
fn bindings() -> [(&'static CStr, usize); 10] {
    [
        (c"getenv", guard::libcgi_c_getenv as *const () as usize),
        (c"secure_getenv", guard::libcgi_c_secure_getenv as *const () as usize),
        (c"setenv", guard::libcgi_c_setenv as *const () as usize),
        (c"unsetenv", guard::libcgi_c_unsetenv as *const () as usize),
        (c"putenv", guard::libcgi_c_putenv as *const () as usize),
        (c"clearenv", guard::libcgi_c_clearenv as *const () as usize),
        (c"exit", guard::libcgi_c_exit as *const () as usize),
        (c"_exit", guard::libcgi_c__exit as *const () as usize),
        (c"_Exit", guard::libcgi_c__Exit as *const () as usize),
        (c"quick_exit", guard::libcgi_c_quick_exit as *const () as usize),
    ]
}

/// Why a script could not be run, and what the client gets.
pub struct LoadError {
    pub status: c_int,
    pub msg: String,
    /// The load itself faulted (initfunc crashed or timed out).
    pub fault: bool,
    /// Set for a quarantined script (503 with Retry-After).
    pub retry_after: Option<u64>,
}

impl LoadError {
    fn failed(msg: String) -> LoadError {
        LoadError { status: sys::HTTP_INTERNAL_SERVER_ERROR as c_int, msg, fault: false, retry_after: None }
    }
    fn forbidden(msg: String) -> LoadError {
        LoadError { status: sys::HTTP_FORBIDDEN as c_int, msg, fault: false, retry_after: None }
    }
}

pub struct Script {
    pub path: CString,
    pub process: ProcessFn,
    terminate: Option<TermFn>,
    /// Deadline for terminatefunc: the LibCGITimeout in force at load.
    timeout: Option<Duration>,
    /// Held around processfunc unless the script declared itself
    /// thread-safe (`libcgi_thread_safe = 1`).
    pub serial: Option<Mutex<()>>,
    lib: Option<Library>,
    /// The descriptor the library was opened through (/proc/self/fd/N).
    /// Kept open while the library is loaded so no other script can be
    /// opened under the same name: glibc returns an already-loaded object
    /// for a name it has seen, even if the file behind it changed.
    fd: Option<OwnedFd>,
    /// Its row in the metrics (see metrics::slot_for), once loaded.
    pub metrics_slot: Option<u32>,
}

// SAFETY: a Script is immutable after loading except through its own Mutex;
// the raw function pointers are plain code addresses, valid while `lib` is
// open, which lasts until Drop.
unsafe impl Send for Script {}
unsafe impl Sync for Script {}

impl Script {
    /// Loads the library, binds its imports and runs initfunc.  Runs inside
    /// the request that needs the script, so initfunc sees that request's
    /// environment.
    fn load(path: &CStr, r: *mut sys::request_rec, cfg: &Settings) -> Result<Script, LoadError> {
        // SAFETY (whole function): plain libc calls on our own descriptor;
        // the library's code runs only under the guard.
        unsafe {
            let raw = libc::open(path.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC);
            if raw < 0 {
                return Err(LoadError::failed(format!("cannot open: {}", std::io::Error::last_os_error())));
            }
            let fd = OwnedFd::from_raw_fd(raw);
            let name = format!("/proc/self/fd/{}", fd.as_raw_fd());
            // The checks look at what was opened, not at what the path named
            // a moment ago: they and dlopen see the same file.
            trust::check(&fd, r, cfg).map_err(LoadError::forbidden)?;
            crate::elfcheck::whole(fd.as_fd())
                .map_err(|e| LoadError::failed(format!("not a loadable shared object: {e}")))?;
            // RTLD_LOCAL: a script's symbols never become visible to other
            // scripts.  RTLD_DEEPBIND: the script's own definitions win over
            // the server's (its own `random`, say), as in a CGI process.
            // The script's constructors run inside dlopen, unguarded: a fault
            // there is a fault of the server process (and of the loader lock,
            // which a jump out of dlopen would leave held).
            let lib = Library::open(Some(&name), RTLD_NOW | RTLD_LOCAL | libc::RTLD_DEEPBIND).map_err(|e| {
                LoadError::failed(format!(
                    "not a loadable shared object: {}",
                    e.to_string().replace(&format!("{name}: "), "")
                ))
            })?;
            let process: Symbol<ProcessFn> = lib
                .get(b"processfunc\0")
                .map_err(|_| LoadError::failed("the script does not export processfunc".to_string()))?;
            let process = *process;
            let init: Option<InitFn> = lib.get::<InitFn>(b"initfunc\0").ok().map(|s| *s);
            let terminate: Option<TermFn> = lib.get::<TermFn>(b"terminatefunc\0").ok().map(|s| *s);
            let thread_safe =
                lib.get::<*const c_int>(b"libcgi_thread_safe\0").ok().is_some_and(|s| !(*s).is_null() && **s != 0);
            let n = elfpatch::patch_imports(process as usize, &bindings())
                .map_err(|e| LoadError::failed(format!("cannot bind the script's imports: {e}")))?;
            log::rlog!(
                r,
                APLOG_DEBUG,
                "{}: loaded ({n} imports bound, thread_safe={thread_safe})",
                path.to_string_lossy()
            );
            let mut script = Script {
                path: path.to_owned(),
                process,
                terminate: None,
                timeout: cfg.timeout,
                serial: (!thread_safe).then(|| Mutex::new(())),
                lib: Some(lib),
                fd: Some(fd),
                metrics_slot: None,
            };
            if let Some(init) = init {
                let out = guard::call(init as *const c_void, guard::CALL_INT_VOID, std::ptr::null_mut(), cfg.timeout);
                // A script whose initfunc failed was never initialised: it is
                // closed (when `script` drops) without terminatefunc.
                match out.kind {
                    guard::RETURNED if out.rc == 0 => {}
                    guard::RETURNED => return Err(LoadError::failed(format!("initfunc returned {}", out.rc))),
                    _ => {
                        let mut e = LoadError::failed(format!("initfunc {}", out.describe(cfg.timeout)));
                        e.fault = out.is_fault();
                        return Err(e);
                    }
                }
                log::rlog!(r, APLOG_DEBUG, "{}: initfunc done", path.to_string_lossy());
            }
            script.terminate = terminate;
            let slot = crate::metrics::slot_for(path);
            crate::metrics::loaded(slot, path);
            script.metrics_slot = Some(slot);
            Ok(script)
        }
    }
}

impl Drop for Script {
    fn drop(&mut self) {
        // terminatefunc belongs to no request: hide the current one (if any)
        // from the script's getenv and lwrite.
        let _none = Active::none();
        if let Some(slot) = self.metrics_slot {
            crate::metrics::unloaded(slot, &self.path);
        }
        let server = REGISTRY.get().map_or(std::ptr::null(), |r| r.server.load(Ordering::Relaxed));
        if let Some(term) = self.terminate {
            // SAFETY: the library is still open; terminatefunc takes nothing.
            let out: Outcome = unsafe {
                guard::call(
                    term as *const c_void,
                    guard::CALL_VOID_VOID,
                    std::ptr::null_mut(),
                    exit_bounded(self.timeout),
                )
            };
            if out.kind != guard::RETURNED {
                let what =
                    format!("{}: terminatefunc {}; skipped", self.path.to_string_lossy(), out.describe(self.timeout));
                log::serror(server, sys::APLOG_ERR, &what);
            }
        }
        if let Some(lib) = self.lib.take() {
            if let Err(e) = lib.close() {
                let what = format!("{}: dlclose failed: {e}", self.path.to_string_lossy());
                log::serror(server, sys::APLOG_WARNING, &what);
            }
        }
        if let Some(fd) = self.fd.take() {
            let name = CString::new(format!("/proc/self/fd/{}", fd.as_raw_fd())).unwrap_or_default();
            // SAFETY: RTLD_NOLOAD only queries; a handle it returns is closed
            // again at once.
            let still = unsafe { libc::dlopen(name.as_ptr(), libc::RTLD_NOW | libc::RTLD_NOLOAD) };
            if still.is_null() {
                drop(fd);
            } else {
                // Something keeps the object mapped (a thread-local
                // destructor, RTLD_NODELETE): keep its name reserved too.
                unsafe { libc::dlclose(still) };
                std::mem::forget(fd);
            }
        }
        log::serror(server, sys::APLOG_DEBUG, &format!("{}: unloaded", self.path.to_string_lossy()));
    }
}

struct Slot {
    ident: FileIdent,
    script: OnceLock<Arc<Script>>,
    /// Serialises the load, so initfunc runs once even when many requests
    /// for a new script arrive together.
    loading: Mutex<()>,
}

/// Recent faults of one script path in this process.
struct Faults {
    ident: FileIdent,
    times: Vec<Instant>,
    quarantined_until: Option<Instant>,
}

/// FxHash: a word at a time, where SipHash works a byte at a time.  The keys
/// are paths of existing script files that Apache mapped a request to, so
/// hash flooding is not a concern here.
#[derive(Default, Clone, Copy)]
pub struct FxHasher(u64);

impl std::hash::Hasher for FxHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            self.add(u64::from_le_bytes(c.try_into().unwrap_or_default()));
        }
        for &b in chunks.remainder() {
            self.add(b as u64);
        }
    }
    fn finish(&self) -> u64 {
        self.0
    }
}

impl FxHasher {
    fn add(&mut self, w: u64) {
        self.0 = (self.0.rotate_left(5) ^ w).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
}

type FxMap<K, V> = HashMap<K, V, std::hash::BuildHasherDefault<FxHasher>>;

pub struct Registry {
    map: RwLock<FxMap<Box<[u8]>, Arc<Slot>>>,
    faults: Mutex<HashMap<Box<[u8]>, Faults>>,
    /// The main server, for messages outside requests.
    pub server: AtomicPtr<sys::server_rec>,
}

/// One per server child process, created in child_init.  The parent never
/// touches it, so nothing of it lives across configuration passes (the
/// parent dlcloses the module between them).
pub static REGISTRY: OnceLock<Registry> = OnceLock::new();

fn relock<T>(r: std::sync::LockResult<T>) -> T {
    // Panics abort (panic = "abort"), so a poisoned lock cannot be observed;
    // this only satisfies the type.
    r.unwrap_or_else(|e| e.into_inner())
}

impl Registry {
    pub fn new() -> Registry {
        Registry {
            map: RwLock::new(FxMap::default()),
            faults: Mutex::new(HashMap::new()),
            server: AtomicPtr::new(std::ptr::null_mut()),
        }
    }

    /// The loaded script for `path` whose file is `ident`, loading it first
    /// if needed.  A failed load is not remembered.
    pub fn get(
        &self,
        path: &CStr,
        ident: FileIdent,
        r: *mut sys::request_rec,
        cfg: &Settings,
    ) -> Result<Arc<Script>, LoadError> {
        let key = path.to_bytes();
        // The fast path, kept small so that it stays in few cache lines: a
        // loaded script, one reference count taken.
        if let Some(s) = relock(self.map.read()).get(key).filter(|s| s.ident == ident).and_then(|s| s.script.get()) {
            return Ok(s.clone());
        }
        self.get_slow(path, ident, r, cfg)
    }

    /// Everything but a hit: loading, reloading a changed file, quarantine.
    #[cold]
    #[inline(never)]
    fn get_slow(
        &self,
        path: &CStr,
        ident: FileIdent,
        r: *mut sys::request_rec,
        cfg: &Settings,
    ) -> Result<Arc<Script>, LoadError> {
        let key = path.to_bytes();
        let found = relock(self.map.read()).get(key).filter(|s| s.ident == ident).cloned();
        let slot = match found {
            Some(slot) => slot,
            None => {
                // Only a script that is not loaded can be in quarantine (a
                // fault unloads it), so this check stays off the fast path.
                if let Some(left) = self.quarantined(key, ident) {
                    return Err(LoadError {
                        status: sys::HTTP_SERVICE_UNAVAILABLE as c_int,
                        msg: "quarantined".into(),
                        fault: false,
                        retry_after: Some(left.as_secs_f64().ceil() as u64),
                    });
                }
                let mut map = relock(self.map.write());
                match map.get(key) {
                    Some(s) if s.ident == ident => s.clone(),
                    _ => {
                        let slot = Arc::new(Slot { ident, script: OnceLock::new(), loading: Mutex::new(()) });
                        let old = map.insert(key.into(), slot.clone());
                        drop(map);
                        // The replaced version is released here, outside the
                        // lock: its terminatefunc runs now unless a request
                        // in flight still holds it.
                        if old.is_some() {
                            crate::metrics::reloaded(path);
                            log::rlog!(r, APLOG_DEBUG, "{}: file changed, loading it again", path.to_string_lossy());
                        }
                        drop(old);
                        slot
                    }
                }
            }
        };
        if let Some(s) = slot.script.get() {
            return Ok(s.clone());
        }
        let _loading = relock(slot.loading.lock());
        if let Some(s) = slot.script.get() {
            return Ok(s.clone());
        }
        match Script::load(path, r, cfg) {
            Ok(script) => Ok(slot.script.get_or_init(|| Arc::new(script)).clone()),
            Err(e) => {
                self.remove_slot(key, &slot);
                if e.fault && self.record_fault(key, ident, cfg) {
                    crate::metrics::quarantined(path);
                    log::rerror(r, sys::APLOG_ERR, 0, &quarantine_message(path, cfg));
                }
                Err(e)
            }
        }
    }

    fn remove_slot(&self, key: &[u8], slot: &Arc<Slot>) {
        let mut map = relock(self.map.write());
        let removed = if map.get(key).is_some_and(|s| Arc::ptr_eq(s, slot)) { map.remove(key) } else { None };
        drop(map);
        drop(removed);
    }

    /// Takes a failed script out of the list: the next request loads the
    /// file afresh.  Requests still running it keep their reference.
    pub fn unload(&self, script: &Arc<Script>) {
        let key = script.path.to_bytes();
        let mut map = relock(self.map.write());
        let removed = if map.get(key).and_then(|s| s.script.get()).is_some_and(|s| Arc::ptr_eq(s, script)) {
            map.remove(key)
        } else {
            None
        };
        drop(map);
        drop(removed);
    }

    /// Time left in quarantine for this path, if any.  A new file (another
    /// identity) ends the quarantine: it counts as a fix until it faults.
    fn quarantined(&self, key: &[u8], ident: FileIdent) -> Option<Duration> {
        let mut faults = relock(self.faults.lock());
        let until = faults.get(key)?.quarantined_until;
        let now = Instant::now();
        match until {
            Some(u) if now < u && faults.get(key).is_some_and(|f| f.ident == ident) => Some(u - now),
            Some(_) => {
                faults.remove(key);
                None
            }
            None => None,
        }
    }

    /// Counts a fault (or timeout) of a script.  Returns true when this one
    /// puts the script into quarantine (the caller logs that, once).
    pub fn record_fault(&self, key: &[u8], ident: FileIdent, cfg: &Settings) -> bool {
        if cfg.max_faults == 0 {
            return false;
        }
        let now = Instant::now();
        let mut faults = relock(self.faults.lock());
        let f =
            faults.entry(key.into()).or_insert_with(|| Faults { ident, times: Vec::new(), quarantined_until: None });
        if f.ident != ident {
            *f = Faults { ident, times: Vec::new(), quarantined_until: None };
        }
        if f.quarantined_until.is_some() {
            return false;
        }
        f.times.retain(|t| now.duration_since(*t) < cfg.fault_window);
        f.times.push(now);
        if f.times.len() as u32 >= cfg.max_faults {
            f.quarantined_until = Some(now + cfg.fault_window);
            f.times.clear();
            return true;
        }
        false
    }

    /// At process exit: every loaded script gets its terminatefunc.
    pub fn shutdown(&self) {
        let _ = EXIT_DEADLINE.set(Instant::now() + EXIT_BUDGET);
        let all: Vec<_> = relock(self.map.write()).drain().collect();
        drop(all);
    }
}

/// At process exit all terminatefuncs together get this long, whatever
/// LibCGITimeout says (0 included): prefork stops its children from a
/// signal handler and the parent warns after 3 s and sends SIGKILL after 9 s,
/// so a terminatefunc that never returns must not hold the stop until then.
const EXIT_BUDGET: Duration = Duration::from_secs(2);
static EXIT_DEADLINE: OnceLock<Instant> = OnceLock::new();

/// A terminatefunc's deadline: its own, or what is left of the exit budget.
fn exit_bounded(own: Option<Duration>) -> Option<Duration> {
    let Some(end) = EXIT_DEADLINE.get() else { return own };
    let left = end.saturating_duration_since(Instant::now()).max(Duration::from_millis(10));
    Some(own.map_or(left, |t| t.min(left)))
}

pub fn quarantine_message(path: &CStr, cfg: &Settings) -> String {
    format!(
        "{}: quarantined for {} s after {} faults within {} s (LibCGIMaxFaults); requests get 503 meanwhile",
        path.to_string_lossy(),
        cfg.fault_window.as_secs(),
        cfg.max_faults,
        cfg.fault_window.as_secs()
    )
}
