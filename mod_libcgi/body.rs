//! Reading the request body for processfunc.
//!
//! The body is handed over as one NUL-terminated block, so it is held whole.
//! What that costs is the body itself and little more: a small body (up to
//! `SMALL`) is read into request-pool memory; a larger one into an anonymous
//! mapping that grows with `mremap` (the kernel moves the pages, nothing is
//! copied) and is unmapped by a cleanup of the request pool.  Pages of the
//! mapping that were never written cost nothing, so neither a declared
//! Content-Length the client never sends nor the doubling of the mapping
//! adds to the process's memory: a body of n bytes costs n bytes rounded up
//! to a page, plus the input filters' 64 KiB in flight.  (Before, buffers
//! doubled in the pool, where nothing is freed before the request ends: a
//! body cost 2 to 4 times its size.)

use crate::log;
use crate::sys;
use std::ffi::{c_char, c_int, c_void};
use std::ptr;

/// Bodies up to this size stay in the request pool: a mapping costs two
/// system calls, more than a small body's copy.
const SMALL: usize = 64 * 1024;

/// The most a declared Content-Length may reserve (as address space) before
/// the bytes arrive; beyond it the mapping grows as they do.
const RESERVE_MAX: usize = 16 << 20;

/// What ap_get_brigade is asked for at a time.
const READ_SIZE: usize = 64 * 1024;

/// The body as one NUL-terminated block, and its length (which may be less
/// than the block's strlen: bodies may hold NUL bytes).  It lives until the
/// request pool is cleared.  `Ok(None)` when the request has no body (no
/// Content-Length > 0 and no Transfer-Encoding, as `ap_request_has_body`
/// decides).  `Err(status)` is what the handler must return: Apache's input
/// filters enforce LimitRequestBody (413) and reject broken chunking, and
/// have already said why in the error log.
///
/// # Safety
/// `r` is the live request being handled.
pub unsafe fn read(r: *mut sys::request_rec) -> Result<Option<(*mut c_char, usize)>, c_int> {
    if sys::ap_request_has_body(r) == 0 {
        return Ok(None);
    }
    read_body(r).map(Some)
}

/// An anonymous mapping owned by the request pool (the cleanup unmaps it).
#[repr(C)]
struct Mapping {
    addr: *mut c_void,
    size: usize,
}

unsafe extern "C" fn unmap(data: *mut c_void) -> sys::apr_status_t {
    let m = &mut *(data as *mut Mapping);
    if !m.addr.is_null() {
        libc::munmap(m.addr, m.size);
        m.addr = ptr::null_mut();
    }
    0
}

fn page_round(n: usize) -> usize {
    (n + 4095) & !4095
}

/// Where the body is collected.
struct Buf {
    ptr: *mut u8,
    len: usize,
    /// Bytes usable for the body (one more is always there for the NUL).
    cap: usize,
    /// Set once the body lives in a mapping.
    map: *mut Mapping,
}

impl Buf {
    /// Room for `more` bytes after `len`, plus the NUL.  Err: the size that
    /// could not be mapped.
    unsafe fn reserve(&mut self, pool: *mut sys::apr_pool_t, more: usize) -> Result<(), usize> {
        let need = self.len.saturating_add(more);
        if need <= self.cap {
            return Ok(());
        }
        if self.map.is_null() && need <= SMALL {
            // Still small: double in the pool (at most 2 x SMALL wasted).
            let cap = (self.cap * 2).max(need).min(SMALL);
            let nb = sys::apr_palloc(pool, cap + 1) as *mut u8;
            ptr::copy_nonoverlapping(self.ptr, nb, self.len);
            self.ptr = nb;
            self.cap = cap;
            return Ok(());
        }
        self.map_at_least(pool, need)
    }

    /// Moves the body into a mapping of at least `need` + 1 bytes, or grows
    /// the mapping it is in.
    #[cold]
    #[inline(never)]
    unsafe fn map_at_least(&mut self, pool: *mut sys::apr_pool_t, need: usize) -> Result<(), usize> {
        let size = page_round((self.cap.saturating_mul(2)).max(need).saturating_add(1));
        if self.map.is_null() {
            // SAFETY: a fresh private anonymous mapping, touched only by this
            // request's thread and unmapped only by the pool cleanup
            // registered right after it (and so after the last use of the
            // body, which lives as long as the request pool).
            let addr = libc::mmap(
                ptr::null_mut(),
                size,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            );
            if addr == libc::MAP_FAILED {
                return Err(size);
            }
            let m = sys::apr_palloc(pool, std::mem::size_of::<Mapping>()) as *mut Mapping;
            m.write(Mapping { addr, size });
            sys::apr_pool_cleanup_register(pool, m as *const c_void, Some(unmap), Some(sys::apr_pool_cleanup_null));
            if self.len > 0 {
                // SAFETY: `ptr` holds `len` bytes of body in the pool, and
                // the new mapping is at least that large.
                ptr::copy_nonoverlapping(self.ptr, addr as *mut u8, self.len);
            }
            self.map = m;
        } else {
            let m = &mut *self.map;
            // SAFETY: `m` is the mapping this Buf made; nothing else points
            // into it yet (the body is handed out only once read).
            let addr = libc::mremap(m.addr, m.size, size, libc::MREMAP_MAYMOVE);
            if addr == libc::MAP_FAILED {
                return Err(size);
            }
            m.addr = addr;
            m.size = size;
        }
        self.ptr = (*self.map).addr as *mut u8;
        self.cap = size - 1;
        Ok(())
    }
}

/// Out of line: a GET should not carry the body-reading code through the
/// instruction cache.
#[inline(never)]
unsafe fn read_body(r: *mut sys::request_rec) -> Result<(*mut c_char, usize), c_int> {
    let pool = (*r).pool;
    // A declared length sizes the buffer once; a chunked body grows it.  The
    // declared length is only a hint, bounded so that a lying client cannot
    // make us reserve more than RESERVE_MAX it never sends (and a mapping's
    // untouched pages cost nothing anyway).
    let declared = {
        let cl = sys::apr_table_get((*r).headers_in, c"Content-Length".as_ptr());
        if cl.is_null() {
            0
        } else {
            std::ffi::CStr::from_ptr(cl).to_str().ok().and_then(|s| s.trim().parse::<usize>().ok()).unwrap_or(0)
        }
    };
    let mut buf = Buf { ptr: ptr::null_mut(), len: 0, cap: 0, map: ptr::null_mut() };
    if declared > SMALL {
        if let Err(size) = buf.map_at_least(pool, declared.min(RESERVE_MAX)) {
            return Err(no_memory(r, size));
        }
    } else {
        let cap = if declared > 0 { declared } else { 8192 };
        buf.ptr = sys::apr_palloc(pool, cap + 1) as *mut u8;
        buf.cap = cap;
    }
    let bb = sys::apr_brigade_create(pool, (*(*r).connection).bucket_alloc);
    loop {
        let rv = sys::ap_get_brigade(
            (*r).input_filters,
            bb,
            sys::ap_input_mode_t_AP_MODE_READBYTES,
            sys::apr_read_type_e_APR_BLOCK_READ,
            READ_SIZE as sys::apr_off_t,
        );
        if rv != 0 {
            sys::brigade_cleanup(bb);
            return Err(sys::ap_map_http_request_error(rv, sys::HTTP_BAD_REQUEST as c_int));
        }
        let mut avail: sys::apr_off_t = 0;
        sys::apr_brigade_length(bb, 1, &mut avail);
        let avail = avail.max(0) as usize;
        if let Err(size) = buf.reserve(pool, avail) {
            sys::brigade_cleanup(bb);
            return Err(no_memory(r, size));
        }
        let mut got: sys::apr_size_t = avail;
        sys::apr_brigade_flatten(bb, buf.ptr.add(buf.len) as *mut c_char, &mut got);
        buf.len += got;
        let eos = sys::brigade_has_eos(bb);
        sys::brigade_cleanup(bb);
        if eos {
            break;
        }
    }
    *buf.ptr.add(buf.len) = 0;
    Ok((buf.ptr as *mut c_char, buf.len))
}

#[cold]
#[inline(never)]
unsafe fn no_memory(r: *mut sys::request_rec, size: usize) -> c_int {
    let err = std::io::Error::last_os_error();
    let f = if (*r).filename.is_null() { c"" } else { std::ffi::CStr::from_ptr((*r).filename) };
    log::rerror(
        r,
        sys::APLOG_ERR,
        0,
        &format!("{}: cannot map {size} bytes for the request body: {err}", f.to_string_lossy()),
    );
    sys::HTTP_INTERNAL_SERVER_ERROR as c_int
}
