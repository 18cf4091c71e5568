//! The test harness itself (tests/common): a server that cannot start says
//! why, in Apache's own words.

mod common;
use common::*;

/// A configuration apache2 rejects: the panic carries Apache's message (from
/// its stderr and `apache2 -t`), not an error of the retry loop (before, the
/// second try failed writing into the directory the first had removed).
#[test]
fn failed_start_reports_apaches_error() {
    let r = std::panic::catch_unwind(|| Apache::start(Config::new(Mpm::Prefork).extra("NoSuchDirective 1")));
    let e = r.err().expect("a server with an invalid directive must not start");
    let msg = e.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(msg.contains("Invalid command 'NoSuchDirective'"), "{msg}");
    assert!(msg.contains("--- apache2 -t ---"), "{msg}");
    assert!(!msg.contains("No such file or directory"), "{msg}");
}
