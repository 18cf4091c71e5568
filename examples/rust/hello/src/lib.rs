//! The smallest LibCGI script in Rust: the same output as examples/hello.c.
use std::io::Write;

fn hello(_req: &libcgi::Request, resp: &mut libcgi::Response) -> libcgi::Result<()> {
    resp.header("Content-Type", "text/plain")?;
    resp.write_all(b"Hello from mod_libcgi\n")?;
    Ok(())
}

libcgi::script!(hello);

#[cfg(test)]
mod tests {
    #[test]
    fn says_hello() {
        let out = libcgi::testing::TestRequest::get("/libcgi-bin/hello.so").run(super::hello);
        assert_eq!(out.raw, b"Content-Type: text/plain\r\n\r\nHello from mod_libcgi\n");
    }
}
