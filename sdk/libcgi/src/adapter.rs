//! The [`http`] crate adapter: `libcgi::script! { http: handler }` serves a
//! `fn(http::Request<&[u8]>) -> http::Response<B>` (or a `Result` of one,
//! with any `Display` error, which becomes a 500 and a log line).
//!
//! ```
//! fn api(req: http::Request<&[u8]>) -> http::Response<Vec<u8>> {
//!     http::Response::builder()
//!         .header("content-type", "text/plain")
//!         .body(format!("{} {} ({} bytes)\n", req.method(), req.uri().path(), req.body().len()).into_bytes())
//!         .unwrap()
//! }
//! // libcgi::script! { http: api }
//!
//! let out = libcgi::testing::TestRequest::post("/api.so/items", b"abc").run_http(api);
//! assert_eq!(out.body, b"POST /api.so/items (3 bytes)\n");
//! ```
//!
//! The request has the method, the URI as the client sent it
//! (`REQUEST_URI`: path and query), the version, the headers of
//! [`KNOWN_HEADERS`] present in the request
//! (CGI offers no list of all headers: read others with
//! [`Request::header`](crate::Request::header) in a native handler) and the
//! body, borrowed.  The response's status, headers (several of one name
//! allowed: `Set-Cookie`) and body are written as CGI output; the status is
//! sent only when it is not 200.

use crate::request::Request;
pub use crate::request::KNOWN_HEADERS;
use crate::response::{Error, Response};
use std::io::Write;

/// Builds the `http::Request` for this request.
pub fn to_http<'r>(req: &Request<'r>) -> Result<http::Request<&'r [u8]>, http::Error> {
    let uri = match req.var("REQUEST_URI") {
        Some(u) if !u.is_empty() => u.to_string(),
        _ => {
            let q = req.query_string();
            let mut u = format!("{}{}", req.script_name(), req.path_info());
            if !q.is_empty() {
                u.push('?');
                u.push_str(q);
            }
            if u.is_empty() {
                u.push('/');
            }
            u
        }
    };
    let version = match req.var("SERVER_PROTOCOL") {
        Some("HTTP/1.0") => http::Version::HTTP_10,
        Some("HTTP/2.0") | Some("HTTP/2") => http::Version::HTTP_2,
        Some("HTTP/0.9") => http::Version::HTTP_09,
        _ => http::Version::HTTP_11,
    };
    let mut hreq = http::Request::builder().method(req.method()).uri(uri).version(version).body(req.body())?;
    let headers = hreq.headers_mut();
    for (name, value) in req.headers() {
        // The names are static, lower-case and valid; a value Apache let
        // through is valid too unless it has bytes http refuses (then the
        // header is left out rather than failing the request).
        if let Ok(v) = http::HeaderValue::from_bytes(value) {
            headers.append(http::HeaderName::from_static(name), v);
        }
    }
    Ok(hreq)
}

/// Writes an `http::Response` as the response.
pub fn write_http<B: AsRef<[u8]>>(hresp: &http::Response<B>, resp: &mut Response<'_>) -> Result<(), Error> {
    if hresp.status() != http::StatusCode::OK {
        resp.status(hresp.status().as_u16())?;
    }
    for (name, value) in hresp.headers() {
        resp.header(name.as_str(), value.as_bytes())?;
    }
    resp.write_all(hresp.body().as_ref())?;
    Ok(())
}
