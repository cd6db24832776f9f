//! The PROXY protocol (v1 and v2) header parser, `proxy::parse`, with
//! every `--proxy-protocol` mode.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    jobd::fuzzing::proxy_header(data);
});
