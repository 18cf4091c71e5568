//! Dumps the CGI variables the script sees, as examples/env.c does, and
//! reads each one both ways a Rust script can: `Request::var` (the module's
//! per-request `getenv`, borrowed) and `std::env::var` (the standard
//! library's own `getenv` call, copied); `?std` prints the second.
use std::io::Write;

const NAMES: &[&str] = &[
    "GATEWAY_INTERFACE",
    "SERVER_PROTOCOL",
    "SERVER_SOFTWARE",
    "SERVER_NAME",
    "SERVER_ADDR",
    "SERVER_PORT",
    "REQUEST_METHOD",
    "REQUEST_URI",
    "SCRIPT_NAME",
    "SCRIPT_FILENAME",
    "PATH_INFO",
    "PATH_TRANSLATED",
    "QUERY_STRING",
    "CONTENT_TYPE",
    "CONTENT_LENGTH",
    "REMOTE_ADDR",
    "REMOTE_PORT",
    "REMOTE_HOST",
    "HTTP_HOST",
    "HTTP_USER_AGENT",
    "HTTP_ACCEPT",
    "HTTP_COOKIE",
    "HTTPS",
];

fn env(req: &libcgi::Request, resp: &mut libcgi::Response) -> libcgi::Result<()> {
    resp.header("Content-Type", "text/plain")?;
    let use_std = req.query_string() == "std";
    for name in NAMES {
        if use_std {
            if let Ok(v) = std::env::var(name) {
                writeln!(resp, "{name}={v}")?;
            }
        } else if let Some(v) = req.var_bytes(name) {
            write!(resp, "{name}=")?;
            resp.write_all(v)?;
            resp.write_all(b"\n")?;
        }
    }
    Ok(())
}

libcgi::script!(env);

#[cfg(test)]
mod tests {
    #[test]
    fn lists_set_variables_in_order() {
        let out = libcgi::testing::TestRequest::get("/env.so/p?x=1").run(super::env);
        let text = out.text();
        assert!(text.starts_with("GATEWAY_INTERFACE=CGI/1.1\nSERVER_PROTOCOL=HTTP/1.1\n"), "{text}");
        assert!(text.contains("\nPATH_INFO=/p\nQUERY_STRING=x=1\n"), "{text}");
        assert!(!text.contains("HTTPS="));
    }
}
