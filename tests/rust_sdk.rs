//! Issue 13: scripts written in Rust with the libcgi crate (and in C++),
//! served by a real apache2 under prefork and event, and run by libcgi-run.
//!
//! The Rust scripts are the workspace's cdylibs (examples/rust/*,
//! tests/rust-scripts/*): `cargo build --release --workspace` builds them
//! (tests/run.sh does); a missing one is a failure that says so.

mod common;
use common::*;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

/// target/release/lib<crate>.so, built by the workspace build.
fn cdylib(krate: &str) -> PathBuf {
    let profile = if cfg!(debug_assertions) { "debug" } else { "release" };
    let p = root().join("target").join(profile).join(format!("lib{}.so", krate.replace('-', "_")));
    assert!(
        p.exists(),
        "{} does not exist: run `cargo build{} --workspace` first (tests/run.sh does)",
        p.display(),
        if profile == "release" { " --release" } else { "" }
    );
    p
}

fn libcgi_run_bin() -> PathBuf {
    let profile = if cfg!(debug_assertions) { "debug" } else { "release" };
    let p = root().join("target").join(profile).join("libcgi-run");
    assert!(p.exists(), "{} does not exist: run `cargo build --release --workspace`", p.display());
    p
}

/// Installs a file into the server's libcgi-bin by atomic rename.
fn install_file(a: &Apache, src: &Path, name: &str) -> PathBuf {
    let out = a.bin.join(name);
    let tmp = a.bin.join(format!(".{name}.tmp"));
    fs::copy(src, &tmp).unwrap();
    chmod(&tmp, 0o755);
    fs::rename(&tmp, &out).unwrap();
    out
}

fn install_rust(a: &Apache, krate: &str, name: &str) -> PathBuf {
    install_file(a, &cdylib(krate), name)
}

/// Compiles examples/cpp/hello.cpp with the system's C++ compiler.
fn build_cpp(dir: &Path, name: &str) -> PathBuf {
    let out = dir.join(name);
    let tmp = dir.join(format!(".{name}.tmp"));
    let o = Command::new("c++")
        .args(["-shared", "-fPIC", "-O2", "-Wall", "-Wextra", "-Werror", "-I"])
        .arg(root().join("include"))
        .arg("-o")
        .arg(&tmp)
        .arg(root().join("examples/cpp/hello.cpp"))
        .output()
        .expect("running c++ (install g++: scripts/install-deps.sh does)");
    assert!(o.status.success(), "c++ failed:\n{}", String::from_utf8_lossy(&o.stderr));
    chmod(&tmp, 0o755);
    fs::rename(&tmp, &out).unwrap();
    out
}

/// Compiles one of examples/*.c.
fn build_c_example(dir: &Path, src: &str, name: &str) -> PathBuf {
    let out = dir.join(name);
    let tmp = dir.join(format!(".{name}.tmp"));
    let o = Command::new("cc")
        .args(["-shared", "-fPIC", "-O1", "-Wall", "-I"])
        .arg(root().join("include"))
        .arg("-o")
        .arg(&tmp)
        .arg(root().join("examples").join(src))
        .output()
        .expect("running cc");
    assert!(o.status.success(), "cc {src} failed:\n{}", String::from_utf8_lossy(&o.stderr));
    chmod(&tmp, 0o755);
    fs::rename(&tmp, &out).unwrap();
    out
}

fn ok(a: &Apache, req: Request) -> Response {
    let what = format!("{} {}", req.method, req.path);
    let r = a.send(req);
    assert_eq!(r.status, 200, "{what}: {}\n{}", r.text(), a.error_log());
    r
}

const FORM_PAGE: &str = "<!doctype html><title>form</title>\n<form method=post><input name=name> <input name=comment> \
<button>Send</button></form>\n<form method=post enctype=multipart/form-data><input name=name> <input type=file \
name=upload> <button>Upload</button></form>\n";

const MULTIPART: &[u8] = b"--XyZ\r\nContent-Disposition: form-data; name=\"name\"\r\n\r\nAda <L>\r\n--XyZ\r\n\
Content-Disposition: form-data; name=\"upload\"; filename=\"a.bin\"\r\nContent-Type: application/octet-stream\r\n\r\n\
\x00\x01\x02\x00\r\n--XyZ--\r\n";

/// Every Rust example and the C++ one, served, with exact output.
fn examples_served(mpm: Mpm) {
    let a = Apache::start(Config::new(mpm));
    for (krate, name) in [
        ("hello", "hello.so"),
        ("http-hello", "http-hello.so"),
        ("env", "env.so"),
        ("form", "form.so"),
        ("counter", "counter.so"),
        ("json", "json.so"),
    ] {
        install_rust(&a, krate, name);
    }
    build_cpp(&a.bin, "hello-cpp.so");
    build_c_example(&a.bin, "env.c", "cenv.so");

    for p in ["/libcgi-bin/hello.so", "/libcgi-bin/http-hello.so"] {
        let r = ok(&a, Request::get(p));
        assert_eq!(r.header("Content-Type"), Some("text/plain"), "{p}");
        assert_eq!(r.text(), "Hello from mod_libcgi\n", "{p}");
    }

    // env: byte for byte what the C example prints for the same request,
    // but for the script's own name and the client's port.
    let env_req = |p: &str| {
        Request::get(&format!("{p}/extra/path?x=1&y=%20"))
            .header("User-Agent", "sdk-test/1")
            .header("Cookie", "a=b")
            .header("Accept", "text/plain")
    };
    let norm = |s: String, name: &str| -> String {
        s.replace(name, "SCRIPT.so").lines().filter(|l| !l.starts_with("REMOTE_PORT=")).collect::<Vec<_>>().join("\n")
    };
    let rust = norm(ok(&a, env_req("/libcgi-bin/env.so")).text(), "env.so");
    let c = norm(ok(&a, env_req("/libcgi-bin/cenv.so")).text(), "cenv.so");
    assert!(rust.contains("PATH_INFO=/extra/path\n") && rust.contains("HTTP_COOKIE=a=b"), "{rust}");
    assert_eq!(rust, c, "Rust env example vs examples/env.c");

    // form: GET, URL-encoded POST (as examples/form.c), multipart POST.
    assert_eq!(ok(&a, Request::get("/libcgi-bin/form.so")).text(), FORM_PAGE);
    let r = ok(&a, Request::post("/libcgi-bin/form.so", b"name=Ada+L&comment=%3Cb%3E+%26+%22x%22"));
    assert_eq!(r.header("Content-Type"), Some("text/html; charset=utf-8"));
    assert_eq!(
        r.text(),
        "<!doctype html><title>form</title>\n<dl>\n<dt>name<dd>Ada L\n<dt>comment<dd>&lt;b&gt; &amp; &quot;x&quot;\n</dl>\n"
    );
    let r = ok(
        &a,
        Request::post("/libcgi-bin/form.so", MULTIPART).header("Content-Type", "multipart/form-data; boundary=XyZ"),
    );
    assert_eq!(
        r.text(),
        "<!doctype html><title>form</title>\n<dl>\n<dt>name<dd>Ada &lt;L&gt;\n<dt>upload<dd>file a.bin, 4 bytes\n</dl>\n"
    );
    let r = a.send(Request::post("/libcgi-bin/form.so", b"junk").header("Content-Type", "multipart/form-data"));
    assert_eq!(r.status, 400, "{}", r.text());

    // counter: state from init, counted per process.
    let first = ok(&a, Request::get("/libcgi-bin/counter.so")).text();
    let second = ok(&a, Request::get("/libcgi-bin/counter.so")).text();
    let parse = |s: &str| -> (u32, u64, u64) {
        let w: Vec<&str> = s.split_whitespace().collect();
        assert_eq!((w.len(), w[0], w[2], w[7]), (10, "process", "has", "time(s)"), "counter output {s:?}");
        (w[1].parse().unwrap(), w[6].parse().unwrap(), w[9].parse().unwrap())
    };
    let (p1, h1, t1) = parse(&first);
    let (p2, h2, t2) = parse(&second);
    assert_eq!((p1, t1), (p2, t2), "one process, one init: {first}{second}");
    assert_eq!((h1, h2), (1, 2), "{first}{second}");
    if isolated() {
        // The state lives in the worker that runs the script.
        let comm = fs::read_to_string(format!("/proc/{p1}/comm")).unwrap_or_default();
        assert_eq!(comm.trim(), "libcgi-worker", "pid {p1} is not an isolated worker");
    } else {
        assert!(a.children().contains(&p1), "pid {p1} is not a server child");
    }

    // json: the http adapter with serde_json.
    let r = a.send(
        Request::post("/libcgi-bin/json.so/orders", br#"{"item":"tea","qty":3,"unit_cents":250}"#)
            .header("Content-Type", "application/json"),
    );
    assert_eq!((r.status, r.header("Content-Type")), (201, Some("application/json")), "{}", r.text());
    assert_eq!(r.text(), "{\"item\":\"tea\",\"qty\":3,\"total_cents\":750}\n");
    let r = ok(&a, Request::get("/libcgi-bin/json.so/status?a=1"));
    assert_eq!(r.text(), "{\"ok\":true,\"path\":\"/status\",\"query\":\"a=1\"}\n");
    let r = a.send(Request::post("/libcgi-bin/json.so/orders", b"{\"item\":"));
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.text().starts_with("{\"error\":\"EOF while parsing"), "{}", r.text());
    let r = a.send(Request::get("/libcgi-bin/json.so/nope"));
    assert_eq!((r.status, r.text().as_str()), (404, "{\"error\":\"no route GET /nope\"}\n"));

    // C++: a static object; an exception caught inside; one that escapes
    // processfunc is std::terminate -> abort -> a contained fault.
    let r = ok(&a, Request::get("/libcgi-bin/hello-cpp.so"));
    assert_eq!(r.text(), "Hello from C++ (static object constructed: yes)\n");
    let r = a.send(Request::get("/libcgi-bin/hello-cpp.so/caught"));
    assert_eq!((r.status, r.text().as_str()), (400, "caught: no such thing\n"));
    let r = a.send(Request::get("/libcgi-bin/hello-cpp.so/escape"));
    assert_eq!(r.status, 500, "{}", r.text());
    let log = a.wait_log("the C++ fault logged", |l| l.contains("hello-cpp.so") && l.contains("signal 6"));
    assert!(log.contains("terminate called after throwing an instance of 'std::runtime_error'"), "{log}");
    let r = ok(&a, Request::get("/libcgi-bin/hello-cpp.so"));
    assert_eq!(r.text(), "Hello from C++ (static object constructed: yes)\n");
    assert!(dead_children(&a.error_log()).is_empty(), "{}", a.error_log());
}

/// The variables a Rust script reads, through `Request::var` and through
/// `std::env`, are the C script's (tests/scripts/envdump.c) for the same
/// request.
fn variables_equal_c(mpm: Mpm) {
    let a = Apache::start(
        Config::new(mpm).extra("PassEnv FROM_PASSENV\nSetEnv FROM_SETENV set-here\nSetEnv TZ UTC\nHostnameLookups Off"),
    );
    a.install("envdump.so", "envdump", &[]);
    install_rust(&a, "sdktest", "sdktest.so");
    let req = |p: &str| {
        Request::post(&format!("/libcgi-bin/{p}?q=1&r=%41"), b"k=v")
            .header("Content-Type", "application/x-www-form-urlencoded")
            .header("X-Token", "tok")
            .header("Cookie", "c=1")
            .header("User-Agent", "sdk/1")
    };
    let norm = |s: String, name: &str| -> String {
        let s = s.replace(name, "SCRIPT.so");
        let v: Vec<&str> = s.lines().filter(|l| !l.starts_with("REMOTE_PORT=")).collect();
        v.join("\n")
    };
    let c = norm(ok(&a, req("envdump.so/vars")).text(), "envdump.so");
    assert!(c.contains("FROM_SETENV=set-here") && c.contains("HTTP_X_TOKEN=tok"), "{c}");
    for route in ["vars", "stdvars"] {
        let rust = norm(ok(&a, req(&format!("sdktest.so/{route}"))).text(), "sdktest.so");
        let c = c.replace("PATH_INFO=/vars", &format!("PATH_INFO=/{route}")).replace("/vars", &format!("/{route}"));
        assert_eq!(rust, c, "Rust ({route}) vs C for the same request");
    }
    // A variable of one request is never seen by the next.
    let plain = ok(&a, Request::get("/libcgi-bin/sdktest.so/stdvars")).text();
    assert!(!plain.contains("HTTP_X_TOKEN") && !plain.contains("CONTENT_TYPE"), "{plain}");
    // initfunc ran inside the first request, with its variables.
    let init = ok(&a, Request::get("/libcgi-bin/sdktest.so/init")).text();
    assert_eq!(init, format!("init saw {}\n", a.bin.join("sdktest.so").display()));
}

/// A body with NUL bytes arrives whole; a 10 MiB response is streamed with
/// the server's memory bounded.
fn binary_and_big(mpm: Mpm) {
    let a = Apache::start(Config::new(mpm));
    install_rust(&a, "sdktest", "sdktest.so");
    let body: Vec<u8> = (0..300_000u32).map(|i| if i % 7 == 0 { 0 } else { (i * 31 % 256) as u8 }).collect();
    let r = ok(&a, Request::post("/libcgi-bin/sdktest.so/binary", &body));
    assert_eq!(r.header("X-Body-Length"), Some("300000"));
    assert!(r.body == body, "the body came back changed ({} bytes)", r.body.len());
    let r = ok(&a, Request::post("/libcgi-bin/sdktest.so/binary", b"\0").chunked(1));
    assert_eq!(r.body, b"\0");

    // The peak before: the script loaded and a 1 MiB response served.
    let r = ok(&a, Request::get("/libcgi-bin/sdktest.so/big?n=1048576"));
    assert_eq!(r.body.len(), 1 << 20);
    let children = a.children();
    assert!(!children.is_empty());
    let before: Vec<u64> = children.iter().map(|&p| vm_hwm_kib(p)).collect();
    let n = 10 << 20;
    let r = ok(&a, Request::get(&format!("/libcgi-bin/sdktest.so/big?n={n}")));
    assert_eq!(r.body.len(), n);
    assert!(r.body.iter().enumerate().step_by(4097).all(|(i, &b)| b == ((i % 65536) % 251) as u8));
    for (pid, before) in children.iter().zip(before) {
        let hwm = vm_hwm_kib(*pid);
        // Holding the response would take 10 MiB more: streaming takes
        // about nothing more than a 1 MiB response did.
        assert!(
            hwm < before + 3 * 1024,
            "server process {pid} peaked at {hwm} KiB for a 10 MiB response, {before} KiB before"
        );
        eprintln!("server process {pid}: peak {before} KiB before, {hwm} KiB after 10 MiB");
    }
}

/// Status and Location as CGI defines them.
fn status_and_location(mpm: Mpm) {
    let a = Apache::start(Config::new(mpm));
    install_rust(&a, "sdktest", "sdktest.so");
    let r = a.send(Request::get("/libcgi-bin/sdktest.so/status"));
    assert_eq!((r.status, r.reason.as_str(), r.text().as_str()), (404, "Not Found", "nothing here\n"));
    let r = a.send(Request::get("/libcgi-bin/sdktest.so/redirect"));
    assert_eq!((r.status, r.header("Location")), (302, Some("http://example.com/elsewhere")));
    // A local path: an internal redirect, served as a GET of that URL.
    let r = ok(&a, Request::post("/libcgi-bin/sdktest.so/redirect-local", b"x=1"));
    let t = r.text();
    assert!(t.contains("REQUEST_METHOD=GET\n") && t.contains("QUERY_STRING=from=redirect\n"), "{t}");
    assert!(t.contains("PATH_INFO=/vars\n"), "{t}");
    // Request::remote_host is get_remote_host(): what a C script gets.
    a.install("t.so", "t", &[]);
    let c = ok(&a, Request::get("/libcgi-bin/t.so?mode=remote")).text();
    let c_host = c.strip_prefix("host=").and_then(|t| t.split(' ').next()).expect("t.c's remote mode").to_string();
    let rust = ok(&a, Request::get("/libcgi-bin/sdktest.so/remote")).text();
    assert_eq!(rust, format!("{c_host}\n"));
}

/// A panic is a 500 with one line naming the script and the message, and
/// the next request is served; a handler's Err likewise; a panic after
/// output was sent ends the response there.
fn panics_contained(mpm: Mpm) {
    let a = Apache::start(Config::new(mpm));
    let path = install_rust(&a, "sdktest", "sdktest.so");
    for _ in 0..3 {
        let r = a.send(Request::get("/libcgi-bin/sdktest.so/panic"));
        assert_eq!(r.status, 500, "{}", r.text());
        assert!(!r.text().contains("never reaches"), "buffered output leaked: {}", r.text());
        let r = ok(&a, Request::get("/libcgi-bin/sdktest.so/init"));
        assert!(r.text().starts_with("init saw "), "{}", r.text());
    }
    let want = format!("[libcgi] {}: processfunc panicked at tests/rust-scripts/sdktest/src/lib.rs:", path.display());
    let log = a.wait_log("three panic lines", |l| l.matches(&want).count() == 3);
    let line = log.lines().find(|l| l.contains(&want)).unwrap();
    assert!(line.ends_with(": deliberate panic 42"), "{line}");
    assert!(log.contains("sdktest.so: processfunc returned 101"), "{log}");
    assert!(!log.contains("thread '<unnamed>' panicked"), "the default panic message is replaced: {log}");

    let r = a.send(Request::get("/libcgi-bin/sdktest.so/error"));
    assert_eq!(r.status, 500);
    a.wait_log("the handler's error", |l| l.contains("sdktest.so: processfunc failed: deliberate error"));

    // After output was sent, a panic is what a non-zero return is to the
    // module (as a CGI program's exit status is to mod_cgi): the response
    // ends where the output stopped, and the failure is logged.
    let r = a.send(Request::get("/libcgi-bin/sdktest.so/panic-late"));
    assert_eq!(r.status, 200);
    assert_eq!(r.body, vec![b'x'; 20000]);
    a.wait_log("the late panic", |l| l.contains("processfunc panicked") && l.contains("deliberate late panic"));
    ok(&a, Request::get("/libcgi-bin/sdktest.so/init"));
    let log = a.error_log();
    assert!(dead_children(&log).is_empty(), "{log}");
    assert!(!log.contains("unloaded"), "a caught panic is not a fault: the script stays loaded\n{log}");
}

/// A header value from the client with CR/LF is refused by Response::header,
/// not turned into a header of its own.
fn header_injection_refused(mpm: Mpm) {
    let a = Apache::start(Config::new(mpm));
    install_rust(&a, "sdktest", "sdktest.so");
    let r = a.send(Request::get("/libcgi-bin/sdktest.so/inject?v=a%0D%0ASet-Cookie:%20stolen=1"));
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(r.header("Set-Cookie"), None);
    assert_eq!(r.header("X-Echo"), None);
    assert_eq!(r.text(), "refused: invalid value for header \"X-Echo\" (CR, LF, NUL or another control character)\n");
    let r = a.send(Request::get("/libcgi-bin/sdktest.so/inject?v=a%0Ab"));
    assert_eq!(r.status, 400);
    let r = ok(&a, Request::get("/libcgi-bin/sdktest.so/inject?v=fine%20value"));
    assert_eq!((r.header("X-Echo"), r.text().as_str()), (Some("fine value"), "accepted\n"));
}

/// `thread_safe: true` lets two calls run at once in one process; without
/// it the module serialises them.  (Threaded MPMs: a prefork process runs
/// one request at a time either way.)
fn thread_safe_flag(mpm: Mpm) {
    let a = Apache::start(Config::new(mpm));
    install_rust(&a, "sdktest", "sdktest.so");
    install_rust(&a, "serial", "serial.so");
    let port = a.port;
    let both = |path: &'static str| -> Vec<String> {
        let hs: Vec<_> = (0..2).map(|_| std::thread::spawn(move || Request::get(path).send(port))).collect();
        hs.into_iter()
            .map(|h| {
                let r = h.join().unwrap();
                assert_eq!(r.status, 200, "{path}");
                r.text()
            })
            .collect()
    };
    let ts = both("/libcgi-bin/sdktest.so/overlap");
    if isolated() {
        // README "Isolation": a worker runs one request at a time, thread-safe
        // or not; two at once are two workers, each with its own count.
        assert_eq!(ts, ["max=1\n", "max=1\n"], "an isolated worker ran two calls at once");
    } else {
        assert!(ts.iter().any(|t| t == "max=2\n"), "thread-safe script never ran twice at once: {ts:?}");
    }
    let serial = both("/libcgi-bin/serial.so");
    assert_eq!(serial, ["max=1\n", "max=1\n"], "the module ran a non-thread-safe script twice at once");
}

/// What libcgi-run prints for a request (the CGI output), split as Apache
/// would read it: (status, content type, body).
fn run_script(script: &Path, args: &[&str], body: Option<&[u8]>) -> (u16, Option<String>, Vec<u8>) {
    let mut cmd = Command::new(libcgi_run_bin());
    cmd.args(args).arg(script).stdout(Stdio::piped()).stderr(Stdio::piped());
    let tmp;
    if let Some(b) = body {
        tmp = script.with_extension(format!("body{}", std::process::id()));
        fs::write(&tmp, b).unwrap();
        cmd.arg("--body").arg(&tmp);
    }
    let o = cmd.output().expect("running libcgi-run");
    assert!(
        o.status.success(),
        "libcgi-run {args:?} {}: {:?}\n{}",
        script.display(),
        o.status,
        String::from_utf8_lossy(&o.stderr)
    );
    let out = o.stdout;
    let (head, rest) = split_head(&out).unwrap_or_else(|| panic!("no header block: {}", String::from_utf8_lossy(&out)));
    let mut status = 200;
    let mut ct = None;
    for l in head {
        let (k, v) = l.split_once(':').unwrap();
        match k.trim().to_ascii_lowercase().as_str() {
            "status" => status = v.trim()[..3].parse().unwrap(),
            "content-type" => ct = Some(v.trim().to_string()),
            _ => {}
        }
    }
    (status, ct, rest.to_vec())
}

fn split_head(out: &[u8]) -> Option<(Vec<String>, &[u8])> {
    let mut lines = Vec::new();
    let mut rest = out;
    loop {
        let nl = rest.iter().position(|&b| b == b'\n')?;
        let l = String::from_utf8_lossy(rest[..nl].strip_suffix(b"\r").unwrap_or(&rest[..nl])).into_owned();
        rest = &rest[nl + 1..];
        if l.is_empty() {
            return Some((lines, rest));
        }
        lines.push(l);
    }
}

/// libcgi-run gives what the server gives for the same request, for every
/// example (Rust, C++, C): the variables for libcgi-run are the ones the
/// server gave envdump.c for that request.
fn libcgi_run_matches_server(mpm: Mpm) {
    let a = Apache::start(Config::new(mpm));
    a.install("envdump.so", "envdump", &[]);
    let mut scripts: Vec<(String, PathBuf)> = Vec::new();
    for (krate, name) in [
        ("hello", "hello.so"),
        ("http-hello", "http-hello.so"),
        ("env", "env.so"),
        ("form", "form.so"),
        ("json", "json.so"),
    ] {
        scripts.push((name.into(), install_rust(&a, krate, name)));
    }
    scripts.push(("counter.so".into(), install_rust(&a, "counter", "counter.so")));
    scripts.push(("hello-cpp.so".into(), build_cpp(&a.bin, "hello-cpp.so")));
    for c in ["hello", "env", "form", "counter"] {
        let name = format!("c{c}.so");
        scripts.push((name.clone(), build_c_example(&a.bin, &format!("{c}.c"), &name)));
    }
    struct Case {
        suffix: &'static str,
        method: &'static str,
        body: Option<&'static [u8]>,
        ctype: Option<&'static str>,
    }
    let cases = |name: &str| -> Vec<Case> {
        let get = |suffix| Case { suffix, method: "GET", body: None, ctype: None };
        match name {
            "form.so" | "cform.so" => vec![
                get(""),
                Case { suffix: "", method: "POST", body: Some(b"name=Ada+L&comment=%3Cb%3E"), ctype: None },
                Case {
                    suffix: "",
                    method: "POST",
                    body: Some(MULTIPART),
                    ctype: Some("multipart/form-data; boundary=XyZ"),
                },
            ],
            "json.so" => vec![
                get("/status?z=9"),
                get("/missing"),
                Case {
                    suffix: "/orders",
                    method: "POST",
                    body: Some(br#"{"item":"cake","qty":2,"unit_cents":300}"#),
                    ctype: Some("application/json"),
                },
            ],
            "env.so" | "cenv.so" => vec![get("/some/path?x=1")],
            "hello-cpp.so" => vec![get(""), get("/caught")],
            _ => vec![get("")],
        }
    };
    for (name, path) in &scripts {
        for case in cases(name) {
            let mut req = Request::new(case.method, &format!("/libcgi-bin/{name}{}", case.suffix))
                .header("User-Agent", "sdk-run/1");
            let mut dump = Request::new(case.method, &format!("/libcgi-bin/envdump.so{}", case.suffix))
                .header("User-Agent", "sdk-run/1");
            if let Some(ct) = case.ctype {
                req = req.header("Content-Type", ct);
                dump = dump.header("Content-Type", ct);
            }
            if let Some(b) = case.body {
                req = req.body(b);
                dump = dump.body(b);
            }
            let what = format!("{} {}", req.method, req.path);
            let served = a.send(req);
            // The variables the server gives this request, for libcgi-run.
            let vars = a.send(dump).text().replace("envdump.so", name);
            let mut args: Vec<String> = Vec::new();
            for l in vars.lines() {
                if !l.starts_with("REMOTE_PORT=") {
                    args.push("-e".into());
                    args.push(l.to_string());
                }
            }
            let argv: Vec<&str> = args.iter().map(String::as_str).collect();
            let (status, ct, body) = run_script(path, &argv, case.body);
            assert_eq!(status, served.status, "{what}: status");
            assert_eq!(ct.as_deref(), served.header("Content-Type"), "{what}: content type");
            let norm = |b: &[u8]| -> String {
                let t = String::from_utf8_lossy(b).into_owned();
                let t: Vec<&str> = t.lines().filter(|l| !l.starts_with("REMOTE_PORT=")).collect();
                let t = t.join("\n");
                if name.contains("counter") {
                    // Another process, loaded at another time.
                    let w: Vec<&str> = t.split(' ').collect();
                    return format!("{} {} ... {}", w[0], w[2..7].join(" "), w.len());
                }
                t
            };
            assert_eq!(norm(&body), norm(&served.body), "{what}: body, libcgi-run vs the server");
        }
    }
}

/// libcgi-run reports what went wrong by its exit status: a panic (101 from
/// processfunc) is 1, a crash is the signal.
fn libcgi_run_reports_faults() {
    let script = cdylib("sdktest");
    let o = Command::new(libcgi_run_bin()).args(["-p", "/panic"]).arg(&script).output().unwrap();
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("processfunc panicked at") && err.contains("deliberate panic 42"), "{err}");
    assert!(err.contains("processfunc returned 101"), "{err}");
    let dir = scratch("sdk-run");
    let cpp = build_cpp(&dir, "hello-cpp.so");
    let o = Command::new(libcgi_run_bin()).args(["-p", "/escape"]).arg(&cpp).output().unwrap();
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(o.status.signal(), Some(libc::SIGABRT), "{:?}", o.status);
    let o = Command::new(libcgi_run_bin()).arg(dir.join("missing.so")).output().unwrap();
    assert_eq!(o.status.code(), Some(3));
    // The body from stdin, NUL bytes and all.
    let mut child = Command::new(libcgi_run_bin())
        .args(["-b", "-", "-p", "/binary"])
        .arg(&script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(b"a\0b\0").unwrap();
    let o = child.wait_with_output().unwrap();
    assert!(o.status.success());
    assert!(o.stdout.ends_with(b"X-Body-Length: 4\r\n\r\na\0b\0"), "{:?}", String::from_utf8_lossy(&o.stdout));
    let _ = fs::remove_dir_all(dir);
}

/// libcgi-run under AddressSanitizer: a script built with
/// -fsanitize=address, the runtime preloaded, and the overflow is reported
/// with the script's source line.
#[test]
fn libcgi_run_under_asan() {
    let dir = scratch("sdk-asan");
    let so = dir.join("asan_bug.so");
    let o = Command::new("cc")
        .args(["-shared", "-fPIC", "-g", "-O0", "-fsanitize=address", "-I"])
        .arg(root().join("include"))
        .arg("-o")
        .arg(&so)
        .arg(root().join("tests/scripts/asan_bug.c"))
        .output()
        .expect("running cc");
    assert!(
        o.status.success(),
        "cc -fsanitize=address failed (gcc's libasan):\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let lib = Command::new("cc").arg("-print-file-name=libasan.so").output().unwrap();
    let lib = String::from_utf8_lossy(&lib.stdout).trim().to_string();
    assert!(Path::new(&lib).is_absolute(), "no libasan.so for cc: {lib}");
    let o = Command::new(libcgi_run_bin()).arg(&so).env("LD_PRELOAD", &lib).output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "the overflow went unnoticed: {err}");
    assert!(err.contains("AddressSanitizer: heap-buffer-overflow") && err.contains("asan_bug.c:12"), "{err}");
    // Without the sanitizer the same script "works": what the module would see.
    let plain = dir.join("plain.so");
    build_c_script_plain(&plain);
    let o = Command::new(libcgi_run_bin()).arg(&plain).output().unwrap();
    assert!(o.status.success());
    assert_eq!(o.stdout, b"Content-Type: text/plain\n\ndone\n");
    let _ = fs::remove_dir_all(dir);
}

fn build_c_script_plain(out: &Path) {
    let o = Command::new("cc")
        .args(["-shared", "-fPIC", "-O0", "-I"])
        .arg(root().join("include"))
        .arg("-o")
        .arg(out)
        .arg(root().join("tests/scripts/asan_bug.c"))
        .output()
        .expect("running cc");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

/// The script objects: the module's functions are undefined imports bound
/// at load time, getenv is the C library's (so the module rewrites it), and
/// the exports are the C ABI's names.
fn script_objects_link_as_c_scripts() {
    for krate in ["hello", "http-hello", "env", "form", "counter", "json", "sdktest", "serial"] {
        let so = cdylib(krate);
        let o = Command::new("nm").args(["-D"]).arg(&so).output().expect("nm (binutils)");
        let syms = String::from_utf8_lossy(&o.stdout);
        let has = |kind: &str, name: &str| {
            syms.lines().any(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                f.len() >= 2 && f[f.len() - 2] == kind && f[f.len() - 1].split('@').next() == Some(name)
            })
        };
        for u in ["lwrite", "lflush", "getenv", "linput_length", "get_remote_host"] {
            assert!(has("U", u), "{krate}: {u} is not an undefined import\n{syms}");
        }
        assert!(has("T", "processfunc"), "{krate}: no processfunc");
    }
    let syms = String::from_utf8_lossy(&Command::new("nm").arg("-D").arg(cdylib("counter")).output().unwrap().stdout)
        .into_owned();
    for e in ["initfunc", "terminatefunc", "libcgi_thread_safe"] {
        assert!(syms.lines().any(|l| l.ends_with(&format!(" {e}"))), "counter: no {e}\n{syms}");
    }
    let run = String::from_utf8_lossy(&Command::new("nm").arg("-D").arg(libcgi_run_bin()).output().unwrap().stdout)
        .into_owned();
    for e in ["lwrite", "lputs", "lprintf", "lflush", "get_remote_host", "linput_length"] {
        assert!(run.lines().any(|l| l.ends_with(&format!(" T {e}"))), "libcgi-run does not export {e}");
    }
}

#[test]
fn libcgi_run_faults() {
    libcgi_run_reports_faults();
}

#[test]
fn script_objects() {
    script_objects_link_as_c_scripts();
}

#[test]
fn thread_safe_event() {
    thread_safe_flag(Mpm::Event);
}

#[test]
fn thread_safe_worker() {
    thread_safe_flag(Mpm::Worker);
}

/// The workspace's profile must let scripts unwind, and a script crate
/// under panic = "abort" must not compile.
#[test]
fn panic_abort_refused_at_compile_time() {
    let dir = scratch("sdk-abort");
    fs::create_dir_all(dir.join("src")).unwrap();
    fs::write(
        dir.join("Cargo.toml"),
        format!(
            "[package]\nname = \"aborts\"\nversion = \"0.0.0\"\nedition = \"2021\"\n[lib]\ncrate-type = [\"cdylib\"]\n\
             [dependencies]\nlibcgi = {{ path = \"{}\" }}\n[profile.dev]\npanic = \"abort\"\n[workspace]\n",
            root().join("sdk/libcgi").display()
        ),
    )
    .unwrap();
    fs::write(dir.join("src/lib.rs"), "fn h(_: &libcgi::Request, _: &mut libcgi::Response) {}\nlibcgi::script!(h);\n")
        .unwrap();
    let o = Command::new(env!("CARGO"))
        .args(["build", "--offline", "--quiet"])
        .env("CARGO_TARGET_DIR", root().join("target/sdk-abort"))
        .current_dir(&dir)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "a script built with panic = \"abort\" compiled");
    assert!(err.contains("libcgi scripts need panic = \"unwind\""), "{err}");
    let _ = fs::remove_dir_all(dir);
    let _ = Duration::ZERO;
}

prefork_and_event!(
    examples_served,
    variables_equal_c,
    binary_and_big,
    status_and_location,
    panics_contained,
    header_injection_refused,
    libcgi_run_matches_server
);

/// A C++ script that declares processfunc itself, without libcgi.h's
/// noexcept: an exception escaping it still ends in std::terminate at the
/// throw (no C++ handler is above it: the module is C and Rust), so it is a
/// SIGABRT inside the script, contained, every time.
#[test]
fn cpp_exception_without_noexcept_contained() {
    let a = Apache::start(Config::new(Mpm::Event));
    let out = a.bin.join("throw.so");
    let o = Command::new("c++")
        .args(["-shared", "-fPIC", "-O2", "-o"])
        .arg(&out)
        .arg(root().join("tests/scripts/throw.cpp"))
        .output()
        .expect("running c++");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    for n in 1..=2 {
        let r = a.send(Request::get("/libcgi-bin/throw.so"));
        assert_eq!(r.status, 500);
        // Isolated, the server logs its worker's death (README "Isolation").
        let line = if isolated() {
            "throw.so: processfunc crashed in its isolated worker (signal 6)"
        } else {
            "throw.so: processfunc signal 6"
        };
        a.wait_log("the abort", |l| l.matches(line).count() == n);
    }
    let log = a.error_log();
    assert!(log.contains("terminate called after throwing an instance of 'std::runtime_error'"), "{log}");
    assert!(dead_children(&log).is_empty(), "{log}");
}
