//! Issue 11: per-script metrics shared by all server processes, the
//! libcgi-status page (HTML, JSON, Prometheus), per-phase latency, probes.

mod common;
use common::*;
use serde_json::Value;
use std::collections::HashSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

const STATUS: &str = "LoadModule authz_host_module /usr/lib/apache2/modules/mod_authz_host.so\n<Location /libcgi-status>\n  SetHandler libcgi-status\n  Require local\n</Location>";
/// Debian's python3, where python3-jsonschema and python3-prometheus-client
/// install (scripts/install-deps.sh).
const PYTHON: &str = "/usr/bin/python3";

fn server(mpm: Mpm, servers: u32, threads: u32, extra: &str) -> Apache {
    let mut cfg = Config::new(mpm).extra(STATUS).extra(extra);
    cfg.servers = servers;
    cfg.threads = threads;
    cfg.loglevel = "warn libcgi:debug".into();
    Apache::start(cfg)
}

fn install(a: &Apache, name: &str, flags: &[&str]) -> PathBuf {
    a.install(name, "metered", flags)
}

/// As common's, and the page says it is JSON (one request: the tests
/// count the status page's own).
fn status_json(a: &Apache) -> Value {
    let r = a.get("/libcgi-status?json");
    assert_eq!(r.status, 200, "{}\n{}", r.text(), a.error_log());
    assert_eq!(r.header("Content-Type"), Some("application/json"));
    serde_json::from_slice(&r.body).unwrap_or_else(|e| panic!("bad JSON ({e}): {}", r.text()))
}

fn prom_text(a: &Apache) -> String {
    let r = a.get("/libcgi-status?prometheus");
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.header("Content-Type").unwrap_or("").starts_with("text/plain; version=0.0.4"));
    r.text()
}

/// The JSON row of the script whose path ends with `/name`.
fn row<'a>(j: &'a Value, name: &str) -> &'a Value {
    script_row(j, name).unwrap_or_else(|| panic!("no row for {name} in {j}"))
}

fn other(j: &Value) -> &Value {
    j["scripts"].as_array().unwrap().iter().find(|s| s["other"] == true).expect("the other row")
}

fn u(v: &Value) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("not a count: {v}"))
}

/// One sample of the Prometheus text: the value of `metric` with exactly
/// these labels.
fn prom(text: &str, metric: &str, labels: &[(&str, &str)]) -> f64 {
    let mut want: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{}\"", prom_escape(v))).collect();
    want.sort();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let (name_labels, value) = line.rsplit_once(' ').unwrap();
        let (name, ls) = match name_labels.split_once('{') {
            Some((n, rest)) => (n, rest.strip_suffix('}').unwrap()),
            None => (name_labels, ""),
        };
        if name != metric {
            continue;
        }
        let mut have = split_labels(ls);
        have.sort();
        if have == want {
            return value.parse().unwrap();
        }
    }
    panic!("no sample {metric}{labels:?} in:\n{text}");
}

fn prom_escape(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// `a="x",b="y"` into its parts, respecting escaped quotes.
fn split_labels(s: &str) -> Vec<String> {
    let (mut v, mut cur, mut in_q, mut esc) = (Vec::new(), String::new(), false, false);
    for c in s.chars() {
        if esc {
            esc = false;
        } else if c == '\\' {
            esc = true;
        } else if c == '"' {
            in_q = !in_q;
        } else if c == ',' && !in_q {
            v.push(std::mem::take(&mut cur));
            continue;
        }
        cur.push(c);
    }
    if !cur.is_empty() {
        v.push(cur);
    }
    v
}

/// Polls until no request of a libcgi script is in flight.
fn idle(a: &Apache) -> Value {
    wait_for("no request in flight", Duration::from_secs(15), || {
        let j = status_json(a);
        (u(&j["totals"]["in_flight"]) == 0).then_some(j)
    })
}

/// `n` requests at once that each hold a worker for 300 ms: they have to
/// be served by several server processes.  Returns the pids and the bytes
/// of body they got.
fn spread(a: &Apache, path: &str, n: usize) -> (HashSet<String>, u64) {
    let port = a.port;
    let hs: Vec<_> = (0..n)
        .map(|_| {
            let p = format!("{path}?sleep=300");
            std::thread::spawn(move || Request::get(&p).send(port))
        })
        .collect();
    let mut pids = HashSet::new();
    let mut bytes = 0;
    for h in hs {
        let r = h.join().unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
        pids.insert(r.header("X-Pid").unwrap().to_string());
        bytes += r.body.len() as u64;
    }
    (pids, bytes)
}

fn ok(a: &Apache, path: &str) -> u64 {
    let r = a.get(path);
    assert_eq!(r.status, 200, "{path}: {}\n{}", r.text(), a.error_log());
    r.body.len() as u64
}

fn artefacts() -> PathBuf {
    let d = root().join("target").join("metrics-artefacts");
    fs::create_dir_all(&d).unwrap();
    d
}

fn run_with_stdin(cmd: &mut Command, input: &[u8]) -> std::process::Output {
    use std::io::Write;
    let mut c = cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap_or_else(|e| {
        panic!("cannot run {cmd:?}: {e} (scripts/install-deps.sh installs it)");
    });
    c.stdin.take().unwrap().write_all(input).unwrap();
    c.wait_with_output().unwrap()
}

// ---- exact counters ------------------------------------------------------

fn exact_counters(mpm: Mpm) {
    let (servers, threads, hold) = if mpm == Mpm::Prefork { (3, 1, 3) } else { (2, 4, 8) };
    let a = server(mpm, servers, threads, "LibCGITimeout 1\nLibCGIMaxFaults 0 1");
    install(&a, "a.so", &[]);
    install(&a, "b.so", &[]);

    let (pids, mut a_bytes) = spread(&a, "/libcgi-bin/a.so", hold);
    assert!(pids.len() >= 2, "the requests should have been spread over processes: {pids:?}");
    let n_ok = 20;
    for i in 0..n_ok {
        a_bytes += ok(&a, &format!("/libcgi-bin/a.so?i={i}"));
    }
    for _ in 0..3 {
        let r = a.send(Request::post("/libcgi-bin/a.so", &[b'x'; 100]));
        assert_eq!(r.status, 200);
        a_bytes += r.body.len() as u64;
    }
    let (k, t, e) = (2, 1, 1);
    for _ in 0..k {
        assert_eq!(a.get("/libcgi-bin/a.so?segv").status, 500);
    }
    for _ in 0..t {
        assert_eq!(a.get("/libcgi-bin/a.so?loop").status, 500);
    }
    for _ in 0..e {
        assert_eq!(a.get("/libcgi-bin/a.so?exit3").status, 500);
    }
    let m = 15;
    for _ in 0..m {
        ok(&a, "/libcgi-bin/b.so");
    }
    for _ in 0..2 {
        assert_eq!(a.get("/libcgi-bin/missing.so").status, 404);
    }
    // A reload: b.so replaced by atomic rename (a new inode).
    install(&a, "b.so", &["-DRELOADED"]);
    let m2 = 5;
    for _ in 0..m2 {
        ok(&a, "/libcgi-bin/b.so");
    }

    let j = idle(&a);
    let log = a.error_log();
    let ra = row(&j, "a.so");
    let a_requests = hold as u64 + n_ok + 3 + k + t + e;
    assert_eq!(u(&ra["requests"]), a_requests, "{ra}");
    assert_eq!(u(&ra["responses"]["2xx"]), hold as u64 + n_ok + 3, "{ra}");
    assert_eq!(u(&ra["responses"]["5xx"]), k + t + e, "{ra}");
    assert_eq!(u(&ra["faults"]["SIGSEGV"]), k);
    assert_eq!(u(&ra["timeouts"]), t);
    assert_eq!(u(&ra["exits"]), e);
    assert_eq!(u(&ra["bytes_in"]), 300);
    assert_eq!(u(&ra["bytes_out"]), a_bytes, "body bytes of a.so's 200s");
    assert_eq!(u(&ra["in_flight"]), 0);
    // Isolated, the server logs what the worker reports (README "Isolation").
    let (loaded, reloaded) = if isolated() {
        ("loaded in isolated worker", "file changed, loaded again in isolated worker")
    } else {
        ("loaded (", "file changed, loading it again")
    };
    assert_eq!(u(&ra["loads"]) as usize, log.matches(&format!("/a.so: {loaded}")).count(), "{ra}");
    assert_eq!(u(&ra["unloads"]) as usize, log.matches("/a.so: unloaded").count(), "{ra}");
    if isolated() {
        // Every worker that ran it loaded it (pids are workers here); after
        // a fault the next request may find another worker that has it
        // loaded, so a fresh load is not certain (reload.rs
        // two_paths_one_script shows one).
        assert!(u(&ra["loads"]) >= pids.len() as u64, "each worker loads: {ra}");
    } else {
        assert!(u(&ra["loads"]) > pids.len() as u64, "a process that faulted loads again: {ra}");
    }
    assert_eq!(ra["last_fault"]["signal"], 11, "{ra}");
    let fault_pid = u(&ra["last_fault"]["pid"]) as u32;
    if isolated() {
        // README "Isolation": the worker's death shows the signal, not the
        // address, and no server process faulted (pid 0).
        assert_eq!((&ra["last_fault"]["address"], fault_pid), (&Value::Null, 0), "{ra}");
    } else {
        assert_eq!(ra["last_fault"]["address"], "0x0", "the segv script writes to address 0: {ra}");
        assert!(a.children().contains(&fault_pid), "the last fault names a server process: {fault_pid}");
    }
    assert_eq!(u(&ra["latency"]["total"]["count"]), a_requests);

    let rb = row(&j, "b.so");
    assert_eq!(u(&rb["requests"]), m + m2);
    assert_eq!(u(&rb["responses"]["2xx"]), m + m2);
    let reloads = log.matches(&format!("/b.so: {reloaded}")).count();
    assert!(reloads >= 1, "{log}");
    assert_eq!(u(&rb["reloads"]) as usize, reloads);
    assert_eq!(u(&rb["loads"]) as usize, log.matches(&format!("/b.so: {loaded}")).count());
    assert_eq!(u(&rb["faults"]["SIGSEGV"]) + u(&rb["timeouts"]), 0);

    let o = other(&j);
    assert_eq!(u(&o["requests"]), 2);
    assert_eq!(u(&o["responses"]["4xx"]), 2);

    // Summed over processes, the same; and several processes took part.
    let procs = j["processes"].as_array().unwrap();
    let sum: u64 = procs.iter().map(|p| u(&p["requests"])).sum();
    assert_eq!(sum, u(&j["totals"]["requests"]));
    assert_eq!(u(&j["totals"]["requests"]), a_requests + m + m2 + 2);
    assert!(procs.iter().filter(|p| u(&p["requests"]) > 0).count() >= 2, "{procs:?}");

    // Prometheus says the same.
    let p = prom_text(&a);
    let sa = ra["script"].as_str().unwrap();
    let sb = rb["script"].as_str().unwrap();
    assert_eq!(prom(&p, "libcgi_requests_total", &[("script", sa)]), a_requests as f64);
    assert_eq!(prom(&p, "libcgi_responses_total", &[("script", sa), ("class", "5xx")]), (k + t + e) as f64);
    assert_eq!(
        prom(&p, "libcgi_responses_total", &[("script", sa), ("class", "2xx")]),
        (a_requests - k - t - e) as f64
    );
    assert_eq!(prom(&p, "libcgi_faults_total", &[("script", sa), ("kind", "SIGSEGV")]), k as f64);
    assert_eq!(prom(&p, "libcgi_timeouts_total", &[("script", sa)]), t as f64);
    assert_eq!(prom(&p, "libcgi_loads_total", &[("script", sa)]), u(&ra["loads"]) as f64);
    assert_eq!(prom(&p, "libcgi_requests_total", &[("script", sb)]), (m + m2) as f64);
    assert_eq!(prom(&p, "libcgi_reloads_total", &[("script", sb)]), reloads as f64);
    assert_eq!(
        prom(&p, "libcgi_request_duration_seconds_count", &[("script", sa), ("phase", "total")]),
        a_requests as f64
    );
    assert_eq!(prom(&p, "libcgi_requests_total", &[("script", "(other)")]), 2.0);
    assert!(dead_children(&a.error_log()).is_empty());
}

// ---- the three formats, validated by real tools --------------------------

/// A file name with every character the three formats must escape.
const ODD: &str = "odd\"<&>'\\.so";
const ODD_URL: &str = "/libcgi-bin/odd%22%3C%26%3E%27%5C.so";

fn formats(mpm: Mpm) {
    let a = server(mpm, 2, 4, "");
    install(&a, "a.so", &[]);
    install(&a, ODD, &[]);
    for _ in 0..3 {
        ok(&a, "/libcgi-bin/a.so");
        ok(&a, ODD_URL);
    }
    assert_eq!(a.get("/libcgi-bin/a.so?segv").status, 500);
    idle(&a);

    // JSON against the documented schema (python3-jsonschema).
    let r = a.get("/libcgi-status?json");
    let schema = root().join("mod_libcgi/metrics/status.schema.json");
    let o = run_with_stdin(
        Command::new(PYTHON).args([
            "-c",
            "import json,sys,jsonschema; jsonschema.validate(json.load(sys.stdin), json.load(open(sys.argv[1]))); print('valid')",
        ]).arg(&schema),
        &r.body,
    );
    assert!(o.status.success(), "JSON does not validate: {}\n{}", String::from_utf8_lossy(&o.stderr), r.text());
    let j: Value = serde_json::from_slice(&r.body).unwrap();
    let odd = row(&j, ODD);
    assert_eq!(u(&odd["requests"]), 3, "the odd name, unescaped again by a JSON parser: {odd}");
    assert!(!r.text().contains("<&>"), "< and > are escaped in JSON too");

    // Prometheus: promtool and prometheus_client's parser.
    let text = prom_text(&a);
    let o = run_with_stdin(Command::new("promtool").args(["check", "metrics"]), text.as_bytes());
    assert!(
        o.status.success(),
        "promtool check metrics: {}{}\n{text}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    let parse = r#"
import sys
from prometheus_client.parser import text_string_to_metric_families
want = sys.argv[1]
fams = {f.name: f for f in text_string_to_metric_families(sys.stdin.read())}
req = [s for s in fams['libcgi_requests'].samples if s.labels['script'].endswith('/' + want)]
assert len(req) == 1 and req[0].value == 3, req
h = fams['libcgi_request_duration_seconds']
assert h.type == 'histogram', h.type
phases = {s.labels['phase'] for s in h.samples}
assert phases == {'load', 'script', 'callbacks', 'output', 'total'}, phases
f = [s for s in fams['libcgi_faults'].samples if s.labels['kind'] == 'SIGSEGV' and s.labels['script'].endswith('/a.so')]
assert f[0].value == 1, f
print('parsed', len(fams))
"#;
    let o = run_with_stdin(Command::new(PYTHON).args(["-c", parse, ODD]), text.as_bytes());
    assert!(o.status.success(), "prometheus_client: {}\n{text}", String::from_utf8_lossy(&o.stderr));
    // The Accept header of a Prometheus server selects the same format.
    let r = a.send(Request::get("/libcgi-status").header("Accept", "text/plain; version=0.0.4"));
    assert!(r.text().contains("# TYPE libcgi_requests_total counter"), "{}", r.text());

    // HTML: escaped, no script, rendered by headless Chromium.
    let r = a.get("/libcgi-status");
    assert_eq!(r.status, 200);
    let html = r.text();
    assert!(!html.contains("<script") && !html.contains("odd\"<&>"), "{html}");
    assert!(html.contains("odd&quot;&lt;&amp;&gt;&#39;\\.so"), "{html}");
    assert!(html.contains("<svg"), "inline SVG bars");
    let shot = artefacts().join(format!("status-{}.png", mpm.name()));
    let _ = fs::remove_file(&shot);
    let chrome = |extra: &[&str]| {
        let out = Command::new("chromium")
            .args(["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1600,1000"])
            .args(extra)
            .arg(a.url("/libcgi-status"))
            .output()
            .expect("chromium (Debian package chromium, scripts/install-deps.sh)");
        assert!(out.status.success(), "chromium: {}", String::from_utf8_lossy(&out.stderr));
        out
    };
    let dom = String::from_utf8(chrome(&["--dump-dom"]).stdout).unwrap();
    for name in ["/a.so<", "/odd\"&lt;&amp;&gt;'\\.so<", "(other)"] {
        assert!(dom.contains(name), "the rendered page names {name}: {dom}");
    }
    chrome(&[&format!("--screenshot={}", shot.display())]);
    assert!(fs::metadata(&shot).map(|m| m.len() > 10_000).unwrap_or(false), "screenshot {}", shot.display());

    // Nothing but GET.
    assert_eq!(a.send(Request::post("/libcgi-status?json", b"x")).status, 405);
}

// ---- histograms and phases ---------------------------------------------

fn latency(mpm: Mpm) {
    let a = server(mpm, 1, 4, "");
    install(&a, "s.so", &[]);
    install(&a, "g.so", &[]);
    ok(&a, "/libcgi-bin/s.so"); // loaded
    ok(&a, "/libcgi-bin/g.so");
    let n = 10;
    for _ in 0..n {
        ok(&a, "/libcgi-bin/s.so?sleep=20");
        ok(&a, "/libcgi-bin/g.so?getenvs=20000");
    }
    let j = idle(&a);
    let bounds: Vec<f64> = j["bucket_bounds_seconds"].as_array().unwrap().iter().map(|b| b.as_f64().unwrap()).collect();
    // 20 ms (and a little more) falls in the bucket (10 ms, 25 ms].
    let b25 = bounds.iter().position(|&b| (b - 0.025).abs() < 1e-12).expect("a 25 ms bound");
    assert!((bounds[b25 - 1] - 0.01).abs() < 1e-12);
    let s = row(&j, "s.so");
    for phase in ["script", "total"] {
        let buckets: Vec<u64> = s["latency"][phase]["buckets"].as_array().unwrap().iter().map(u).collect();
        // Never below: a sleep lasts at least what it asked for.  Above only
        // when the machine was too busy to wake the thread within 5 ms (the
        // test machine is shared): most, and the median, must be in it.
        // The first, unsleeping request is usually below too, but not
        // always: its total includes the load, which on a loaded machine
        // (the docker rig runs the whole suite at once) took over 10 ms.
        assert!(buckets[..b25 - 1].iter().sum::<u64>() <= 1, "{phase}: a 20 ms sleep below 10 ms: {s}");
        assert!(buckets[b25] > n / 2, "{phase}: 20 ms sleeps in (10 ms, 25 ms]: {s}");
    }
    let p50 = s["latency"]["script"]["p50"].as_f64().unwrap();
    assert!((0.01..=0.025).contains(&p50), "p50 {p50}");
    // The phases add up to the total: by construction exactly (each phase
    // ends where the next begins); the slack allowed is the rounding of the
    // printed sums (6 significant digits).
    for sc in [s, row(&j, "g.so")] {
        let l = &sc["latency"];
        let parts: f64 =
            ["load", "script", "callbacks", "output"].iter().map(|p| l[*p]["sum_seconds"].as_f64().unwrap()).sum();
        let total = l["total"]["sum_seconds"].as_f64().unwrap();
        assert!((parts - total).abs() <= total * 1e-5 + 1e-6, "phases {parts} vs total {total}: {sc}");
        for p in ["load", "script", "callbacks", "output", "total"] {
            assert_eq!(u(&l[p]["count"]), n + 1, "{p}: one observation per request");
        }
    }
    // The sleeper's time is its own; the getenv loop's is in the callbacks.
    let share = |sc: &Value, p: &str| {
        sc["latency"][p]["sum_seconds"].as_f64().unwrap() / sc["latency"]["total"]["sum_seconds"].as_f64().unwrap()
    };
    assert!(share(s, "script") > 0.5, "{s}");
    let g = row(&j, "g.so");
    // Medians, not sums: on a shared machine one preempted request can put
    // tens of ms anywhere.
    let p50 = |sc: &Value, p: &str| sc["latency"][p]["p50"].as_f64().unwrap();
    if isolated() {
        // README "Isolation": the script phase is the whole call into the
        // worker (its getenv is libc's there), callbacks are 0.
        assert_eq!(g["latency"]["callbacks"]["sum_seconds"].as_f64(), Some(0.0), "{g}");
        assert!(share(g, "script") > 0.5, "the getenv loop is the worker's time: {g}");
    } else {
        assert!(p50(g, "callbacks") > 2.0 * p50(g, "script"), "getenv time counted as callbacks: {g}");
    }
    // The first request of each paid the load.
    assert!(share(s, "load") < 0.1);
    assert!(s["latency"]["load"]["buckets"].as_array().unwrap().iter().map(u).sum::<u64>() == n + 1);
}

// ---- lifecycle -----------------------------------------------------------

/// terminatefunc's time in callbacks belongs to no request.  The case where
/// nothing else drops it: a request still running the old version when
/// another thread loads the new one lets go of the old one last, so its
/// terminatefunc runs on that request's thread after its processfunc; the
/// next request on that thread must not get that time as "callbacks".
fn unload_time_is_no_requests(mpm: Mpm) {
    let a = server(mpm, 1, 2, "");
    a.install("tb.so", "metered", &["-DTERM_BUSY_MS=200"]);
    ok(&a, "/libcgi-bin/tb.so");
    std::thread::scope(|s| {
        let old = s.spawn(|| ok(&a, "/libcgi-bin/tb.so?sleep=300"));
        std::thread::sleep(Duration::from_millis(100)); // let it start: a lower bound only
        a.install("tb.so", "metered", &["-DTERM_BUSY_MS=200", "-DVERSION_2"]);
        ok(&a, "/libcgi-bin/tb.so"); // the new version, loaded on the other thread
        old.join().unwrap();
    });
    // The callbacks phase is capped at processfunc's own time, so these
    // sleep 50 ms each: leaked time would show as 50 ms of callbacks.
    let before = idle(&a);
    let cb0 = row(&before, "tb.so")["latency"]["callbacks"]["sum_seconds"].as_f64().unwrap();
    for _ in 0..4 {
        ok(&a, "/libcgi-bin/tb.so?sleep=50");
    }
    let j = idle(&a);
    let l = &row(&j, "tb.so")["latency"];
    let cb = l["callbacks"]["sum_seconds"].as_f64().unwrap() - cb0;
    assert!(cb < 0.02, "terminatefunc's time counted as a later request's callbacks ({cb} s): {l}");
}

fn restarts(mpm: Mpm) {
    let a = server(mpm, 2, 4, "");
    install(&a, "a.so", &[]);
    for _ in 0..5 {
        ok(&a, "/libcgi-bin/a.so");
    }
    let before: HashSet<u32> = a.children().into_iter().collect();
    let since = status_json(&a)["server"]["since"].as_f64().unwrap();
    a.graceful();
    // Every MPM says this once per generation.
    a.wait_log("the graceful restart", |l| l.matches("resuming normal operations").count() >= 2);
    wait_for("a new generation of server processes", Duration::from_secs(20), || {
        let now: HashSet<u32> = a.children().into_iter().collect();
        (!now.is_empty() && now.is_disjoint(&before)).then_some(())
    });
    let j = status_json(&a);
    assert_eq!(u(&row(&j, "a.so")["requests"]), 5, "a graceful restart keeps the counts: {j}");
    assert_eq!(j["server"]["since"].as_f64().unwrap(), since);
    ok(&a, "/libcgi-bin/a.so");
    assert_eq!(u(&row(&status_json(&a), "a.so")["requests"]), 6);

    // A full restart (SIGHUP) starts from zero.
    // SAFETY: signalling our own server.
    unsafe { libc::kill(a.pid() as i32, libc::SIGHUP) };
    a.wait_log("the full restart", |l| l.matches("resuming normal operations").count() >= 3);
    let j = wait_for("the server after the full restart", Duration::from_secs(20), || {
        let r = Request::get("/libcgi-status?json").send(a.port);
        if r.status != 200 {
            return None;
        }
        let j: Value = serde_json::from_slice(&r.body).ok()?;
        (j["server"]["since"].as_f64()? > since).then_some(j)
    });
    assert_eq!(u(&j["totals"]["requests"]), 0, "{j}");
    assert!(j["scripts"].as_array().unwrap().iter().all(|s| s["other"] == true), "names cleared: {j}");
    ok(&a, "/libcgi-bin/a.so");
    assert_eq!(u(&row(&status_json(&a), "a.so")["requests"]), 1);
}

/// Many clients at once on every worker thread: no count is lost (each
/// thread writes only its own row, without a lock).
fn concurrent_exact(mpm: Mpm) {
    let a = server(mpm, 2, 4, "");
    install(&a, "a.so", &[]);
    install(&a, "b.so", &[]);
    let (clients, each) = (8, 150);
    let port = a.port;
    let hs: Vec<_> = (0..clients)
        .map(|c| {
            std::thread::spawn(move || {
                for i in 0..each {
                    let p = if (c + i) % 3 == 0 { "/libcgi-bin/b.so" } else { "/libcgi-bin/a.so" };
                    assert_eq!(Request::get(p).send(port).status, 200);
                }
            })
        })
        .collect();
    for h in hs {
        h.join().unwrap();
    }
    let total = (clients * each) as u64;
    let b = (0..clients).map(|c| (0..each).filter(|i| (c + i) % 3 == 0).count()).sum::<usize>() as u64;
    let j = idle(&a);
    assert_eq!(u(&row(&j, "a.so")["requests"]), total - b);
    assert_eq!(u(&row(&j, "b.so")["requests"]), b);
    assert_eq!(u(&row(&j, "a.so")["responses"]["2xx"]) + u(&row(&j, "b.so")["responses"]["2xx"]), total);
    assert_eq!(u(&j["totals"]["latency"]["total"]["count"]), total);
    let procs = j["processes"].as_array().unwrap();
    assert_eq!(procs.iter().map(|p| u(&p["requests"])).sum::<u64>(), total);
}

/// A LibCGIStatusSlots changed at a graceful restart takes a new segment of
/// the new size; the server goes on.
fn slots_changed_at_graceful(mpm: Mpm) {
    let a = server(mpm, 1, 4, "LibCGIStatusSlots 4");
    install(&a, "a.so", &[]);
    ok(&a, "/libcgi-bin/a.so");
    assert_eq!(u(&status_json(&a)["server"]["slots"]), 4);
    let conf = a.dir.join("httpd.conf");
    let text = fs::read_to_string(&conf).unwrap().replace("LibCGIStatusSlots 4", "LibCGIStatusSlots 8");
    fs::write(&conf, text).unwrap();
    a.graceful();
    a.wait_log("the notice", |l| l.contains("LibCGIStatusSlots or the MPM's limits changed"));
    let j = wait_for("the new segment", Duration::from_secs(20), || {
        let r = Request::get("/libcgi-status?json").send(a.port);
        let j: Value = serde_json::from_slice(&r.body).ok()?;
        (u(&j["server"]["slots"]) == 8).then_some(j)
    });
    assert_eq!(u(&j["totals"]["requests"]), 0, "{j}");
    ok(&a, "/libcgi-bin/a.so");
    assert_eq!(u(&row(&status_json(&a), "a.so")["requests"]), 1);
    assert!(dead_children(&a.error_log()).is_empty());
}

fn full_table(mpm: Mpm) {
    let a = server(mpm, 1, 4, "LibCGIStatusSlots 2");
    for i in 0..4 {
        install(&a, &format!("s{i}.so"), &[]);
    }
    for i in 0..4 {
        for _ in 0..=i {
            ok(&a, &format!("/libcgi-bin/s{i}.so"));
        }
    }
    let j = idle(&a);
    assert_eq!(u(&j["server"]["slots"]), 2);
    assert_eq!(u(&j["server"]["slots_used"]), 2);
    assert_eq!(u(&j["server"]["slots_refused"]), 2, "{j}");
    // s0 (1 request) and s1 (2) got the rows; s2 and s3 (3 + 4) are other.
    assert_eq!(u(&row(&j, "s0.so")["requests"]), 1);
    assert_eq!(u(&row(&j, "s1.so")["requests"]), 2);
    assert_eq!(u(&other(&j)["requests"]), 7, "{j}");
    assert_eq!(u(&j["totals"]["requests"]), 10);
}

/// Failed loads, initfunc failures, quarantine and its 503s, recycles.
fn load_and_quarantine_events(mpm: Mpm) {
    let a = server(mpm, 1, 4, "LibCGIMaxFaults 2 60\nLibCGIFaultAction continue");
    install(&a, "q.so", &[]);
    a.install("noproc.so", "t", &["-DNO_PROCESSFUNC"]);
    let flag = a.dir.join("init-fails");
    fs::write(&flag, "").unwrap();
    a.install("init.so", "t", &[&format!("-DINIT_FAIL_FILE=\"{}\"", flag.display())]);
    ok(&a, "/libcgi-bin/q.so");
    for _ in 0..2 {
        assert_eq!(a.get("/libcgi-bin/q.so?segv").status, 500);
    }
    for _ in 0..3 {
        assert_eq!(a.get("/libcgi-bin/q.so").status, 503, "quarantined");
    }
    assert_eq!(a.get("/libcgi-bin/noproc.so").status, 500);
    assert_eq!(a.get("/libcgi-bin/init.so").status, 500);
    assert_eq!(a.get("/libcgi-bin/init.so").status, 500);
    fs::remove_file(&flag).unwrap();
    assert_eq!(a.get("/libcgi-bin/init.so").status, 200);

    let j = idle(&a);
    let q = row(&j, "q.so");
    assert_eq!(u(&q["requests"]), 6, "{q}");
    assert_eq!(u(&q["faults"]["SIGSEGV"]), 2);
    assert_eq!(u(&q["quarantines"]), 1, "{q}");
    assert_eq!(u(&q["quarantined_503"]), 3, "{q}");
    assert_eq!(u(&q["responses"]["5xx"]), 5);
    assert_eq!(u(&q["load_failures"]), 0, "a quarantine is not a failed load: {q}");
    let np = row(&j, "noproc.so");
    assert_eq!((u(&np["load_failures"]), u(&np["loads"]), u(&np["requests"])), (1, 0, 1), "{np}");
    let init = row(&j, "init.so");
    assert_eq!(u(&init["init_failures"]), 2, "{init}");
    assert_eq!(u(&init["load_failures"]), 2, "{init}");
    assert_eq!(u(&init["loads"]), 1, "{init}");
    assert_eq!(u(&init["responses"]["2xx"]), 1);
    let p = prom_text(&a);
    let qn = q["script"].as_str().unwrap();
    assert_eq!(prom(&p, "libcgi_quarantined_responses_total", &[("script", qn)]), 3.0);
    assert_eq!(prom(&p, "libcgi_quarantines_total", &[("script", qn)]), 1.0);
}

// ---- mod_status, probes, configuration --------------------------------

fn server_status(mpm: Mpm) {
    let extra = format!(
        "LoadModule status_module {MODULES}/mod_status.so\n<Location /server-status>\n  SetHandler server-status\n  Require local\n</Location>"
    );
    let a = server(mpm, 1, 4, &extra);
    install(&a, "a.so", &[]);
    ok(&a, "/libcgi-bin/a.so");
    let r = a.get("/server-status");
    assert_eq!(r.status, 200);
    assert!(r.text().contains("<h2>mod_libcgi</h2>") && r.text().contains("/a.so"), "{}", r.text());
    let r = a.get("/server-status?auto");
    assert!(r.text().contains("LibCGIRequests: 1"), "{}", r.text());
}

/// Requests in flight while they run; a recycle after a fault; rows of a
/// script that is gone stay.
fn in_flight_and_recycle(mpm: Mpm) {
    // Prefork: a second process to answer the status page meanwhile.
    // Pinned in process: a recycle is what a fault costs the server process
    // that ran the script; an isolated fault costs only its worker.
    let a = server(mpm, 2, 4, &format!("LibCGIFaultAction recycle\nLibCGIMaxFaults 0 1\n{PIN_INPROCESS}"));
    let script = install(&a, "a.so", &[]);
    let port = a.port;
    let slow = std::thread::spawn(move || Request::get("/libcgi-bin/a.so?sleep=1500").send(port));
    let j = wait_for("a request in flight", Duration::from_secs(10), || {
        let j = status_json(&a);
        let busy = j["scripts"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["script"].as_str().unwrap().ends_with("/a.so") && u(&s["in_flight"]) == 1);
        busy.then_some(j)
    });
    assert_eq!(u(&j["totals"]["in_flight"]), 1);
    assert_eq!(j["processes"].as_array().unwrap().iter().map(|p| u(&p["in_flight"])).sum::<u64>(), 1);
    assert_eq!(slow.join().unwrap().status, 200);
    assert_eq!(u(&idle(&a)["totals"]["in_flight"]), 0);

    let before: HashSet<u32> = a.server_children().into_iter().collect();
    assert_eq!(a.get("/libcgi-bin/a.so?segv").status, 500);
    a.wait_log("the recycle", |l| l.contains("recycling this server process"));
    // Under worker and event a recycled process may cut a connection it
    // accepted just before exiting (README, LibCGIFaultAction): wait until
    // it is gone before asking again.
    wait_for("the faulted process gone", Duration::from_secs(20), || {
        let now: HashSet<u32> = a.server_children().into_iter().collect();
        (!now.is_empty() && !now.is_superset(&before)).then_some(())
    });
    let j = idle(&a);
    assert_eq!(u(&row(&j, "a.so")["recycles"]), 1, "{j}");

    // The file goes: its row stays, the request counts as other (404).
    fs::remove_file(&script).unwrap();
    assert_eq!(a.get("/libcgi-bin/a.so").status, 404);
    let j = idle(&a);
    assert_eq!(u(&row(&j, "a.so")["requests"]), 2);
    assert_eq!(u(&other(&j)["responses"]["4xx"]), 1);
}

/// HTTP/2: mod_http2 runs the streams of one connection on its own threads,
/// all with the connection's scoreboard handle; the counts stay exact.
fn http2_streams(mpm: Mpm) {
    let a = server(
        mpm,
        1,
        8,
        &format!(
            "LoadModule http2_module {MODULES}/mod_http2.so\nProtocols h2c http/1.1\nH2MinWorkers 8\nH2MaxWorkers 8"
        ),
    );
    install(&a, "a.so", &[]);
    let n = 3000;
    // h2load (nghttp2-client): one connection, 100 streams at a time.
    let out = Command::new("h2load")
        .args(["-n", &n.to_string(), "-c", "1", "-m", "100"])
        .arg(a.url("/libcgi-bin/a.so"))
        .output()
        .expect("h2load (Debian package nghttp2-client, scripts/install-deps.sh)");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(&format!("status codes: {n} 2xx")), "every request answered over HTTP/2: {text}");
    let j = idle(&a);
    assert_eq!(u(&row(&j, "a.so")["requests"]), n as u64);
    assert_eq!(u(&row(&j, "a.so")["responses"]["2xx"]), n as u64);
    assert_eq!(u(&row(&j, "a.so")["latency"]["total"]["count"]), n as u64);
}

/// bpftrace attaches to a running server process and sees the probes fire.
#[test]
fn bpftrace_sees_the_probes() {
    let a = server(Mpm::Event, 1, 4, "");
    install(&a, "a.so", &[]);
    ok(&a, "/libcgi-bin/a.so");
    let pid = *a.server_children().first().expect("a server process");
    // The module as the server process sees it (bpftrace resolves the path
    // in that process's mount namespace).
    let module = if docker_image().is_some() { Path::new(MODULES).join("mod_libcgi.so") } else { module_path() };
    let m = module.display();
    let prog = format!(
        "BEGIN {{ printf(\"ready\\n\"); }}\n\
         usdt:{m}:libcgi:request__end {{ printf(\"end %s %d %d\\n\", str(arg0), arg1, arg2 > 0); }}\n\
         usdt:{m}:libcgi:fault {{ printf(\"fault %s %d\\n\", str(arg0), arg1); exit(); }}"
    );
    let mut child = Command::new("timeout")
        .args(["60", "bpftrace", "-p", &pid.to_string(), "-e", &prog])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("bpftrace (Debian package bpftrace, scripts/install-deps.sh)");
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    use std::io::BufRead;
    while line.trim() != "ready" {
        line.clear();
        let n = out.read_line(&mut line).unwrap();
        assert!(n > 0, "bpftrace ended before attaching: {:?}", child.wait_with_output().map(|o| o.stderr));
    }
    ok(&a, "/libcgi-bin/a.so");
    assert_eq!(a.get("/libcgi-bin/a.so?segv").status, 500);
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut out, &mut rest).unwrap();
    let _ = child.wait();
    let path = a.bin.join("a.so");
    assert!(rest.contains(&format!("end {} 200 1", path.display())), "request__end with status and time: {rest}");
    assert!(rest.contains(&format!("fault {} 11", path.display())), "fault with the signal: {rest}");
}

#[test]
fn probes_are_listed() {
    let out = Command::new("readelf").arg("-n").arg(module_path()).output().expect("readelf (binutils)");
    let notes = String::from_utf8_lossy(&out.stdout);
    for p in [
        "request__start",
        "request__end",
        "phase__load",
        "phase__script",
        "phase__callbacks",
        "phase__output",
        "load",
        "unload",
        "fault",
        "timeout",
    ] {
        let found = notes
            .lines()
            .zip(notes.lines().skip(1))
            .any(|(a, b)| a.trim() == "Provider: libcgi" && b.trim() == format!("Name: {p}"));
        assert!(found, "probe libcgi:{p} not in readelf -n:\n{notes}");
    }
}

#[test]
fn slots_directive_is_checked() {
    for (line, ok) in [("LibCGIStatusSlots 0", true), ("LibCGIStatusSlots -1", false), ("LibCGIStatusSlots x", false)] {
        let d = scratch("conf");
        let conf = d.join("t.conf");
        fs::write(
            &conf,
            format!(
                "ServerRoot {0}\nListen 127.0.0.1:{1}\nServerName x\nPidFile {0}/p\nErrorLog {0}/e\n\
                 LoadModule mpm_event_module {MODULES}/mod_mpm_event.so\nLoadModule authz_core_module {MODULES}/mod_authz_core.so\n\
                 LoadModule libcgi_module {2}\n{line}\n",
                d.display(),
                free_port(),
                module_path().display()
            ),
        )
        .unwrap();
        let o = Command::new(APACHE_BIN).arg("-t").arg("-f").arg(&conf).output().unwrap();
        assert_eq!(o.status.success(), ok, "{line}: {}", String::from_utf8_lossy(&o.stderr));
    }
    let _ = Path::new("");
}

per_mpm!(exact_counters, formats, latency, restarts, concurrent_exact);
prefork_and_event_extra!(
    full_table,
    server_status,
    load_and_quarantine_events,
    http2_streams,
    in_flight_and_recycle,
    slots_changed_at_graceful
);

// Threaded MPMs only: the case needs two requests in one process at once.
mod threaded {
    #[test]
    fn unload_time_is_no_requests_worker() {
        super::unload_time_is_no_requests(super::Mpm::Worker)
    }
    #[test]
    fn unload_time_is_no_requests_event() {
        super::unload_time_is_no_requests(super::Mpm::Event)
    }
}
