//! The `libcgi-script` handler.

use crate::body;
use crate::config::{self, Settings};
use crate::guard;
use crate::log::{self, rlog};
use crate::metrics;
use crate::recycle;
use crate::registry::{self, FileIdent, LoadError, Registry, Script, REGISTRY};
use crate::request::{Active, Phase, Request};
use crate::sys;
use std::ffi::{c_int, c_void, CStr, CString};
use std::sync::Arc;

pub const HANDLER_NAME: &CStr = c"libcgi-script";

const OK: c_int = sys::OK as c_int;
const DECLINED: c_int = sys::DECLINED as c_int;
const HTTP_FORBIDDEN: c_int = sys::HTTP_FORBIDDEN as c_int;
const HTTP_NOT_FOUND: c_int = sys::HTTP_NOT_FOUND as c_int;
const HTTP_INTERNAL_SERVER_ERROR: c_int = sys::HTTP_INTERNAL_SERVER_ERROR as c_int;

/// A script's path for messages.
#[derive(Clone, Copy)]
pub(crate) struct Name<'a>(pub(crate) &'a CStr);

impl std::fmt::Display for Name<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0.to_string_lossy())
    }
}

fn ident_of(r: *mut sys::request_rec) -> Option<FileIdent> {
    // SAFETY: `r` is live; finfo was filled by the core's directory walk.
    unsafe {
        let fi = &(*r).finfo;
        let want = (sys::APR_FINFO_IDENT | sys::APR_FINFO_MTIME | sys::APR_FINFO_SIZE) as i32;
        if fi.valid & want == want {
            return Some(FileIdent { dev: fi.device, ino: fi.inode, size: fi.size, mtime: fi.mtime, ctime: fi.ctime });
        }
        stat_ident((*r).filename)
    }
}

/// Some other module built this finfo with fewer fields: ask again.
#[cold]
#[inline(never)]
unsafe fn stat_ident(path: *const std::ffi::c_char) -> Option<FileIdent> {
    let mut st: libc::stat = std::mem::zeroed();
    if libc::stat(path, &mut st) != 0 {
        return None;
    }
    Some(FileIdent {
        dev: st.st_dev,
        ino: st.st_ino,
        size: st.st_size,
        mtime: st.st_mtime * 1_000_000 + st.st_mtime_nsec / 1000,
        ctime: st.st_ctime * 1_000_000 + st.st_ctime_nsec / 1000,
    })
}

/// # Safety
/// Called by Apache with a live request.
pub unsafe extern "C" fn handler(r: *mut sys::request_rec) -> c_int {
    if (*r).handler.is_null() || CStr::from_ptr((*r).handler) != HANDLER_NAME {
        return DECLINED;
    }
    // The whole request inside the catch, metrics included: the measurement
    // stays in the closure's registers instead of crossing the landing pad.
    crate::panic::catch(|| {
        let mut m = metrics::Req::off();
        m.start(r);
        let rc = handle(r, &mut m);
        m.end(r, rc);
        rc
    })
    .unwrap_or_else(|()| panicked(r))
}

/// A panic in the module while handling `r` (outside any script call: one
/// inside a callback ends the call instead, see crate::panic): the request
/// gets a 500, or a cut connection if part of it was sent.
#[cold]
#[inline(never)]
unsafe fn panicked(r: *mut sys::request_rec) -> c_int {
    let filename = if (*r).filename.is_null() { c"" } else { CStr::from_ptr((*r).filename) };
    log::rerror_fmt(
        r,
        sys::APLOG_ERR,
        0,
        format_args!("{}: a panic in mod_libcgi's handler: {}", Name(filename), crate::panic::message()),
    );
    if (*r).sent_bodyct == 0 {
        return HTTP_INTERNAL_SERVER_ERROR;
    }
    let c = (*r).connection;
    (*c).keepalive = sys::ap_conn_keepalive_e_AP_CONN_CLOSE;
    (*c).aborted = 1;
    OK
}

#[inline(always)]
unsafe fn handle(r: *mut sys::request_rec, m: &mut metrics::Req) -> c_int {
    let filename = if (*r).filename.is_null() { c"" } else { CStr::from_ptr((*r).filename) };
    // Formatted only when a message is actually written: validating the path
    // as UTF-8 on every request would be measurable.
    let name = Name(filename);
    #[cfg(feature = "fault-injection")]
    if !(*r).args.is_null() && CStr::from_ptr((*r).args).to_bytes() == b"libcgi-panic=handler" {
        panic!("fault injection: the handler");
    }

    if sys::ap_allow_options(r) & sys::OPT_EXECCGI as c_int == 0 {
        return refuse(r, HTTP_FORBIDDEN, format_args!("Options ExecCGI is off in this directory: {name}"));
    }
    match (*r).finfo.filetype {
        sys::apr_filetype_e_APR_NOFILE => {
            return refuse(r, HTTP_NOT_FOUND, format_args!("script not found or unable to stat: {name}"));
        }
        sys::apr_filetype_e_APR_REG => {}
        _ => {
            return refuse(
                r,
                HTTP_FORBIDDEN,
                format_args!("attempt to invoke something other than a regular file as a script: {name}"),
            );
        }
    }
    if (*r).used_path_info == sys::AP_REQ_REJECT_PATH_INFO as c_int && !(*r).path_info.is_null() && *(*r).path_info != 0
    {
        return refuse(r, HTTP_NOT_FOUND, format_args!("AcceptPathInfo off disallows user's path: {name}"));
    }
    let Some(registry) = REGISTRY.get() else {
        return refuse(
            r,
            HTTP_INTERNAL_SERVER_ERROR,
            format_args!("{name}: mod_libcgi was not initialised in this process"),
        );
    };
    let Some(ident) = ident_of(r) else {
        return refuse(r, HTTP_NOT_FOUND, format_args!("script not found or unable to stat: {name}"));
    };

    let (input, input_len) = match body::read(r) {
        Ok(Some((p, n))) => {
            m.body_read(n);
            (p, n)
        }
        Ok(None) => (std::ptr::null_mut(), 0),
        Err(status) => return body_failed(r, name, status),
    };

    let cfg = config::settings(r);
    let adaptive = match crate::isolation::route(r) {
        crate::isolation::Route::InProcess => None,
        crate::isolation::Route::Isolated(d, e) => {
            return crate::isolation::handle(r, d, e, ident, input, input_len, &cfg, m)
        }
        crate::isolation::Route::Promoted(i, e) => Some(crate::isolation::InProcess::start(i, e, m)),
    };
    let mut req = Request::new(r, input_len);
    let reqp: *mut Request = &mut req;
    let (script, out) = {
        // From here until the guard drops, `req` is reached only through
        // `reqp` (by the script's callbacks on this thread).
        let _active = Active::enter(reqp);
        let script = match registry.get(filename, ident, r, &cfg) {
            Ok(s) => s,
            Err(e) => {
                m.not_loaded(
                    filename,
                    e.retry_after.is_some(),
                    e.init_failed,
                    e.retry_after.is_none(),
                    e.fault && cfg.recycle,
                );
                return load_failed(r, name, e, &cfg);
            }
        };
        m.script(script.metrics_slot.unwrap_or_default());
        let out = {
            // Tried first: a lock that is free costs what lock() costs, and
            // only a busy one needs the check that it is not held by this
            // very thread (a subrequest into the script that is running,
            // e.g. an include of itself), where waiting would never end.
            let _serial = match script.serial.as_ref().map(|m| (m, m.try_lock())) {
                None => None,
                Some((_, Ok(g))) => Some(g),
                Some((_, Err(std::sync::TryLockError::WouldBlock))) if script.code.running_here() => {
                    return refuse(
                        r,
                        sys::HTTP_LOOP_DETECTED as c_int,
                        format_args!(
                            "{name}: a subrequest into this script while it runs on the same thread \
                             (it is not thread-safe: libcgi_thread_safe)"
                        ),
                    );
                }
                Some((m, Err(_))) => Some(m.lock().unwrap_or_else(|e| e.into_inner())),
            };
            guard::call(script.process as *const c_void, guard::CALL_INT_STR, input, cfg.timeout, &script.code)
        };
        m.called(&out, filename, cfg.recycle);
        (script, out)
    };
    rlog!(r, APLOG_DEBUG, "{name}: processfunc {}", out.describe(cfg.timeout));
    match out.kind {
        guard::RETURNED => finish(registry, &script, &mut req, out.rc, name),
        // exit(0) after complete output is a normal end; exit(n) a failure.
        guard::EXITED => finish(registry, &script, &mut req, out.exit_status, name),
        guard::FAULT | guard::TIMEOUT => {
            if let Some(a) = &adaptive {
                a.faulted();
            }
            faulted(registry, script, &mut req, &out, ident, name, &cfg)
        }
        guard::PANIC => {
            // Not the script's fault (not counted); its call was cut short.
            log::rerror_fmt(
                r,
                sys::APLOG_ERR,
                0,
                format_args!("{name}: processfunc {}; script unloaded", out.describe(cfg.timeout)),
            );
            registry.unload(&script);
            drop(script);
            failed_response(r, &mut req, &cfg)
        }
        guard::NO_WATCHDOG => {
            log::rerror_fmt(r, sys::APLOG_ERR, 0, format_args!("{name}: processfunc {}", out.describe(cfg.timeout)));
            req.discard_body();
            sys::HTTP_SERVICE_UNAVAILABLE as c_int
        }
        _ => {
            log::rerror_fmt(r, sys::APLOG_ERR, 0, format_args!("{name}: {}", out.describe(cfg.timeout)));
            failed_response(r, &mut req, &cfg)
        }
    }
}

/// The body could not be read: one line naming the script and why, as
/// mod_cgi logs a failed body read (AH01225), then Apache's answer.
#[cold]
#[inline(never)]
unsafe fn body_failed(r: *mut sys::request_rec, name: Name, status: c_int) -> c_int {
    // AP_FILTER_ERROR: the filter has answered already (413 for
    // LimitRequestBody, 400 for bad chunking) and said which at LogLevel info.
    let why = match status as u32 {
        _ if status == sys::AP_FILTER_ERROR => "refused by Apache's input filters (LimitRequestBody or bad framing)",
        sys::HTTP_REQUEST_ENTITY_TOO_LARGE => "larger than LimitRequestBody",
        sys::HTTP_REQUEST_TIME_OUT => "the client stopped sending it (Timeout)",
        sys::HTTP_BAD_REQUEST => "its framing is malformed (or the client went away)",
        _ => "the input filters failed",
    };
    log::rerror_fmt(r, sys::APLOG_ERR, 0, format_args!("{name}: request body not read: {why}"));
    status
}

/// Refuses a request before any script runs: one error-log line naming the
/// script and the reason, and the status.  Cold, like every failure path
/// here, so that the code of a successful request stays together.
#[cold]
#[inline(never)]
unsafe fn refuse(r: *mut sys::request_rec, status: c_int, msg: std::fmt::Arguments) -> c_int {
    log::rerror_fmt(r, sys::APLOG_ERR, 0, msg);
    status
}

/// processfunc crashed or ran past its deadline: the script's state is no
/// longer trusted, so it is unloaded (and maybe quarantined).
#[cold]
#[inline(never)]
unsafe fn faulted(
    registry: &Registry,
    script: Arc<Script>,
    req: &mut Request,
    out: &guard::Outcome,
    ident: FileIdent,
    name: Name,
    cfg: &Settings,
) -> c_int {
    let r = req.r;
    log::rerror_fmt(
        r,
        sys::APLOG_ERR,
        0,
        format_args!("{name}: processfunc {}; script unloaded", out.describe(cfg.timeout)),
    );
    registry.unload(&script);
    if registry.record_fault(name.0, ident, cfg) {
        crate::metrics::quarantined(name.0);
        log::rerror(r, sys::APLOG_ERR, 0, &registry::quarantine_message(name.0, cfg));
    }
    drop(script); // terminatefunc runs here unless another request still holds it
    failed_response(r, req, cfg)
}

/// After a fault: a 500 if nothing reached the client yet; otherwise the
/// response must not look complete, so the connection is cut (no last chunk,
/// no keep-alive).
#[cold]
#[inline(never)]
unsafe fn failed_response(r: *mut sys::request_rec, req: &mut Request, cfg: &Settings) -> c_int {
    req.discard_body();
    if cfg.recycle || guard::unsound() {
        recycle::schedule(r);
    }
    if (*r).sent_bodyct == 0 {
        return HTTP_INTERNAL_SERVER_ERROR;
    }
    let c = (*r).connection;
    (*c).keepalive = sys::ap_conn_keepalive_e_AP_CONN_CLOSE;
    (*c).aborted = 1;
    OK
}

#[cold]
#[inline(never)]
unsafe fn load_failed(r: *mut sys::request_rec, name: Name, e: LoadError, cfg: &Settings) -> c_int {
    if let Some(secs) = e.retry_after {
        // Quarantine: logged once when it began, not per request.
        let v = CString::new(secs.to_string()).unwrap_or_default();
        sys::apr_table_setn((*r).err_headers_out, c"Retry-After".as_ptr(), sys::apr_pstrdup((*r).pool, v.as_ptr()));
        rlog!(r, APLOG_DEBUG, "{name}: quarantined, {secs} s left");
        return e.status;
    }
    log::rerror(r, sys::APLOG_ERR, 0, &format!("{name}: cannot load script: {}", e.msg));
    if (e.fault && cfg.recycle) || guard::unsound() {
        recycle::schedule(r);
    }
    e.status
}

/// Turns what the script produced into the response, as mod_cgi would.
unsafe fn finish(registry: &Registry, script: &Arc<Script>, req: &mut Request, rc: c_int, name: Name) -> c_int {
    if rc == 0 && req.phase == Phase::Body {
        return req.finish_body();
    }
    let r = req.r;
    finish_other(req, rc, &name, &mut || {
        registry.unload(script);
        rlog!(r, APLOG_DEBUG, "{name}: unloaded after bad output");
    })
}

/// Every end but a complete body and a 0: out of line, so that the usual end
/// does not carry these cases through the instruction cache.  Shared with the
/// isolated domain (isolation/client.rs), which has nothing to unload:
/// `bad_output` runs when the script's header block was bad or incomplete.
#[inline(never)]
pub(crate) unsafe fn finish_other(
    req: &mut Request,
    rc: c_int,
    name: &dyn std::fmt::Display,
    bad_output: &mut dyn FnMut(),
) -> c_int {
    let r = req.r;
    let nothing_sent = (*r).sent_bodyct == 0;
    if rc != 0 {
        log::rerror(r, sys::APLOG_ERR, 0, &format!("{name}: processfunc returned {rc}"));
        if nothing_sent && matches!(req.phase, Phase::Headers | Phase::Body | Phase::Discard) {
            req.discard_body();
            return HTTP_INTERNAL_SERVER_ERROR;
        }
    }
    match req.phase {
        Phase::Headers => {
            // The script ended before its header block did.  Apache's parser
            // logs "Premature end of script headers" (or the bad line).
            req.finish_headers();
            bad_output();
            HTTP_INTERNAL_SERVER_ERROR
        }
        Phase::BadHeaders => {
            bad_output();
            HTTP_INTERNAL_SERVER_ERROR
        }
        Phase::Discard => {
            // A condition of the request decided the answer, as mod_cgi
            // answers it: a 304 goes out as the response itself (so that
            // mod_cache can revalidate with it), anything else (412) as an
            // error response.  The script did nothing wrong: it stays loaded.
            if req.header_status == sys::HTTP_NOT_MODIFIED as c_int {
                (*r).status = req.header_status;
                return OK;
            }
            if req.header_status != OK {
                return req.header_status;
            }
            let Some(loc) = req.redirect_location() else {
                return OK;
            };
            if loc.to_bytes().first() == Some(&b'/') {
                // A local redirect is a GET whatever the method was, and the
                // body was already consumed.
                (*r).method = c"GET".as_ptr();
                (*r).method_number = sys::M_GET as c_int;
                sys::apr_table_unset((*r).headers_in, c"Content-Length".as_ptr());
                sys::ap_internal_redirect_handler(loc.as_ptr(), r);
                OK
            } else {
                sys::HTTP_MOVED_TEMPORARILY as c_int
            }
        }
        Phase::Body => req.finish_body(),
        Phase::ClientGone => OK,
    }
}
