//! The `libcgi-script` handler.

use crate::body;
use crate::log::{self, rlog};
use crate::registry::{FileIdent, Script, REGISTRY};
use crate::request::{Active, Phase, Request};
use crate::sys;
use std::ffi::{c_int, CStr};
use std::sync::Arc;

pub const HANDLER_NAME: &CStr = c"libcgi-script";

const OK: c_int = sys::OK as c_int;
const DECLINED: c_int = sys::DECLINED as c_int;
const HTTP_FORBIDDEN: c_int = sys::HTTP_FORBIDDEN as c_int;
const HTTP_NOT_FOUND: c_int = sys::HTTP_NOT_FOUND as c_int;
const HTTP_INTERNAL_SERVER_ERROR: c_int = sys::HTTP_INTERNAL_SERVER_ERROR as c_int;

fn ident_of(r: *mut sys::request_rec) -> Option<FileIdent> {
    // SAFETY: `r` is live; finfo was filled by the core's directory walk.
    unsafe {
        let fi = &(*r).finfo;
        let want = (sys::APR_FINFO_IDENT | sys::APR_FINFO_MTIME | sys::APR_FINFO_SIZE) as i32;
        if fi.valid & want == want {
            return Some(FileIdent {
                dev: fi.device,
                ino: fi.inode,
                size: fi.size,
                mtime: fi.mtime,
            });
        }
        // Some other module built this finfo with fewer fields: ask again.
        let mut st: libc::stat = std::mem::zeroed();
        if libc::stat((*r).filename, &mut st) != 0 {
            return None;
        }
        Some(FileIdent {
            dev: st.st_dev,
            ino: st.st_ino,
            size: st.st_size,
            mtime: st.st_mtime * 1_000_000 + st.st_mtime_nsec / 1000,
        })
    }
}

/// # Safety
/// Called by Apache with a live request.
pub unsafe extern "C" fn handler(r: *mut sys::request_rec) -> c_int {
    if (*r).handler.is_null() || CStr::from_ptr((*r).handler) != HANDLER_NAME {
        return DECLINED;
    }
    let filename = if (*r).filename.is_null() {
        c""
    } else {
        CStr::from_ptr((*r).filename)
    };
    let name = filename.to_string_lossy();

    if sys::ap_allow_options(r) & sys::OPT_EXECCGI as c_int == 0 {
        log::rerror(
            r,
            sys::APLOG_ERR,
            0,
            &format!("Options ExecCGI is off in this directory: {name}"),
        );
        return HTTP_FORBIDDEN;
    }
    match (*r).finfo.filetype {
        sys::apr_filetype_e_APR_NOFILE => {
            log::rerror(
                r,
                sys::APLOG_ERR,
                0,
                &format!("script not found or unable to stat: {name}"),
            );
            return HTTP_NOT_FOUND;
        }
        sys::apr_filetype_e_APR_REG => {}
        _ => {
            log::rerror(
                r,
                sys::APLOG_ERR,
                0,
                &format!(
                    "attempt to invoke something other than a regular file as a script: {name}"
                ),
            );
            return HTTP_FORBIDDEN;
        }
    }
    if (*r).used_path_info == sys::AP_REQ_REJECT_PATH_INFO as c_int
        && !(*r).path_info.is_null()
        && *(*r).path_info != 0
    {
        log::rerror(
            r,
            sys::APLOG_ERR,
            0,
            &format!("AcceptPathInfo off disallows user's path: {name}"),
        );
        return HTTP_NOT_FOUND;
    }
    let Some(registry) = REGISTRY.get() else {
        log::rerror(
            r,
            sys::APLOG_ERR,
            0,
            &format!("{name}: mod_libcgi was not initialised in this process"),
        );
        return HTTP_INTERNAL_SERVER_ERROR;
    };
    let Some(ident) = ident_of(r) else {
        log::rerror(
            r,
            sys::APLOG_ERR,
            0,
            &format!("script not found or unable to stat: {name}"),
        );
        return HTTP_NOT_FOUND;
    };

    let (input, input_len) = match body::read(r) {
        Ok(Some((p, n))) => (p, n),
        Ok(None) => (std::ptr::null_mut(), 0),
        Err(status) => return status,
    };

    let mut req = Request::new(r, input_len);
    let reqp: *mut Request = &mut req;
    let (script, rc) = {
        // From here until the guard drops, `req` is reached only through
        // `reqp` (by the script's callbacks on this thread).
        let _active = Active::enter(reqp);
        let script = match registry.get(filename, ident, r) {
            Ok(s) => s,
            Err(why) => {
                log::rerror(
                    r,
                    sys::APLOG_ERR,
                    0,
                    &format!("{name}: cannot load script: {why}"),
                );
                return HTTP_INTERNAL_SERVER_ERROR;
            }
        };
        rlog!(r, APLOG_DEBUG, "{name}: calling processfunc");
        let rc = {
            let _serial = script
                .serial
                .as_ref()
                .map(|m| m.lock().unwrap_or_else(|e| e.into_inner()));
            (script.process)(input)
        };
        (script, rc)
    };
    rlog!(r, APLOG_DEBUG, "{name}: processfunc returned {rc}");
    finish(registry, &script, &mut req, rc, &name)
}

/// Turns what the script produced into the response, as mod_cgi would.
unsafe fn finish(
    registry: &crate::registry::Registry,
    script: &Arc<Script>,
    req: &mut Request,
    rc: c_int,
    name: &str,
) -> c_int {
    let r = req.r;
    let nothing_sent = (*r).sent_bodyct == 0;
    if rc != 0 {
        log::rerror(
            r,
            sys::APLOG_ERR,
            0,
            &format!("{name}: processfunc returned {rc}"),
        );
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
            registry.unload(script);
            rlog!(r, APLOG_DEBUG, "{name}: unloaded after bad output");
            HTTP_INTERNAL_SERVER_ERROR
        }
        Phase::BadHeaders => {
            registry.unload(script);
            rlog!(r, APLOG_DEBUG, "{name}: unloaded after bad output");
            HTTP_INTERNAL_SERVER_ERROR
        }
        Phase::Discard => {
            if req.header_status == sys::HTTP_NOT_MODIFIED as c_int {
                (*r).status = req.header_status;
                return OK;
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
