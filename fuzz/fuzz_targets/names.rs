//! Node and group names, addresses, labels, catalog names, dependency lists
//! and node ids, a line each (`control_plane::fuzzing::names`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| control_plane::fuzzing::names(input));
