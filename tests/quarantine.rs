//! Issue 10: quarantine and fault counts are server-wide (the script's row in
//! the metrics segment), so a script crashing in many server processes is
//! quarantined after LibCGIMaxFaults faults in total, not per process.

mod common;
use common::*;
use std::collections::BTreeSet;
use std::fs;
use std::time::Duration;

const FAULTS: usize = 5;

/// The line a fault of f.so gets: in isolation the server process logs its
/// worker's death (README "Isolation").
fn fault_line() -> &'static str {
    if isolated() {
        "f.so: processfunc crashed in its isolated worker (signal 11); worker replaced"
    } else {
        "f.so: processfunc signal 11"
    }
}

/// The PIDs of the processes that logged a fault of f.so.
fn fault_pids(log: &str) -> Vec<String> {
    log.lines()
        .filter(|l| l.contains(fault_line()))
        .filter_map(|l| l.split("[pid ").nth(1))
        .map(|p| p.split([']', ':']).next().unwrap_or("").to_string())
        .collect()
}

/// `LibCGIFaultAction recycle` ends every process a fault happened in, so
/// each of the N faults happens in a process of its own: per-process counts
/// would never reach N.  Processes that loaded the script before and never
/// faulted must answer 503 too (they read the shared word), the quarantine
/// outlives a graceful restart, and a new file ends it.
fn faults_in_many_processes_add_up(mpm: Mpm) {
    let mut cfg = Config::new(mpm).extra(&format!(
        "KeepAlive Off\nMaxConnectionsPerChild 0\nLibCGIMaxFaults {FAULTS} 60\nLibCGIFaultAction recycle"
    ));
    match mpm {
        Mpm::Prefork => cfg.servers = 8,
        _ => {
            cfg.servers = 3;
            cfg.threads = 4;
        }
    }
    let a = Apache::start(cfg);
    a.install("f.so", "fault", &[]);
    // Loaded in several processes before any fault.
    for _ in 0..16 {
        let r = a.get("/libcgi-bin/f.so");
        assert_eq!(r.status, 200, "{}\n{}", r.text(), a.error_log());
    }
    for i in 0..FAULTS {
        let r = a.get("/libcgi-bin/f.so?mode=segv");
        assert_eq!(r.status, 500, "fault {} of {FAULTS} answered {}:\n{}", i + 1, r.status, a.error_log());
        // The faulted process is on its way out: wait for its line, so that
        // the next request is counted after this one.
        a.wait_log("the fault's line", |l| fault_pids(l).len() > i);
    }
    let log = a.error_log();
    let pids: BTreeSet<_> = fault_pids(&log).into_iter().collect();
    if isolated() {
        // Each fault killed the worker it happened in (a fresh one took the
        // next): N faults in N processes by construction, and no server
        // process is recycled, so which ones logged them does not matter.
        assert_eq!(fault_pids(&log).len(), FAULTS, "{log}");
    } else {
        let want = if mpm == Mpm::Prefork { 4 } else { 2 };
        assert!(pids.len() >= want, "faults spread over {} processes only ({pids:?}):\n{log}", pids.len());
    }
    // Quarantined after exactly N faults in total, in every process.
    for i in 0..16 {
        let r = a.get("/libcgi-bin/f.so");
        assert_eq!(r.status, 503, "request {i} after {FAULTS} faults in {pids:?}: {}\n{log}", r.text());
        let retry: u64 = r.header("Retry-After").expect("Retry-After").parse().unwrap();
        assert!((1..=60).contains(&retry), "Retry-After {retry}");
    }
    let log = a.error_log();
    let lines = log.matches(&format!("f.so: quarantined for 60 s after {FAULTS} faults")).count();
    assert_eq!(lines, 1, "one quarantine line for the whole server:\n{log}");
    // Other scripts are not affected.
    a.install("t.so", "t", &[]);
    assert_eq!(a.get("/libcgi-bin/t.so").status, 200);

    // A graceful restart keeps the counts, the quarantine with them.
    let before = a.children();
    a.graceful();
    wait_for("a new generation", Duration::from_secs(20), || {
        let now = a.children();
        (!now.is_empty() && now.iter().all(|p| !before.contains(p))).then_some(())
    });
    assert_eq!(a.get("/libcgi-bin/f.so").status, 503, "quarantine lost at a graceful restart");

    // A new file ends it, for every process.
    let so = a.bin.join("f.so");
    let tmp = a.bin.join("f.so.new");
    fs::copy(&so, &tmp).unwrap();
    fs::rename(&tmp, &so).unwrap();
    for _ in 0..8 {
        let r = a.get("/libcgi-bin/f.so");
        assert_eq!(r.status, 200, "a replaced script is served again: {}\n{}", r.text(), a.error_log());
    }
    assert!(dead_children(&a.error_log()).is_empty());
}

/// With the metrics off (LibCGIStatusSlots 0) there is no segment:
/// quarantine is counted per process, and still works.
fn per_process_without_metrics(mpm: Mpm) {
    let a = Apache::start(Config::new(mpm).extra("LibCGIStatusSlots 0\nLibCGIMaxFaults 3 60"));
    a.install("f.so", "fault", &[]);
    for _ in 0..3 {
        assert_eq!(a.get("/libcgi-bin/f.so?mode=segv").status, 500);
    }
    let r = a.get("/libcgi-bin/f.so");
    assert_eq!(r.status, 503, "{}\n{}", r.text(), a.error_log());
    let log = a.wait_log("quarantine line", |l| l.contains("f.so: quarantined for 60 s after 3 faults"));
    assert_eq!(log.matches("quarantined for").count(), 1, "{log}");
}

per_mpm!(faults_in_many_processes_add_up, per_process_without_metrics);
