//! `jobd status --format openmetrics`: the status as OpenMetrics text (for
//! a textfile collector, such as node_exporter's), written with the
//! `prometheus-client` crate from a status snapshot.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;

use super::status::Status;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Reason {
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct State {
    state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Mode {
    mode: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Kind {
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Verdict {
    by: String,
    verdict: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Gen {
    generation: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Build {
    version: String,
    containment: String,
}

fn counter(r: &mut Registry, name: &str, help: &str, v: u64) {
    let c: Counter = Counter::default();
    c.inc_by(v);
    r.register(name, help, c);
}

fn gauge(r: &mut Registry, name: &str, help: &str, v: i64) {
    let g: Gauge = Gauge::default();
    g.set(v);
    r.register(name, help, g);
}

fn clamp(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct By {
    by: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: String,
}

/// Histograms already bucketed (read from the scoreboard), one per label
/// set, encoded through the crate's histogram encoder.
/// One histogram: its labels, sum, count and (bound, count) buckets.
type Series<L> = (L, f64, u64, Vec<(f64, u64)>);

#[derive(Debug)]
struct Bucketed<L>(Vec<Series<L>>);

/// A status histogram's buckets as the encoder takes them (+Inf last).
fn bounds(buckets: &[(Option<f64>, u64)]) -> Vec<(f64, u64)> {
    buckets
        .iter()
        .map(|&(le, n)| (le.unwrap_or(f64::INFINITY), n))
        .collect()
}

impl<L: prometheus_client::encoding::EncodeLabelSet + std::fmt::Debug + Send + Sync + 'static>
    prometheus_client::encoding::EncodeMetric for Bucketed<L>
{
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::MetricEncoder,
    ) -> Result<(), std::fmt::Error> {
        for (labels, sum, count, buckets) in &self.0 {
            encoder
                .encode_family(labels)?
                .encode_histogram::<prometheus_client::encoding::NoLabelSet>(
                    *sum, *count, buckets, None,
                )?;
        }
        Ok(())
    }

    fn metric_type(&self) -> prometheus_client::metrics::MetricType {
        prometheus_client::metrics::MetricType::Histogram
    }
}

/// The status as OpenMetrics text, ending in `# EOF`.
pub fn encode(st: &Status) -> String {
    let t = &st.totals;
    let mut r = Registry::with_prefix("jobd");
    r.register(
        "build",
        "jobd's version and the job containment in force",
        Info::new(Build {
            version: env!("CARGO_PKG_VERSION").into(),
            containment: st.containment.into(),
        }),
    );
    gauge(
        &mut r,
        "up",
        "1 while the supervisor runs",
        i64::from(st.running),
    );
    gauge(
        &mut r,
        "start_time_seconds",
        "when the supervisor started, unix seconds",
        clamp(t.started_unix_ms / 1000),
    );
    gauge(
        &mut r,
        "generation",
        "worker generation (bumped by reload)",
        i64::from(st.generation),
    );
    counter(
        &mut r,
        "jobs_ended",
        "jobs ended, whatever the outcome",
        t.jobs_served,
    );
    counter(
        &mut r,
        "jobs_failed",
        "jobs that failed (handler error, lost worker)",
        t.jobs_failed,
    );
    let cancelled: Family<Reason, Counter> = Family::default();
    for (reason, v) in [
        ("client-closed", t.cancelled_client_closed),
        ("client-reset", t.cancelled_client_reset),
        ("client-unresponsive", t.cancelled_client_unresponsive),
        ("timeout", t.timeouts),
        ("shutdown", t.cancelled_shutdown),
    ] {
        cancelled
            .get_or_create(&Reason {
                reason: reason.into(),
            })
            .inc_by(v);
    }
    r.register("jobs_cancelled", "jobs cancelled, by reason", cancelled);
    counter(
        &mut r,
        "clients_gone_before_start",
        "clients that hung up before their job started",
        t.gone_before_start,
    );
    let workers: Family<State, Gauge> = Family::default();
    for (state, v) in [("idle", t.idle), ("busy", t.busy), ("starting", t.starting)] {
        workers
            .get_or_create(&State {
                state: state.into(),
            })
            .set(clamp(v as u64));
    }
    r.register("workers", "workers by state", workers);
    gauge(
        &mut r,
        "workers_min",
        "minimum of workers (--prefork, SIGTTIN/SIGTTOU)",
        i64::from(t.min_workers),
    );
    gauge(
        &mut r,
        "workers_max",
        "--max-children",
        i64::from(t.max_children),
    );
    counter(
        &mut r,
        "workers_spawned",
        "workers forked since start",
        t.workers_spawned,
    );
    counter(
        &mut r,
        "max_children_reached",
        "times every worker was busy at --max-children",
        t.max_children_reached,
    );
    if let Some(q) = t.listen_queue {
        gauge(
            &mut r,
            "listen_queue",
            "connections waiting in the listen queue",
            i64::from(q),
        );
    }
    if let Some(b) = t.listen_backlog {
        gauge(
            &mut r,
            "listen_backlog",
            "the listen backlog as the kernel applied it",
            i64::from(b),
        );
    }
    let cpu: Family<Mode, Counter<f64, std::sync::atomic::AtomicU64>> = Family::default();
    cpu.get_or_create(&Mode {
        mode: "user".into(),
    })
    .inc_by(t.cpu_user_ms as f64 / 1000.0);
    cpu.get_or_create(&Mode {
        mode: "system".into(),
    })
    .inc_by(t.cpu_sys_ms as f64 / 1000.0);
    r.register("job_cpu_seconds", "CPU time of the jobs that ended", cpu);
    counter(
        &mut r,
        "scans",
        "disconnect scans (full socket-table reads)",
        t.scans,
    );
    let scan_s: Counter<f64, std::sync::atomic::AtomicU64> = Counter::default();
    scan_s.inc_by(t.scan_us as f64 / 1e6);
    r.register(
        "scan_seconds",
        "total time spent in disconnect scans",
        scan_s,
    );
    gauge(
        &mut r,
        "job_peak_memory_max_bytes",
        "the largest peak resident memory of a job that ended",
        clamp(t.max_job_rss_kib.saturating_mul(1024)),
    );
    let by_gen: Family<Gen, Gauge> = Family::default();
    for s in &st.slots {
        by_gen
            .get_or_create(&Gen {
                generation: s.generation.to_string(),
            })
            .inc();
    }
    r.register(
        "workers_by_generation",
        "live workers by generation",
        by_gen,
    );
    let verdicts: Family<Verdict, Counter> = Family::default();
    for &(by, kept, cancelled) in &t.verdicts {
        for (verdict, n) in [("keep", kept), ("cancel", cancelled)] {
            verdicts
                .get_or_create(&Verdict {
                    by: by.into(),
                    verdict: verdict.into(),
                })
                .inc_by(n);
        }
    }
    r.register(
        "disconnect_verdicts",
        "verdicts on disconnected clients' jobs, by who decided",
        verdicts,
    );
    let faults: Family<Kind, Counter> = Family::default();
    for (kind, v) in [
        ("detection", t.detect_failures),
        ("accept", t.accept_failures),
        ("per-source-refused", t.per_source_refused),
    ] {
        faults.get_or_create(&Kind { kind: kind.into() }).inc_by(v);
    }
    r.register(
        "faults",
        "faults counted: detection retries, failed accepts, --max-per-source refusals",
        faults,
    );
    for (what, name, help) in [
        (
            "detection",
            "hangup_to_detection_seconds",
            "cancelled disconnects: from the hang-up to its detection, by who saw it",
        ),
        (
            "gone",
            "hangup_to_gone_seconds",
            "cancelled disconnects: from the hang-up to the job's whole process tree gone, by who saw it",
        ),
    ] {
        let series = st
            .latency
            .iter()
            .filter(|h| h.what == what)
            .map(|h| {
                (
                    By { by: h.by.into() },
                    h.sum_seconds,
                    h.count,
                    bounds(&h.buckets),
                )
            })
            .collect();
        r.register(name, help, Bucketed(series));
    }
    let series = st
        .job_durations
        .iter()
        .map(|h| {
            (
                OutcomeLabel {
                    outcome: h.outcome.into(),
                },
                h.sum_seconds,
                h.count,
                bounds(&h.buckets),
            )
        })
        .collect();
    r.register(
        "job_duration_seconds",
        "how long jobs ran, by outcome",
        Bucketed(series),
    );
    let mut out = String::new();
    // Writing to a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut out, &r);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scoreboard::{Counter as C, Scoreboard};

    #[test]
    fn families_and_eof() {
        let sb = Scoreboard::anonymous(2).unwrap();
        sb.header().add(C::JobsServed, 5);
        sb.header().add(C::CancelledClientReset, 2);
        let text = encode(&super::super::status::snapshot(&sb));
        assert!(text.ends_with("# EOF\n"), "{text}");
        assert!(text.contains("jobd_jobs_ended_total 5"), "{text}");
        assert!(
            text.contains("jobd_jobs_cancelled_total{reason=\"client-reset\"} 2"),
            "{text}"
        );
        assert!(text.contains("# TYPE jobd_workers gauge"), "{text}");
    }
}
