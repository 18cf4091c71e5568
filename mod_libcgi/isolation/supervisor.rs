//! The manager: forked by the Apache parent in post_config (before any
//! server process, and before mod_ssl and friends load their keys), it
//! starts one worker per slot, respawns the ones that die, kills the ones a
//! server thread gives up on, and takes them all down when it is told to go
//! (stop, graceful restart) or when the Apache parent dies (PDEATHSIG).

use super::relay::Relay;
use super::transport::{self, Ctl, Segment, Slot, DEAD, EMPTY, IDLE, TO_SERVER, TO_WORKER};
use super::worker;
use std::sync::atomic::{AtomicBool, Ordering};

static TERM: AtomicBool = AtomicBool::new(false);
static mut DOORBELL: *const std::sync::atomic::AtomicU32 = std::ptr::null();

extern "C" fn on_term(_: libc::c_int) {
    TERM.store(true, Ordering::SeqCst);
    on_chld(0);
}

extern "C" fn on_chld(_: libc::c_int) {
    // SAFETY: DOORBELL is set before the handlers are installed; futex wake
    // is a plain syscall (async-signal-safe).
    unsafe {
        if let Some(d) = DOORBELL.as_ref() {
            transport::ring(d);
        }
    }
}

/// Resets what the Apache parent set up for itself: its signal handlers
/// (restart, shutdown) and mask, and every descriptor but stdio (listening
/// sockets, logs, the pod...).
///
/// # Safety
/// Only in a freshly forked child.
pub unsafe fn scrub_process(keep_stderr: bool) {
    for sig in 1..libc::SIGRTMAX() {
        if sig != libc::SIGKILL && sig != libc::SIGSTOP {
            libc::signal(sig, libc::SIG_DFL);
        }
    }
    let mut set: libc::sigset_t = std::mem::zeroed();
    libc::sigemptyset(&mut set);
    libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
    libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32);
    let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR);
    if null >= 0 {
        libc::dup2(null, 0);
        libc::dup2(null, 1);
        if !keep_stderr {
            libc::dup2(null, 2);
        }
        if null > 2 {
            libc::close(null);
        }
    }
}

/// Dies with the process that forked this one, even if it died already.
///
/// # Safety
/// Only in a freshly forked child.
pub(super) unsafe fn die_with_parent(parent: libc::pid_t) {
    libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
    if libc::getppid() != parent {
        libc::_exit(0);
    }
}

/// Forks the manager; returns its pid (or -errno).
///
/// # Safety
/// In the Apache parent, single-threaded, with `seg` mapped shared.
pub unsafe fn start(seg: &'static Segment) -> libc::pid_t {
    let parent = libc::getpid();
    let pid = libc::fork();
    if pid != 0 {
        return if pid < 0 { -*libc::__errno_location() } else { pid };
    }
    die_with_parent(parent);
    scrub_process(true);
    libc::setsid();
    // A process a script forks outlives its worker (PDEATHSIG is not
    // inherited) and keeps the worker's slot mapped, where the next worker
    // of the slot, maybe another script's, gets its requests: orphaned, it
    // comes to the manager, which kills it (`kill_orphans`).
    libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1);
    DOORBELL = &seg.header().doorbell;
    libc::signal(libc::SIGTERM, on_term as *const () as libc::sighandler_t);
    libc::signal(libc::SIGCHLD, on_chld as *const () as libc::sighandler_t);
    libc::prctl(libc::PR_SET_NAME, c"libcgi-manager".as_ptr());
    run(seg);
    libc::_exit(0);
}

/// The manager died, and its workers with it (PDEATHSIG), in the Apache
/// parent before it forks the next one: a request in flight sees DEAD (its
/// server thread answers 500 and frees the slot), an idle slot turns EMPTY,
/// and no slot names a worker that is gone (its number may be reused).
///
/// A slot's worker is gone (reaped, or its manager died): an idle slot is
/// simply refilled, one in a request is marked dead for the server thread
/// that waits on it.  The state first, then the pid: a server thread that
/// sees the pid gone must not still see the dead worker's IDLE.  `status`:
/// how it ended, recorded for the server thread before the slot turns DEAD.
fn worker_gone(s: &Slot, c: &Ctl, status: i32) {
    c.died.store(status, Ordering::Relaxed);
    c.died_of.store(c.spawned.load(Ordering::Relaxed), Ordering::Release);
    loop {
        let cur = s.state.load(Ordering::Acquire);
        let to = match cur {
            TO_WORKER | TO_SERVER => DEAD,
            IDLE => EMPTY,
            _ => break,
        };
        if transport::pass(&s.state, cur, to) {
            break;
        }
    }
    c.pid.store(0, Ordering::Release);
}

/// # Safety
/// `seg` is the live segment.
pub unsafe fn orphaned(seg: &Segment) {
    for i in 0..seg.nslots() {
        let c = &*seg.ctl(i);
        c.kill.store(0, Ordering::Release);
        worker_gone(&*seg.slot(i), c, transport::MANAGER_DIED);
    }
    transport::ring(&seg.header().released);
}

/// The slot of a worker the manager started (Ctl::pid, which no worker
/// can write: a worker's own `pid` could name any process, and the
/// manager's kill would reach it).
unsafe fn slot_of(seg: &Segment, pid: libc::pid_t) -> Option<usize> {
    (0..seg.nslots()).find(|&i| (*seg.ctl(i)).pid.load(Ordering::Acquire) == pid)
}

/// A line in the main error log (the manager's stderr is it), in Apache's
/// format, when LogLevel allows info for this module.
fn info(t: &super::policy::Table, msg: &str) {
    log_line(t, crate::sys::APLOG_INFO as i32, "info", msg);
}

/// As `info`, at `level` (named `name` in the line).
fn log_line(t: &super::policy::Table, level: i32, name: &str, msg: &str) {
    if t.loglevel < level {
        return;
    }
    // SAFETY: time, localtime_r and strftime write into the buffers given;
    // write(2) on stderr.
    unsafe {
        let mut tv = libc::timeval { tv_sec: 0, tv_usec: 0 };
        libc::gettimeofday(&mut tv, std::ptr::null_mut());
        let mut tm: libc::tm = std::mem::zeroed();
        libc::localtime_r(&tv.tv_sec, &mut tm);
        let mut b = [0u8; 64];
        let n = libc::strftime(b.as_mut_ptr() as *mut libc::c_char, b.len(), c"%a %b %d %H:%M:%S".as_ptr(), &tm);
        let mut y = [0u8; 8];
        let ny = libc::strftime(y.as_mut_ptr() as *mut libc::c_char, y.len(), c"%Y".as_ptr(), &tm);
        let line = format!(
            "[{}.{:06} {}] [libcgi:{name}] [pid {}] mod_libcgi: {msg}\n",
            String::from_utf8_lossy(&b[..n]),
            tv.tv_usec,
            String::from_utf8_lossy(&y[..ny]),
            libc::getpid()
        );
        libc::write(2, line.as_ptr() as *const libc::c_void, line.len());
    }
}

/// What ended a child, for a log line.
fn how_it_ended(st: libc::c_int) -> String {
    if libc::WIFSIGNALED(st) {
        format!("signal {}", libc::WTERMSIG(st))
    } else {
        format!("exit {}", libc::WEXITSTATUS(st))
    }
}

/// Kills every child of the manager's that is neither a worker nor the
/// stderr relay: what a script forked, orphaned when its worker died (the
/// manager is their subreaper), before the slot gets its next worker.
unsafe fn kill_orphans(seg: &Segment, me: libc::pid_t, relay: libc::pid_t) {
    let kids = match std::fs::read_to_string(format!("/proc/{me}/task/{me}/children")) {
        Ok(k) => k.split_whitespace().filter_map(|p| p.parse::<libc::pid_t>().ok()).collect(),
        Err(_) => children_by_scan(me),
    };
    for p in kids {
        if p != relay && slot_of(seg, p).is_none() {
            libc::kill(p, libc::SIGKILL);
        }
    }
}

/// The children of `me` from every process's stat (a kernel without
/// /proc/<pid>/task/<tid>/children).
fn children_by_scan(me: libc::pid_t) -> Vec<libc::pid_t> {
    let Ok(dir) = std::fs::read_dir("/proc") else { return Vec::new() };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<libc::pid_t>().ok())
        .filter(|p| {
            std::fs::read_to_string(format!("/proc/{p}/stat")).ok().is_some_and(|st| {
                // After the command name in parentheses: state, ppid.
                st.rsplit_once(')').and_then(|(_, r)| r.split_whitespace().nth(1)?.parse().ok()) == Some(me)
            })
        })
        .collect()
}

unsafe fn run(seg: &'static Segment) {
    let me = libc::getpid();
    let h = seg.header();
    let mut eval = super::policy::Evaluator::new();
    let mut relay = Relay::new(me, seg.nslots());
    relay.start();
    loop {
        let seen = h.doorbell.load(Ordering::Acquire);
        if TERM.load(Ordering::SeqCst) {
            // The relay ends once the workers (the writers) are gone.
            relay.stop();
            // Idle workers run their scripts' terminatefunc and exit; one
            // still in a request (or stuck) is killed after a grace period.
            for sig in [libc::SIGTERM, libc::SIGKILL] {
                for i in 0..seg.nslots() {
                    let p = (*seg.ctl(i)).pid.load(Ordering::Acquire);
                    if p > 0 {
                        libc::kill(p, sig);
                    }
                }
                let until = std::time::Instant::now() + std::time::Duration::from_secs(2);
                loop {
                    let p = libc::waitpid(-1, std::ptr::null_mut(), libc::WNOHANG);
                    if p < 0 {
                        return;
                    }
                    if p > 0 {
                        if let Some(i) = slot_of(seg, p) {
                            (*seg.ctl(i)).pid.store(0, Ordering::Release);
                        }
                        continue;
                    }
                    if std::time::Instant::now() >= until {
                        break;
                    }
                    libc::usleep(5_000);
                }
            }
            // What scripts forked and left (the relay ends once they, the
            // last holders of its pipe, are gone).
            kill_orphans(seg, me, relay.pid());
            while libc::waitpid(-1, std::ptr::null_mut(), 0) > 0 {}
            return;
        }
        let mut reaped = false;
        loop {
            let mut st = 0;
            let p = libc::waitpid(-1, &mut st, libc::WNOHANG);
            if p <= 0 {
                break;
            }
            if let Some(i) = slot_of(seg, p) {
                worker_gone(&*seg.slot(i), &*seg.ctl(i), st);
                reaped = true;
            } else if relay.reaped(p) {
                // Only the manager's stop ends it normally: it was killed.
                let why = how_it_ended(st);
                log_line(
                    &h.policy,
                    crate::sys::APLOG_WARNING as i32,
                    "warn",
                    &format!("stderr relay of the isolated workers (pid {p}) ended ({why}); starting another"),
                );
            }
        }
        if reaped {
            kill_orphans(seg, me, relay.pid());
        }
        relay.start();
        for i in 0..seg.nslots() {
            let s = &mut *seg.slot(i);
            let c = &mut *seg.ctl(i);
            // A server process that died holding the slot: nobody will
            // answer its worker or free the slot.
            let op = c.owner_pid.load(Ordering::Acquire);
            if c.owner.load(Ordering::Acquire) != 0
                && op > 0
                && libc::kill(op, 0) != 0
                && *libc::__errno_location() == libc::ESRCH
            {
                c.owner_pid.store(0, Ordering::Release);
                c.kill.store(1, Ordering::Release);
                c.owner.store(0, Ordering::Release);
            }
            if c.owner.load(Ordering::Acquire) == 0 {
                let _ = s.state.compare_exchange(DEAD, EMPTY, Ordering::AcqRel, Ordering::Acquire);
            }
            let p = c.pid.load(Ordering::Acquire);
            if c.kill.swap(0, Ordering::AcqRel) != 0 && p > 0 {
                libc::kill(p, libc::SIGKILL);
            }
            if p == 0 && s.state.load(Ordering::Acquire) == EMPTY {
                spawn(seg, i, me, &mut relay);
            }
            // A worker the policy retired (its script went in process) has
            // been replaced: the slot is free for server threads again.
            if c.owner_pid.load(Ordering::Acquire) == me && c.script == 0 && c.pid.load(Ordering::Acquire) > 0 {
                c.owner_pid.store(0, Ordering::Release);
                c.owner.store(0, Ordering::Release);
                transport::ring(&h.released);
            }
        }
        let mut until = std::time::Instant::now() + transport::SECOND;
        if h.policy.adaptive != 0 {
            if std::time::Instant::now() >= eval.next {
                eval.run(&h.policy, seg, me, &|m| info(&h.policy, m));
            }
            until = until.min(eval.next);
        }
        relay.hand_over();
        transport::wait(&h.doorbell, seen, Some(until));
    }
}

unsafe fn spawn(seg: &'static Segment, i: usize, me: libc::pid_t, relay: &mut Relay) {
    let h = seg.header();
    let (s, c) = (&mut *seg.slot(i), &mut *seg.ctl(i));
    // Only an identity the configuration named: a server process that was
    // taken over cannot ask for root workers.
    let want = c.want;
    let ok = h.idents[..h.nidents as usize].iter().any(|i| i.uid == want.uid && i.gid == want.gid);
    let ident = if ok { want } else { h.idents[0] };
    // Numbered and marked before the fork: the worker's IDLE, which a
    // server thread waits for, comes after it.  Marked fresh only here: a
    // server thread goes on once the new pid is stored below and marks the
    // slot with its script; marked after the fork, a manager descheduled
    // between fork and these stores re-marked as fresh a worker that had
    // already run a script, and the next script was given it.
    c.spawned.store(c.spawned.load(Ordering::Relaxed).wrapping_add(1), Ordering::Release);
    c.have = ident;
    c.script = 0;
    let err = relay.pipe_for(i);
    let pid = libc::fork();
    if pid == 0 {
        die_with_parent(me);
        // stderr: its pipe to the relay (kept by the scrub), else /dev/null.
        let keep = err >= 0 && libc::dup2(err, 2) == 2;
        scrub_process(keep);
        worker::run(seg, s as *mut Slot, ident);
    }
    if pid > 0 {
        s.pid.store(pid, Ordering::Relaxed);
        c.pid.store(pid, Ordering::Release);
        // A server thread that saw the worker IDLE before this store waits
        // for the pid on the state word (client::run): the wake lets it go
        // on now rather than at its 50 ms re-check.
        transport::wake(&s.state);
    }
    // After the slot's stores: the hand-over (close, sendmsg) is no reason
    // for a server thread to wait.
    relay.forked(i, err, pid > 0);
}
