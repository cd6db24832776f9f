//! The pid file (being written: see the pid file work item).
