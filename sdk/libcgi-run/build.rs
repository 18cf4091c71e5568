//! lprintf is C variadic, which stable Rust cannot define: it is the one
//! piece of C.  The executable exports lwrite & co. dynamically so that the
//! script it loads binds to them, as it binds to mod_libcgi's in Apache.
fn main() {
    println!("cargo:rerun-if-changed=src/lprintf.c");
    cc::Build::new().file("src/lprintf.c").warnings(true).compile("libcgi_run_lprintf");
    println!("cargo:rustc-link-arg-bins=-Wl,--export-dynamic");
}
