//! `/proc/net/tcp` and `/proc/net/tcp6` text: the procfs crate's parser as
//! jobd calls it, then jobd's filter (port and state) and dedup.
#![no_main]

use jobd::detect::{JOB_SOCKET_STATES, SockEntry};
use jobd_fuzz::detect::procfs::fuzz_filter;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some(entries) = jobd::fuzzing::proc_net_tcp(data) else {
        return;
    };
    let mut out: Vec<SockEntry> = Vec::new();
    for e in entries.iter().take(4) {
        let port = e.local_address.port();
        for states in [JOB_SOCKET_STATES, u32::MAX] {
            let before = out.len();
            fuzz_filter(&entries, port, states, &mut out);
            assert!(out[before..].iter().all(|s| s.local.port() == port));
            assert!(out[before..].iter().all(|s| states & (1 << s.state) != 0));
        }
    }
});
