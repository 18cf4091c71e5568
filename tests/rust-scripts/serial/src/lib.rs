//! Like sdktest's /overlap, without `thread_safe`: the module must never
//! run two of its calls at once in one process.
include!("../../sdktest/src/overlap.rs");

fn process(_req: &libcgi::Request, resp: &mut libcgi::Response) -> libcgi::Result<()> {
    overlap(resp)
}

libcgi::script!(process);
