//! The error log and the access log (being written: see the logs work item).

/// One access log record: a job that ended.
#[derive(Debug, Clone, serde::Serialize)]
pub struct AccessRecord<'a> {
    /// Job id.
    pub job_id: u64,
    /// Worker slot.
    pub slot: usize,
    /// Worker pid.
    pub pid: u32,
    /// Client address.
    pub peer: &'a str,
    /// How long the job ran.
    pub duration_ms: u64,
    /// done, failed, cancelled or timeout.
    pub outcome: &'a str,
    /// Exit status or signal (`exit 0`, `signal SIGTERM`).
    pub status: &'a str,
}

/// Appends one line to the access log, when there is one.
pub fn access(_rec: &AccessRecord<'_>) {}

/// Reopens the error log and the access log in this process (SIGUSR1).
pub fn reopen() -> std::io::Result<()> {
    Ok(())
}
