//! Issue 10: a panic inside the module on a request path costs that request
//! a 500 (or a cut connection once output was sent) and one log line, not
//! the server process.  The module is built with the test-only cargo feature
//! `fault-injection` (its own target directory), which panics in the handler
//! for `?libcgi-panic=handler` and in the getenv and lwrite callbacks for the
//! argument "LIBCGI_PANIC" (tests/scripts/panic.c).

mod common;
use common::*;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

fn injecting_module() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let target = root().join("target/fault-injection");
            let o = Command::new(env!("CARGO"))
                .args(["build", "--release", "--offline", "-p", "mod_libcgi", "--features", "fault-injection"])
                .env("CARGO_TARGET_DIR", &target)
                .current_dir(root())
                .output()
                .expect("running cargo");
            assert!(o.status.success(), "building the fault-injection module:\n{}", String::from_utf8_lossy(&o.stderr));
            target.join("release/libmod_libcgi.so")
        })
        .clone()
}

fn ok_pid(a: &Apache) -> String {
    let r = a.get("/libcgi-bin/p.so");
    assert_eq!(r.status, 200, "{}\n{}", r.text(), a.error_log());
    r.text().strip_prefix("ok pid=").expect("ok body").to_string()
}

/// The raw bytes of a response to `path` (HTTP/1.1, chunked when the script
/// streams), read until the server closes.
fn raw(a: &Apache, path: &str) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", a.port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

fn panics_cost_the_request(mpm: Mpm) {
    // In process whatever LIBCGI_TEST_ISOLATION says: a panic inside a
    // script's callback ends its call by the guard's jump, which only the
    // in-process path has.  iso/ (below) has the isolated equivalent.
    let mut cfg = Config::new(mpm).extra(&format!(
        "LibCGIMaxFaults 1 60\n{PIN_INPROCESS}\n<Location /libcgi-bin/iso/>\n  LibCGIIsolation process\n</Location>"
    ));
    cfg.module = Some(injecting_module());
    let a = Apache::start(cfg);
    a.install("p.so", "panic", &[]);
    let iso = a.bin.join("iso");
    std::fs::create_dir_all(&iso).unwrap();
    chmod(&iso, 0o755);
    build_script(&iso, "p.so", "panic", &[]);
    let pid = ok_pid(&a);

    // In the getenv callback, before any output: 500, the call ended there.
    let r = a.get("/libcgi-bin/p.so?getenv");
    assert_eq!(r.status, 500, "{}\n{}", r.text(), a.error_log());
    assert!(!r.text().contains("after the panic"), "the script went on after the panic: {}", r.text());
    let log = a.wait_log("the getenv panic's line", |l| l.contains("p.so: processfunc ended by a panic"));
    let lines: Vec<_> = log.lines().filter(|l| l.contains("panic")).collect();
    assert_eq!(lines.len(), 1, "one line: {lines:?}");
    assert!(
        lines[0].contains("in getenv: fault injection: getenv(\"LIBCGI_PANIC\") at mod_libcgi/env.rs:"),
        "{}",
        lines[0]
    );
    assert_eq!(ok_pid(&a), pid, "the same server process serves on");
    // Not counted as the script's fault: LibCGIMaxFaults 1 would quarantine.
    assert!(!a.error_log().contains("quarantined"), "{}", a.error_log());

    // In lwrite after part of the body was sent: the response is cut short
    // (no last chunk), the rest of the script never runs.
    let resp = raw(&a, "/libcgi-bin/p.so?lwrite");
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert!(resp.contains("part\n"), "{resp}");
    assert!(!resp.contains("after the panic"), "{resp}");
    assert!(!resp.ends_with("0\r\n\r\n"), "a cut response must not look complete: {resp:?}");
    a.wait_log("the lwrite panic's line", |l| l.contains("in lwrite: fault injection: lwrite("));
    assert_eq!(ok_pid(&a), pid);

    // In the handler itself: 500 and one line naming the script.
    let r = a.get("/libcgi-bin/p.so?libcgi-panic=handler");
    assert_eq!(r.status, 500, "{}\n{}", r.text(), a.error_log());
    a.wait_log("the handler panic's line", |l| {
        l.lines().any(|l| l.contains("p.so: a panic in mod_libcgi's handler: fault injection: the handler at"))
    });
    assert_eq!(ok_pid(&a), pid);

    let log = a.error_log();
    assert!(dead_children(&log).is_empty(), "{log}");
    assert!(!log.contains("panicked at"), "Rust's default hook wrote to the error log:\n{log}");
    assert_eq!(log.lines().filter(|l| l.contains("fault injection")).count(), 3, "{log}");

    // Isolated: the worker's output reaches the module's lwrite on the
    // server thread, which panics there.  The response is cut short (before
    // the fix it ended as if complete, the rest of the output dropped), one
    // line names the script, and the slot is not left waiting: the next
    // request is served at once, by a new worker, in the same server process.
    let servers = a.server_children();
    let iso_pid = |a: &Apache| {
        let r = a.get("/libcgi-bin/iso/p.so");
        assert_eq!(r.status, 200, "{}\n{}", r.text(), a.error_log());
        r.text().strip_prefix("ok pid=").expect("ok body").to_string()
    };
    let worker = iso_pid(&a);
    assert_ne!(worker, pid, "iso/p.so ran in the server process");
    let resp = raw(&a, "/libcgi-bin/iso/p.so?lwrite");
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert!(resp.contains("part\n"), "{resp}");
    assert!(!resp.contains("after the panic"), "{resp}");
    assert!(!resp.ends_with("0\r\n\r\n"), "a cut response must not look complete: {resp:?}");
    let log = a.wait_log("the isolated lwrite panic's line", |l| l.contains("iso/p.so: a panic in mod_libcgi"));
    let lines: Vec<_> = log.lines().filter(|l| l.contains("iso/p.so") && l.contains("panic")).collect();
    assert_eq!(lines.len(), 1, "one line: {lines:?}");
    assert!(lines[0].contains("fault injection: lwrite(\"LIBCGI_PANIC\") at mod_libcgi/request.rs:"), "{}", lines[0]);
    let t = std::time::Instant::now();
    let now = iso_pid(&a);
    assert!(t.elapsed() < Duration::from_secs(3), "the next isolated request took {:?}", t.elapsed());
    assert_ne!(now, worker, "the worker left mid-call still serves");
    assert_eq!(a.server_children(), servers);
    assert_eq!(ok_pid(&a), pid);
    assert!(dead_children(&a.error_log()).is_empty(), "{}", a.error_log());
}

per_mpm!(panics_cost_the_request);
