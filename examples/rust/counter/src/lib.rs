//! State set up once in `init` survives across the requests one server
//! process serves (each process has its own copy): examples/counter.c in
//! Rust.  `thread_safe: true`, so the state is shared safely (an atomic and
//! a value set once).
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

static HITS: AtomicU64 = AtomicU64::new(0);
static LOADED_AT: OnceLock<u64> = OnceLock::new();

fn init() {
    HITS.store(0, Ordering::Relaxed);
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let _ = LOADED_AT.set(now);
}

fn process(_req: &libcgi::Request, resp: &mut libcgi::Response) -> libcgi::Result<()> {
    let hits = HITS.fetch_add(1, Ordering::Relaxed) + 1;
    resp.header("Content-Type", "text/plain")?;
    writeln!(
        resp,
        "process {} has served this script {hits} time(s) since {}",
        std::process::id(),
        LOADED_AT.get().copied().unwrap_or(0)
    )?;
    Ok(())
}

fn terminate() {
    // Release resources here (close files, flush caches...).
}

libcgi::script! {
    init: init,
    process: process,
    terminate: terminate,
    thread_safe: true,
}

#[cfg(test)]
mod tests {
    #[test]
    fn counts() {
        super::init();
        let t = libcgi::testing::TestRequest::get("/counter.so");
        let a = t.run(super::process).text();
        let b = t.run(super::process).text();
        assert!(a.contains(" 1 time(s)") && b.contains(" 2 time(s)"), "{a}{b}");
    }
}
