//! The bad inputs of the README's "Bad input" table that no other test
//! shows: each gets a clear status and at most one error-log line naming the
//! script (none when Apache refuses the request before the module sees it),
//! and the server process is unharmed (the next good request is served by
//! the same process, no child died).
mod common;

use common::*;
use std::fs;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

fn raw(a: &Apache, bytes: &[u8]) -> (u16, Vec<u8>) {
    let mut s = TcpStream::connect(("127.0.0.1", a.port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.write_all(bytes).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let status = String::from_utf8_lossy(&out).split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    (status, out)
}

fn lines_with<'a>(log: &'a str, what: &str) -> Vec<&'a str> {
    log.lines().filter(|l| l.contains(what)).collect()
}

/// The process that served before serves after, and nobody died.
fn unharmed(a: &Apache, pid_before: &str) {
    let r = a.get("/libcgi-bin/fault.so");
    assert_eq!(r.status, 200);
    assert_eq!(r.text().rsplit('=').next().unwrap(), pid_before, "another server process answered");
    assert!(dead_children(&a.error_log()).is_empty(), "a server process died:\n{}", a.error_log());
}

fn server(mpm: Mpm, extra: &str) -> (Apache, String) {
    let a = Apache::start(Config::new(mpm).extra(extra));
    a.install("fault.so", "fault", &[]);
    let pid = a.get("/libcgi-bin/fault.so").text().rsplit('=').next().unwrap().to_string();
    (a, pid)
}

/// A valid shared object cut in half, and an empty file: 500, one line.
fn truncated_and_empty_objects(mpm: Mpm) {
    let (a, pid) = server(mpm, "");
    let whole = fs::read(a.bin.join("fault.so")).unwrap();
    for (name, bytes) in [("half.so", &whole[..whole.len() / 2]), ("empty.so", &whole[..0])] {
        let tmp = a.bin.join(format!(".{name}"));
        fs::write(&tmp, bytes).unwrap();
        chmod(&tmp, 0o755);
        fs::rename(&tmp, a.bin.join(name)).unwrap();
        assert_eq!(a.get(&format!("/libcgi-bin/{name}")).status, 500, "{name}");
        let why =
            if name == "half.so" { "not a loadable shared object: truncated" } else { "not a loadable shared object" };
        let log = a.wait_log(name, |l| l.contains(&format!("{name}: cannot load script: {why}")));
        assert_eq!(lines_with(&log, name).len(), 1, "one line for {name}:\n{log}");
    }
    unharmed(&a, &pid);
}

/// Path escapes in the URL never reach the module: Apache answers 400
/// (dot segments above the root) or 404, and no libcgi line is written.
fn path_escapes_in_the_url(mpm: Mpm) {
    let (a, pid) = server(mpm, "");
    for path in
        ["/libcgi-bin/../../../etc/passwd", "/libcgi-bin/%2e%2e/%2e%2e/httpd.conf", "/libcgi-bin/..%2f..%2fhttpd.conf"]
    {
        let (st, _) = raw(&a, format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes());
        assert!(st == 400 || st == 404, "{path}: {st}");
    }
    assert!(lines_with(&a.error_log(), "[libcgi:").is_empty(), "{}", a.error_log());
    unharmed(&a, &pid);
}

/// A request header line over LimitRequestFieldSize and a header block of
/// more than LimitRequestFields lines: Apache's 400 before the module.
fn huge_request_headers(mpm: Mpm) {
    let (a, pid) = server(mpm, "");
    let long = format!(
        "GET /libcgi-bin/fault.so HTTP/1.1\r\nHost: x\r\nX-Long: {}\r\nConnection: close\r\n\r\n",
        "a".repeat(9000)
    );
    assert_eq!(raw(&a, long.as_bytes()).0, 400);
    let many: String = (0..150).map(|i| format!("X-H{i}: v\r\n")).collect();
    let many = format!("GET /libcgi-bin/fault.so HTTP/1.1\r\nHost: x\r\n{many}Connection: close\r\n\r\n");
    assert_eq!(raw(&a, many.as_bytes()).0, 400);
    assert!(lines_with(&a.error_log(), "[libcgi:").is_empty(), "{}", a.error_log());
    unharmed(&a, &pid);
}

/// Content-Length: 10 GiB with LimitRequestBody 1 MiB: 413 at once, without
/// waiting for (or reading) a byte of the body; a chunked body of more than
/// the limit: 413 once the limit is passed.  Apache's line for it is at
/// LogLevel info (as for mod_cgi), so this server logs at info.
fn ten_gib_content_length(mpm: Mpm) {
    let mut cfg = Config::new(mpm).extra("LimitRequestBody 1048576");
    cfg.loglevel = "info".into();
    let a = Apache::start(cfg);
    a.install("fault.so", "fault", &[]);
    let pid = a.get("/libcgi-bin/fault.so").text().rsplit('=').next().unwrap().to_string();
    let t0 = Instant::now();
    let req =
        "POST /libcgi-bin/fault.so HTTP/1.1\r\nHost: x\r\nContent-Length: 10737418240\r\nConnection: close\r\n\r\n";
    assert_eq!(raw(&a, req.as_bytes()).0, 413);
    assert!(t0.elapsed() < Duration::from_secs(5), "took {:?}", t0.elapsed());
    a.wait_log("Apache's limit line", |l| l.contains("10737418240") && l.contains("larger than the configured limit"));
    let log = a.wait_log("the module's line", |l| {
        l.contains("fault.so: request body not read: refused by Apache's input filters")
    });
    assert_eq!(lines_with(&log, "[libcgi:").len(), 1, "{log}");
    // A chunked body over the limit is found while the module reads it: 413
    // and the module's one line beside Apache's.
    let mut chunked =
        b"POST /libcgi-bin/fault.so HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
            .to_vec();
    for _ in 0..1100 {
        chunked.extend_from_slice(b"400\r\n");
        chunked.extend_from_slice(&[b'y'; 1024]);
        chunked.extend_from_slice(b"\r\n");
    }
    assert_eq!(raw(&a, &chunked).0, 413);
    let log = a.wait_log("the module's second line", |l| lines_with(l, "request body not read: refused by").len() == 2);
    assert_eq!(lines_with(&log, "[libcgi:").len(), 2, "{log}");
    unharmed(&a, &pid);
}

/// A chunked body that stops arriving: the read times out (Timeout 2 here),
/// 408 without running the script, one line (before: no line at all).  One
/// that never ends is cut at LimitRequestBody: 413 (core.rs shows it).
fn chunked_body_that_never_ends(mpm: Mpm) {
    let (a, pid) = server(mpm, "Timeout 2\nLibCGITimeout 10");
    let t0 = Instant::now();
    let req = "POST /libcgi-bin/fault.so?mode=segv HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n";
    let (st, _) = raw(&a, req.as_bytes());
    let took = t0.elapsed();
    assert_eq!(st, 408);
    assert!(took < Duration::from_secs(8), "took {took:?}");
    let log = a.wait_log("the module's line", |l| {
        l.contains("fault.so: request body not read: the client stopped sending it")
    });
    assert_eq!(lines_with(&log, "[libcgi:").len(), 1, "{log}");
    // The script never ran (it would have faulted and said so).
    assert!(!a.error_log().contains("processfunc signal"), "{}", a.error_log());
    unharmed(&a, &pid);
}

/// Invalid UTF-8 in a request header's value reaches getenv byte for byte;
/// NUL in a header is Apache's 400.
fn invalid_utf8_and_nul_in_requests(mpm: Mpm) {
    let a = Apache::start(Config::new(mpm));
    a.install("env.so", "envdump", &[]);
    let mut req =
        b"GET /libcgi-bin/env.so?q=%ff%fe HTTP/1.1\r\nHost: x\r\nX-Token: a\xff\xfeb\xc0\r\nConnection: close\r\n\r\n"
            .to_vec();
    let (st, body) = raw(&a, &req);
    assert_eq!(st, 200);
    assert!(body.windows(16).any(|w| w == b"HTTP_X_TOKEN=a\xff\xfe"), "{}", String::from_utf8_lossy(&body));
    req = b"GET /libcgi-bin/env.so HTTP/1.1\r\nHost: x\r\nX-Token: a\0b\r\nConnection: close\r\n\r\n".to_vec();
    assert_eq!(raw(&a, &req).0, 400);
    req = b"GET /libcgi-bin/env.so HTTP/1.1\r\nHost: x\r\nX-T\0ken: ab\r\nConnection: close\r\n\r\n".to_vec();
    assert_eq!(raw(&a, &req).0, 400);
    assert!(lines_with(&a.error_log(), "[libcgi:").is_empty(), "{}", a.error_log());
}

/// NUL bytes in a script's header lines: Apache's parser reads each line up
/// to its first NUL (mod_cgid reads the same program's output the same way,
/// compared here).  A NUL after the colon cuts the value; one before the
/// colon leaves a line without one: 500, Apache's "malformed header" line
/// naming the script, and the script is reloaded; a line that starts with a
/// NUL ends the header block (the rest of that line is dropped).
fn nul_in_script_headers(mpm: Mpm) {
    let mut cfg = Config::new(mpm);
    cfg.cgid = true;
    let a = Apache::start(cfg);
    a.install("echo.so", "echo_out", &[]);
    build_cgi(&a.dir.join("cgi-bin"), "echo.so", "echo_out");
    let post = |path: &str, body: &[u8]| {
        let mut req =
            format!("POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len())
                .into_bytes();
        req.extend_from_slice(body);
        let (st, out) = raw(&a, &req);
        (st, String::from_utf8_lossy(&out).into_owned())
    };
    // (output, status, what the response shows)
    let cases: [(&[u8], u16, &str); 3] = [
        (b"Content-Type: text/plain\r\nX-A: a\0b\r\n\r\nbody", 200, "\r\nX-A: a\r\n"),
        (b"Content-Type: text/plain\r\nX\0-A: ab\r\n\r\nbody", 500, ""),
        // The NUL line is the end of the block: the body is what follows it.
        (b"Content-Type: text/plain\r\n\0X-A: ab\r\n\r\nbody", 200, "text/plain\r\n\r\n\r\nbody"),
    ];
    for (i, (body, want, shows)) in cases.iter().enumerate() {
        let (st, resp) = post("/libcgi-bin/echo.so", body);
        let (cst, _) = post("/cgi-bin/echo.so", body);
        assert_eq!(st, *want, "case {i}: {resp:?}\n{}", a.error_log());
        assert_eq!(st, cst, "case {i}: mod_cgid answers {cst}, mod_libcgi {st}");
        assert!(resp.contains(shows), "case {i}: {resp:?}");
    }
    let log = a.wait_log("the malformed header line", |l| l.contains("malformed header from script 'echo.so'"));
    let ours: Vec<_> = log.lines().filter(|l| l.contains("/bin/echo.so") || l.contains("'echo.so'")).collect();
    assert!(ours.len() <= 2, "one line per server for the bad line: {ours:?}");
    assert!(dead_children(&log).is_empty(), "{log}");
}

/// Bytes that are not UTF-8 in CGI variables reach getenv as they came
/// (PATH_INFO decoded from %ff, the query string as sent); a %00 in the path
/// is Apache's 404 before the module runs (ap_unescape_url refuses it).
fn invalid_utf8_and_nul_in_cgi_variables(mpm: Mpm) {
    let a = Apache::start(Config::new(mpm));
    a.install("env.so", "envdump", &[]);
    let get = |path: &str| raw(&a, format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes());
    let (st, body) = get("/libcgi-bin/env.so/a%ffb?q=%ff%00");
    assert_eq!(st, 200, "{}", String::from_utf8_lossy(&body));
    assert!(body.windows(14).any(|w| w == b"PATH_INFO=/a\xffb"), "{}", String::from_utf8_lossy(&body));
    assert!(body.windows(18).any(|w| w == b"QUERY_STRING=q=%ff"), "{}", String::from_utf8_lossy(&body));
    let (st, _) = get("/libcgi-bin/env.so/a%00b");
    assert_eq!(st, 404);
    assert!(lines_with(&a.error_log(), "[libcgi:").is_empty(), "{}", a.error_log());
}

/// A script file whose name is not UTF-8: served, and its log lines name it
/// (lossily) instead of failing.
fn invalid_utf8_in_a_script_name(mpm: Mpm) {
    use std::os::unix::ffi::OsStrExt;
    let (a, pid) = server(mpm, "");
    let name = std::ffi::OsStr::from_bytes(b"bad\xffname.so");
    let built = a.install("tmp-utf8.so", "fault", &[]);
    fs::rename(&built, a.bin.join(name)).unwrap();
    let r = a.get("/libcgi-bin/bad%ffname.so");
    assert_eq!(r.status, 200);
    assert_eq!(a.get("/libcgi-bin/bad%ffname.so?mode=segv").status, 500);
    // Isolated, the server logs its worker's death (README "Isolation").
    let fault = if isolated() {
        "name.so: processfunc crashed in its isolated worker (signal 11)"
    } else {
        "name.so: processfunc signal 11"
    };
    let log = a.wait_log("the fault line", |l| l.contains(fault));
    assert_eq!(lines_with(&log, "name.so").len(), 1, "{log}");
    unharmed(&a, &pid);
}

prefork_and_event!(
    truncated_and_empty_objects,
    path_escapes_in_the_url,
    huge_request_headers,
    ten_gib_content_length,
    chunked_body_that_never_ends,
    invalid_utf8_and_nul_in_requests,
    nul_in_script_headers,
    invalid_utf8_and_nul_in_cgi_variables,
    invalid_utf8_in_a_script_name,
);
