//! Issue 9, items 1, 2, 3, 8, 10, 11, 13: the fault guard and the watchdog
//! against hostile scripts (tests/scripts/hostile.c).  Every case here hung,
//! killed or forked the server process before the fix.

mod common;
use common::*;
use std::fs;
use std::io::{BufReader, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// A server with one process, the hostile script as h.so and t.so beside it.
fn server(mpm: Mpm, extra: &str) -> Apache {
    let cfg =
        Config::new(mpm).extra(&format!("LogFormat \"%h \\\"%r\\\" %>s\" short\nCustomLog access.log short\n{extra}"));
    let a = Apache::start(cfg);
    a.install("h.so", "hostile", &[]);
    a.install("t.so", "t", &[]);
    a
}

/// What a request got within `limit`: None when the connection was closed
/// (or reset) without a response, Err when nothing came in time (a hang).
fn send_within(port: u16, path: &str, limit: Duration) -> Result<Option<Response>, String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(limit)).unwrap();
    let req = Request::get(path).header("Connection", "close");
    s.write_all(&req.to_bytes(port)).expect("send request");
    let start = Instant::now();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 65536];
    loop {
        match s.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(format!("{path}: no end of response after {:?} ({e})", start.elapsed())),
        }
        if start.elapsed() > limit {
            return Err(format!("{path}: response still running after {limit:?}"));
        }
    }
    if buf.is_empty() {
        return Ok(None);
    }
    Ok(Some(http::read_response(&mut BufReader::new(&buf[..]), false)))
}

fn must_answer(a: &Apache, path: &str, limit: Duration) -> Option<Response> {
    send_within(a.port, path, limit).unwrap_or_else(|e| panic!("{e}\n{}", a.error_log()))
}

fn ok_pid(a: &Apache, path: &str) -> String {
    let r = must_answer(a, path, Duration::from_secs(10)).unwrap_or_else(|| panic!("{path}: connection closed"));
    assert_eq!(r.status, 200, "{path}: {}\n{}", r.text(), a.error_log());
    r.text().strip_prefix("ok pid=").unwrap_or_else(|| panic!("{path}: not an ok body: {}", r.text())).to_string()
}

/// Waits until some server process answers h.so again (a replaced process
/// after a recycle or a last resort); returns its pid.
fn answering_pid(a: &Apache) -> String {
    wait_for("a server process answering again", Duration::from_secs(20), || {
        match send_within(a.port, "/libcgi-bin/h.so", Duration::from_secs(2)) {
            Ok(Some(r)) if r.status == 200 => r.text().strip_prefix("ok pid=").map(str::to_string),
            _ => None,
        }
    })
}

/// Waits until server process `pid` is gone (recycled or ended), then for a
/// process answering in its place; returns that one's pid.
fn replaced(a: &Apache, pid: &str) -> String {
    let p: u32 = pid.parse().unwrap();
    wait_for("the old server process to be gone", Duration::from_secs(20), || {
        (!a.children().contains(&p)).then_some(())
    });
    let new = answering_pid(a);
    assert_ne!(new, pid);
    new
}

/// The line an isolated call that a worker's death ended logs (the worker
/// does not log; the server thread names the script and the reason).
fn worker_died(script: &str, what: &str) -> String {
    format!("{script}: processfunc {what} in its isolated worker")
}

fn no_dead_children(a: &Apache) {
    let log = a.error_log();
    assert!(dead_children(&log).is_empty(), "a server process died of a signal:\n{log}");
}

/// Processes whose parent is a server process (the MPM's children are
/// children of the parent, so anything below them is a script's fork).
fn strays(a: &Apache) -> Vec<String> {
    let mut procs = Vec::new();
    for e in fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else { continue };
        let Ok(st) = fs::read_to_string(format!("/proc/{pid}/stat")) else { continue };
        let Some((name, rest)) = st.split_once(" (").and_then(|(_, r)| r.rsplit_once(") ")) else { continue };
        let f: Vec<&str> = rest.split_whitespace().collect();
        let ppid = f.get(1).and_then(|p| p.parse::<u32>().ok()).unwrap_or(0);
        procs.push((pid, name.to_string(), f[0].to_string(), ppid));
    }
    // The processes that run scripts: the server processes, and under
    // LIBCGI_TEST_ISOLATION the isolation manager's workers instead of the
    // manager (its workers are no strays; a worker's child is).
    let kids = a.children();
    let managers: Vec<u32> =
        procs.iter().filter(|p| kids.contains(&p.0) && p.1 == "libcgi-manager").map(|p| p.0).collect();
    let runners: Vec<u32> = procs
        .iter()
        .filter(|p| (kids.contains(&p.0) && !managers.contains(&p.0)) || managers.contains(&p.3))
        .map(|p| p.0)
        .collect();
    procs
        .iter()
        .filter(|p| runners.contains(&p.3))
        .map(|(pid, name, state, ppid)| format!("{pid} ({name}) state {state} parent {ppid}"))
        .collect()
}

fn stop_within(a: &Apache, limit: Duration) {
    let pid = a.pid();
    // SAFETY: signalling the server this test started.
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    let t = Instant::now();
    wait_for("the server to stop on SIGTERM", limit, || {
        let st = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let state = st.rsplit_once(") ").map(|x| x.1.chars().next().unwrap_or('?')).unwrap_or('Z');
        (state == 'Z' || st.is_empty()).then_some(())
    });
    eprintln!("stopped in {:?}", t.elapsed());
}

/// Item 1: a timeout while the script is inside libc (malloc, localtime_r)
/// must not leave a libc lock held: the jump waits until the thread is in the
/// script's own code.  Before the fix, after a few timeouts every thread was
/// stuck on tzset_lock or an arena lock and SIGTERM needed SIGKILL.
///
/// Isolated the deadline kills the worker wherever it is (SIGKILL from the
/// manager: no lock of a server process is involved); each timeout costs
/// that worker, never the server process.
fn timeout_inside_libc(mpm: Mpm) {
    let a = server(mpm, "LibCGITimeout 1\nLibCGIMaxFaults 0 1");
    let mut pid = ok_pid(&a, "/libcgi-bin/h.so");
    let servers = a.server_children();
    for i in 0..6 {
        let t = Instant::now();
        let r = must_answer(&a, "/libcgi-bin/h.so?mode=libcloop", Duration::from_secs(8));
        assert_eq!(r.map(|r| r.status), Some(500), "timeout #{i}");
        assert!(t.elapsed() < Duration::from_secs(4), "timeout #{i} took {:?}", t.elapsed());
        // Apache's own time formatting (localtime) and malloc still work.
        let t = Instant::now();
        let r = must_answer(&a, "/libcgi-bin/t.so", Duration::from_secs(5)).expect("t.so answered");
        assert_eq!(r.text(), "hello v0");
        eprintln!("t.so after timeout #{i}: {:?}", t.elapsed());
        assert!(t.elapsed() < Duration::from_secs(3), "t.so took {:?}", t.elapsed());
        if isolated() {
            pid = survived_here(&a, "/libcgi-bin/h.so", &pid, &servers);
        }
    }
    // Every jump was made from the script's own code: the process is sound
    // and was not recycled.  (Isolated, a live worker answers; which one is
    // the slot claim's choice.)
    let now = ok_pid(&a, "/libcgi-bin/h.so");
    if isolated() {
        assert!(alive(now.parse().unwrap()) && !servers.contains(&now.parse().unwrap()), "{now}");
    } else {
        assert_eq!(now, pid);
    }
    assert_eq!(a.server_children(), servers);
    let log = a.error_log();
    let want = if isolated() {
        worker_died("h.so", "timed out after 1 s") + " (signal 9); worker replaced"
    } else {
        "h.so: processfunc still running after 1.0 s (LibCGITimeout); script".to_string()
    };
    assert_eq!(log.matches(&want).count(), 6, "{log}");
    assert!(!log.contains("outside the script's own code"), "{log}");
    no_dead_children(&a);
    stop_within(&a, Duration::from_secs(6));
}

/// Item 1: a fault raised inside libc (glibc's heap check aborting inside
/// free(), the arena lock held): never a hung process.  The request gets an
/// answer or a closed connection, the process is replaced, the log says why.
///
/// Isolated, glibc's abort kills the worker (SIGABRT): a 500, one line, the
/// worker replaced, the server processes untouched.  glibc's own message
/// goes to the worker's stderr, /dev/null (README "Isolation": the worker
/// does not log).
fn fault_inside_libc(mpm: Mpm) {
    let a = server(mpm, "LibCGIMaxFaults 0 1");
    let pid = ok_pid(&a, "/libcgi-bin/h.so");
    let r = must_answer(&a, "/libcgi-bin/h.so?mode=doublefree", Duration::from_secs(12));
    if isolated() {
        assert_eq!(r.map(|r| r.status), Some(500));
        let servers = a.server_children();
        let log = a.wait_log("the fault's line", |l| l.contains(&worker_died("h.so", "crashed")));
        assert_eq!(log.matches(&(worker_died("h.so", "crashed") + " (signal 6); worker replaced")).count(), 1, "{log}");
        survived_here(&a, "/libcgi-bin/h.so", &pid, &servers);
        no_dead_children(&a);
        return;
    }
    if let Some(r) = r {
        assert_eq!(r.status, 500, "{}", r.text());
    }
    replaced(&a, &pid);
    let log = a.wait_log("the fault's line", |l| {
        l.contains("h.so: processfunc signal 6")
            || l.contains("h.so: signal 6 outside the script's own code, and the server process had not finished")
    });
    assert!(log.contains("double free or corruption"), "glibc's own message: {log}");
    for l in log.lines().filter(|l| l.contains("libcgi") || l.contains("double free")) {
        eprintln!("{l}");
    }
    no_dead_children(&a);
}

/// Item 2: endless recursion through a callback (lprintf) is the script's
/// fault: 500 or a cut response, the process lives on.
fn recursion_through_a_callback(mpm: Mpm) {
    let a = server(mpm, "LibCGIMaxFaults 0 1");
    let pid = ok_pid(&a, "/libcgi-bin/h.so");
    let servers = a.server_children();
    let r = must_answer(&a, "/libcgi-bin/h.so?mode=recurse_lprintf", Duration::from_secs(20));
    let r = r.unwrap_or_else(|| panic!("connection closed without a response\n{}", a.error_log()));
    assert!(r.status == 500 || r.truncated, "{} truncated={}", r.status, r.truncated);
    if isolated() {
        // The worker's own stack ran out: the kernel's SIGSEGV ended it.
        let want = worker_died("h.so", "crashed") + " (signal 11); worker replaced";
        a.wait_log("the fault's line", |l| l.contains(&want));
    } else {
        a.wait_log("the fault's line", |l| l.contains("h.so: processfunc signal 11 (Segmentation fault)"));
        assert!(a.error_log().contains("(stack exhausted)"), "{}", a.error_log());
    }
    survived_here(&a, "/libcgi-bin/h.so", &pid, &servers);
    no_dead_children(&a);
}

/// Item 3: fork() in a script.  The child never goes on as a copy of the
/// server: exit(0), a failed exec's _exit(127), vfork's _exit, and a child
/// that returns from processfunc all end the child; one response, one
/// access-log line, no stray process.
fn fork_in_a_script(mpm: Mpm) {
    let a = server(mpm, "");
    let pid = ok_pid(&a, "/libcgi-bin/h.so");
    for (mode, status) in [("fork_exit", 0), ("fork_exec", 127), ("vfork", 3), ("fork_return", 0)] {
        let path = format!("/libcgi-bin/h.so?mode={mode}");
        let r = must_answer(&a, &path, Duration::from_secs(10)).unwrap_or_else(|| panic!("{mode}: closed"));
        assert_eq!(r.status, 200, "{mode}");
        assert!(!r.truncated, "{mode}");
        assert_eq!(r.text(), format!("child status {status} pid {pid}\n"), "{mode}");
        let strays = strays(&a);
        assert!(strays.is_empty(), "{mode}: processes below a server process: {strays:?}");
        let access = wait_for("the access log line", Duration::from_secs(5), || {
            let l = fs::read_to_string(a.dir.join("access.log")).unwrap_or_default();
            l.contains(&path).then_some(l)
        });
        assert_eq!(access.matches(&format!("{path} ")).count(), 1, "{mode}: {access}");
    }
    // system() and popen() (posix_spawn) work as in any program.
    let r = must_answer(&a, "/libcgi-bin/h.so?mode=system", Duration::from_secs(10)).unwrap();
    assert_eq!(r.text(), "system 5 popen 0 popen-out\n");
    assert!(strays(&a).is_empty(), "{:?}", strays(&a));
    assert_eq!(ok_pid(&a, "/libcgi-bin/h.so"), pid);
    // One server process (and under LIBCGI_TEST_ISOLATION the isolation
    // manager beside it).
    let servers: Vec<u32> = a
        .children()
        .into_iter()
        .filter(|p| fs::read_to_string(format!("/proc/{p}/comm")).unwrap_or_default().trim() != "libcgi-manager")
        .collect();
    assert_eq!(servers.len(), 1, "{servers:?}");
    no_dead_children(&a);
}

/// Item 13: the signal mask and the handlers of the guard's signals are not
/// the script's to change.
///
/// Isolated, a worker is the script's own process: the mask and the
/// handlers it changes are its worker's, and its deadline is a SIGKILL from
/// the manager, which no mask blocks (checked below in iso/).
fn signals_stay_the_guards(mpm: Mpm) {
    // In process whatever LIBCGI_TEST_ISOLATION says: the guard's signals and
    // a server thread's mask are the in-process path's.
    let a = server(
        mpm,
        &format!(
            "LibCGITimeout 1\nLibCGIMaxFaults 0 1\n{PIN_INPROCESS}\n\
             <Location /libcgi-bin/iso/>\n  LibCGIIsolation process\n</Location>"
        ),
    );
    let iso = a.bin.join("iso");
    fs::create_dir_all(&iso).unwrap();
    chmod(&iso, 0o755);
    build_script(&iso, "h.so", "hostile", &[]);
    let pid = ok_pid(&a, "/libcgi-bin/h.so");
    // Blocking every signal through libc does not block the timer's.
    let t = Instant::now();
    let r = must_answer(&a, "/libcgi-bin/h.so?mode=blockmask", Duration::from_secs(8));
    assert_eq!(r.map(|r| r.status), Some(500));
    assert!(t.elapsed() < Duration::from_secs(4), "took {:?}", t.elapsed());
    assert_eq!(ok_pid(&a, "/libcgi-bin/h.so"), pid);
    // A mask the script changed is the thread's own again after the call.
    let mask = |a: &Apache| must_answer(a, "/libcgi-bin/h.so?mode=sigmask", Duration::from_secs(5)).unwrap().text();
    let before = mask(&a);
    let r = must_answer(&a, "/libcgi-bin/h.so?mode=blockmask_quick", Duration::from_secs(5)).unwrap();
    assert_eq!(r.text(), "blocked\n");
    assert_eq!(mask(&a), before, "the script's mask outlived its call");
    // Nor can it unblock what its server thread blocks (SIGTERM in a worker
    // or event thread, which the MPM keeps for the main thread), during the
    // call or after it.
    let r = must_answer(&a, "/libcgi-bin/h.so?mode=unblockmask", Duration::from_secs(5)).unwrap();
    assert_eq!(r.text(), before, "the script unblocked a signal its server thread blocks");
    assert_eq!(mask(&a), before, "the script's unblocking outlived its call");
    // Nor change what the server's own signals do (SIGPIPE back to its
    // default would let a vanished client kill the process).
    let r = must_answer(&a, "/libcgi-bin/h.so?mode=serversignals", Duration::from_secs(5)).unwrap();
    assert_eq!(r.text(), "SIGTERM -1 SIGPIPE dfl -1 ign 0 SIGUSR1 -1; SIGPIPE ignored 1\n");
    // Its own SIGSEGV handler is refused: the fault is still contained.
    let r = must_answer(&a, "/libcgi-bin/h.so?mode=ownsegv", Duration::from_secs(5)).unwrap();
    assert_eq!(r.status, 500, "{}", r.text());
    a.wait_log("the fault line", |l| l.contains("h.so: processfunc signal 11"));
    assert_eq!(ok_pid(&a, "/libcgi-bin/h.so"), pid);

    // Isolated: every signal blocked, and the deadline still ends the call
    // (the worker, not the server process).
    let worker = ok_pid(&a, "/libcgi-bin/iso/h.so");
    assert_ne!(worker, pid, "iso/h.so ran in the server process");
    let t = Instant::now();
    let r = must_answer(&a, "/libcgi-bin/iso/h.so?mode=blockmask", Duration::from_secs(8));
    assert_eq!(r.map(|r| r.status), Some(500));
    assert!(t.elapsed() < Duration::from_secs(4), "took {:?}", t.elapsed());
    a.wait_log("the isolated timeout", |l| l.contains(&worker_died("iso/h.so", "timed out after 1 s")));
    assert!(!alive(worker.parse().unwrap()), "the worker that blocked every signal is still alive");
    // Its own handlers are its worker's: its SIGSEGV handler runs there.
    let r = must_answer(&a, "/libcgi-bin/iso/h.so?mode=ownsegv", Duration::from_secs(5)).unwrap();
    assert_eq!((r.status, r.text().as_str()), (200, "own handler ran (sigaction 0)\n"));
    assert_eq!(ok_pid(&a, "/libcgi-bin/h.so"), pid);
    no_dead_children(&a);
}

/// Item 13 / watchdog escalation: a raw rt_sigprocmask blocks the timer past
/// every wrapper; the watchdog notices that its signals are never acted on
/// and ends the process (one line, written without malloc), which the MPM
/// replaces.  Before the fix the request and its thread hung for ever.
///
/// Isolated, the deadline is a SIGKILL of the worker, which no mask blocks:
/// the request gets its 500, the worker is replaced, the server process
/// stays.
fn raw_blocked_timer_ends_the_process(mpm: Mpm) {
    let a = server(mpm, "LibCGITimeout 1\nLibCGIMaxFaults 0 1");
    let pid = ok_pid(&a, "/libcgi-bin/h.so");
    let t = Instant::now();
    let r = must_answer(&a, "/libcgi-bin/h.so?mode=rawblock", Duration::from_secs(10));
    if isolated() {
        let servers = a.server_children();
        assert_eq!(r.map(|r| r.status), Some(500));
        assert!(t.elapsed() < Duration::from_secs(4), "took {:?}", t.elapsed());
        let want = worker_died("h.so", "timed out after 1 s") + " (signal 9); worker replaced";
        a.wait_log("the timeout line", |l| l.contains(&want));
        survived_here(&a, "/libcgi-bin/h.so", &pid, &servers);
        no_dead_children(&a);
        return;
    }
    assert!(r.is_none(), "the process was to end: {:?}", r.map(|r| r.status));
    assert!(t.elapsed() < Duration::from_secs(7), "took {:?}", t.elapsed());
    let log = a.wait_log("the last-resort line", |l| l.contains("not interruptible"));
    assert!(
        log.lines().any(|l| l.contains("[libcgi:crit]") && l.contains("h.so: still running after its LibCGITimeout")),
        "{log}"
    );
    replaced(&a, &pid);
    no_dead_children(&a);
}

/// A script blocked in a system call cannot be interrupted safely: after the
/// grace it is anyway, its request gets its 500, and the process (now
/// unsound) is recycled.
///
/// Isolated, the worker is killed in its system call: nothing of a server
/// process was interrupted, so none is recycled.
fn blocked_in_a_syscall(mpm: Mpm) {
    let a = server(mpm, "LibCGITimeout 1\nLibCGIMaxFaults 0 1");
    let pid = ok_pid(&a, "/libcgi-bin/h.so");
    let servers = a.server_children();
    let t = Instant::now();
    let r = must_answer(&a, "/libcgi-bin/h.so?mode=sleep", Duration::from_secs(10));
    assert_eq!(r.map(|r| r.status), Some(500));
    assert!(t.elapsed() < Duration::from_secs(5), "took {:?}", t.elapsed());
    if isolated() {
        let want = worker_died("h.so", "timed out after 1 s") + " (signal 9); worker replaced";
        a.wait_log("the timeout line", |l| l.contains(&want));
        survived_here(&a, "/libcgi-bin/h.so", &pid, &servers);
        assert!(!a.error_log().contains("recycling"), "{}", a.error_log());
        no_dead_children(&a);
        return;
    }
    a.wait_log("the timeout line", |l| l.contains("still running after 1.0 s (LibCGITimeout) outside the script's"));
    replaced(&a, &pid);
    assert!(a.error_log().contains("recycling this server process"), "{}", a.error_log());
    no_dead_children(&a);
}

/// Item 8: the script's destructors run in dlclose after a fault-unload,
/// guarded: a fault or a hang there costs the process (recycled), never a
/// dead or hung one, and the request still gets its 500.
///
/// Isolated, the fault ends the worker, whose destructors never run (no
/// dlclose in a process that is gone): the 500, the fault's line, a new
/// worker, the server processes untouched.
fn destructors_after_a_fault(mpm: Mpm) {
    for mode in ["dtorsegv", "dtorhang"] {
        let a = server(mpm, "LibCGITimeout 1\nLibCGIMaxFaults 0 1");
        let pid = ok_pid(&a, "/libcgi-bin/h.so");
        let servers = a.server_children();
        let t = Instant::now();
        let r = must_answer(&a, &format!("/libcgi-bin/h.so?mode={mode}"), Duration::from_secs(10));
        let r = r.unwrap_or_else(|| panic!("{mode}: closed without a response\n{}", a.error_log()));
        assert_eq!(r.status, 500, "{mode}");
        assert!(t.elapsed() < Duration::from_secs(5), "{mode}: took {:?}", t.elapsed());
        if isolated() {
            let want = worker_died("h.so", "crashed") + " (signal 11); worker replaced";
            a.wait_log(&want, |l| l.contains(&want));
            survived_here(&a, "/libcgi-bin/h.so", &pid, &servers);
            assert!(!a.error_log().contains("destructors (dlclose)"), "{mode}: {}", a.error_log());
            no_dead_children(&a);
            continue;
        }
        let want =
            if mode == "dtorsegv" { "destructors (dlclose) signal 11" } else { "destructors (dlclose) still running" };
        a.wait_log(want, |l| l.contains(&format!("h.so: {want}")));
        replaced(&a, &pid);
        no_dead_children(&a);
    }
}

/// Item 13: exit() from a thread the script started ends that thread only
/// (the request and the server go on); pthread_exit on the request's own
/// thread ends the request like exit(0).
fn exit_from_script_threads(mpm: Mpm) {
    let a = server(mpm, "");
    let pid = ok_pid(&a, "/libcgi-bin/h.so");
    let r = must_answer(&a, "/libcgi-bin/h.so?mode=thread_exit", Duration::from_secs(5)).unwrap();
    assert_eq!(r.text(), format!("joined pid {pid}\n"));
    let r = must_answer(&a, "/libcgi-bin/h.so?mode=pthread_exit", Duration::from_secs(5))
        .unwrap_or_else(|| panic!("closed\n{}", a.error_log()));
    assert_eq!((r.status, r.text().as_str()), (200, "before pthread_exit"));
    assert_eq!(ok_pid(&a, "/libcgi-bin/h.so"), pid);
    no_dead_children(&a);
}

/// Item 11: a subrequest (mod_include's `#include virtual`) into a script,
/// run from inside the outer script's lflush, leaves the outer call's guard
/// and deadline as they were; a non-thread-safe script including itself is
/// refused (508), not deadlocked.
///
/// Isolated, the subrequest runs in another worker while the outer one waits
/// in its lflush; a fault or a timeout after it still ends the outer call
/// (its worker), and a script including itself is served by a second
/// worker: one call at a time holds per worker, and no lock is waited for.
fn nested_includes(mpm: Mpm) {
    let a = server(
        mpm,
        &format!(
            "LoadModule include_module {MODULES}/mod_include.so\nLibCGITimeout 1\nLibCGIMaxFaults 0 1\n\
             <Location /libcgi-bin/inc/>\n  Options +ExecCGI +Includes\n  SetOutputFilter INCLUDES\n</Location>"
        ),
    );
    let inc = a.bin.join("inc");
    fs::create_dir_all(&inc).unwrap();
    chmod(&inc, 0o755);
    build_script(&inc, "h.so", "hostile", &["-DINCLUDE_PATH=\"/libcgi-bin/t.so\""]);
    build_script(&inc, "self.so", "hostile", &["-DNOT_THREAD_SAFE", "-DINCLUDE_PATH=\"/libcgi-bin/inc/self.so\""]);
    let r = must_answer(&a, "/libcgi-bin/inc/h.so?mode=include", Duration::from_secs(5)).unwrap();
    let body = r.text();
    assert!(body.contains("hello v0"), "{body}");
    assert!(body.contains("<p>before</p>") && body.contains("<p>after</p>"), "{body}");
    let pid = ok_pid(&a, "/libcgi-bin/inc/h.so");
    let servers = a.server_children();

    // A fault after the include is still the outer call's, and caught.
    let r = must_answer(&a, "/libcgi-bin/inc/h.so?mode=include_segv", Duration::from_secs(10))
        .unwrap_or_else(|| panic!("closed\n{}", a.error_log()));
    assert!(r.truncated || r.status == 500, "{} {}", r.status, r.text());
    let want = if isolated() {
        worker_died("inc/h.so", "crashed") + " (signal 11)"
    } else {
        "inc/h.so: processfunc signal 11".to_string()
    };
    a.wait_log("the outer fault", |l| l.contains(&want));
    let pid = survived_here(&a, "/libcgi-bin/inc/h.so", &pid, &servers);

    // So is a timeout: the outer deadline survived the inner call.
    let t = Instant::now();
    let r = must_answer(&a, "/libcgi-bin/inc/h.so?mode=include_loop", Duration::from_secs(8))
        .unwrap_or_else(|| panic!("closed\n{}", a.error_log()));
    assert!(r.truncated || r.status == 500, "{}", r.status);
    assert!(t.elapsed() < Duration::from_secs(4), "took {:?}", t.elapsed());
    let want = if isolated() {
        worker_died("inc/h.so", "timed out after 1 s")
    } else {
        "inc/h.so: processfunc still running after 1.0 s".to_string()
    };
    a.wait_log("the outer timeout", |l| l.contains(&want));
    survived_here(&a, "/libcgi-bin/inc/h.so", &pid, &servers);

    // A non-thread-safe script including itself: refused, no deadlock.
    let r = must_answer(&a, "/libcgi-bin/inc/self.so?mode=include_self", Duration::from_secs(8))
        .unwrap_or_else(|| panic!("closed\n{}", a.error_log()));
    assert_eq!(r.status, 200);
    if isolated() {
        // The inner call ran in a second worker of the same script.
        let body = r.text();
        assert!(body.contains("inner\n") && body.contains("<p>after</p>"), "{body}");
        assert!(!a.error_log().contains("a subrequest into this script while it runs"), "{}", a.error_log());
        let r = must_answer(&a, "/libcgi-bin/inc/self.so?mode=inner", Duration::from_secs(5)).unwrap();
        assert_eq!(r.text(), "inner\n");
        assert_eq!(a.server_children(), servers);
        no_dead_children(&a);
        return;
    }
    assert!(r.text().contains("<p>after</p>") && !r.text().contains("inner"), "{}", r.text());
    let log = a.wait_log("the refusal", |l| l.contains("inc/self.so: a subrequest into this script while it runs"));
    assert_eq!(log.matches("a subrequest into this script while it runs").count(), 1, "{log}");
    // And it is not left locked.
    let r = must_answer(&a, "/libcgi-bin/inc/self.so?mode=inner", Duration::from_secs(5)).unwrap();
    assert_eq!(r.text(), "inner\n");
    no_dead_children(&a);
}

prefork_and_event!(
    timeout_inside_libc,
    fault_inside_libc,
    recursion_through_a_callback,
    fork_in_a_script,
    signals_stay_the_guards,
    raw_blocked_timer_ends_the_process,
    blocked_in_a_syscall,
    destructors_after_a_fault,
    exit_from_script_threads,
    nested_includes,
);

fn proc_status(pid: u32, key: &str) -> u64 {
    let s = fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{key} of {pid}: {s}"))
}

/// The guard's alternate signal stacks mapped in a process: 128 KiB
/// read-write right above a one-page PROT_NONE guard.
fn altstacks(pid: u32) -> usize {
    let maps = fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
    let vmas: Vec<(u64, u64, String)> = maps
        .lines()
        .filter_map(|l| {
            let (range, rest) = l.split_once(' ')?;
            let (a, b) = range.split_once('-')?;
            Some((u64::from_str_radix(a, 16).ok()?, u64::from_str_radix(b, 16).ok()?, rest[..4].to_string()))
        })
        .collect();
    vmas.windows(2)
        .filter(|w| {
            w[0].2 == "---p"
                && w[0].1 - w[0].0 == 4096
                && w[0].1 == w[1].0
                && w[1].2 == "rw-p"
                && w[1].1 - w[1].0 == 128 * 1024
        })
        .count()
}

/// Item 10: threads that go away (mod_http2's idle workers) give back their
/// guard, alternate stack (128 KiB + a guard page each) and watchdog entry.
/// Rounds of 16 parallel HTTP/2 streams make mod_http2 start workers, which
/// exit after a second idle; the server process's mappings stay flat.
fn thread_churn(mpm: Mpm) {
    // In process whatever LIBCGI_TEST_ISOLATION says: the guard and the
    // alternate stacks are those of server threads that run scripts.
    let a = server(
        mpm,
        &format!(
            "LoadModule http2_module {MODULES}/mod_http2.so\nProtocols h2c http/1.1\nH2MinWorkers 1\n\
             H2MaxWorkers 12\nH2MaxWorkerIdleSeconds 1\nLibCGITimeout 5\n{PIN_INPROCESS}"
        ),
    );
    let pid = ok_pid(&a, "/libcgi-bin/h.so").parse::<u32>().unwrap();
    let url = a.url("/libcgi-bin/h.so?mode=usleep");
    let base = proc_status(pid, "Threads:");
    let round = || {
        // One connection each (curl 7.88's -Z with prior knowledge breaks
        // the first stream): the streams still share the workers.
        let kids: Vec<_> = (0..16)
            .map(|_| {
                std::process::Command::new("curl")
                    .args(["--http2-prior-knowledge", "-sS", "-o", "/dev/null", "-w", "%{http_version} %{http_code}"])
                    .arg(&url)
                    .stdout(std::process::Stdio::piped())
                    .spawn()
                    .expect("curl (Debian package curl, built with nghttp2)")
            })
            .collect();
        let mut peak = 0;
        for k in kids {
            peak = peak.max(proc_status(pid, "Threads:"));
            let o = k.wait_with_output().unwrap();
            assert_eq!(String::from_utf8_lossy(&o.stdout), "2 200", "an HTTP/2 request failed");
        }
        // The streams ran on several mod_http2 workers; wait until the idle
        // ones have exited again.
        let low = wait_for("idle HTTP/2 workers to exit", Duration::from_secs(15), || {
            let n = proc_status(pid, "Threads:");
            (n <= base + 1).then_some(n)
        });
        (peak, low)
    };
    round();
    round();
    let before = altstacks(pid);
    let mut churned = 0;
    for _ in 0..8 {
        let (peak, low) = round();
        churned += peak - low;
    }
    let after = altstacks(pid);
    let threads = proc_status(pid, "Threads:");
    eprintln!(
        "thread churn: {churned} threads came and went; alternate stacks {before} -> {after} ({threads} threads)"
    );
    assert!(churned >= 16, "only {churned} threads came and went");
    assert!(after <= before + 4, "alternate stacks {before} -> {after} over {churned} thread exits: leaked");
    assert!(after <= threads as usize, "{after} alternate stacks for {threads} threads");
    assert_eq!(ok_pid(&a, "/libcgi-bin/h.so"), pid.to_string());
    no_dead_children(&a);
}

mod threads {
    // The watchdog's escalation and the last resort, with worker's threads.
    #[test]
    fn timeout_inside_libc_worker() {
        super::timeout_inside_libc(super::Mpm::Worker);
    }
    #[test]
    fn fault_inside_libc_worker() {
        super::fault_inside_libc(super::Mpm::Worker);
    }
    #[test]
    fn raw_blocked_timer_ends_the_process_worker() {
        super::raw_blocked_timer_ends_the_process(super::Mpm::Worker);
    }

    #[test]
    fn thread_churn_event() {
        super::thread_churn(super::Mpm::Event);
    }
    #[test]
    fn thread_churn_worker() {
        super::thread_churn(super::Mpm::Worker);
    }
}

/// common::survived with this file's ok_pid.
fn survived_here(a: &Apache, path: &str, pid: &str, servers: &[u32]) -> String {
    survived(a, path, pid, servers, ok_pid)
}
