//! The stderr relay of the isolated workers (`libcgi-stderr`), a child of
//! the manager.
//!
//! A script's stderr goes to the error log, as it does in process and under
//! mod_cgid, but a worker holds no descriptor of the log itself (it could
//! truncate it): its stderr is a pipe of its own, and the relay copies what
//! comes through every worker's pipe to the log (its stderr, the manager's).
//!
//! One pipe per worker, not one shared by all: on a shared pipe only a write
//! of up to PIPE_BUF (4 KiB) is atomic, and a longer line of one worker
//! could be cut by another's.  The relay collects each pipe's bytes up to a
//! newline and writes whole lines, so a line (up to `LINE`) reaches the log
//! in one piece, whatever the sizes of the writes that made it.
//!
//! The manager keeps the read end of every worker's pipe (until the slot's
//! next worker), not only the relay: a relay that dies (kill -9, the OOM
//! killer) then breaks no pipe, so a worker writing its stderr gets neither
//! EPIPE nor SIGPIPE (which would end it and its request), what it writes
//! waits in its pipe, and the next relay, forked by the manager within a
//! second, inherits every read end and reads on.  The workers, old and new, are untouched: they hold
//! only their write end, nothing has to be handed to them.  The manager
//! holds no more of the log than before (its own stderr).  A pipe made after
//! the relay was forked reaches it over a socket (SCM_RIGHTS).

use std::time::{Duration, Instant};

/// A line longer than this is written in pieces of this size.
const LINE: usize = 64 * 1024;
/// How long the start of a line waits for its end before it is written as
/// it is (a script that writes a prompt and works on).
const PARTIAL: Duration = Duration::from_millis(100);

/// The manager's side of the relay.
pub(super) struct Relay {
    me: libc::pid_t,
    /// The relay running (0: none).
    pid: libc::pid_t,
    /// The manager's end of the socket to the running relay (-1: none).
    ctl: libc::c_int,
    /// Per slot, the read end of its worker's pipe (-1: none), and whether
    /// the running relay has it.
    pipes: Vec<(libc::c_int, bool)>,
    stopping: bool,
    /// No relay is forked before this: one that dies as it starts costs a
    /// fork and a log line a second, not a loop of them.
    next_start: Instant,
}

impl Relay {
    pub fn new(me: libc::pid_t, nslots: usize) -> Relay {
        Relay { me, pid: 0, ctl: -1, pipes: vec![(-1, false); nslots], stopping: false, next_start: Instant::now() }
    }

    /// The relay running (0: none), which is no orphan of a script's.
    pub fn pid(&self) -> libc::pid_t {
        self.pid
    }

    /// The stderr of the worker about to be forked into slot `i`: the write
    /// end of a new pipe, or -1 (then it gets /dev/null).
    ///
    /// # Safety
    /// In the manager, single-threaded.
    pub unsafe fn pipe_for(&mut self, i: usize) -> libc::c_int {
        // The slot's last worker is gone: the relay holds its own copy of
        // that read end and drains it to its end.
        self.drop_pipe(i);
        let mut fds = [0 as libc::c_int; 2];
        if libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) != 0 {
            return -1;
        }
        self.pipes[i] = (fds[0], false);
        fds[1]
    }

    /// After the fork of slot `i`'s worker (`ok`) or its failure: the
    /// worker holds the only write end, so its pipe ends with it (and with
    /// what it forked).
    ///
    /// # Safety
    /// In the manager, with `w` from `pipe_for(i)`.
    pub unsafe fn forked(&mut self, i: usize, w: libc::c_int, ok: bool) {
        if w >= 0 {
            libc::close(w);
        }
        if !ok {
            self.drop_pipe(i);
        }
        self.hand_over();
    }

    unsafe fn drop_pipe(&mut self, i: usize) {
        let (fd, _) = self.pipes[i];
        if fd >= 0 {
            libc::close(fd);
        }
        self.pipes[i] = (-1, false);
    }

    /// Hands the relay the read ends it has not got yet.  Never blocks: one
    /// the socket does not take now is handed on a later pass.
    ///
    /// # Safety
    /// In the manager.
    pub unsafe fn hand_over(&mut self) {
        if self.ctl < 0 {
            return;
        }
        for p in self.pipes.iter_mut().filter(|p| p.0 >= 0 && !p.1) {
            if !send_fd(self.ctl, p.0) {
                return;
            }
            p.1 = true;
        }
    }

    /// Forks a relay if none runs (and the manager is not stopping), at
    /// most one a second; one not started now is on a later pass (the
    /// manager's loop passes at least once a second).
    ///
    /// # Safety
    /// In the manager, single-threaded.
    pub unsafe fn start(&mut self) {
        let now = Instant::now();
        if self.pid != 0 || self.stopping || now < self.next_start {
            return;
        }
        self.next_start = now + Duration::from_secs(1);
        let mut sv = [0 as libc::c_int; 2];
        if libc::socketpair(libc::AF_UNIX, libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC, 0, sv.as_mut_ptr()) != 0 {
            return;
        }
        let pid = libc::fork();
        if pid < 0 {
            libc::close(sv[0]);
            libc::close(sv[1]);
            return;
        }
        if pid == 0 {
            super::supervisor::die_with_parent(self.me);
            libc::close(sv[0]);
            libc::prctl(libc::PR_SET_NAME, c"libcgi-stderr".as_ptr());
            serve(sv[1], self.pipes.iter().map(|p| p.0).filter(|&fd| fd >= 0).collect());
        }
        libc::close(sv[1]);
        self.pid = pid;
        self.ctl = sv[0];
        // It inherited every read end the manager holds.
        for p in self.pipes.iter_mut() {
            p.1 = p.0 >= 0;
        }
    }

    /// Whether the child reaped was the relay (the next `start` forks
    /// another).
    ///
    /// # Safety
    /// In the manager.
    pub unsafe fn reaped(&mut self, pid: libc::pid_t) -> bool {
        if pid <= 0 || pid != self.pid {
            return false;
        }
        self.pid = 0;
        libc::close(self.ctl);
        self.ctl = -1;
        true
    }

    /// At the manager's stop: no pipe will follow, so the relay ends once
    /// the workers' pipes have (the workers gone), and the manager's last
    /// wait with it.
    ///
    /// # Safety
    /// In the manager.
    pub unsafe fn stop(&mut self) {
        self.stopping = true;
        if self.ctl >= 0 {
            libc::close(self.ctl);
            self.ctl = -1;
        }
    }
}

/// One descriptor over `sock`, without blocking; whether it went.
///
/// # Safety
/// `sock` and `fd` are open descriptors of this process.
unsafe fn send_fd(sock: libc::c_int, fd: libc::c_int) -> bool {
    // The message and its control buffer live on this stack for the call;
    // the buffer (32 bytes, u64-aligned) holds CMSG_SPACE of one int.
    let mut byte = 0u8;
    let mut iov = libc::iovec { iov_base: &mut byte as *mut u8 as *mut libc::c_void, iov_len: 1 };
    let mut cbuf = [0u64; 4];
    let mut msg: libc::msghdr = std::mem::zeroed();
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cbuf.as_mut_ptr() as *mut libc::c_void;
    msg.msg_controllen = libc::CMSG_SPACE(std::mem::size_of::<libc::c_int>() as u32) as _;
    let c = libc::CMSG_FIRSTHDR(&msg);
    (*c).cmsg_level = libc::SOL_SOCKET;
    (*c).cmsg_type = libc::SCM_RIGHTS;
    (*c).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<libc::c_int>() as u32) as _;
    std::ptr::write_unaligned(libc::CMSG_DATA(c) as *mut libc::c_int, fd);
    // MSG_NOSIGNAL: a relay just killed must not take the manager along.
    libc::sendmsg(sock, &msg, libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT) == 1
}

enum Got {
    Fd(libc::c_int),
    Nothing,
    End,
}

/// # Safety
/// `sock` is an open descriptor of this process.
unsafe fn recv_fd(sock: libc::c_int) -> Got {
    // As in `send_fd`; the kernel fills at most the control length given.
    let mut byte = 0u8;
    let mut iov = libc::iovec { iov_base: &mut byte as *mut u8 as *mut libc::c_void, iov_len: 1 };
    let mut cbuf = [0u64; 4];
    let mut msg: libc::msghdr = std::mem::zeroed();
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cbuf.as_mut_ptr() as *mut libc::c_void;
    msg.msg_controllen = std::mem::size_of_val(&cbuf) as _;
    let n = libc::recvmsg(sock, &mut msg, libc::MSG_CMSG_CLOEXEC | libc::MSG_DONTWAIT);
    if n < 0 {
        let e = *libc::__errno_location();
        return if e == libc::EINTR || e == libc::EAGAIN { Got::Nothing } else { Got::End };
    }
    if n == 0 {
        return Got::End;
    }
    let c = libc::CMSG_FIRSTHDR(&msg);
    if c.is_null() || (*c).cmsg_level != libc::SOL_SOCKET || (*c).cmsg_type != libc::SCM_RIGHTS {
        return Got::Nothing;
    }
    Got::Fd(std::ptr::read_unaligned(libc::CMSG_DATA(c) as *const libc::c_int))
}

/// Writes all of `b` to the log (what the log refuses is dropped).
fn emit(b: &[u8]) {
    let mut at = 0;
    while at < b.len() {
        // SAFETY: write(2) from the live slice, within its length.
        let w = unsafe { libc::write(2, b[at..].as_ptr() as *const libc::c_void, b.len() - at) };
        if w < 0 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
            continue;
        }
        if w <= 0 {
            return;
        }
        at += w as usize;
    }
}

struct Input {
    fd: libc::c_int,
    buf: Vec<u8>,
    /// When the partial line in `buf` began to wait for its end.
    since: Option<Instant>,
}

impl Input {
    /// Writes the whole lines collected, and a partial line too long to
    /// wait for the rest.
    fn lines(&mut self, now: Instant) {
        if let Some(nl) = self.buf.iter().rposition(|&b| b == b'\n') {
            emit(&self.buf[..=nl]);
            self.buf.drain(..=nl);
            self.since = None;
        }
        while self.buf.len() >= LINE {
            emit(&self.buf[..LINE]);
            self.buf.drain(..LINE);
        }
        if self.buf.is_empty() {
            self.since = None;
        } else if self.since.is_none() {
            self.since = Some(now);
        }
    }

    fn flush(&mut self) {
        emit(&self.buf);
        self.buf.clear();
        self.since = None;
    }
}

/// The relay's loop: the pipes it was forked with, and those the manager
/// hands it over `ctl`, until `ctl` has ended (the manager stopping or
/// gone) and every pipe with it.
///
/// # Safety
/// Only in the relay, just forked; `ctl` and `fds` are its own descriptors.
unsafe fn serve(mut ctl: libc::c_int, fds: Vec<libc::c_int>) -> ! {
    let mut ins: Vec<Input> = fds.into_iter().map(|fd| Input { fd, buf: Vec::new(), since: None }).collect();
    let mut chunk = vec![0u8; LINE];
    let mut pfds: Vec<libc::pollfd> = Vec::new();
    loop {
        if ctl < 0 && ins.is_empty() {
            libc::_exit(0);
        }
        let now = Instant::now();
        let mut wait: Option<Duration> = None;
        for i in ins.iter_mut() {
            if let Some(t) = i.since {
                let left = PARTIAL.saturating_sub(now - t);
                if left.is_zero() {
                    i.flush();
                } else {
                    wait = Some(wait.map_or(left, |w| w.min(left)));
                }
            }
        }
        pfds.clear();
        if ctl >= 0 {
            pfds.push(libc::pollfd { fd: ctl, events: libc::POLLIN, revents: 0 });
        }
        let off = pfds.len();
        pfds.extend(ins.iter().map(|i| libc::pollfd { fd: i.fd, events: libc::POLLIN, revents: 0 }));
        let ms = wait.map_or(-1, |w| w.as_millis() as libc::c_int + 1);
        let n = libc::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, ms);
        if n < 0 {
            if *libc::__errno_location() == libc::EINTR {
                continue;
            }
            libc::_exit(1);
        }
        let now = Instant::now();
        if off == 1 && pfds[0].revents != 0 {
            loop {
                match recv_fd(ctl) {
                    Got::Fd(fd) => ins.push(Input { fd, buf: Vec::new(), since: None }),
                    Got::Nothing => break,
                    Got::End => {
                        libc::close(ctl);
                        ctl = -1;
                        break;
                    }
                }
            }
        }
        // Backwards, so that removing one (swap_remove) moves only an entry
        // already seen, or one just handed over, to its place.
        for k in (0..pfds.len() - off).rev() {
            if pfds[off + k].revents == 0 {
                continue;
            }
            let i = &mut ins[k];
            let r = libc::read(i.fd, chunk.as_mut_ptr() as *mut libc::c_void, chunk.len());
            if r > 0 {
                i.buf.extend_from_slice(&chunk[..r as usize]);
                i.lines(now);
            } else if r == 0 || *libc::__errno_location() != libc::EINTR {
                i.flush();
                libc::close(i.fd);
                ins.swap_remove(k);
            }
        }
    }
}
