//! Issue 12 phase 1: `LibCGIIsolation process` (the isolated domain), under
//! prefork and event, against a real apache2.  The rest of the suite runs
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
    let mut c = Config::new(mpm);
    // <Files>: no filesystem root of its own, so the <Directory> one (for
    // the trust checks) stays in force; setbin/probe has no .so suffix.
    c.extra = format!("<Files \"*.so\">\n  LibCGIIsolation process\n{extra}\n</Files>\n");
    let a = Apache::start(c);
    a.install("t.so", "t", &[]);
    a.install("fault.so", "fault", &[]);
    a.install("iso.so", "iso", &[]);
    a
}

/// Processes whose parent is `pid`, with their command name.
fn kids(pid: u32) -> Vec<(u32, String)> {
    let mut v = Vec::new();
    for e in fs::read_dir("/proc").unwrap().flatten() {
        let Ok(p) = e.file_name().to_string_lossy().parse::<u32>() else { continue };
        let Ok(st) = fs::read_to_string(format!("/proc/{p}/stat")) else { continue };
        let Some((head, rest)) = st.rsplit_once(')') else { continue };
        let f: Vec<&str> = rest.split_whitespace().collect();
        if f.get(1).and_then(|x| x.parse::<u32>().ok()) == Some(pid) && f[0] != "Z" {
            v.push((p, head.split_once('(').map(|x| x.1).unwrap_or("").to_string()));
        }
    }
    v
}

fn manager(a: &Apache) -> u32 {
    wait_for("the isolation manager", Duration::from_secs(10), || {
        kids(a.pid()).into_iter().find(|(_, n)| n == "libcgi-manager").map(|x| x.0)
    })
}

fn workers(m: u32) -> Vec<u32> {
    kids(m).into_iter().filter(|(_, n)| n == "libcgi-worker").map(|x| x.0).collect()
}

fn alive(pid: u32) -> bool {
    fs::metadata(format!("/proc/{pid}")).is_ok()
        && !fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default().contains(") Z ")
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
        let target = line.split_once(' ').map(|x| x.1).unwrap_or("");
        assert!(target == "/dev/null" || target.ends_with("/bin/iso.so"), "the worker holds {line:?}; all:\n{fds}");
    }
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

prefork_and_event!(
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
