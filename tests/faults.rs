//! Issue 3: crashing, looping and exiting scripts cost one 500, never the
//! server process; untrusted files are never loaded.

mod common;
use common::*;
use std::fs;
use std::time::{Duration, Instant};

const KINDS: &[(&str, &str)] = &[
    ("segv", "signal 11"),
    ("bus", "signal 7"),
    ("fpe", "signal 8"),
    ("ill", "signal 4"),
    ("abort", "signal 6"),
    ("assert", "signal 6"),
    ("recursion", "signal 11"),
    ("sigsys", "signal 31"),
];

/// A server with one process (prefork: one child) and a marks file the
/// script's initfunc/terminatefunc write to.
fn single(mpm: Mpm, extra: &str, flags: &[&str]) -> (Apache, std::path::PathBuf) {
    let a = Apache::start(Config::new(mpm).extra(extra));
    let marks = a.dir.join("marks");
    fs::write(&marks, "").unwrap();
    chmod(&marks, 0o666);
    let m = format!("-DMARK_FILE=\"{}\"", marks.display());
    let mut f = vec![m.as_str()];
    f.extend_from_slice(flags);
    a.install("f.so", "fault", &f);
    a.install("t.so", "t", &[]);
    (a, marks)
}

fn count(marks: &std::path::Path, what: &str) -> usize {
    fs::read_to_string(marks).unwrap().lines().filter(|l| l.starts_with(what)).count()
}

fn ok_pid(a: &Apache, path: &str) -> String {
    let r = a.get(path);
    assert_eq!(r.status, 200, "{path}: {}\n{}", r.text(), a.error_log());
    r.text().strip_prefix("ok pid=").expect("ok body").to_string()
}

/// What the log says of a processfunc that faulted with `sig` ("signal 11"):
/// in process the guard's line, isolated the server thread's line about the
/// worker that died (the worker itself does not log).
fn fault_line(script: &str, sig: &str) -> String {
    if isolated() {
        format!("{script}: processfunc crashed in its isolated worker ({sig}); worker replaced")
    } else {
        format!("{script}: processfunc {sig} (")
    }
}

/// The start of the line of a processfunc that ran past LibCGITimeout `t`.
fn timeout_line(script: &str, t: &str) -> String {
    if isolated() {
        format!("{script}: processfunc timed out after {t} s in its isolated worker (signal 9); worker replaced")
    } else {
        format!("{script}: processfunc still running after {t} s (LibCGITimeout)")
    }
}

/// Isolated, each fault kills the worker: initfunc runs again in a new
/// worker, the crashed one's terminatefunc never runs (its process is
/// gone), the server processes are untouched.
fn every_fault_kind(mpm: Mpm) {
    let (a, marks) = single(mpm, "LibCGIMaxFaults 0 1", &[]);
    let mut pid = ok_pid(&a, "/libcgi-bin/f.so");
    let servers = a.server_children();
    for (i, (kind, sig)) in KINDS.iter().enumerate() {
        let r = a.get(&format!("/libcgi-bin/f.so?mode={kind}"));
        assert_eq!(r.status, 500, "{kind}: {}", r.text());
        let want = fault_line("f.so", sig);
        a.wait_log(kind, |l| l.matches(&want).count() >= 1);
        // Reloaded: initfunc ran again (in process in the same server
        // process, isolated in a new worker).
        pid = survived_here(&a, "/libcgi-bin/f.so", &pid, &servers);
        assert_eq!(count(&marks, "init"), i + 2, "{kind}: initfunc did not run again");
        let terms = if isolated() { 0 } else { i + 1 };
        assert_eq!(count(&marks, "term"), terms, "{kind}: terminatefunc at unload");
        // Other scripts are unaffected.
        assert_eq!(a.get("/libcgi-bin/t.so").text(), "hello v0");
    }
    let log = a.error_log();
    if isolated() {
        let n = log.matches("f.so: processfunc crashed in its isolated worker").count();
        assert_eq!(n, KINDS.len(), "one line per fault: {log}");
    }
    // Isolated too: the worker's handler wrote it down before it died.
    assert!(log.contains("at address 0x0"), "the faulting address is logged: {log}");
    assert!(dead_children(&log).is_empty(), "{log}");
}

/// Isolated, a fault in initfunc kills the worker that loads the script
/// (the next request loads it in a new one), and a terminatefunc runs only
/// in a worker that lives to unload its script: at a graceful restart, where
/// its fault costs that worker, never a server process.
fn faults_in_init_and_terminate(mpm: Mpm) {
    let a = Apache::start(Config::new(mpm).extra("LibCGIMaxFaults 0 1"));
    let flag = a.dir.join("init-faults");
    fs::write(&flag, "").unwrap();
    a.install("i.so", "fault", &[&format!("-DINIT_FAULT_FILE=\"{}\"", flag.display())]);
    assert_eq!(a.get("/libcgi-bin/i.so").status, 500);
    let want = if isolated() {
        "i.so: initfunc crashed in its isolated worker (signal 11); worker replaced"
    } else {
        "i.so: cannot load script: initfunc signal 11"
    };
    a.wait_log("initfunc fault", |l| l.contains(want));
    fs::remove_file(&flag).unwrap();
    let pid = ok_pid(&a, "/libcgi-bin/i.so");
    if isolated() {
        let marks = a.dir.join("marks");
        fs::write(&marks, "").unwrap();
        chmod(&marks, 0o666);
        a.install("tf.so", "fault", &["-DTERM_FAULT", &format!("-DMARK_FILE=\"{}\"", marks.display())]);
        let servers = a.server_children();
        let w = ok_pid(&a, "/libcgi-bin/tf.so");
        assert_ne!(w, pid, "tf.so shares i.so's worker");
        // A fault in processfunc: the worker dies with the script, whose
        // terminatefunc cannot run.
        assert_eq!(a.get("/libcgi-bin/tf.so?mode=segv").status, 500);
        a.wait_log("the fault", |l| l.contains(&fault_line("tf.so", "signal 11")));
        let w = survived_here(&a, "/libcgi-bin/tf.so", &w, &servers);
        assert_eq!(count(&marks, "term"), 0);
        // At a graceful restart the idle worker runs it, and its fault
        // kills only that worker: the new generation serves the script.
        a.graceful();
        wait_for("tf.so's terminatefunc at the graceful restart", Duration::from_secs(15), || {
            (count(&marks, "term") == 1 && !alive(w.parse().unwrap())).then_some(())
        });
        let new = wait_for("the new generation serving tf.so", Duration::from_secs(15), || {
            let r = a.get("/libcgi-bin/tf.so");
            (r.status == 200).then(|| r.text())
        });
        assert_ne!(new, format!("ok pid={w}"));
        assert!(dead_children(&a.error_log()).is_empty(), "{}", a.error_log());
        return;
    }

    a.install("tf.so", "fault", &["-DTERM_FAULT"]);
    assert_eq!(ok_pid(&a, "/libcgi-bin/tf.so"), pid);
    // A fault unloads it; its terminatefunc faults too: logged, skipped.
    assert_eq!(a.get("/libcgi-bin/tf.so?mode=segv").status, 500);
    a.wait_log("terminatefunc fault", |l| l.contains("tf.so: terminatefunc signal 11") && l.contains("skipped"));
    assert_eq!(ok_pid(&a, "/libcgi-bin/tf.so"), pid);
    assert!(dead_children(&a.error_log()).is_empty());
}

fn fault_after_partial_output(mpm: Mpm) {
    let (a, _) = single(mpm, "", &[]);
    let r = a.get("/libcgi-bin/f.so?mode=partial");
    assert_eq!(r.status, 200, "headers were already sent");
    assert!(r.truncated, "a faulted response must not look complete: {r:?}");
    assert!(r.chunked);
    ok_pid(&a, "/libcgi-bin/f.so");
}

fn timeouts(mpm: Mpm) {
    let mut cfg = Config::new(mpm).extra("LibCGITimeout 1\nLibCGIMaxFaults 0 1");
    cfg.servers = if mpm == Mpm::Prefork { 3 } else { 1 };
    let a = Apache::start(cfg);
    a.install("f.so", "fault", &[]);
    a.install("t.so", "t", &[]);
    let port = a.port;
    let start = Instant::now();
    let looping = std::thread::spawn(move || Request::get("/libcgi-bin/f.so?mode=loop").send(port));
    // Meanwhile another script keeps answering, promptly.
    let mut answered = 0;
    while !looping.is_finished() {
        let t = Instant::now();
        let r = a.get("/libcgi-bin/t.so");
        assert_eq!(r.text(), "hello v0");
        assert!(t.elapsed() < Duration::from_millis(500), "held up by the looping script");
        answered += 1;
    }
    let r = looping.join().unwrap();
    assert_eq!(r.status, 500);
    assert!(start.elapsed() < Duration::from_secs(2), "took {:?}", start.elapsed());
    assert!(answered > 0);
    let want = timeout_line("f.so", if isolated() { "1" } else { "1.0" });
    a.wait_log("timeout line", |l| l.contains(&want));

    // Looping inside lwrite: the interruption waits until lwrite returns,
    // and leaves nothing locked.
    let r = a.get("/libcgi-bin/f.so?mode=loopwrite");
    assert!(r.truncated || r.status == 500, "{}", r.status);
    for _ in 0..5 {
        ok_pid(&a, "/libcgi-bin/f.so");
    }
    assert!(dead_children(&a.error_log()).is_empty());
}

/// Deadlines shorter than the watchdog's tick: the looping call is still cut,
/// and the quick calls after it on the same server never are (a mark the
/// watchdog left must not reach the next call).
///
/// Isolated, the looping call's worker is killed and a new one serves the
/// quick calls, none of which is cut.
fn short_timeouts(mpm: Mpm) {
    let (a, _) = single(mpm, "LibCGITimeout 0.05\nLibCGIMaxFaults 0 1", &[]);
    let pid = ok_pid(&a, "/libcgi-bin/f.so");
    let servers = a.server_children();
    let t = Instant::now();
    assert_eq!(a.get("/libcgi-bin/f.so?mode=loop").status, 500);
    assert!(t.elapsed() < Duration::from_secs(1), "took {:?}", t.elapsed());
    let pid = survived_here(&a, "/libcgi-bin/f.so", &pid, &servers);
    for _ in 0..200 {
        // Isolated, a cut call would be a second timeout line (below).
        let now = ok_pid(&a, "/libcgi-bin/f.so");
        assert!(isolated() || now == pid, "{now} != {pid}");
    }
    let log = a.error_log();
    // (In process the deadline is printed to a tenth of a second.)
    let want = timeout_line("f.so", if isolated() { "0.05" } else { "0.1" });
    assert_eq!(log.lines().filter(|l| l.contains(&want)).count(), 1, "{log}");
    assert!(dead_children(&log).is_empty());
}

fn exit_calls(mpm: Mpm) {
    let (a, _) = single(mpm, "", &[]);
    let pid = ok_pid(&a, "/libcgi-bin/f.so");
    let r = a.get("/libcgi-bin/f.so?mode=exit0");
    assert_eq!((r.status, r.text().as_str()), (200, "before exit"));
    let r = a.get("/libcgi-bin/f.so?mode=_exit0");
    assert_eq!((r.status, r.text().as_str()), (200, "before _exit"));
    assert_eq!(a.get("/libcgi-bin/f.so?mode=exit3").status, 500);
    a.wait_log("exit(3) line", |l| l.contains("f.so: processfunc returned 3") || l.contains("exit(3)"));
    assert_eq!(ok_pid(&a, "/libcgi-bin/f.so"), pid);
}

fn quarantine(mpm: Mpm) {
    let (a, _) = single(mpm, "LibCGIMaxFaults 3 2", &[]);
    for _ in 0..3 {
        assert_eq!(a.get("/libcgi-bin/f.so?mode=segv").status, 500);
    }
    let r = a.get("/libcgi-bin/f.so");
    assert_eq!(r.status, 503);
    let retry: u64 = r.header("Retry-After").expect("Retry-After").parse().unwrap();
    assert!((1..=2).contains(&retry), "{retry}");
    assert_eq!(a.get("/libcgi-bin/f.so").status, 503);
    let log = a.wait_log("quarantine line", |l| l.contains("f.so: quarantined for 2 s after 3 faults"));
    assert_eq!(log.matches("quarantined for").count(), 1, "logged once per quarantine");
    // Other scripts are not affected.
    assert_eq!(a.get("/libcgi-bin/t.so").status, 200);
    // The cool-down ends.
    wait_for("quarantine to expire", Duration::from_secs(5), || {
        (a.get("/libcgi-bin/f.so").status == 200).then_some(())
    });
}

/// Isolated: the server process is kept, the worker replaced.
fn continue_keeps_the_process(mpm: Mpm) {
    let (a, _) = single(mpm, "LibCGIFaultAction continue", &[]);
    let pid = ok_pid(&a, "/libcgi-bin/f.so");
    let servers = a.server_children();
    assert_eq!(a.get("/libcgi-bin/f.so?mode=segv").status, 500);
    survived_here(&a, "/libcgi-bin/f.so", &pid, &servers);
}

/// Isolated, the process that faulted is the worker, and it is replaced;
/// nothing of a server process was touched, so none is recycled (README
/// "Adaptive isolation": faults while isolated change nothing but the
/// worker).
fn recycle_replaces_the_process(mpm: Mpm) {
    let (a, _) = single(mpm, "LibCGIFaultAction recycle", &[]);
    let pid = ok_pid(&a, "/libcgi-bin/f.so");
    let servers = a.server_children();
    let r = a.get("/libcgi-bin/f.so?mode=segv");
    assert_eq!(r.status, 500, "the faulted request still gets its whole response");
    assert!(!r.truncated);
    if isolated() {
        // The recycle would have been scheduled before the response went.
        survived_here(&a, "/libcgi-bin/f.so", &pid, &servers);
        let log = a.error_log();
        assert!(!log.contains("recycling this server process"), "{log}");
        assert_eq!(log.matches(&fault_line("f.so", "signal 11")).count(), 1, "{log}");
        assert!(dead_children(&log).is_empty(), "{log}");
        return;
    }
    if mpm != Mpm::Prefork {
        // Threaded MPMs: the process exits once none of its threads serves a
        // request; a connection accepted in that last instant would be cut
        // (see README), so wait for the exit before asking again.
        a.wait_log("the recycled process to exit", |l| l.contains("exiting to be replaced"));
        wait_for("the recycled process to be gone", Duration::from_secs(15), || {
            (!std::path::Path::new(&format!("/proc/{pid}")).exists()).then_some(())
        });
    }
    // Every request meanwhile is answered; soon by a new process.
    let new = wait_for("a new server process", Duration::from_secs(15), || {
        let p = ok_pid(&a, "/libcgi-bin/f.so");
        (p != pid).then_some(p)
    });
    assert_ne!(new, pid);
    let log = a.error_log();
    assert!(log.contains("recycling this server process"), "{log}");
    assert!(dead_children(&log).is_empty(), "{log}");
}

fn refused_files(mpm: Mpm) {
    let a = Apache::start(Config::new(mpm));
    let bin = a.bin.clone();
    let refused = |name: &str, why: &str| {
        let r = a.get(&format!("/libcgi-bin/{name}"));
        assert_eq!(r.status, 403, "{name} was not refused");
        a.wait_log(why, |l| l.contains(name) && l.contains(why));
    };
    let p = a.install("ww.so", "t", &[]);
    chmod(&p, 0o757);
    refused("ww.so", "group- or world-writable");
    let p = a.install("gw.so", "t", &[]);
    chmod(&p, 0o775);
    refused("gw.so", "group- or world-writable");

    // Owner: neither root nor LibCGIOwner.
    let p = a.install("owned.so", "t", &[]);
    std::os::unix::fs::chown(&p, Some(12345), None).unwrap();
    refused("owned.so", "owned by uid 12345");

    // A writable directory between the script and the configured root.
    fs::create_dir(bin.join("open")).unwrap();
    build_script(&bin.join("open"), "s.so", "t", &[]);
    chmod(&bin.join("open"), 0o777);
    refused("open/s.so", "is group- or world-writable");

    // Symlinks are resolved: inside the directory is fine, outside is not.
    let outside = a.dir.join("outside");
    fs::create_dir(&outside).unwrap();
    chmod(&outside, 0o755);
    build_script(&outside, "o.so", "t", &[]);
    std::os::unix::fs::symlink(outside.join("o.so"), bin.join("link-out.so")).unwrap();
    refused("link-out.so", "resolves outside");
    a.install("real.so", "t", &[]);
    std::os::unix::fs::symlink(bin.join("real.so"), bin.join("link-in.so")).unwrap();
    assert_eq!(a.get("/libcgi-bin/link-in.so").text(), "hello v0");

    // LibCGIOwner allows that user.
    let b = Apache::start(Config::new(mpm).extra("LibCGIOwner #12345"));
    let p = b.install("owned.so", "t", &[]);
    std::os::unix::fs::chown(&p, Some(12345), None).unwrap();
    assert_eq!(b.get("/libcgi-bin/owned.so").text(), "hello v0");

    // A script exporting one of our names does not replace ours for others.
    a.install("evil.so", "fault", &["-DEXPORT_LWRITE"]);
    let _ = a.get("/libcgi-bin/evil.so");
    assert_eq!(a.get("/libcgi-bin/real.so").text(), "hello v0");
    assert!(dead_children(&a.error_log()).is_empty());
}

prefork_and_event!(
    every_fault_kind,
    faults_in_init_and_terminate,
    fault_after_partial_output,
    timeouts,
    short_timeouts,
    exit_calls,
    quarantine,
    continue_keeps_the_process,
    recycle_replaces_the_process,
    refused_files,
);

/// A fault inside one of our callbacks is a fault of the server, not of the
/// script: it goes to Apache's own handler (core dump, "exit signal" in the
/// log, a new process), exactly as before the module was loaded.
///
/// Isolated, the callback runs in the worker: the bad pointer costs the
/// worker (a 500, one line), and no server process dies.
fn fault_in_callback_is_the_servers(mpm: Mpm) {
    let (a, _) = single(mpm, "", &[]);
    let pid = ok_pid(&a, "/libcgi-bin/f.so");
    if isolated() {
        let servers = a.server_children();
        let r = a.get("/libcgi-bin/f.so?mode=badwrite");
        assert_eq!(r.status, 500, "{}", r.text());
        let log = a.wait_log("the fault's line", |l| l.contains(&fault_line("f.so", "signal 11")));
        // Where the worker's lwrite read the script's pointer (16 and on),
        // as the worker reported it (the signal is the manager's word).
        assert!(log.contains("worker replaced; the worker said the fault was at address 0x"), "{log}");
        survived_here(&a, "/libcgi-bin/f.so", &pid, &servers);
        assert!(dead_children(&a.error_log()).is_empty(), "{}", a.error_log());
        return;
    }
    let mut s = std::net::TcpStream::connect(("127.0.0.1", a.port)).unwrap();
    use std::io::{Read, Write};
    s.write_all(b"GET /libcgi-bin/f.so?mode=badwrite HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    assert!(buf.is_empty(), "expected the connection to die: {}", String::from_utf8_lossy(&buf));
    a.wait_log("exit signal line", |l| l.contains("exit signal Segmentation fault"));
    let new = wait_for("a replacement process", Duration::from_secs(15), || {
        let r = a.get("/libcgi-bin/f.so");
        (r.status == 200).then(|| r.text())
    });
    assert_ne!(new, format!("ok pid={pid}"));
}

prefork_and_event_extra!(fault_in_callback_is_the_servers);

/// A bounded mix of requests, about 10% of them to faulting scripts of
/// every kind, from several clients at once: every good request gets its
/// exact body, no server process dies, memory stays flat.
#[test]
fn soak_event() {
    let mut cfg = Config::new(Mpm::Event).extra("LibCGITimeout 1\nLibCGIMaxFaults 0 1");
    cfg.servers = 2;
    cfg.threads = 16;
    let a = Apache::start(cfg);
    a.install("f.so", "fault", &[]);
    a.install("t.so", "t", &["-DTHREAD_SAFE"]);
    let port = a.port;
    let total = 5000;
    let clients = 8;
    let kinds: Vec<&str> = KINDS.iter().map(|k| k.0).chain(["loop", "partial", "exit3"]).collect();
    let rss = |a: &Apache| -> u64 {
        a.children()
            .iter()
            .filter_map(|p| fs::read_to_string(format!("/proc/{p}/status")).ok())
            .filter_map(|s| {
                s.lines()
                    .find(|l| l.starts_with("VmRSS:"))
                    .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
            })
            .sum()
    };
    let run = |from: usize, to: usize| {
        let kinds = kinds.clone();
        let next = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(from));
        let deadline = Instant::now() + Duration::from_secs(240);
        let hs: Vec<_> = (0..clients)
            .map(|_| {
                let next = next.clone();
                let kinds = kinds.clone();
                std::thread::spawn(move || {
                    let mut bad = Vec::new();
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        if i >= to || Instant::now() > deadline {
                            break;
                        }
                        if i % 10 == 3 {
                            let k = kinds[(i / 10) % kinds.len()];
                            let _ = std::panic::catch_unwind(|| {
                                Request::get(&format!("/libcgi-bin/f.so?mode={k}")).send(port)
                            });
                        } else {
                            let r = Request::get(&format!("/libcgi-bin/t.so?mode=echo&n={i}"))
                                .header("X-Token", &i.to_string())
                                .send(port);
                            let want = format!("mode=echo&n={i}|{i}|mode=echo&n={i}|{i}");
                            if r.status != 200 || r.text() != want {
                                bad.push(format!("#{i}: {} {}", r.status, r.text()));
                            }
                        }
                    }
                    bad
                })
            })
            .collect();
        let bad: Vec<String> = hs.into_iter().flat_map(|h| h.join().unwrap()).collect();
        assert!(next.load(std::sync::atomic::Ordering::Relaxed) >= to, "the soak ran out of time");
        bad
    };
    // Warm-up: every thread has loaded both scripts and set up its guard.
    let mut bad = run(0, 1000);
    let before = rss(&a);
    bad.extend(run(1000, total));
    let after = rss(&a);
    assert!(bad.is_empty(), "{} good requests went wrong: {:?}", bad.len(), &bad[..bad.len().min(5)]);
    let log = a.error_log();
    assert!(dead_children(&log).is_empty(), "{:?}", dead_children(&log));
    let faults = if isolated() {
        log.matches("processfunc crashed in its isolated worker").count()
            + log.matches("processfunc timed out after").count()
    } else {
        log.matches("processfunc signal").count() + log.matches("still running after").count()
    };
    assert!(faults >= 300, "only {faults} faults were exercised");
    // Bound: 16 MiB of growth over 4,000 requests for all server processes.
    let growth = after as i64 - before as i64;
    eprintln!("soak: {total} requests, {faults} faults, server RSS {before} KiB -> {after} KiB ({growth:+} KiB)");
    assert!(growth < 16 * 1024, "resident memory grew by {growth} KiB");
}

/// common::survived with this file's ok_pid.
fn survived_here(a: &Apache, path: &str, pid: &str, servers: &[u32]) -> String {
    survived(a, path, pid, servers, ok_pid)
}
