//! The shared-memory segment: its layout, its creation in the parent, and
//! the table that gives every script path one row index in all processes.
//!
//! Layout (all parts 64-byte aligned, offsets fixed when it is created):
//!
//! | part    | entries                          | written by |
//! |---------|----------------------------------|------------|
//! | Header  | 1                                | parent; slot claims |
//! | names   | slots                            | the first process to see a script (CAS) |
//! | events  | slots + 1 ("other")              | rare events, atomic add |
//! | procs   | server limit + 1                 | rare events, atomic add |
//! | used    | blocks x ceil((slots+1)/512) lines | the worker thread only |
//! | rows    | blocks x (slots + 1)             | the worker thread only |
//!
//! `blocks` is one per worker thread plus one per process for HTTP/2
//! streams (mod_http2 runs them on its own threads, which all carry the
//! connection's scoreboard handle): those are written with atomic adds.
//!
//! `workers` is ServerLimit x ThreadLimit (the scoreboard's own shape, from
//! ap_mpm_query): a worker thread owns the rows of its scoreboard slot, so
//! a request writes only cache lines no other thread writes, with plain
//! loads and stores (no lock, no read-modify-write).  Readers sum.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

pub const MAGIC: u64 = 0x6c69_6263_6769_6d31; // "libcgim1"
/// Longest script path with a row of its own; longer ones count as "other".
pub const NAME_MAX: usize = 1008;

/// Upper bounds of the latency buckets in nanoseconds: 1, 2.5, 5 per decade
/// from 1 us to 100 s; a last bucket takes everything above.
pub const BOUNDS_NS: [u64; 25] = {
    let mut b = [0u64; 25];
    let mut decade = 1_000u64;
    let mut i = 0;
    while i < 24 {
        b[i] = decade;
        b[i + 1] = decade * 5 / 2;
        b[i + 2] = decade * 5;
        decade *= 10;
        i += 3;
    }
    b[24] = decade; // 100 s
    b
};
pub const NB: usize = BOUNDS_NS.len() + 1;

pub const PHASES: [&str; 5] = ["load", "script", "callbacks", "output", "total"];
pub const P_LOAD: usize = 0;
pub const P_SCRIPT: usize = 1;
pub const P_CALLBACKS: usize = 2;
pub const P_OUTPUT: usize = 3;
pub const P_TOTAL: usize = 4;

/// Fault kinds counted apart (the signals the guard catches), then "other".
pub const FAULT_KINDS: [(&str, i32); 7] = [
    ("SIGSEGV", libc::SIGSEGV),
    ("SIGBUS", libc::SIGBUS),
    ("SIGFPE", libc::SIGFPE),
    ("SIGILL", libc::SIGILL),
    ("SIGABRT", libc::SIGABRT),
    ("SIGSYS", libc::SIGSYS),
    ("other", 0),
];

#[repr(C, align(64))]
pub struct Header {
    pub magic: u64,
    pub slots: u32,
    pub servers: u32,
    pub threads: u32,
    pub used_words: u32,
    pub bytes: u64,
    /// apr_time_now() of the last full (re)start: when counting began.
    pub since_us: AtomicU64,
    /// Scripts that found the name table full (counted in "other").
    pub names_full: AtomicU64,
}

pub const FREE: u32 = 0;
pub const CLAIMING: u32 = 1;
pub const READY: u32 = 2;

#[repr(C, align(64))]
pub struct Name {
    pub state: AtomicU32,
    pub len: u32,
    pub hash: u64,
    pub bytes: [u8; NAME_MAX],
}

/// What one worker thread counted for one script.  Only that thread writes
/// it (load + store); readers may read it at any time.
#[repr(C, align(64))]
pub struct Row {
    /// First line: what every request writes besides its histograms.
    pub started: AtomicU64,
    /// Not written (requests that ended are the sum of `class`).
    pub _ended: AtomicU64,
    /// 1xx (and anything out of range below 200), 2xx, 3xx, 4xx, 5xx.
    pub class: [AtomicU64; 5],
    pub bytes_out: AtomicU64,
    pub bytes_in: AtomicU64,
    /// 503s answered because the script was quarantined.
    pub quarantined: AtomicU64,
    /// Sums of the phases but the total (which is their sum).
    pub sum_ns: [AtomicU64; 5],
    pub _pad: [u64; 1],
    pub hist: [[AtomicU64; NB]; 5],
    /// `LibCGIIsolation` process/adaptive: in the room the 64-byte
    /// alignment leaves after the histograms (the row stays 1216 bytes).
    pub dom: Domains,
}

const _: () = assert!(std::mem::size_of::<Row>() == 1216);

/// What the isolation policy counts per domain (issue 12): written by the
/// request's own thread into its row, so that no request writes a line
/// another thread writes; the manager's evaluator and the status page sum
/// the rows.  The policy entry has one more, written with atomic adds, for
/// the requests no named row takes (metrics off, a script in "other").
#[repr(C)]
#[derive(Default)]
pub struct Domains {
    pub in_reqs: AtomicU64,
    pub in_ns: AtomicU64,
    pub iso_reqs: AtomicU64,
    pub iso_ns: AtomicU64,
    /// Isolated requests whose crossing cost was sampled, and its sum.
    pub cross_n: AtomicU64,
    pub cross_ns: AtomicU64,
}

/// `Domains` read out: in_reqs, in_ns, iso_reqs, iso_ns, cross_n, cross_ns.
pub type DomainSums = [u64; 6];

impl Domains {
    pub fn read(&self) -> DomainSums {
        let r = |a: &AtomicU64| a.load(Ordering::Relaxed);
        [r(&self.in_reqs), r(&self.in_ns), r(&self.iso_reqs), r(&self.iso_ns), r(&self.cross_n), r(&self.cross_ns)]
    }
}

/// Rare events of a script, summed over processes with atomic adds: none
/// of them happens on the path of a successful request.
#[repr(C, align(64))]
pub struct Events {
    pub loads: AtomicU64,
    pub reloads: AtomicU64,
    pub unloads: AtomicU64,
    pub load_failures: AtomicU64,
    pub init_failures: AtomicU64,
    pub faults: [AtomicU64; FAULT_KINDS.len()],
    pub timeouts: AtomicU64,
    pub exits: AtomicU64,
    pub quarantines: AtomicU64,
    pub recycles: AtomicU64,
    pub last_fault_us: AtomicU64,
    pub last_fault_signal: AtomicU64,
    pub last_fault_pid: AtomicU64,
    /// The faulting address, where the kernel gives one (u64::MAX otherwise).
    pub last_fault_addr: AtomicU64,
    /// Server-wide quarantine (metrics/quarantine.rs), in the room the
    /// struct's 64-byte alignment left (it stays 192 bytes): the identity
    /// of the file the faults were counted for,
    pub q_ident: AtomicU64,
    /// the fault window (start in ms of CLOCK_MONOTONIC_COARSE << 24 | count),
    pub q_window: AtomicU64,
    /// and the end of the quarantine in those ms (0: none).  Read by every
    /// request of a loaded script, written only when a quarantine starts or
    /// ends: it stays in every reader's cache.
    pub q_until: AtomicU64,
}

const _: () = assert!(std::mem::size_of::<Events>() == 192);

/// Rare events per server process slot.
#[repr(C, align(64))]
pub struct ProcEvents {
    pub loads: AtomicU64,
    pub unloads: AtomicU64,
    pub faults: AtomicU64,
    pub timeouts: AtomicU64,
    pub exits: AtomicU64,
    pub recycles: AtomicU64,
}

/// A process's view of the segment (the same addresses in every process:
/// the children inherit the parent's mapping).
#[derive(Clone, Copy)]
pub struct Seg {
    pub base: *mut u8,
    pub slots: usize,
    pub servers: usize,
    pub threads: usize,
    pub used_words: usize,
    names: usize,
    events: usize,
    procs: usize,
    used: usize,
    rows: usize,
    /// Bytes of one worker's rows and of its used-row bitmap: precomputed,
    /// since every request finds its rows by them.
    row_block: usize,
    used_block: usize,
    pub bytes: usize,
}

// SAFETY: the segment is shared memory made of atomics and of names that are
// written once before they are published (READY).
unsafe impl Send for Seg {}
unsafe impl Sync for Seg {}

fn up64(n: usize) -> usize {
    n.div_ceil(64) * 64
}

impl Seg {
    /// The layout for a given shape; `base` is filled in later.
    pub fn layout(slots: usize, servers: usize, threads: usize) -> Seg {
        let rows_per_worker = slots + 1;
        let used_words = up64(rows_per_worker.div_ceil(64) * 8) / 8;
        // One block of rows per worker thread, and one per server process
        // for requests whose thread has no scoreboard slot of its own (HTTP/2
        // streams, on mod_http2's threads), written with atomic adds.
        let workers = servers * threads + servers;
        let mut off = up64(std::mem::size_of::<Header>());
        let names = off;
        off += slots * std::mem::size_of::<Name>();
        let events = off;
        off += rows_per_worker * std::mem::size_of::<Events>();
        let procs = off;
        off += (servers + 1) * std::mem::size_of::<ProcEvents>();
        let used = off;
        off += workers * used_words * 8;
        let rows = up64(off);
        off = rows + workers * rows_per_worker * std::mem::size_of::<Row>();
        Seg {
            base: std::ptr::null_mut(),
            slots,
            servers,
            threads,
            used_words,
            names,
            events,
            procs,
            used,
            rows,
            row_block: rows_per_worker * std::mem::size_of::<Row>(),
            used_block: used_words * 8,
            bytes: off,
        }
    }

    pub fn header(&self) -> &Header {
        // SAFETY: the header is at the start of the live segment.
        unsafe { &*(self.base as *const Header) }
    }
    pub fn name(&self, i: usize) -> &Name {
        debug_assert!(i < self.slots);
        // SAFETY: in bounds of the names part.
        unsafe { &*(self.base.add(self.names + i * std::mem::size_of::<Name>()) as *const Name) }
    }
    pub fn events(&self, slot: usize) -> &Events {
        let slot = slot.min(self.slots);
        // SAFETY: in bounds of the events part (slots + 1 entries).
        unsafe { &*(self.base.add(self.events + slot * std::mem::size_of::<Events>()) as *const Events) }
    }
    pub fn procs(&self, server: usize) -> &ProcEvents {
        let server = server.min(self.servers);
        // SAFETY: in bounds of the procs part (servers + 1 entries).
        unsafe { &*(self.base.add(self.procs + server * std::mem::size_of::<ProcEvents>()) as *const ProcEvents) }
    }
    /// The used-row bitmap of a worker: `used_words` words.
    pub fn used(&self, worker: usize) -> &[AtomicU64] {
        // SAFETY: in bounds of the used part; AtomicU64 has u64's layout.
        unsafe {
            std::slice::from_raw_parts(
                self.base.add(self.used + worker * self.used_block) as *const AtomicU64,
                self.used_words,
            )
        }
    }
    pub fn row(&self, worker: usize, slot: usize) -> &Row {
        // SAFETY: in bounds of the rows part.
        unsafe { &*self.rows_of(worker).add(slot.min(self.slots)) }
    }
    /// The first of a worker's rows.
    pub fn rows_of(&self, worker: usize) -> *const Row {
        // SAFETY: in bounds of the rows part (worker < servers x threads).
        unsafe { self.base.add(self.rows + worker * self.row_block) as *const Row }
    }
    /// Row blocks: the worker threads', then one shared block per process.
    pub fn blocks(&self) -> usize {
        self.servers * self.threads + self.servers
    }
    /// The server process a row block belongs to.
    pub fn server_of(&self, block: usize) -> usize {
        let w = self.servers * self.threads;
        if block < w {
            block / self.threads
        } else {
            block - w
        }
    }
    /// The shared block of a server process.
    pub fn shared_block(&self, server: usize) -> usize {
        self.servers * self.threads + server
    }

    /// Fills a fresh (or reset) segment's header and zeroes the rest.
    ///
    /// # Safety
    /// No other process uses the segment (initial start or full restart:
    /// the parent has no children then).
    pub unsafe fn reset(&self, now_us: u64) {
        std::ptr::write_bytes(self.base, 0, self.bytes);
        let h = self.base as *mut Header;
        (*h).magic = MAGIC;
        (*h).slots = self.slots as u32;
        (*h).servers = self.servers as u32;
        (*h).threads = self.threads as u32;
        (*h).used_words = self.used_words as u32;
        (*h).bytes = self.bytes as u64;
        (*h).since_us.store(now_us, Ordering::Relaxed);
    }

    /// Whether the segment at `base` was made with this layout.
    pub fn matches(&self) -> bool {
        let h = self.header();
        h.magic == MAGIC
            && h.slots as usize == self.slots
            && h.servers as usize == self.servers
            && h.threads as usize == self.threads
            && h.bytes as usize == self.bytes
    }

    /// The row index of a script path in every process: found in, or added
    /// to, the shared name table (open addressing, linear probing, entries
    /// never removed until a full restart, so two processes adding the same
    /// path meet at the same entry).  `slots` ("other") when the path is too
    /// long or the table is full.  Once per script load per process.
    pub fn slot_for(&self, path: &[u8]) -> usize {
        let i = self.slot_quietly(path);
        if i == self.slots && path.len() <= NAME_MAX {
            self.header().names_full.fetch_add(1, Ordering::Relaxed);
        }
        i
    }

    /// `slot_for` without counting a full table as a refusal (the quarantine
    /// looks scripts up on paths that are not loads).
    pub fn slot_quietly(&self, path: &[u8]) -> usize {
        if self.slots == 0 || path.len() > NAME_MAX {
            return self.slots;
        }
        let hash = fnv(path);
        let start = (hash % self.slots as u64) as usize;
        for k in 0..self.slots {
            let i = (start + k) % self.slots;
            let n = self.name(i);
            let mut st = n.state.load(Ordering::Acquire);
            if st == FREE {
                match n.state.compare_exchange(FREE, CLAIMING, Ordering::AcqRel, Ordering::Acquire) {
                    Ok(_) => {
                        // SAFETY: the CAS made this entry ours until READY;
                        // readers ignore it before then.
                        unsafe {
                            let np = n as *const Name as *mut Name;
                            (*np).len = path.len() as u32;
                            (*np).hash = hash;
                            std::ptr::copy_nonoverlapping(path.as_ptr(), (*np).bytes.as_mut_ptr(), path.len());
                        }
                        n.state.store(READY, Ordering::Release);
                        return i;
                    }
                    Err(s) => st = s,
                }
            }
            // Another process is writing this entry: a few stores away.
            let mut spins = 0;
            while st == CLAIMING && spins < 100_000 {
                std::thread::yield_now();
                st = n.state.load(Ordering::Acquire);
                spins += 1;
            }
            if st == READY && n.hash == hash && n.len as usize == path.len() && &n.bytes[..path.len()] == path {
                return i;
            }
        }
        self.slots
    }

    /// The policy's counts of `rows` (row indices), summed over every
    /// block that used them: `out[i]` gets row `rows[i]`'s (nothing for an
    /// index that is not a named row).  One pass over the used-row bitmaps.
    pub fn domain_sums(&self, rows: &[usize], out: &mut [DomainSums]) {
        let mut want = vec![0u64; self.used_words];
        for &i in rows {
            if i < self.slots {
                want[i / 64] |= 1 << (i % 64);
            }
        }
        for b in 0..self.blocks() {
            for (wi, word) in self.used(b).iter().enumerate() {
                let mut bits = word.load(Ordering::Relaxed) & want[wi];
                while bits != 0 {
                    let slot = wi * 64 + bits.trailing_zeros() as usize;
                    bits &= bits - 1;
                    let d = self.row(b, slot).dom.read();
                    for (k, _) in rows.iter().enumerate().filter(|(_, &i)| i == slot) {
                        for (o, v) in out[k].iter_mut().zip(d) {
                            *o += v;
                        }
                    }
                }
            }
        }
    }

    /// The path of a used entry.
    pub fn name_of(&self, i: usize) -> Option<&[u8]> {
        let n = self.name(i);
        (n.state.load(Ordering::Acquire) == READY).then(|| &n.bytes[..(n.len as usize).min(NAME_MAX)])
    }
}

fn fnv(b: &[u8]) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for &c in b {
        h = (h ^ c as u64).wrapping_mul(0x100_0000_01b3);
    }
    h
}

/// Per octave [2^k, 2^(k+1)) of nanoseconds: the bucket of its values up to
/// the one bound inside it (bounds are at least 2x apart, so an octave holds
/// at most one), and that bound (u64::MAX: none).
const OCTAVES: [(u8, u64); 64] = {
    let mut t = [(0u8, u64::MAX); 64];
    let mut k = 0;
    while k < 64 {
        let lo: u64 = 1 << k;
        let hi: u64 = if k == 63 { u64::MAX } else { (1u64 << (k + 1)) - 1 };
        // The bucket of `lo`: the first bound >= lo.
        let mut i = 0;
        while i < BOUNDS_NS.len() && BOUNDS_NS[i] < lo {
            i += 1;
        }
        let bound = if i < BOUNDS_NS.len() && BOUNDS_NS[i] < hi { BOUNDS_NS[i] } else { u64::MAX };
        t[k] = (i as u8, bound);
        k += 1;
    }
    t
};

/// Every bucket `OCTAVES` gives is a valid index of a histogram.
const _: () = {
    let mut k = 0;
    while k < 64 {
        assert!((OCTAVES[k].0 as usize) + 1 < NB || OCTAVES[k].1 == u64::MAX && (OCTAVES[k].0 as usize) < NB);
        k += 1;
    }
};

/// The bucket of a duration (Prometheus' `le`: ns <= bound): a table
/// look-up by octave and one comparison, where a binary search over the
/// bounds would take five data-dependent branches on every phase.  Always
/// below `NB` (checked at compile time above), so callers index without a
/// bounds check.
#[inline]
pub fn bucket(ns: u64) -> usize {
    let (i, bound) = OCTAVES[63 - (ns | 1).leading_zeros() as usize];
    i as usize + (ns > bound) as usize
}
