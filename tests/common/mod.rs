//! Test harness: a real apache2 (Debian package) started with a generated
//! configuration on 127.0.0.1, scripts built with `cc`, and a small HTTP/1.1
//! client speaking to it over TCP.
#![allow(dead_code)]

pub mod http;

use std::fmt::Write as _;
use std::fs;
use std::io::Read;
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

pub use http::{Request, Response};

pub const APACHE_BIN: &str = "/usr/sbin/apache2";
pub const MODULES: &str = "/usr/lib/apache2/modules";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mpm {
    Prefork,
    Worker,
    Event,
}

impl Mpm {
    pub fn name(self) -> &'static str {
        match self {
            Mpm::Prefork => "prefork",
            Mpm::Worker => "worker",
            Mpm::Event => "event",
        }
    }
}

/// Generates one #[test] per MPM for a function `fn name(mpm: Mpm)`.
#[macro_export]
macro_rules! per_mpm {
    ($($name:ident),+ $(,)?) => {
        mod prefork { $( #[test] fn $name() { super::$name($crate::common::Mpm::Prefork) } )+ }
        mod worker { $( #[test] fn $name() { super::$name($crate::common::Mpm::Worker) } )+ }
        mod event { $( #[test] fn $name() { super::$name($crate::common::Mpm::Event) } )+ }
    };
}

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The module under test: LIBCGI_MODULE, or the cdylib cargo built for this
/// profile.  Missing is a failure, never a skip.
pub fn module_path() -> PathBuf {
    if let Ok(p) = std::env::var("LIBCGI_MODULE") {
        return PathBuf::from(p);
    }
    let profile = if cfg!(debug_assertions) { "debug" } else { "release" };
    let p = root().join("target").join(profile).join("libmod_libcgi.so");
    assert!(
        p.exists(),
        "the module {} does not exist: run `cargo build{}` first (tests/run.sh does)",
        p.display(),
        if profile == "release" { " --release" } else { "" }
    );
    p
}

/// LIBCGI_TEST_DOCKER_IMAGE=<image>: run every server of the suite in a
/// container of that image (the dockerized httpd with mod_libcgi installed)
/// instead of the local apache2.  The container shares the host's network and
/// PID namespace and mounts the test's scratch directory at the same path, so
/// the same generated config, scripts, logs and process checks work as they
/// are; the module is the one installed in the image.
pub fn docker_image() -> Option<String> {
    std::env::var("LIBCGI_TEST_DOCKER_IMAGE").ok().filter(|s| !s.is_empty())
}

/// The module path as the server sees it.
fn server_module_path() -> PathBuf {
    match docker_image() {
        Some(_) => PathBuf::from(MODULES).join("mod_libcgi.so"),
        None => module_path(),
    }
}

fn check_prerequisites() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        if let Some(image) = docker_image() {
            let ok = Command::new("docker").args(["image", "inspect", &image]).output();
            assert!(
                ok.is_ok_and(|o| o.status.success()),
                "LIBCGI_TEST_DOCKER_IMAGE={image}: no such image (docker/build-images.sh builds it)"
            );
            return;
        }
        assert!(
            Path::new(APACHE_BIN).exists(),
            "{APACHE_BIN} is missing: install Debian's apache2 package (tests/run.sh does)"
        );
        for m in ["mod_mpm_event.so", "mod_mpm_prefork.so", "mod_mpm_worker.so", "mod_cgid.so"] {
            assert!(Path::new(MODULES).join(m).exists(), "{MODULES}/{m} is missing: install apache2");
        }
        let cc = Command::new("cc").arg("--version").output();
        assert!(cc.is_ok_and(|o| o.status.success()), "no C compiler `cc`: install gcc");
    });
}

/// A scratch directory readable by the server's user (www-data when the
/// tests run as root).
pub fn scratch(tag: &str) -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let base = root().join("target").join("itest");
    fs::create_dir_all(&base).unwrap();
    let d = base.join(format!("{tag}-{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed)));
    let _ = fs::remove_dir_all(&d);
    fs::create_dir_all(&d).unwrap();
    // Every ancestor must be traversable by www-data.
    let mut p = d.clone();
    while p != Path::new("/") {
        if let Ok(m) = fs::metadata(&p) {
            let mode = m.permissions().mode();
            if mode & 0o005 != 0o005 && p.starts_with(root()) {
                fs::set_permissions(&p, fs::Permissions::from_mode(mode | 0o755)).unwrap();
            }
        }
        p = p.parent().unwrap().to_path_buf();
    }
    d
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Compiles a test script from tests/scripts/<src>.c into a shared object in
/// `dir`, installed by atomic rename (never overwritten in place).
pub fn build_script(dir: &Path, name: &str, src: &str, extra: &[&str]) -> PathBuf {
    let out = dir.join(name);
    let tmp = dir.join(format!(".{name}.tmp{}", std::process::id()));
    let srcp = root().join("tests/scripts").join(format!("{src}.c"));
    let mut cmd = Command::new("cc");
    cmd.args(["-shared", "-fPIC", "-O1", "-Wall", "-I"]).arg(root().join("include")).arg("-o").arg(&tmp).arg(&srcp);
    cmd.args(extra);
    let o = cmd.output().expect("running cc");
    assert!(o.status.success(), "cc {} failed:\n{}", srcp.display(), String::from_utf8_lossy(&o.stderr));
    fs::set_permissions(&tmp, fs::Permissions::from_mode(0o755)).unwrap();
    fs::rename(&tmp, &out).unwrap();
    out
}

/// Compiles tests/scripts/<src>.c as a classic CGI executable (the same
/// program, with a main() that reads stdin and writes stdout).
pub fn build_cgi(dir: &Path, name: &str, src: &str) -> PathBuf {
    let out = dir.join(name);
    let o = Command::new("cc")
        .args(["-O1", "-DCGI_MAIN", "-I"])
        .arg(root().join("include"))
        .arg("-o")
        .arg(&out)
        .arg(root().join("tests/scripts").join(format!("{src}.c")))
        .arg(root().join("tests/scripts/cgi_main.c"))
        .output()
        .expect("running cc");
    assert!(o.status.success(), "cc (cgi) failed:\n{}", String::from_utf8_lossy(&o.stderr));
    out
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

pub struct Config {
    pub mpm: Mpm,
    /// Extra lines for the main server config.
    pub extra: String,
    /// Server processes and threads (worker/event).
    pub servers: u32,
    pub threads: u32,
    pub loglevel: String,
    pub cgid: bool,
    /// Extra environment variables of the server (LD_PRELOAD, say).
    pub env: Vec<(String, String)>,
    /// Another build of the module (a test feature's) instead of the usual.
    pub module: Option<PathBuf>,
    /// Load mod_libcgi (false: Apache alone, to tell its behaviour from ours).
    pub libcgi: bool,
}

impl Config {
    pub fn new(mpm: Mpm) -> Config {
        Config {
            mpm,
            extra: String::new(),
            servers: 1,
            threads: 16,
            loglevel: "warn".into(),
            cgid: false,
            env: Vec::new(),
            module: None,
            libcgi: true,
        }
    }
    pub fn extra(mut self, s: &str) -> Config {
        self.extra.push_str(s);
        self.extra.push('\n');
        self
    }
}

/// LIBCGI_TEST_ISOLATION=process: the suite's libcgi-bin scripts run in
/// isolated workers (issue 12).
pub fn isolation_directive() -> String {
    match std::env::var("LIBCGI_TEST_ISOLATION").ok().filter(|s| !s.is_empty()) {
        Some(m) => format!("LibCGIIsolation {m}"),
        None => String::new(),
    }
}

/// The suite runs with LIBCGI_TEST_ISOLATION=process (or adaptive): the
/// libcgi-bin scripts run in isolated workers, whose pid is not a server
/// process's.
pub fn isolated() -> bool {
    std::env::var("LIBCGI_TEST_ISOLATION").is_ok_and(|s| !s.is_empty() && s != "inprocess")
}

/// Config lines (`Config::extra`) that keep /libcgi-bin/ in process whatever
/// LIBCGI_TEST_ISOLATION says, for a test of an in-process-only mechanism
/// (a <Location> merges after the <Directory> the switch writes to).
pub const PIN_INPROCESS: &str = "<Location /libcgi-bin/>\n  LibCGIIsolation inprocess\n</Location>";

pub struct Apache {
    pub dir: PathBuf,
    /// The libcgi-bin directory (Options +ExecCGI, AddHandler .so).
    pub bin: PathBuf,
    pub port: u16,
    pub mpm: Mpm,
    child: Child,
    conf_path: PathBuf,
    /// The server's parent process (in a container: its PID on the host).
    server_pid: u32,
    container: Option<String>,
    /// A failed start keeps its directory for the next attempt (Drop would
    /// remove it, and with it the error log that says why).
    keep_dir: bool,
}

impl Apache {
    pub fn start(cfg: Config) -> Apache {
        check_prerequisites();
        let dir = scratch(cfg.mpm.name());
        let bin = dir.join("bin");
        for d in ["bin", "noexec", "cgi-bin", "run", "setbin", "tiny"] {
            fs::create_dir_all(dir.join(d)).unwrap();
            fs::set_permissions(dir.join(d), fs::Permissions::from_mode(0o755)).unwrap();
        }
        let mut last_err = String::new();
        for _attempt in 0..5 {
            let port = free_port();
            let conf = Self::config(&cfg, &dir, port);
            let conf_path = dir.join("httpd.conf");
            fs::write(&conf_path, conf).unwrap();
            let _ = fs::remove_file(dir.join("error.log"));
            static CONTAINERS: AtomicUsize = AtomicUsize::new(0);
            let container = docker_image()
                .map(|_| format!("libcgi-test-{}-{}", std::process::id(), CONTAINERS.fetch_add(1, Ordering::Relaxed)));
            let mut cmd = match (&container, docker_image()) {
                (Some(name), Some(image)) => {
                    let mut c = Command::new("docker");
                    let mount = format!("{0}:{0}", dir.display());
                    c.args(["run", "--rm", "--name", name, "--network", "host", "--pid", "host"]);
                    c.args(["-e", "FROM_PASSENV=passed-through"]);
                    // The server's own environment is the container's:
                    // what the test gives the server goes in with -e.
                    for (k, v) in &cfg.env {
                        c.arg("-e").arg(format!("{k}={v}"));
                    }
                    c.args(["-v", &mount, "--entrypoint", APACHE_BIN, &image]);
                    c
                }
                _ => Command::new(APACHE_BIN),
            };
            // A variable of the server's own environment, for PassEnv tests.
            cmd.env("FROM_PASSENV", "passed-through");
            for (k, v) in &cfg.env {
                cmd.env(k, v);
            }
            cmd.arg("-f")
                .arg(&conf_path)
                .arg("-DFOREGROUND")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped());
            // Its own process group: prefork signals its whole group when it
            // shuts down, which would otherwise include the test process.
            // And if the test process dies, the server must not outlive it.
            // SAFETY: setsid and prctl are async-signal-safe; nothing else
            // runs between fork and exec here.
            unsafe {
                cmd.pre_exec(|| {
                    libc::setsid();
                    libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                    Ok(())
                });
            }
            let child = cmd.spawn().expect("starting apache2");
            let server_pid = child.id();
            let mut a = Apache {
                dir: dir.clone(),
                bin: bin.clone(),
                port,
                mpm: cfg.mpm,
                child,
                conf_path,
                server_pid,
                container,
                keep_dir: false,
            };
            match a.wait_ready() {
                Ok(()) => {
                    if let Some(name) = &a.container {
                        let o =
                            Command::new("docker").args(["inspect", "-f", "{{.State.Pid}}", name]).output().unwrap();
                        a.server_pid = String::from_utf8_lossy(&o.stdout).trim().parse().expect("container pid");
                    }
                    return a;
                }
                Err(e) => {
                    a.stop();
                    a.keep_dir = true;
                    // Only a port taken between free_port and apache2's bind
                    // is worth another try; anything else is the cause.
                    let port_taken = e.contains("Address already in use") || e.contains("could not bind");
                    last_err = format!("{e}\n--- apache2 -t ---\n{}", config_test(&a.conf_path));
                    if !port_taken {
                        panic!("apache2 did not start: {last_err}");
                    }
                }
            }
        }
        panic!("apache2 did not start (5 tries, the port was taken each time): {last_err}");
    }

    fn config(cfg: &Config, dir: &Path, port: u16) -> String {
        let d = dir.display();
        let mut c = String::new();
        let m = MODULES;
        writeln!(c, "ServerRoot {d}\nListen 127.0.0.1:{port}\nServerName 127.0.0.1").unwrap();
        if is_root() {
            c.push_str("User www-data\nGroup www-data\n");
        }
        writeln!(c, "PidFile {d}/run/httpd.pid\nDefaultRuntimeDir {d}/run\nErrorLog {d}/error.log").unwrap();
        writeln!(c, "LogLevel {}\nTimeout 30\nKeepAlive On\nGracefulShutdownTimeout 5", cfg.loglevel).unwrap();
        writeln!(c, "LoadModule mpm_{0}_module {m}/mod_mpm_{0}.so", cfg.mpm.name()).unwrap();
        match cfg.mpm {
            Mpm::Prefork => writeln!(
                c,
                "StartServers {0}\nMinSpareServers {0}\nMaxSpareServers {0}\nServerLimit {0}\nMaxRequestWorkers {0}",
                cfg.servers
            )
            .unwrap(),
            _ => writeln!(
                c,
                "StartServers {0}\nServerLimit {0}\nThreadLimit {1}\nThreadsPerChild {1}\nMinSpareThreads 1\nMaxSpareThreads {2}\nMaxRequestWorkers {2}",
                cfg.servers,
                cfg.threads,
                cfg.servers * cfg.threads
            )
            .unwrap(),
        }
        for (name, file) in [
            ("authz_core", "authz_core"),
            ("mime", "mime"),
            ("alias", "alias"),
            ("env", "env"),
            ("headers", "headers"),
            ("deflate", "deflate"),
            ("filter", "filter"),
        ] {
            writeln!(c, "LoadModule {name}_module {m}/mod_{file}.so").unwrap();
        }
        if cfg.cgid {
            writeln!(c, "LoadModule cgid_module {m}/mod_cgid.so\nScriptSock {d}/run/cgid.sock").unwrap();
        }
        writeln!(c, "TypesConfig /etc/mime.types\nDocumentRoot {d}/bin").unwrap();
        if cfg.libcgi {
            let module = cfg.module.clone().unwrap_or_else(server_module_path);
            writeln!(c, "LoadModule libcgi_module {}", module.display()).unwrap();
        }
        writeln!(
            c,
            r#"<Directory />
  Require all granted
  AllowOverride None
</Directory>
Alias /libcgi-bin/ {d}/bin/
<Directory {d}/bin>
  Options +ExecCGI
  AddHandler libcgi-script .so
  {iso}
</Directory>
Alias /noexec/ {d}/noexec/
<Directory {d}/noexec>
  Options -ExecCGI
  AddHandler libcgi-script .so
</Directory>
Alias /sethandler/ {d}/setbin/
<Directory {d}/setbin>
  Options +ExecCGI
  SetHandler libcgi-script
</Directory>
Alias /tiny/ {d}/bin/
<Location /tiny/>
  LimitRequestBody 1024
</Location>
<Location /libcgi-bin/nopathinfo.so>
  AcceptPathInfo Off
</Location>"#,
            iso = if cfg.libcgi { isolation_directive() } else { String::new() }
        )
        .unwrap();
        if cfg.cgid {
            writeln!(
                c,
                "Alias /cgi-bin/ {d}/cgi-bin/\n<Directory {d}/cgi-bin>\n  Options +ExecCGI\n  AddHandler cgi-script .so\n</Directory>"
            )
            .unwrap();
        }
        c.push_str(&cfg.extra);
        c
    }

    fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(st)) = self.child.try_wait() {
                let mut err = String::new();
                if let Some(mut e) = self.child.stderr.take() {
                    let _ = e.read_to_string(&mut err);
                }
                return Err(format!("exited with {st}: {err}{}", self.error_log()));
            }
            // Ready when the parent has written its pid file and answers.
            if self.dir.join("run/httpd.pid").exists() && TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!("not answering after 20 s: {}", self.error_log()));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn pid(&self) -> u32 {
        self.server_pid
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{}", self.port, path)
    }

    pub fn get(&self, path: &str) -> Response {
        Request::get(path).send(self.port)
    }

    pub fn send(&self, req: Request) -> Response {
        req.send(self.port)
    }

    pub fn error_log(&self) -> String {
        fs::read_to_string(self.dir.join("error.log")).unwrap_or_default()
    }

    /// Polls the error log until `pred` holds for it (bounded).
    pub fn wait_log(&self, what: &str, pred: impl Fn(&str) -> bool) -> String {
        wait_for(what, Duration::from_secs(15), || {
            let l = self.error_log();
            pred(&l).then_some(l)
        })
    }

    /// Server processes (children of the parent) currently alive.
    pub fn children(&self) -> Vec<u32> {
        let mut v = Vec::new();
        for e in fs::read_dir("/proc").unwrap().flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            if let Ok(st) = fs::read_to_string(format!("/proc/{pid}/stat")) {
                // Fields after the command name in parentheses: state ppid ...
                if let Some(rest) = st.rsplit_once(')').map(|x| x.1) {
                    let f: Vec<&str> = rest.split_whitespace().collect();
                    if f.get(1).and_then(|p| p.parse::<u32>().ok()) == Some(self.pid()) && f[0] != "Z" {
                        v.push(pid);
                    }
                }
            }
        }
        v
    }

    /// Server processes alive: `children` without the isolation manager
    /// (a child of the parent too, whenever a directory is isolated).
    pub fn server_children(&self) -> Vec<u32> {
        self.children()
            .into_iter()
            .filter(|p| fs::read_to_string(format!("/proc/{p}/comm")).map_or(true, |c| c.trim() != "libcgi-manager"))
            .collect()
    }

    /// Graceful restart: the old generation finishes and exits.
    pub fn graceful(&self) {
        // SAFETY: signalling our own child process.
        unsafe { libc::kill(self.pid() as i32, libc::SIGUSR1) };
    }

    pub fn install(&self, name: &str, src: &str, extra: &[&str]) -> PathBuf {
        build_script(&self.bin, name, src, extra)
    }

    pub fn stop(&mut self) {
        // SAFETY: signalling our own child process.
        unsafe { libc::kill(self.pid() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                if let Some(name) = &self.container {
                    let _ = Command::new("docker").args(["rm", "-f", name]).output();
                }
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(name) = &self.container {
            let _ = Command::new("docker").args(["rm", "-f", name]).output();
        }
    }
}

/// What `apache2 -t` says about a configuration (its own syntax check).
fn config_test(conf: &Path) -> String {
    match Command::new(APACHE_BIN).arg("-t").arg("-f").arg(conf).output() {
        Ok(o) => format!("{}{}{}", o.status, String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr)),
        Err(e) => format!("cannot run {APACHE_BIN}: {e}"),
    }
}

impl Drop for Apache {
    fn drop(&mut self) {
        self.stop();
        if self.keep_dir {
            return;
        }
        if !std::thread::panicking() {
            let _ = fs::remove_dir_all(&self.dir);
        } else {
            eprintln!(
                "--- error log of the {} server ({}) ---\n{}",
                self.mpm.name(),
                self.conf_path.display(),
                self.error_log()
            );
        }
    }
}

/// Polls `f` until it returns Some (bounded by `limit`).
pub fn wait_for<T>(what: &str, limit: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out after {limit:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// Resident memory high-water mark of a process, in KiB.
pub fn vm_hwm_kib(pid: u32) -> u64 {
    let s = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap()
}

/// Generates one #[test] per MPM named by the fault-containment issue
/// (prefork and event) for a function `fn name(mpm: Mpm)`.
#[macro_export]
macro_rules! prefork_and_event {
    ($($name:ident),+ $(,)?) => {
        mod prefork { $( #[test] fn $name() { super::$name($crate::common::Mpm::Prefork) } )+ }
        mod event { $( #[test] fn $name() { super::$name($crate::common::Mpm::Event) } )+ }
    };
}

/// Lines of the error log reporting a server process killed by a signal.
pub fn dead_children(log: &str) -> Vec<&str> {
    log.lines().filter(|l| l.contains("exit signal")).collect()
}

/// Sets a file's mode (the tests run as root: ownership is ours to set too).
pub fn chmod(p: &Path, mode: u32) {
    fs::set_permissions(p, fs::Permissions::from_mode(mode)).unwrap();
}

/// As prefork_and_event!, for a second group of tests in the same file.
#[macro_export]
macro_rules! prefork_and_event_extra {
    ($($name:ident),+ $(,)?) => {
        mod prefork_more { $( #[test] fn $name() { super::$name($crate::common::Mpm::Prefork) } )+ }
        mod event_more { $( #[test] fn $name() { super::$name($crate::common::Mpm::Event) } )+ }
    };
}

/// Whether a process is alive (not gone, not a zombie).
pub fn alive(pid: u32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|st| !st.contains(") Z "))
}

/// The pid of the isolated worker whose death the newest "worker replaced"
/// line reports.
pub fn last_dead_worker(a: &Apache) -> u32 {
    let log = a.error_log();
    let line =
        log.lines().rev().find(|l| l.contains("worker replaced")).unwrap_or_else(|| panic!("no worker died:\n{log}"));
    line.rsplit_once("; worker pid ")
        .and_then(|(_, p)| p.trim().parse().ok())
        .unwrap_or_else(|| panic!("no pid in {line:?}"))
}

/// After a call that ended the process running it: in process the server
/// process `pid` survived it and answers `path` again; isolated
/// (LIBCGI_TEST_ISOLATION) the worker that died is gone and a new one
/// answers.  Either way the server processes are those of before.  Returns
/// the pid that answers now, as `ok_pid` reads it.
pub fn survived(
    a: &Apache,
    path: &str,
    pid: &str,
    servers: &[u32],
    ok_pid: impl Fn(&Apache, &str) -> String,
) -> String {
    let now = if isolated() {
        // The worker that died is the one the line names: usually, not
        // always, the one that answered `path` last (on a loaded machine a
        // request to the script was seen given another worker of it).
        let gone = last_dead_worker(a);
        assert!(!alive(gone), "{path}: the dead worker {gone} is still alive");
        let now = ok_pid(a, path);
        assert_ne!(now, gone.to_string(), "{path}: the worker that died still answers");
        now
    } else {
        let now = ok_pid(a, path);
        assert_eq!(now, pid, "{path}: the server process changed");
        now
    };
    assert_eq!(a.server_children(), servers, "the server processes changed");
    now
}

/// Processes whose parent is `pid` (not zombies), with their command name.
pub fn kids(pid: u32) -> Vec<(u32, String)> {
    let mut v = Vec::new();
    for e in fs::read_dir("/proc").unwrap().flatten() {
        let Ok(p) = e.file_name().to_string_lossy().parse::<u32>() else { continue };
        let Ok(st) = fs::read_to_string(format!("/proc/{p}/stat")) else { continue };
        let Some((head, rest)) = st.rsplit_once(')') else { continue };
        let f: Vec<&str> = rest.split_whitespace().collect();
        if f.get(1).and_then(|x| x.parse::<u32>().ok()) == Some(pid) && f[0] != "Z" {
            v.push((p, head.split_once('(').map(|x| x.1).unwrap_or("").to_string()));
        }
    }
    v
}

/// The workers of `a`'s isolation manager (the parent's child named
/// libcgi-manager; its stderr relay is not one), none if it has none.
pub fn isolation_workers(a: &Apache) -> Vec<u32> {
    manager_kids(a, "libcgi-worker")
}

/// The stderr relay of `a`'s isolation manager (none, or one).
pub fn isolation_relays(a: &Apache) -> Vec<u32> {
    manager_kids(a, "libcgi-stderr")
}

fn manager_kids(a: &Apache, comm: &str) -> Vec<u32> {
    kids(a.pid())
        .into_iter()
        .filter(|(_, n)| n == "libcgi-manager")
        .flat_map(|(m, _)| kids(m))
        .filter(|(_, n)| n == comm)
        .map(|(p, _)| p)
        .collect()
}

/// The status page's JSON (`/libcgi-status?json`, a `SetHandler
/// libcgi-status` location the test configured), asserted 200 and parsed.
pub fn status_json(a: &Apache) -> serde_json::Value {
    let r = a.get("/libcgi-status?json");
    assert_eq!(r.status, 200, "{}\n{}", r.text(), a.error_log());
    serde_json::from_slice(&r.body).unwrap_or_else(|e| panic!("bad JSON ({e}): {}", r.text()))
}

/// The status JSON's row of the script whose path ends with `/name`.
pub fn script_row<'a>(j: &'a serde_json::Value, name: &str) -> Option<&'a serde_json::Value> {
    let suffix = format!("/{name}");
    j["scripts"].as_array()?.iter().find(|s| s["script"].as_str().unwrap_or("").ends_with(&suffix))
}
