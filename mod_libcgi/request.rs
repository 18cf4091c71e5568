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

/// Bytes of header block a script may write before the blank line.  Lines
/// are checked as they arrive (see `scan_block`), so only well-formed header
/// lines ever accumulate, as they do in mod_cgi's tables; a block of them
/// larger than this is a script emitting headers in a loop.
const MAX_HEADER_BLOCK: usize = 1024 * 1024;

/// Apache's parser reads a line into MAX_STRING_LEN - 1 bytes, of which its
/// brigade reader fills at most all but one: a line with this many bytes
/// (CRs do not count) fills the reader's buffer before its LF, and the
/// reader then reports the end of the output ("Premature end of script
/// headers", 500).
const LINE_FULL: usize = sys::HUGE_STRING_LEN as usize - 2; // MAX_STRING_LEN is HUGE_STRING_LEN

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
    /// Where the first line of `hdr` not yet checked by `scan_block` starts.
    hdr_line: usize,
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
            hdr_line: 0,
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
            if let Some(end) = header_end(data) {
                if end > MAX_HEADER_BLOCK {
                    return self.block_too_big();
                }
                let status = self.parse_headers(&data[..end]);
                return self.headers_parsed(status, &data[end..], data.len());
            }
        }
        self.buffer_headers(data)
    }

    /// The header block arrives in pieces: collect it, checking each line as
    /// it completes, so that a line Apache's parser refuses ends the headers
    /// as soon as it is written, not when the script is done.
    #[cold]
    #[inline(never)]
    fn buffer_headers(&mut self, data: &[u8]) -> c_int {
        self.hdr.extend_from_slice(data);
        match scan_block(&self.hdr, self.hdr_line) {
            Scan::More(line) => {
                self.hdr_line = line;
                if self.hdr.len() > MAX_HEADER_BLOCK {
                    return self.block_too_big();
                }
                data.len() as c_int
            }
            Scan::Bad(end) => {
                // Apache's parser stops at that line and logs it.
                let block = std::mem::take(&mut self.hdr);
                let status = self.parse_headers(&block[..end]);
                debug_assert_ne!(status, sys::OK as c_int);
                self.headers_parsed(status, &[], data.len())
            }
            // The limit is the block's, however it was written: the end may
            // come in the write that crosses it (an isolated worker's
            // output arrives in chunks of 252 KiB).
            Scan::End(end) if end > MAX_HEADER_BLOCK => self.block_too_big(),
            Scan::End(end) => {
                let rest = self.hdr.split_off(end);
                let block = std::mem::take(&mut self.hdr);
                let status = self.parse_headers(&block);
                self.headers_parsed(status, &rest, data.len())
            }
        }
    }

    #[cold]
    #[inline(never)]
    fn block_too_big(&mut self) -> c_int {
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
        -1
    }

    /// Acts on what Apache's parser said of the header block; `rest` is the
    /// body output that came with it.  As in mod_cgi, only a 500 is the
    /// script's fault; any other status is the answer to a condition of the
    /// request (ap_meets_conditions: 304, 412), and the output is not wanted.
    fn headers_parsed(&mut self, status: c_int, rest: &[u8], written: usize) -> c_int {
        self.header_status = status;
        if status == sys::OK as c_int {
            if self.redirect_location().is_some() {
                self.phase = Phase::Discard;
            } else {
                self.phase = Phase::Body;
                if !rest.is_empty() && self.write_body(rest) < 0 {
                    return -1;
                }
            }
        } else if status == sys::HTTP_INTERNAL_SERVER_ERROR as c_int {
            self.fail_headers();
            return -1;
        } else {
            self.phase = Phase::Discard;
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
        let status = unsafe {
            let status = sys::ap_scan_script_header_err_core_ex(
                self.r,
                line.as_mut_ptr() as *mut c_char,
                Some(getsfunc),
                &mut cur as *mut Cursor as *mut c_void,
                log::module_index(),
            );
            // As mod_cgi does (cgi_common.h): the script's own framing is not
            // the response's, or a script could send "Transfer-Encoding:
            // chunked" over a plain body and desynchronise the connection.
            // The core frames what is actually sent.  Two or three lookups
            // in small tables per request.
            let out = (*self.r).headers_out;
            if sys::apr_table_get(
                (*self.r).subprocess_env,
                c"ap_trust_cgilike_cl".as_ptr(), /* AP_TRUST_CGILIKE_CL_ENVVAR */
            )
            .is_null()
            {
                sys::apr_table_unset(out, c"Content-Length".as_ptr());
            }
            sys::apr_table_unset(out, c"Transfer-Encoding".as_ptr());
            status
        };
        crate::metrics::header_parse_done();
        status
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

/// Where the block ends: the index just past the line (up to and including
/// its LF) that Apache's parser takes for the end of the headers.  The
/// parser sees a line with its CRs removed (anywhere in it) and up to its
/// first NUL, so the end is the first line that is empty once its CRs are
/// gone, or whose first other byte is a NUL.  Whether the lines before it
/// are acceptable is the parser's to say.
fn header_end(buf: &[u8]) -> Option<usize> {
    let mut s = 0;
    loop {
        let mut j = s;
        while buf.get(j) == Some(&b'\r') {
            j += 1;
        }
        match *buf.get(j)? {
            b'\n' => return Some(j + 1),
            0 => return find_byte(&buf[j..], b'\n').map(|o| j + o + 1),
            _ => s = j + find_byte(&buf[j..], b'\n')? + 1,
        }
    }
}

/// What the header lines collected so far say, from the line at `from` on.
#[derive(Debug, PartialEq, Eq)]
enum Scan {
    /// The block ends just before this index (see `header_end`).
    End(usize),
    /// The line ending before this index (or still incomplete, then the
    /// index is the end of the data) is one Apache's parser refuses: it has
    /// no ':' before its first NUL, or it fills the parser's line buffer.
    Bad(usize),
    /// All complete lines are good; the incomplete one starts here.
    More(usize),
}

/// Checks the complete lines from `from` (a line start) as Apache's parser
/// would read them.  Cold: used only when a block arrives in pieces.
fn scan_block(buf: &[u8], from: usize) -> Scan {
    let mut s = from;
    loop {
        let rest = &buf[s..];
        let lf = find_byte(rest, b'\n');
        let line = &rest[..lf.unwrap_or(rest.len())];
        let crs = line.iter().filter(|&&b| b == b'\r').count();
        if line.len() - crs >= LINE_FULL {
            return Scan::Bad(lf.map_or(buf.len(), |lf| s + lf + 1));
        }
        let Some(lf) = lf else { return Scan::More(s) };
        match line.iter().find(|&&b| b != b'\r') {
            None | Some(0) => return Scan::End(s + lf + 1),
            Some(_) => {}
        }
        let text = &line[..find_byte(line, 0).unwrap_or(line.len())];
        if find_byte(text, b':').is_none() {
            return Scan::Bad(s + lf + 1);
        }
        s += lf + 1;
    }
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

/// Line reader for ap_scan_script_header_err_core_ex, with exactly the
/// semantics of Apache's own brigade reader (getsfunc_BRIGADE in
/// util_script.c, which mod_cgi and mod_cgid use): bytes up to the LF are
/// stored without their CRs, at most len-1 of them, NUL-terminated.  It
/// returns 1 only when it consumed the LF: a line that fills the buffer, or
/// data that ends without a LF, returns 0, which the parser takes for the end
/// of the output (500).  A CR or LF met once the buffer is full stays unread.
unsafe extern "C" fn getsfunc(buf: *mut c_char, len: c_int, arg: *mut c_void) -> c_int {
    // Called by Apache's parser: a panic here must not unwind through it.
    // 0 is "no more output", which the parser answers with a 500.
    crate::panic::catch(|| getsfunc_(buf, len, arg)).unwrap_or_else(|()| {
        crate::panic::in_hook("header reader", std::ptr::null());
        0
    })
}

unsafe fn getsfunc_(buf: *mut c_char, len: c_int, arg: *mut c_void) -> c_int {
    let cur = &mut *(arg as *mut Cursor);
    if len <= 0 {
        return 0;
    }
    let max = len as usize - 1;
    let rest = &cur.data[cur.pos..];
    let lf = find_byte(rest, b'\n');
    let end = lf.unwrap_or(rest.len());
    // Copied run by run between CRs: a usual line is one run and its
    // trailing CR, found with two memchr and stored with one copy.
    let (mut n, mut i, mut done) = (0, 0, false);
    while n < max {
        if i == end {
            if lf.is_some() {
                i += 1;
                done = true;
            }
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
    c_int::from(done)
}

// ---- The functions scripts call ------------------------------------------
//
// Scripts call the exported names (lwrite, ...), which are trampolines into
// the C wrappers in shim.c; those call the rs_* functions below through the
// table handed over at child_init (guard::RsApi).

/// Writes `len` bytes of CGI output.  Returns `len`, or -1 when the output
/// cannot be used (client gone, bad headers, no request on this thread).
pub(crate) unsafe fn lwrite_impl(buf: *const c_void, len: usize) -> c_int {
    let Some(req) = current() else { return -1 };
    if len == 0 {
        return 0;
    }
    if buf.is_null() || len > c_int::MAX as usize {
        return -1;
    }
    let data = std::slice::from_raw_parts(buf as *const u8, len);
    #[cfg(feature = "fault-injection")]
    if data.starts_with(b"LIBCGI_PANIC") {
        panic!("fault injection: lwrite(\"LIBCGI_PANIC\")");
    }
    req.write(data)
}

/// Pushes buffered body output to the client now.
pub(crate) unsafe fn lflush_impl() -> c_int {
    match current() {
        Some(req) => req.flush(),
        None => -1,
    }
}

/// The client's host name (double-reverse DNS, looked up on first call), or
/// its IP address when the lookup fails.
pub(crate) unsafe fn get_remote_host_impl() -> *const c_char {
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
unsafe fn linput_length_impl() -> usize {
    current().map_or(0, |req| req.input_len)
}

// The entry points: a panic inside ends the script's call (crate::panic).
crate::panic::callback!(rs_lwrite => lwrite_impl(buf: *const c_void, len: usize) -> c_int, -1, "lwrite");
crate::panic::callback!(rs_lflush => lflush_impl() -> c_int, -1, "lflush");
crate::panic::callback!(rs_get_remote_host => get_remote_host_impl() -> *const c_char, ptr::null(), "get_remote_host");
crate::panic::callback!(rs_linput_length => linput_length_impl() -> usize, 0, "linput_length");

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
