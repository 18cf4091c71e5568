//! Run a handler against a synthetic request in a plain `cargo test`, no
//! server: the same code path as under mod_libcgi (request, response,
//! panic catching), with in-memory versions of the module's functions.
//!
//! ```
//! use std::io::Write;
//!
//! fn greet(req: &libcgi::Request, resp: &mut libcgi::Response) -> libcgi::Result<()> {
//!     let name = req.query_pairs().into_iter().find(|(k, _)| k == "name").map(|(_, v)| v);
//!     match name {
//!         Some(n) => {
//!             resp.header("Content-Type", "text/plain")?;
//!             write!(resp, "hello, {n}\n")?;
//!         }
//!         None => {
//!             resp.status(400)?;
//!         }
//!     }
//!     Ok(())
//! }
//!
//! use libcgi::testing::TestRequest;
//! let ok = TestRequest::get("/greet.so?name=Ada%20L").run(greet);
//! assert_eq!((ok.status, ok.text().as_str()), (200, "hello, Ada L\n"));
//! assert_eq!(TestRequest::get("/greet.so").run(greet).status, 400);
//! ```
//!
//! A handler that panics or returns `Err` gives [`TestResponse::rc`] 101 or
//! 1 and `status` 500, as the server would (when nothing had been sent).

use crate::host::Host;
use crate::request::header_var;
use crate::runtime::{HttpOutcome, Outcome};
use crate::{Request, Response};
use std::cell::RefCell;
use std::ffi::{c_char, c_int, c_void, CStr, CString};

struct State {
    vars: Vec<(CString, CString)>,
    out: Vec<u8>,
    input_len: usize,
    remote_host: CString,
    flushes: usize,
}

thread_local! {
    static STATE: RefCell<Option<State>> = const { RefCell::new(None) };
}

unsafe extern "C" fn t_lwrite(buf: *const c_void, len: usize) -> c_int {
    // SAFETY: the caller (Response) passes `len` readable bytes.
    let data = unsafe { std::slice::from_raw_parts(buf.cast::<u8>(), len) };
    STATE.with(|s| match s.borrow_mut().as_mut() {
        Some(st) => {
            st.out.extend_from_slice(data);
            len as c_int
        }
        None => -1,
    })
}

unsafe extern "C" fn t_lflush() -> c_int {
    STATE.with(|s| {
        s.borrow_mut().as_mut().map_or(-1, |st| {
            st.flushes += 1;
            0
        })
    })
}

unsafe extern "C" fn t_getenv(name: *const c_char) -> *mut c_char {
    // SAFETY: the caller passes a NUL-terminated name.
    let name = unsafe { CStr::from_ptr(name) };
    STATE.with(|s| {
        s.borrow()
            .as_ref()
            .and_then(|st| st.vars.iter().find(|(k, _)| k.as_c_str() == name))
            // The value lives in the state until the run ends, as the
            // module's values live until the request ends.
            .map_or(std::ptr::null_mut(), |(_, v)| v.as_ptr() as *mut c_char)
    })
}

unsafe extern "C" fn t_get_remote_host() -> *const c_char {
    STATE.with(|s| s.borrow().as_ref().map_or(std::ptr::null(), |st| st.remote_host.as_ptr()))
}

unsafe extern "C" fn t_linput_length() -> usize {
    STATE.with(|s| s.borrow().as_ref().map_or(0, |st| st.input_len))
}

static TEST_HOST: Host = Host {
    lwrite: t_lwrite,
    lflush: t_lflush,
    getenv: t_getenv,
    get_remote_host: t_get_remote_host,
    linput_length: t_linput_length,
};

/// A synthetic request: CGI variables and a body.
#[derive(Clone, Debug)]
pub struct TestRequest {
    vars: Vec<(String, Vec<u8>)>,
    body: Option<Vec<u8>>,
    remote_host: String,
}

impl TestRequest {
    /// A request for `uri` (`/script.so/path/info?query`): sets
    /// `REQUEST_METHOD`, `REQUEST_URI`, `SCRIPT_NAME` (up to and including
    /// the first `.so`), `PATH_INFO`, `QUERY_STRING`, and the usual fixed
    /// ones (`GATEWAY_INTERFACE`, `SERVER_PROTOCOL`, `SERVER_NAME`,
    /// `SERVER_PORT`, `REMOTE_ADDR`, `HTTP_HOST`).
    pub fn new(method: &str, uri: &str) -> TestRequest {
        let (path, query) = uri.split_once('?').unwrap_or((uri, ""));
        let (script, info) = match path.find(".so") {
            Some(i) => path.split_at(i + 3),
            None => (path, ""),
        };
        let mut t = TestRequest { vars: Vec::new(), body: None, remote_host: "127.0.0.1".into() };
        for (k, v) in [
            ("GATEWAY_INTERFACE", "CGI/1.1"),
            ("SERVER_PROTOCOL", "HTTP/1.1"),
            ("SERVER_SOFTWARE", "libcgi::testing"),
            ("SERVER_NAME", "localhost"),
            ("SERVER_PORT", "80"),
            ("REMOTE_ADDR", "127.0.0.1"),
            ("HTTP_HOST", "localhost"),
            ("REQUEST_METHOD", method),
            ("REQUEST_URI", uri),
            ("SCRIPT_NAME", script),
            ("QUERY_STRING", query),
        ] {
            t = t.var(k, v);
        }
        if !info.is_empty() {
            t = t.var("PATH_INFO", info);
        }
        t
    }

    /// A GET request.
    pub fn get(uri: &str) -> TestRequest {
        TestRequest::new("GET", uri)
    }

    /// A POST request with `body` (`CONTENT_LENGTH` set; add a
    /// `Content-Type` with [`header`](TestRequest::header)).
    pub fn post(uri: &str, body: &[u8]) -> TestRequest {
        TestRequest::new("POST", uri).body(body)
    }

    /// Sets a CGI variable (replacing one of the same name).
    pub fn var(mut self, name: &str, value: impl AsRef<[u8]>) -> TestRequest {
        self.vars.retain(|(k, _)| k != name);
        self.vars.push((name.to_string(), value.as_ref().to_vec()));
        self
    }

    /// Sets a request header (`HTTP_*`, or `CONTENT_TYPE`/`CONTENT_LENGTH`).
    pub fn header(self, name: &str, value: &str) -> TestRequest {
        let mut v = Vec::new();
        header_var(name, &mut v);
        let var = String::from_utf8(v).expect("header names are ASCII");
        self.var(&var, value)
    }

    /// Sets the body (and `CONTENT_LENGTH`).
    pub fn body(mut self, body: &[u8]) -> TestRequest {
        self.body = Some(body.to_vec());
        self.var("CONTENT_LENGTH", body.len().to_string())
    }

    /// What `get_remote_host()` returns (default `127.0.0.1`).
    pub fn remote_host(mut self, host: &str) -> TestRequest {
        self.remote_host = host.into();
        self
    }

    /// Runs a native handler (as `script!(handler)` would).
    pub fn run<F, R>(&self, handler: F) -> TestResponse
    where
        F: FnOnce(&Request<'_>, &mut Response<'_>) -> R,
        R: Outcome,
    {
        // SAFETY: `input` is the state's body copy, `input_len` bytes.
        self.run_with(|input| unsafe { crate::runtime::process(&TEST_HOST, input, handler) })
    }

    /// Runs an `http` crate handler (as `script! { http: handler }` would).
    pub fn run_http<F, R>(&self, handler: F) -> TestResponse
    where
        F: FnOnce(http::Request<&[u8]>) -> R,
        R: HttpOutcome,
    {
        // SAFETY: as in `run`.
        self.run_with(|input| unsafe { crate::runtime::process_http(&TEST_HOST, input, handler) })
    }

    fn run_with(&self, call: impl FnOnce(*mut c_char) -> c_int) -> TestResponse {
        let vars = self
            .vars
            .iter()
            .filter_map(|(k, v)| Some((CString::new(k.as_str()).ok()?, CString::new(v.clone()).ok()?)))
            .collect();
        // The body NUL-terminated, as the module passes it.
        let mut body = self.body.clone().map(|mut b| {
            b.push(0);
            b
        });
        let input_len = self.body.as_ref().map_or(0, Vec::len);
        let state = State {
            vars,
            out: Vec::new(),
            input_len,
            remote_host: CString::new(self.remote_host.clone()).unwrap_or_default(),
            flushes: 0,
        };
        let prev = STATE.with(|s| s.borrow_mut().replace(state));
        assert!(prev.is_none(), "libcgi::testing: a run inside a run on one thread");
        let input = body.as_mut().map_or(std::ptr::null_mut(), |b| b.as_mut_ptr().cast());
        let rc = call(input);
        let st = STATE.with(|s| s.borrow_mut().take()).expect("test state");
        TestResponse::from_cgi(rc, st.out, st.flushes)
    }
}

/// What a handler produced, parsed as the server parses CGI output.
#[derive(Clone, Debug)]
pub struct TestResponse {
    /// processfunc's return: 0, 1 after `Err`, 101 after a panic.
    pub rc: c_int,
    /// The status: from `Status:`, 302 for an absolute `Location` without
    /// one, 500 when the run failed before any output, else 200.
    pub status: u16,
    /// Header lines in order (without `Status`).
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Vec<u8>,
    /// Everything written, as the script wrote it.
    pub raw: Vec<u8>,
    /// Calls of `lflush`.
    pub flushes: usize,
}

impl TestResponse {
    fn from_cgi(rc: c_int, raw: Vec<u8>, flushes: usize) -> TestResponse {
        let mut r = TestResponse { rc, status: 200, headers: Vec::new(), body: Vec::new(), raw, flushes };
        if let Some((headers, body)) = split_cgi(&r.raw) {
            r.headers = headers;
            r.body = body.to_vec();
        }
        if let Some(s) = r.header("Status") {
            r.status = s.split(' ').next().and_then(|n| n.parse().ok()).unwrap_or(500);
        } else if r.header("Location").is_some_and(|l| !l.starts_with('/')) {
            r.status = 302;
        }
        r.headers.retain(|(k, _)| !k.eq_ignore_ascii_case("status"));
        if rc != 0 && r.raw.is_empty() {
            r.status = 500;
        }
        r
    }

    /// The first header of that name (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    /// The body as text (lossy).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Header lines as (name, value).
pub type Headers = Vec<(String, String)>;

/// Splits CGI output into header lines and body: lines end with LF or CRLF,
/// the block with an empty line.  None when the block never ends.
pub fn split_cgi(raw: &[u8]) -> Option<(Headers, &[u8])> {
    let mut headers = Vec::new();
    let mut rest = raw;
    loop {
        let nl = rest.iter().position(|&b| b == b'\n')?;
        let line = &rest[..nl];
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        rest = &rest[nl + 1..];
        if line.is_empty() {
            return Some((headers, rest));
        }
        let text = String::from_utf8_lossy(line);
        let (k, v) = text.split_once(':').unwrap_or((&text, ""));
        headers.push((k.trim().to_string(), v.trim().to_string()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::response::{valid_header_name, valid_header_value};
    use crate::Error;
    use std::io::Write;

    #[test]
    fn header_validation() {
        for ok in ["Content-Type", "X-A_b.c~", "set-cookie"] {
            assert!(valid_header_name(ok), "{ok}");
        }
        for bad in ["", "Bad Name", "Bad:Name", "X\r\nY", "Ä", "a\0"] {
            assert!(!valid_header_name(bad), "{bad:?}");
        }
        for ok in [&b"text/plain; charset=utf-8"[..], b"a\tb", b"caf\xc3\xa9", b""] {
            assert!(valid_header_value(ok), "{ok:?}");
        }
        for bad in [&b"a\r\nSet-Cookie: x=1"[..], b"a\nb", b"a\rb", b"a\0b", b"\x7f", b"\x1b[31m"] {
            assert!(!valid_header_value(bad), "{bad:?}");
        }
    }

    #[test]
    fn injection_refused_and_reported() {
        let out = TestRequest::get("/t.so").run(|_: &Request, resp: &mut Response| -> crate::Result<()> {
            let e = resp.header("X-Evil", "1\r\nSet-Cookie: stolen=1").unwrap_err();
            assert!(matches!(e, Error::InvalidHeaderValue { .. }), "{e}");
            assert!(matches!(resp.header("Bad Name", "v"), Err(Error::InvalidHeaderName(_))));
            resp.header("Content-Type", "text/plain")?;
            resp.write_all(b"ok")?;
            Ok(())
        });
        assert_eq!(out.raw, b"Content-Type: text/plain\r\n\r\nok");
    }

    #[test]
    fn header_after_body_is_an_error() {
        let out = TestRequest::get("/t.so").run(|_: &Request, resp: &mut Response| {
            resp.write_all(b"body").unwrap();
            assert!(matches!(resp.header("X-Late", "1"), Err(Error::HeadersSent)));
            assert!(matches!(resp.status(404), Err(Error::HeadersSent)));
        });
        assert_eq!(out.raw, b"\r\nbody");
    }

    #[test]
    fn status_and_location() {
        let out = TestRequest::get("/t.so").run(|_: &Request, resp: &mut Response| -> crate::Result<()> {
            resp.status(201)?.header("Location", "http://example.com/x")?;
            Ok(())
        });
        assert_eq!(out.raw, b"Location: http://example.com/x\r\nStatus: 201 Created\r\n\r\n");
        assert_eq!(out.status, 201);
        let out = TestRequest::get("/t.so").run(|_: &Request, resp: &mut Response| resp.status(1000).map(|_| ()));
        assert_eq!((out.rc, out.status), (1, 500));
        let out = TestRequest::get("/t.so").run(|_: &Request, resp: &mut Response| -> crate::Result<()> {
            resp.status(599)?;
            Ok(())
        });
        assert_eq!(out.raw, b"Status: 599 Unknown\r\n\r\n");
    }

    #[test]
    fn panic_becomes_500_and_drops_buffered_output() {
        let out = TestRequest::get("/t.so").run(|_: &Request, resp: &mut Response| {
            resp.write_all(b"partial").unwrap();
            if resp.headers_sent() {
                panic!("boom {}", 42);
            }
        });
        assert_eq!((out.rc, out.status), (101, 500));
        assert!(out.raw.is_empty(), "buffered output must not go out after a panic");
        // A second run on the same thread works.
        let ok = TestRequest::get("/t.so").run(|_: &Request, resp: &mut Response| resp.write_all(b"x"));
        assert_eq!((ok.rc, ok.body.as_slice()), (0, &b"x"[..]));
    }

    #[test]
    fn variables_headers_and_binary_body() {
        let body = b"a\0b\0\xff".to_vec();
        let t = TestRequest::post("/t.so/extra/path?q=1&r=a+b", &body)
            .header("Content-Type", "application/octet-stream")
            .header("X-Token", "secret")
            .header("User-Agent", "ua/1");
        let out = t.run(|req: &Request, resp: &mut Response| -> crate::Result<()> {
            assert_eq!(req.method(), "POST");
            assert_eq!(req.path_info(), "/extra/path");
            assert_eq!(req.query_string(), "q=1&r=a+b");
            assert_eq!(req.query_pairs(), vec![("q".into(), "1".into()), ("r".into(), "a b".into())]);
            assert_eq!(req.header("x-token"), Some("secret"));
            assert_eq!(req.var("HTTP_X_TOKEN"), Some("secret"));
            assert_eq!(req.content_type(), Some("application/octet-stream"));
            assert_eq!(req.header("content-length"), Some("5"));
            assert!(req.headers().any(|h| h == ("user-agent", &b"ua/1"[..])));
            assert_eq!(req.var("NOPE"), None);
            assert_eq!(req.var("A\0B"), None);
            assert_eq!(req.var(&"X".repeat(500)), None);
            assert_eq!(req.remote_host(), Some("127.0.0.1"));
            resp.write_all(req.body())?;
            Ok(())
        });
        assert_eq!(out.body, body);
    }

    #[test]
    fn large_output_is_streamed_in_pieces() {
        let out = TestRequest::get("/t.so").run(|_: &Request, resp: &mut Response| -> std::io::Result<()> {
            let chunk = vec![b'z'; 1000];
            for _ in 0..100 {
                resp.write_all(&chunk)?;
            }
            resp.write_all(&vec![b'y'; 50_000])?;
            resp.flush()
        });
        assert_eq!(out.body.len(), 150_000);
        assert_eq!(out.flushes, 1);
        assert!(out.body[..100_000].iter().all(|&b| b == b'z') && out.body[100_000..].iter().all(|&b| b == b'y'));
    }

    #[test]
    fn split_cgi_accepts_lf_and_crlf() {
        let (h, b) = split_cgi(b"A: 1\nB:2\r\n\r\nbody\n").unwrap();
        assert_eq!(h, vec![("A".into(), "1".into()), ("B".into(), "2".into())]);
        assert_eq!(b, b"body\n");
        assert!(split_cgi(b"A: 1\n").is_none());
    }

    #[test]
    fn http_adapter() {
        let out = TestRequest::post("/api.so/v1?x=1", b"{}").header("Content-Type", "application/json").run_http(
            |req: http::Request<&[u8]>| {
                assert_eq!(req.method(), http::Method::POST);
                assert_eq!(req.uri().path(), "/api.so/v1");
                assert_eq!(req.uri().query(), Some("x=1"));
                assert_eq!(req.headers()["content-type"], "application/json");
                http::Response::builder()
                    .status(404)
                    .header("set-cookie", "a=1")
                    .header("set-cookie", "b=2")
                    .body(req.body().to_vec())
            },
        );
        assert_eq!(out.raw, b"set-cookie: a=1\r\nset-cookie: b=2\r\nStatus: 404 Not Found\r\n\r\n{}");
        let err = TestRequest::get("/api.so").run_http(|_| Err::<http::Response<&[u8]>, _>("no database"));
        assert_eq!((err.rc, err.status), (1, 500));
        // A URI or method the http crate refuses is the client's error.
        for t in [TestRequest::get("/api.so").var("REQUEST_URI", "/a b"), TestRequest::new("GE\tT", "/api.so")] {
            let out = t.run_http(|_| -> http::Response<&'static [u8]> { unreachable!("the handler must not run") });
            assert_eq!((out.rc, out.status, out.text().as_str()), (0, 400, "Bad Request\n"));
        }
    }
}
