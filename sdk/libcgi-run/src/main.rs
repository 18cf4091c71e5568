//! libcgi-run: runs a LibCGI script for one request without Apache, the way
//! mod_libcgi would: load it (`dlopen`, `RTLD_NOW | RTLD_LOCAL`), call
//! `initfunc`, `processfunc` with the body, `terminatefunc`; the script's
//! `lwrite`/`lputs`/`lprintf`/`lflush`/`get_remote_host`/`linput_length`
//! bind to this executable's (exported dynamically), its `getenv` reads
//! this process's environment, which holds the request's CGI variables.
//!
//! The call runs in this process, on the main thread, with no signal
//! handler of ours: under gdb, valgrind or a sanitizer the script is the
//! program being debugged, and a crash is this process's crash (the shell
//! reports the signal; exit status 128+N).

use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::io::Read;
use std::process::ExitCode;

const USAGE: &str = "\
usage: libcgi-run [options] SCRIPT.so
Runs one request through a LibCGI script as mod_libcgi would, without Apache.
The CGI output (header lines, blank line, body) goes to stdout, unchanged.

  -m, --method M        REQUEST_METHOD (default GET, or POST with a body)
  -p, --path-info P     PATH_INFO
  -q, --query Q         QUERY_STRING
  -H, --header 'N: V'   a request header, as HTTP_N (CONTENT_TYPE for Content-Type)
  -e, --env NAME=VALUE  any CGI variable
  -b, --body FILE       the request body from FILE ('-': stdin); sets CONTENT_LENGTH
  -r, --remote-host H   what get_remote_host() returns (default REMOTE_HOST, REMOTE_ADDR)
  -n, --repeat N        call processfunc N times (one initfunc, one terminatefunc)
  -v, --verbose         say on stderr what is called and what it returned
  -h, --help

CGI variables may also come from the environment (the flags win).  Defaults
for those not set: GATEWAY_INTERFACE=CGI/1.1, SERVER_PROTOCOL=HTTP/1.1,
SERVER_SOFTWARE=libcgi-run, SERVER_NAME=localhost, SERVER_PORT=80,
REMOTE_ADDR=127.0.0.1, SCRIPT_FILENAME (the script's path),
SCRIPT_NAME=/libcgi-bin/<file name>, REQUEST_URI, QUERY_STRING=''.

Exit status: 0 when processfunc returned 0; 1 when it returned non-zero;
2 when initfunc failed; 3 when the script cannot be loaded; 64 for bad usage;
the script's own status if it called exit(); 128+N if it died of signal N.";

/// The current request's body and remote host: what linput_length and
/// get_remote_host return.
struct Current {
    body_len: usize,
    remote_host: CString,
}

static mut CURRENT: Option<Current> = None;

fn current() -> Option<&'static Current> {
    // SAFETY: CURRENT is written once in main before any script code runs,
    // and only read afterwards (all on the main thread).
    unsafe { (*std::ptr::addr_of!(CURRENT)).as_ref() }
}

fn write_all_fd1(mut data: &[u8]) -> bool {
    while !data.is_empty() {
        // SAFETY: writing a valid buffer to stdout.
        let n = unsafe { libc::write(1, data.as_ptr().cast(), data.len()) };
        if n < 0 {
            if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return false;
        }
        data = &data[n as usize..];
    }
    true
}

/// # Safety
/// `buf` points at `len` readable bytes.
#[no_mangle]
pub unsafe extern "C" fn lwrite(buf: *const c_void, len: usize) -> c_int {
    if len == 0 {
        return 0;
    }
    if buf.is_null() {
        return -1;
    }
    // Unbuffered (one write(2) per call): nothing is lost if the script
    // then crashes or calls exit(), and the order with its stderr is kept.
    // SAFETY: the caller's contract.
    let data = unsafe { std::slice::from_raw_parts(buf.cast::<u8>(), len) };
    if write_all_fd1(data) {
        len.min(c_int::MAX as usize) as c_int
    } else {
        -1
    }
}

/// # Safety
/// `s` is a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn lputs(s: *const c_char) -> c_int {
    if s.is_null() {
        return -1;
    }
    // SAFETY: the caller's contract.
    let b = unsafe { CStr::from_ptr(s) }.to_bytes();
    // SAFETY: b is valid for its length.
    unsafe { lwrite(b.as_ptr().cast(), b.len()) }
}

#[no_mangle]
pub extern "C" fn lflush() -> c_int {
    0 // lwrite does not buffer
}

#[no_mangle]
pub extern "C" fn get_remote_host() -> *const c_char {
    current().map_or(std::ptr::null(), |c| c.remote_host.as_ptr())
}

#[no_mangle]
pub extern "C" fn linput_length() -> usize {
    current().map_or(0, |c| c.body_len)
}

extern "C" {
    // In lprintf.c; referenced here so that the linker keeps it (and
    // --export-dynamic exports it).
    fn lprintf(fmt: *const c_char, ...) -> c_int;
}

fn die(code: u8, msg: &str) -> ExitCode {
    eprintln!("libcgi-run: {msg}");
    ExitCode::from(code)
}

fn setenv(name: &str, value: &[u8]) -> Result<(), String> {
    let n = CString::new(name).map_err(|_| format!("variable name {name:?} has a NUL"))?;
    let v = CString::new(value).map_err(|_| format!("the value of {name} has a NUL"))?;
    if name.is_empty() || name.contains('=') {
        return Err(format!("bad variable name {name:?}"));
    }
    // SAFETY: single-threaded here (before the script is loaded); both are
    // NUL-terminated.
    if unsafe { libc::setenv(n.as_ptr(), v.as_ptr(), 1) } != 0 {
        return Err(format!("setenv {name}: {}", std::io::Error::last_os_error()));
    }
    Ok(())
}

fn header_var(name: &str) -> String {
    let up: String = name.trim().chars().map(|c| if c == '-' { '_' } else { c.to_ascii_uppercase() }).collect();
    match up.as_str() {
        "CONTENT_TYPE" | "CONTENT_LENGTH" => up,
        _ => format!("HTTP_{up}"),
    }
}

struct Opts {
    script: String,
    vars: Vec<(String, Vec<u8>)>,
    body: Option<String>,
    remote_host: Option<String>,
    repeat: u64,
    verbose: bool,
}

fn parse_args() -> Result<Opts, String> {
    let mut o =
        Opts { script: String::new(), vars: Vec::new(), body: None, remote_host: None, repeat: 1, verbose: false };
    let mut args = std::env::args_os().skip(1);
    let mut method = None;
    while let Some(a) = args.next() {
        let a = a.into_string().map_err(|a| format!("argument {a:?} is not UTF-8"))?;
        let mut val = |what: &str| -> Result<String, String> {
            args.next().and_then(|v| v.into_string().ok()).ok_or_else(|| format!("{what} needs a value"))
        };
        match a.as_str() {
            "-h" | "--help" => return Err(String::new()),
            "-m" | "--method" => method = Some(val(&a)?),
            "-p" | "--path-info" => o.vars.push(("PATH_INFO".into(), val(&a)?.into_bytes())),
            "-q" | "--query" => o.vars.push(("QUERY_STRING".into(), val(&a)?.into_bytes())),
            "-H" | "--header" => {
                let h = val(&a)?;
                let (n, v) = h.split_once(':').ok_or_else(|| format!("header {h:?} is not 'Name: value'"))?;
                o.vars.push((header_var(n), v.trim_start().as_bytes().to_vec()));
            }
            "-e" | "--env" => {
                let e = val(&a)?;
                let (n, v) = e.split_once('=').ok_or_else(|| format!("{e:?} is not NAME=VALUE"))?;
                o.vars.push((n.to_string(), v.as_bytes().to_vec()));
            }
            "-b" | "--body" => o.body = Some(val(&a)?),
            "-r" | "--remote-host" => o.remote_host = Some(val(&a)?),
            "-n" | "--repeat" => o.repeat = val(&a)?.parse().map_err(|e| format!("--repeat: {e}"))?,
            "-v" | "--verbose" => o.verbose = true,
            s if s.starts_with('-') && s != "-" => return Err(format!("unknown option {s}")),
            s => {
                if !o.script.is_empty() {
                    return Err(format!("one script only (got {} and {s})", o.script));
                }
                o.script = s.to_string()
            }
        }
    }
    if o.script.is_empty() {
        return Err("no script given".into());
    }
    if let Some(m) = method {
        o.vars.push(("REQUEST_METHOD".into(), m.into_bytes()));
    }
    Ok(o)
}

fn main() -> ExitCode {
    std::hint::black_box(lprintf as unsafe extern "C" fn(*const c_char, ...) -> c_int);
    let o = match parse_args() {
        Ok(o) => o,
        Err(e) if e.is_empty() => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => return die(64, &format!("{e}\n{USAGE}")),
    };
    let mut body = match o.body.as_deref() {
        None => None,
        Some("-") => {
            let mut b = Vec::new();
            if let Err(e) = std::io::stdin().read_to_end(&mut b) {
                return die(64, &format!("reading the body from stdin: {e}"));
            }
            Some(b)
        }
        Some(f) => match std::fs::read(f) {
            Ok(b) => Some(b),
            Err(e) => return die(64, &format!("reading the body from {f}: {e}")),
        },
    };
    let path = std::fs::canonicalize(&o.script).unwrap_or_else(|_| o.script.clone().into());
    let file_name = path.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default();
    let env_or = |name: &str| std::env::var_os(name).is_some() || o.vars.iter().any(|(n, _)| n == name);
    let mut vars: Vec<(String, Vec<u8>)> = Vec::new();
    let method = if body.is_some() { "POST" } else { "GET" };
    let script_name = format!("/libcgi-bin/{file_name}");
    for (k, v) in [
        ("GATEWAY_INTERFACE", "CGI/1.1"),
        ("SERVER_PROTOCOL", "HTTP/1.1"),
        ("SERVER_SOFTWARE", "libcgi-run"),
        ("SERVER_NAME", "localhost"),
        ("SERVER_PORT", "80"),
        ("REMOTE_ADDR", "127.0.0.1"),
        ("REQUEST_METHOD", method),
        ("SCRIPT_FILENAME", &path.to_string_lossy()),
        ("SCRIPT_NAME", &script_name),
        ("QUERY_STRING", ""),
    ] {
        if !env_or(k) {
            vars.push((k.to_string(), v.as_bytes().to_vec()));
        }
    }
    vars.extend(o.vars.iter().cloned());
    if let Some(b) = &body {
        if !env_or("CONTENT_LENGTH") {
            vars.push(("CONTENT_LENGTH".into(), b.len().to_string().into_bytes()));
        }
    }
    for (k, v) in &vars {
        if let Err(e) = setenv(k, v) {
            return die(64, &e);
        }
    }
    if !env_or("REQUEST_URI") {
        let get = |n: &str| std::env::var(n).unwrap_or_default();
        let q = get("QUERY_STRING");
        let uri = format!("{}{}{}{q}", get("SCRIPT_NAME"), get("PATH_INFO"), if q.is_empty() { "" } else { "?" });
        if let Err(e) = setenv("REQUEST_URI", uri.as_bytes()) {
            return die(64, &e);
        }
    }
    let remote_host = o
        .remote_host
        .clone()
        .or_else(|| std::env::var("REMOTE_HOST").ok())
        .or_else(|| std::env::var("REMOTE_ADDR").ok())
        .unwrap_or_default();
    // SAFETY: single-threaded; nothing reads CURRENT yet.
    unsafe {
        *std::ptr::addr_of_mut!(CURRENT) = Some(Current {
            body_len: body.as_ref().map_or(0, Vec::len),
            remote_host: CString::new(remote_host).unwrap_or_default(),
        })
    };
    // The body NUL-terminated, as the module passes it (it may hold NULs
    // itself: linput_length() is its length).
    if let Some(b) = body.as_mut() {
        b.push(0);
    }

    let Ok(cpath) = CString::new(path.as_os_str().as_encoded_bytes()) else {
        return die(64, "the script's path has a NUL");
    };
    // SAFETY: loading the script runs its constructors: that is the point.
    let h = unsafe { libc::dlopen(cpath.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL) };
    if h.is_null() {
        // SAFETY: dlerror returns NULL or a message string.
        let e = unsafe { libc::dlerror() };
        let msg = if e.is_null() { "unknown error".into() } else { unsafe { CStr::from_ptr(e) }.to_string_lossy() };
        return die(3, &format!("cannot load {}: {msg}", path.display()));
    }
    let sym = |name: &CStr| {
        // SAFETY: h is a live handle; name is NUL-terminated.
        unsafe { libc::dlsym(h, name.as_ptr()) }
    };
    let process = sym(c"processfunc");
    if process.is_null() {
        return die(3, &format!("{}: no processfunc", path.display()));
    }
    let init = sym(c"initfunc");
    let terminate = sym(c"terminatefunc");
    let ts = sym(c"libcgi_thread_safe");
    if o.verbose {
        // SAFETY: libcgi_thread_safe is an int when it is defined.
        let ts = !ts.is_null() && unsafe { *(ts as *const c_int) } != 0;
        eprintln!(
            "libcgi-run: loaded {} (initfunc: {}, terminatefunc: {}, thread_safe: {ts})",
            path.display(),
            !init.is_null(),
            !terminate.is_null()
        );
    }
    if !init.is_null() {
        // SAFETY: the ABI of libcgi.h: int initfunc(void).
        let f: extern "C" fn() -> c_int = unsafe { std::mem::transmute(init) };
        let rc = f();
        if rc != 0 {
            return die(2, &format!("{}: initfunc returned {rc}", path.display()));
        }
    }
    // SAFETY: the ABI of libcgi.h: int processfunc(char *input).
    let pf: extern "C" fn(*mut c_char) -> c_int = unsafe { std::mem::transmute(process) };
    let mut status = 0u8;
    for i in 0..o.repeat {
        // A fresh copy per call: the script may write into its input.
        let mut copy = body.clone();
        let input = copy.as_mut().map_or(std::ptr::null_mut(), |b| b.as_mut_ptr().cast());
        let rc = pf(input);
        if o.verbose {
            eprintln!("libcgi-run: processfunc call {} returned {rc}", i + 1);
        }
        if rc != 0 {
            eprintln!("libcgi-run: {}: processfunc returned {rc}", path.display());
            status = 1;
        }
    }
    if !terminate.is_null() {
        // SAFETY: the ABI of libcgi.h: void terminatefunc(void).
        let f: extern "C" fn() = unsafe { std::mem::transmute(terminate) };
        f();
    }
    ExitCode::from(status)
}
