//! mod_libcgi: runs LibCGI scripts (shared objects exporting `processfunc`)
//! inside Apache httpd 2.4.
//!
//! Where the `unsafe` lives: `sys` (bindings), `elfpatch` (rewriting a
//! loaded script's relocations), `guard` and `shim.c` (calls into scripts
//! under sigsetjmp, the watchdog), `registry` (dlopen/dlsym), `request` and
//! `env` (the functions scripts call, which get raw pointers from C), `trust`,
//! `recycle`, `surplus`, `body` and `handler` (Apache's request and
//! scoreboard API).

mod body;
mod config;
mod elfcheck;
mod elfpatch;
mod env;
mod guard;
mod handler;
mod isolation;
mod log;
mod metrics;
mod panic;
mod recycle;
mod registry;
mod request;
mod surplus;
mod sys;
mod trust;

use std::ffi::{c_int, c_void};
use std::ptr;
use std::sync::atomic::Ordering;

/// The module record Apache finds by the name given to LoadModule.
#[no_mangle]
pub static mut libcgi_module: sys::module = sys::module {
    version: sys::MODULE_MAGIC_NUMBER_MAJOR as c_int,
    minor_version: sys::MODULE_MAGIC_NUMBER_MINOR as c_int,
    module_index: -1,
    // Apache derives the short name "libcgi" (LogLevel libcgi:debug, the
    // [libcgi:error] log tag) from this.
    name: c"mod_libcgi.c".as_ptr(),
    dynamic_load_handle: ptr::null_mut(),
    next: ptr::null_mut(),
    magic: sys::MODULE_MAGIC_COOKIE as std::ffi::c_ulong,
    rewrite_args: None,
    create_dir_config: Some(config::create_dir_config),
    merge_dir_config: Some(config::merge_dir_config),
    create_server_config: None,
    merge_server_config: None,
    cmds: (&raw const config::COMMANDS).cast(),
    register_hooks: Some(register_hooks),
    flags: 0,
};

unsafe extern "C" fn register_hooks(_p: *mut sys::apr_pool_t) {
    sys::ap_hook_handler(Some(handler::handler), ptr::null(), ptr::null(), sys::APR_HOOK_MIDDLE as c_int);
    sys::ap_hook_child_init(Some(child_init), ptr::null(), ptr::null(), sys::APR_HOOK_MIDDLE as c_int);
    metrics::register_hooks();
    isolation::register_hooks();
}

/// Each server process gets its own list of loaded scripts; the child pool's
/// cleanup runs every script's terminatefunc when the process exits, which is
/// also how a graceful restart retires the old generation.
unsafe extern "C" fn child_init(pchild: *mut sys::apr_pool_t, s: *mut sys::server_rec) {
    panic::install_hook();
    if panic::catch(|| child_init_(pchild, s)).is_err() {
        panic::in_hook("child_init", s);
    }
}

unsafe fn child_init_(pchild: *mut sys::apr_pool_t, s: *mut sys::server_rec) {
    let reg = registry::REGISTRY.get_or_init(registry::Registry::new);
    reg.server.store(s, Ordering::Relaxed);
    isolation::client_child_init();
    guard::libcgi_set_api(&RS_API);
    // Apache's own fault handlers (sig_coredump) are in place by now; ours
    // keep them and hand them every fault that is not a script's.
    let e = guard::libcgi_install_handlers(guard::timer_signal(), log::error_log_fd(s));
    if let Err(w) = guard::start_watchdog() {
        log::serror(
            s,
            sys::APLOG_ERR,
            &format!(
                "cannot start the watchdog thread: {w}; scripts with a LibCGITimeout get 503 until it starts \
                 (tried again on each request)"
            ),
        );
    }
    surplus::start();
    if e != 0 {
        log::serror(
            s,
            sys::APLOG_CRIT,
            &format!("cannot install the fault handlers: {}", std::io::Error::from_raw_os_error(e)),
        );
    }
    sys::apr_pool_cleanup_register(pchild, ptr::null(), Some(child_exit), Some(sys::apr_pool_cleanup_null));
}

unsafe extern "C" fn child_exit(_data: *mut c_void) -> sys::apr_status_t {
    if let Some(reg) = registry::REGISTRY.get() {
        if panic::catch(|| reg.shutdown()).is_err() {
            panic::in_hook("child_exit", reg.server.load(Ordering::Relaxed));
        }
    }
    0
}

/// The Rust side of the functions scripts call, for the C wrappers.
static RS_API: guard::RsApi = guard::RsApi {
    lwrite: request::rs_lwrite,
    lflush: request::rs_lflush,
    get_remote_host: request::rs_get_remote_host,
    linput_length: request::rs_linput_length,
    getenv: env::libcgi_getenv,
    secure_getenv: env::libcgi_secure_getenv,
    setenv: env::libcgi_setenv,
    unsetenv: env::libcgi_unsetenv,
    putenv: env::libcgi_putenv,
    clearenv: env::libcgi_clearenv,
    thread_gone: guard::thread_gone,
};
