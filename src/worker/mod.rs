//! WORKER ONLY: the life of one worker process in its scoreboard slot, top
//! to bottom: [`worker_main`] (a freshly forked worker), [`run_inline`]
//! (the one process of `--prefork 0`), and the accept loop they share.
//!
//! A worker is forked by the supervisor, dies with it (parent-death signal),
//! and loops: mark its slot idle, wait for a client on the shared listener
//! (epoll with `EPOLLEXCLUSIVE`, so one connection wakes one idle worker),
//! accept, run the job ([`job::Runner`]), and again. It writes only its own
//! slot and signals only its own job's process group. Its signals are
//! described in [`signals`].

pub(crate) mod inline;
pub(crate) mod job;
pub(crate) mod signals;

use std::cell::RefCell;
use std::net::TcpListener;
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use nix::sys::eventfd::EventFd;
use nix::sys::signalfd::SignalFd;
use nix::unistd::Pid;

use crate::cgroup::{JobCgroup, SlotCgroups};
use crate::config::{Config, ProxyProtocol};
use crate::episode::Episode;
use crate::hooks::Hooks;
use crate::proxy;
use crate::scoreboard::{Counter, Scoreboard, SlotState};
use crate::sys;
use inline::InlineWatch;
use job::{Overseer, Runner};
use signals::AfterJob;

/// The body of a freshly forked worker; returns its exit code.
pub(crate) fn worker_main(
    cfg: &Config,
    sb: &Scoreboard,
    slot: usize,
    listener: &TcpListener,
    wake: &EventFd,
    supervisor: Pid,
    cgroup: Option<SlotCgroups>,
) -> i32 {
    if let Err(e) = sys::reset_signals() {
        tracing::error!(slot, error = %e, "worker failed to set its signal mask");
        return 1;
    }
    match sys::die_with_parent(nix::sys::signal::Signal::SIGINT, supervisor) {
        Ok(true) => {}
        Ok(false) => return 0, // the supervisor died before we could ask
        Err(e) => {
            tracing::error!(slot, error = %e, "worker failed to set its parent-death signal");
            return 1;
        }
    }
    // The worker is the subreaper of its jobs: whatever a job moves out of
    // its process group (setsid, a double fork) is reparented to the worker
    // when its parent exits, and killed when the job ends.
    if let Err(e) = nix::sys::prctl::set_child_subreaper(true) {
        tracing::warn!(slot, error = %e, "worker failed to become its jobs' subreaper");
    }
    let sigfd = match sys::handled_signalfd() {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(slot, error = %e, "worker failed to open its signalfd");
            return 1;
        }
    };
    sb.slot(slot).set_pid(std::process::id() as i32);
    // The worker lives in its job cgroup: its handlers are born there.
    let job_cgroup = cgroup.as_ref().and_then(|c| {
        match c.enter_job(&std::process::id().to_string()) {
            Ok(j) => Some(j),
            Err(e) => {
                tracing::error!(slot, error = %e, "worker failed to enter its job cgroup; its jobs are contained by subreaper only");
                None
            }
        }
    });
    // `--user` with closure jobs: the job runs in this process, which
    // becomes the user (handlers get the user at their exec instead).
    if matches!(cfg.job, crate::config::JobSpec::Closure(_))
        && let Err(e) = crate::spawn::become_run_as()
    {
        tracing::error!(slot, error = %e, "worker failed to switch to --user for its closure jobs");
        return 1;
    }
    run(
        cfg,
        sb,
        slot,
        listener,
        &sigfd,
        Overseer::Supervisor(wake),
        job_cgroup,
    )
}

/// `--prefork 0`: one process accepts and runs jobs one at a time, and
/// runs the disconnect watch itself ([`inline`]).
pub(crate) fn run_inline(
    cfg: &Config,
    hooks: &Hooks,
    sb: &Scoreboard,
    listener: &TcpListener,
) -> i32 {
    let sigfd = match sys::handled_signalfd() {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "failed to open a signalfd");
            return 1;
        }
    };
    // Not the jobs' subreaper: this process may be a library user's, with
    // children of its own that a sweep must never touch. Its jobs are
    // contained by their process group.
    let watch = match InlineWatch::new(cfg, hooks, sb) {
        Ok(w) => RefCell::new(w),
        Err(e) => {
            tracing::error!(error = %e, "failed to start the disconnect watch");
            return 1;
        }
    };
    let slot = sb.slot(0);
    slot.claim(std::process::id() as i32, 1);
    let code = run(cfg, sb, 0, listener, &sigfd, Overseer::Inline(&watch), None);
    if let Some(h) = &hooks.before_shutdown {
        h();
    }
    watch.borrow_mut().stop();
    slot.release();
    tracing::info!("jobd stopped");
    code
}

const LISTENER: u64 = 1;
const SIGNALS: u64 = 2;

/// Runs the accept loop until the worker must exit; returns the exit code.
fn run(
    cfg: &Config,
    sb: &Scoreboard,
    slot: usize,
    listener: &TcpListener,
    sigfd: &SignalFd,
    overseer: Overseer<'_, '_>,
    job_cgroup: Option<JobCgroup>,
) -> i32 {
    let epoll = match Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC) {
        Ok(e) => e,
        Err(e) => {
            tracing::error!(slot, error = %e, "failed to create epoll in worker");
            return 1;
        }
    };
    let add = epoll
        .add(
            listener.as_fd(),
            EpollEvent::new(EpollFlags::EPOLLIN | EpollFlags::EPOLLEXCLUSIVE, LISTENER),
        )
        .and_then(|_| epoll.add(sigfd.as_fd(), EpollEvent::new(EpollFlags::EPOLLIN, SIGNALS)));
    if let Err(e) = add {
        tracing::error!(slot, error = %e, "failed to register fds in worker epoll");
        return 1;
    }
    let spawner = match crate::spawn::Spawner::new(cfg) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(slot, error = %e, "cannot prepare the handler command");
            return 1;
        }
    };
    let inline = match overseer {
        Overseer::Inline(w) => Some(w),
        Overseer::Supervisor(_) => None,
    };
    let runner = Runner {
        cfg,
        sb,
        slot,
        sigfd,
        overseer,
        spawner: spawner.as_ref(),
        job_cgroup,
        me: std::process::id(),
    };
    let board = sb.slot(slot);
    let mut after = AfterJob::default();
    let mut events = [EpollEvent::empty(); 2];
    let mut served: u64 = 0;
    // Accepted sockets share the listener's address unless it is a
    // wildcard: then each asks (getsockname).
    let fixed_local = listener
        .local_addr()
        .ok()
        .filter(|a| !a.ip().is_unspecified());
    let max_requests = (cfg.max_requests_per_child > 0).then(|| {
        cfg.max_requests_per_child
            .saturating_add(jitter(cfg.max_requests_jitter))
    });
    // Accept failing (out of descriptors, memory): one log line per
    // episode, and the listener left out of the epoll set for a back-off
    // that doubles up to a second, so that the worker neither spins nor
    // floods its log, and other workers may take the clients.
    let mut accept_fault = Episode::new("accept");
    let mut backoff = Duration::ZERO;
    let mut resume_at: Option<Instant> = None;
    loop {
        if after.exit_now || after.retire {
            board.set_state(SlotState::Exiting);
            return 0;
        }
        board.set_state(SlotState::Idle);
        if resume_at.is_some_and(|t| Instant::now() >= t) {
            resume_at = None;
            if let Err(e) = epoll.add(
                listener.as_fd(),
                EpollEvent::new(EpollFlags::EPOLLIN | EpollFlags::EPOLLEXCLUSIVE, LISTENER),
            ) {
                tracing::error!(slot, error = %e, "failed to watch the listener again");
                return 1;
            }
        }
        // Between jobs, the inline watch still has hook programs to reap.
        let due = [inline.map(|w| w.borrow().next_due()), resume_at]
            .into_iter()
            .flatten()
            .min();
        let timeout = match due {
            Some(t) => EpollTimeout::try_from(t.saturating_duration_since(Instant::now()))
                .unwrap_or(EpollTimeout::NONE),
            None => EpollTimeout::NONE,
        };
        let n = match epoll.wait(&mut events, timeout) {
            Ok(n) => n,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => {
                tracing::error!(slot, error = %e, "epoll_wait failed in worker");
                return 1;
            }
        };
        if let Some(w) = inline {
            w.borrow_mut().tick(false);
        }
        let mut readable = false;
        for ev in &events[..n] {
            match ev.data() {
                SIGNALS => {
                    signals::drain(sigfd, slot, &mut after);
                }
                LISTENER => readable = true,
                _ => {}
            }
        }
        if !readable || after.retire || after.exit_now {
            continue;
        }
        match listener.accept() {
            Ok((conn, peer)) => {
                accept_fault.ok(Some(slot));
                backoff = Duration::ZERO;
                // `--proxy-protocol`: the header names the real client
                // before anything else is decided.
                let client = if cfg.proxy_protocol == ProxyProtocol::Off {
                    None
                } else {
                    board.set_state(SlotState::Busy);
                    let h = proxy::read_header(&conn, cfg.proxy_protocol, cfg.proxy_timeout);
                    board.set_state(SlotState::Idle);
                    match h {
                        Ok(proxy::Header::Proxied { client, .. }) => Some(client),
                        Ok(proxy::Header::Local) => {
                            // The balancer's own health check: no job.
                            tracing::debug!(slot, peer = %peer, "PROXY LOCAL header (a health check): no job");
                            continue;
                        }
                        Err(proxy::HeaderError::Closed) => {
                            tracing::debug!(slot, peer = %peer, "connection closed before its PROXY header: no job");
                            continue;
                        }
                        Err(e) => {
                            tracing::warn!(slot, peer = %peer, error = %e, "connection closed: it {e}");
                            continue;
                        }
                    }
                };
                if let Some(max) = cfg.max_per_source {
                    let ip = match client.unwrap_or(peer).ip() {
                        std::net::IpAddr::V6(v6) => v6
                            .to_ipv4_mapped()
                            .map_or(std::net::IpAddr::V6(v6), std::net::IpAddr::V4),
                        v4 => v4,
                    };
                    board.claim_source(ip);
                    let running = sb.count_source(ip);
                    if running > max {
                        board.release_source();
                        sb.header().count(Counter::PerSourceRefused);
                        // One line per episode for the whole pool; the
                        // supervisor logs its end with the count.
                        if sb.header().begin_per_source_episode() {
                            tracing::warn!(
                                slot,
                                peer = %peer,
                                max_per_source = max,
                                "--max-per-source: {ip} already runs {} jobs; closing its new connections (further refusals are counted)",
                                running - 1
                            );
                        }
                        drop(conn);
                        continue;
                    }
                }
                // serve() gives the place back when the job ends.
                after.merge(runner.serve(conn, peer, client, fixed_local));
                served += 1;
                if max_requests.is_some_and(|m| served >= m) && !after.exit_now {
                    tracing::info!(
                        slot,
                        pid = std::process::id(),
                        jobs = served,
                        "worker recycled after its request limit"
                    );
                    board.set_state(SlotState::Exiting);
                    return 0;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) if e.raw_os_error() == Some(libc::ECONNABORTED) => {
                // The client left the backlog before we took it.
            }
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                // The supervisor shut the listener down (draining): this
                // worker is done accepting.
                after.retire = true;
            }
            Err(e) => {
                // EMFILE, ENFILE, ENOBUFS, ENOMEM: the client stays in the
                // backlog; this worker steps back for a while.
                sb.header().count(Counter::AcceptFailures);
                accept_fault.failed(Some(slot), &e);
                backoff = (backoff * 2).clamp(Duration::from_millis(10), Duration::from_secs(1));
                if epoll.delete(listener.as_fd()).is_ok() {
                    resume_at = Some(Instant::now() + backoff);
                }
            }
        }
    }
}

/// A random number in `0..=max` (for `--max-requests-jitter`), from the
/// kernel's random pool, falling back to the clock.
fn jitter(max: u64) -> u64 {
    if max == 0 {
        return 0;
    }
    let mut b = [0u8; 8];
    let r = std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut b));
    let v = match r {
        Ok(()) => u64::from_le_bytes(b),
        Err(_) => crate::sys::monotonic_ns() ^ u64::from(std::process::id()).rotate_left(32),
    };
    match max.checked_add(1) {
        Some(m) => v % m,
        None => v,
    }
}
