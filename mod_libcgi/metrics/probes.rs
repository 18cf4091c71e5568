//! Static tracing probes (USDT, SystemTap SDT notes, from the `probe`
//! crate): a nop in the code and a note in `.note.stapsdt` that `readelf -n`
//! lists; perf, bpftrace and SystemTap turn the nop into a breakpoint only
//! while they are attached.  Provider `libcgi`; the first argument is
//! always the script's path (a C string).
//!
//! | probe | arguments after the path |
//! |---|---|
//! | request__start | |
//! | request__end | status, total ns |
//! | phase__load / phase__script / phase__callbacks / phase__output | ns of that phase |
//! | load, unload | |
//! | fault | signal |
//! | timeout | |

use std::ffi::c_char;

#[inline(always)]
pub fn request_start(path: *const c_char) {
    probe::probe!(libcgi, request__start, path);
}
#[inline(always)]
pub fn request_end(path: *const c_char, status: i64, total_ns: u64) {
    probe::probe!(libcgi, request__end, path, status, total_ns);
}
#[inline(always)]
pub fn phase_load(path: *const c_char, ns: u64) {
    probe::probe!(libcgi, phase__load, path, ns);
}
#[inline(always)]
pub fn phase_script(path: *const c_char, ns: u64) {
    probe::probe!(libcgi, phase__script, path, ns);
}
#[inline(always)]
pub fn phase_callbacks(path: *const c_char, ns: u64) {
    probe::probe!(libcgi, phase__callbacks, path, ns);
}
#[inline(always)]
pub fn phase_output(path: *const c_char, ns: u64) {
    probe::probe!(libcgi, phase__output, path, ns);
}
#[inline(always)]
pub fn load(path: *const c_char) {
    probe::probe!(libcgi, load, path);
}
#[inline(always)]
pub fn unload(path: *const c_char) {
    probe::probe!(libcgi, unload, path);
}
#[inline(always)]
pub fn fault(path: *const c_char, signo: i64) {
    probe::probe!(libcgi, fault, path, signo);
}
#[inline(always)]
pub fn timeout(path: *const c_char) {
    probe::probe!(libcgi, timeout, path);
}
