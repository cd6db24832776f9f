//! What jobd may signal: only its own children and their jobs. The
//! scoreboard is shared memory (a file with `--scoreboard`) that a bug or
//! anyone who can write the file may change; nothing in it is a target.

use std::io::{BufRead, BufReader};
use std::os::unix::fs::FileExt;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};

use crate::util::{self, Jobd, alive, wait_until};

/// The live children of `pid` (from `/proc/<pid>/task/*/children`).
fn children_of(pid: i32) -> Vec<i32> {
    let mut out = Vec::new();
    for t in std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .flatten()
    {
        let text = std::fs::read_to_string(t.path().join("children")).unwrap_or_default();
        out.extend(
            text.split_whitespace()
                .filter_map(|p| p.parse::<i32>().ok()),
        );
    }
    out
}

/// Regression guard (issue 10): a worker's death made the supervisor
/// SIGKILL the process group named in the worker's slot, so a pid written
/// into the scoreboard chose who died. Foreign pids (a sacrificial process
/// of the test in its own group, and the test runner itself) are written
/// as u32 and u64 at every offset of every slot while workers are killed:
/// the foreign processes live, and jobd serves on.
#[test]
fn foreign_pids_in_the_scoreboard_are_never_signalled() {
    let (mut j, sb) =
        Jobd::with_script_sb("echo \"$JOBD_JOB_ID\"\nexec sleep 300", &["--prefork", "2"]);
    let mut victim = Command::new("sleep")
        .arg("1000")
        .process_group(0)
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let foreign = [victim.id(), std::process::id()];
    // Two jobs running, so that the slots hold job records too.
    let (_a, _) = j.request_line("");
    let (_b, _) = j.request_line("");
    let file = std::fs::OpenOptions::new().write(true).open(&sb).unwrap();
    let len = file.metadata().unwrap().len();
    const HEADER: u64 = 512;
    for round in 0..3 {
        for &pid in &foreign {
            let mut off = HEADER;
            while off + 8 <= len {
                if round % 2 == 0 {
                    file.write_at(&pid.to_le_bytes(), off).unwrap();
                } else {
                    file.write_at(&u64::from(pid).to_le_bytes(), off).unwrap();
                }
                off += 4;
            }
        }
        // Kill every worker of jobd (its children, from the process table).
        for w in children_of(j.pid()) {
            util::send(w, "KILL");
        }
        wait_until("workers replaced", || {
            let now = children_of(j.pid());
            now.len() >= 2 && now.iter().all(|&p| alive(p))
        });
        assert!(
            alive(victim.id() as i32),
            "round {round}: the foreign process was killed"
        );
    }
    // jobd serves on.
    let s = j.connect();
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line).unwrap();
    assert!(line.trim().parse::<u64>().is_ok(), "{line:?}");
    assert!(alive(victim.id() as i32));
    let _ = victim.kill();
    let _ = victim.wait();
    j.signal("INT");
    assert!(j.wait_exit().success());
    util::wait_gone(&j.tag);
}

/// A worker killed in the middle of a job: its job (adopted by the
/// supervisor) is killed with its group, found among the supervisor's own
/// children, and recorded as lost.
#[test]
fn the_job_of_a_killed_worker_goes_with_it() {
    let mut j = Jobd::with_script(
        "echo \"$$ $PPID $JOBD_JOB_ID\"\nsleep 300 &\nwait",
        &["--prefork", "1"],
    );
    let (_s, line) = j.request_line("");
    let v: Vec<i32> = line
        .split_whitespace()
        .map(|x| x.parse().unwrap())
        .collect();
    let (handler, worker, job) = (v[0], v[1], v[2]);
    j.wait_log(|l| l.contains("job started") && l.contains(&format!("job={job} ")));
    util::send(worker, "KILL");
    wait_until("the orphaned job gone", || !alive(handler));
    j.wait_log(|l| l.contains("job ended") && l.contains("reason=worker-died"));
    j.stop_clean();
}
