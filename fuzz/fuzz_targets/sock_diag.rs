//! One NETLINK_SOCK_DIAG reply datagram through jobd's message walker
//! (`walk_datagram`: netlink headers, NLMSG_ERROR / NLMSG_DONE codes,
//! `inet_diag_msg` to `SockEntry`), as a dump and as a lookup.
#![no_main]

use jobd_fuzz::detect::sockdiag::fuzz_walk_datagram;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The sequence number of the first message, so that the walker does not
    // skip everything as stale; and one that matches nothing.
    let seq = data
        .get(8..12)
        .map(|b| u32::from_ne_bytes(b.try_into().unwrap()))
        .unwrap_or(0);
    for (seq, dump) in [(seq, true), (seq, false), (seq.wrapping_add(1), true)] {
        let mut out = Vec::new();
        let r = fuzz_walk_datagram(data, seq, dump, &mut out);
        if let Err(e) = &r {
            let _ = e.to_string();
        }
        if !dump {
            assert!(out.len() <= 1, "a lookup takes one socket");
        }
    }
});
