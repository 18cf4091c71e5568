//! Reading the request body for processfunc.

use crate::sys;
use std::ffi::{c_char, c_int};

/// The body as one NUL-terminated block in the request pool, and its length
/// (which may be less than the block's strlen: bodies may hold NUL bytes).
/// `Ok(None)` when the request has no body (no Content-Length > 0 and no
/// Transfer-Encoding, as `ap_request_has_body` decides).  `Err(status)` is
/// what the handler must return: Apache's input filters enforce
/// LimitRequestBody (413) and reject broken chunking, and have already said
/// why in the error log.
///
/// # Safety
/// `r` is the live request being handled.
pub unsafe fn read(r: *mut sys::request_rec) -> Result<Option<(*mut c_char, usize)>, c_int> {
    if sys::ap_request_has_body(r) == 0 {
        return Ok(None);
    }
    read_body(r).map(Some)
}

/// Out of line: a GET should not carry the body-reading code through the
/// instruction cache.
#[inline(never)]
unsafe fn read_body(r: *mut sys::request_rec) -> Result<(*mut c_char, usize), c_int> {
    let pool = (*r).pool;
    // A declared length sizes the buffer once; a chunked body grows it.  The
    // declared length is only a hint, bounded so a lying client cannot make
    // us reserve memory it never sends.
    let declared = {
        let cl = sys::apr_table_get((*r).headers_in, c"Content-Length".as_ptr());
        if cl.is_null() {
            0
        } else {
            std::ffi::CStr::from_ptr(cl).to_str().ok().and_then(|s| s.trim().parse::<usize>().ok()).unwrap_or(0)
        }
    };
    let mut cap = declared.clamp(8192, 16 << 20);
    let mut buf = sys::apr_palloc(pool, cap + 1) as *mut u8;
    let mut len = 0usize;
    let bb = sys::apr_brigade_create(pool, (*(*r).connection).bucket_alloc);
    loop {
        let rv = sys::ap_get_brigade(
            (*r).input_filters,
            bb,
            sys::ap_input_mode_t_AP_MODE_READBYTES,
            sys::apr_read_type_e_APR_BLOCK_READ,
            65536,
        );
        if rv != 0 {
            sys::brigade_cleanup(bb);
            return Err(sys::ap_map_http_request_error(rv, sys::HTTP_BAD_REQUEST as c_int));
        }
        let mut avail: sys::apr_off_t = 0;
        sys::apr_brigade_length(bb, 1, &mut avail);
        let avail = avail.max(0) as usize;
        if len + avail > cap {
            // Pool memory cannot be resized: grow geometrically so the copies
            // add up to at most the body's size again.
            let newcap = (cap * 2).max(len + avail);
            let nb = sys::apr_palloc(pool, newcap + 1) as *mut u8;
            std::ptr::copy_nonoverlapping(buf, nb, len);
            buf = nb;
            cap = newcap;
        }
        let mut got: sys::apr_size_t = avail;
        sys::apr_brigade_flatten(bb, buf.add(len) as *mut c_char, &mut got);
        len += got;
        let eos = sys::brigade_has_eos(bb);
        sys::brigade_cleanup(bb);
        if eos {
            break;
        }
    }
    *buf.add(len) = 0;
    Ok((buf as *mut c_char, len))
}
