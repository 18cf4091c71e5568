//! The script behind tests/rust_sdk.rs: one route per behaviour a script
//! author relies on, chosen by PATH_INFO.
use std::io::Write;
use std::sync::OnceLock;

include!("overlap.rs");

/// The same list as tests/scripts/envdump.c, in the same order.
const NAMES: &[&str] = &[
    "GATEWAY_INTERFACE",
    "SERVER_PROTOCOL",
    "SERVER_SOFTWARE",
    "SERVER_NAME",
    "SERVER_ADDR",
    "SERVER_PORT",
    "SERVER_ADMIN",
    "SERVER_SIGNATURE",
    "REQUEST_METHOD",
    "REQUEST_URI",
    "REQUEST_SCHEME",
    "SCRIPT_NAME",
    "SCRIPT_FILENAME",
    "SCRIPT_URI",
    "SCRIPT_URL",
    "PATH_INFO",
    "PATH_TRANSLATED",
    "QUERY_STRING",
    "CONTENT_TYPE",
    "CONTENT_LENGTH",
    "REMOTE_ADDR",
    "REMOTE_PORT",
    "REMOTE_HOST",
    "REMOTE_USER",
    "REMOTE_IDENT",
    "AUTH_TYPE",
    "DOCUMENT_ROOT",
    "CONTEXT_PREFIX",
    "CONTEXT_DOCUMENT_ROOT",
    "PATH",
    "LD_LIBRARY_PATH",
    "HTTPS",
    "UNIQUE_ID",
    "REDIRECT_STATUS",
    "REDIRECT_URL",
    "REDIRECT_QUERY_STRING",
    "HTTP_HOST",
    "HTTP_USER_AGENT",
    "HTTP_ACCEPT",
    "HTTP_COOKIE",
    "HTTP_CONNECTION",
    "HTTP_X_TOKEN",
    "HTTP_X_WEIRD_NAME",
    "HTTP_CONTENT_LENGTH",
    "HTTP_CONTENT_TYPE",
    "HTTP_PROXY",
    "HTTP_AUTHORIZATION",
    "HTTP_TRANSFER_ENCODING",
    "FROM_SETENV",
    "FROM_PASSENV",
    "TZ",
];

/// What init saw: it runs inside the request that loaded the script.
static INIT_SCRIPT: OnceLock<String> = OnceLock::new();

fn init() -> Result<(), String> {
    let name = std::env::var("SCRIPT_FILENAME").map_err(|e| format!("no SCRIPT_FILENAME in init: {e}"))?;
    let _ = INIT_SCRIPT.set(name);
    Ok(())
}

fn query(req: &libcgi::Request, key: &str) -> Option<String> {
    req.query_pairs().into_iter().find(|(k, _)| k == key).map(|(_, v)| v)
}

fn process(req: &libcgi::Request, resp: &mut libcgi::Response) -> Result<(), Box<dyn std::error::Error>> {
    match req.path_info() {
        // envdump.c's output, through Request::var (the module's getenv).
        "/vars" => {
            resp.header("Content-Type", "text/plain")?;
            for n in NAMES {
                if let Some(v) = req.var_bytes(n) {
                    write!(resp, "{n}=")?;
                    resp.write_all(v)?;
                    resp.write_all(b"\n")?;
                }
            }
        }
        // The same through std::env (the standard library's own getenv).
        "/stdvars" => {
            resp.header("Content-Type", "text/plain")?;
            for n in NAMES {
                if let Some(v) = std::env::var_os(n) {
                    write!(resp, "{n}=")?;
                    resp.write_all(v.as_encoded_bytes())?;
                    resp.write_all(b"\n")?;
                }
            }
        }
        "/binary" => {
            resp.header("Content-Type", "application/octet-stream")?;
            resp.header("X-Body-Length", req.body().len().to_string())?;
            resp.write_all(req.body())?;
        }
        "/big" => {
            let n: usize = query(req, "n").and_then(|n| n.parse().ok()).unwrap_or(10 << 20);
            resp.header("Content-Type", "application/octet-stream")?;
            let chunk: Vec<u8> = (0..65536u32).map(|i| (i % 251) as u8).collect();
            let mut left = n;
            while left > 0 {
                let k = left.min(chunk.len());
                resp.write_all(&chunk[..k])?;
                left -= k;
            }
        }
        "/status" => {
            resp.status(404)?.header("Content-Type", "text/plain")?;
            resp.write_all(b"nothing here\n")?;
        }
        "/redirect-local" => {
            resp.header("Location", "/libcgi-bin/sdktest.so/vars?from=redirect")?;
        }
        "/redirect" => {
            resp.header("Location", "http://example.com/elsewhere")?;
        }
        "/inject" => {
            // The value comes from the client: CR/LF in it must not become
            // a header line of its own.
            let v = query(req, "v").unwrap_or_default();
            match resp.header("X-Echo", &v) {
                Ok(_) => {
                    resp.header("Content-Type", "text/plain")?;
                    resp.write_all(b"accepted\n")?;
                }
                Err(e) => {
                    resp.status(400)?.header("Content-Type", "text/plain")?;
                    writeln!(resp, "refused: {e}")?;
                }
            }
        }
        "/panic" => {
            resp.header("Content-Type", "text/plain")?;
            resp.write_all(b"this never reaches the client")?;
            panic!("deliberate panic {}", 42);
        }
        "/panic-late" => {
            resp.header("Content-Type", "text/plain")?;
            resp.write_all(&[b'x'; 20000])?;
            resp.flush()?;
            panic!("deliberate late panic");
        }
        "/error" => return Err("deliberate error".into()),
        // hello.so's output, after one getenv (PATH_INFO): for the bench.
        "/hello" => {
            resp.header("Content-Type", "text/plain")?;
            resp.write_all(b"Hello from mod_libcgi\n")?;
        }
        "/init" => {
            resp.header("Content-Type", "text/plain")?;
            writeln!(resp, "init saw {}", INIT_SCRIPT.get().map_or("nothing", String::as_str))?;
        }
        "/overlap" => overlap(resp)?,
        "/remote" => {
            resp.header("Content-Type", "text/plain")?;
            writeln!(resp, "{}", req.remote_host().unwrap_or("(none)"))?;
        }
        other => {
            resp.status(404)?.header("Content-Type", "text/plain")?;
            writeln!(resp, "no route {other}")?;
        }
    }
    Ok(())
}

libcgi::script! {
    init: init,
    process: process,
    thread_safe: true,
}
