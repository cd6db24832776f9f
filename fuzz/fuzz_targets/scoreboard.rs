//! A scoreboard file with any content and size, read as `jobd status`
//! reads it (`Scoreboard::open_read`, `status::snapshot`, both renderings).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    jobd::fuzzing::scoreboard(data);
});
