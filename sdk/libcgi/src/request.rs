//! The request as a script sees it: CGI variables and the body.

use crate::host::Host;
use std::ffi::{c_char, CStr};
use std::marker::PhantomData;

/// One request, valid for one call of the handler.
///
/// Everything is borrowed from the host: a variable is the `getenv` value
/// itself (no copy), the body is the buffer the module passed to
/// `processfunc`.  `Request` is `!Send`/`!Sync`: the host's functions work
/// only on the request's thread.
pub struct Request<'r> {
    host: &'r Host,
    body: &'r [u8],
    _not_send: PhantomData<*const ()>,
}

/// Header names the [`headers`](Request::headers) list and the
/// [`adapter`](crate::adapter) look for, with the CGI variable of each.  CGI
/// gives a script no list of the request's headers, only `getenv` by name,
/// so other headers are read with [`Request::header`].
pub const KNOWN_HEADERS: &[(&str, &CStr)] = &[
    ("accept", c"HTTP_ACCEPT"),
    ("accept-charset", c"HTTP_ACCEPT_CHARSET"),
    ("accept-encoding", c"HTTP_ACCEPT_ENCODING"),
    ("accept-language", c"HTTP_ACCEPT_LANGUAGE"),
    ("authorization", c"HTTP_AUTHORIZATION"),
    ("cache-control", c"HTTP_CACHE_CONTROL"),
    ("connection", c"HTTP_CONNECTION"),
    ("content-length", c"CONTENT_LENGTH"),
    ("content-type", c"CONTENT_TYPE"),
    ("cookie", c"HTTP_COOKIE"),
    ("dnt", c"HTTP_DNT"),
    ("forwarded", c"HTTP_FORWARDED"),
    ("from", c"HTTP_FROM"),
    ("host", c"HTTP_HOST"),
    ("if-match", c"HTTP_IF_MATCH"),
    ("if-modified-since", c"HTTP_IF_MODIFIED_SINCE"),
    ("if-none-match", c"HTTP_IF_NONE_MATCH"),
    ("if-range", c"HTTP_IF_RANGE"),
    ("if-unmodified-since", c"HTTP_IF_UNMODIFIED_SINCE"),
    ("origin", c"HTTP_ORIGIN"),
    ("pragma", c"HTTP_PRAGMA"),
    ("range", c"HTTP_RANGE"),
    ("referer", c"HTTP_REFERER"),
    ("te", c"HTTP_TE"),
    ("upgrade", c"HTTP_UPGRADE"),
    ("user-agent", c"HTTP_USER_AGENT"),
    ("via", c"HTTP_VIA"),
    ("x-forwarded-for", c"HTTP_X_FORWARDED_FOR"),
    ("x-forwarded-host", c"HTTP_X_FORWARDED_HOST"),
    ("x-forwarded-proto", c"HTTP_X_FORWARDED_PROTO"),
    ("x-real-ip", c"HTTP_X_REAL_IP"),
    ("x-requested-with", c"HTTP_X_REQUESTED_WITH"),
];

/// Calls `f` with `name` as a NUL-terminated C string; None when the name
/// has a NUL (no variable can have such a name).
fn with_cstr<T>(name: &[u8], f: impl FnOnce(*const c_char) -> Option<T>) -> Option<T> {
    if name.contains(&0) {
        return None;
    }
    let mut buf = [0u8; 96];
    if name.len() < buf.len() {
        buf[..name.len()].copy_from_slice(name);
        f(buf.as_ptr().cast())
    } else {
        let mut v = Vec::with_capacity(name.len() + 1);
        v.extend_from_slice(name);
        v.push(0);
        f(v.as_ptr().cast())
    }
}

/// The CGI variable that carries header `name`: `CONTENT_TYPE`,
/// `CONTENT_LENGTH`, or `HTTP_` and the name upper-cased with `-` as `_`.
/// Returned in `buf`, NUL-free.
pub(crate) fn header_var(name: &str, buf: &mut Vec<u8>) {
    buf.clear();
    if name.eq_ignore_ascii_case("content-type") {
        buf.extend_from_slice(b"CONTENT_TYPE");
    } else if name.eq_ignore_ascii_case("content-length") {
        buf.extend_from_slice(b"CONTENT_LENGTH");
    } else {
        buf.extend_from_slice(b"HTTP_");
        buf.extend(name.bytes().map(|b| if b == b'-' { b'_' } else { b.to_ascii_uppercase() }));
    }
}

impl std::fmt::Debug for Request<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Request")
            .field("method", &self.method())
            .field("path_info", &self.path_info())
            .field("query_string", &self.query_string())
            .field("body_len", &self.body.len())
            .finish()
    }
}

impl<'r> Request<'r> {
    pub(crate) fn new(host: &'r Host, body: &'r [u8]) -> Request<'r> {
        Request { host, body, _not_send: PhantomData }
    }

    /// A CGI variable's raw bytes (`getenv`), borrowed for the request.
    pub fn var_bytes(&self, name: &str) -> Option<&'r [u8]> {
        with_cstr(name.as_bytes(), |n| {
            // SAFETY: `n` is NUL-terminated; the host's getenv returns NULL or
            // a NUL-terminated value that lives until the request ends (the
            // module's table is in request-pool memory; libc's environment
            // is never freed under libcgi-run).
            let p = unsafe { (self.host.getenv)(n) };
            // SAFETY: as above.
            (!p.is_null()).then(|| unsafe { CStr::from_ptr(p) }.to_bytes())
        })
    }

    /// A CGI variable (`getenv`), borrowed for the request; None when it is
    /// not set or not UTF-8 (then use [`var_bytes`](Request::var_bytes)).
    pub fn var(&self, name: &str) -> Option<&'r str> {
        self.var_bytes(name).and_then(|b| std::str::from_utf8(b).ok())
    }

    /// `REQUEST_METHOD` (`GET` when unset).
    pub fn method(&self) -> &'r str {
        self.var("REQUEST_METHOD").unwrap_or("GET")
    }

    /// `PATH_INFO`: the part of the URL path after the script's name, `""`
    /// when there is none.
    pub fn path_info(&self) -> &'r str {
        self.var("PATH_INFO").unwrap_or("")
    }

    /// `QUERY_STRING` (still URL-encoded), `""` when there is none.
    pub fn query_string(&self) -> &'r str {
        self.var("QUERY_STRING").unwrap_or("")
    }

    /// `SCRIPT_NAME`: the URL path of the script.
    pub fn script_name(&self) -> &'r str {
        self.var("SCRIPT_NAME").unwrap_or("")
    }

    /// The request's `Content-Type`, if it had one.
    pub fn content_type(&self) -> Option<&'r str> {
        self.var("CONTENT_TYPE")
    }

    /// A request header by name, case-insensitive (`"User-Agent"` reads
    /// `HTTP_USER_AGENT`).  Apache passes no `Authorization` header to CGI
    /// unless configured to, and drops header names with characters other
    /// than letters, digits and `-`.
    pub fn header(&self, name: &str) -> Option<&'r str> {
        if let Some((_, var)) = KNOWN_HEADERS.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)) {
            return self.cvar(var).and_then(|b| std::str::from_utf8(b).ok());
        }
        let mut buf = Vec::new();
        header_var(name, &mut buf);
        // SAFETY: header_var makes ASCII bytes only out of a &str.
        let var = unsafe { std::str::from_utf8_unchecked(&buf) };
        self.var(var)
    }

    /// The request headers of [`KNOWN_HEADERS`] that are present, as
    /// (lower-case name, raw value).
    pub fn headers(&self) -> impl Iterator<Item = (&'static str, &'r [u8])> + '_ {
        KNOWN_HEADERS.iter().filter_map(move |&(n, var)| self.cvar(var).map(|v| (n, v)))
    }

    /// A variable by C name: no copy of the name.
    fn cvar(&self, name: &CStr) -> Option<&'r [u8]> {
        // SAFETY: as in `var_bytes`.
        let p = unsafe { (self.host.getenv)(name.as_ptr()) };
        // SAFETY: as in `var_bytes`.
        (!p.is_null()).then(|| unsafe { CStr::from_ptr(p) }.to_bytes())
    }

    /// The body: exactly `linput_length()` bytes, NUL bytes included; empty
    /// when the request had none.
    pub fn body(&self) -> &'r [u8] {
        self.body
    }

    /// The client's host name (reverse DNS, double-reverse checked, looked
    /// up now), or its address when the lookup fails.
    pub fn remote_host(&self) -> Option<&'r str> {
        // SAFETY: the host returns NULL or a NUL-terminated string valid
        // until the request ends.
        let p = unsafe { (self.host.get_remote_host)() };
        // SAFETY: as above.
        (!p.is_null()).then(|| unsafe { CStr::from_ptr(p) }.to_str().ok()).flatten()
    }

    /// The query string's `key=value` pairs, percent-decoded
    /// ([`form_urlencoded`]; invalid UTF-8 becomes U+FFFD).
    pub fn query_pairs(&self) -> Vec<(String, String)> {
        decode_urlencoded(self.query_string().as_bytes())
    }

    /// A URL-encoded body's (`application/x-www-form-urlencoded`) pairs,
    /// percent-decoded ([`form_urlencoded`]).
    pub fn form_pairs(&self) -> Vec<(String, String)> {
        decode_urlencoded(self.body)
    }
}

fn decode_urlencoded(s: &[u8]) -> Vec<(String, String)> {
    form_urlencoded::parse(s).map(|(k, v)| (k.into_owned(), v.into_owned())).collect()
}
