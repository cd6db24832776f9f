//! `parse_duration`, `parse_job_limit` and (through it) `parse_size`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    jobd::fuzzing::durations(data);
});
