//! Issue 12 phase 1: `LibCGIIsolation process` (the isolated domain), under
//! prefork, worker and event, against a real apache2.  The rest of the suite runs
//! isolated with LIBCGI_TEST_ISOLATION=process (README "Isolation").

mod common;
use common::*;
use std::fs;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A server whose libcgi-bin scripts run isolated; setbin stays in process
/// (the control for the tests that must fail in process).
fn server(mpm: Mpm, extra: &str) -> Apache {
    server_with(mpm, "", extra)
}

/// As `server`, with lines for the main server configuration too.
fn server_with(mpm: Mpm, global: &str, extra: &str) -> Apache {
    server_in(Config::new(mpm).extra(global), extra)
}

fn server_in(mut c: Config, extra: &str) -> Apache {
    // <Files>: no filesystem root of its own, so the <Directory> one (for
    // the trust checks) stays in force; setbin/probe has no .so suffix.
    c.extra += &format!("<Files \"*.so\">\n  LibCGIIsolation process\n{extra}\n</Files>\n");
    let a = Apache::start(c);
    a.install("t.so", "t", &[]);
    a.install("fault.so", "fault", &[]);
    a.install("iso.so", "iso", &[]);
    a
}

fn manager(a: &Apache) -> u32 {
    wait_for("the isolation manager", Duration::from_secs(10), || {
        kids(a.pid()).into_iter().find(|(_, n)| n == "libcgi-manager").map(|x| x.0)
    })
}

fn workers(m: u32) -> Vec<u32> {
    kids(m).into_iter().filter(|(_, n)| n == "libcgi-worker").map(|x| x.0).collect()
}

fn get_ok(a: &Apache, path: &str) -> Response {
    let r = a.get(path);
    assert_eq!(r.status, 200, "GET {path}: {r:?}\n{}", a.error_log());
    r
}

fn pid_of(text: &str) -> u32 {
    text.rsplit_once("pid=").and_then(|x| x.1.trim().parse().ok()).unwrap_or_else(|| panic!("no pid in {text:?}"))
}

/// The script runs in a worker (another process than the server's), with
/// the same output as in process.
fn runs_in_a_worker(mpm: Mpm) {
    let a = server(mpm, "");
    let m = manager(&a);
    let servers = a.children();
    let t = get_ok(&a, "/libcgi-bin/iso.so").text();
    let wp = pid_of(&t);
    assert!(!servers.contains(&wp), "ran in a server process {wp}: {servers:?}");
    assert!(workers(m).contains(&wp), "pid {wp} is not a worker of the manager {m}: {:?}", workers(m));
    assert_eq!(get_ok(&a, "/libcgi-bin/t.so").text(), "hello v0");
    // getenv as libc itself resolves it (not rebound): environ is the request's.
    assert_eq!(get_ok(&a, "/libcgi-bin/iso.so?mode=envlib").text(), "QUERY_STRING=mode=envlib");
    let f = a.send(Request::post("/libcgi-bin/t.so?mode=echo", &vec![b'x'; 600_000]));
    assert_eq!(f.status, 200, "{}", a.error_log());
}

/// Crash, loop, exit in a worker: 500 / 500 / as in process; the worker is
/// replaced, the server processes are the same and none died.
fn faults_cost_the_worker(mpm: Mpm) {
    let a = server(mpm, "  LibCGITimeout 1");
    let m = manager(&a);
    let servers = a.children();
    let w1 = pid_of(&get_ok(&a, "/libcgi-bin/fault.so").text());
    let r = a.get("/libcgi-bin/fault.so?mode=segv");
    assert_eq!(r.status, 500, "{r:?}");
    a.wait_log("the crash logged", |l| l.contains("fault.so: processfunc crashed in its isolated worker (signal 11)"));
    wait_for("the crashed worker gone", Duration::from_secs(5), || (!alive(w1)).then_some(()));
    let w2 = pid_of(&get_ok(&a, "/libcgi-bin/fault.so").text());
    assert_ne!(w1, w2);
    let t0 = Instant::now();
    let r = a.get("/libcgi-bin/fault.so?mode=loop");
    assert_eq!(r.status, 500, "{r:?}");
    assert!(t0.elapsed() < Duration::from_secs(5), "the loop took {:?}", t0.elapsed());
    a.wait_log("the timeout logged", |l| {
        l.contains("fault.so: processfunc timed out after 1 s in its isolated worker")
    });
    wait_for("the looping worker gone", Duration::from_secs(5), || (!alive(w2)).then_some(()));
    let e = get_ok(&a, "/libcgi-bin/fault.so?mode=exit0");
    assert_eq!(e.text(), "before exit");
    assert_eq!(a.get("/libcgi-bin/fault.so?mode=exit3").status, 500);
    // exit() ends the request, not the worker (as in process: the server lives).
    let w3 = pid_of(&get_ok(&a, "/libcgi-bin/fault.so").text());
    assert_eq!(pid_of(&get_ok(&a, "/libcgi-bin/fault.so").text()), w3);
    assert!(workers(m).contains(&w3));
    assert_eq!(a.children(), servers, "server processes changed");
    assert!(dead_children(&a.error_log()).is_empty(), "{}", a.error_log());
}

/// A script that scribbles over its heap and returns: every other script
/// stays exact, many times over.
fn scribbler_hurts_only_itself(mpm: Mpm) {
    let a = server(mpm, "");
    for _ in 0..3 {
        let _ = a.get("/libcgi-bin/iso.so?mode=scribble");
        for _ in 0..10 {
            assert_eq!(get_ok(&a, "/libcgi-bin/t.so").text(), "hello v0");
            assert!(get_ok(&a, "/libcgi-bin/fault.so").text().starts_with("ok pid="));
            assert_eq!(get_ok(&a, "/libcgi-bin/t.so?mode=lputs").status, 200);
        }
    }
    assert!(dead_children(&a.error_log()).is_empty(), "{}", a.error_log());
}

/// A worker holds no descriptor of the server (listeners, logs) and cannot
/// see a string the server process holds; in process the same probe sees
/// both (the control: the test can fail).
fn holds_nothing_of_the_server(mpm: Mpm) {
    let a = server(mpm, "");
    build_script(&a.dir.join("setbin"), "probe", "iso", &[]);
    let fds = get_ok(&a, "/libcgi-bin/iso.so?mode=fds").text();
    for line in fds.lines() {
        let (fd, target) = line.split_once(' ').unwrap_or(("", ""));
        // stderr is a pipe to the manager's relay, which writes it to the
        // error log: the log's own descriptor is not the worker's.
        let relay = fd == "2" && target.starts_with("pipe:");
        assert!(
            relay || target == "/dev/null" || target.ends_with("/bin/iso.so"),
            "the worker holds {line:?}; all:\n{fds}"
        );
    }
    assert!(fds.lines().any(|l| l.starts_with("2 pipe:")), "stderr goes to the relay: {fds}");
    // Of the shared segment, only its own slot (256 KiB): not the header,
    // not another worker's request.
    assert_eq!(get_ok(&a, "/libcgi-bin/iso.so?mode=shm").text(), format!("shm={}", 256 * 1024));
    let inproc = get_ok(&a, "/sethandler/probe?mode=fds").text();
    assert!(inproc.contains("socket:") && inproc.contains("error.log"), "the control sees no server fd: {inproc}");
    // A secret only the server process has seen: a request header, of a
    // request that runs no script.
    let secret = format!("S3cr3t-{}-{}", std::process::id(), mpm.name());
    let rev: String = secret.chars().rev().collect();
    for _ in 0..3 {
        let r = a.send(Request::get("/libcgi-bin/none.so").header("X-Api-Key", &secret));
        assert_eq!(r.status, 404);
    }
    let isolated = get_ok(&a, &format!("/libcgi-bin/iso.so?mode=scan&r={rev}")).text();
    assert_eq!(isolated, "absent", "the worker read the server's secret");
    let control = get_ok(&a, &format!("/sethandler/probe?mode=scan&r={rev}")).text();
    assert_eq!(control, "found", "in process the probe must find it (else this test proves nothing)");
}

/// 100 MiB streamed through the slot: neither the server process nor the
/// worker holds it.
fn big_output_bounded(mpm: Mpm) {
    let a = server(mpm, "");
    let n: usize = 100 << 20;
    let r = get_ok(&a, &format!("/libcgi-bin/t.so?mode=big&n={n}"));
    assert_eq!(r.body.len(), n);
    assert!(r.body.iter().step_by(4099).all(|&b| b.is_ascii_lowercase()));
    let wp: u32 = r.header("X-Pid").unwrap().parse().unwrap();
    assert!(vm_hwm_kib(wp) < 48 * 1024, "worker peaked at {} KiB", vm_hwm_kib(wp));
    for s in a.children() {
        assert!(vm_hwm_kib(s) < 48 * 1024, "server process {s} peaked at {} KiB", vm_hwm_kib(s));
    }
}

/// Stop and graceful restart leave no worker and no manager behind.
fn no_orphans(mpm: Mpm) {
    let mut a = server(mpm, "");
    let m1 = manager(&a);
    get_ok(&a, "/libcgi-bin/t.so");
    let w1 = workers(m1);
    assert!(!w1.is_empty());
    a.graceful();
    wait_for("a new manager after the graceful restart", Duration::from_secs(15), || (manager(&a) != m1).then_some(()));
    wait_for("the old generation's workers gone", Duration::from_secs(15), || {
        (!alive(m1) && w1.iter().all(|&w| !alive(w))).then_some(())
    });
    get_ok(&a, "/libcgi-bin/t.so");
    let m2 = manager(&a);
    let w2 = workers(m2);
    a.stop();
    wait_for("no worker after stop", Duration::from_secs(15), || {
        (!alive(m2) && w2.iter().all(|&w| !alive(w))).then_some(())
    });
}

/// A manager that dies without its cleanup (kill -9) takes its workers with
/// it: they must not live on as orphans holding scripts.  (Workers change
/// their user after setting their parent-death signal, which clears it.)
fn workers_die_with_the_manager(mpm: Mpm) {
    let a = server(mpm, "");
    let m = manager(&a);
    get_ok(&a, "/libcgi-bin/t.so");
    let w = workers(m);
    assert!(!w.is_empty());
    // SAFETY: signalling a process of the server this test started.
    unsafe { libc::kill(m as i32, libc::SIGKILL) };
    wait_for("the workers of a killed manager gone", Duration::from_secs(10), || {
        w.iter().all(|&p| !alive(p)).then_some(())
    });
}

/// A condition of the request (If-Match on a script that sends no ETag) is
/// answered as in process: 412, and the script stays loaded.
fn conditional_status_as_in_process(mpm: Mpm) {
    let a = server(mpm, "");
    get_ok(&a, "/libcgi-bin/t.so");
    let r = a.send(Request::get("/libcgi-bin/t.so").header("If-Match", "\"x\""));
    assert_eq!(r.status, 412, "{}\n{}", r.text(), a.error_log());
    get_ok(&a, "/libcgi-bin/t.so");
}

/// kill -9 of a worker under load costs at most its in-flight request.
fn kill_worker_under_load(mpm: Mpm) {
    let a = Arc::new(server(mpm, ""));
    let m = manager(&a);
    get_ok(&a, "/libcgi-bin/t.so");
    let (ok, bad) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let until = Instant::now() + Duration::from_secs(3);
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let (a, ok, bad) = (a.clone(), ok.clone(), bad.clone());
            std::thread::spawn(move || {
                let mut n = 0;
                while Instant::now() < until && n < 5000 {
                    n += 1;
                    let r = a.get("/libcgi-bin/t.so?mode=lputs");
                    if r.status == 200 { &ok } else { &bad }.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(700));
    let mut killed = 0;
    for w in workers(m).into_iter().take(2) {
        // SAFETY: a worker of the server this test started.
        unsafe { libc::kill(w as i32, libc::SIGKILL) };
        killed += 1;
        std::thread::sleep(Duration::from_millis(300));
    }
    for t in threads {
        t.join().unwrap();
    }
    let (ok, bad) = (ok.load(Ordering::Relaxed), bad.load(Ordering::Relaxed));
    assert!(ok > 100, "only {ok} requests served");
    assert!(bad <= killed, "{bad} requests failed for {killed} killed workers\n{}", a.error_log());
    assert_eq!(get_ok(&a, "/libcgi-bin/t.so").text(), "hello v0");
}

/// LibCGIIsolationUser and LibCGIIsolationLimits take effect in the worker;
/// an unknown mode is a clear configuration error naming it, `adaptive` is
/// accepted (phase 2, tests/adaptive.rs).
fn user_and_limits(mpm: Mpm) {
    let a = server(mpm, "  LibCGIIsolationUser nobody nogroup\n  LibCGIIsolationLimits 1024 30 64");
    let id = |n: &str| -> u32 {
        let o = std::process::Command::new("id").arg(n).arg("nobody").output().unwrap();
        String::from_utf8_lossy(&o.stdout).trim().parse().unwrap()
    };
    let t = get_ok(&a, "/libcgi-bin/iso.so?mode=id").text();
    let gid = {
        let o = std::process::Command::new("getent").args(["group", "nogroup"]).output().unwrap();
        String::from_utf8_lossy(&o.stdout).split(':').nth(2).unwrap().trim().parse::<u32>().unwrap()
    };
    assert_eq!(t, format!("uid={} gid={gid} as={} cpu=30 nofile=64", id("-u"), 1024u64 << 20), "{}", a.error_log());
    let check = |line: &str| {
        let o = std::process::Command::new(APACHE_BIN)
            .arg("-t")
            .arg("-f")
            .arg(a.dir.join("httpd.conf"))
            .args(["-c", line])
            .output()
            .unwrap();
        (o.status.success(), String::from_utf8_lossy(&o.stderr).into_owned())
    };
    let (ok, err) = check("LibCGIIsolation sometimes");
    assert!(!ok && err.contains("LibCGIIsolation 'sometimes': takes 'inprocess', 'process' or 'adaptive'"), "{err}");
    let (ok, err) = check("LibCGIIsolation adaptive");
    assert!(ok, "{err}");
}

/// A server process killed while it waits for its worker: the manager takes
/// the slot back (the worker is killed, not left waiting forever).
fn server_process_death_frees_the_slot(mpm: Mpm) {
    let a = Arc::new(server(mpm, ""));
    let m = manager(&a);
    let mark = a.dir.join("sleeper.pid");
    fs::write(&mark, "").unwrap();
    fs::set_permissions(&mark, std::os::unix::fs::PermissionsExt::from_mode(0o666)).unwrap();
    let a2 = a.clone();
    let path = format!("/libcgi-bin/iso.so?mode=sleep&f={}", mark.display());
    let t = std::thread::spawn(move || a2.get(&path).status);
    let w: u32 =
        wait_for("the sleeper's pid", Duration::from_secs(10), || fs::read_to_string(&mark).ok()?.parse().ok());
    assert!(workers(m).contains(&w));
    let servers: Vec<u32> = a.children().into_iter().filter(|&p| p != m).collect();
    assert!(!servers.is_empty());
    for s in &servers {
        // SAFETY: a server process of the server this test started.
        unsafe { libc::kill(*s as i32, libc::SIGKILL) };
    }
    wait_for("the orphaned worker killed", Duration::from_secs(5), || (!alive(w)).then_some(()));
    let _ = t.join();
    wait_for("a new server process", Duration::from_secs(10), || {
        a.children().iter().any(|p| *p != m && !servers.contains(p)).then_some(())
    });
    assert!(alive(m), "the manager must survive a server process's death");
    assert_eq!(get_ok(&a, "/libcgi-bin/t.so").text(), "hello v0");
}

/// kill -9 of the manager under load: the Apache parent starts a new one
/// (APR's other-child report, as mod_cgid's daemon), which starts new
/// workers; the old workers are gone; only the requests in flight fail.
fn manager_respawned_under_load(mpm: Mpm) {
    let a = Arc::new(server(mpm, ""));
    let m1 = manager(&a);
    get_ok(&a, "/libcgi-bin/t.so");
    let (ok, bad) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    const CLIENTS: usize = 4;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let until = Instant::now() + Duration::from_secs(20);
    let threads: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let (a, ok, bad, stop) = (a.clone(), ok.clone(), bad.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) && Instant::now() < until && n < 50_000 {
                    n += 1;
                    let r = a.get("/libcgi-bin/t.so?mode=lputs");
                    if r.status == 200 { &ok } else { &bad }.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    wait_for("load running", Duration::from_secs(10), || (ok.load(Ordering::Relaxed) > 50).then_some(()));
    let mut old = vec![m1];
    let mut m = m1;
    for round in 0..2 {
        let w = workers(m);
        assert!(!w.is_empty());
        // SAFETY: the manager of the server this test started.
        unsafe { libc::kill(m as i32, libc::SIGKILL) };
        let m2 = wait_for("a new manager", Duration::from_secs(10), || {
            kids(a.pid()).into_iter().find(|(p, n)| n == "libcgi-manager" && !old.contains(p)).map(|x| x.0)
        });
        wait_for("the old workers gone", Duration::from_secs(10), || w.iter().all(|&p| !alive(p)).then_some(()));
        let before = ok.load(Ordering::Relaxed);
        wait_for("requests served by the new manager's workers", Duration::from_secs(10), || {
            (ok.load(Ordering::Relaxed) > before + 100 && !workers(m2).is_empty()).then_some(())
        });
        a.wait_log(&format!("restart {round} logged"), |l| {
            l.contains(&format!("the isolation manager (pid {m}) died"))
                && l.contains(&format!("started again as pid {m2}"))
        });
        old.push(m2);
        m = m2;
    }
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().unwrap();
    }
    let (ok, bad) = (ok.load(Ordering::Relaxed), bad.load(Ordering::Relaxed));
    // Each kill costs at most one request per client: the one in flight.
    assert!(bad <= 2 * CLIENTS, "{bad} requests failed for 2 manager deaths, {CLIENTS} clients\n{}", a.error_log());
    assert!(ok > 200, "only {ok} requests served");
    assert_eq!(get_ok(&a, "/libcgi-bin/t.so").text(), "hello v0");
    // Only the current manager is left, with its own workers.
    let managers: Vec<u32> = kids(a.pid()).into_iter().filter(|(_, n)| n == "libcgi-manager").map(|x| x.0).collect();
    assert_eq!(managers, vec![m]);
    assert!(dead_children(&a.error_log()).is_empty(), "{}", a.error_log());
}

/// LibCGIIsolationWorkers sets the number of workers; when every one is
/// busy a request waits the configured time, then gets 503 and one log line.
fn all_workers_busy(mpm: Mpm) {
    // Prefork: enough server processes for three requests at once.
    let mut c = Config::new(mpm).extra("LibCGIIsolationWorkers 2 1");
    c.servers = 4;
    let a = Arc::new(server_in(c, "  LibCGITimeout 8"));
    let m = manager(&a);
    wait_for("two workers", Duration::from_secs(10), || (workers(m).len() == 2).then_some(()));
    let sleepers: Vec<_> = (0..2)
        .map(|i| {
            let mark = a.dir.join(format!("busy{i}.pid"));
            fs::write(&mark, "").unwrap();
            fs::set_permissions(&mark, std::os::unix::fs::PermissionsExt::from_mode(0o666)).unwrap();
            let a2 = a.clone();
            let path = format!("/libcgi-bin/iso.so?mode=sleep&f={}", mark.display());
            (mark, std::thread::spawn(move || a2.get(&path).status))
        })
        .collect();
    for (mark, _) in &sleepers {
        wait_for("a sleeper running", Duration::from_secs(10), || fs::read_to_string(mark).ok()?.parse::<u32>().ok());
    }
    let t0 = Instant::now();
    let r = a.get("/libcgi-bin/t.so");
    let waited = t0.elapsed();
    assert_eq!(r.status, 503, "{r:?}\n{}", a.error_log());
    assert!(waited >= Duration::from_millis(900) && waited < Duration::from_secs(5), "waited {waited:?}");
    let log = a.wait_log("the busy line", |l| l.contains("t.so: all 2 isolated workers busy for 1 s"));
    assert_eq!(log.lines().filter(|l| l.contains("isolated workers busy")).count(), 1, "{log}");
    for (_, t) in sleepers {
        assert_eq!(t.join().unwrap(), 500, "the sleepers end at LibCGITimeout");
    }
    // Free again: served.
    assert_eq!(get_ok(&a, "/libcgi-bin/t.so").text(), "hello v0");
}

/// More scripts than workers under load: slots change hands (a worker serves
/// one script, so another script's request has it replaced) and every
/// request is still answered exactly, each worker only ever for one
/// script; no worker is killed mid-request.
fn more_scripts_than_workers(mpm: Mpm) {
    let mut c = Config::new(mpm).extra("LibCGIIsolationWorkers 2");
    c.servers = 4;
    let a = Arc::new(server_in(c, ""));
    for i in 0..3 {
        fs::copy(a.bin.join("fault.so"), a.bin.join(format!("f{i}.so"))).unwrap();
    }
    let bad = Arc::new(std::sync::Mutex::new(Vec::new()));
    // Which scripts each worker answered for.
    let by = Arc::new(std::sync::Mutex::new(std::collections::HashMap::<u32, Vec<usize>>::new()));
    let until = Instant::now() + Duration::from_secs(4);
    let threads: Vec<_> = (0..4)
        .map(|k| {
            let (a, bad, by) = (a.clone(), bad.clone(), by.clone());
            std::thread::spawn(move || {
                let mut n = 0;
                while Instant::now() < until && n < 2000 {
                    let i = (n + k) % 3;
                    let r = a.get(&format!("/libcgi-bin/f{i}.so"));
                    match r.text().strip_prefix("ok pid=").and_then(|p| p.parse::<u32>().ok()) {
                        Some(p) if r.status == 200 => {
                            let mut by = by.lock().unwrap();
                            let v = by.entry(p).or_default();
                            if !v.contains(&i) {
                                v.push(i);
                            }
                        }
                        _ => bad.lock().unwrap().push(r.status),
                    }
                    n += 1;
                }
                n
            })
        })
        .collect();
    let served: usize = threads.into_iter().map(|t| t.join().unwrap()).sum();
    let bad = bad.lock().unwrap();
    assert!(
        bad.is_empty(),
        "{} of {served} requests failed: {:?}\n{}",
        bad.len(),
        &bad[..bad.len().min(20)],
        a.error_log()
    );
    assert!(served > 50, "only {served} requests");
    let by = by.lock().unwrap();
    let shared: Vec<_> = by.iter().filter(|(_, v)| v.len() > 1).collect();
    assert!(
        shared.is_empty(),
        "workers that ran more than one script (pid: f<i>.so): {shared:?} of {} workers",
        by.len()
    );
    assert!(!a.error_log().contains("isolated worker"), "{}", a.error_log());
}

/// Bad LibCGIIsolationWorkers values are refused at configuration time,
/// naming the value.
fn workers_directive_checked(mpm: Mpm) {
    let a = server(mpm, "");
    for (line, want) in [
        ("LibCGIIsolationWorkers 0", "LibCGIIsolationWorkers '0'"),
        ("LibCGIIsolationWorkers 257", "LibCGIIsolationWorkers '257'"),
        ("LibCGIIsolationWorkers many", "LibCGIIsolationWorkers 'many'"),
        ("LibCGIIsolationWorkers 4 0", "wait for a free worker '0'"),
        ("LibCGIIsolationWorkers 4 soon", "wait for a free worker 'soon'"),
        ("<Directory /tmp>\nLibCGIIsolationWorkers 4\n</Directory>", "not allowed"),
    ] {
        let conf = a.dir.join("check.conf");
        let main = fs::read_to_string(a.dir.join("httpd.conf")).unwrap();
        fs::write(&conf, format!("{main}\n{line}\n")).unwrap();
        let o = std::process::Command::new(APACHE_BIN).arg("-t").arg("-f").arg(&conf).output().unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success() && err.contains(want), "{line:?}: {err}");
    }
}

/// An environment larger than the slot's buffer (big request headers, as
/// LimitRequestFieldSize allows) reaches the worker whole, in pieces.
fn large_environment_in_pieces(mpm: Mpm) {
    let a = server_with(mpm, "LimitRequestFieldSize 65536", "");
    let mut req = Request::get("/libcgi-bin/iso.so?mode=envsum");
    let mut want = String::new();
    for i in 0..6u32 {
        let v: String = (0..60_000u32).map(|k| (b'a' + ((k * 7 + i) % 26) as u8) as char).collect();
        let sum: u64 = v.bytes().map(u64::from).sum();
        want += &format!("HTTP_X_BIG{i} {} {sum}\n", v.len());
        req = req.header(&format!("X-Big{i}"), &v);
    }
    let r = a.send(req);
    assert_eq!(r.status, 200, "{}", a.error_log());
    let t = r.text();
    let mut lines: Vec<&str> = t.lines().filter(|l| l.starts_with("HTTP_X_BIG")).collect();
    lines.sort();
    assert_eq!(lines.join("\n") + "\n", want);
    // And with a body behind it, which follows the environment's pieces.
    let body = vec![b'q'; 300_000];
    let mut req = Request::post("/libcgi-bin/t.so?mode=echo", &body);
    for i in 0..5 {
        req = req.header(&format!("X-Big{i}"), &"z".repeat(60_000));
    }
    assert_eq!(a.send(req).status, 200, "{}", a.error_log());
    assert_eq!(get_ok(&a, "/libcgi-bin/t.so").text(), "hello v0");
}

/// Quarantine holds for isolated scripts as in process: after
/// LibCGIMaxFaults faults the script gets 503 with Retry-After, logged once.
fn quarantine_isolated(mpm: Mpm) {
    let a = server(mpm, "  LibCGIMaxFaults 2 60");
    for _ in 0..2 {
        assert_eq!(a.get("/libcgi-bin/fault.so?mode=segv").status, 500);
    }
    let r = a.get("/libcgi-bin/fault.so");
    assert_eq!(r.status, 503, "{r:?}\n{}", a.error_log());
    assert!(r.header("Retry-After").is_some_and(|v| v.parse::<u64>().is_ok_and(|s| s > 0 && s <= 60)), "{r:?}");
    let log = a.wait_log("the quarantine line", |l| l.contains("fault.so: quarantined for 60 s after 2 faults"));
    assert_eq!(log.matches("quarantined for").count(), 1, "{log}");
    // Other scripts are not affected.
    assert_eq!(get_ok(&a, "/libcgi-bin/t.so").text(), "hello v0");
}

/// The environment an isolated script gets is written from the request's
/// table, not by ap_create_environment: at `LogLevel libcgi:trace8` every
/// request compares the two and logs which (the differential test), here
/// over the names ap_create_environment rewrites (a leading digit, dots,
/// dashes, bytes that are not ASCII, an '=' in a SetEnv name, an empty
/// value), repeated headers, TZ from the server's environment and TZ set
/// for the request.
fn environment_as_apache_makes_it(mpm: Mpm) {
    use std::io::{Read, Write};
    let mut c = Config::new(mpm).extra("HttpProtocolOptions Unsafe\n<Files \"tz_dump.so\">\n  SetEnv TZ UTC\n</Files>");
    c.loglevel = "warn libcgi:trace8".into();
    c.env.push(("TZ".into(), "Europe/Paris".into()));
    let a =
        server_in(c, "  SetEnv 9lead.x-y v1\n  SetEnv \"odd=name\" v2\n  SetEnv empty \"\"\n  SetEnv FROM_SETENV set");
    a.install("dump.so", "envdump", &[]);
    a.install("tz_dump.so", "envdump", &[]);
    let raw = |path: &str, extra: &[u8]| -> Vec<u8> {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", a.port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut req = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n").into_bytes();
        req.extend_from_slice(extra);
        req.extend_from_slice(b"\r\n");
        s.write_all(&req).unwrap();
        let mut out = Vec::new();
        s.read_to_end(&mut out).unwrap();
        out
    };
    let headers: &[u8] = b"X-Weird-Name: dashes\r\nX-Dot.Name: dots\r\n9Start: digit\r\nX-\xe9\xff: latin\r\n\
        X_Under: under\r\nX-Empty:\r\nX-Rep: 1\r\nX-Rep: 2\r\nCookie: a=b; c=d\r\n\
        Content-Type: text/x-odd\r\nAuthorization: Basic eDp5\r\n";
    let mut n = 0;
    for path in ["/libcgi-bin/dump.so/extra/path?q=1&r==2", "/libcgi-bin/dump.so", "/libcgi-bin/tz_dump.so?x"] {
        let out = String::from_utf8_lossy(&raw(path, headers)).into_owned();
        assert!(out.starts_with("HTTP/1.1 200"), "{path}: {out}\n{}", a.error_log());
        assert!(out.contains("\nHTTP_X_WEIRD_NAME=dashes\n"), "{path}: {out}");
        assert!(out.contains("\nFROM_SETENV=set\n") && !out.contains("HTTP_AUTHORIZATION"), "{path}: {out}");
        let tz = if path.contains("tz_") { "UTC" } else { "Europe/Paris" };
        assert!(out.contains(&format!("\nTZ={tz}\n")), "{path}: {out}");
        n += 1;
    }
    let log = a.wait_log("a comparison per request", |l| {
        l.matches("isolated environment identical to ap_create_environment's").count() >= n
    });
    assert!(!log.contains("isolated environment differs"), "{log}");
    assert!(dead_children(&log).is_empty(), "{log}");
}

/// A script's stderr reaches the error log, as in process: the worker's
/// stderr is a pipe to the manager's relay process, which leaves with the
/// server.
fn stderr_reaches_the_log(mpm: Mpm) {
    let mut a = server(mpm, "");
    let r = get_ok(&a, "/libcgi-bin/iso.so?mode=stderr");
    let pid = r.text().strip_prefix("pid=").unwrap_or_default().to_string();
    assert!(!pid.is_empty(), "{}", r.text());
    a.wait_log("the script's stderr", |l| l.contains(&format!("iso stderr from {pid}")));
    // A line without its end (the worker lives on, its pipe does not end)
    // is not held back for good.
    let r = get_ok(&a, "/libcgi-bin/iso.so?mode=stderr&tag=unended&nonl=1");
    assert_eq!(r.text(), format!("pid={pid}"));
    a.wait_log("the unended line", |l| l.contains(&format!("iso stderr from {pid} unended")));
    let relay = wait_for("the stderr relay", Duration::from_secs(10), || {
        kids(manager(&a)).into_iter().find(|(_, n)| n == "libcgi-stderr").map(|x| x.0)
    });
    a.stop();
    wait_for("the relay gone with the server", Duration::from_secs(10), || (!alive(relay)).then_some(()));
}

/// The stderr relay of manager `m` other than `not` (bounded wait).
fn relay_of(m: u32, not: u32) -> u32 {
    wait_for("a stderr relay", Duration::from_secs(10), || {
        kids(m).into_iter().find(|(p, n)| n == "libcgi-stderr" && *p != not).map(|x| x.0)
    })
}

/// The relay killed (kill -9): a script writing its stderr meanwhile
/// neither dies (SIGPIPE) nor loses its request, a new relay appears and
/// takes over, what was written in between and after reaches the log, one
/// line says the relay was replaced, and the new relay goes away with its
/// manager at a graceful restart, as the next generation's does at stop.
fn stderr_relay_respawned(mpm: Mpm) {
    let mut a = server(mpm, "");
    let m = manager(&a);
    let w = pid_of(&get_ok(&a, "/libcgi-bin/iso.so?mode=stderr&tag=before").text());
    a.wait_log("the first line", |l| l.contains(&format!("iso stderr from {w} before\n")));
    let r1 = relay_of(m, 0);
    // SAFETY: signalling a process of the server this test started.
    unsafe { libc::kill(r1 as i32, libc::SIGKILL) };
    wait_for("the relay dead", Duration::from_secs(10), || (!alive(r1)).then_some(()));
    for tag in ["gap", "after"] {
        let r = get_ok(&a, &format!("/libcgi-bin/iso.so?mode=stderr&tag={tag}"));
        assert_eq!(r.text(), format!("pid={w}"), "{tag}: the worker changed\n{}", a.error_log());
    }
    let r2 = relay_of(m, r1);
    let r = get_ok(&a, "/libcgi-bin/iso.so?mode=stderr&tag=later");
    assert_eq!(r.text(), format!("pid={w}"), "{}", a.error_log());
    let log = a.wait_log("every line after the kill", |l| {
        ["gap", "after", "later"].iter().all(|t| l.contains(&format!("iso stderr from {w} {t}\n")))
    });
    assert!(alive(w), "the worker {w} died:\n{log}");
    assert!(!log.contains("worker replaced"), "{log}");
    assert!(
        log.contains(&format!("stderr relay of the isolated workers (pid {r1}) ended (signal 9); starting another")),
        "{log}"
    );
    a.graceful();
    wait_for("the old manager, its worker and its new relay gone", Duration::from_secs(15), || {
        (!alive(m) && !alive(w) && !alive(r2)).then_some(())
    });
    let m2 = manager(&a);
    let w2 = pid_of(&get_ok(&a, "/libcgi-bin/iso.so?mode=stderr&tag=next").text());
    a.wait_log("the next generation's line", |l| l.contains(&format!("iso stderr from {w2} next\n")));
    let r3 = relay_of(m2, 0);
    a.stop();
    wait_for("the relay gone with the server", Duration::from_secs(10), || (!alive(r3)).then_some(()));
}

/// Two workers write lines of 16 KiB (four times PIPE_BUF, each line one
/// write) to their stderr at the same time: every line reaches the log
/// whole, none cut by the other's.
fn long_stderr_lines_whole(mpm: Mpm) {
    const LINES: usize = 64;
    const LEN: usize = 16384;
    // Prefork: a server process for each of the two requests.
    let mut c = Config::new(mpm);
    c.servers = 2;
    let a = Arc::new(server_in(c, ""));
    let sync = a.dir.join("long.sync");
    fs::write(&sync, "").unwrap();
    fs::set_permissions(&sync, std::os::unix::fs::PermissionsExt::from_mode(0o666)).unwrap();
    let clients: Vec<_> = ['P', 'Q']
        .into_iter()
        .map(|c| {
            let a = a.clone();
            let path = format!("/libcgi-bin/iso.so?mode=long&sync={}&n={LINES}&len={LEN}&fill={c}", sync.display());
            std::thread::spawn(move || (c, pid_of(&get_ok(&a, &path).text())))
        })
        .collect();
    let who: Vec<(char, u32)> = clients.into_iter().map(|t| t.join().unwrap()).collect();
    assert_ne!(who[0].1, who[1].1, "one worker served both: {who:?}");
    let want: Vec<String> = who
        .iter()
        .flat_map(|&(c, p)| (0..LINES).map(move |k| format!("iso long {p} {k} {}", c.to_string().repeat(LEN))))
        .collect();
    let missing = |log: &str| {
        let have: std::collections::HashSet<&str> = log.lines().collect();
        want.iter().filter(|l| !have.contains(l.as_str())).count()
    };
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut log = a.error_log();
    while missing(&log) > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(25));
        log = a.error_log();
    }
    let broken: Vec<String> = log
        .lines()
        .filter(|l| {
            (l.contains("iso long") || l.contains("PPPP") || l.contains("QQQQ")) && !want.iter().any(|w| w == l)
        })
        .map(|l| format!("{} bytes: {}...", l.len(), &l[..l.len().min(60)]))
        .collect();
    assert_eq!(
        missing(&log),
        0,
        "{} of {} lines not whole in the log; broken lines: {broken:#?}",
        missing(&log),
        want.len()
    );
}

/// A write to a pipe whose reader is gone fails with EPIPE in a worker, as
/// in a server process (the MPMs ignore SIGPIPE): it ends neither the
/// worker nor its request.  In process the same probe is the control.
fn sigpipe_ignored_as_in_process(mpm: Mpm) {
    let a = server(mpm, "");
    build_script(&a.dir.join("setbin"), "probe", "iso", &[]);
    assert_eq!(get_ok(&a, "/sethandler/probe?mode=epipe").text(), "EPIPE", "in process");
    let w = pid_of(&get_ok(&a, "/libcgi-bin/iso.so").text());
    assert_eq!(get_ok(&a, "/libcgi-bin/iso.so?mode=epipe").text(), "EPIPE", "isolated");
    assert_eq!(pid_of(&get_ok(&a, "/libcgi-bin/iso.so").text()), w, "the worker changed\n{}", a.error_log());
}

/// strace attached to the isolation manager `pid`, holding each of the
/// system calls named (a comma-separated set) for that many microseconds
/// before it returns: a manager descheduled there on a loaded machine.
/// Detached when dropped.
struct Slow(std::process::Child);

impl Slow {
    fn attach(pid: u32, delays: &[(&str, u32)]) -> Slow {
        use std::io::BufRead;
        let mut c = std::process::Command::new("strace");
        c.args(["-p", &pid.to_string(), "-o", "/dev/null"]);
        let calls: Vec<&str> = delays.iter().map(|d| d.0).collect();
        c.args(["-e", &format!("trace={}", calls.join(","))]);
        for (set, us) in delays {
            c.args(["-e", &format!("inject={set}:delay_exit={us}")]);
        }
        let mut c =
            c.stderr(std::process::Stdio::piped()).spawn().expect("strace (scripts/install-deps.sh installs it)");
        let mut l = String::new();
        std::io::BufReader::new(c.stderr.take().unwrap()).read_line(&mut l).unwrap();
        assert!(l.contains("attached"), "strace did not attach to {pid}: {l}");
        Slow(c)
    }

    /// Detaches, then waits until the manager is back at its doorbell (every
    /// delayed call returned, the round ended).
    fn release(self, pid: u32) {
        drop(self);
        wait_for("the manager back at its doorbell", Duration::from_secs(10), || {
            let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let sleeping = stat.rsplit_once(") ").is_some_and(|(_, r)| r.starts_with('S'));
            let call = fs::read_to_string(format!("/proc/{pid}/syscall")).unwrap_or_default();
            let futex = call.split_whitespace().next().and_then(|n| n.parse::<i64>().ok()) == Some(libc::SYS_futex);
            (sleeping && futex).then_some(())
        });
    }
}

impl Drop for Slow {
    fn drop(&mut self) {
        // SAFETY: signalling the strace this test started; SIGTERM detaches.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        let _ = self.0.wait();
    }
}

/// A worker serves one script, also when the manager gets back from the
/// fork of a new worker only after the worker has served its first request
/// (the manager descheduled on a loaded machine; strace holds it here).
/// Before, the manager then marked the slot fresh and stored the pid: the
/// next script was given that worker (seen as a call going to another
/// worker of its script in faults.rs and containment.rs), and the call in
/// between was logged as run by worker 0.
fn one_script_per_worker_when_the_manager_is_slow(mpm: Mpm) {
    let mut c = Config::new(mpm).extra("LibCGIIsolationWorkers 1");
    c.loglevel = "warn libcgi:debug".into();
    let a = server_in(c, "");
    fs::copy(a.bin.join("fault.so"), a.bin.join("other.so")).unwrap();
    let first = pid_of(&get_ok(&a, "/libcgi-bin/fault.so").text());
    let m = manager(&a);
    let slow = Slow::attach(m, &[("clone,clone3", 500_000)]);
    // The one slot is fault.so's: other.so has its worker replaced.
    let other = pid_of(&get_ok(&a, "/libcgi-bin/other.so").text());
    assert_ne!(other, first);
    slow.release(m);
    let again = pid_of(&get_ok(&a, "/libcgi-bin/fault.so").text());
    assert_ne!(again, other, "worker {other} ran other.so, then fault.so\n{}", a.error_log());
    assert!(!alive(other), "other.so's worker {other} was not replaced");
    let log = a.error_log();
    assert!(log.contains(&format!("other.so: processfunc returned 0 in isolated worker {other}")), "{log}");
}

/// After a fault the script's next call goes to the slot's new worker, and
/// so do its calls after that: the manager slow to clear the dead worker's
/// pid (the call saw the slot as its script's live worker and waited there)
/// and slow back from the fork of its successor left that successor marked
/// fresh before.  Then another script was given it, and the script's next
/// call another worker (a second initfunc): as seen in faults.rs
/// every_fault_kind, whose faulting call went to a worker other than the
/// one that had answered the call before.
fn after_a_fault_the_script_keeps_its_new_worker(mpm: Mpm) {
    let mut c = Config::new(mpm).extra("LibCGIIsolationWorkers 2");
    c.loglevel = "warn libcgi:debug".into();
    let a = server_in(c, "");
    fs::copy(a.bin.join("fault.so"), a.bin.join("other.so")).unwrap();
    let dead = pid_of(&get_ok(&a, "/libcgi-bin/fault.so").text());
    let m = manager(&a);
    let slow = Slow::attach(m, &[("futex", 300_000), ("clone,clone3", 500_000)]);
    assert_eq!(a.get("/libcgi-bin/fault.so?mode=segv").status, 500);
    a.wait_log("the fault", |l| l.contains(&format!("fault.so: processfunc crashed in its isolated worker (signal 11); worker replaced; the worker said the fault was at address 0x0; worker pid {dead}")));
    let new = pid_of(&get_ok(&a, "/libcgi-bin/fault.so").text());
    slow.release(m);
    let other = pid_of(&get_ok(&a, "/libcgi-bin/other.so").text());
    assert_ne!(other, new, "worker {new} ran fault.so, then other.so\n{}", a.error_log());
    let again = pid_of(&get_ok(&a, "/libcgi-bin/fault.so").text());
    assert_eq!(again, new, "fault.so went to another worker\n{}", a.error_log());
}

per_mpm!(
    after_a_fault_the_script_keeps_its_new_worker,
    one_script_per_worker_when_the_manager_is_slow,
    stderr_reaches_the_log,
    sigpipe_ignored_as_in_process,
    long_stderr_lines_whole,
    stderr_relay_respawned,
    environment_as_apache_makes_it,
    manager_respawned_under_load,
    more_scripts_than_workers,
    all_workers_busy,
    workers_directive_checked,
    large_environment_in_pieces,
    quarantine_isolated,
    workers_die_with_the_manager,
    conditional_status_as_in_process,
    server_process_death_frees_the_slot,
    user_and_limits,
    runs_in_a_worker,
    faults_cost_the_worker,
    scribbler_hurts_only_itself,
    holds_nothing_of_the_server,
    big_output_bounded,
    no_orphans,
    kill_worker_under_load
);
