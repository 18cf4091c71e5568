//! Issue 2: the handler, the script ABI, loading, output and errors, under
//! prefork, worker and event, against a real apache2.

mod common;
use common::*;
use std::fs;

const T: &str = "/libcgi-bin/t.so";

fn server(mpm: Mpm) -> Apache {
    let a = Apache::start(Config::new(mpm));
    a.install("t.so", "t", &[]);
    a
}

fn get_ok(a: &Apache, path: &str) -> Response {
    let r = a.get(path);
    assert_eq!(r.status, 200, "GET {path}: {r:?}\n{}", a.error_log());
    r
}

/// Lines of the error log that mod_libcgi or the CGI parser wrote at error level.
fn error_lines(log: &str) -> Vec<&str> {
    log.lines().filter(|l| l.contains(":error]")).collect()
}

fn hello(mpm: Mpm) {
    let a = server(mpm);
    let r = get_ok(&a, T);
    assert_eq!(r.text(), "hello v0");
    assert_eq!(r.header("Content-Type"), Some("text/plain"));
    // A clean run leaves nothing at the default log level.
    assert!(error_lines(&a.error_log()).is_empty(), "{}", a.error_log());
    // Examples shipped with the project build and run.
    for ex in ["hello", "env", "form", "counter"] {
        let o = std::process::Command::new("cc")
            .args(["-shared", "-fPIC", "-Wall", "-Werror", "-I"])
            .arg(root().join("include"))
            .arg("-o")
            .arg(a.bin.join(format!("{ex}.so")))
            .arg(root().join("examples").join(format!("{ex}.c")))
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    assert_eq!(get_ok(&a, "/libcgi-bin/hello.so").text(), "Hello from mod_libcgi\n");
    assert!(get_ok(&a, "/libcgi-bin/env.so?q=1").text().contains("QUERY_STRING=q=1\n"));
    let f = a.send(Request::post("/libcgi-bin/form.so", b"name=Ada+L&comment=%3Cb%3E"));
    assert!(f.text().contains("<dt>name<dd>Ada L") && f.text().contains("&lt;b&gt;"), "{}", f.text());
    let c1 = get_ok(&a, "/libcgi-bin/counter.so").text();
    let c2 = get_ok(&a, "/libcgi-bin/counter.so").text();
    assert!(c1.contains("served this script 1 time") && c2.contains("served this script 2 time"), "{c1} / {c2}");
}

fn sethandler_and_methods(mpm: Mpm) {
    let a = server(mpm);
    build_script(&a.dir.join("setbin"), "anything", "t", &[]);
    assert_eq!(get_ok(&a, "/sethandler/anything?mode=method").text(), "GET mode=method");
    for m in ["POST", "PUT", "DELETE", "PATCH", "OPTIONS"] {
        let r = a.send(Request::new(m, &format!("{T}?mode=method")).body(b"x"));
        assert_eq!((r.status, r.text()), (200, format!("{m} mode=method")), "{m}");
    }
    let h = a.send(Request::new("HEAD", "/libcgi-bin/t.so?mode=status"));
    assert_eq!(h.status, 418);
    assert!(h.body.is_empty());
}

fn forbidden_and_missing(mpm: Mpm) {
    let a = server(mpm);
    build_script(&a.dir.join("noexec"), "t.so", "t", &[]);
    let r = a.get("/noexec/t.so");
    assert_eq!(r.status, 403);
    let log = a.wait_log("ExecCGI log line", |l| l.contains("Options ExecCGI is off"));
    assert!(log.contains("noexec/t.so"), "{log}");

    assert_eq!(a.get("/libcgi-bin/missing.so").status, 404);

    // Only regular files are scripts: a directory under SetHandler, a FIFO.
    fs::create_dir(a.dir.join("setbin/sub")).unwrap();
    assert_eq!(a.get("/sethandler/sub/").status, 403);
    let fifo = std::ffi::CString::new(a.bin.join("fifo.so").to_str().unwrap()).unwrap();
    // SAFETY: creating a FIFO at a path we own.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) }, 0);
    assert_eq!(a.get("/libcgi-bin/fifo.so").status, 403);
    a.wait_log("non-regular file line", |l| {
        l.contains("other than a regular file as a script") && l.contains("fifo.so")
    });
}

fn path_info(mpm: Mpm) {
    let a = server(mpm);
    assert_eq!(get_ok(&a, "/libcgi-bin/t.so/a/b?mode=pathinfo").text(), "PATH_INFO=/a/b SCRIPT_NAME=/libcgi-bin/t.so");
    a.install("nopathinfo.so", "t", &[]);
    assert_eq!(a.get("/libcgi-bin/nopathinfo.so?mode=pathinfo").status, 200);
    assert_eq!(a.get("/libcgi-bin/nopathinfo.so/x?mode=pathinfo").status, 404);
}

fn load_errors(mpm: Mpm) {
    let a = server(mpm);
    fs::write(a.bin.join("text.so"), "this is not an ELF file\n").unwrap();
    assert_eq!(a.get("/libcgi-bin/text.so").status, 500);
    a.wait_log("not-a-shared-object line", |l| l.contains("text.so: cannot load script: not a loadable shared object"));

    a.install("noproc.so", "t", &["-DNO_PROCESSFUNC"]);
    assert_eq!(a.get("/libcgi-bin/noproc.so").status, 500);
    a.wait_log("no processfunc line", |l| {
        l.contains("noproc.so: cannot load script: the script does not export processfunc")
    });

    // initfunc fails while the flag file exists; a failed load is not cached.
    let flag = a.dir.join("init-fails");
    fs::write(&flag, "").unwrap();
    a.install("initfail.so", "t", &[&format!("-DINIT_FAIL_FILE=\"{}\"", flag.display())]);
    assert_eq!(a.get("/libcgi-bin/initfail.so").status, 500);
    assert_eq!(a.get("/libcgi-bin/initfail.so").status, 500);
    a.wait_log("initfunc failure line", |l| l.contains("initfail.so: cannot load script: initfunc returned 7"));
    fs::remove_file(&flag).unwrap();
    assert_eq!(get_ok(&a, "/libcgi-bin/initfail.so?mode=version").text().split(' ').nth(1), Some("init=1"));
    // The server process is unharmed throughout.
    assert_eq!(get_ok(&a, T).text(), "hello v0");
}

fn bad_output(mpm: Mpm) {
    let a = server(mpm);
    // A first request loads the script; bad output unloads it, so initfunc
    // runs again afterwards.
    assert!(get_ok(&a, "/libcgi-bin/t.so?mode=version").text().contains("init=1"));
    let r = a.get("/libcgi-bin/t.so?mode=malformed");
    assert_eq!(r.status, 500);
    assert!(!r.text().contains("BODY-AFTER-BAD-HEADER"));
    a.wait_log("malformed header line", |l| {
        l.contains("malformed header from script 't.so': Bad header: Content-Type text/plain")
    });
    assert!(get_ok(&a, "/libcgi-bin/t.so?mode=version").text().contains("init=1"), "not reloaded after bad headers");

    assert_eq!(a.get("/libcgi-bin/t.so?mode=noblank").status, 500);
    a.wait_log("premature end line", |l| l.contains("Premature end of script headers: t.so"));
    assert_eq!(a.get("/libcgi-bin/t.so?mode=nothing").status, 500);

    let r = a.get("/libcgi-bin/t.so?mode=fail");
    assert_eq!(r.status, 500);
    assert!(!r.text().contains("PARTIAL-OUTPUT"));
    a.wait_log("non-zero processfunc line", |l| l.contains("t.so: processfunc returned 3"));
}

fn headers_and_status(mpm: Mpm) {
    let a = server(mpm);
    let r = a.get("/libcgi-bin/t.so?mode=status");
    assert_eq!((r.status, r.reason.as_str(), r.text().as_str()), (418, "I'm a teapot", "teapot"));
    let r = a.get("/libcgi-bin/t.so?mode=notfound");
    assert_eq!((r.status, r.text().as_str()), (404, "nothing here"));

    let r = get_ok(&a, "/libcgi-bin/t.so?mode=cookies");
    assert_eq!(r.headers_named("Set-Cookie"), vec!["a=1; Path=/", "b=2; Path=/"]);
    assert_eq!(r.header("X-Custom"), Some("yes"));

    // Local Location: an internal redirect, always as GET.
    let r = a.send(Request::post("/libcgi-bin/t.so?mode=redirect-local", b"k=v"));
    assert_eq!((r.status, r.text().as_str()), (200, "GET mode=method"));
    // Absolute Location: 302 to the client.
    let r = a.get("/libcgi-bin/t.so?mode=redirect-abs");
    assert_eq!(r.status, 302);
    assert_eq!(r.header("Location"), Some("http://example.invalid/elsewhere"));
}

fn input_and_output_functions(mpm: Mpm) {
    let a = server(mpm);
    assert_eq!(get_ok(&a, "/libcgi-bin/t.so?mode=input").text(), "NULL");
    let bin: Vec<u8> = (0..=255u8).chain([0, 0, 1, 0]).collect();
    let r = a.send(Request::post("/libcgi-bin/t.so?mode=input", &bin));
    let mut want = format!("len={}:", bin.len()).into_bytes();
    want.extend_from_slice(&bin);
    assert_eq!(r.body, want);
    // Chunked request body.
    let big: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    let r = a.send(Request::post("/libcgi-bin/t.so?mode=input", &big).chunked(7000));
    let mut want = format!("len={}:", big.len()).into_bytes();
    want.extend_from_slice(&big);
    assert_eq!(r.status, 200);
    assert!(r.body == want, "chunked body differs ({} bytes back)", r.body.len());
    // LimitRequestBody 1024 under /tiny/.
    assert_eq!(a.send(Request::post("/tiny/t.so?mode=input", &[b'x'; 2000])).status, 413);
    assert_eq!(a.send(Request::post("/tiny/t.so?mode=input", &[b'x'; 2000]).chunked(500)).status, 413);
    assert_eq!(a.send(Request::post("/tiny/t.so?mode=input", &[b'x'; 1000])).status, 200);

    assert_eq!(get_ok(&a, "/libcgi-bin/t.so?mode=lputs").text(), "ab");
    let want = format!(
        "{}\nreturned={}\n",
        "-7|str|3.142|z|1234567890123|4000000000|ff|1.23e+04|0.5|   ab|9  |2.2|9007199254740993",
        "-7|str|3.142|z|1234567890123|4000000000|ff|1.23e+04|0.5|   ab|9  |2.2|9007199254740993".len() + 1
    );
    assert_eq!(get_ok(&a, "/libcgi-bin/t.so?mode=lprintf").text(), want);

    // 1 MiB, flushed after every 64 KiB: streamed (chunked), complete, exact.
    let r = get_ok(&a, "/libcgi-bin/t.so?mode=big&n=1048576&flush=1");
    assert!(r.chunked && !r.truncated);
    assert_eq!(r.body.len(), 1 << 20);
    assert!(r.body.iter().enumerate().all(|(i, &b)| b == b'a' + (i % 26) as u8));
}

fn big_output_bounded_memory(mpm: Mpm) {
    let a = server(mpm);
    let n: usize = 100 << 20;
    let r = get_ok(&a, &format!("/libcgi-bin/t.so?mode=big&n={n}"));
    assert_eq!(r.body.len(), n);
    assert!(r.body.iter().step_by(4099).all(|&b| b.is_ascii_lowercase()));
    let pid: u32 = r.header("X-Pid").unwrap().parse().unwrap();
    let hwm = vm_hwm_kib(pid);
    // The child's peak resident memory stays far below the response size.
    assert!(hwm < 48 * 1024, "server process peaked at {hwm} KiB for a 100 MiB response");
}

fn reload_after_replace(mpm: Mpm) {
    let a = Apache::start(Config::new(mpm));
    let marks = a.dir.join("marks");
    // The server runs as www-data: the file must be writable by it.
    fs::write(&marks, "").unwrap();
    fs::set_permissions(&marks, std::os::unix::fs::PermissionsExt::from_mode(0o666)).unwrap();
    let m = format!("-DMARK_FILE=\"{}\"", marks.display());
    a.install("v.so", "t", &[&m, "-DVERSION=\"v1\""]);
    let r = get_ok(&a, "/libcgi-bin/v.so?mode=version").text();
    assert!(r.starts_with("v1 init=1"), "{r}");
    // Atomic replace (build elsewhere, rename over).
    a.install("v.so", "t", &[&m, "-DVERSION=\"v2\""]);
    let r = get_ok(&a, "/libcgi-bin/v.so?mode=version").text();
    assert!(r.starts_with("v2 init=1"), "{r}");
    let log = fs::read_to_string(&marks).unwrap();
    let lines: Vec<&str> = log.lines().map(|l| l.rsplit_once(' ').unwrap().0).collect();
    assert_eq!(lines, ["init v1", "term v1", "init v2"], "{log}");
    // Graceful restart: the old generation exits and runs terminatefunc.
    a.graceful();
    wait_for("terminatefunc of v2 at graceful restart", std::time::Duration::from_secs(15), || {
        fs::read_to_string(&marks).unwrap().contains("term v2").then_some(())
    });
    assert_eq!(get_ok(&a, "/libcgi-bin/v.so?mode=version").text().split(' ').next(), Some("v2"));
}

fn own_symbols_win(mpm: Mpm) {
    let a = server(mpm);
    assert_eq!(get_ok(&a, "/libcgi-bin/t.so?mode=random").text(), "random=42");
}

fn remote_host(mpm: Mpm) {
    let a = server(mpm);
    let t = get_ok(&a, "/libcgi-bin/t.so?mode=remote").text();
    // HostnameLookups is off: no REMOTE_HOST; get_remote_host still resolves.
    assert!(t.contains("REMOTE_HOST=(null) REMOTE_ADDR=127.0.0.1"), "{t}");
    assert!(t.starts_with("host=localhost ") || t.starts_with("host=127.0.0.1 "), "{t}");

    let b = Apache::start(Config::new(mpm).extra("HostnameLookups On"));
    b.install("t.so", "t", &[]);
    let t = get_ok(&b, "/libcgi-bin/t.so?mode=remote").text();
    assert!(!t.contains("REMOTE_HOST=(null)"), "{t}");
}

fn debug_logging(mpm: Mpm) {
    let mut c = Config::new(mpm);
    c.loglevel = "warn libcgi:debug".into();
    let a = Apache::start(c);
    a.install("t.so", "t", &[]);
    get_ok(&a, T);
    let log = a.wait_log("debug lines", |l| l.contains("processfunc returned 0"));
    assert!(log.contains("[libcgi:debug]") && log.contains("t.so: loaded"), "{log}");
}

per_mpm!(
    hello,
    sethandler_and_methods,
    forbidden_and_missing,
    path_info,
    load_errors,
    bad_output,
    headers_and_status,
    input_and_output_functions,
    big_output_bounded_memory,
    reload_after_replace,
    own_symbols_win,
    remote_host,
    debug_logging,
);

#[test]
fn module_exports_the_abi() {
    let out = std::process::Command::new("nm").arg("-D").arg("--defined-only").arg(module_path()).output().expect("nm");
    let syms = String::from_utf8_lossy(&out.stdout);
    for f in ["lwrite", "lputs", "lprintf", "lflush", "get_remote_host", "linput_length"] {
        assert!(syms.lines().any(|l| l.ends_with(&format!(" T {f}"))), "{f} not exported:\n{syms}");
    }
    assert!(syms.lines().any(|l| l.ends_with(" D libcgi_module")), "libcgi_module not exported");
    // Nothing else of ours leaks into the server's global symbol namespace.
    let ours: Vec<&str> = syms.lines().filter(|l| l.contains(" T ")).collect();
    assert_eq!(ours.len(), 6, "{ours:?}");
}
