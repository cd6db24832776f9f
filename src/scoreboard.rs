//! The scoreboard: a fixed-size shared mapping of worker slots.
//!
//! Workers write their own slot with atomics; the supervisor and
//! `jobd status` read every slot. The layout is `#[repr(C)]` and versioned
//! by a magic string, so that another process (or another build) can read a
//! scoreboard file. Nothing here signals a process or trusts a pid: a pid read
//! from the scoreboard is information, never a target.
//!
//! Job fields are published seqlock-style: a worker writes the job's fields,
//! then its job id with `Release`; it clears the job id first when the job
//! ends. A reader that sees the same non-zero job id before and after
//! reading the fields has a consistent snapshot (job ids never repeat).

use std::fs::{File, OpenOptions};
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::atomic::{AtomicI32, AtomicU8, AtomicU32, AtomicU64, Ordering};

use crate::sys::SharedMap;

const MAGIC: u64 = u64::from_le_bytes(*b"JOBDSB01");
const HEADER_SIZE: usize = 512;
const SLOT_SIZE: usize = 256;

/// Upper bound on slots; `--max-children` is validated against it.
pub const MAX_SLOTS: usize = 10_000;

/// Errors opening or reading a scoreboard.
#[derive(Debug, thiserror::Error)]
pub enum ScoreboardError {
    /// The file could not be created, sized or mapped.
    #[error("failed to create scoreboard {path}")]
    Create {
        /// The path given.
        path: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The file could not be opened for reading.
    #[error("failed to open scoreboard {path}")]
    Open {
        /// The path given.
        path: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The file is not a jobd scoreboard.
    #[error("{path} is not a jobd scoreboard ({why})")]
    NotAScoreboard {
        /// The path given.
        path: String,
        /// What is wrong with it.
        why: String,
    },
    /// An anonymous mapping could not be made.
    #[error("failed to map an anonymous scoreboard")]
    Anonymous(#[source] io::Error),
}

/// What a slot is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SlotState {
    /// No worker.
    Empty = 0,
    /// Forked, not yet accepting.
    Starting = 1,
    /// Waiting for a client.
    Idle = 2,
    /// Running a job.
    Busy = 3,
    /// Finishing before exit (retired, reloading, stopping).
    Exiting = 4,
}

impl SlotState {
    fn from_u8(v: u8) -> SlotState {
        match v {
            1 => SlotState::Starting,
            2 => SlotState::Idle,
            3 => SlotState::Busy,
            4 => SlotState::Exiting,
            _ => SlotState::Empty,
        }
    }

    /// Lowercase name, as shown by `jobd status`.
    pub fn as_str(self) -> &'static str {
        match self {
            SlotState::Empty => "empty",
            SlotState::Starting => "starting",
            SlotState::Idle => "idle",
            SlotState::Busy => "busy",
            SlotState::Exiting => "exiting",
        }
    }
}

/// Job kinds recorded in a slot (how the supervisor cancels it).
pub mod job_kind {
    /// A handler program in its own process group.
    pub const HANDLER: u8 = 1;
    /// A Rust closure running in the worker itself.
    pub const CLOSURE: u8 = 2;
}

/// Job phases: `ENDING` is set before the worker closes the client socket,
/// so a scan that no longer sees the socket knows the job is ending.
pub mod job_phase {
    /// No job.
    pub const NONE: u8 = 0;
    /// The job runs.
    pub const RUNNING: u8 = 1;
    /// The job ended; its socket is being closed.
    pub const ENDING: u8 = 2;
}

/// A socket address stored as atomics.
#[repr(C)]
pub struct AtomicAddr {
    family: AtomicU32, // 4 or 6, 0 = none
    port: AtomicU32,
    ip: [AtomicU32; 4],
    scope: AtomicU32,
}

impl AtomicAddr {
    fn store(&self, addr: Option<SocketAddr>) {
        match addr {
            None => self.family.store(0, Ordering::Relaxed),
            Some(SocketAddr::V4(a)) => {
                self.ip[0].store(u32::from_be_bytes(a.ip().octets()), Ordering::Relaxed);
                self.port.store(a.port() as u32, Ordering::Relaxed);
                self.family.store(4, Ordering::Relaxed);
            }
            Some(SocketAddr::V6(a)) => {
                let o = a.ip().octets();
                for i in 0..4 {
                    let w =
                        u32::from_be_bytes([o[4 * i], o[4 * i + 1], o[4 * i + 2], o[4 * i + 3]]);
                    self.ip[i].store(w, Ordering::Relaxed);
                }
                self.port.store(a.port() as u32, Ordering::Relaxed);
                self.scope.store(a.scope_id(), Ordering::Relaxed);
                self.family.store(6, Ordering::Relaxed);
            }
        }
    }

    fn load(&self) -> Option<SocketAddr> {
        let port = self.port.load(Ordering::Relaxed) as u16;
        match self.family.load(Ordering::Relaxed) {
            4 => Some(SocketAddr::new(
                IpAddr::V4(Ipv4Addr::from(self.ip[0].load(Ordering::Relaxed))),
                port,
            )),
            6 => {
                let mut o = [0u8; 16];
                for i in 0..4 {
                    o[4 * i..4 * i + 4]
                        .copy_from_slice(&self.ip[i].load(Ordering::Relaxed).to_be_bytes());
                }
                Some(SocketAddr::V6(std::net::SocketAddrV6::new(
                    Ipv6Addr::from(o),
                    port,
                    0,
                    self.scope.load(Ordering::Relaxed),
                )))
            }
            _ => None,
        }
    }
}

/// The pool-wide header.
#[repr(C)]
pub struct Header {
    magic: AtomicU64,
    version: AtomicU32,
    nslots: AtomicU32,
    /// The supervisor's pid; 0 after a clean stop.
    pub supervisor_pid: AtomicI32,
    /// Configured prefork count.
    pub prefork: AtomicU32,
    /// Supervisor start, unix ms.
    pub started_unix_ms: AtomicU64,
    /// Source of job ids (never repeat within a run).
    pub next_job_id: AtomicU64,
    /// Jobs served (ended, whatever the outcome).
    pub jobs_served: AtomicU64,
    /// Jobs whose handler could not be started or that failed to run.
    pub jobs_failed: AtomicU64,
    /// Jobs cancelled because the client went away.
    pub cancelled_disconnect: AtomicU64,
    /// Jobs cancelled by timeout.
    pub cancelled_timeout: AtomicU64,
    /// Jobs cancelled by shutdown.
    pub cancelled_shutdown: AtomicU64,
    /// Clients that hung up before their job started.
    pub gone_before_start: AtomicU64,
    /// Workers forked since start.
    pub workers_spawned: AtomicU64,
    /// Current worker generation (bumped by reload).
    pub generation: AtomicU32,
    /// Times the pool hit max children.
    pub max_children_reached: AtomicU64,
    /// Configured max children.
    pub max_children: AtomicU32,
    /// Current minimum of workers (prefork, moved by SIGTTIN / SIGTTOU).
    pub min_workers: AtomicU32,
    /// Listen address.
    pub listen: AtomicAddr,
}

/// One worker slot.
#[repr(C)]
pub struct Slot {
    /// [`SlotState`] as a byte.
    state: AtomicU8,
    /// [`job_kind`].
    pub job_kind: AtomicU8,
    /// [`job_phase`].
    pub job_phase: AtomicU8,
    /// 1 while the worker watches its client's socket itself (the worker
    /// watch); the supervisor's full scan is then only a slower backstop.
    pub watching: AtomicU8,
    /// Worker pid (information only; never a signal target).
    pub pid: AtomicI32,
    /// Worker generation.
    pub generation: AtomicU32,
    /// The handler's process group (0 when none).
    pub job_pgid: AtomicI32,
    /// Current job id (0 when idle). Written last, cleared first.
    pub job_id: AtomicU64,
    /// Client socket cookie (`SO_COOKIE`).
    pub cookie: AtomicU64,
    /// Client socket inode.
    pub inode: AtomicU64,
    /// Job start, unix ms (for display).
    pub job_start_unix_ms: AtomicU64,
    /// Job start, `CLOCK_MONOTONIC` ns (for comparisons across processes).
    pub job_start_mono_ns: AtomicU64,
    /// When the worker saw its client hang up (monotonic ns; 0 = not seen).
    pub hangup_mono_ns: AtomicU64,
    /// The worker's watch verdict: 1 FIN, 2 reset/error.
    pub hangup_kind: AtomicU32,
    /// Cancel request: the job id the supervisor asks to cancel.
    pub cancel_req: AtomicU64,
    /// Cancel reason code for `cancel_req`.
    pub cancel_reason: AtomicU32,
    /// Kill request for a closure job that ignored its cancellation: the
    /// worker kills itself only if this names the job it runs.
    pub kill_req: AtomicU64,
    _pad2: AtomicU32,
    /// Jobs this worker served.
    pub jobs_served: AtomicU64,
    /// Worker start, unix ms.
    pub worker_start_unix_ms: AtomicU64,
    /// Since when the worker is idle (monotonic ns; 0 when busy).
    pub idle_since_mono_ns: AtomicU64,
    /// Client address.
    pub peer: AtomicAddr,
    /// Our address of the client connection.
    pub local: AtomicAddr,
}

const _: () = assert!(std::mem::size_of::<Header>() <= HEADER_SIZE);
const _: () = assert!(std::mem::size_of::<Slot>() <= SLOT_SIZE);

/// A snapshot of one slot's job, read consistently.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JobView {
    /// Job id.
    pub job_id: u64,
    /// [`job_kind`].
    pub kind: u8,
    /// Handler process group (0 for closures).
    pub pgid: i32,
    /// Socket cookie.
    pub cookie: u64,
    /// Socket inode.
    pub inode: u64,
    /// Client address.
    pub peer: Option<SocketAddr>,
    /// Local address.
    pub local: Option<SocketAddr>,
    /// Start, unix ms.
    pub start_unix_ms: u64,
    /// Start, monotonic ns.
    pub start_mono_ns: u64,
}

impl Slot {
    /// The slot's state.
    pub fn state(&self) -> SlotState {
        SlotState::from_u8(self.state.load(Ordering::Acquire))
    }

    /// Sets the slot's state.
    pub fn set_state(&self, s: SlotState) {
        if s == SlotState::Idle {
            self.idle_since_mono_ns
                .store(crate::sys::monotonic_ns(), Ordering::Relaxed);
        } else {
            self.idle_since_mono_ns.store(0, Ordering::Relaxed);
        }
        self.state.store(s as u8, Ordering::Release);
    }

    /// Resets the slot for a freshly forked worker.
    pub fn claim(&self, pid: i32, generation: u32) {
        self.job_id.store(0, Ordering::Release);
        self.job_phase.store(job_phase::NONE, Ordering::Relaxed);
        self.job_pgid.store(0, Ordering::Relaxed);
        self.cancel_req.store(0, Ordering::Relaxed);
        self.jobs_served.store(0, Ordering::Relaxed);
        self.pid.store(pid, Ordering::Relaxed);
        self.generation.store(generation, Ordering::Relaxed);
        self.worker_start_unix_ms
            .store(unix_ms(), Ordering::Relaxed);
        self.set_state(SlotState::Starting);
    }

    /// Marks the slot empty (its worker was reaped).
    pub fn release(&self) {
        self.job_id.store(0, Ordering::Release);
        self.job_phase.store(job_phase::NONE, Ordering::Relaxed);
        self.pid.store(0, Ordering::Relaxed);
        self.set_state(SlotState::Empty);
    }

    /// Publishes a new job (worker side). `job_id` is stored last. The
    /// worker sets `watching` before, so that no scan sees the job
    /// unwatched for a moment.
    pub fn begin_job(&self, job: &JobView) {
        self.job_id.store(0, Ordering::Release);
        self.job_kind.store(job.kind, Ordering::Relaxed);
        self.job_pgid.store(job.pgid, Ordering::Relaxed);
        self.cookie.store(job.cookie, Ordering::Relaxed);
        self.inode.store(job.inode, Ordering::Relaxed);
        self.peer.store(job.peer);
        self.local.store(job.local);
        self.job_start_unix_ms
            .store(job.start_unix_ms, Ordering::Relaxed);
        self.job_start_mono_ns
            .store(job.start_mono_ns, Ordering::Relaxed);
        self.hangup_mono_ns.store(0, Ordering::Relaxed);
        self.hangup_kind.store(0, Ordering::Relaxed);
        self.job_phase.store(job_phase::RUNNING, Ordering::Relaxed);
        self.job_id.store(job.job_id, Ordering::Release);
        self.set_state(SlotState::Busy);
    }

    /// Whether `kill_req` names the job this slot runs now (async-signal-safe:
    /// atomics only).
    pub fn closure_job_to_kill(&self) -> bool {
        let k = self.kill_req.load(Ordering::Acquire);
        k != 0 && k == self.job_id.load(Ordering::Acquire)
    }

    /// Marks the job as ending (before its socket is closed).
    pub fn job_ending(&self) {
        self.job_phase.store(job_phase::ENDING, Ordering::SeqCst);
    }

    /// Clears the job (worker side) and counts it served.
    pub fn end_job(&self) {
        self.job_id.store(0, Ordering::Release);
        self.watching.store(0, Ordering::Relaxed);
        self.job_pgid.store(0, Ordering::Relaxed);
        self.job_phase.store(job_phase::NONE, Ordering::Release);
        self.jobs_served.fetch_add(1, Ordering::Relaxed);
    }

    /// A consistent snapshot of the running job, or None when idle.
    pub fn job(&self) -> Option<JobView> {
        for _ in 0..16 {
            let id = self.job_id.load(Ordering::Acquire);
            if id == 0 {
                return None;
            }
            let view = JobView {
                job_id: id,
                kind: self.job_kind.load(Ordering::Relaxed),
                pgid: self.job_pgid.load(Ordering::Relaxed),
                cookie: self.cookie.load(Ordering::Relaxed),
                inode: self.inode.load(Ordering::Relaxed),
                peer: self.peer.load(),
                local: self.local.load(),
                start_unix_ms: self.job_start_unix_ms.load(Ordering::Relaxed),
                start_mono_ns: self.job_start_mono_ns.load(Ordering::Relaxed),
            };
            std::sync::atomic::fence(Ordering::Acquire);
            if self.job_id.load(Ordering::Relaxed) == id {
                return Some(view);
            }
        }
        None
    }
}

/// A mapped scoreboard.
pub struct Scoreboard {
    map: SharedMap,
    nslots: usize,
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Current time, unix ms.
pub fn now_unix_ms() -> u64 {
    unix_ms()
}

fn size_for(nslots: usize) -> usize {
    HEADER_SIZE + nslots * SLOT_SIZE
}

impl Scoreboard {
    /// A new anonymous scoreboard of `nslots` slots (inherited by forks).
    pub fn anonymous(nslots: usize) -> Result<Scoreboard, ScoreboardError> {
        let map = SharedMap::anonymous(size_for(nslots)).map_err(ScoreboardError::Anonymous)?;
        let sb = Scoreboard { map, nslots };
        sb.init();
        Ok(sb)
    }

    /// Creates (or truncates) a scoreboard file, mode 0640, without
    /// following a symlink at `path`.
    pub fn create(path: &Path, nslots: usize) -> Result<Scoreboard, ScoreboardError> {
        let err = |source| ScoreboardError::Create {
            path: path.display().to_string(),
            source,
        };
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o640)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(path)
            .map_err(err)?;
        // The mode is applied only on creation; enforce it on reuse too.
        use std::os::unix::fs::PermissionsExt;
        file.set_permissions(std::fs::Permissions::from_mode(0o640))
            .map_err(err)?;
        file.set_len(size_for(nslots) as u64).map_err(err)?;
        let map = SharedMap::file(&file, size_for(nslots), true).map_err(err)?;
        let sb = Scoreboard { map, nslots };
        sb.init();
        Ok(sb)
    }

    /// Opens an existing scoreboard file read-only, checking that it is one.
    pub fn open_read(path: &Path) -> Result<Scoreboard, ScoreboardError> {
        let p = path.display().to_string();
        let file = File::open(path).map_err(|source| ScoreboardError::Open {
            path: p.clone(),
            source,
        })?;
        let not = |why: &str| ScoreboardError::NotAScoreboard {
            path: p.clone(),
            why: why.into(),
        };
        let meta = file.metadata().map_err(|source| ScoreboardError::Open {
            path: p.clone(),
            source,
        })?;
        if !meta.is_file() {
            return Err(not("not a regular file"));
        }
        let len = meta.len() as usize;
        if len < HEADER_SIZE {
            return Err(not("too short"));
        }
        let head =
            SharedMap::file(&file, HEADER_SIZE, false).map_err(|source| ScoreboardError::Open {
                path: p.clone(),
                source,
            })?;
        let h: &Header = head.get(0);
        if h.magic.load(Ordering::Acquire) != MAGIC {
            return Err(not("bad magic"));
        }
        let nslots = h.nslots.load(Ordering::Relaxed) as usize;
        if nslots == 0 || nslots > MAX_SLOTS || len < size_for(nslots) {
            return Err(not("bad slot count or size"));
        }
        drop(head);
        let map = SharedMap::file(&file, size_for(nslots), false).map_err(|source| {
            ScoreboardError::Open {
                path: p.clone(),
                source,
            }
        })?;
        Ok(Scoreboard { map, nslots })
    }

    fn init(&self) {
        let h = self.header();
        h.version.store(1, Ordering::Relaxed);
        h.nslots.store(self.nslots as u32, Ordering::Relaxed);
        h.next_job_id.store(1, Ordering::Relaxed);
        h.started_unix_ms.store(unix_ms(), Ordering::Relaxed);
        h.magic.store(MAGIC, Ordering::Release);
    }

    /// Records the listen address.
    pub fn set_listen(&self, addr: SocketAddr) {
        self.header().listen.store(Some(addr));
    }

    /// The listen address recorded by the supervisor.
    pub fn listen(&self) -> Option<SocketAddr> {
        self.header().listen.load()
    }

    /// The header.
    pub fn header(&self) -> &Header {
        self.map.get(0)
    }

    /// Number of slots.
    pub fn len(&self) -> usize {
        self.nslots
    }

    /// Whether there are no slots (never for a valid scoreboard).
    pub fn is_empty(&self) -> bool {
        self.nslots == 0
    }

    /// Slot `i`. Panics when out of range (a programming error).
    pub fn slot(&self, i: usize) -> &Slot {
        assert!(i < self.nslots, "slot {i} out of range");
        self.map.get(HEADER_SIZE + i * SLOT_SIZE)
    }

    /// Iterates over all slots with their index.
    pub fn slots(&self) -> impl Iterator<Item = (usize, &Slot)> {
        (0..self.nslots).map(|i| (i, self.slot(i)))
    }

    /// Takes a fresh job id.
    pub fn next_job_id(&self) -> u64 {
        self.header().next_job_id.fetch_add(1, Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_snapshot_roundtrip() {
        let sb = Scoreboard::anonymous(2).unwrap();
        let s = sb.slot(1);
        assert_eq!(s.job(), None);
        let v = JobView {
            job_id: 7,
            kind: job_kind::HANDLER,
            pgid: 1234,
            cookie: 99,
            inode: 42,
            peer: Some("[::1]:5555".parse().unwrap()),
            local: Some("127.0.0.1:7000".parse().unwrap()),
            start_unix_ms: 1,
            start_mono_ns: 2,
        };
        s.begin_job(&v);
        assert_eq!(s.job(), Some(v));
        assert_eq!(s.state(), SlotState::Busy);
        s.end_job();
        assert_eq!(s.job(), None);
        assert_eq!(s.jobs_served.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn file_roundtrip_and_rejects_garbage() {
        let dir = std::env::temp_dir().join(format!("jobd-sb-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("sb");
        let sb = Scoreboard::create(&p, 3).unwrap();
        sb.slot(2).claim(4242, 1);
        let r = Scoreboard::open_read(&p).unwrap();
        assert_eq!(r.len(), 3);
        assert_eq!(r.slot(2).pid.load(Ordering::Relaxed), 4242);
        let g = dir.join("garbage");
        std::fs::write(&g, vec![7u8; 4096]).unwrap();
        assert!(matches!(
            Scoreboard::open_read(&g),
            Err(ScoreboardError::NotAScoreboard { .. })
        ));
        assert!(matches!(
            Scoreboard::open_read(&dir.join("missing")),
            Err(ScoreboardError::Open { .. })
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
