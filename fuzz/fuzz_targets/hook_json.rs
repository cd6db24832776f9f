//! The disconnect hook's JSON: the event line jobd writes to the hook
//! program (its reply is its exit status; its stdout is never parsed).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    jobd::fuzzing::hook_event(data);
});
