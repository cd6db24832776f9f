//! Test doubles for the watch: a fake [`Workers`] boundary (no process is
//! touched) and helpers that publish jobs in an anonymous scoreboard.

use std::cell::RefCell;
use std::collections::HashMap;

use nix::unistd::Pid;

use super::workers::Workers;
use crate::scoreboard::{JobKind, JobView, Scoreboard};

/// Workers that exist only in a table: `pid` answers from it, `poke`
/// records the slot, `holds` says yes for every slot it knows.
pub(crate) struct FakeWorkers {
    pids: HashMap<usize, Pid>,
    pokes: RefCell<Vec<usize>>,
    kills: RefCell<Vec<usize>>,
    /// `holds` fails (as out of descriptors) while set.
    pub(crate) holds_fails: std::cell::Cell<bool>,
}

impl FakeWorkers {
    /// Workers at these `(slot, pid)`.
    pub(crate) fn with(slots: &[(usize, i32)]) -> FakeWorkers {
        FakeWorkers {
            pids: slots.iter().map(|&(s, p)| (s, Pid::from_raw(p))).collect(),
            pokes: RefCell::new(Vec::new()),
            kills: RefCell::new(Vec::new()),
            holds_fails: std::cell::Cell::new(false),
        }
    }

    /// The slots whose worker was killed, in order.
    pub(crate) fn kills(&self) -> Vec<usize> {
        self.kills.borrow().clone()
    }

    /// The slots poked so far, in order.
    pub(crate) fn pokes(&self) -> Vec<usize> {
        self.pokes.borrow().clone()
    }
}

impl Workers for FakeWorkers {
    fn pid(&self, slot: usize) -> Option<Pid> {
        self.pids.get(&slot).copied()
    }

    fn poke(&self, slot: usize) -> std::io::Result<()> {
        self.pokes.borrow_mut().push(slot);
        Ok(())
    }

    fn kill(&self, slot: usize) -> std::io::Result<()> {
        self.kills.borrow_mut().push(slot);
        Ok(())
    }

    fn holds(&self, slot: usize, _inode: u64) -> std::io::Result<bool> {
        if self.holds_fails.get() {
            return Err(std::io::Error::from_raw_os_error(libc::EMFILE));
        }
        Ok(self.pids.contains_key(&slot))
    }
}

/// A job record with this id and kind, started just now.
pub(crate) fn job(job_id: u64, kind: JobKind) -> JobView {
    JobView {
        job_id,
        kind,
        pgid: 0,
        cookie: 1000 + job_id,
        inode: 2000 + job_id,
        peer: Some("127.0.0.1:40000".parse().unwrap()),
        local: Some("127.0.0.1:7000".parse().unwrap()),
        client: None,
        start_unix_ms: crate::scoreboard::now_unix_ms(),
        start_mono_ns: crate::sys::monotonic_ns(),
    }
}

/// Publishes `job` in `slot` as its worker would, and returns it.
pub(crate) fn running(sb: &Scoreboard, slot: usize, job: JobView) -> JobView {
    sb.slot(slot).begin_job(&job, true);
    job
}
