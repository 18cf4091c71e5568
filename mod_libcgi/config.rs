//! Directives.  All live in the per-directory configuration, so that they
//! work in the server config, virtual hosts and <Directory>/<Location>.
//!
//! LibCGITimeout <seconds>          default: the server's Timeout; 0: none
//! LibCGIMaxFaults <n> [<seconds>]  default 5 in 60: then quarantine; 0: never
//! LibCGIFaultAction continue|recycle   default continue
//! LibCGIOwner <user>               scripts may be owned by root or this user

use crate::sys;
use std::ffi::{c_char, c_int, c_void, CStr};
use std::ptr;
use std::time::Duration;

#[repr(C)]
pub struct DirConf {
    /// Microseconds; -1 unset.
    pub timeout_us: i64,
    pub max_faults: c_int,
    pub fault_window_s: c_int,
    /// -1 unset, 0 continue, 1 recycle.
    pub fault_action: c_int,
    /// -1 unset.
    pub owner_uid: i64,
    pub iso: crate::isolation::DirIso,
}

pub unsafe extern "C" fn create_dir_config(p: *mut sys::apr_pool_t, _dir: *mut c_char) -> *mut c_void {
    let c = sys::apr_palloc(p, std::mem::size_of::<DirConf>()) as *mut DirConf;
    c.write(DirConf {
        timeout_us: -1,
        max_faults: -1,
        fault_window_s: -1,
        fault_action: -1,
        owner_uid: -1,
        iso: crate::isolation::DirIso::UNSET,
    });
    c as *mut c_void
}

pub unsafe extern "C" fn merge_dir_config(p: *mut sys::apr_pool_t, base: *mut c_void, add: *mut c_void) -> *mut c_void {
    let (b, a) = (&*(base as *const DirConf), &*(add as *const DirConf));
    let c = sys::apr_palloc(p, std::mem::size_of::<DirConf>()) as *mut DirConf;
    let pick = |x: i64, y: i64| if x >= 0 { x } else { y };
    c.write(DirConf {
        timeout_us: pick(a.timeout_us, b.timeout_us),
        max_faults: pick(a.max_faults as i64, b.max_faults as i64) as c_int,
        fault_window_s: pick(a.fault_window_s as i64, b.fault_window_s as i64) as c_int,
        fault_action: pick(a.fault_action as i64, b.fault_action as i64) as c_int,
        owner_uid: pick(a.owner_uid, b.owner_uid),
        iso: crate::isolation::DirIso::merge(&b.iso, &a.iso),
    });
    c as *mut c_void
}

fn err(p: *mut sys::apr_pool_t, msg: &str) -> *const c_char {
    let m = std::ffi::CString::new(msg).unwrap_or_default();
    // SAFETY: copies the message into the configuration pool.
    unsafe { sys::apr_pstrdup(p, m.as_ptr()) }
}

fn arg<'a>(w: *const c_char) -> &'a str {
    // SAFETY: Apache passes NUL-terminated directive arguments.
    unsafe { CStr::from_ptr(w) }.to_str().unwrap_or("")
}

unsafe extern "C" fn set_timeout(cmd: *mut sys::cmd_parms, conf: *mut c_void, w: *const c_char) -> *const c_char {
    let c = &mut *(conf as *mut DirConf);
    match arg(w).parse::<f64>() {
        Ok(s) if (0.0..=86400.0).contains(&s) => {
            c.timeout_us = (s * 1e6) as i64;
            ptr::null()
        }
        _ => {
            err((*cmd).pool, &format!("LibCGITimeout '{}': not a number of seconds from 0 (no limit) to 86400", arg(w)))
        }
    }
}

const MAX_FAULTS: c_int = 1_000_000;
/// A week: a longer quarantine is better done by removing the script.
const MAX_WINDOW_S: c_int = 7 * 86400;

unsafe extern "C" fn set_max_faults(
    cmd: *mut sys::cmd_parms,
    conf: *mut c_void,
    n: *const c_char,
    secs: *const c_char,
) -> *const c_char {
    let c = &mut *(conf as *mut DirConf);
    // TAKE12: the window is optional ("LibCGIMaxFaults 0" disables quarantine).
    let n_arg = arg(n);
    let count = match n_arg.parse::<c_int>() {
        Ok(v) if (0..=MAX_FAULTS).contains(&v) => v,
        _ => {
            let m = format!(
                "LibCGIMaxFaults '{n_arg}': the count must be a whole number from 0 (never quarantine) to {MAX_FAULTS}"
            );
            return err((*cmd).pool, &m);
        }
    };
    let window = if secs.is_null() {
        -1
    } else {
        match arg(secs).parse::<c_int>() {
            Ok(v) if (1..=MAX_WINDOW_S).contains(&v) => v,
            _ => {
                let m = format!(
                    "LibCGIMaxFaults '{}': the window must be a whole number of seconds from 1 to {MAX_WINDOW_S}",
                    arg(secs)
                );
                return err((*cmd).pool, &m);
            }
        }
    };
    c.max_faults = count;
    c.fault_window_s = window;
    ptr::null()
}

unsafe extern "C" fn set_fault_action(cmd: *mut sys::cmd_parms, conf: *mut c_void, w: *const c_char) -> *const c_char {
    let c = &mut *(conf as *mut DirConf);
    match arg(w).to_ascii_lowercase().as_str() {
        "continue" => c.fault_action = 0,
        "recycle" => c.fault_action = 1,
        _ => return err((*cmd).pool, &format!("LibCGIFaultAction '{}': takes 'continue' or 'recycle'", arg(w))),
    }
    ptr::null()
}

unsafe extern "C" fn set_owner(cmd: *mut sys::cmd_parms, conf: *mut c_void, w: *const c_char) -> *const c_char {
    let c = &mut *(conf as *mut DirConf);
    let name = arg(w);
    if let Some(num) = name.strip_prefix('#') {
        // (uid_t)-1 is "no user" to chown and friends, never an owner.
        return match num.parse::<u32>() {
            Ok(uid) if uid != u32::MAX => {
                c.owner_uid = uid as i64;
                ptr::null()
            }
            _ => err((*cmd).pool, &format!("LibCGIOwner '{name}': not a uid (#0 to #4294967294)")),
        };
    }
    let pw = libc::getpwnam(w);
    if pw.is_null() {
        return err((*cmd).pool, &format!("LibCGIOwner: no such user '{name}'"));
    }
    c.owner_uid = (*pw).pw_uid as i64;
    ptr::null()
}

/// The settings that apply to a request, with defaults filled in.
pub struct Settings {
    pub timeout: Option<Duration>,
    pub max_faults: u32,
    pub fault_window: Duration,
    pub recycle: bool,
    pub owner_uid: Option<u32>,
}

/// # Safety
/// `r` is a live request.
pub unsafe fn settings(r: *const sys::request_rec) -> Settings {
    let c = &*(sys::ap_get_module_config((*r).per_dir_config, ptr::addr_of!(crate::libcgi_module)) as *const DirConf);
    let timeout_us = if c.timeout_us >= 0 { c.timeout_us } else { (*(*r).server).timeout };
    Settings {
        timeout: (timeout_us > 0).then(|| Duration::from_micros(timeout_us as u64)),
        max_faults: if c.max_faults >= 0 { c.max_faults as u32 } else { 5 },
        fault_window: Duration::from_secs(if c.fault_window_s > 0 { c.fault_window_s as u64 } else { 60 }),
        recycle: c.fault_action == 1,
        owner_uid: (c.owner_uid >= 0).then_some(c.owner_uid as u32),
    }
}

/// The directive table; Apache keeps a pointer to it.
#[repr(transparent)]
pub struct Commands(pub [sys::command_rec; 11]);
// SAFETY: the table is immutable and only read by Apache.
unsafe impl Sync for Commands {}

const CONF: c_int = (sys::RSRC_CONF | sys::ACCESS_CONF) as c_int;

pub static COMMANDS: Commands = Commands([
    sys::command_rec {
        name: c"LibCGITimeout".as_ptr(),
        func: sys::cmd_func { take1: Some(set_timeout) },
        cmd_data: ptr::null_mut(),
        req_override: CONF,
        args_how: sys::cmd_how_TAKE1,
        errmsg: c"seconds a script call may run before it is interrupted (0: no limit; default: Timeout)".as_ptr(),
    },
    sys::command_rec {
        name: c"LibCGIMaxFaults".as_ptr(),
        func: sys::cmd_func { take2: Some(set_max_faults) },
        cmd_data: ptr::null_mut(),
        req_override: CONF,
        args_how: sys::cmd_how_TAKE12,
        errmsg: c"faults [seconds]: a script faulting that often is quarantined for that long (default 5 60; 0: never)"
            .as_ptr(),
    },
    sys::command_rec {
        name: c"LibCGIFaultAction".as_ptr(),
        func: sys::cmd_func { take1: Some(set_fault_action) },
        cmd_data: ptr::null_mut(),
        req_override: CONF,
        args_how: sys::cmd_how_TAKE1,
        errmsg: c"continue | recycle: what a server process does after a script faulted in it".as_ptr(),
    },
    sys::command_rec {
        name: c"LibCGIOwner".as_ptr(),
        func: sys::cmd_func { take1: Some(set_owner) },
        cmd_data: ptr::null_mut(),
        req_override: CONF,
        args_how: sys::cmd_how_TAKE1,
        errmsg: c"user (besides root) who may own LibCGI scripts".as_ptr(),
    },
    sys::command_rec {
        name: c"LibCGIStatusSlots".as_ptr(),
        func: sys::cmd_func { take1: Some(crate::metrics::set_status_slots) },
        cmd_data: ptr::null_mut(),
        req_override: sys::RSRC_CONF as c_int,
        args_how: sys::cmd_how_TAKE1,
        errmsg: c"rows of the libcgi-status script table (0: metrics off; default 32)".as_ptr(),
    },
    sys::command_rec {
        name: c"LibCGIIsolation".as_ptr(),
        func: sys::cmd_func { take1: Some(crate::isolation::set_mode) },
        cmd_data: ptr::null_mut(),
        req_override: CONF,
        args_how: sys::cmd_how_TAKE1,
        errmsg: c"inprocess | process | adaptive: where scripts of this directory run (default inprocess)".as_ptr(),
    },
    sys::command_rec {
        name: c"LibCGIIsolationBudget".as_ptr(),
        func: sys::cmd_func { take1: Some(crate::isolation::set_budget) },
        cmd_data: ptr::null_mut(),
        req_override: sys::RSRC_CONF as c_int,
        args_how: sys::cmd_how_TAKE1,
        errmsg: c"percent of the server's CPU the adaptive isolation may cost (default 10)".as_ptr(),
    },
    sys::command_rec {
        name: c"LibCGIIsolationUser".as_ptr(),
        func: sys::cmd_func { take2: Some(crate::isolation::set_user) },
        cmd_data: ptr::null_mut(),
        req_override: CONF,
        args_how: sys::cmd_how_TAKE12,
        errmsg: c"user [group] isolated workers of this directory run as (default: User/Group)".as_ptr(),
    },
    sys::command_rec {
        name: c"LibCGIIsolationLimits".as_ptr(),
        func: sys::cmd_func { take3: Some(crate::isolation::set_limits) },
        cmd_data: ptr::null_mut(),
        req_override: CONF,
        args_how: sys::cmd_how_TAKE3,
        errmsg: c"address space MiB, CPU seconds, open files of an isolated worker (0: no limit)".as_ptr(),
    },
    sys::command_rec {
        name: c"LibCGIIsolationWorkers".as_ptr(),
        func: sys::cmd_func { take2: Some(crate::isolation::set_workers) },
        cmd_data: ptr::null_mut(),
        req_override: sys::RSRC_CONF as c_int,
        args_how: sys::cmd_how_TAKE12,
        errmsg: c"workers [seconds]: isolated worker processes (default 16) and how long a request waits for a free one before its 503 (default 10)".as_ptr(),
    },
    sys::command_rec {
        name: ptr::null(),
        func: sys::cmd_func { no_args: None },
        cmd_data: ptr::null_mut(),
        req_override: 0,
        args_how: 0,
        errmsg: ptr::null(),
    },
]);
