//! Helpers of the fuzz targets.
//!
//! `jobd::fuzzing` wraps the parsers that are reachable inside the jobd
//! crate. The sock_diag reply walker and the procfs filter are private to
//! their modules, so their files are compiled here, from jobd's own source
//! (build.rs turns only the module doc into plain comments, so line numbers
//! match src/), inside a `detect` module that gives them jobd's real
//! `super::` items. The wrappers below only call them.

#![allow(dead_code, unused_imports, clippy::all)]

pub mod detect {
    pub use jobd::detect::{
        DetectError, JOB_SOCKET_STATES, SockEntry, SocketSource, state_mask, tcp_state,
    };

    /// `src/detect/sockdiag.rs`.
    pub mod sockdiag {
        include!(concat!(env!("OUT_DIR"), "/sockdiag.rs"));

        /// One received datagram through `walk_datagram`, as
        /// `SockDiag::recv_datagram` hands it over. `Ok(true)`: the reply
        /// ended (`Flow::Done`).
        pub fn fuzz_walk_datagram(
            buf: &[u8],
            seq: u32,
            dump: bool,
            out: &mut Vec<SockEntry>,
        ) -> Result<bool, DetectError> {
            walk_datagram(buf, seq, dump, &mut |e| out.push(e)).map(|f| f == Flow::Done)
        }
    }

    /// `src/detect/procfs.rs`.
    pub mod procfs {
        include!(concat!(env!("OUT_DIR"), "/procfs.rs"));

        /// What `ProcNet::dump` does with one parsed table.
        pub fn fuzz_filter(
            entries: &[TcpNetEntry],
            port: u16,
            states: u32,
            out: &mut Vec<SockEntry>,
        ) {
            let start = out.len();
            push_matching(entries, port, states, out);
            dedup_tail(out, start);
        }
    }
}
