//! Issue 2, environment: the variables a script reads with plain getenv()
//! are exactly mod_cgid's for the same request, belong to one request only,
//! and never cross between threads.

mod common;
use common::*;
use std::collections::BTreeMap;
use std::sync::{Arc, Barrier};

fn parse_env(text: &str) -> BTreeMap<String, String> {
    text.lines().filter_map(|l| l.split_once('=')).map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

fn same_as_mod_cgid(mpm: Mpm) {
    let mut cfg = Config::new(mpm)
        .extra("SetEnv FROM_SETENV set-by-config\nPassEnv FROM_PASSENV\nServerAdmin admin@example.invalid");
    cfg.cgid = true;
    let a = Apache::start(cfg);
    a.install("envdump.so", "envdump", &[]);
    // The same program as a classic CGI, under mod_cgid.
    build_cgi(&a.dir.join("cgi-bin"), "envdump.so", "envdump");

    let request = |prefix: &str| {
        Request::post(&format!("/{prefix}/envdump.so/extra/path?a=1&b=%20x"), b"field=value")
            .header("Content-Type", "application/x-www-form-urlencoded")
            .header("Cookie", "session=abc; other=1")
            .header("X-Token", "tok")
            .header("User-Agent", "libcgi-test/1")
            .header("Accept", "text/plain")
            .header("Proxy", "must-not-appear")
    };
    let cgi = a.send(request("cgi-bin"));
    assert_eq!(cgi.status, 200, "mod_cgid: {}\n{}", cgi.text(), a.error_log());
    let lib = a.send(request("libcgi-bin"));
    assert_eq!(lib.status, 200, "{}", a.error_log());

    let cgi_text = cgi.text();
    let unlisted: Vec<&str> = cgi_text.lines().filter(|l| l.starts_with("UNLISTED ")).collect();
    assert!(unlisted.is_empty(), "mod_cgid set variables the dump does not check: {unlisted:?}");

    // The two programs differ only in where they are: cgi-bin vs bin.
    let cgi_dir = a.dir.join("cgi-bin").display().to_string();
    let lib_dir = a.bin.display().to_string();
    let normalise = |m: BTreeMap<String, String>| -> BTreeMap<String, String> {
        m.into_iter()
            .filter(|(k, _)| k != "REMOTE_PORT")
            .map(|(k, v)| (k, v.replace(&cgi_dir, &lib_dir).replace("/cgi-bin/", "/libcgi-bin/")))
            .collect()
    };
    let want = normalise(parse_env(&cgi_text));
    let got = normalise(parse_env(&lib.text()));
    assert_eq!(got, want, "mod_libcgi's variables differ from mod_cgid's");
    // Sanity: the comparison covered the interesting ones.
    for k in [
        "HTTP_COOKIE",
        "HTTP_X_TOKEN",
        "QUERY_STRING",
        "PATH_INFO",
        "CONTENT_LENGTH",
        "FROM_SETENV",
        "FROM_PASSENV",
        "SERVER_ADMIN",
    ] {
        assert!(got.contains_key(k), "{k} missing: {got:?}");
    }
    assert!(!got.contains_key("HTTP_PROXY"), "httpoxy: HTTP_PROXY must not be set");
}

fn nothing_leaks_between_requests(mpm: Mpm) {
    // One server process: request B runs where request A ran.
    let a = Apache::start(Config::new(mpm));
    a.install("t.so", "t", &[]);
    let r = a.send(Request::get("/libcgi-bin/t.so?mode=setenv").header("Cookie", "secret=1").header("X-Token", "A"));
    assert_eq!(r.text(), "LEAKED=yes PUT=p COOKIE=overwritten QS=(null) NEAR=(null)(null)(null)");
    let r = a.get("/libcgi-bin/t.so?mode=check");
    assert_eq!(r.text(), "LEAKED=(null) PUT=(null) COOKIE=(null) X=(null)");
    let r = a.send(Request::get("/libcgi-bin/t.so?mode=check").header("X-Token", "B"));
    assert_eq!(r.text(), "LEAKED=(null) PUT=(null) COOKIE=(null) X=B");
}

fn getenv_however_it_is_linked(mpm: Mpm) {
    let a = Apache::start(Config::new(mpm));
    for (name, flags) in [
        ("plain.so", &[][..]),
        ("noplt.so", &["-fno-plt"][..]),
        ("now.so", &["-Wl,-z,now", "-Wl,-z,relro"][..]),
        ("noplt-now.so", &["-fno-plt", "-Wl,-z,now"][..]),
    ] {
        a.install(name, "t", flags);
        let r = a.get(&format!("/libcgi-bin/{name}?mode=getenvptr"));
        assert_eq!(r.text(), "via pointer: mode=getenvptr", "{name}");
        let r = a.send(Request::get(&format!("/libcgi-bin/{name}?mode=check")).header("X-Token", name));
        assert_eq!(r.text(), format!("LEAKED=(null) PUT=(null) COOKIE=(null) X={name}"), "{name}");
    }
}

/// 500 requests at once, each with its own query string and header; each
/// gets exactly its own values back.
fn concurrent_requests_keep_their_own_values(mpm: Mpm) {
    let mut cfg = Config::new(mpm);
    match mpm {
        Mpm::Prefork => cfg.servers = 16,
        _ => {
            cfg.servers = 2;
            cfg.threads = 64;
        }
    }
    let a = Apache::start(cfg);
    a.install("echo.so", "t", &["-DTHREAD_SAFE"]);
    let port = a.port;
    let n = 500;
    let barrier = Arc::new(Barrier::new(n));
    let handles: Vec<_> = (0..n)
        .map(|i| {
            let b = barrier.clone();
            std::thread::spawn(move || {
                b.wait();
                let r = Request::get(&format!("/libcgi-bin/echo.so?mode=echo&id={i}"))
                    .header("X-Token", &format!("token-{i}"))
                    .send(port);
                (i, r.status, r.text())
            })
        })
        .collect();
    let mut bad = Vec::new();
    for h in handles {
        let (i, status, text) = h.join().unwrap();
        let want = format!("mode=echo&id={i}|token-{i}|mode=echo&id={i}|token-{i}");
        if status != 200 || text != want {
            bad.push(format!("#{i}: {status} {text}"));
        }
    }
    assert!(bad.is_empty(), "{} of {n} requests saw wrong values: {:?}", bad.len(), &bad[..bad.len().min(10)]);
}

fn one_call_at_a_time_unless_thread_safe(mpm: Mpm) {
    let a = Apache::start(Config::new(mpm));
    a.install("serial.so", "t", &[]);
    a.install("parallel.so", "t", &["-DTHREAD_SAFE"]);
    let run = |name: &str| -> Vec<String> {
        let port = a.port;
        let barrier = Arc::new(Barrier::new(6));
        let hs: Vec<_> = (0..6)
            .map(|_| {
                let b = barrier.clone();
                let path = format!("/libcgi-bin/{name}?mode=overlap&ms=100");
                std::thread::spawn(move || {
                    b.wait();
                    Request::get(&path).send(port).text()
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    };
    let serial = run("serial.so");
    assert!(serial.iter().all(|t| t == "max=1"), "a non-thread-safe script ran concurrently: {serial:?}");
    if !isolation_directive().is_empty() {
        // Isolated (README "Isolation"): one call at a time per worker
        // process, thread-safe or not, as per server process under prefork;
        // the calls are spread over several workers, not serialised
        // server-wide.
        let parallel = run("parallel.so");
        assert!(parallel.iter().all(|t| t == "max=1"), "a worker ran two calls at once: {parallel:?}");
    } else if mpm != Mpm::Prefork {
        let parallel = run("parallel.so");
        assert!(parallel.iter().any(|t| t != "max=1"), "a thread-safe script never ran in parallel: {parallel:?}");
    }
}

per_mpm!(
    same_as_mod_cgid,
    nothing_leaks_between_requests,
    getenv_however_it_is_linked,
    concurrent_requests_keep_their_own_values,
    one_call_at_a_time_unless_thread_safe,
);
