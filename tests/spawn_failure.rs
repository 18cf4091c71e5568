//! Issue 10: a thread the module cannot start (pthread_create fails with
//! EAGAIN, as under RLIMIT_NPROC) costs requests a status and a log line,
//! never the server process.  An LD_PRELOAD interposer (tests/scripts/
//! fail_threads.c) fails the module's own thread starts while a flag file
//! exists.

mod common;
use common::*;
use std::fs;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

/// Builds the interposer; returns it and the flag file (created: failing).
fn interposer() -> (PathBuf, PathBuf) {
    let dir = scratch("preload");
    let so = dir.join("fail_threads.so");
    let o = Command::new("cc")
        .args(["-shared", "-fPIC", "-O1", "-Wall", "-o"])
        .arg(&so)
        .arg(root().join("tests/scripts/fail_threads.c"))
        .arg("-ldl")
        .output()
        .expect("running cc");
    assert!(o.status.success(), "cc fail_threads.c:\n{}", String::from_utf8_lossy(&o.stderr));
    let flag = dir.join("fail");
    fs::write(&flag, "").unwrap();
    (so, flag)
}

fn start(mpm: Mpm, extra: &str) -> (Apache, PathBuf) {
    let (so, flag) = interposer();
    let mut cfg = Config::new(mpm).extra(extra);
    cfg.env.push(("LD_PRELOAD".into(), so.display().to_string()));
    cfg.env.push(("LIBCGI_FAIL_THREADS".into(), flag.display().to_string()));
    (Apache::start(cfg), flag)
}

/// The watchdog cannot start in child_init: a script with a deadline is not
/// run (503 and one line per request, the same process goes on), and the
/// first request after threads can be started again is served.
///
/// Isolated, no watchdog is needed: the server thread waits for its worker
/// with the deadline and has the manager kill it.  The scripts are served,
/// and a looping one is still cut at its LibCGITimeout.
fn watchdog_that_cannot_start(mpm: Mpm) {
    let (a, flag) = start(mpm, "LibCGITimeout 5");
    a.install("t.so", "t", &[]);
    let children = a.children();
    a.wait_log("child_init's line", |l| {
        l.contains("cannot start the watchdog thread: Resource temporarily unavailable")
    });
    if isolated() {
        a.install("f.so", "fault", &[]);
        for i in 1..=3 {
            let r = a.get("/libcgi-bin/t.so");
            assert_eq!((r.status, r.text().as_str()), (200, "hello v0"), "request {i}\n{}", a.error_log());
        }
        let t = std::time::Instant::now();
        assert_eq!(a.get("/libcgi-bin/f.so?mode=loop").status, 500);
        assert!(t.elapsed() < Duration::from_secs(8), "the looping call took {:?}", t.elapsed());
        a.wait_log("the timeout's line", |l| {
            l.contains("f.so: processfunc timed out after 5 s in its isolated worker (signal 9); worker replaced")
        });
        assert!(!a.error_log().contains("not run: the watchdog thread"), "{}", a.error_log());
        assert_eq!(a.children(), children, "no server process was replaced");
        assert!(dead_children(&a.error_log()).is_empty(), "{}", a.error_log());
        return;
    }
    for i in 1..=3 {
        let r = a.get("/libcgi-bin/t.so");
        assert_eq!(r.status, 503, "request {i}: {}\n{}", r.text(), a.error_log());
        a.wait_log("one line per refused request", |l| {
            l.lines()
                .filter(|l| l.contains("t.so: "))
                .filter(|l| l.contains("not run: the watchdog thread that enforces LibCGITimeout cannot be started"))
                .count()
                == i
        });
    }
    assert_eq!(a.children(), children, "no server process was replaced");
    fs::remove_file(&flag).unwrap();
    let r = a.get("/libcgi-bin/t.so");
    assert_eq!(r.status, 200, "served once threads start again: {}\n{}", r.text(), a.error_log());
    assert_eq!(r.text(), "hello v0");
    assert_eq!(a.children(), children);
    assert!(dead_children(&a.error_log()).is_empty(), "{}", a.error_log());
}

/// `LibCGITimeout 0`: nothing needs the watchdog, scripts run.  A fault under
/// `LibCGIFaultAction recycle` in a threaded MPM starts the recycle backstop,
/// which cannot start either: one warning, and the process is still replaced.
fn no_deadline_and_recycle_backstop(mpm: Mpm) {
    // In process whatever LIBCGI_TEST_ISOLATION says: the recycle and its
    // backstop are for server processes that ran a faulting script (an
    // isolated fault recycles none: faults.rs recycle_replaces_the_process).
    let (a, _flag) =
        start(mpm, &format!("LibCGITimeout 0\nLibCGIFaultAction recycle\nLibCGIMaxFaults 0\n{PIN_INPROCESS}"));
    a.install("f.so", "fault", &[]);
    let r = a.get("/libcgi-bin/f.so");
    assert_eq!(r.status, 200, "{}\n{}", r.text(), a.error_log());
    // Not the isolation manager (there under LIBCGI_TEST_ISOLATION): it is
    // no server process and is never replaced.
    let before = a.server_children();
    assert_eq!(a.get("/libcgi-bin/f.so?mode=segv").status, 500);
    if mpm != Mpm::Prefork {
        a.wait_log("the backstop's warning", |l| l.contains("cannot start the recycle backstop thread"));
    }
    // Without the backstop a threaded process goes when a connection reaches
    // its refusing listener: this request, which a new process serves.
    assert_eq!(a.get("/libcgi-bin/f.so").status, 200, "{}", a.error_log());
    wait_for("the faulted process to be replaced", Duration::from_secs(20), || {
        let now = a.server_children();
        (!now.is_empty() && now.iter().all(|p| !before.contains(p))).then_some(())
    });
    assert!(dead_children(&a.error_log()).is_empty(), "{}", a.error_log());
}

per_mpm!(watchdog_that_cannot_start, no_deadline_and_recycle_backstop);
