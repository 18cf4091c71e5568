//! Issue 9, items 4, 5, 7 and 12: how a script's header block is read
//! (exactly as Apache's own CGI readers read it, compared with mod_cgid for
//! the same program), the statuses Apache's parser answers for conditional
//! requests, the directory trust is checked up to, and what a request body
//! costs in memory.  Prefork and event.

mod common;
use common::*;
use std::fs;
use std::time::Duration;

/// A server with mod_cgid besides mod_libcgi, and tests/scripts/echo_out.c
/// installed as /libcgi-bin/echo.so (initfunc marks `marks`) and as the CGI
/// /cgi-bin/echo.so.
fn echo_server(mpm: Mpm) -> (Apache, std::path::PathBuf) {
    let mut cfg = Config::new(mpm);
    cfg.cgid = true;
    let a = Apache::start(cfg);
    let marks = a.dir.join("marks");
    let def = format!("-DMARK_FILE=\"{}\"", marks.display());
    a.install("echo.so", "echo_out", &[&def]);
    build_cgi(&a.dir.join("cgi-bin"), "echo.so", "echo_out");
    // The server's user must be able to write the marks.
    fs::write(&marks, "").unwrap();
    chmod(&marks, 0o666);
    (a, marks)
}

/// What a client can tell of a response, minus what differs between any two
/// responses (Date) and the framing (chunked or Content-Length: mod_cgid
/// reads its script through a socket, so it may frame the same body
/// differently); the body is compared decoded.  Whether the body arrived
/// whole is framing too: when Apache's header filter refuses a header the
/// script sent (a name starting with a tab), mod_cgid's error response is
/// cut short, mod_libcgi's is not (`complete` checks ours).
fn visible(r: &Response) -> (u16, Vec<(String, String)>, String) {
    let mut h: Vec<(String, String)> = r
        .headers
        .iter()
        .filter(|(k, _)| {
            !["date", "content-length", "transfer-encoding", "connection", "keep-alive"]
                .contains(&k.to_ascii_lowercase().as_str())
        })
        .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
        .collect();
    h.sort();
    // Lossless for the ASCII bodies here, and readable in a failure.
    (r.status, h, String::from_utf8_lossy(&r.body).into_owned())
}

fn complete(r: &Response, what: &str) {
    assert!(!r.truncated, "{what}: mod_libcgi's response was cut short: {r:?}");
}

fn inits(marks: &std::path::Path) -> usize {
    fs::read_to_string(marks).unwrap_or_default().lines().filter(|l| l.starts_with("init")).count()
}

fn long_line(name: &str, total: usize, crlf: bool) -> Vec<u8> {
    // A header line of exactly `total` bytes before its line end.
    let mut l = format!("{name}: ").into_bytes();
    l.resize(total, b'a');
    l.extend_from_slice(if crlf { b"\r\n" } else { b"\n" });
    l
}

/// Header blocks (and what follows them) that Apache's readers treat in
/// every different way there is.
fn battery() -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<(String, Vec<u8>)> = Vec::new();
    let mut add = |name: &str, b: &[u8]| v.push((name.to_string(), b.to_vec()));
    add("lf", b"Content-Type: text/plain\nX-A: 1\n\nbody\n");
    add("crlf", b"Content-Type: text/plain\r\nX-A: 1\r\n\r\nbody\r\n");
    add("cr-only", b"Content-Type: text/plain\rX-A: 1\r\rbody");
    add("bare-cr-inside", b"X-A: a\rb\r\nContent-Type: text/plain\n\nbody");
    add("crcrlf-blank", b"Content-Type: text/plain\n\r\r\nbody");
    add("lfcr-blank", b"Content-Type: text/plain\n\r\nbody\n\n");
    add("empty-block-lf", b"\nbody");
    add("empty-block-crlf", b"\r\nbody");
    add("nul-in-value", b"Content-Type: text/plain\nX-A: a\0b\n\nbody");
    add("nul-starts-line", b"Content-Type: text/plain\n\0X-Hidden: 1\nbody");
    add("cr-nul-line", b"Content-Type: text/plain\n\r\0junk\nbody");
    add("nul-in-name", b"X\0: y\nContent-Type: text/plain\n\nbody");
    add("continuation-no-colon", b"Content-Type: text/plain\nX-A: a\n  continued\n\nbody");
    add("continuation-colon", b"Content-Type: text/plain\nX-A: a\n\tX-B: c\n\nbody");
    add("malformed", b"Content-Type text/plain\n\nbody");
    add("no-blank-line", b"Content-Type: text/plain\n");
    add("unterminated-line", b"Content-Type: text/plain");
    add("status", b"Status: 404 Not Found\nContent-Type: text/plain\n\nnone");
    add("bad-status", b"Status: abc\nContent-Type: text/plain\n\nx");
    add("redirect-abs", b"Location: http://example.invalid/x\n\nignored");
    add("redirect-abs-status", b"Status: 301 Moved\nLocation: http://example.invalid/x\n\nkept");
    add("cookies", b"Set-Cookie: a=1\nSet-Cookie: b=2\nContent-Type: text/plain\nX-M: 1\nX-M: 2\n\nc");
    add("content-length-lie", b"Content-Type: text/plain\nContent-Length: 2\n\nlonger than 2");
    add("transfer-encoding", b"Content-Type: text/plain\nTransfer-Encoding: chunked\n\nnot chunked");
    add("last-modified", b"Last-Modified: Sat, 01 Jan 2000 00:00:00 GMT\nContent-Type: text/plain\n\nlm");
    add("bad-last-modified", b"Last-Modified: yesterday\nContent-Type: text/plain\n\nlm");
    for total in [8188, 8189, 8190, 8191, 8192, 8193, 16384] {
        for crlf in [false, true] {
            let mut b = long_line("X-Long", total, crlf);
            b.extend_from_slice(b"Content-Type: text/plain\n\nafter-long");
            add(&format!("line-{total}-{}", if crlf { "crlf" } else { "lf" }), &b);
        }
    }
    // A long line of CRs: they do not count towards the line's length.
    let mut b = b"X-Crs: a".to_vec();
    b.extend(std::iter::repeat_n(b'\r', 9000));
    b.extend_from_slice(b"b\nContent-Type: text/plain\n\ncrs");
    add("many-crs", &b);
    // The attack: 8182 bytes of client input echoed into a header, then the
    // client's own header.  Apache's readers end the headers there (500).
    let mut b = b"X-Echo: ".to_vec();
    b.resize(8190, b'e');
    b.extend_from_slice(b"Location: http://evil.invalid/\n\n");
    add("smuggled-location", &b);
    let mut b = b"X-Echo: ".to_vec();
    b.resize(8189, b'e');
    b.extend_from_slice(b"\nLocation: http://evil.invalid/\n\n");
    add("longest-good-line", &b);
    // A block of more than 64 KiB of good lines.
    let mut b = Vec::new();
    for i in 0..1500 {
        b.extend_from_slice(format!("X-Many-{i}: {}\n", "v".repeat(40)).as_bytes());
    }
    b.extend_from_slice(b"Content-Type: text/plain\n\nmany");
    add("block-100k", &b);
    v
}

fn post(prefix: &str, query: &str, body: &[u8]) -> Request {
    Request::post(&format!("/{prefix}/echo.so{query}"), body)
}

/// Item 5: the same output gives the same response under mod_libcgi as
/// under mod_cgid, however the script splits it across lwrite calls.
fn headers_like_mod_cgid(mpm: Mpm) {
    let (a, _marks) = echo_server(mpm);
    let mut checked = 0;
    for (name, block) in battery() {
        let cgi = a.send(post("cgi-bin", "", &block));
        let want = visible(&cgi);
        let mut splits: Vec<String> =
            ["", "?split=1", "?split=2", "?split=3", "?split=7", "?split=4096"].iter().map(|s| s.to_string()).collect();
        if block.len() > 8000 {
            for s in [8189, 8190, 8191, 8192] {
                splits.push(format!("?split={s}"));
            }
            for k in [8189, 8190, 8191] {
                splits.push(format!("?at={k}"));
            }
        } else {
            // Two writes, split at every boundary.
            splits.extend((0..=block.len()).map(|k| format!("?at={k}")));
        }
        for q in &splits {
            let lib = a.send(post("libcgi-bin", q, &block));
            complete(&lib, &name);
            assert_eq!(
                visible(&lib),
                want,
                "case {name}, {q}: mod_libcgi (left) differs from mod_cgid (right)\n{}",
                a.error_log()
            );
            checked += 1;
        }
    }
    assert!(checked > 500, "{checked}");
    assert!(dead_children(&a.error_log()).is_empty(), "{}", a.error_log());
}

/// Item 5, the attack itself: not a redirect to the client's site, but a
/// 500 with Apache's log line naming the script.
fn long_line_ends_headers(mpm: Mpm) {
    let (a, _marks) = echo_server(mpm);
    let mut b = b"X-Echo: ".to_vec();
    b.resize(8190, b'e');
    b.extend_from_slice(b"Location: http://evil.invalid/\n\n");
    for q in ["", "?split=1", "?split=100"] {
        let r = a.send(post("libcgi-bin", q, &b));
        assert_eq!(r.status, 500, "{q}: {r:?}");
        assert_eq!(r.header("Location"), None);
    }
    a.wait_log("the parser's log line", |l| l.contains("End of script output before headers: echo.so"));

    // Good lines accumulate up to 1 MiB (the one place where mod_libcgi
    // refuses what mod_cgid would take): then 500 and one log line.
    let mut b = Vec::new();
    while b.len() <= (1 << 20) + 10_000 {
        b.extend_from_slice(format!("X-N-{}: {}\n", b.len(), "v".repeat(100)).as_bytes());
    }
    b.extend_from_slice(b"\nbody");
    // However the block is written: in small pieces, in one write, or with
    // its end in the write that crosses the limit (as an isolated worker's
    // output arrives, in chunks of 252 KiB).
    for q in ["?split=4096", "", "?at=1048000"] {
        let r = a.send(post("libcgi-bin", q, &b));
        // Not the response itself in the message: a thousand header lines.
        assert_eq!(r.status, 500, "{q}: {} headers, body {:?}", r.headers.len(), r.text());
        assert_eq!(r.header("X-N-0"), None, "{q}");
    }
    let log = a.wait_log("the header block limit", |l| {
        l.matches("echo.so: script header block exceeds 1048576 bytes").count() >= 3
    });
    assert!(dead_children(&log).is_empty(), "{log}");
}

/// Item 4: conditional requests get mod_cgid's answers and never reload the
/// script (initfunc runs once).
fn conditional_like_mod_cgid(mpm: Mpm) {
    let (a, marks) = echo_server(mpm);
    const LM: &str = "Sat, 01 Jan 2000 00:00:00 GMT";
    const BEFORE: &str = "Fri, 31 Dec 1999 00:00:00 GMT";
    const AFTER: &str = "Sun, 02 Jan 2000 00:00:00 GMT";
    let conds: Vec<Vec<(&str, &str)>> = vec![
        vec![],
        vec![("If-Match", "\"x\"")],
        vec![("If-Match", "\"abc\"")],
        vec![("If-Match", "*")],
        vec![("If-None-Match", "\"abc\"")],
        vec![("If-None-Match", "\"x\"")],
        vec![("If-None-Match", "*")],
        vec![("If-None-Match", "W/\"abc\"")],
        vec![("If-Modified-Since", LM)],
        vec![("If-Modified-Since", BEFORE)],
        vec![("If-Modified-Since", AFTER)],
        vec![("If-Unmodified-Since", LM)],
        vec![("If-Unmodified-Since", BEFORE)],
        vec![("If-Unmodified-Since", AFTER)],
        vec![("If-Range", "\"abc\""), ("Range", "bytes=0-3")],
        vec![("If-Range", "\"x\""), ("Range", "bytes=0-3")],
        vec![("If-Range", LM), ("Range", "bytes=0-3")],
        vec![("If-Range", BEFORE), ("Range", "bytes=0-3")],
        vec![("Range", "bytes=2-4")],
        vec![("If-Match", "\"x\""), ("If-None-Match", "\"abc\"")],
        vec![("If-None-Match", "\"abc\""), ("If-Modified-Since", BEFORE)],
    ];
    let mut statuses = std::collections::BTreeSet::new();
    for v in ["etag", "lm", "both", "none", "status"] {
        for (method, split) in [("GET", 0), ("GET", 5), ("HEAD", 0), ("HEAD", 7), ("POST", 0)] {
            for c in &conds {
                let req = |prefix: &str| {
                    let mut r = Request::new(method, &format!("/{prefix}/echo.so?v={v}&split={split}"));
                    for (k, val) in c {
                        r = r.header(k, val);
                    }
                    r
                };
                let cgi = a.send(req("cgi-bin"));
                let lib = a.send(req("libcgi-bin"));
                let what = format!("{method} v={v} split={split} {c:?}");
                complete(&lib, &what);
                assert_eq!(visible(&lib), unranged(&cgi, &lib), "{what}: mod_libcgi (left) vs mod_cgid");
                statuses.insert(lib.status);
            }
        }
    }
    // The battery did reach every answer the parser can give.
    for s in [200, 206, 304, 412] {
        assert!(statuses.contains(&s), "no {s} among {statuses:?}");
    }
    assert_eq!(inits(&marks), 1, "initfunc ran again: {}", fs::read_to_string(&marks).unwrap());
    // Nothing of this is an error of the script's.
    assert!(!a.error_log().contains("echo.so"), "{}", a.error_log());
}

/// mod_cgid answers a Range request with the whole body: its script's
/// output reaches the byte-range filter in pieces, without the end of the
/// stream, and the filter applies a range only to a body it has whole.
/// mod_libcgi's small body arrives whole, so the filter applies the range.
/// Where ours is the 206 and mod_cgid's the 200, the expected response is
/// mod_cgid's with that range applied.
fn unranged(cgi: &Response, lib: &Response) -> (u16, Vec<(String, String)>, String) {
    let (status, mut h, body) = visible(cgi);
    if !(lib.status == 206 && cgi.status == 200) {
        return (status, h, body);
    }
    let range = lib.header("Content-Range").expect("a 206 without Content-Range");
    let spec = range.strip_prefix("bytes ").and_then(|r| r.split_once('/')).expect("Content-Range");
    let (from, to) = spec.0.split_once('-').expect("Content-Range");
    let (from, to): (usize, usize) = (from.parse().unwrap(), to.parse().unwrap());
    h.push(("content-range".into(), range.into()));
    h.sort();
    if cgi.body.is_empty() {
        return (206, h, body); // HEAD
    }
    assert_eq!(spec.1, cgi.body.len().to_string(), "{range}");
    (206, h, body[from..=to].to_string())
}

prefork_and_event!(headers_like_mod_cgid, long_line_ends_headers, conditional_like_mod_cgid);

// ---- Item 12: body memory ---------------------------------------------------

fn fnv(b: &[u8]) -> String {
    let mut h: u64 = 0xcbf29ce484222325;
    for &x in b {
        h ^= x as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    format!("len={} fnv={h:016x} nul=1", b.len())
}

fn vm_rss_kib(pid: u32) -> u64 {
    let s = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap()
}

/// The one server process, its peak RSS reset to its current RSS
/// (/proc/PID/clear_refs, "5"), so that the next request's peak is measured
/// alone.  Returns its pid and the RSS at the reset.
fn reset_peak(a: &Apache) -> (u32, u64) {
    // Not the isolation manager (LIBCGI_TEST_ISOLATION=process): the body is
    // read into the server process in both modes.
    let kids: Vec<u32> = a
        .children()
        .into_iter()
        .filter(|p| !fs::read_to_string(format!("/proc/{p}/comm")).unwrap_or_default().starts_with("libcgi"))
        .collect();
    assert_eq!(kids.len(), 1, "expected one server process: {kids:?}");
    let pid = kids[0];
    fs::write(format!("/proc/{pid}/clear_refs"), "5").expect("resetting VmHWM through clear_refs");
    let (hwm, rss) = (vm_hwm_kib(pid), vm_rss_kib(pid));
    assert!(hwm <= rss + 1024, "clear_refs did not reset the peak: VmHWM {hwm} KiB, VmRSS {rss} KiB");
    (pid, rss)
}

fn body_server(mpm: Mpm) -> Apache {
    let mut cfg = Config::new(mpm);
    cfg.threads = 4;
    let a = Apache::start(cfg);
    a.install("sum.so", "body_sum", &[]);
    // Load the script and warm the process up with a body of each kind.
    for r in [
        Request::post("/libcgi-bin/sum.so", &[7; 200_000]),
        Request::post("/libcgi-bin/sum.so", &[7; 200_000]).chunked(8192),
    ] {
        assert_eq!(a.send(r).status, 200);
    }
    a
}

const BODY: usize = 64 << 20;

/// A 64 MiB body, declared or chunked, costs the server process about the
/// body's size, and arrives byte for byte.
fn big_body_costs_its_size(mpm: Mpm) {
    let a = body_server(mpm);
    let body: Vec<u8> = (0..BODY).map(|i| (i as u32).wrapping_mul(2654435761).to_le_bytes()[3]).collect();
    let want = fnv(&body);
    for chunked in [false, true] {
        let (pid, before) = reset_peak(&a);
        let mut req = Request::post("/libcgi-bin/sum.so", &body);
        if chunked {
            req = req.chunked(65536);
        }
        let r = a.send(req);
        assert_eq!((r.status, r.text()), (200, want.clone()), "chunked={chunked}");
        let grew = vm_hwm_kib(pid).saturating_sub(before);
        let limit = (BODY as u64 / 1024) * 12 / 10 + 4096;
        assert!(
            grew <= limit,
            "chunked={chunked}: peak RSS grew by {grew} KiB for a {} KiB body (limit {limit})",
            BODY / 1024
        );
        eprintln!("{}: chunked={chunked}: peak RSS grew by {grew} KiB for a {} KiB body", mpm.name(), BODY / 1024);
    }
    // Small bodies (pool memory) and an empty one are exact too.
    for n in [1, 100, 8191, 8192, 8193, 65535, 65536, 65537, 200_000] {
        let b: Vec<u8> = (0..n).map(|i| (i % 251) as u8).collect();
        for chunked in [None, Some(1000), Some(65536)] {
            let mut req = Request::post("/libcgi-bin/sum.so", &b);
            if let Some(c) = chunked {
                req = req.chunked(c);
            }
            let r = a.send(req);
            assert_eq!(r.text(), fnv(&b), "n={n} chunked={chunked:?}");
        }
    }
    assert_eq!(a.send(Request::post("/libcgi-bin/sum.so", b"")).text(), "NULL");
}

/// A client that declares 64 MiB, sends 8 MiB and goes away costs what it
/// sent, not what it declared; LimitRequestBody still answers 413.
fn short_body_costs_what_arrived(mpm: Mpm) {
    use std::io::Write;
    let a = body_server(mpm);
    let (pid, before) = reset_peak(&a);
    let sent = 8 << 20;
    {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", a.port)).unwrap();
        let head = format!("POST /libcgi-bin/sum.so HTTP/1.1\r\nHost: x\r\nContent-Length: {BODY}\r\n\r\n");
        s.write_all(head.as_bytes()).unwrap();
        s.write_all(&vec![1u8; sent]).unwrap();
        // Wait until the server has read it all: its RSS shows it.
        wait_for("the server to read what was sent", Duration::from_secs(20), || {
            (vm_rss_kib(pid) >= before + (sent as u64 / 1024) * 9 / 10).then_some(())
        });
    }
    // Closed: the request fails and its memory is given back.
    wait_for("the body's memory to be given back", Duration::from_secs(20), || {
        (vm_rss_kib(pid) < before + 2048).then_some(())
    });
    let grew = vm_hwm_kib(pid).saturating_sub(before);
    let limit = (sent as u64 / 1024) * 12 / 10 + 4096;
    assert!(grew <= limit, "peak RSS grew by {grew} KiB for {} KiB sent (limit {limit})", sent / 1024);
    // The server goes on serving.
    assert_eq!(a.send(Request::post("/libcgi-bin/sum.so", b"abc")).text(), fnv(b"abc"));

    // LimitRequestBody 1024 under /tiny/: declared and chunked.
    let big = vec![b'x'; 4096];
    assert_eq!(a.send(Request::post("/tiny/sum.so", &big)).status, 413);
    assert_eq!(a.send(Request::post("/tiny/sum.so", &big).chunked(512)).status, 413);
    assert_eq!(a.send(Request::post("/tiny/sum.so", &big[..1000])).text(), fnv(&big[..1000]));
    assert!(dead_children(&a.error_log()).is_empty(), "{}", a.error_log());
}

prefork_and_event_extra!(big_body_costs_its_size, short_body_costs_what_arrived);

// ---- Item 7: the directory trust is checked up to -------------------------

/// Makes `dir` and its parents up to `top` (exclusive), mode 0755.
fn mkdirs(top: &std::path::Path, rel: &str) -> std::path::PathBuf {
    let mut p = top.to_path_buf();
    for c in rel.split('/') {
        p = p.join(c);
        if !p.exists() {
            fs::create_dir(&p).unwrap();
        }
        chmod(&p, 0o755);
    }
    p
}

/// Trust is checked up to the directory of the innermost <Directory> that
/// applies, whether it uses a LibCGI directive or not, with wildcards and
/// regexes resolved to the directory they matched; with only a <Location>,
/// up to "/".  Each case shows the root twice: a world-writable directory
/// below it is refused, and a symlink out of it names it.
fn trust_root(mpm: Mpm) {
    let d = scratch("trust-layout");
    let dd = d.display();
    let a = Apache::start(Config::new(mpm).extra(&format!(
        r#"Alias /wild/ {dd}/srv/
<Directory {dd}/srv>
  Options +ExecCGI
</Directory>
<Directory {dd}/srv/*/bin>
  AddHandler libcgi-script .so
  LibCGITimeout 20
</Directory>
Alias /rx/ {dd}/rx/
<DirectoryMatch "^{dd}/rx/[^/]+/bin">
  Options +ExecCGI
  AddHandler libcgi-script .so
</DirectoryMatch>
Alias /loc/ {dd}/loc/
<Location /loc/>
  Options +ExecCGI
  SetHandler libcgi-script
</Location>"#
    )));
    let outside = mkdirs(&d, "outside");
    build_script(&outside, "o.so", "t", &[]);
    let canon = |p: &std::path::Path| fs::canonicalize(p).unwrap().display().to_string();
    let refused = |url: &str, why: &str| {
        let r = a.get(url);
        assert_eq!(r.status, 403, "{url} was not refused: {r:?}\n{}", a.error_log());
        a.wait_log(why, |l| l.lines().any(|x| x.contains(why)));
    };
    // (url prefix, the directory serving it, the root trust must stop at)
    let cases = [
        ("/libcgi-bin", a.bin.clone(), a.bin.clone()),
        ("/wild/a/bin", mkdirs(&d, "srv/a/bin"), d.join("srv/a/bin")),
        ("/rx/b/bin", mkdirs(&d, "rx/b/bin"), d.join("rx/b/bin")),
        ("/loc", mkdirs(&d, "loc"), std::path::PathBuf::from("/")),
    ];
    for (url, dir, root) in &cases {
        build_script(dir, "t.so", "t", &[]);
        let ok = a.get(&format!("{url}/t.so"));
        assert_eq!((ok.status, ok.text()), (200, "hello v0".to_string()), "{url}: {}", a.error_log());
        // A world-writable directory two levels above the script, still
        // below the root: refused (before, for the README's own
        // <Directory>, only the script's own directory was checked).
        let deep = mkdirs(dir, "open/deep");
        build_script(&deep, "s.so", "t", &[]);
        chmod(&dir.join("open"), 0o777);
        refused(
            &format!("{url}/open/deep/s.so"),
            &format!("the directory {} is group- or world-writable", canon(&dir.join("open"))),
        );
        if root != std::path::Path::new("/") {
            std::os::unix::fs::symlink(outside.join("o.so"), dir.join("out.so")).unwrap();
            refused(&format!("{url}/out.so"), &format!("it resolves outside {}, where", canon(root)));
        }
    }
    assert!(dead_children(&a.error_log()).is_empty(), "{}", a.error_log());
}

/// The root is the deepest of the <Directory> sections Apache applies, as
/// each matched: for scripts under plain, wildcard (`*`, `?`, `[ab]`,
/// prefix) and regex sections, nested, the sections Apache applied (each
/// sets its own SEC_n variable, which the script reports) are the expected
/// ones, and the root mod_libcgi logs is the deepest of their directories.
fn trust_root_matches_apache(mpm: Mpm) {
    let d = scratch("trust-match");
    let m = d.join("m");
    let md = m.display();
    let sections = [
        format!("<Directory {md}>\n  Options +ExecCGI\n  AddHandler libcgi-script .so\n  SetEnv SEC_0 1\n</Directory>"),
        format!("<Directory {md}/*/x>\n  SetEnv SEC_1 1\n</Directory>"),
        format!("<Directory {md}/a*>\n  SetEnv SEC_2 1\n</Directory>"),
        format!("<Directory {md}/?/y>\n  SetEnv SEC_3 1\n</Directory>"),
        format!("<Directory {md}/[ab]/z>\n  SetEnv SEC_4 1\n</Directory>"),
        format!("<DirectoryMatch \"^{md}/[a-c]/rx\">\n  SetEnv SEC_5 1\n</DirectoryMatch>"),
        format!("<Directory ~ \"{md}/b/t[0-9]\">\n  SetEnv SEC_6 1\n</Directory>"),
        format!("<Directory {md}/a/x/deeper>\n  SetEnv SEC_7 1\n</Directory>"),
        "<DirectoryMatch \"/q/\">\n  SetEnv SEC_8 1\n</DirectoryMatch>".to_string(),
    ];
    let mut cfg = Config::new(mpm).extra(&format!("Alias /m/ {md}/\n{}", sections.join("\n")));
    cfg.loglevel = "warn libcgi:debug".into();
    let a = Apache::start(cfg);
    // (script under m/, the sections Apache applies, the root under m/)
    let cases: [(&str, &[u32], &str); 10] = [
        ("a/x/s.so", &[0, 1, 2], "a/x"),
        ("ab/s.so", &[0, 2], "ab"),
        ("c/y/s.so", &[0, 3], "c/y"),
        ("b/z/s.so", &[0, 4], "b/z"),
        ("c/rx/s.so", &[0, 5], "c/rx"),
        // The regex ends inside the name t12: the directory holding it.
        ("b/t12/s.so", &[0, 6], "b"),
        ("a/x/deeper/s.so", &[0, 1, 2, 7], "a/x/deeper"),
        ("q/s.so", &[0, 8], "q"),
        ("zz/s.so", &[0], ""),
        ("dd/x/s.so", &[0, 1], "dd/x"),
    ];
    for (script, secs, root) in cases {
        let dir = mkdirs(&d, &format!("m/{}", script.rsplit_once('/').unwrap().0));
        build_script(&dir, "s.so", "echo_out", &[]);
        let r = a.get(&format!("/m/{script}?v=sec"));
        assert_eq!(r.status, 200, "{script}: {}", a.error_log());
        let applied: Vec<u32> = r.text().lines().map(|l| l.parse().unwrap()).collect();
        assert_eq!(applied, secs, "{script}: the sections Apache applied");
        let real = fs::canonicalize(d.join("m").join(script)).unwrap();
        let want_root = fs::canonicalize(if root.is_empty() { m.clone() } else { m.join(root) }).unwrap();
        let line = format!("{}: trusted if safe up to {}\n", real.display(), want_root.display());
        a.wait_log(&format!("{script}: the root {}", want_root.display()), |l| {
            l.lines().any(|x| x.ends_with(line.trim_end()))
        });
    }
}

#[test]
fn trust_root_prefork() {
    trust_root(Mpm::Prefork)
}

#[test]
fn trust_root_event() {
    trust_root(Mpm::Event)
}

#[test]
fn trust_root_matches_apache_prefork() {
    trust_root_matches_apache(Mpm::Prefork)
}

#[test]
fn trust_root_matches_apache_event() {
    trust_root_matches_apache(Mpm::Event)
}
