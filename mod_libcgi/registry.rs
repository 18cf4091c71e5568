//! The per-process list of loaded scripts.
//!
//! Two maps.  `paths`, keyed by the request's path (O(1) lookup however many
//! scripts a site has), is the fast path: each entry remembers the identity
//! of the file it was opened as (device, inode, size, mtime, ctime) and the
//! script loaded from it.  `objects`, keyed by device and inode, is the truth
//! about what is mapped: glibc's dlopen returns the object it already has for
//! a file with the same device and inode whatever the name, so one file must
//! be one `Script`, whichever paths lead to it and however often its ctime
//! changes.  A request whose file no longer matches its path entry opens the
//! path, and from then on only what it actually opened counts (fstat of the
//! descriptor): the trust checks run again, an object already loaded for that
//! inode is shared (no second initfunc), a new inode is loaded, and the path
//! entry is replaced only if the path still names that inode, so a request
//! that stat()ed an old version never puts it back over a newer one.  An old
//! version stays alive while requests in flight still hold it (`Arc`); its
//! terminatefunc runs and the library is closed when the last one lets go,
//! and only then may the same inode be loaded again.

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
use std::sync::{Arc, Condvar, Mutex, OnceLock, RwLock, Weak};
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

impl FileIdent {
    /// The same fields, in the same units, as APR's apr_stat fills finfo
    /// with (microseconds), so that it compares equal to `r->finfo`.
    pub fn of_stat(st: &libc::stat) -> FileIdent {
        FileIdent {
            dev: st.st_dev,
            ino: st.st_ino,
            size: st.st_size,
            mtime: st.st_mtime * 1_000_000 + st.st_mtime_nsec / 1000,
            ctime: st.st_ctime * 1_000_000 + st.st_ctime_nsec / 1000,
        }
    }

    /// The identity a server-wide quarantine is kept for (never 0): the
    /// file's content identity, as the README promises (another inode or
    /// mtime ends a quarantine; a chmod does not).
    pub fn shared_hash(&self) -> u64 {
        let mut h = 0xcbf2_9ce4_8422_2325u64;
        for w in [self.dev, self.ino, self.size as u64, self.mtime as u64] {
            h = (h ^ w).wrapping_mul(0x100_0000_01b3).rotate_left(29);
        }
        h | 1
    }

    fn object(&self) -> ObjKey {
        (self.dev, self.ino)
    }
}

/// A mapped object: device and inode of the file it was loaded from.
type ObjKey = (u64, u64);

/// The imports of a script that are bound to ours: the environment goes to
/// the per-request table, exit() & co. end the request, not the server, and
/// the signal functions cannot take the guard's signals.  All point at the C
/// wrappers in shim.c, which defer a timeout until they return; vfork is
/// fork (a vfork child shares the server's memory and stack).
fn bindings() -> [(&'static CStr, usize); 29] {
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
        (c"vfork", libc::fork as *const () as usize),
        (c"__vfork", libc::fork as *const () as usize),
        (c"pthread_exit", guard::libcgi_c_pthread_exit as *const () as usize),
        (c"abort", guard::libcgi_c_abort as *const () as usize),
        (c"__assert_fail", guard::libcgi_c___assert_fail as *const () as usize),
        (c"sigprocmask", guard::libcgi_c_sigprocmask as *const () as usize),
        (c"pthread_sigmask", guard::libcgi_c_pthread_sigmask as *const () as usize),
        (c"sigsuspend", guard::libcgi_c_sigsuspend as *const () as usize),
        (c"__sigsuspend", guard::libcgi_c_sigsuspend as *const () as usize),
        (c"sigaction", guard::libcgi_c_sigaction as *const () as usize),
        (c"__sigaction", guard::libcgi_c_sigaction as *const () as usize),
        (c"signal", guard::libcgi_c_signal as *const () as usize),
        (c"bsd_signal", guard::libcgi_c_signal as *const () as usize),
        (c"sysv_signal", guard::libcgi_c_sysv_signal as *const () as usize),
        (c"__sysv_signal", guard::libcgi_c_sysv_signal as *const () as usize),
        (c"sigset", guard::libcgi_c_sigset as *const () as usize),
        (c"sighold", guard::libcgi_c_sighold as *const () as usize),
        (c"sigignore", guard::libcgi_c_sigignore as *const () as usize),
        (c"sigaltstack", guard::libcgi_c_sigaltstack as *const () as usize),
    ]
}

/// Deadline for a script's destructors when LibCGITimeout is 0 (no limit):
/// the loader lock is held meanwhile, so they are never left unbounded.
const DESTRUCTOR_LIMIT: Duration = Duration::from_secs(30);

/// Why a script could not be run, and what the client gets.
pub struct LoadError {
    pub status: c_int,
    pub msg: String,
    /// The load itself faulted (initfunc crashed or timed out).
    pub fault: bool,
    /// Set for a quarantined script (503 with Retry-After).
    pub retry_after: Option<u64>,
    /// The script's initfunc failed (returned non-zero, faulted or timed out).
    pub init_failed: bool,
}

impl LoadError {
    fn failed(msg: String) -> LoadError {
        LoadError {
            status: sys::HTTP_INTERNAL_SERVER_ERROR as c_int,
            msg,
            fault: false,
            retry_after: None,
            init_failed: false,
        }
    }
    fn forbidden(msg: String) -> LoadError {
        LoadError { status: sys::HTTP_FORBIDDEN as c_int, msg, fault: false, retry_after: None, init_failed: false }
    }
}

fn last_os_error() -> std::io::Error {
    std::io::Error::last_os_error()
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
    /// Where the script's code is, for the guard (boxed: the guard keeps its
    /// address during calls, and the Script moves after load).
    pub code: Box<guard::Code>,
    /// The descriptor the library was opened through (/proc/self/fd/N).
    /// Kept open while the library is loaded so no other script can be
    /// opened under the same name: glibc returns an already-loaded object
    /// for a name it has seen, even if the file behind it changed.
    fd: Option<OwnedFd>,
    /// Its row in the metrics (see metrics::slot_for), once loaded: the row
    /// of the path it was loaded through, whichever path a request used.
    pub metrics_slot: Option<u32>,
    /// The word of that row that says whether the script may be in
    /// quarantine (metrics::quarantine::word), found once at load: every
    /// request of the loaded script reads it.
    quarantine_word: Option<&'static std::sync::atomic::AtomicU64>,
    /// The object's entry in the registry.  Declared last: it drops after
    /// `impl Drop` has run terminatefunc and closed the library, which is
    /// when the same inode may be loaded again.
    object: Option<ObjectRef>,
}

// SAFETY: a Script is immutable after loading except through its own Mutex;
// the raw function pointers are plain code addresses, valid while `lib` is
// open, which lasts until Drop.
unsafe impl Send for Script {}
unsafe impl Sync for Script {}

impl Script {
    /// Loads the library from `fd` (already opened from `path` and checked),
    /// binds its imports and runs initfunc.  Runs inside the request that
    /// needs the script, so initfunc sees that request's environment.
    fn load(path: &CStr, fd: OwnedFd, r: *mut sys::request_rec, cfg: &Settings) -> Result<Script, LoadError> {
        // SAFETY (whole function): dlopen of our own descriptor; the
        // library's code runs only under the guard.
        unsafe {
            let name = format!("/proc/self/fd/{}", fd.as_raw_fd());
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
            let owned = path.to_owned();
            let code = Box::new(guard::Code::of(process as usize, &owned));
            let mut script = Script {
                path: owned,
                code,
                process,
                terminate: None,
                timeout: cfg.timeout,
                serial: (!thread_safe).then(|| Mutex::new(())),
                lib: Some(lib),
                fd: Some(fd),
                metrics_slot: None,
                quarantine_word: None,
                object: None,
            };
            if let Some(init) = init {
                let out = guard::call(
                    init as *const c_void,
                    guard::CALL_INT_VOID,
                    std::ptr::null_mut(),
                    cfg.timeout,
                    &script.code,
                );
                // A script whose initfunc failed was never initialised: it is
                // closed (when `script` drops) without terminatefunc.
                match out.kind {
                    guard::RETURNED if out.rc == 0 => {}
                    guard::RETURNED => {
                        let mut e = LoadError::failed(format!("initfunc returned {}", out.rc));
                        e.init_failed = true;
                        return Err(e);
                    }
                    guard::NO_WATCHDOG => {
                        let mut e = LoadError::failed(format!("initfunc {}", out.describe(cfg.timeout)));
                        e.status = sys::HTTP_SERVICE_UNAVAILABLE as c_int;
                        return Err(e);
                    }
                    _ => {
                        let mut e = LoadError::failed(format!("initfunc {}", out.describe(cfg.timeout)));
                        e.fault = out.is_fault();
                        e.init_failed = true;
                        return Err(e);
                    }
                }
                log::rlog!(r, APLOG_DEBUG, "{}: initfunc done", script.path.to_string_lossy());
            }
            script.terminate = terminate;
            let slot = crate::metrics::slot_for(path);
            crate::metrics::loaded(slot, path);
            script.metrics_slot = Some(slot);
            script.quarantine_word = crate::metrics::quarantine::word(slot);
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
                    &self.code,
                )
            };
            if out.kind != guard::RETURNED {
                let what =
                    format!("{}: terminatefunc {}; skipped", self.path.to_string_lossy(), out.describe(self.timeout));
                log::serror(server, sys::APLOG_ERR, &what);
            }
        }
        if let Some(lib) = self.lib.take() {
            // dlclose runs the script's destructors and atexit handlers, and
            // it is closed even after a fault: glibc would hand a reload the
            // same mapped object (same device and inode), with the crashed
            // run's static state.  Under the guard, with the loader lock
            // held: a fault or a hang there cannot be jumped out of safely,
            // so it costs the process (recycled), never a dead or hung one.
            let handle = lib.into_raw();
            let limit = exit_bounded(Some(self.timeout.filter(|t| !t.is_zero()).unwrap_or(DESTRUCTOR_LIMIT)));
            // SAFETY: `handle` is the script's open handle, closed once here;
            // dlclose has the CALL_LOADER signature.
            let out = unsafe {
                guard::call(
                    libc::dlclose as *const c_void,
                    guard::CALL_LOADER,
                    handle as *mut c_char,
                    limit,
                    &self.code,
                )
            };
            if out.kind != guard::RETURNED {
                let what = format!("{}: destructors (dlclose) {}", self.path.to_string_lossy(), out.describe(limit));
                log::serror(server, sys::APLOG_ERR, &what);
            } else if out.rc != 0 {
                // SAFETY: dlerror returns a thread-local string or null.
                let e = unsafe { libc::dlerror() };
                let e = if e.is_null() { "unknown".into() } else { unsafe { CStr::from_ptr(e) }.to_string_lossy() };
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
        // What terminatefunc and the destructors spent in callbacks belongs
        // to no request.
        crate::metrics::discard_callback_time();
        log::serror(server, sys::APLOG_DEBUG, &format!("{}: unloaded", self.path.to_string_lossy()));
    }
}

/// A path's current script, and the identity of the file the path named
/// when it was opened (the fast path compares it with the request's stat).
struct Entry {
    ident: FileIdent,
    script: Arc<Script>,
}

/// What became of the object loaded from one inode.
enum ObjState {
    /// Nothing loaded yet (the holder of the lock is loading it).
    Vacant,
    /// Loaded.  A Weak that no longer upgrades is a script whose last
    /// reference is gone and whose Drop (terminatefunc, dlclose) is running.
    Live(Weak<Script>),
    /// Unloaded after a fault, still held by requests in flight: it must not
    /// be handed out again, and the inode must not be loaded again (dlopen
    /// would return this very mapping) until it is closed.
    Retired,
    /// Closed and out of the map: look the inode up again.
    Gone,
}

struct Object {
    state: Mutex<ObjState>,
    /// Signalled when the state leaves Live or Retired.
    changed: Condvar,
}

/// Held by a loaded Script: its drop closes the object's entry.
///
/// Keying by inode does not remove the descriptor that `impl Drop for
/// Script` keeps (forgets) for an object glibc leaves mapped after dlclose:
/// glibc looks a name up among loaded objects before it compares inodes, so
/// a later file opened as the same `/proc/self/fd/N` would be handed the old
/// object.  Reusing that descriptor for a reload of the same inode would
/// bound it to one per file, at the cost of moving it out of Drop; left as
/// it is (one per unload of such a script, documented in the README).
struct ObjectRef {
    key: ObjKey,
    obj: Arc<Object>,
}

impl Drop for ObjectRef {
    fn drop(&mut self) {
        if let Some(reg) = REGISTRY.get() {
            reg.forget_object(self.key, &self.obj);
        }
    }
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
    paths: RwLock<FxMap<Box<[u8]>, Entry>>,
    /// Lock order: `objects`, then an Object's `state`; neither is ever
    /// taken while holding `paths`.  A loaded Script is never dropped while
    /// any of them is held (its drop takes `objects` and `state`); the one
    /// dropped under `state` is a failed load, which has no object yet.
    objects: Mutex<FxMap<ObjKey, Arc<Object>>>,
    faults: Mutex<HashMap<Box<[u8]>, Faults>>,
    /// The main server, for messages outside requests.
    pub server: AtomicPtr<sys::server_rec>,
}

/// One per server child process, created in child_init.  The parent never
/// touches it, so nothing of it lives across configuration passes (the
/// parent dlcloses the module between them).
pub static REGISTRY: OnceLock<Registry> = OnceLock::new();

fn relock<T>(r: std::sync::LockResult<T>) -> T {
    // A panic on a request path is caught at the module's entry points
    // (crate::panic), so a later request can find a lock poisoned by it.  The
    // maps these locks guard are changed by single inserts and removals that
    // a panic cannot leave half done, so the data is used as it is.
    r.unwrap_or_else(|e| e.into_inner())
}

impl Registry {
    pub fn new() -> Registry {
        Registry {
            paths: RwLock::new(FxMap::default()),
            objects: Mutex::new(FxMap::default()),
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
        // The fast path, kept small so that it stays in few cache lines: a
        // loaded script, one reference count taken.
        if let Some(e) = relock(self.paths.read()).get(path.to_bytes()).filter(|e| e.ident == ident) {
            // Quarantined by a fault in another process, where this one
            // still has the script loaded: one word of its shared row.
            if !crate::metrics::quarantine::maybe(e.script.quarantine_word) {
                return Ok(e.script.clone());
            }
        }
        self.get_slow(path, ident, r, cfg)
    }

    /// Everything but a hit: a new, changed or re-moded file, quarantine.
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
        // A script counted per process can be in quarantine only when it is
        // not loaded here (a fault unloads it); one counted server-wide made
        // the fast path come here.
        if let Some(left) = self.quarantined(path, ident) {
            return Err(LoadError {
                status: sys::HTTP_SERVICE_UNAVAILABLE as c_int,
                msg: "quarantined".into(),
                fault: false,
                retry_after: Some(left.as_secs_f64().ceil() as u64),
                init_failed: false,
            });
        }
        // From here on only what was actually opened counts: the request's
        // stat may describe a file that has been replaced since.
        // SAFETY: open and fstat on our own descriptor.
        let (fd, real) = unsafe {
            let raw = libc::open(path.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC);
            if raw < 0 {
                return Err(LoadError::failed(format!("cannot open: {}", last_os_error())));
            }
            let fd = OwnedFd::from_raw_fd(raw);
            let mut st: libc::stat = std::mem::zeroed();
            if libc::fstat(fd.as_raw_fd(), &mut st) != 0 {
                return Err(LoadError::failed(format!("cannot stat: {}", last_os_error())));
            }
            (fd, FileIdent::of_stat(&st))
        };
        if real != ident {
            log::rlog!(r, APLOG_DEBUG, "{}: the file changed after the request's stat", path.to_string_lossy());
            // Another request may have published exactly what we opened.
            if let Some(e) = relock(self.paths.read()).get(key).filter(|e| e.ident == real) {
                return Ok(e.script.clone());
            }
        }
        // Every other change (a new file, chmod, chown, a new link: the
        // ctime) is checked again before anything is run or handed out.
        // SAFETY: `r` is live and its filename is the path `fd` came from.
        unsafe { trust::check(&fd, r, cfg) }.map_err(LoadError::forbidden)?;
        crate::elfcheck::whole(fd.as_fd())
            .map_err(|e| LoadError::failed(format!("not a loadable shared object: {e}")))?;
        self.drop_replaced(path, real, r);
        let script = match self.acquire(real.object(), fd, path, r, cfg) {
            Ok(s) => s,
            Err(e) => {
                if e.fault && self.record_fault(path, ident, cfg) {
                    crate::metrics::quarantined(path);
                    log::rerror(r, sys::APLOG_ERR, 0, &quarantine_message(path, cfg));
                }
                return Err(e);
            }
        };
        self.publish(path, real, &script, r);
        Ok(script)
    }

    /// The one Script of the object `key`: the live one, or a new load from
    /// `fd`.  Waits (bounded) while an older Script of the same inode is
    /// still being closed, since dlopen would return its mapping.
    fn acquire(
        &self,
        key: ObjKey,
        fd: OwnedFd,
        path: &CStr,
        r: *mut sys::request_rec,
        cfg: &Settings,
    ) -> Result<Arc<Script>, LoadError> {
        let mut fd = Some(fd);
        let limit = cfg.timeout.unwrap_or(Duration::from_secs(30));
        let deadline = Instant::now() + limit;
        loop {
            let obj = relock(self.objects.lock())
                .entry(key)
                .or_insert_with(|| Arc::new(Object { state: Mutex::new(ObjState::Vacant), changed: Condvar::new() }))
                .clone();
            let mut st = relock(obj.state.lock());
            loop {
                match &*st {
                    ObjState::Live(w) => {
                        if let Some(s) = w.upgrade() {
                            log::rlog!(r, APLOG_DEBUG, "{}: shares the object already loaded", path.to_string_lossy());
                            return Ok(s);
                        }
                    }
                    ObjState::Retired => {}
                    ObjState::Gone => break,
                    ObjState::Vacant => {
                        // The state lock is held through the load: another
                        // request for this inode, by whatever path, waits
                        // for this initfunc instead of running its own.
                        let Some(fd) = fd.take() else {
                            return Err(LoadError::failed("internal error: descriptor used twice".into()));
                        };
                        return match Script::load(path, fd, r, cfg) {
                            Ok(mut script) => {
                                script.object = Some(ObjectRef { key, obj: obj.clone() });
                                let s = Arc::new(script);
                                *st = ObjState::Live(Arc::downgrade(&s));
                                Ok(s)
                            }
                            Err(e) => {
                                drop(st);
                                self.forget_object(key, &obj);
                                Err(e)
                            }
                        };
                    }
                }
                // An older Script of this inode is closing (its last request
                // is finishing, or its terminatefunc runs).
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(LoadError {
                        status: sys::HTTP_SERVICE_UNAVAILABLE as c_int,
                        msg: format!(
                            "the previous load of this file is still in use after {} s; it must be closed first",
                            limit.as_secs()
                        ),
                        fault: false,
                        retry_after: None,
                        init_failed: false,
                    });
                }
                st = relock(obj.changed.wait_timeout(st, left)).0;
            }
        }
    }

    /// The object's Script is closed (or its load failed): the inode may be
    /// loaded afresh.
    fn forget_object(&self, key: ObjKey, obj: &Arc<Object>) {
        let mut objects = relock(self.objects.lock());
        *relock(obj.state.lock()) = ObjState::Gone;
        if objects.get(&key).is_some_and(|o| Arc::ptr_eq(o, obj)) {
            objects.remove(&key);
        }
        drop(objects);
        obj.changed.notify_all();
    }

    /// Before the file now at `path` is loaded: the entry of the file it
    /// replaced goes first, so that the old version's terminatefunc runs
    /// before the new one's initfunc when no request holds it any more.
    /// Only if the path still names what was opened: an entry published
    /// from a newer file stays.
    fn drop_replaced(&self, path: &CStr, real: FileIdent, r: *mut sys::request_rec) {
        let key = path.to_bytes();
        let mut paths = relock(self.paths.write());
        let old = match paths.get(key) {
            Some(e) if e.ident.object() != real.object() && names(path) == Some(real.object()) => paths.remove(key),
            _ => None,
        };
        drop(paths);
        if old.is_some() {
            crate::metrics::reloaded(path);
            log::rlog!(r, APLOG_DEBUG, "{}: file changed, loading it again", path.to_string_lossy());
        }
        drop(old);
    }

    /// Makes `script` the one for `path`, unless the path has been pointed
    /// at another file since it was opened: a request that opened an old
    /// version must not put it back over a newer one (it still runs the
    /// version it opened, whole).
    fn publish(&self, path: &CStr, real: FileIdent, script: &Arc<Script>, r: *mut sys::request_rec) {
        let key = path.to_bytes();
        let current = |paths: &FxMap<Box<[u8]>, Entry>| {
            paths.get(key).is_some_and(|e| e.ident == real && Arc::ptr_eq(&e.script, script))
        };
        let shared = relock(self.paths.read());
        if current(&shared) {
            return;
        }
        drop(shared);
        let mut paths = relock(self.paths.write());
        if current(&paths) {
            return;
        }
        // One stat under the write lock, on this slow path only: with the
        // lock held nobody else publishes, so what the path names now is
        // what the last publisher saw.
        if names(path) != Some(real.object()) {
            drop(paths);
            log::rlog!(r, APLOG_DEBUG, "{}: replaced again meanwhile; not published", path.to_string_lossy());
            return;
        }
        let old = paths.insert(key.into(), Entry { ident: real, script: script.clone() });
        drop(paths);
        // The replaced version is released here, outside the lock: its
        // terminatefunc runs now unless a request in flight still holds it
        // (or another path still maps to it).
        if old.as_ref().is_some_and(|o| !Arc::ptr_eq(&o.script, script)) {
            crate::metrics::reloaded(path);
            log::rlog!(r, APLOG_DEBUG, "{}: file changed, now serving the new one", path.to_string_lossy());
        }
        drop(old);
    }

    /// Takes a failed script out of the list, under every path that leads
    /// to it: the next request loads the file afresh, once the requests
    /// still running it have let go.
    pub fn unload(&self, script: &Arc<Script>) {
        let mut removed = Vec::new();
        let mut paths = relock(self.paths.write());
        // A scan of every path, on faults only: links to the same file are
        // under other keys.  The caller's reference keeps the Script alive,
        // so nothing is dropped under the lock but reference counts.
        paths.retain(|_, e| {
            let same = Arc::ptr_eq(&e.script, script);
            if same {
                removed.push(e.script.clone());
            }
            !same
        });
        drop(paths);
        if let Some(o) = &script.object {
            let mut st = relock(o.obj.state.lock());
            if matches!(&*st, ObjState::Live(w) if w.as_ptr() == Arc::as_ptr(script)) {
                *st = ObjState::Retired;
            }
        }
        drop(removed);
    }

    /// Drops this process's copy of `path`, if loaded (the adaptive policy
    /// moved the script out); terminatefunc runs when the last request
    /// holding it ends.
    pub fn forget(&self, path: &[u8]) {
        let s = relock(self.paths.read()).get(path).map(|e| e.script.clone());
        if let Some(s) = s {
            self.unload(&s);
        }
    }

    /// Time left in quarantine for this path, if any.  A new file (another
    /// identity) ends the quarantine: it counts as a fix until it faults.
    /// Server-wide when the script has a row of its own in the metrics
    /// segment, else (table full, metrics off) for this process only.
    pub fn quarantined(&self, path: &CStr, ident: FileIdent) -> Option<Duration> {
        if let Some(slot) = crate::metrics::quarantine::slot(path) {
            return crate::metrics::quarantine::left(slot, ident.shared_hash(), now_ms()).map(Duration::from_millis);
        }
        let key = path.to_bytes();
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

    /// Counts a fault (or timeout) of a script, server-wide or per process
    /// as `quarantined` reads it.  Returns true when this one puts the
    /// script into quarantine (the caller logs that, once: of all processes,
    /// only the one whose fault was the n-th gets true).
    pub fn record_fault(&self, path: &CStr, ident: FileIdent, cfg: &Settings) -> bool {
        if cfg.max_faults == 0 {
            return false;
        }
        if let Some(slot) = crate::metrics::quarantine::slot(path) {
            let window = u64::try_from(cfg.fault_window.as_millis()).unwrap_or(u64::MAX / 4);
            return crate::metrics::quarantine::record(slot, ident.shared_hash(), now_ms(), cfg.max_faults, window);
        }
        let key = path.to_bytes();
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
        let all: Vec<_> = relock(self.paths.write()).drain().collect();
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

/// Milliseconds of CLOCK_MONOTONIC_COARSE: the clock every process shares
/// for server-wide quarantine.
fn now_ms() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid timespec to write.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts) };
    ts.tv_sec as u64 * 1000 + ts.tv_nsec as u64 / 1_000_000
}

/// The object the path names at this moment.
fn names(path: &CStr) -> Option<ObjKey> {
    // SAFETY: stat into a zeroed struct we own.
    unsafe {
        let mut st: libc::stat = std::mem::zeroed();
        (libc::stat(path.as_ptr(), &mut st) == 0).then(|| FileIdent::of_stat(&st).object())
    }
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
