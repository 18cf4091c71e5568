//! The shared segment between server threads, the manager and the workers:
//! one header and one slot per worker, each slot a futex word that says
//! whose turn it is and one buffer that carries a message at a time.
//!
//! The protocol is half-duplex: the side whose turn it is owns the buffer,
//! writes a message (op, arg, len bytes) and hands the turn over with a
//! compare-and-swap on `state` plus a FUTEX_WAKE.  Every transition is a CAS
//! from the state its writer expects, so the manager can mark a slot DEAD
//! (its worker died) at any moment and whichever side waits sees it.

use std::sync::atomic::{AtomicI32, AtomicI64, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Bytes of one message: the request's environment and the first part of
/// the body going in, up to this much output coming back per round trip.
pub const DATA: usize = 256 * 1024 - 4096;
/// Most identities (user, group) the workers may take.
pub const MAX_IDENTS: usize = 16;

// `state`: whose turn it is.
/// No worker: the manager starts one.
pub const EMPTY: u32 = 0;
/// A worker waits for a request.
pub const IDLE: u32 = 1;
/// A message for the worker is in the buffer.
pub const TO_WORKER: u32 = 2;
/// A message for the server thread is in the buffer.
pub const TO_SERVER: u32 = 3;
/// The worker died during a request; the server thread sets EMPTY.
pub const DEAD: u32 = 4;

// Server thread -> worker.
pub const OP_REQ: u32 = 1;
pub const OP_BODY: u32 = 2;
/// Output taken; arg: 0, or -1 when the server refuses further output.
pub const OP_ACK: u32 = 3;
/// The remote host name is in the buffer (NUL-terminated).
pub const OP_HOST: u32 = 4;
// Worker -> server thread.  Each carries `len` bytes of output first.
pub const OP_OUT: u32 = 10;
/// More input: the rest of the environment block, then of the body.
pub const OP_NEED_BODY: u32 = 11;
pub const OP_GET_HOST: u32 = 12;
/// The call ended: arg is a guard kind (RETURNED, EXITED), rc its code.
pub const OP_DONE: u32 = 13;
/// The script could not be loaded; the message is in the buffer.
pub const OP_LOADFAIL: u32 = 14;

/// `died` of every slot after the manager itself died (its workers die
/// with it): not a wait status.
pub const MANAGER_DIED: i32 = i32::MIN;

/// arg of OP_OUT: push the output to the client now (lflush).
pub const OUT_FLUSH: i32 = 1;

/// Who a worker runs as and what it may use.
#[repr(C)]
#[derive(Clone, Copy, Default, PartialEq, Eq, Debug)]
pub struct Ident {
    pub uid: u32,
    pub gid: u32,
    /// Address space in bytes, CPU seconds, open files; 0: not limited.
    pub limit_as: u64,
    pub limit_cpu: u64,
    pub limit_nofile: u64,
}

#[repr(C, align(4096))]
pub struct Header {
    /// Bumped (and woken) to make the manager look at the slots.
    pub doorbell: AtomicU32,
    /// Bumped (and woken) when a slot is released and a server thread may
    /// be asleep waiting for one (`waiting`), and by the manager.
    pub released: AtomicU32,
    /// Server threads in `claim` that found no free slot: a release rings
    /// `released` only when this is not 0, so that the usual request, which
    /// nobody waits for, pays neither a shared atomic add nor a futex call.
    pub waiting: AtomicU32,
    pub nslots: u32,
    pub nidents: u32,
    /// How long a request waits for a free slot (LibCGIIsolationWorkers).
    pub claim_wait_ms: u32,
    /// The identities the manager accepts from a slot's `want`.
    pub idents: [Ident; MAX_IDENTS],
    /// The adaptive policy's script table (workers do not map it).
    pub policy: super::policy::Table,
    /// Per slot, what steers the server threads and the manager.
    pub ctl: [Ctl; MAX_SLOTS],
}

/// Most slots (LibCGIIsolationWorkers).
pub const MAX_SLOTS: usize = 256;

/// What the server threads and the manager know of a slot, kept apart from
/// it: in the header, which a worker unmaps with everything but its own
/// slot (worker.rs `run`).  A worker, and so the script it runs, can write
/// every byte of its slot; a field there that the server or the manager
/// acted on was the script's to set (a `pid` the manager, root, would
/// SIGKILL; a `kill` it would clear to outlive its deadline; a `script`
/// or `have` that got it another script's requests; a `died` that read
/// as the manager's death and escaped quarantine; `loaded` and `served`,
/// loads and samples the server counted).  Each entry on its own cache
/// lines: the owner of one slot writes its entry on every request.
#[repr(C, align(64))]
pub struct Ctl {
    /// 0 free, 1 held by a server thread for one request (or by the
    /// manager, retiring the worker).
    pub owner: AtomicU32,
    /// The server process of that thread: if it dies mid-request, the
    /// manager takes the slot back (kills the worker, frees the slot).
    pub owner_pid: AtomicI32,
    /// The slot's worker, 0 for none (the manager's word).
    pub pid: AtomicI32,
    /// Set by a server thread: the manager kills this worker.
    pub kill: AtomicU32,
    /// How the last worker of this slot ended (waitpid status, or
    /// MANAGER_DIED), and which of the slot's workers that was (`spawned`
    /// when it was started): a DEAD slot whose worker has no such record
    /// was marked so by the worker itself.
    pub died: AtomicI32,
    pub died_of: AtomicU32,
    /// Workers the manager has started in this slot so far: the number of
    /// the current one.
    pub spawned: AtomicU32,
    pub want: Ident,
    pub have: Ident,
    /// The one script this worker has run (a hash of its path), 0 for a
    /// fresh worker: a worker never serves two scripts, so a script that
    /// corrupts its worker's memory corrupts only itself.
    pub script: u64,
    /// The server side's memory of the slot, written by its owner only
    /// (`owner` orders one owner's stores before the next one's loads).
    /// Requests the slot's workers answered (OP_DONE): the sampling count.
    pub served: AtomicU64,
    /// The worker (`spawned`), script key and file identity of the slot's
    /// last request: a load is possible only when one of them changed.
    pub last_worker: AtomicU32,
    pub last_key: AtomicU64,
    pub last_file: [AtomicI64; 5],
    /// The current worker (`spawned`) was logged for a forged load.
    pub forged_logged: AtomicU32,
}

/// Slot::loaded bits.
pub const LOADED: u32 = 1;
pub const LOADED_REPLACED: u32 = 2;

#[repr(C, align(4096))]
pub struct Slot {
    pub state: AtomicU32,
    /// The worker's pid, for the worker's own side (tests/scripts/forge.c
    /// finds its slot by it); the server and the manager read Ctl::pid.
    pub pid: AtomicI32,
    pub op: u32,
    pub arg: i32,
    pub rc: i32,
    pub len: u64,
    /// OP_REQ: the length of the path and environment block, which may be
    /// longer than the first message (the rest follows as input, before the
    /// body).
    pub head: u64,
    /// OP_REQ: the body's whole length, and whether there is one.
    pub total: u64,
    pub has_body: u32,
    /// OP_REQ: the identity of the script file (dev, ino, size, mtime, ctime).
    pub file: [i64; 5],
    /// OP_REQ: the slot's count of answered requests (Ctl::served), from
    /// which the worker knows whether the next request is sampled
    /// (`sampled`).  Only the worker reads it.
    pub served: u64,
    /// OP_DONE, OP_LOADFAIL: LOADED, the worker loaded the script for
    /// this request; LOADED_REPLACED, it dropped the version it had first
    /// (the file was replaced).  For the metrics and the debug log, which
    /// only the server writes; taken only when a load was possible
    /// (client.rs `may_load`).
    pub loaded: u32,
    /// What the worker is running, for the message if it dies: 1 initfunc,
    /// 2 processfunc.
    pub phase: AtomicU32,
    /// OP_REQ: measure this request's crossing cost (one in `SAMPLE`).
    pub sample: u32,
    /// OP_DONE, when sampled: the worker's CPU ns for this request outside
    /// processfunc (reading the request, building `environ`, answering).
    pub worker_cpu_ns: u64,
    /// The server's answer to OP_DONE, read by the worker when it next
    /// looks at the slot: 1 unload the script (its output was bad), as in
    /// process.  Written before the server turns the slot IDLE.
    pub unload: u32,
    /// The worker's synchronous fault (SIGSEGV, SIGBUS, SIGFPE, SIGILL) in
    /// this request, written by its handler just before the fault kills it:
    /// the signal (0: none) and the faulting address, for the server's line.
    pub fault_sig: AtomicI32,
    pub fault_addr: AtomicU64,
    pub data: [u8; DATA],
}

// tests/scripts/forge.c, the hostile script of tests/adaptive.rs and
// tests/forge.rs, finds its worker's slot by `pid` and forges these fields
// at these offsets: a layout change must move them there too.
const _: () = assert!(std::mem::offset_of!(Slot, pid) == 4);
const _: () = assert!(std::mem::offset_of!(Slot, served) == 96);
const _: () = assert!(std::mem::offset_of!(Slot, loaded) == 104);
const _: () = assert!(std::mem::offset_of!(Slot, worker_cpu_ns) == 120);

pub struct Segment {
    /// The header, page-aligned (the slots' layout and the worker's unmap
    /// of the others' slots need it; APR's base is not: it keeps its own
    /// size word in front).
    pub base: *mut u8,
    /// The whole mapping as APR made it.
    pub map: *mut u8,
    pub map_len: usize,
}

// SAFETY: the segment is shared memory accessed only through atomics and the
// turn protocol above.
unsafe impl Send for Segment {}
unsafe impl Sync for Segment {}

impl Segment {
    pub fn size(nslots: usize) -> usize {
        std::mem::size_of::<Header>() + nslots * std::mem::size_of::<Slot>()
    }
    /// What to ask APR for: room to align the header to a page.
    pub fn alloc_size(nslots: usize) -> usize {
        Self::size(nslots) + PAGE
    }
    /// Lays the segment out in the memory APR gave.
    pub fn new(apr_base: *mut u8, apr_len: usize) -> Segment {
        let base = (apr_base as usize).next_multiple_of(PAGE) as *mut u8;
        Segment { base, map: apr_base, map_len: apr_len }
    }
    pub fn header(&self) -> &Header {
        // SAFETY: base points at a mapped segment laid out by `size`.
        unsafe { &*(self.base as *const Header) }
    }
    pub fn header_mut(&self) -> *mut Header {
        self.base as *mut Header
    }
    /// What the server side keeps of slot `i` (i < nslots).
    pub fn ctl(&self, i: usize) -> *mut Ctl {
        // SAFETY: the header is mapped; i < nslots <= MAX_SLOTS.
        unsafe { std::ptr::addr_of_mut!((*self.header_mut()).ctl[i]) }
    }
    pub fn slot(&self, i: usize) -> *mut Slot {
        // SAFETY: i < nslots (callers iterate over the header's count).
        unsafe { self.base.add(std::mem::size_of::<Header>() + i * std::mem::size_of::<Slot>()) as *mut Slot }
    }
    pub fn nslots(&self) -> usize {
        self.header().nslots as usize
    }
}

/// Waits while `word` holds `val`, at most until `deadline`.  Shared (not
/// FUTEX_PRIVATE): the word is in memory other processes map.
pub fn wait(word: &AtomicU32, val: u32, deadline: Option<Instant>) {
    let ts;
    let tsp = match deadline {
        Some(d) => {
            let left = d.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            ts = libc::timespec { tv_sec: left.as_secs() as libc::time_t, tv_nsec: left.subsec_nanos() as _ };
            &ts as *const libc::timespec
        }
        None => std::ptr::null(),
    };
    // SAFETY: the futex word is a live, aligned u32 in mapped memory.
    unsafe {
        libc::syscall(libc::SYS_futex, word.as_ptr(), libc::FUTEX_WAIT, val, tsp, 0usize, 0u32);
    }
}

pub fn wake(word: &AtomicU32) {
    // SAFETY: as in `wait`.
    unsafe {
        libc::syscall(libc::SYS_futex, word.as_ptr(), libc::FUTEX_WAKE, i32::MAX, 0usize, 0usize, 0u32);
    }
}

/// Hands the turn over: `from` -> `to`, then wakes the other side.  False if
/// the slot left `from` meanwhile (its worker died).
pub fn pass(state: &AtomicU32, from: u32, to: u32) -> bool {
    let ok = state.compare_exchange(from, to, Ordering::AcqRel, Ordering::Acquire).is_ok();
    if ok {
        wake(state);
    }
    ok
}

/// Waits until `state` is no longer `val`; returns what it is then, or
/// `val` if the deadline passed.
pub fn wait_change(state: &AtomicU32, val: u32, deadline: Option<Instant>) -> u32 {
    loop {
        let s = state.load(Ordering::Acquire);
        if s != val {
            return s;
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            return val;
        }
        wait(state, val, deadline);
    }
}

pub fn ring(word: &AtomicU32) {
    word.fetch_add(1, Ordering::AcqRel);
    wake(word);
}

/// One request in this many measures its crossing cost (CPU time on both
/// sides: eight clock reads that are syscalls, and two per round trip its
/// callbacks make; see worker.rs LAST_END).
pub const SAMPLE: u64 = 8;

/// Whether the request a slot's worker serves as its `served`-th (the
/// slot's count when the request is handed over) measures its crossing
/// cost: server and worker decide alike from the one counter, so the
/// worker knows one request ahead when to read its clock.  Never the first
/// (there is no request before it to measure from).
pub fn sampled(served: u64) -> bool {
    served % SAMPLE == SAMPLE - 1
}

/// CPU time of the calling thread in ns (wall time would count the run
/// queue of a loaded machine as the cost of a crossing).
pub fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: writes one timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

pub const PAGE: usize = 4096;

pub const SECOND: Duration = Duration::from_secs(1);
