/// How many calls of processfunc run at once in this process: each call
/// waits (up to 1.5 s) for a second one to be running, then says the
/// largest number it saw.  Serialised calls never see 2.
fn overlap(resp: &mut libcgi::Response) -> libcgi::Result<()> {
    use std::io::Write;
    use std::sync::atomic::{AtomicUsize, Ordering};
    static ACTIVE: AtomicUsize = AtomicUsize::new(0);
    let now = ACTIVE.fetch_add(1, Ordering::SeqCst) + 1;
    let mut max = now;
    let deadline = std::time::Instant::now() + std::time::Duration::from_millis(1500);
    while max < 2 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(5));
        max = max.max(ACTIVE.load(Ordering::SeqCst));
    }
    ACTIVE.fetch_sub(1, Ordering::SeqCst);
    resp.header("Content-Type", "text/plain")?;
    writeln!(resp, "max={max}")?;
    Ok(())
}
