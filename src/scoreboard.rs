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
//!
//! The supervisor↔worker protocol is typed here and nowhere else: no
//! caller touches a slot's atomics. The supervisor asks with
//! [`Slot::request_cancel`] and [`Slot::request_kill`] and checks
//! [`Slot::still_runs`] before any decision; the worker publishes with
//! [`Slot::begin_job`], reports with [`Slot::report_hangup`], and reads its
//! requests with [`Slot::cancel_requested`] and [`Slot::kill_requested`].

use std::fs::File;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::AsFd;
use std::path::Path;
use std::sync::atomic::{AtomicI32, AtomicU8, AtomicU32, AtomicU64, Ordering};

use crate::sys::SharedMap;

const MAGIC: u64 = u64::from_le_bytes(*b"JOBDSB02");
const HEADER_SIZE: usize = 4096;
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
    /// jobd refuses the path: a symlink, not a regular file, another
    /// user's file.
    #[error("scoreboard {path} {why}")]
    Refused {
        /// The path given.
        path: String,
        /// What is wrong with it.
        why: crate::sys::files::Refused,
    },
    /// Another jobd holds the scoreboard's lock.
    #[error("scoreboard {path} is in use by another jobd{}", .pid.map(|p| format!(" (pid {p})")).unwrap_or_default())]
    InUse {
        /// The path given.
        path: String,
        /// The pid the file names as its supervisor, when it names one.
        pid: Option<i32>,
    },
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

/// What a slot's job is, which decides how it is cancelled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum JobKind {
    /// A handler program in its own process group, killed by its worker.
    Handler = 1,
    /// A Rust closure running in the worker itself: it may stop when asked,
    /// or its worker is killed.
    Closure = 2,
}

impl JobKind {
    fn from_u8(v: u8) -> JobKind {
        if v == JobKind::Closure as u8 {
            JobKind::Closure
        } else {
            JobKind::Handler
        }
    }
}

/// Where a slot's job is. `Ending` is set before the worker closes the
/// client socket, so that a scan that no longer sees the socket knows the
/// job is ending, not reset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum JobPhase {
    /// No job.
    None = 0,
    /// The job runs.
    Running = 1,
    /// The job ended; its socket is being closed.
    Ending = 2,
    /// The worker wrote the job's record; the slot is about to be cleared
    /// (a worker that dies now must not have the job recorded again).
    Recorded = 3,
}

impl JobPhase {
    fn from_u8(v: u8) -> JobPhase {
        match v {
            1 => JobPhase::Running,
            2 => JobPhase::Ending,
            3 => JobPhase::Recorded,
            _ => JobPhase::None,
        }
    }
}

/// Why a job was asked to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CancelReason {
    /// The client closed (FIN).
    ClientClosed = 1,
    /// The client reset the connection, or its socket vanished.
    ClientReset = 2,
    /// `--job-timeout`.
    Timeout = 3,
    /// SIGINT, or the grace period of SIGTERM ran out.
    Shutdown = 4,
    /// The client stopped acknowledging data (TCP_USER_TIMEOUT or
    /// keepalive gave up on it).
    ClientUnresponsive = 5,
}

impl CancelReason {
    fn from_u32(v: u32) -> Option<CancelReason> {
        Some(match v {
            1 => CancelReason::ClientClosed,
            2 => CancelReason::ClientReset,
            3 => CancelReason::Timeout,
            4 => CancelReason::Shutdown,
            5 => CancelReason::ClientUnresponsive,
            _ => return None,
        })
    }

    /// The name used in logs.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            CancelReason::ClientClosed => "client-closed",
            CancelReason::ClientReset => "client-reset",
            CancelReason::Timeout => "timeout",
            CancelReason::Shutdown => "shutdown",
            CancelReason::ClientUnresponsive => "client-unresponsive",
        }
    }
}

/// Who saw the disconnect behind a cancel request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SeenBy {
    /// Not a disconnect (a timeout).
    Nobody = 0,
    /// The worker's poll of its own socket.
    WorkerWatch = 1,
    /// The supervisor's periodic scan.
    Scan = 2,
}

impl SeenBy {
    fn from_u8(v: u8) -> SeenBy {
        match v {
            1 => SeenBy::WorkerWatch,
            2 => SeenBy::Scan,
            _ => SeenBy::Nobody,
        }
    }

    /// The name used in logs.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            SeenBy::Nobody => "-",
            SeenBy::WorkerWatch => "worker-watch",
            SeenBy::Scan => "scan",
        }
    }
}

/// Who decided a cancel request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum VerdictBy {
    /// `--on-disconnect`.
    Policy = 1,
    /// A Rust `on_client_disconnect` callback.
    Callback = 2,
    /// The `--disconnect-hook` program.
    HookProgram = 3,
    /// `--job-timeout`.
    Timeout = 4,
    /// jobd is stopping (SIGINT, or the end of SIGTERM's grace period).
    Stop = 5,
}

impl VerdictBy {
    fn from_u8(v: u8) -> VerdictBy {
        match v {
            2 => VerdictBy::Callback,
            3 => VerdictBy::HookProgram,
            4 => VerdictBy::Timeout,
            5 => VerdictBy::Stop,
            _ => VerdictBy::Policy,
        }
    }

    /// The name used in logs.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            VerdictBy::Policy => "policy",
            VerdictBy::Callback => "callback",
            VerdictBy::HookProgram => "hook-program",
            VerdictBy::Timeout => "timeout",
            VerdictBy::Stop => "stop",
        }
    }
}

/// A cancel request as the supervisor writes it and the worker reads it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct CancelRequest {
    /// Why.
    pub(crate) reason: CancelReason,
    /// Who decided.
    pub(crate) by: VerdictBy,
    /// Who saw the disconnect.
    pub(crate) seen_by: SeenBy,
    /// From the hang-up to its detection, in microseconds (an upper bound
    /// when the scan saw it).
    pub(crate) seen_after_us: u32,
}

impl CancelRequest {
    /// A request for `reason` without a disconnect behind it.
    pub(crate) fn plain(reason: CancelReason, by: VerdictBy) -> CancelRequest {
        CancelRequest {
            reason,
            by,
            seen_by: SeenBy::Nobody,
            seen_after_us: 0,
        }
    }

    fn pack(&self) -> u32 {
        self.reason as u32 | (self.seen_by as u32) << 8 | (self.by as u32) << 16
    }

    fn unpack(word: u32, seen_after_us: u32) -> CancelRequest {
        CancelRequest {
            // A request names a reason; an unknown number reads as a shutdown.
            reason: CancelReason::from_u32(word & 0xff).unwrap_or(CancelReason::Shutdown),
            seen_by: SeenBy::from_u8((word >> 8) as u8),
            by: VerdictBy::from_u8((word >> 16) as u8),
            seen_after_us,
        }
    }
}

/// What a worker saw its client do while it watched the socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Hangup {
    /// POLLRDHUP: a FIN (close or half-close).
    Fin = 1,
    /// POLLHUP or POLLERR: a reset.
    Reset = 2,
    /// POLLERR with ETIMEDOUT: the client stopped acknowledging
    /// (TCP_USER_TIMEOUT or keepalive).
    Unresponsive = 3,
}

/// The pool-wide counters of the header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Counter {
    /// Jobs ended, whatever the outcome.
    JobsServed,
    /// Jobs whose handler could not be started, that failed, or that were
    /// lost with their worker.
    JobsFailed,
    /// Jobs cancelled because the client went away.
    CancelledDisconnect,
    /// Jobs cancelled by `--job-timeout`.
    CancelledTimeout,
    /// Jobs cancelled by shutdown.
    CancelledShutdown,
    /// Clients that hung up before their job started.
    GoneBeforeStart,
    /// Workers forked since start.
    WorkersSpawned,
    /// Times the pool hit max children.
    MaxChildrenReached,
    /// Jobs cancelled because the client closed (FIN).
    CancelledClientClosed,
    /// Jobs cancelled because the client reset the connection.
    CancelledClientReset,
    /// Jobs cancelled because the client stopped acknowledging.
    CancelledClientUnresponsive,
    /// User CPU time of ended jobs, ms (added, not counted).
    CpuUserMs,
    /// System CPU time of ended jobs, ms (added, not counted).
    CpuSysMs,
    /// Failures of the disconnect detection path (a scan, a check of a
    /// worker's descriptors) that the next scan retries.
    DetectFailures,
    /// Failed `accept` calls in workers (EMFILE, ENOBUFS...).
    AcceptFailures,
    /// Connections closed at once by `--max-per-source`.
    PerSourceRefused,
    /// Disconnect scans done (the full socket-table reads).
    Scans,
    /// Their total duration, µs (added, not counted).
    ScanUs,
}
/// The upper bounds of the latency histograms' buckets, µs (the last one
/// is +Inf).
pub(crate) const LATENCY_BUCKETS_US: [u64; 10] = [
    1_000, 2_000, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000,
];

/// The upper bounds of the job duration histograms' buckets, µs (the
/// last one is +Inf): 10 ms to an hour.
pub(crate) const DURATION_BUCKETS_US: [u64; 10] = [
    10_000,
    100_000,
    500_000,
    1_000_000,
    5_000_000,
    10_000_000,
    30_000_000,
    60_000_000,
    300_000_000,
    3_600_000_000,
];

/// How many hang-up reports the ring of [`Scoreboard::note_hangup`] holds
/// between two reads by the supervisor (more: it walks every slot).
pub(crate) const HANGUP_RING: usize = 64;

/// A hang-up ring entry: sequence number `k` + 1 above slot `slot` (slots
/// are fewer than 2^16).
const _: () = assert!(MAX_SLOTS < 1 << 16);
fn hangup_entry(k: u64, slot: usize) -> u64 {
    (k.wrapping_add(1) << 16) | (slot as u64 & 0xffff)
}

/// How many recent cancellations the scoreboard keeps.
pub(crate) const RECENT_CANCELS: usize = 8;

crate::sys::shared_struct! {
    /// One recent cancellation (for `/status`), written by the worker that
    /// carried it out; display only.
    pub(crate) struct RecentCancel {
        /// 0: an empty entry (written last).
        job_id: AtomicU64,
        at_unix_ms: AtomicU64,
        reason: AtomicU32,
        seen_by: AtomicU32,
        seen_after_us: AtomicU64,
        gone_us: AtomicU64,
        peer: AtomicAddr,
    }
}

/// A recent cancellation as read back.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct RecentCancelView {
    pub(crate) job_id: u64,
    pub(crate) at_unix_ms: u64,
    pub(crate) reason: &'static str,
    pub(crate) seen_by: &'static str,
    pub(crate) seen_after_us: Option<u64>,
    pub(crate) gone_us: Option<u64>,
    pub(crate) peer: Option<SocketAddr>,
}

crate::sys::shared_struct! {
    /// A histogram: a count per bucket of [`LATENCY_BUCKETS_US`] or
    /// [`DURATION_BUCKETS_US`] (and one above), their sum and their count.
    pub(crate) struct Hist {
        buckets: [AtomicU64; 11],
        sum_us: AtomicU64,
        count: AtomicU64,
    }
}

/// Which latency histogram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Latency {
    /// From the hang-up to its detection, seen by the worker watch.
    DetectWatch = 0,
    /// The same, seen by the supervisor's scan.
    DetectScan = 1,
    /// From the hang-up to the job's whole tree gone, worker watch.
    GoneWatch = 2,
    /// The same, scan.
    GoneScan = 3,
}

impl Hist {
    fn observe(&self, bounds: &[u64; 10], us: u64) {
        let i = bounds.iter().position(|&b| us <= b).unwrap_or(bounds.len());
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        // Saturating: a sum that wrapped would go backwards.
        let _ = self
            .sum_us
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |s| {
                Some(s.saturating_add(us))
            });
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    /// The counts per bucket (not cumulative), the sum (µs) and the count.
    pub(crate) fn read(&self) -> ([u64; 11], u64, u64) {
        let mut b = [0u64; 11];
        for (i, v) in b.iter_mut().enumerate() {
            *v = self.buckets[i].load(Ordering::Relaxed);
        }
        (
            b,
            self.sum_us.load(Ordering::Relaxed),
            self.count.load(Ordering::Relaxed),
        )
    }
}

crate::sys::shared_struct! {
    /// A socket address stored as atomics.
    pub(crate) struct AtomicAddr {
        /// 4 or 6, 0 = none.
        family: AtomicU32,
        port: AtomicU32,
        ip: [AtomicU32; 4],
        scope: AtomicU32,
    }
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

crate::sys::shared_struct! {
    /// The pool-wide header.
    pub(crate) struct Header {
        magic: AtomicU64,
        version: AtomicU32,
        nslots: AtomicU32,
        /// The supervisor's pid; 0 after a clean stop.
        supervisor_pid: AtomicI32,
        /// Configured prefork count.
        prefork: AtomicU32,
        /// Supervisor start, unix ms.
        started_unix_ms: AtomicU64,
        /// Source of job ids (never repeat within a run).
        next_job_id: AtomicU64,
        jobs_served: AtomicU64,
        jobs_failed: AtomicU64,
        cancelled_disconnect: AtomicU64,
        cancelled_timeout: AtomicU64,
        cancelled_shutdown: AtomicU64,
        gone_before_start: AtomicU64,
        workers_spawned: AtomicU64,
        /// Current worker generation (bumped by reload).
        generation: AtomicU32,
        max_children_reached: AtomicU64,
        /// Configured max children.
        max_children: AtomicU32,
        /// Current minimum of workers (prefork, moved by SIGTTIN / SIGTTOU).
        min_workers: AtomicU32,
        /// Listen address.
        listen: AtomicAddr,
        cancelled_client_closed: AtomicU64,
        cancelled_client_reset: AtomicU64,
        cancelled_client_unresponsive: AtomicU64,
        /// 1: subreaper, 2: cgroup, 3: process group only.
        containment: AtomicU32,
        cpu_user_ms: AtomicU64,
        cpu_sys_ms: AtomicU64,
        detect_failures: AtomicU64,
        accept_failures: AtomicU64,
        per_source_refused: AtomicU64,
        /// 1 while connections are being refused by `--max-per-source`
        /// (one log line per episode, whichever worker refuses).
        per_source_episode: AtomicU32,
        /// Cancellation latencies, by [`Latency`].
        latency: [Hist; 4],
        /// Job durations, by [`Outcome`](crate::job_end::Outcome) (done,
        /// failed, cancelled).
        durations: [Hist; 3],
        scans: AtomicU64,
        scan_us: AtomicU64,
        /// The largest peak memory of a job that ended, KiB.
        max_rss_kib: AtomicU64,
        /// Disconnect verdicts, [keep, cancel] by [`VerdictBy`] (1..=5).
        verdicts: [[AtomicU64; 6]; 2],
        /// The last cancellations, a ring indexed by `next_cancel`.
        next_cancel: AtomicU64,
        recent: [RecentCancel; RECENT_CANCELS],
        /// Slots whose worker reported a hang-up, a ring indexed by
        /// `next_hangup` (see [`Scoreboard::note_hangup`]).
        next_hangup: AtomicU64,
        hangups: [AtomicU64; HANGUP_RING],
    }
}

crate::sys::shared_struct! {
    /// One worker slot: written by its worker (and claimed and released by
    /// the supervisor), read by the supervisor and `jobd status`.
    pub(crate) struct Slot {
        /// [`SlotState`] as a byte.
        state: AtomicU8,
        /// [`JobKind`] as a byte.
        job_kind: AtomicU8,
        /// [`JobPhase`] as a byte.
        job_phase: AtomicU8,
        /// 1 while the worker watches its client's socket itself (the worker
        /// watch); the supervisor's full scan is then only a slower backstop.
        watching: AtomicU8,
        /// Worker pid (information only; never a signal target).
        pid: AtomicI32,
        /// Worker generation.
        generation: AtomicU32,
        /// The handler's process group (0 when none).
        job_pgid: AtomicI32,
        /// Current job id (0 when idle). Written last, cleared first.
        job_id: AtomicU64,
        /// Client socket cookie (`SO_COOKIE`).
        cookie: AtomicU64,
        /// Client socket inode.
        inode: AtomicU64,
        /// Job start, unix ms (for display).
        job_start_unix_ms: AtomicU64,
        /// Job start, `CLOCK_MONOTONIC` ns (for comparisons across processes).
        job_start_mono_ns: AtomicU64,
        /// When the worker saw its client hang up (monotonic ns; 0 = not seen).
        hangup_mono_ns: AtomicU64,
        /// The worker's watch verdict: a [`Hangup`] as a number.
        hangup_kind: AtomicU32,
        /// Cancel request: the job id the supervisor asks to cancel.
        cancel_req: AtomicU64,
        /// The [`CancelRequest`] of `cancel_req`, packed.
        cancel_reason: AtomicU32,
        /// Kill request for a closure job that ignored its cancellation: the
        /// worker kills itself only if this names the job it runs.
        kill_req: AtomicU64,
        /// The request's `seen_after_us`.
        cancel_seen_after_us: AtomicU32,
        /// Jobs this worker served.
        jobs_served: AtomicU64,
        /// Worker start, unix ms.
        worker_start_unix_ms: AtomicU64,
        /// Since when the worker is idle (monotonic ns; 0 when busy).
        idle_since_mono_ns: AtomicU64,
        /// Client address.
        peer: AtomicAddr,
        /// Our address of the client connection.
        local: AtomicAddr,
        /// `--max-per-source`: the client's address (port unused) from the
        /// accept until the job's end.
        source: AtomicAddr,
        /// `--proxy-protocol`: the real client the header named (the peer
        /// is then the balancer).
        client: AtomicAddr,
    }
}

const _: () = assert!(std::mem::size_of::<Header>() <= HEADER_SIZE);
const _: () = assert!(std::mem::size_of::<Slot>() <= SLOT_SIZE);

impl Header {
    fn counter(&self, c: Counter) -> &AtomicU64 {
        match c {
            Counter::JobsServed => &self.jobs_served,
            Counter::JobsFailed => &self.jobs_failed,
            Counter::CancelledDisconnect => &self.cancelled_disconnect,
            Counter::CancelledTimeout => &self.cancelled_timeout,
            Counter::CancelledShutdown => &self.cancelled_shutdown,
            Counter::GoneBeforeStart => &self.gone_before_start,
            Counter::WorkersSpawned => &self.workers_spawned,
            Counter::MaxChildrenReached => &self.max_children_reached,
            Counter::CancelledClientClosed => &self.cancelled_client_closed,
            Counter::CancelledClientReset => &self.cancelled_client_reset,
            Counter::CancelledClientUnresponsive => &self.cancelled_client_unresponsive,
            Counter::CpuUserMs => &self.cpu_user_ms,
            Counter::CpuSysMs => &self.cpu_sys_ms,
            Counter::DetectFailures => &self.detect_failures,
            Counter::AcceptFailures => &self.accept_failures,
            Counter::PerSourceRefused => &self.per_source_refused,
            Counter::Scans => &self.scans,
            Counter::ScanUs => &self.scan_us,
        }
    }

    /// Adds one to a counter.
    pub(crate) fn count(&self, c: Counter) {
        self.counter(c).fetch_add(1, Ordering::Relaxed);
    }

    /// Adds `n` to a counter (the CPU totals).
    pub(crate) fn add(&self, c: Counter, n: u64) {
        self.counter(c).fetch_add(n, Ordering::Relaxed);
    }

    /// A counter's value.
    pub(crate) fn get(&self, c: Counter) -> u64 {
        self.counter(c).load(Ordering::Relaxed)
    }

    /// Records the running supervisor (or, with 0, a clean stop).
    /// A `--max-per-source` refusal: true for the first of an episode
    /// (whose refusing worker logs it).
    pub(crate) fn begin_per_source_episode(&self) -> bool {
        self.per_source_episode
            .compare_exchange(0, 1, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
    }

    /// Ends a `--max-per-source` episode (the supervisor, once refusals
    /// stopped); true if one ran.
    pub(crate) fn end_per_source_episode(&self) -> bool {
        self.per_source_episode.swap(0, Ordering::AcqRel) == 1
    }

    /// Counts a disconnect verdict.
    pub(crate) fn count_verdict(&self, cancel: bool, by: VerdictBy) {
        self.verdicts[usize::from(cancel)][by as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Disconnect verdicts: (keep, cancel) counts by who decided.
    pub(crate) fn verdicts(&self) -> Vec<(&'static str, u64, u64)> {
        [
            VerdictBy::Policy,
            VerdictBy::Callback,
            VerdictBy::HookProgram,
        ]
        .into_iter()
        .map(|by| {
            (
                by.as_str(),
                self.verdicts[0][by as usize].load(Ordering::Relaxed),
                self.verdicts[1][by as usize].load(Ordering::Relaxed),
            )
        })
        .collect()
    }

    /// When the supervisor started, unix ms.
    pub(crate) fn started_unix_ms(&self) -> u64 {
        self.started_unix_ms.load(Ordering::Relaxed)
    }

    /// A job's peak memory, KiB: kept when it is the largest yet.
    pub(crate) fn note_rss(&self, kib: u64) {
        self.max_rss_kib.fetch_max(kib, Ordering::Relaxed);
    }

    /// The largest peak memory of a job that ended, KiB.
    pub(crate) fn max_rss_kib(&self) -> u64 {
        self.max_rss_kib.load(Ordering::Relaxed)
    }

    /// Adds one latency observation, µs.
    pub(crate) fn observe(&self, which: Latency, us: u64) {
        self.latency[which as usize].observe(&LATENCY_BUCKETS_US, us);
    }

    /// Adds one job duration, µs, to the histogram of its outcome (0:
    /// done, 1: failed, 2: cancelled).
    pub(crate) fn observe_duration(&self, outcome: usize, us: u64) {
        if let Some(h) = self.durations.get(outcome) {
            h.observe(&DURATION_BUCKETS_US, us);
        }
    }

    /// A job duration histogram (0: done, 1: failed, 2: cancelled).
    pub(crate) fn duration(&self, outcome: usize) -> &Hist {
        &self.durations[outcome.min(2)]
    }

    /// Records a cancellation in the ring of recent ones.
    pub(crate) fn note_cancel(
        &self,
        job_id: u64,
        reason: CancelReason,
        seen_by: SeenBy,
        latency_us: Option<(u64, u64)>,
        peer: Option<SocketAddr>,
    ) {
        let i = self.next_cancel.fetch_add(1, Ordering::Relaxed) as usize % RECENT_CANCELS;
        let e = &self.recent[i];
        e.job_id.store(0, Ordering::Release);
        e.at_unix_ms.store(unix_ms(), Ordering::Relaxed);
        e.reason.store(reason as u32, Ordering::Relaxed);
        e.seen_by.store(seen_by as u32, Ordering::Relaxed);
        let (d, g) = latency_us.map_or((u64::MAX, u64::MAX), |(d, g)| (d, g));
        e.seen_after_us.store(d, Ordering::Relaxed);
        e.gone_us.store(g, Ordering::Relaxed);
        e.peer.store(peer);
        e.job_id.store(job_id, Ordering::Release);
    }

    /// The recent cancellations, newest first.
    pub(crate) fn recent_cancels(&self) -> Vec<RecentCancelView> {
        let next = self.next_cancel.load(Ordering::Acquire) as usize;
        (0..RECENT_CANCELS.min(next))
            .filter_map(|k| {
                let e = &self.recent[(next - 1 - k) % RECENT_CANCELS];
                let job_id = e.job_id.load(Ordering::Acquire);
                if job_id == 0 {
                    return None;
                }
                let some = |v: u64| (v != u64::MAX).then_some(v);
                Some(RecentCancelView {
                    job_id,
                    at_unix_ms: e.at_unix_ms.load(Ordering::Relaxed),
                    reason: CancelReason::from_u32(e.reason.load(Ordering::Relaxed))
                        .map_or("?", CancelReason::as_str),
                    seen_by: SeenBy::from_u8(e.seen_by.load(Ordering::Relaxed) as u8).as_str(),
                    seen_after_us: some(e.seen_after_us.load(Ordering::Relaxed)),
                    gone_us: some(e.gone_us.load(Ordering::Relaxed)),
                    peer: e.peer.load(),
                })
            })
            .collect()
    }

    /// A latency histogram.
    pub(crate) fn latency(&self, which: Latency) -> &Hist {
        &self.latency[which as usize]
    }

    pub(crate) fn set_supervisor_pid(&self, pid: i32) {
        self.supervisor_pid.store(pid, Ordering::Release);
    }

    /// The supervisor's pid; 0 after a clean stop.
    pub(crate) fn supervisor_pid(&self) -> i32 {
        self.supervisor_pid.load(Ordering::Acquire)
    }

    /// Records the configured prefork count.
    pub(crate) fn set_prefork(&self, n: usize) {
        self.prefork.store(n as u32, Ordering::Relaxed);
    }

    /// Records the current worker generation.
    pub(crate) fn set_generation(&self, g: u32) {
        self.generation.store(g, Ordering::Relaxed);
    }

    /// The current worker generation.
    pub(crate) fn generation(&self) -> u32 {
        self.generation.load(Ordering::Relaxed)
    }

    /// Records the containment in force (cgroup or subreaper).
    pub(crate) fn set_containment(&self, cgroup: bool) {
        self.containment
            .store(if cgroup { 2 } else { 1 }, Ordering::Relaxed);
    }

    /// Records that jobs are contained by their process group only
    /// (`--prefork 0`).
    pub(crate) fn set_containment_group(&self) {
        self.containment.store(3, Ordering::Relaxed);
    }

    /// The containment in force: `cgroup`, `subreaper`, `process-group`,
    /// or `unknown`.
    pub(crate) fn containment(&self) -> &'static str {
        match self.containment.load(Ordering::Relaxed) {
            3 => "process-group",
            2 => "cgroup",
            1 => "subreaper",
            _ => "unknown",
        }
    }

    /// Records `--max-children`.
    pub(crate) fn set_max_children(&self, n: usize) {
        self.max_children.store(n as u32, Ordering::Relaxed);
    }

    /// `--max-children` as recorded.
    pub(crate) fn max_children(&self) -> u32 {
        self.max_children.load(Ordering::Relaxed)
    }

    /// Records the current minimum of workers.
    pub(crate) fn set_min_workers(&self, n: usize) {
        self.min_workers.store(n as u32, Ordering::Relaxed);
    }

    /// The current minimum of workers.
    pub(crate) fn min_workers(&self) -> u32 {
        self.min_workers.load(Ordering::Relaxed)
    }
}

/// A snapshot of one slot's job, read consistently.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct JobView {
    /// Job id.
    pub(crate) job_id: u64,
    /// How the job is cancelled.
    pub(crate) kind: JobKind,
    /// Handler process group (0 for closures).
    pub(crate) pgid: i32,
    /// Socket cookie.
    pub(crate) cookie: u64,
    /// Socket inode.
    pub(crate) inode: u64,
    /// The socket's remote address (the client, or the balancer behind
    /// `--proxy-protocol`): what the detectors match.
    pub(crate) peer: Option<SocketAddr>,
    /// Local address.
    pub(crate) local: Option<SocketAddr>,
    /// `--proxy-protocol`: the real client, as the header named it.
    pub(crate) client: Option<SocketAddr>,
    /// Start, unix ms.
    pub(crate) start_unix_ms: u64,
    /// Start, monotonic ns.
    pub(crate) start_mono_ns: u64,
}

impl JobView {
    /// The client as people know it: the one a PROXY header named, else
    /// the socket's peer.
    pub(crate) fn shown_peer(&self) -> Option<SocketAddr> {
        self.client.or(self.peer)
    }

    /// The balancer's address, when a PROXY header named the client.
    pub(crate) fn proxy_peer(&self) -> Option<SocketAddr> {
        self.client.and(self.peer)
    }
}

/// Reading a slot: for everyone (the supervisor, its worker, `jobd status`).
impl Slot {
    /// The slot's state.
    pub(crate) fn state(&self) -> SlotState {
        SlotState::from_u8(self.state.load(Ordering::Acquire))
    }

    /// The worker's pid as it recorded it (information only: never a
    /// signal target).
    pub(crate) fn pid(&self) -> i32 {
        self.pid.load(Ordering::Relaxed)
    }

    /// The worker's generation.
    pub(crate) fn generation(&self) -> u32 {
        self.generation.load(Ordering::Relaxed)
    }

    /// Jobs this worker served.
    pub(crate) fn jobs_served(&self) -> u64 {
        self.jobs_served.load(Ordering::Relaxed)
    }

    /// Since when the worker is idle (monotonic ns), or None when it is not.
    pub(crate) fn idle_since_mono_ns(&self) -> Option<u64> {
        Some(self.idle_since_mono_ns.load(Ordering::Relaxed)).filter(|&t| t != 0)
    }

    /// Whether a job is recorded (running or ending).
    pub(crate) fn busy(&self) -> bool {
        self.job_id.load(Ordering::Relaxed) != 0
    }

    /// Where the job is.
    pub(crate) fn phase(&self) -> JobPhase {
        JobPhase::from_u8(self.job_phase.load(Ordering::Acquire))
    }

    /// A consistent snapshot of the running job, or None when idle.
    pub(crate) fn job(&self) -> Option<JobView> {
        for _ in 0..16 {
            let id = self.job_id.load(Ordering::Acquire);
            if id == 0 {
                return None;
            }
            let view = JobView {
                job_id: id,
                kind: JobKind::from_u8(self.job_kind.load(Ordering::Relaxed)),
                pgid: self.job_pgid.load(Ordering::Relaxed),
                cookie: self.cookie.load(Ordering::Relaxed),
                inode: self.inode.load(Ordering::Relaxed),
                peer: self.peer.load(),
                local: self.local.load(),
                client: self.client.load(),
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

    /// Whether the slot still runs this very job (the same snapshot) and
    /// it has not begun to end. Every decision of the supervisor about a
    /// job checks this right before it acts.
    pub(crate) fn still_runs(&self, job: &JobView) -> bool {
        self.job().as_ref() == Some(job) && self.phase() == JobPhase::Running
    }

    /// The cancel request for `job_id`, if one was made.
    pub(crate) fn cancel_requested(&self, job_id: u64) -> Option<CancelRequest> {
        if job_id == 0 || self.cancel_req.load(Ordering::Acquire) != job_id {
            return None;
        }
        Some(CancelRequest::unpack(
            self.cancel_reason.load(Ordering::Relaxed),
            self.cancel_seen_after_us.load(Ordering::Relaxed),
        ))
    }

    /// Whether the supervisor asked to kill the worker of closure job
    /// `job_id` (it ignored its cancellation).
    pub(crate) fn kill_requested(&self, job_id: u64) -> bool {
        job_id != 0 && self.kill_req.load(Ordering::Acquire) == job_id
    }

    /// What the worker saw its client do, and when (monotonic ns).
    pub(crate) fn hangup(&self) -> Option<(Hangup, u64)> {
        let at = self.hangup_mono_ns.load(Ordering::Acquire);
        if at == 0 {
            return None;
        }
        let kind = match self.hangup_kind.load(Ordering::Relaxed) {
            2 => Hangup::Reset,
            3 => Hangup::Unresponsive,
            _ => Hangup::Fin,
        };
        Some((kind, at))
    }

    /// Whether the worker watches its client's socket itself.
    pub(crate) fn watched(&self) -> bool {
        self.watching.load(Ordering::Acquire) != 0
    }
}

/// The supervisor's side of the protocol.
impl Slot {
    /// Resets the slot for a worker about to be forked.
    pub(crate) fn claim(&self, pid: i32, generation: u32) {
        self.job_id.store(0, Ordering::Release);
        self.job_phase
            .store(JobPhase::None as u8, Ordering::Relaxed);
        self.job_pgid.store(0, Ordering::Relaxed);
        self.cancel_req.store(0, Ordering::Relaxed);
        self.kill_req.store(0, Ordering::Relaxed);
        self.jobs_served.store(0, Ordering::Relaxed);
        self.source.store(None);
        self.pid.store(pid, Ordering::Relaxed);
        self.generation.store(generation, Ordering::Relaxed);
        self.worker_start_unix_ms
            .store(unix_ms(), Ordering::Relaxed);
        self.set_state(SlotState::Starting);
    }

    /// Records the worker's pid (by the supervisor after fork, and by the
    /// worker itself).
    pub(crate) fn set_pid(&self, pid: i32) {
        self.pid.store(pid, Ordering::Relaxed);
    }

    /// Marks the slot empty (its worker was reaped).
    pub(crate) fn release(&self) {
        self.job_id.store(0, Ordering::Release);
        self.job_phase
            .store(JobPhase::None as u8, Ordering::Relaxed);
        self.pid.store(0, Ordering::Relaxed);
        self.source.store(None);
        self.set_state(SlotState::Empty);
    }

    /// Asks the worker to cancel `job` for `reason`, if the slot still runs
    /// it; the caller then pokes the worker. Returns whether the request
    /// was made.
    pub(crate) fn request_cancel(&self, job: &JobView, req: CancelRequest) -> bool {
        if !self.still_runs(job) {
            return false;
        }
        self.cancel_reason.store(req.pack(), Ordering::Relaxed);
        self.cancel_seen_after_us
            .store(req.seen_after_us, Ordering::Relaxed);
        self.cancel_req.store(job.job_id, Ordering::Release);
        true
    }

    /// Asks the worker of closure `job` to kill itself if, when the poke
    /// lands, it still runs that job. Returns whether the slot still runs
    /// it now.
    pub(crate) fn request_kill(&self, job: &JobView) -> bool {
        if !self.still_runs(job) {
            return false;
        }
        self.kill_req.store(job.job_id, Ordering::Release);
        true
    }
}

/// The worker's side of the protocol (its own slot only).
impl Slot {
    /// Sets the slot's state.
    pub(crate) fn set_state(&self, s: SlotState) {
        if s == SlotState::Idle {
            self.idle_since_mono_ns
                .store(crate::sys::monotonic_ns(), Ordering::Relaxed);
        } else {
            self.idle_since_mono_ns.store(0, Ordering::Relaxed);
        }
        self.state.store(s as u8, Ordering::Release);
    }

    /// Publishes a new job; its id is stored last. `watched`: the worker
    /// watches the socket itself, set before the id so that no scan sees
    /// the job unwatched for a moment.
    pub(crate) fn begin_job(&self, job: &JobView, watched: bool) {
        self.job_id.store(0, Ordering::Release);
        self.watching.store(u8::from(watched), Ordering::Relaxed);
        self.job_kind.store(job.kind as u8, Ordering::Relaxed);
        self.job_pgid.store(job.pgid, Ordering::Relaxed);
        self.cookie.store(job.cookie, Ordering::Relaxed);
        self.inode.store(job.inode, Ordering::Relaxed);
        self.peer.store(job.peer);
        self.local.store(job.local);
        self.client.store(job.client);
        self.job_start_unix_ms
            .store(job.start_unix_ms, Ordering::Relaxed);
        self.job_start_mono_ns
            .store(job.start_mono_ns, Ordering::Relaxed);
        self.hangup_mono_ns.store(0, Ordering::Relaxed);
        self.hangup_kind.store(0, Ordering::Relaxed);
        self.job_phase
            .store(JobPhase::Running as u8, Ordering::Relaxed);
        self.job_id.store(job.job_id, Ordering::Release);
        self.set_state(SlotState::Busy);
    }

    /// `--max-per-source`: claims a place for `ip` in this slot, before
    /// counting the places taken ([`Scoreboard::count_source`]). Two
    /// workers claiming at once both see each other (store, fence, load):
    /// the limit may refuse one too many, never admit one too many.
    pub(crate) fn claim_source(&self, ip: IpAddr) {
        self.source.store(Some(SocketAddr::new(ip, 0)));
        std::sync::atomic::fence(Ordering::SeqCst);
    }

    /// Gives the place back (job ended, or connection refused).
    pub(crate) fn release_source(&self) {
        self.source.store(None);
    }

    fn source_is(&self, ip: IpAddr) -> bool {
        self.source.load().is_some_and(|a| a.ip() == ip)
    }

    /// Records what the worker saw its client do, now, and stops the
    /// worker watch of this job.
    pub(crate) fn report_hangup(&self, kind: Hangup) {
        self.hangup_kind.store(kind as u32, Ordering::Relaxed);
        self.hangup_mono_ns
            .store(crate::sys::monotonic_ns(), Ordering::Release);
        self.watching.store(0, Ordering::Release);
    }

    /// The handler was reaped: its group id is no longer held.
    pub(crate) fn handler_reaped(&self) {
        self.job_pgid.store(0, Ordering::Release);
    }

    /// Marks the job as ending (before its socket is closed).
    pub(crate) fn job_ending(&self) {
        self.job_phase
            .store(JobPhase::Ending as u8, Ordering::SeqCst);
    }

    /// The job's record is written (before [`Slot::end_job`]).
    pub(crate) fn job_recorded(&self) {
        self.job_phase
            .store(JobPhase::Recorded as u8, Ordering::SeqCst);
    }

    /// Records the handler's pid (its group) once it is spawned: the job
    /// is published before the spawn, so that a worker dying in between
    /// leaves a job the supervisor records.
    pub(crate) fn set_job_pgid(&self, pgid: i32) {
        self.job_pgid.store(pgid, Ordering::Release);
    }

    /// Clears the job and counts it served.
    pub(crate) fn end_job(&self) {
        self.job_id.store(0, Ordering::Release);
        self.watching.store(0, Ordering::Relaxed);
        self.job_pgid.store(0, Ordering::Relaxed);
        self.job_phase
            .store(JobPhase::None as u8, Ordering::Release);
        self.jobs_served.fetch_add(1, Ordering::Relaxed);
    }

    /// While a closure job runs: a SIGUSR2 kills this worker if, and only
    /// if, the slot's kill request names the job the slot runs at that
    /// instant. The guard disarms it.
    pub(crate) fn arm_kill_switch(&self) -> io::Result<crate::sys::SelfKillGuard<'_>> {
        crate::sys::arm_self_kill(&self.kill_req, &self.job_id)
    }
}
/// A mapped scoreboard.
pub(crate) struct Scoreboard {
    map: SharedMap,
    nslots: usize,
    /// The file of a `--scoreboard`, held open (and locked) for jobd's
    /// life.
    _file: Option<File>,
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Current time, unix ms.
pub(crate) fn now_unix_ms() -> u64 {
    unix_ms()
}

fn size_for(nslots: usize) -> usize {
    HEADER_SIZE + nslots * SLOT_SIZE
}

impl Scoreboard {
    /// A new anonymous scoreboard of `nslots` slots (inherited by forks).
    pub(crate) fn anonymous(nslots: usize) -> Result<Scoreboard, ScoreboardError> {
        let map = SharedMap::anonymous(size_for(nslots)).map_err(ScoreboardError::Anonymous)?;
        let sb = Scoreboard {
            map,
            nslots,
            _file: None,
        };
        sb.init();
        Ok(sb)
    }

    /// Creates a scoreboard file (mode 0640), or takes over jobd's own
    /// file left by an earlier run, and locks it for the life of this
    /// process and its workers. Never follows a symlink at `path`, never
    /// opens a FIFO or device or another user's file (see
    /// [`crate::sys::files`]); refuses a file another jobd holds. The
    /// mapping is guarded: truncating the file while jobd runs does not
    /// kill it (its length is put back and the loss logged).
    pub(crate) fn create(path: &Path, nslots: usize) -> Result<Scoreboard, ScoreboardError> {
        let shown = path.display().to_string();
        let err = |source| ScoreboardError::Create {
            path: shown.clone(),
            source,
        };
        let file = crate::sys::files::open_own(
            path,
            crate::sys::files::Want {
                mode: 0o640,
                append: false,
                create: true,
            },
        )
        .map_err(|why| match why {
            crate::sys::files::Refused::Io(e) => err(e),
            why => ScoreboardError::Refused {
                path: shown.clone(),
                why,
            },
        })?;
        if !crate::sys::daemon::try_lock_exclusive(file.as_fd()).map_err(err)? {
            // The pid only names the holder in the message; nothing acts on it.
            let pid = Scoreboard::open_read(path)
                .ok()
                .map(|sb| sb.header().supervisor_pid())
                .filter(|&p| p > 0);
            return Err(ScoreboardError::InUse { path: shown, pid });
        }
        // The mode is applied only on creation; enforce it on reuse too.
        use std::os::unix::fs::PermissionsExt;
        file.set_permissions(std::fs::Permissions::from_mode(0o640))
            .map_err(err)?;
        // Zeroed: nothing of an earlier run survives.
        file.set_len(0).map_err(err)?;
        file.set_len(size_for(nslots) as u64).map_err(err)?;
        let map = SharedMap::file(&file, size_for(nslots), true).map_err(err)?;
        map.guard_against_truncation(file.as_fd()).map_err(err)?;
        let sb = Scoreboard {
            map,
            nslots,
            _file: Some(file),
        };
        sb.init();
        Ok(sb)
    }

    /// An upgrade's new jobd: the old one still holds (and uses) the file
    /// at `path`, so a new one is made next to it, exclusively, and renamed
    /// over it: the old jobd goes on with its mapping of the file it had,
    /// `jobd status` reads the new one.
    pub(crate) fn create_replacing(
        path: &Path,
        nslots: usize,
    ) -> Result<Scoreboard, ScoreboardError> {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "scoreboard".into());
        let tmp = path.with_file_name(format!(".{name}.{}.new", std::process::id()));
        let _ = std::fs::remove_file(&tmp);
        let sb = Scoreboard::create(&tmp, nslots)?;
        std::fs::rename(&tmp, path).map_err(|source| ScoreboardError::Create {
            path: path.display().to_string(),
            source,
        })?;
        Ok(sb)
    }

    /// A `--scoreboard` file shorter than the mapping (someone truncated
    /// it, and no process has touched the lost pages yet): its length is
    /// put back. Returns whether it was short. One `fstat` (the
    /// supervisor's tick).
    pub(crate) fn restore_length(&self) -> bool {
        let Some(f) = &self._file else {
            return false;
        };
        let want = size_for(self.nslots) as u64;
        match f.metadata() {
            Ok(m) if m.len() < want => f.set_len(want).is_ok(),
            _ => false,
        }
    }

    /// Whether the header still carries its magic (a truncated file's
    /// restored pages read as zeroes, whichever process faulted on them).
    pub(crate) fn header_valid(&self) -> bool {
        self.header().magic.load(Ordering::Acquire) == MAGIC
    }

    /// After the file was truncated under jobd (see
    /// [`crate::sys::shm::take_truncated`]): marks the header valid again.
    /// The counters and slots that were zeroed stay so until written
    /// again.
    pub(crate) fn repair(&self) {
        let h = self.header();
        h.version.store(1, Ordering::Relaxed);
        h.nslots.store(self.nslots as u32, Ordering::Relaxed);
        h.magic.store(MAGIC, Ordering::Release);
    }

    /// Reads a copy of an existing scoreboard file, checking that it is
    /// one (a copy: the file changing or shrinking meanwhile cannot fault).
    pub(crate) fn open_read(path: &Path) -> Result<Scoreboard, ScoreboardError> {
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
            SharedMap::copy_of(&file, HEADER_SIZE).map_err(|source| ScoreboardError::Open {
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
        let map = SharedMap::copy_of(&file, size_for(nslots)).map_err(|source| {
            ScoreboardError::Open {
                path: p.clone(),
                source,
            }
        })?;
        Ok(Scoreboard {
            map,
            nslots,
            _file: None,
        })
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
    pub(crate) fn set_listen(&self, addr: SocketAddr) {
        self.header().listen.store(Some(addr));
    }

    /// The listen address recorded by the supervisor.
    pub(crate) fn listen(&self) -> Option<SocketAddr> {
        self.header().listen.load()
    }

    /// The header.
    pub(crate) fn header(&self) -> &Header {
        self.map.get(0)
    }

    /// Number of slots.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.nslots
    }

    /// Slot `i`. Panics when out of range (a programming error).
    pub(crate) fn slot(&self, i: usize) -> &Slot {
        assert!(i < self.nslots, "slot {i} out of range");
        self.map.get(HEADER_SIZE + i * SLOT_SIZE)
    }

    /// Iterates over all slots with their index.
    pub(crate) fn slots(&self) -> impl Iterator<Item = (usize, &Slot)> {
        (0..self.nslots).map(|i| (i, self.slot(i)))
    }

    /// Tells the supervisor which slot reported a hang-up (after
    /// [`Slot::report_hangup`], before the wake), so that it looks at that
    /// slot and not at every slot. Each entry carries its sequence number,
    /// so a reader can tell an entry not written yet from a stale one.
    pub(crate) fn note_hangup(&self, slot: usize) {
        let h = self.header();
        let k = h.next_hangup.fetch_add(1, Ordering::AcqRel);
        h.hangups[(k % HANGUP_RING as u64) as usize]
            .store(hangup_entry(k, slot), Ordering::Release);
    }

    /// The slots that reported a hang-up since `cursor` (a value of a
    /// previous call, or of [`Scoreboard::hangup_cursor`]), and the new
    /// cursor. `None` when the ring cannot say (more reports than it
    /// holds, an entry not written yet, or a value out of range): the
    /// caller then looks at every slot, whose own hang-up record is the
    /// truth. A hint only: a slot listed is checked like any other.
    pub(crate) fn hangups_since(&self, cursor: u64) -> (Option<Vec<usize>>, u64) {
        let h = self.header();
        let head = h.next_hangup.load(Ordering::Acquire);
        if head < cursor || head - cursor > HANGUP_RING as u64 {
            return (None, head);
        }
        let mut out = Vec::with_capacity((head - cursor) as usize);
        for k in cursor..head {
            let e = h.hangups[(k % HANGUP_RING as u64) as usize].load(Ordering::Acquire);
            let slot = (e & 0xffff) as usize;
            if e != hangup_entry(k, slot) || slot >= self.nslots {
                return (None, head);
            }
            if !out.contains(&slot) {
                out.push(slot);
            }
        }
        (Some(out), head)
    }

    /// Where the hang-up ring is now.
    #[cfg(test)]
    fn hangup_cursor(&self) -> u64 {
        self.header().next_hangup.load(Ordering::Acquire)
    }

    /// Takes a fresh job id.
    /// How many slots hold a place for `ip` (see [`Slot::claim_source`]).
    pub(crate) fn count_source(&self, ip: IpAddr) -> usize {
        std::sync::atomic::fence(Ordering::SeqCst);
        (0..self.nslots)
            .filter(|&i| self.slot(i).source_is(ip))
            .count()
    }

    pub(crate) fn next_job_id(&self) -> u64 {
        self.header().next_job_id.fetch_add(1, Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hangup_ring_names_the_slots_or_says_it_cannot() {
        let sb = Scoreboard::anonymous(4).unwrap();
        let c0 = sb.hangup_cursor();
        assert_eq!(sb.hangups_since(c0), (Some(vec![]), c0));
        sb.note_hangup(2);
        sb.note_hangup(0);
        sb.note_hangup(2);
        let (named, c1) = sb.hangups_since(c0);
        assert_eq!(named, Some(vec![2, 0]));
        assert_eq!(sb.hangups_since(c1), (Some(vec![]), c1));
        // More reports than the ring holds between two reads: walk all.
        for _ in 0..=HANGUP_RING {
            sb.note_hangup(1);
        }
        let (named, c2) = sb.hangups_since(c1);
        assert_eq!(named, None);
        // An entry claimed but not written yet (a worker between its
        // fetch_add and its store, or killed there): walk all, move on.
        sb.header().next_hangup.fetch_add(1, Ordering::AcqRel);
        let (named, c3) = sb.hangups_since(c2);
        assert_eq!((named, c3), (None, c2 + 1));
        sb.note_hangup(3);
        assert_eq!(sb.hangups_since(c3), (Some(vec![3]), c3 + 1));
        // A slot index out of range (a corrupt entry) is never trusted.
        let k = sb.header().next_hangup.fetch_add(1, Ordering::AcqRel);
        sb.header().hangups[(k % HANGUP_RING as u64) as usize]
            .store(hangup_entry(k, 9), Ordering::Release);
        assert_eq!(sb.hangups_since(k).0, None);
        // A cursor ahead of the ring (a reset header): walk all.
        assert_eq!(sb.hangups_since(k + 100).0, None);
    }

    #[test]
    fn places_per_source_are_counted_and_given_back() {
        let sb = Scoreboard::anonymous(4).unwrap();
        let a: IpAddr = "192.0.2.7".parse().unwrap();
        let b: IpAddr = "2001:db8::1".parse().unwrap();
        sb.slot(0).claim_source(a);
        sb.slot(1).claim_source(a);
        sb.slot(2).claim_source(b);
        assert_eq!(sb.count_source(a), 2);
        assert_eq!(sb.count_source(b), 1);
        sb.slot(1).release_source();
        assert_eq!(sb.count_source(a), 1);
        sb.slot(0).release();
        assert_eq!(sb.count_source(a), 0, "a reaped worker's place is freed");
    }

    #[test]
    fn job_snapshot_roundtrip() {
        let sb = Scoreboard::anonymous(2).unwrap();
        let s = sb.slot(1);
        assert_eq!(s.job(), None);
        let v = JobView {
            job_id: 7,
            kind: JobKind::Handler,
            pgid: 1234,
            cookie: 99,
            inode: 42,
            peer: Some("[::1]:5555".parse().unwrap()),
            local: Some("127.0.0.1:7000".parse().unwrap()),
            client: None,
            start_unix_ms: 1,
            start_mono_ns: 2,
        };
        s.begin_job(&v, true);
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
