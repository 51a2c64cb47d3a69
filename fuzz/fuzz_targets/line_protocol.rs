//! One line of the catalog's protocol, as the line server reads it
//! (`control_plane::fuzzing::line_protocol`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|line: &[u8]| control_plane::fuzzing::line_protocol(line));
