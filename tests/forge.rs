//! A hostile isolated script writes its worker's slot of the isolation
//! segment (tests/scripts/forge.c: it can write every byte of it): what it
//! writes there must not steer the server threads or the manager.  Under
//! prefork, worker and event; each script `LibCGIIsolation process`
//! whatever LIBCGI_TEST_ISOLATION says.

mod common;
use common::*;
use serde_json::Value;
use std::time::{Duration, Instant};

/// transport.rs SAMPLE: one isolated request in this many measures its
/// crossing cost.
const SAMPLE: usize = 8;

fn server(mpm: Mpm, more: &str) -> Apache {
    let mut c = Config::new(mpm);
    c.loglevel = "warn libcgi:debug".into();
    c.extra = "<Location /libcgi-status>\n  SetHandler libcgi-status\n</Location>\n\
               <Files \"f_*.so\">\n  LibCGIIsolation process\n</Files>\n"
        .to_string()
        + more;
    let a = Apache::start(c);
    a.install("f_forge.so", "forge", &["-pthread"]);
    a
}

fn pid_of(body: &str) -> u32 {
    let p = body.split_once("pid=").and_then(|(_, x)| x.split(' ').next()?.parse().ok());
    p.unwrap_or_else(|| panic!("no pid in {body:?}"))
}

/// The forger, armed (it found its slot), and its worker's pid.
fn arm(a: &Apache) -> u32 {
    let r = a.get("/libcgi-bin/f_forge.so?first");
    assert_eq!(r.status, 200, "{}\n{}", r.text(), a.error_log());
    assert!(r.text().contains(" armed=1 "), "the forger did not find its slot: {}", r.text());
    pid_of(&r.text())
}

/// `n` requests of the forger with `query`, one after the other: each 200
/// from the worker `pid` (so one load is the truth).
fn serve(a: &Apache, query: &str, n: usize, pid: u32) {
    for i in 0..n {
        let r = a.get(&format!("/libcgi-bin/f_forge.so?{query}&n={i}"));
        assert_eq!(r.status, 200, "{}\n{}", r.text(), a.error_log());
        assert_eq!(pid_of(&r.text()), pid, "another worker answered:\n{}", a.error_log());
    }
}

fn status_row(a: &Apache, name: &str) -> Value {
    let j = status_json(a);
    script_row(&j, name).cloned().unwrap_or_else(|| panic!("no row for {name} in {j}"))
}

fn lines<'a>(log: &'a str, what: &str) -> Vec<&'a str> {
    log.lines().filter(|l| l.contains(what)).collect()
}

/// A load and a reload claimed on every request (Slot::loaded) count
/// nothing: the script's row keeps its one real load, the debug log says
/// "loaded" once, and one warning names the script and the worker.
fn forged_loads_count_nothing(mpm: Mpm) {
    let a = server(mpm, "");
    let pid = arm(&a);
    let n = 40;
    serve(&a, "loaded", n, pid);
    let row = status_row(&a, "f_forge.so");
    let log = a.error_log();
    assert_eq!(row["requests"], n as u64 + 1, "{row}");
    for (k, want) in [("loads", 1), ("reloads", 0), ("unloads", 0), ("load_failures", 0)] {
        assert_eq!(row[k], want, "{k} of the forger (its worker loaded it once):\n{row}\n{log}");
    }
    let loaded = lines(&log, "f_forge.so: loaded in isolated worker");
    assert_eq!(loaded.len(), 1, "{loaded:#?}");
    assert!(lines(&log, "f_forge.so: file changed, loaded again").is_empty(), "{log}");
    let warned = lines(&log, "reported a load it had no reason to make");
    assert_eq!(warned.len(), 1, "one warning per worker:\n{log}");
    assert!(
        warned[0].contains("[libcgi:warn]")
            && warned[0].contains("f_forge.so")
            && warned[0].contains(&format!(" {pid} "))
    );
}

/// A request count one short of the sampling period, written on every
/// request (Slot::served), samples no more than the honest one in
/// `SAMPLE`: the debug log's "crossing cost" lines, one per sample.
fn a_forged_count_samples_at_the_honest_rate(mpm: Mpm) {
    let a = server(mpm, "");
    let pid = arm(&a);
    let n = 8 * SAMPLE;
    serve(&a, "served", n, pid);
    let log = a.error_log();
    let sampled = lines(&log, "f_forge.so: crossing cost ").len();
    // The slot's count runs 0..=n over these requests (the first, the
    // load, measures nothing): `n / SAMPLE` samples.
    assert_eq!(sampled, n / SAMPLE, "{sampled} of {} requests sampled:\n{log}", n + 1);
}

/// The worker's pid written into its slot is not what the manager kills:
/// at the deadline the worker dies and the process the script named
/// (another of root's) lives.
fn a_forged_pid_is_not_what_the_manager_kills(mpm: Mpm) {
    let a = server(mpm, "<Files \"f_forge.so\">\n  LibCGITimeout 1\n</Files>\n");
    let pid = arm(&a);
    let mut victim = std::process::Command::new("sleep").arg("120").spawn().unwrap();
    let t0 = Instant::now();
    let r = a.get(&format!("/libcgi-bin/f_forge.so?hang&pid={}", victim.id()));
    let took = t0.elapsed();
    let victim_alive = alive(victim.id());
    let _ = victim.kill();
    let _ = victim.wait();
    let log = a.error_log();
    assert!(victim_alive, "the manager killed the pid the script wrote:\n{log}");
    assert!(r.status == 500 || r.status == 200, "{}", r.status);
    wait_for("the hung worker killed", Duration::from_secs(10), || (!alive(pid)).then_some(()));
    assert!(took < Duration::from_secs(6), "the request took {took:?} (timeout 1 s):\n{log}");
    assert!(log.contains("f_forge.so: processfunc timed out after 1 s in its isolated worker"), "{log}");
    assert!(log.contains(&format!("worker pid {pid}")), "the line names the real worker:\n{log}");
}

/// A script key written into the slot gets the worker no other script's
/// requests: the victim runs in a worker of its own.
fn a_forged_script_key_gets_no_other_scripts_requests(mpm: Mpm) {
    let a = server(mpm, "");
    a.install("f_victim.so", "iso", &[]);
    let pid = arm(&a);
    let victim = a.bin.join("f_victim.so");
    // The forger's worker keeps the key from here on (its own requests go
    // to it no more, where the key steered claims).
    let r = a.get(&format!("/libcgi-bin/f_forge.so?script={}", victim.display()));
    assert_eq!(r.status, 200, "{}\n{}", r.text(), a.error_log());
    for i in 0..5 {
        let r = a.get(&format!("/libcgi-bin/f_victim.so?n={i}"));
        assert_eq!(r.status, 200, "{}\n{}", r.text(), a.error_log());
        assert_ne!(pid_of(&r.text()), pid, "the victim ran in the forger's worker:\n{}", a.error_log());
    }
}

/// A slot its live worker marked dead (and, where the slot had it, the
/// death called the manager's) is a fault of the script: the worker is
/// killed, the line says so, and the faults count towards quarantine.
fn a_slot_marked_dead_by_its_worker_is_a_fault(mpm: Mpm) {
    let a = server(mpm, "LibCGIMaxFaults 2 60\n");
    let mut pids = Vec::new();
    for i in 0..2 {
        pids.push(arm(&a));
        let r = a.get(&format!("/libcgi-bin/f_forge.so?dead&n={i}"));
        assert_eq!(r.status, 500, "{}\n{}", r.text(), a.error_log());
    }
    let r = a.get("/libcgi-bin/f_forge.so?after");
    let log = a.error_log();
    assert_eq!(r.status, 503, "two faults quarantine the script:\n{log}");
    assert!(!log.contains("isolation manager died"), "{log}");
    let lines = lines(&log, "f_forge.so: processfunc crashed in its isolated worker (no end the manager saw");
    assert_eq!(lines.len(), 2, "{log}");
    for (l, p) in lines.iter().zip(&pids) {
        assert!(l.ends_with(&format!("worker pid {p}")), "{l}");
    }
    for p in pids {
        wait_for("the worker that marked its slot dead killed", Duration::from_secs(10), || (!alive(p)).then_some(()));
    }
}

/// What a script forks outlives its worker no longer: orphaned with the
/// slot mapped, it would see the requests of the slot's next worker (a
/// replacement may run another script).  The manager kills it.
fn a_forked_child_dies_with_its_worker(mpm: Mpm) {
    let a = server(mpm, "");
    let pid = arm(&a);
    let r = a.get("/libcgi-bin/f_forge.so?orphan");
    assert_eq!(r.status, 200, "{}\n{}", r.text(), a.error_log());
    let child: u32 = r.text().strip_prefix("child=").and_then(|x| x.split(' ').next()?.parse().ok()).unwrap();
    assert_eq!(pid_of(&r.text()), pid);
    assert!(alive(child));
    let r = a.get("/libcgi-bin/f_forge.so?crash");
    assert_eq!(r.status, 500, "{}", r.text());
    let gone = (0..100).any(|_| {
        std::thread::sleep(Duration::from_millis(100));
        !alive(child)
    });
    if !gone {
        // SAFETY: the test's own child's child, by its pid.
        unsafe { libc::kill(child as i32, libc::SIGKILL) };
    }
    assert!(gone, "the script's child outlived its worker:\n{}", a.error_log());
    assert!(!alive(pid));
    let r = a.get("/libcgi-bin/f_forge.so?after");
    assert_eq!(r.status, 200, "{}\n{}", r.text(), a.error_log());
}

per_mpm!(
    a_forked_child_dies_with_its_worker,
    a_slot_marked_dead_by_its_worker_is_a_fault,
    forged_loads_count_nothing,
    a_forged_count_samples_at_the_honest_rate,
    a_forged_pid_is_not_what_the_manager_kills,
    a_forged_script_key_gets_no_other_scripts_requests
);
