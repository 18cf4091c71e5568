//! Directive values: every bad one stops apache2 with Apache's syntax-error
//! line carrying the module's message (which names the directive and the
//! value), every good one is accepted, and `LibCGIMaxFaults <n>` alone works
//! (issue 10: `LibCGIMaxFaults 0` was a syntax error although the README
//! says 0 disables quarantine).
mod common;

use common::*;
use std::fs;
use std::process::Command;

/// `apache2 -t` on a minimal config with `line` in the server config:
/// (exit status ok, stderr+stdout).
fn configtest(line: &str) -> (bool, String) {
    let dir = scratch("conf");
    let d = dir.display();
    let conf = format!(
        "ServerRoot {d}\nListen 127.0.0.1:{}\nServerName 127.0.0.1\nPidFile {d}/httpd.pid\nErrorLog {d}/error.log\n\
         LoadModule mpm_prefork_module {MODULES}/mod_mpm_prefork.so\nLoadModule authz_core_module {MODULES}/mod_authz_core.so\n\
         LoadModule libcgi_module {}\n{line}\n",
        free_port(),
        module_path().display()
    );
    let path = dir.join("httpd.conf");
    fs::write(&path, conf).unwrap();
    let o = Command::new(APACHE_BIN).arg("-t").arg("-f").arg(&path).output().expect("running apache2 -t");
    let _ = fs::remove_dir_all(&dir);
    (o.status.success(), format!("{}{}", String::from_utf8_lossy(&o.stderr), String::from_utf8_lossy(&o.stdout)))
}

#[test]
fn bad_values_are_syntax_errors_with_the_reason() {
    let cases: &[(&str, &str)] = &[
        ("LibCGITimeout -1", "LibCGITimeout '-1': not a number of seconds from 0 (no limit) to 86400"),
        ("LibCGITimeout 86401", "LibCGITimeout '86401': not a number"),
        ("LibCGITimeout 1e400", "LibCGITimeout '1e400': not a number"),
        ("LibCGITimeout nan", "LibCGITimeout 'nan': not a number"),
        ("LibCGITimeout abc", "LibCGITimeout 'abc': not a number"),
        ("LibCGITimeout \"\"", "LibCGITimeout takes one argument"),
        (
            "LibCGIMaxFaults -1",
            "LibCGIMaxFaults '-1': the count must be a whole number from 0 (never quarantine) to 1000000",
        ),
        ("LibCGIMaxFaults 1000001", "LibCGIMaxFaults '1000001': the count"),
        ("LibCGIMaxFaults 99999999999", "LibCGIMaxFaults '99999999999': the count"),
        ("LibCGIMaxFaults many", "LibCGIMaxFaults 'many': the count"),
        ("LibCGIMaxFaults 2.5", "LibCGIMaxFaults '2.5': the count"),
        ("LibCGIMaxFaults 5 0", "LibCGIMaxFaults '0': the window must be a whole number of seconds from 1 to 604800"),
        ("LibCGIMaxFaults 5 -3", "LibCGIMaxFaults '-3': the window"),
        ("LibCGIMaxFaults 5 604801", "LibCGIMaxFaults '604801': the window"),
        ("LibCGIMaxFaults 5 99999999999", "LibCGIMaxFaults '99999999999': the window"),
        ("LibCGIMaxFaults 5 soon", "LibCGIMaxFaults 'soon': the window"),
        ("LibCGIMaxFaults 5 60 9", "LibCGIMaxFaults takes 1-2 arguments"),
        ("LibCGIFaultAction stop", "LibCGIFaultAction 'stop': takes 'continue' or 'recycle'"),
        ("LibCGIOwner nosuchuser-libcgi", "LibCGIOwner: no such user 'nosuchuser-libcgi'"),
        ("LibCGIOwner #abc", "LibCGIOwner '#abc': not a uid"),
        ("LibCGIOwner #-1", "LibCGIOwner '#-1': not a uid"),
        ("LibCGIOwner #4294967295", "LibCGIOwner '#4294967295': not a uid"),
        ("LibCGIOwner #99999999999", "LibCGIOwner '#99999999999': not a uid"),
        ("LibCGIStatusSlots -1", "LibCGIStatusSlots takes a number of script rows from 0 (metrics off) to 65536"),
        ("LibCGIStatusSlots 65537", "LibCGIStatusSlots takes a number of script rows"),
        ("LibCGIStatusSlots 99999999999999999999", "LibCGIStatusSlots takes a number of script rows"),
        ("LibCGIStatusSlots lots", "LibCGIStatusSlots takes a number of script rows"),
        (
            "LibCGIIsolationBudget 0",
            "LibCGIIsolationBudget '0': a percent of the server's CPU above 0 (at least 0.0001) up to 100",
        ),
        ("LibCGIIsolationBudget -5", "LibCGIIsolationBudget '-5': a percent"),
        ("LibCGIIsolationBudget 100.5", "LibCGIIsolationBudget '100.5': a percent"),
        ("LibCGIIsolationBudget 0.00001", "LibCGIIsolationBudget '0.00001': a percent"),
        ("LibCGIIsolationBudget nan", "LibCGIIsolationBudget 'nan': a percent"),
        ("LibCGIIsolationBudget inf", "LibCGIIsolationBudget 'inf': a percent"),
        ("LibCGIIsolationBudget ten", "LibCGIIsolationBudget 'ten': a percent"),
        ("LibCGIIsolationBudget 10%", "LibCGIIsolationBudget '10%': a percent"),
        ("LibCGIIsolationBudget 5 6", "LibCGIIsolationBudget takes one argument"),
        ("LibCGIIsolation sometimes", "LibCGIIsolation 'sometimes': takes 'inprocess', 'process' or 'adaptive'"),
    ];
    let mut wrong = Vec::new();
    for (line, want) in cases {
        let (ok, out) = configtest(line);
        if ok || !out.contains("Syntax error on line 9") || !out.contains(want) {
            wrong.push(format!("`{line}`: exit ok={ok}, wanted a syntax error with \"{want}\", got:\n{out}"));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

/// The budget is one for the whole server: refused in a section.
#[test]
fn isolation_budget_is_server_wide() {
    let (ok, out) = configtest("<Directory />\nLibCGIIsolationBudget 5\n</Directory>");
    assert!(!ok && out.contains("LibCGIIsolationBudget not allowed in <Directory> context"), "{out}");
}

#[test]
fn good_values_are_accepted() {
    for line in [
        "LibCGITimeout 0",
        "LibCGITimeout 0.25",
        "LibCGITimeout 86400",
        "LibCGIMaxFaults 0",
        "LibCGIMaxFaults 3",
        "LibCGIMaxFaults 3 10",
        "LibCGIMaxFaults 1000000 604800",
        "LibCGIFaultAction Recycle",
        "LibCGIOwner #1000",
        "LibCGIOwner root",
        "LibCGIStatusSlots 0",
        "LibCGIStatusSlots 65536",
        "LibCGIIsolationBudget 10",
        "LibCGIIsolationBudget 0.5",
        "LibCGIIsolationBudget 100",
        "LibCGIIsolation adaptive",
    ] {
        let (ok, out) = configtest(line);
        assert!(ok && out.contains("Syntax OK"), "`{line}` refused:\n{out}");
    }
}

fn segv(a: &Apache) -> u16 {
    a.get("/libcgi-bin/fault.so?mode=segv").status
}

/// `LibCGIMaxFaults 0` alone: faults never lead to quarantine.
fn max_faults_zero_alone_disables_quarantine(mpm: Mpm) {
    let a = Apache::start(Config::new(mpm).extra("LibCGIMaxFaults 0"));
    a.install("fault.so", "fault", &[]);
    let got: Vec<u16> = (0..8).map(|_| segv(&a)).collect();
    assert_eq!(got, vec![500; 8], "every fault a 500, none a 503");
    assert!(!a.error_log().contains("quarantine"), "quarantine logged:\n{}", a.error_log());
}

/// `LibCGIMaxFaults 2` alone: two faults in the default window of 60 s.
fn max_faults_count_alone_keeps_the_default_window(mpm: Mpm) {
    let a = Apache::start(Config::new(mpm).extra("LibCGIMaxFaults 2"));
    a.install("fault.so", "fault", &[]);
    assert_eq!((segv(&a), segv(&a)), (500, 500));
    let r = a.get("/libcgi-bin/fault.so?mode=segv");
    assert_eq!(r.status, 503, "quarantined after 2 faults");
    let retry: u64 = r.header("Retry-After").and_then(|v| v.parse().ok()).expect("Retry-After");
    assert!((50..=60).contains(&retry), "Retry-After {retry}: the default window is 60 s");
}

prefork_and_event!(max_faults_zero_alone_disables_quarantine, max_faults_count_alone_keeps_the_default_window);
