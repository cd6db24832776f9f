//! A fault that repeats, such as `accept` failing with EMFILE or a
//! disconnect scan failing, is logged once when it starts and once when it
//! ends (with how many failures it had and how long it lasted), never once
//! per failure: a process out of descriptors must not also flood its log.

use std::error::Error;
use std::time::Instant;

/// One kind of failure of one process.
#[derive(Debug)]
pub(crate) struct Episode {
    what: &'static str,
    /// The lines at the start and the end of an episode.
    starts: &'static str,
    ends: &'static str,
    failures: u64,
    since: Option<Instant>,
}

impl Episode {
    /// A kind of failure, named for the log (`accept`, `disconnect scan`).
    pub(crate) const fn new(what: &'static str) -> Episode {
        Episode::with_lines(
            what,
            "failing; further failures are counted until it recovers",
            "works again",
        )
    }

    /// A kind of event with its own start and end lines (the log says
    /// `WHAT STARTS`, `WHAT ENDS`).
    pub(crate) const fn with_lines(
        what: &'static str,
        starts: &'static str,
        ends: &'static str,
    ) -> Episode {
        Episode {
            what,
            starts,
            ends,
            failures: 0,
            since: None,
        }
    }

    /// One failure: the first of an episode is logged. Returns whether it
    /// was the first.
    pub(crate) fn failed(&mut self, slot: Option<usize>, error: &dyn Error) -> bool {
        self.failures += 1;
        if self.since.is_some() {
            return false;
        }
        self.since = Some(Instant::now());
        // The error and its causes, on one line.
        let mut why = error.to_string();
        let mut cause = error.source();
        while let Some(c) = cause {
            why.push_str(": ");
            why.push_str(&c.to_string());
            cause = c.source();
        }
        tracing::warn!(
            slot,
            what = self.what,
            error = %why,
            "{} {}",
            self.what,
            self.starts
        );
        true
    }

    /// A success: ends an episode, if one runs, with its count.
    pub(crate) fn ok(&mut self, slot: Option<usize>) {
        if let Some(t) = self.since.take() {
            tracing::info!(
                slot,
                what = self.what,
                failures = self.failures,
                lasted_ms = t.elapsed().as_millis() as u64,
                "{} {}",
                self.what,
                self.ends
            );
            self.failures = 0;
        }
    }

    /// Whether an episode runs.
    #[cfg(test)]
    pub(crate) fn active(&self) -> bool {
        self.since.is_some()
    }

    /// Failures in the running episode.
    #[cfg(test)]
    pub(crate) fn failures(&self) -> u64 {
        self.failures
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_episode_starts_once_and_ends_with_its_count() {
        let mut e = Episode::new("accept");
        assert!(!e.active());
        let emfile = std::io::Error::from_raw_os_error(libc::EMFILE);
        assert!(e.failed(Some(1), &emfile));
        for _ in 0..9 {
            assert!(!e.failed(Some(1), &emfile));
        }
        assert!(e.active());
        assert_eq!(e.failures(), 10);
        e.ok(Some(1));
        assert!(!e.active());
        assert_eq!(e.failures(), 0);
        assert!(e.failed(None, &emfile), "a new episode");
    }
}
