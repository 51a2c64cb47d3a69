//! gRPC-Web calls to the control plane's real routes, in memory
//! (`control_plane::fuzzing::GrpcWeb`). The routes are set up once, before
//! fuzzing starts, over a store in a temporary folder (under `TMPDIR`), and
//! every call sees the farm the calls before it made: a finding may need
//! the inputs before it to reproduce.
#![no_main]

use std::{ffi::c_char, sync::LazyLock};

use control_plane::fuzzing::{GrpcWeb, GrpcWebCall};
use libfuzzer_sys::fuzz_target;

static FARM: LazyLock<GrpcWeb> =
    LazyLock::new(|| GrpcWeb::new().unwrap_or_else(|err| panic!("the routes do not start: {err}")));

fuzz_target!(
    init: LazyLock::force(&FARM),
    |call: GrpcWebCall| {
        FARM.call(&call);
    }
);

/// Leaks LeakSanitizer passes over. The dashboard's router leaks its
/// options on purpose, once, when the routes are built (memory-serve's
/// `into_router`: its assets are served from `'static` memory); LSan finds
/// that while checking the first input that allocates more than it frees.
#[unsafe(no_mangle)]
pub extern "C" fn __lsan_default_suppressions() -> *const c_char {
    c"leak:memory_serve::MemoryServe>::into_router".as_ptr()
}
