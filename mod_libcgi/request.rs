//! The request a thread is running a script for, and the functions the
//! script calls back into (`lwrite`, `lputs`, `lprintf`, `lflush`,
//! `get_remote_host`, `linput_length`).
//!
//! Output is CGI output.  Until the blank line that ends the header block it
//! is buffered; then Apache's own CGI header parser reads it into the
//! request_rec, and the body goes through a brigade down the output filter
//! chain, so memory stays bounded however much a script writes.

use crate::env::Env;
use crate::log;
use crate::sys;
use std::ffi::{c_char, c_int, c_void, CStr};
use std::ptr;

/// Bytes of header block a script may write before the blank line.  Apache's
/// parser takes lines of up to 8 KiB; a whole block larger than this is a
/// script that forgot its headers, not a real header block.
const MAX_HEADER_BLOCK: usize = 64 * 1024;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Phase {
    /// Collecting the header block.
    Headers,
    /// Headers parsed: output is body.
    Body,
    /// Headers parsed, and the body is not wanted (redirect, 304).
    Discard,
    /// Header block bad or too large: output is refused, the script unloaded.
    BadHeaders,
    /// Writing to the client failed (client gone): output is refused.
    ClientGone,
}

pub struct Request {
    pub r: *mut sys::request_rec,
    pub input_len: usize,
    pub env: Env,
    pub phase: Phase,
    /// What Apache's header parser returned (OK, 304, 500...).
    pub header_status: c_int,
    hdr: Vec<u8>,
    bb: *mut sys::apr_bucket_brigade,
}

unsafe extern "C" {
    // The thread's current request, in shim.c: initial-exec TLS, which a
    // Rust thread_local! in a shared object cannot be (see there).
    fn libcgi_current() -> *mut c_void;
    fn libcgi_set_current(req: *mut c_void) -> *mut c_void;
}

/// The request of this thread, if it is inside a script call.
pub fn current<'a>() -> Option<&'a mut Request> {
    // SAFETY: the current request is set only by `Active`, which points it at
    // a Request that outlives the script call, and the handler does not
    // touch that Request while the script runs; only this thread sees it.
    unsafe { (libcgi_current() as *mut Request).as_mut() }
}

/// Marks this thread as running a script for `req` until dropped.  Restores
/// whatever was there before, so calls may nest (a script unloaded inside a
/// request runs its terminatefunc with no request: `Active::none()`).
pub struct Active {
    prev: *mut c_void,
}

impl Active {
    pub fn enter(req: *mut Request) -> Active {
        // SAFETY: only swaps a thread-local pointer.
        Active { prev: unsafe { libcgi_set_current(req as *mut c_void) } }
    }
    pub fn none() -> Active {
        Active::enter(ptr::null_mut())
    }
}

impl Drop for Active {
    fn drop(&mut self) {
        // SAFETY: as in `enter`.
        unsafe { libcgi_set_current(self.prev) };
    }
}

impl Request {
    /// # Safety
    /// `r` is the live request being handled.
    pub unsafe fn new(r: *mut sys::request_rec, input_len: usize) -> Request {
        Request {
            r,
            input_len,
            env: Env::default(),
            phase: Phase::Headers,
            header_status: sys::OK as c_int,
            hdr: Vec::new(),
            bb: sys::apr_brigade_create((*r).pool, (*(*r).connection).bucket_alloc),
        }
    }

    fn write(&mut self, data: &[u8]) -> c_int {
        match self.phase {
            Phase::Headers => self.write_headers(data),
            Phase::Body => self.write_body(data),
            Phase::Discard => data.len() as c_int,
            Phase::BadHeaders | Phase::ClientGone => -1,
        }
    }

    fn write_headers(&mut self, data: &[u8]) -> c_int {
        // The usual case: the whole header block arrives in one write.  Parse
        // it where it is, without copying it into the buffer first.
        if self.hdr.is_empty() {
            if let Some(end) = header_end(data, 0) {
                let status = self.parse_headers(&data[..end]);
                return self.headers_parsed(status, &data[end..], data.len());
            }
        }
        self.buffer_headers(data)
    }

    /// The header block arrives in pieces: collect it.
    #[cold]
    #[inline(never)]
    fn buffer_headers(&mut self, data: &[u8]) -> c_int {
        // Only the new bytes (and the two before them, for a blank line split
        // across writes) can complete the block.
        let from = self.hdr.len().saturating_sub(2);
        self.hdr.extend_from_slice(data);
        let Some(end) = header_end(&self.hdr, from) else {
            if self.hdr.len() > MAX_HEADER_BLOCK {
                log::rerror(
                    self.r,
                    sys::APLOG_ERR,
                    0,
                    &format!(
                        "{}: script header block exceeds {MAX_HEADER_BLOCK} bytes without the blank line",
                        self.filename()
                    ),
                );
                self.fail_headers();
                return -1;
            }
            return data.len() as c_int;
        };
        let rest = self.hdr.split_off(end);
        let block = std::mem::take(&mut self.hdr);
        let status = self.parse_headers(&block);
        self.headers_parsed(status, &rest, data.len())
    }

    /// Acts on what Apache's parser said of the header block; `rest` is the
    /// body output that came with it.
    fn headers_parsed(&mut self, status: c_int, rest: &[u8], written: usize) -> c_int {
        self.header_status = status;
        if status == sys::HTTP_NOT_MODIFIED as c_int {
            self.phase = Phase::Discard;
        } else if status != sys::OK as c_int {
            self.fail_headers();
            return -1;
        } else if self.redirect_location().is_some() {
            self.phase = Phase::Discard;
        } else {
            self.phase = Phase::Body;
            if !rest.is_empty() && self.write_body(rest) < 0 {
                return -1;
            }
        }
        written as c_int
    }

    #[cold]
    fn fail_headers(&mut self) {
        self.phase = Phase::BadHeaders;
        self.hdr = Vec::new();
    }

    /// Runs Apache's CGI header parser over the buffered block.  Apache logs
    /// malformed or missing headers itself, naming the script.
    fn parse_headers(&mut self, block: &[u8]) -> c_int {
        let mut cur = Cursor { data: block, pos: 0 };
        // Given a buffer, the parser keeps the offending line in it for its
        // log message; without one it reads on to the end first and then
        // logs an empty "Bad header".
        // Uninitialised: zeroing 8 KiB per request would cost more than the
        // parse itself.  The parser writes the buffer before it reads it.
        let mut line = std::mem::MaybeUninit::<[c_char; sys::HUGE_STRING_LEN as usize]>::uninit();
        // SAFETY: the parser calls getsfunc synchronously with `cur`, which
        // outlives the call, and writes at most MAX_STRING_LEN (= HUGE_STRING_LEN) bytes to `line`.
        let rc = unsafe {
            sys::ap_scan_script_header_err_core_ex(
                self.r,
                line.as_mut_ptr() as *mut c_char,
                Some(getsfunc),
                &mut cur as *mut Cursor as *mut c_void,
                log::module_index(),
            )
        };
        crate::metrics::header_parse_done();
        rc
    }

    /// The Location that makes this a redirect, as mod_cgi decides it: only
    /// when the script set no status of its own.
    pub fn redirect_location(&self) -> Option<&CStr> {
        // SAFETY: `r` is live; table values are NUL-terminated pool strings.
        unsafe {
            if (*self.r).status != sys::HTTP_OK as c_int {
                return None;
            }
            let loc = sys::apr_table_get((*self.r).headers_out, c"Location".as_ptr());
            (!loc.is_null()).then(|| CStr::from_ptr(loc))
        }
    }

    fn write_body(&mut self, data: &[u8]) -> c_int {
        // apr_brigade_write copies into the brigade's 8 KiB heap buckets and
        // passes the brigade down the filter chain whenever they fill, so a
        // script's output never accumulates in the server.
        // SAFETY: `bb` and `r` are live for the request.
        let rv = unsafe {
            sys::apr_brigade_write(
                self.bb,
                Some(sys::ap_filter_flush),
                (*self.r).output_filters as *mut c_void,
                data.as_ptr() as *const c_char,
                data.len(),
            )
        };
        if rv != 0 {
            self.client_gone(rv);
            return -1;
        }
        data.len() as c_int
    }

    #[cold]
    #[inline(never)]
    fn client_gone(&mut self, rv: sys::apr_status_t) {
        self.phase = Phase::ClientGone;
        log::rerror(self.r, sys::APLOG_INFO, rv, &format!("{}: writing to the client failed", self.filename()));
        // SAFETY: `bb` is live; dropping what could not be sent.
        unsafe { sys::brigade_cleanup(self.bb) };
    }

    fn flush(&mut self) -> c_int {
        match self.phase {
            Phase::Body => {
                // SAFETY: `bb` and `r` are live for the request.
                let rv = unsafe {
                    let rv = sys::ap_fflush((*self.r).output_filters, self.bb);
                    sys::brigade_cleanup(self.bb);
                    rv
                };
                if rv != 0 {
                    self.client_gone(rv);
                    return -1;
                }
                0
            }
            Phase::Headers | Phase::Discard => 0,
            Phase::BadHeaders | Phase::ClientGone => -1,
        }
    }

    /// Once the script is done: if the header block is still incomplete, let
    /// Apache's parser say so ("Premature end of script headers").
    pub fn finish_headers(&mut self) -> c_int {
        let block = std::mem::take(&mut self.hdr);
        let status = self.parse_headers(&block);
        self.header_status = status;
        self.fail_headers();
        status
    }

    /// Sends the rest of the body and the end of the stream.
    pub fn finish_body(&mut self) -> c_int {
        // SAFETY: `bb` and `r` are live; the EOS bucket comes from the
        // connection's allocator like the brigade.
        unsafe {
            sys::brigade_insert_tail(self.bb, sys::apr_bucket_eos_create((*self.bb).bucket_alloc));
            let rv = sys::ap_pass_brigade((*self.r).output_filters, self.bb);
            sys::brigade_cleanup(self.bb);
            if rv != 0 {
                self.client_gone(rv);
            }
        }
        sys::OK as c_int
    }

    /// Drops buffered body that was never passed on (the response becomes an
    /// error instead).
    pub fn discard_body(&mut self) {
        // SAFETY: `bb` is live.
        unsafe { sys::brigade_cleanup(self.bb) };
    }

    pub fn filename(&self) -> String {
        // SAFETY: `r` is live; r->filename is set for a mapped script.
        unsafe {
            let f = (*self.r).filename;
            if f.is_null() {
                String::new()
            } else {
                CStr::from_ptr(f).to_string_lossy().into_owned()
            }
        }
    }
}

/// Where the block ends: the index just past the first empty line (LF or
/// CRLF), searching from `from`.
fn header_end(buf: &[u8], from: usize) -> Option<usize> {
    // The block may also be empty: a blank line right at the start.
    if from == 0 {
        if buf.starts_with(b"\n") {
            return Some(1);
        }
        if buf.starts_with(b"\r\n") {
            return Some(2);
        }
    }
    let mut i = from;
    while let Some(off) = find_byte(buf.get(i..)?, b'\n') {
        let nl = i + off;
        match buf.get(nl + 1) {
            Some(b'\n') => return Some(nl + 2),
            Some(b'\r') if buf.get(nl + 2) == Some(&b'\n') => return Some(nl + 3),
            _ => i = nl + 1,
        }
    }
    None
}

/// The first `b` in `hay`.  libc's memchr: the vectorised search costs a few
/// instructions per line where a byte loop costs a few per byte, and header
/// lines are scanned on every request.
fn find_byte(hay: &[u8], b: u8) -> Option<usize> {
    // SAFETY: memchr reads at most hay.len() bytes from hay, which are valid;
    // a non-null result points into hay.
    let p = unsafe { libc::memchr(hay.as_ptr() as *const c_void, b as c_int, hay.len()) };
    (!p.is_null()).then(|| p as usize - hay.as_ptr() as usize)
}

struct Cursor<'a> {
    data: &'a [u8],
    pos: usize,
}

/// Line reader for ap_scan_script_header_err_core_ex, with the semantics of
/// Apache's own brigade reader: a line ends at LF (not stored), CRs are
/// dropped, at most len-1 bytes, NUL-terminated; 0 when no data is left.  A
/// line that fills the buffer leaves its LF unread, as Apache's does.
unsafe extern "C" fn getsfunc(buf: *mut c_char, len: c_int, arg: *mut c_void) -> c_int {
    let cur = &mut *(arg as *mut Cursor);
    if cur.pos >= cur.data.len() || len <= 0 {
        return 0;
    }
    let max = len as usize - 1;
    let rest = &cur.data[cur.pos..];
    let end = find_byte(rest, b'\n').unwrap_or(rest.len());
    // Copied run by run between CRs: a usual line is one run and its
    // trailing CR, found with two memchr and stored with one copy.
    let (mut n, mut i) = (0, 0);
    while n < max {
        if i == end {
            i += usize::from(end < rest.len()); // the LF
            break;
        }
        let run = &rest[i..end];
        let cr = find_byte(run, b'\r').unwrap_or(run.len());
        let take = cr.min(max - n);
        ptr::copy_nonoverlapping(run.as_ptr(), (buf as *mut u8).add(n), take);
        n += take;
        i += take;
        if take == cr && cr < run.len() && n < max {
            i += 1; // the CR
        }
    }
    *buf.add(n) = 0;
    cur.pos += i;
    1
}

// ---- The functions scripts call ------------------------------------------
//
// Scripts call the exported names (lwrite, ...), which are trampolines into
// the C wrappers in shim.c; those call the rs_* functions below through the
// table handed over at child_init (guard::RsApi).

/// Writes `len` bytes of CGI output.  Returns `len`, or -1 when the output
/// cannot be used (client gone, bad headers, no request on this thread).
pub unsafe extern "C" fn rs_lwrite(buf: *const c_void, len: usize) -> c_int {
    let Some(req) = current() else { return -1 };
    if len == 0 {
        return 0;
    }
    if buf.is_null() || len > c_int::MAX as usize {
        return -1;
    }
    req.write(std::slice::from_raw_parts(buf as *const u8, len))
}

/// Pushes buffered body output to the client now.
pub unsafe extern "C" fn rs_lflush() -> c_int {
    match current() {
        Some(req) => req.flush(),
        None => -1,
    }
}

/// The client's host name (double-reverse DNS, looked up on first call), or
/// its IP address when the lookup fails.
pub unsafe extern "C" fn rs_get_remote_host() -> *const c_char {
    let Some(req) = current() else { return ptr::null() };
    let r = req.r;
    let host = sys::ap_get_useragent_host(r, sys::REMOTE_DOUBLE_REV as c_int, ptr::null_mut());
    if host.is_null() {
        (*r).useragent_ip
    } else {
        host
    }
}

/// Length of the body handed to processfunc.
pub unsafe extern "C" fn rs_linput_length() -> usize {
    current().map_or(0, |req| req.input_len)
}

/// Exports `$name` as a tail jump to the C wrapper `$target`: the caller's
/// registers and stack arrive untouched (varargs included), and, being a
/// Rust `#[no_mangle]` function, it is exported from the cdylib.
macro_rules! export_trampoline {
    ($name:ident => $target:ident) => {
        unsafe extern "C" {
            fn $target();
        }
        #[cfg(target_arch = "x86_64")]
        #[unsafe(naked)]
        #[no_mangle]
        pub unsafe extern "C" fn $name() {
            core::arch::naked_asm!("jmp {0}", sym $target)
        }
        #[cfg(target_arch = "aarch64")]
        #[unsafe(naked)]
        #[no_mangle]
        pub unsafe extern "C" fn $name() {
            core::arch::naked_asm!("b {0}", sym $target)
        }
    };
}

export_trampoline!(lwrite => libcgi_c_lwrite);
export_trampoline!(lputs => libcgi_c_lputs);
export_trampoline!(lprintf => libcgi_c_lprintf);
export_trampoline!(lflush => libcgi_c_lflush);
export_trampoline!(get_remote_host => libcgi_c_get_remote_host);
export_trampoline!(linput_length => libcgi_c_linput_length);
