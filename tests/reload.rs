//! Issue 9, items 6 and 9: one mapped object is one Script (hot reload under
//! load, ctime changes, several paths to one file), and LibCGIFaultAction
//! recycle under steady load on every MPM.

mod common;
use common::*;
use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::{BufReader, Write};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What tests/scripts/reload.c reports.
#[derive(Debug, Clone, PartialEq)]
struct Report {
    version: u32,
    state: String,
    inits: u32,
    calls: u32,
    bad: u32,
    pid: u32,
}

fn parse(body: &str) -> Option<Report> {
    let f: BTreeMap<&str, &str> = body.split_whitespace().filter_map(|w| w.split_once('=')).collect();
    Some(Report {
        version: f.get("version")?.parse().ok()?,
        state: f.get("state")?.to_string(),
        inits: f.get("inits")?.parse().ok()?,
        calls: f.get("calls")?.parse().ok()?,
        bad: f.get("bad")?.parse().ok()?,
        pid: f.get("pid")?.parse().ok()?,
    })
}

/// A request that must succeed with the script's report.
fn report(a: &Apache, path: &str) -> Report {
    let r = a.get(path);
    assert_eq!(r.status, 200, "{path}: {}\n{}", r.text(), a.error_log());
    parse(&r.text()).unwrap_or_else(|| panic!("{path}: not a report: {:?}", r.text()))
}

/// Builds the script's versions once, outside the served directory.
fn build_versions(a: &Apache, versions: &[u32], flags: &[&str]) -> Vec<PathBuf> {
    let dir = a.dir.join("builds");
    fs::create_dir_all(&dir).unwrap();
    versions
        .iter()
        .map(|v| {
            let d = format!("-DVERSION={v}");
            let mut f = vec![d.as_str()];
            f.extend_from_slice(flags);
            build_script(&dir, &format!("v{v}.so"), "reload", &f)
        })
        .collect()
}

/// Installs `from` as `to` by copy and atomic rename: a new inode each time.
fn install_copy(from: &Path, to: &Path) {
    let tmp = to.with_extension(format!("tmp{}", std::process::id()));
    fs::copy(from, &tmp).unwrap();
    fs::set_permissions(&tmp, fs::Permissions::from_mode(0o755)).unwrap();
    fs::rename(&tmp, to).unwrap();
}

/// A POST whose body arrives `delay` after its headers (so the request's
/// stat is that much older than the module's look at the registry).
fn slow_post(port: u16, path: &str, delay: Duration) -> Result<Response, String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let body = b"x=1";
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).map_err(|e| format!("send: {e}"))?;
    std::thread::sleep(delay);
    s.write_all(body).map_err(|e| format!("send body: {e}"))?;
    let r =
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| http::read_response(&mut BufReader::new(s), false)));
    r.map_err(|_| "no response".to_string())
}

/// What one load run saw.
#[derive(Default)]
struct Tally {
    total: usize,
    failures: Vec<String>,
    versions: BTreeSet<u32>,
}

impl Tally {
    fn check(&mut self, r: Result<Response, String>, thread_safe: bool) {
        self.total += 1;
        let r = match r {
            Ok(r) => r,
            Err(e) => return self.failures.push(e),
        };
        let text = r.text();
        match (r.status, parse(&text)) {
            (200, Some(rep)) if !r.truncated => {
                self.versions.insert(rep.version);
                // Wholly one version: the state initfunc made belongs to the
                // code that answered.
                let whole = rep.state == format!("v{}", rep.version);
                let bad = if thread_safe { rep.bad & !8 } else { rep.bad };
                if bad != 0 || !whole {
                    self.failures.push(text);
                }
            }
            _ => self.failures.push(format!("{} {text}", r.status)),
        }
    }
    fn summary(&self) -> String {
        let shown: Vec<_> = self.failures.iter().take(5).collect();
        format!("{} of {} failed, e.g. {shown:?}", self.failures.len(), self.total)
    }
}

fn reload_config(mpm: Mpm) -> Config {
    let mut c = Config::new(mpm);
    // prefork: a few processes, so that clients do not queue behind one.
    if mpm == Mpm::Prefork {
        c.servers = 4;
    }
    c
}

/// Runs `clients` threads of `one` until `run` has passed, while `change`
/// runs every `every`.
fn under_load(
    clients: usize,
    run: Duration,
    every: Duration,
    one: impl Fn() -> Result<Response, String> + Sync,
    mut change: impl FnMut(usize),
    thread_safe: bool,
) -> Tally {
    let tally = Mutex::new(Tally::default());
    let stop = AtomicBool::new(false);
    std::thread::scope(|sc| {
        for _ in 0..clients {
            sc.spawn(|| {
                while !stop.load(Ordering::Relaxed) {
                    let r = one();
                    tally.lock().unwrap().check(r, thread_safe);
                }
            });
        }
        let start = Instant::now();
        let mut n = 0;
        while start.elapsed() < run {
            std::thread::sleep(every);
            n += 1;
            change(n);
        }
        stop.store(true, Ordering::Relaxed);
    });
    tally.into_inner().unwrap()
}

/// `mv -f` of a new version every 250 ms while 16 clients send POSTs whose
/// body comes 30 ms after the headers: every response is wholly one version,
/// and no initfunc ever runs on live state, no terminatefunc while a call
/// runs.
fn mv_under_load(mpm: Mpm) {
    let a = Apache::start(reload_config(mpm));
    let builds = build_versions(&a, &[1, 2], &["-DTHREAD_SAFE"]);
    let run = a.bin.join("r.so");
    install_copy(&builds[0], &run);
    assert_eq!(report(&a, "/libcgi-bin/r.so").version, 1);
    let port = a.port;
    let tally = under_load(
        16,
        Duration::from_secs(8),
        Duration::from_millis(250),
        || slow_post(port, "/libcgi-bin/r.so", Duration::from_millis(30)),
        |n| install_copy(&builds[n % 2], &run),
        true,
    );
    assert!(tally.total > 200, "too few requests to mean anything: {}", tally.summary());
    assert!(tally.failures.is_empty(), "{}\n{}", tally.summary(), a.error_log());
    assert_eq!(tally.versions, BTreeSet::from([1, 2]), "both versions were served");
    assert!(dead_children(&a.error_log()).is_empty(), "{}", a.error_log());
}

/// chmod and touch every 250 ms against a script that is not thread-safe:
/// never two calls in flight, never a second initfunc.
fn ctime_changes_under_load(mpm: Mpm) {
    let a = Apache::start(reload_config(mpm));
    let builds = build_versions(&a, &[1], &[]);
    let run = a.bin.join("r.so");
    install_copy(&builds[0], &run);
    report(&a, "/libcgi-bin/r.so");
    let port = a.port;
    let tally = under_load(
        8,
        Duration::from_secs(6),
        Duration::from_millis(250),
        || {
            let r = Request::get("/libcgi-bin/r.so?hold=20").send(port);
            if r.status == 200 {
                // A second initfunc on the same mapping shows as inits > 1.
                if let Some(rep) = parse(&r.text()) {
                    if rep.inits != 1 {
                        return Err(format!("initfunc ran again: {}", r.text()));
                    }
                }
            }
            Ok(r)
        },
        |n| match n % 3 {
            0 => chmod(&run, 0o555),
            1 => chmod(&run, 0o755),
            _ => {
                fs::File::options().write(true).open(&run).unwrap().set_modified(std::time::SystemTime::now()).unwrap()
            }
        },
        false,
    );
    assert!(tally.total > 50, "too few requests: {}", tally.summary());
    assert!(tally.failures.is_empty(), "{}\n{}", tally.summary(), a.error_log());
}

/// A hard link and a symlink to the same file are one script: initfunc
/// once, one call counter; a fault through one path unloads it for all.
fn two_paths_one_script(mpm: Mpm) {
    let mut c = Config::new(mpm).extra("LibCGIMaxFaults 0 60");
    c.loglevel = "warn libcgi:debug".into();
    let a = Apache::start(c);
    let builds = build_versions(&a, &[1], &[]);
    let run = a.bin.join("r.so");
    install_copy(&builds[0], &run);
    fs::hard_link(&run, a.bin.join("hard.so")).unwrap();
    std::os::unix::fs::symlink("r.so", a.bin.join("sym.so")).unwrap();
    let mut seen = Vec::new();
    for p in ["r.so", "hard.so", "sym.so", "r.so", "hard.so"] {
        let rep = report(&a, &format!("/libcgi-bin/{p}"));
        assert_eq!(rep.inits, 1, "{p}: initfunc ran again: {rep:?}");
        seen.push(rep);
    }
    if isolated() {
        return isolated_paths(&a, &seen);
    }
    let calls: Vec<u32> = seen.iter().map(|r| r.calls).collect();
    assert_eq!(calls, [1, 2, 3, 4, 5], "one call counter for every path: {seen:?}");
    let shared = a.error_log().lines().filter(|l| l.contains("shares the object")).count();
    assert_eq!(shared, 2, "hard.so and sym.so share r.so's object\n{}", a.error_log());
    assert!(seen.iter().all(|r| r.pid == seen[0].pid), "one process: {seen:?}");
    // Once each path has its entry, every path takes the fast path (the
    // request's stat of a symlink is its target's).
    let slow = |l: &str| {
        l.lines().filter(|l| l.contains("shares the object") || l.contains("after the request's stat")).count()
    };
    let before = slow(&a.error_log());
    for p in ["r.so", "hard.so", "sym.so"] {
        report(&a, &format!("/libcgi-bin/{p}"));
    }
    assert_eq!(slow(&a.error_log()), before, "{}", a.error_log());

    // A fault through the hard link unloads the object for every path.
    assert_eq!(a.get("/libcgi-bin/hard.so?crash").status, 500);
    let after = report(&a, "/libcgi-bin/sym.so");
    assert_eq!(after.pid, seen[0].pid, "the process continued");
    assert_eq!((after.inits, after.calls), (1, 1), "a fresh load after the fault: {after:?}");
    let again = report(&a, "/libcgi-bin/r.so");
    assert_eq!((again.inits, again.calls), (1, 2), "still one script: {again:?}");
    let all = a.error_log();
    assert_eq!(all.lines().filter(|l| l.contains("initfunc done")).count(), 2, "{all}");
}

/// two_paths_one_script in isolation: a worker serves one path (README
/// "One script per worker"), so each path is a script of its own, loaded
/// once in its own worker (no mapping is shared between processes: nothing
/// is initialised twice); a fault through one path costs only that path's
/// worker.
fn isolated_paths(a: &Apache, seen: &[Report]) {
    let calls: Vec<u32> = seen.iter().map(|r| r.calls).collect();
    assert_eq!(calls, [1, 1, 1, 2, 2], "one call counter per path: {seen:?}");
    let pids: BTreeSet<u32> = seen[..3].iter().map(|r| r.pid).collect();
    assert_eq!(pids.len(), 3, "a worker per path: {seen:?}");
    assert_eq!((seen[3].pid, seen[4].pid), (seen[0].pid, seen[1].pid), "each path stays with its worker: {seen:?}");
    assert_eq!(a.get("/libcgi-bin/hard.so?crash").status, 500);
    let sym = report(a, "/libcgi-bin/sym.so");
    assert_eq!((sym.pid, sym.inits, sym.calls), (seen[2].pid, 1, 2), "sym.so's worker was not touched: {sym:?}");
    let r = report(a, "/libcgi-bin/r.so");
    assert_eq!((r.pid, r.inits, r.calls), (seen[0].pid, 1, 3), "r.so's worker was not touched: {r:?}");
    let hard = report(a, "/libcgi-bin/hard.so");
    assert_ne!(hard.pid, seen[1].pid, "hard.so's worker was replaced");
    assert_eq!((hard.inits, hard.calls), (1, 1), "a fresh load after the fault: {hard:?}");
    let log = a.error_log();
    assert_eq!(log.lines().filter(|l| l.contains("loaded in isolated worker")).count(), 4, "{log}");
    assert_eq!(log.lines().filter(|l| l.contains("processfunc crashed in its isolated worker")).count(), 1, "{log}");
}

/// chmod 0777 gives 403 at once; chmod back serves again without a second
/// initfunc (nothing was unloaded).
fn chmod_rechecks_trust_without_reinit(mpm: Mpm) {
    let a = Apache::start(Config::new(mpm));
    let builds = build_versions(&a, &[1], &[]);
    let run = a.bin.join("r.so");
    install_copy(&builds[0], &run);
    let first = report(&a, "/libcgi-bin/r.so");
    chmod(&run, 0o777);
    let r = a.get("/libcgi-bin/r.so");
    assert_eq!(r.status, 403, "{}", r.text());
    let log = a.wait_log("the refusal", |l| l.contains("group- or world-writable"));
    assert_eq!(log.lines().filter(|l| l.contains("r.so") && l.contains("writable")).count(), 1, "{log}");
    chmod(&run, 0o755);
    let back = report(&a, "/libcgi-bin/r.so");
    assert_eq!(back.pid, first.pid);
    assert_eq!((back.inits, back.calls), (1, 2), "served again, without a second initfunc: {back:?}");
}

/// A request that stat()ed version 1, whose body comes after version 2 was
/// installed and loaded by another request, runs version 2 whole, and
/// neither reloads it nor puts version 1 back.  Threaded MPMs only: under
/// prefork the two requests cannot be in one process at once.
fn stale_stat_gets_the_new_version(mpm: Mpm) {
    let a = Apache::start(Config::new(mpm));
    let builds = build_versions(&a, &[1, 2], &["-DTHREAD_SAFE"]);
    let run = a.bin.join("r.so");
    install_copy(&builds[0], &run);
    assert_eq!(report(&a, "/libcgi-bin/r.so").version, 1);
    // The request's headers go now (Apache maps and stats the file), its
    // body later.
    let mut s = TcpStream::connect(("127.0.0.1", a.port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let head = format!(
        "POST /libcgi-bin/r.so HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nConnection: close\r\nContent-Length: 3\r\n\r\n",
        a.port
    );
    s.write_all(head.as_bytes()).unwrap();
    // Apache reads the headers and stats the file before the handler waits
    // for the body.  Nothing outside the server shows that moment, so this
    // waits well past it; were it too short, the request would stat version
    // 2 and the test would pass without testing anything, never fail.
    std::thread::sleep(Duration::from_millis(300));
    install_copy(&builds[1], &run);
    let b = report(&a, "/libcgi-bin/r.so");
    assert_eq!((b.version, b.inits, b.calls), (2, 1, 1), "{b:?}");
    s.write_all(b"x=1").unwrap();
    let r = http::read_response(&mut BufReader::new(s), false);
    assert_eq!(r.status, 200, "{}\n{}", r.text(), a.error_log());
    let stale = parse(&r.text()).unwrap();
    assert_eq!(
        (stale.version, stale.state.as_str(), stale.inits, stale.calls, stale.bad),
        (2, "v2", 1, 2, 0),
        "the stale request ran the loaded version 2: {stale:?}"
    );
    let c = report(&a, "/libcgi-bin/r.so");
    assert_eq!((c.version, c.inits, c.calls), (2, 1, 3), "version 2 stayed loaded: {c:?}");
}

/// A fault while another request still runs the same script: the next
/// request waits until that one is done and the old load is closed, then
/// gets a fresh load; the running request finishes whole, and the old
/// terminatefunc never touches the new state.  Threaded MPMs only.
fn fault_while_another_request_runs(mpm: Mpm) {
    let a = Apache::start(Config::new(mpm).extra("LibCGIMaxFaults 0 60"));
    let builds = build_versions(&a, &[1], &["-DTHREAD_SAFE"]);
    install_copy(&builds[0], &a.bin.join("r.so"));
    assert_eq!(report(&a, "/libcgi-bin/r.so").calls, 1);
    let port = a.port;
    let long = std::thread::spawn(move || Request::get("/libcgi-bin/r.so?hold=800").send(port));
    // Give it time to enter processfunc; were this too short, it would run
    // after the fault on a fresh load and the test would test less, not fail.
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(a.get("/libcgi-bin/r.so?crash").status, 500);
    let next = report(&a, "/libcgi-bin/r.so");
    let long = long.join().unwrap();
    assert_eq!(long.status, 200, "{}", long.text());
    let long = parse(&long.text()).unwrap();
    assert_eq!((long.state.as_str(), long.bad), ("v1", 0), "the running request finished whole: {long:?}");
    assert_eq!((next.inits, next.calls, next.bad), (1, 1, 0), "a fresh load after the old one closed: {next:?}");
    let after = report(&a, "/libcgi-bin/r.so");
    if isolated() {
        // The fault cost only the worker it happened in (a fresh one took
        // its place and served `next`); the worker of the long request kept
        // its load, which no fault touched: whichever of the two answers
        // goes on with its own count.
        assert_ne!(next.pid, long.pid, "the long request's worker was busy: {next:?} {long:?}");
        let calls = if after.pid == long.pid { long.calls + 1 } else { next.calls + 1 };
        assert!(after.pid == long.pid || after.pid == next.pid, "{after:?} {long:?} {next:?}");
        assert_eq!((after.inits, after.calls, after.bad, after.state.as_str()), (1, calls, 0, "v1"), "{after:?}");
    } else {
        assert_eq!((after.inits, after.calls, after.bad, after.state.as_str()), (1, 2, 0, "v1"), "{after:?}");
    }
}

mod worker_only {
    #[test]
    fn stale_stat_gets_the_new_version() {
        super::stale_stat_gets_the_new_version(super::Mpm::Worker)
    }
    #[test]
    fn fault_while_another_request_runs() {
        super::fault_while_another_request_runs(super::Mpm::Worker)
    }
}
mod event_only {
    #[test]
    fn stale_stat_gets_the_new_version() {
        super::stale_stat_gets_the_new_version(super::Mpm::Event)
    }
    #[test]
    fn fault_while_another_request_runs() {
        super::fault_while_another_request_runs(super::Mpm::Event)
    }
}

/// LibCGIFaultAction recycle under steady load: the faulted process stops
/// taking connections, finishes what it has and exits; a new one takes its
/// place; no client sees a failure but the faulting request.
fn recycle_under_steady_load(mpm: Mpm) {
    // Two processes, and the MPM told to keep both (so that the replacement
    // is started as soon as the faulted one is gone).
    // Pinned in process: recycling is what a fault costs the server process
    // that ran the script; an isolated fault costs only its worker.
    let mut c = Config::new(mpm).extra("LibCGIFaultAction recycle\nLibCGIMaxFaults 0 60").extra(PIN_INPROCESS);
    c.servers = 2;
    c.threads = 8;
    if mpm != Mpm::Prefork {
        c = c.extra("MinSpareThreads 16\nMaxSpareThreads 32");
    }
    let a = Apache::start(c);
    let builds = build_versions(&a, &[1], &["-DTHREAD_SAFE"]);
    install_copy(&builds[0], &a.bin.join("r.so"));
    wait_for("both server processes", Duration::from_secs(10), || (a.server_children().len() == 2).then_some(()));
    let before: BTreeSet<u32> = a.server_children().into_iter().collect();
    let port = a.port;
    let pids = Arc::new(Mutex::new(Vec::<(Instant, u32)>::new()));
    let stop = AtomicBool::new(false);
    let failures = Mutex::new(Vec::<String>::new());
    let total = Mutex::new(0usize);
    let mut faulted = 0u32;
    let (mut gone_after, mut replaced_after) = (None, None);
    let mut t_fault = Instant::now();
    std::thread::scope(|sc| {
        // As many clients as the two processes have workers, each request
        // holding its worker for 100 ms: the faulted process is never
        // without a request in flight (the old wait for an idle instant
        // never ends).
        for _ in 0..16 {
            sc.spawn(|| {
                while !stop.load(Ordering::Relaxed) {
                    let r = std::panic::catch_unwind(|| Request::get("/libcgi-bin/r.so?hold=100").send(port));
                    *total.lock().unwrap() += 1;
                    match r.as_ref().ok().filter(|r| r.status == 200 && !r.truncated).and_then(|r| parse(&r.text())) {
                        Some(rep) => pids.lock().unwrap().push((Instant::now(), rep.pid)),
                        None => failures.lock().unwrap().push(match r {
                            Ok(r) => format!("{} {}", r.status, r.text()),
                            Err(_) => "no response".into(),
                        }),
                    }
                }
            });
        }
        std::thread::sleep(Duration::from_secs(2));
        let r = a.get("/libcgi-bin/r.so?crash");
        assert_eq!(r.status, 500, "the faulting request gets its 500");
        let t0 = Instant::now();
        t_fault = t0;
        let log = a.wait_log("the recycle notice", |l| l.contains("recycling this server process"));
        let line = log.lines().find(|l| l.contains("recycling this server process")).unwrap();
        faulted = line.split("[pid ").nth(1).and_then(|s| s.split([':', ']']).next()).unwrap().parse().unwrap();
        assert!(before.contains(&faulted), "{faulted} is one of {before:?}");
        // Bounded by GracefulShutdownTimeout (5 s in the tests' config) plus
        // the parent's once-a-second maintenance.
        while t0.elapsed() < Duration::from_secs(10) {
            let alive = Path::new(&format!("/proc/{faulted}")).exists() && a.server_children().contains(&faulted);
            if gone_after.is_none() && !alive {
                gone_after = Some(t0.elapsed());
            }
            if gone_after.is_some() && replaced_after.is_none() {
                let now: BTreeSet<u32> = a.server_children().into_iter().collect();
                let served_by_new = pids.lock().unwrap().iter().any(|(t, p)| *t > t0 && !before.contains(p));
                if now.len() == 2 && !now.contains(&faulted) && served_by_new {
                    replaced_after = Some(t0.elapsed());
                }
            }
            if replaced_after.is_some() && t0.elapsed() > Duration::from_secs(4) {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        stop.store(true, Ordering::Relaxed);
    });
    let total = total.into_inner().unwrap();
    let failures = failures.into_inner().unwrap();
    let finished_after_fault = pids.lock().unwrap().iter().filter(|(t, p)| *p == faulted && *t > t_fault).count();
    eprintln!(
        "{}: {total} requests under load, {} failed; faulted process {faulted} gone after {gone_after:?}, \
         replaced (and serving) after {replaced_after:?}; {finished_after_fault} requests in flight in it finished after the fault",
        mpm.name(),
        failures.len()
    );
    let log = a.error_log();
    assert!(gone_after.is_some_and(|t| t < Duration::from_secs(6)), "process {faulted} still there\n{log}");
    assert!(replaced_after.is_some(), "no new process served\n{log}");
    assert!(
        failures.is_empty(),
        "{} of {total} failed: {:?}\n{log}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    assert!(dead_children(&log).is_empty(), "{log}");
    assert!(!log.contains("resource shortage"), "{log}");
    // Under load the MPM's own graceful exit did it, not the backstop.
    assert!(!log.contains("server process exiting now"), "{log}");
    // The other process never stopped.
    let other: Vec<_> = before.iter().filter(|p| **p != faulted).collect();
    assert!(other.iter().all(|p| a.server_children().contains(p)), "{other:?} {:?}", a.server_children());
}

per_mpm!(
    mv_under_load,
    ctime_changes_under_load,
    two_paths_one_script,
    chmod_rechecks_trust_without_reinit,
    recycle_under_steady_load
);
