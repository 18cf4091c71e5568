//! The per-process list of loaded scripts.
//!
//! Keyed by the script's path (O(1) lookup however many scripts a site has),
//! each entry remembers the identity of the file it loaded (device, inode,
//! size, mtime).  A request whose file no longer matches loads the new file;
//! the old version stays alive while requests in flight still hold it
//! (`Arc`), and its terminatefunc runs and the library is closed when the last
//! one lets go.

use crate::elfpatch;
use crate::env;
use crate::log;
use crate::request::Active;
use crate::sys;
use libloading::os::unix::{Library, Symbol, RTLD_LOCAL, RTLD_NOW};
use std::collections::HashMap;
use std::ffi::{c_char, c_int, CStr, CString};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicPtr, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};

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
}

/// The imports of a script that are bound to per-request versions.
fn bindings() -> [(&'static CStr, usize); 6] {
    [
        (c"getenv", env::libcgi_getenv as *const () as usize),
        (
            c"secure_getenv",
            env::libcgi_secure_getenv as *const () as usize,
        ),
        (c"setenv", env::libcgi_setenv as *const () as usize),
        (c"unsetenv", env::libcgi_unsetenv as *const () as usize),
        (c"putenv", env::libcgi_putenv as *const () as usize),
        (c"clearenv", env::libcgi_clearenv as *const () as usize),
    ]
}

pub struct Script {
    pub path: CString,
    pub process: ProcessFn,
    terminate: Option<TermFn>,
    /// Held around processfunc unless the script declared itself
    /// thread-safe (`libcgi_thread_safe = 1`).
    pub serial: Option<Mutex<()>>,
    lib: Option<Library>,
    /// The descriptor the library was opened through (/proc/self/fd/N).
    /// Kept open while the library is loaded so no other script can be
    /// opened under the same name: glibc returns an already-loaded object
    /// for a name it has seen, even if the file behind it changed.
    fd: Option<OwnedFd>,
}

// SAFETY: a Script is immutable after loading except through its own Mutex;
// the raw function pointers are plain code addresses, valid while `lib` is
// open, which lasts until Drop.
unsafe impl Send for Script {}
unsafe impl Sync for Script {}

impl Script {
    /// Loads the library, binds its environment imports and runs initfunc.
    /// Runs inside the request that needs the script, so initfunc sees that
    /// request's environment.
    fn load(path: &CStr, r: *mut sys::request_rec) -> Result<Script, String> {
        // SAFETY (whole function): plain libc calls on our own descriptor;
        // the library's code runs only through the checked symbols below.
        unsafe {
            let raw = libc::open(path.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC);
            if raw < 0 {
                return Err(format!("cannot open: {}", std::io::Error::last_os_error()));
            }
            let fd = OwnedFd::from_raw_fd(raw);
            let name = format!("/proc/self/fd/{}", fd.as_raw_fd());
            // RTLD_LOCAL: a script's symbols never become visible to other
            // scripts.  RTLD_DEEPBIND: the script's own definitions win over
            // the server's (its own `random`, say), as in a CGI process.
            let lib = Library::open(Some(&name), RTLD_NOW | RTLD_LOCAL | libc::RTLD_DEEPBIND)
                .map_err(|e| {
                    format!(
                        "not a loadable shared object: {}",
                        strip_proc_name(&e.to_string(), &name)
                    )
                })?;
            let process: Symbol<ProcessFn> = lib
                .get(b"processfunc\0")
                .map_err(|_| "the script does not export processfunc".to_string())?;
            let process = *process;
            let init: Option<InitFn> = lib.get::<InitFn>(b"initfunc\0").ok().map(|s| *s);
            let terminate: Option<TermFn> = lib.get::<TermFn>(b"terminatefunc\0").ok().map(|s| *s);
            let thread_safe = lib
                .get::<*const c_int>(b"libcgi_thread_safe\0")
                .ok()
                .is_some_and(|s| !(*s).is_null() && **s != 0);
            let n = elfpatch::patch_imports(process as usize, &bindings())
                .map_err(|e| format!("cannot bind the script's environment functions: {e}"))?;
            log::rlog!(
                r,
                APLOG_DEBUG,
                "{}: loaded ({n} environment imports bound, thread_safe={thread_safe})",
                path.to_string_lossy()
            );
            let script = Script {
                path: path.to_owned(),
                process,
                terminate,
                serial: (!thread_safe).then(|| Mutex::new(())),
                lib: Some(lib),
                fd: Some(fd),
            };
            if let Some(init) = init {
                let rc = init();
                if rc != 0 {
                    // A script whose initfunc failed was never initialised:
                    // close it without terminatefunc.
                    let mut script = script;
                    script.terminate = None;
                    return Err(format!("initfunc returned {rc}"));
                }
                log::rlog!(r, APLOG_DEBUG, "{}: initfunc done", path.to_string_lossy());
            }
            Ok(script)
        }
    }
}

fn strip_proc_name(msg: &str, name: &str) -> String {
    msg.replace(&format!("{name}: "), "")
}

impl Drop for Script {
    fn drop(&mut self) {
        // terminatefunc belongs to no request: hide the current one (if any)
        // from the script's getenv and lwrite.
        let _none = Active::none();
        if let Some(term) = self.terminate {
            // SAFETY: the library is still open; terminatefunc takes nothing.
            unsafe { term() };
        }
        let server = REGISTRY
            .get()
            .map_or(std::ptr::null(), |r| r.server.load(Ordering::Relaxed));
        if let Some(lib) = self.lib.take() {
            if let Err(e) = lib.close() {
                log::serror(
                    server,
                    sys::APLOG_WARNING,
                    &format!("{}: dlclose failed: {e}", self.path.to_string_lossy()),
                );
            }
        }
        if let Some(fd) = self.fd.take() {
            let name =
                CString::new(format!("/proc/self/fd/{}", fd.as_raw_fd())).unwrap_or_default();
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
        log::serror(
            server,
            sys::APLOG_DEBUG,
            &format!("{}: unloaded", self.path.to_string_lossy()),
        );
    }
}

struct Slot {
    ident: FileIdent,
    script: OnceLock<Arc<Script>>,
    /// Serialises the load, so initfunc runs once even when many requests
    /// for a new script arrive together.
    loading: Mutex<()>,
}

pub struct Registry {
    map: RwLock<HashMap<Box<[u8]>, Arc<Slot>>>,
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
            map: RwLock::new(HashMap::new()),
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
    ) -> Result<Arc<Script>, String> {
        let key = path.to_bytes();
        let found = relock(self.map.read())
            .get(key)
            .filter(|s| s.ident == ident)
            .cloned();
        let slot = match found {
            Some(slot) => slot,
            None => {
                let mut map = relock(self.map.write());
                match map.get(key) {
                    Some(s) if s.ident == ident => s.clone(),
                    _ => {
                        let slot = Arc::new(Slot {
                            ident,
                            script: OnceLock::new(),
                            loading: Mutex::new(()),
                        });
                        let old = map.insert(key.into(), slot.clone());
                        drop(map);
                        // The replaced version is released here, outside the
                        // lock: its terminatefunc runs now unless a request
                        // in flight still holds it.
                        if old.is_some() {
                            log::rlog!(
                                r,
                                APLOG_DEBUG,
                                "{}: file changed, loading the new version",
                                path.to_string_lossy()
                            );
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
        match Script::load(path, r) {
            Ok(script) => Ok(slot.script.get_or_init(|| Arc::new(script)).clone()),
            Err(e) => {
                self.remove_slot(key, &slot);
                Err(e)
            }
        }
    }

    fn remove_slot(&self, key: &[u8], slot: &Arc<Slot>) {
        let mut map = relock(self.map.write());
        let removed = if map.get(key).is_some_and(|s| Arc::ptr_eq(s, slot)) {
            map.remove(key)
        } else {
            None
        };
        drop(map);
        drop(removed);
    }

    /// Takes a failed script out of the list: the next request loads the
    /// file afresh.  Requests still running it keep their reference.
    pub fn unload(&self, script: &Arc<Script>) {
        let key = script.path.to_bytes();
        let mut map = relock(self.map.write());
        let removed = if map
            .get(key)
            .and_then(|s| s.script.get())
            .is_some_and(|s| Arc::ptr_eq(s, script))
        {
            map.remove(key)
        } else {
            None
        };
        drop(map);
        drop(removed);
    }

    /// At process exit: every loaded script gets its terminatefunc.
    pub fn shutdown(&self) {
        let all: Vec<_> = relock(self.map.write()).drain().collect();
        drop(all);
    }
}
