//! `jobd ctl`: controls a running jobd through its pid file.
//! (Being written: see the ctl work item.)

use crate::cli::CtlArgs;

/// Runs one `jobd ctl` verb; returns the exit code.
pub fn run(args: &CtlArgs) -> i32 {
    eprintln!("jobd ctl {:?}: not available yet", args.verb);
    2
}
