//! hello as an `http` crate handler: the same output as examples/hello.c,
//! through libcgi's http adapter.
fn hello(_req: http::Request<&[u8]>) -> http::Response<&'static str> {
    http::Response::builder()
        .header("Content-Type", "text/plain")
        .body("Hello from mod_libcgi\n")
        .expect("a valid response")
}

libcgi::script! { http: hello }

#[cfg(test)]
mod tests {
    #[test]
    fn says_hello() {
        let out = libcgi::testing::TestRequest::get("/libcgi-bin/http-hello.so").run_http(super::hello);
        assert_eq!(out.raw, b"content-type: text/plain\r\n\r\nHello from mod_libcgi\n");
    }
}
