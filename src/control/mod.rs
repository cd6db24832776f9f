//! The short-lived processes that talk to a running jobd from outside:
//! `jobd ctl` (through the pid file) and `jobd status` (through the
//! scoreboard file).
//!
//! Neither forks workers nor writes the scoreboard; `ctl` signals only a
//! process it has identified as the jobd of the pid file, through a pidfd.

pub mod ctl;
pub mod openmetrics;
pub mod status;
pub mod top;
