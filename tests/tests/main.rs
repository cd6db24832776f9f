//! The integration tests: one test binary that starts the real `jobd`
//! binary and drives it with real clients, one module per topic.

mod util;

mod accuracy;
mod bad_input;
mod chaos;
mod containment;
mod core;
mod ctl;
mod daemon;
mod disconnect;
mod examples;
mod haproxy;
mod monitoring;
mod pool;
mod scaleout;
mod survival;
