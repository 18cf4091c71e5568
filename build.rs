//! Generates the Apache/APR bindings from the headers installed on this
//! machine and compiles the small C part of the module.
//!
//! The bindings are generated, never checked in: they must match the httpd
//! the module is loaded into (MMN, struct layouts), and that is whatever
//! `apxs` describes here.

use std::env;
use std::path::PathBuf;
use std::process::Command;

fn apxs_query(apxs: &str, var: &str) -> Option<String> {
    let out = Command::new(apxs).args(["-q", var]).output().ok()?;
    if !out.status.success() {
        return None;
    }
    let s = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (!s.is_empty()).then_some(s)
}

fn find_apxs() -> String {
    if let Ok(a) = env::var("APXS") {
        return a;
    }
    for cand in ["apxs", "apxs2", "/usr/bin/apxs", "/usr/bin/apxs2"] {
        if Command::new(cand).arg("-q").arg("INCLUDEDIR").output().is_ok_and(|o| o.status.success()) {
            return cand.to_string();
        }
    }
    panic!(
        "\n\nmod_libcgi: `apxs` was not found (set APXS=/path/to/apxs to override).\n\
         It comes with the Apache development headers: on Debian/Ubuntu run\n\
         \n    sudo apt-get install apache2-dev\n\n"
    );
}

fn main() {
    println!("cargo:rerun-if-changed=mod_libcgi/wrapper.h");
    println!("cargo:rerun-if-changed=mod_libcgi/shim.c");
    println!("cargo:rerun-if-env-changed=APXS");

    let apxs = find_apxs();
    let httpd_inc = apxs_query(&apxs, "INCLUDEDIR").expect("apxs -q INCLUDEDIR gave nothing");
    let mut includes = vec![httpd_inc];
    for var in ["APR_INCLUDEDIR", "APU_INCLUDEDIR"] {
        if let Some(d) = apxs_query(&apxs, var) {
            if !includes.contains(&d) {
                includes.push(d);
            }
        }
    }
    // Debian's apxs answers APR_INCLUDEDIR; other layouts only have apr-1-config.
    if includes.len() == 1 {
        if let Ok(o) = Command::new("apr-1-config").arg("--includedir").output() {
            let d = String::from_utf8_lossy(&o.stdout).trim().to_string();
            if !d.is_empty() {
                includes.push(d);
            }
        }
    }
    // The same feature macros httpd itself was built with (-D_GNU_SOURCE and
    // friends change struct layouts such as off_t's size).
    let defines: Vec<String> = apxs_query(&apxs, "EXTRA_CPPFLAGS")
        .unwrap_or_default()
        .split_whitespace()
        .chain(["-DLINUX", "-D_REENTRANT", "-D_GNU_SOURCE"])
        .filter(|f| f.starts_with("-D") && !f.contains("FORTIFY"))
        .map(str::to_string)
        .collect();

    let builder = bindgen::Builder::default()
        .header("mod_libcgi/wrapper.h")
        .clang_args(includes.iter().map(|d| format!("-I{d}")))
        .clang_args(defines.iter().cloned())
        .allowlist_function("ap_.*|apr_.*")
        .allowlist_type(
            "request_rec|module_struct|command_rec|cmd_parms|core_dir_config|core_server_config|apr_table_entry_t",
        )
        .allowlist_var(
            "MODULE_MAGIC_.*|APLOG_.*|OK|DECLINED|DONE|HTTP_.*|OPT_.*|ACCESS_CONF|RSRC_CONF|OR_.*\
             |APR_.*|M_.*|AP_.*|REMOTE_.*|REQUEST_CHUNKED_.*|HUGE_STRING_LEN|MAX_STRING_LEN\
             |apr_bucket_type_.*|ap_scoreboard_image|SERVER_.*|GLOBAL_ONLY|NOT_IN_.*\
             |ap_listeners|ap_unixd_config|ap_num_listen_buckets|ap_graceful_shutdown_timeout",
        )
        .derive_default(true)
        .layout_tests(false)
        .generate_comments(false)
        .parse_callbacks(Box::new(bindgen::CargoCallbacks::new()));
    let bindings = builder.generate().unwrap_or_else(|e| {
        panic!(
            "\n\nmod_libcgi: bindgen could not generate the Apache bindings: {e}\n\
             bindgen needs libclang: on Debian/Ubuntu run\n\
             \n    sudo apt-get install libclang-dev clang\n\n\
             (and apache2-dev for the headers in {includes:?}).\n"
        )
    });
    let out = PathBuf::from(env::var("OUT_DIR").unwrap());
    bindings.write_to_file(out.join("bindings.rs")).expect("writing bindings.rs");

    cc::Build::new()
        .file("mod_libcgi/shim.c")
        .includes(&includes)
        .flag_if_supported("-fno-omit-frame-pointer")
        // No unwind tables for the shim: a C++ exception escaping a script
        // (processfunc not noexcept) then finds no frame to unwind into and
        // std::terminate aborts inside the script, under the guard.  With
        // them, the unwinder walks past libcgi_call's sigsetjmp into the
        // module's Rust frames, which (panic = "unwind") have landing pads
        // that abort outside the guard's reach.
        .flag_if_supported("-fno-asynchronous-unwind-tables")
        .flag_if_supported("-fno-unwind-tables")
        .warnings(true)
        .compile("libcgi_shim");
}
