//! A configuration scope (the first line) and document (the rest, JSON), as
//! a write checks them (`control_plane::fuzzing::config`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| control_plane::fuzzing::config(input));
