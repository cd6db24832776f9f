//! What jobd may signal: only its own children and their jobs. The
//! scoreboard is shared memory (a file with `--scoreboard`) that a bug or
//! anyone who can write the file may change; nothing in it is a target.

use std::io::{BufRead, BufReader};
use std::os::unix::fs::FileExt;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Command, Stdio};

use crate::util::{self, Jobd, alive, wait_until};

/// The cgroup v2 directory jobd would create its tree in (this process's
/// own cgroup), when the tests run as root on a machine with cgroup v2.
pub(crate) fn cgroup_root() -> Option<std::path::PathBuf> {
    if !nix::unistd::geteuid().is_root() {
        return None;
    }
    let mi = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let mount = mi.lines().find_map(|l| {
        let (left, right) = l.split_once(" - ")?;
        (right.split_whitespace().next()? == "cgroup2").then(|| left.split_whitespace().nth(4))?
    })?;
    let own = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let own = own.lines().find_map(|l| l.strip_prefix("0::"))?;
    Some(std::path::Path::new(mount).join(own.trim_start_matches('/')))
}

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
    let victim = KillOnDrop(
        Command::new("sleep")
            .arg("1000")
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let foreign = [victim.0.id(), std::process::id()];
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
            alive(victim.0.id() as i32),
            "round {round}: the foreign process was killed"
        );
    }
    // jobd serves on.
    let s = j.connect();
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line).unwrap();
    assert!(line.trim().parse::<u64>().is_ok(), "{line:?}");
    assert!(alive(victim.0.id() as i32));
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

/// A handler that daemonizes a `sleep 1000` out of its process group: with
/// `setsid` (`double` false) or with a double fork and `setsid` (`double`
/// true). Its first line: the escapee's pid, the handler's, the worker's,
/// the job id.
fn escaping_handler(double: bool, then: &str) -> String {
    // The escapee writes its own pid once it runs in its new session, and
    // the handler waits for it: the escape is complete before the job can
    // end, so only the subreaper sweep (not the group kill) can catch it.
    let spawn = if double {
        r#"sh -c 'setsid sh -c "echo \$\$ > \"\$0\"; exec sleep 1000" "$0" </dev/null >/dev/null 2>&1 &' "$f""#
    } else {
        r#"setsid sh -c 'echo $$ > "$0"; exec sleep 1000' "$f" </dev/null >/dev/null 2>&1 &"#
    };
    format!(
        "f=$(mktemp)\n{spawn}\nwhile [ ! -s \"$f\" ]; do sleep 0.01; done\nesc=$(cat \"$f\")\nrm -f \"$f\"\necho \"$esc $$ $PPID $JOBD_JOB_ID\"\n{then}"
    )
}

fn ids(line: &str) -> (i32, i32, i32, u64) {
    let v: Vec<&str> = line.split_whitespace().collect();
    (
        v[0].parse().unwrap(),
        v[1].parse().unwrap(),
        v[2].parse().unwrap(),
        v[3].parse().unwrap(),
    )
}

/// Regression guard (issue 10): a job's processes that left its process
/// group (setsid, a double fork) survived the end of the job, its
/// cancellation, the death of its worker and jobd's own exit. The worker is
/// now the subreaper of its jobs and kills whatever it adopted when the job
/// ends; the supervisor does the same for the jobs of a dead worker.
#[test]
fn a_job_that_escapes_its_process_group_is_still_killed() {
    let mut modes = vec!["subreaper"];
    if cgroup_root().is_some() {
        modes.push("cgroup");
    } else {
        eprintln!("no cgroup v2 as root here: --containment cgroup not tested");
    }
    for (mode, double) in modes.iter().flat_map(|m| [(*m, false), (*m, true)]) {
        let args = ["--prefork", "1", "--containment", mode];
        // (a) The job ends by itself.
        let mut j = Jobd::with_script(&escaping_handler(double, "exit 0"), &args);
        let (s, line) = j.request_line("");
        let (esc, _, _, job) = ids(&line);
        drop(s);
        j.wait_log(|l| l.contains("job ended") && l.contains(&format!("job={job} ")));
        wait_until("the escapee of a finished job gone", || !alive(esc));
        // (b) The job is cancelled (its client resets).
        let j2 = escaping_handler(double, "exec sleep 300");
        j.stop_clean();
        let mut j = Jobd::with_script(&j2, &args);
        let (s, line) = j.request_line("");
        let (esc, handler, _, _) = ids(&line);
        util::reset(s);
        wait_until("the cancelled job and its escapee gone", || {
            !alive(handler) && !alive(esc)
        });
        // (c) The worker dies mid-job.
        let (_s, line) = j.request_line("");
        let (esc, handler, worker, job) = ids(&line);
        j.wait_log(|l| l.contains("job started") && l.contains(&format!("job={job} ")));
        util::send(worker, "KILL");
        let gone = util::poll_until(std::time::Instant::now() + util::DEADLINE, || {
            !alive(handler) && !alive(esc)
        });
        assert!(
            gone,
            "{mode} double={double}: handler {handler} alive {}, escapee {esc} alive {}; log:\n{}",
            alive(handler),
            alive(esc),
            j.dump()
        );
        // (d) jobd is stopped with SIGINT.
        let (_s, line) = j.request_line("");
        let (esc, handler, _, job) = ids(&line);
        j.wait_log(|l| l.contains("job started") && l.contains(&format!("job={job} ")));
        j.signal("INT");
        assert!(j.wait_exit().success());
        wait_until("the job and its escapee gone after SIGINT", || {
            !alive(handler) && !alive(esc)
        });
        util::wait_gone(&j.tag);
    }
}

/// Per-job accounting: a job whose grandchild burns 300 ms of CPU reports
/// 250-400 ms (whole tree, from wait4), and one that touches 100 MiB
/// reports a peak of at least that, in the job-end line and the access log.
#[test]
fn a_job_reports_its_cpu_time_and_peak_memory() {
    let dir = util::tempdir();
    let access = dir.path().join("access.log");
    let h = util::script(
        dir.path(),
        "h.sh",
        concat!(
            "IFS= read -r what\n",
            "if [ \"$what\" = cpu ]; then\n",
            // A grandchild that burns 300 ms of its own CPU time (utime +
            // stime in /proc/self/stat, in 10 ms ticks), however loaded the
            // machine is.
            "  sh -c 'awk \"BEGIN { while (1) { getline s < \\\"/proc/self/stat\\\"; ",
            "close(\\\"/proc/self/stat\\\"); split(s, f, \\\" \\\"); if (f[14] + f[15] >= 30) exit } }\"'\n",
            "else\n",
            // dd reads 100 MiB into one buffer: a peak of about 100 MiB.
            "  dd if=/dev/zero of=/dev/null bs=100M count=1 2>/dev/null\n",
            "fi\n",
            "echo ok"
        ),
    );
    let mut j = Jobd::start_in(
        dir,
        &[
            "--prefork",
            "1",
            "--access-log",
            access.to_str().unwrap(),
            "--script",
            h.to_str().unwrap(),
        ],
    );
    assert_eq!(j.request_all("cpu\n").trim(), "ok");
    assert_eq!(j.request_all("mem\n").trim(), "ok");
    let lines = util::wait_file_lines(&access, 2);
    let field = |l: &str, k: &str| -> u64 {
        util::field(l, k)
            .parse()
            .unwrap_or_else(|_| panic!("{k} in {l}"))
    };
    let cpu = field(&lines[0], "cpu_user_ms") + field(&lines[0], "cpu_sys_ms");
    assert!((250..=400).contains(&cpu), "cpu {cpu} ms in {}", lines[0]);
    let rss = field(&lines[1], "max_rss_kib");
    assert!(rss >= 100 * 1024, "peak {rss} KiB in {}", lines[1]);
    let end = j.wait_log(|l| l.contains("job ended") && l.contains("job=2 "));
    assert!(end.contains("max_rss_kib="), "{end}");
    j.stop_clean();
}

/// `jobd status` shows the CPU a running job has used so far: a handler
/// whose child burned 300 ms and was reaped, then waits, shows at least
/// 250 ms in its slot (table and JSON) while it still runs.
#[test]
fn status_shows_the_cpu_a_running_job_has_used() {
    let dir = util::tempdir();
    let sb = dir.path().join("sb");
    let h = util::script(
        dir.path(),
        "h.sh",
        concat!(
            "sh -c 'awk \"BEGIN { while (1) { getline s < \\\"/proc/self/stat\\\"; ",
            "close(\\\"/proc/self/stat\\\"); split(s, f, \\\" \\\"); if (f[14] + f[15] >= 30) exit } }\"'\n",
            "echo burned\n",
            "IFS= read -r _\n",
        ),
    );
    let mut j = Jobd::start_in(
        dir,
        &[
            "--prefork",
            "1",
            "--scoreboard",
            sb.to_str().unwrap(),
            "--script",
            h.to_str().unwrap(),
        ],
    );
    let (mut conn, line) = j.request_line("");
    assert_eq!(line.trim(), "burned");
    let st = Jobd::status_json(&sb);
    let slot = st["slots"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["state"] == "busy")
        .unwrap_or_else(|| panic!("no busy slot in {st}"));
    let cpu = slot["job_cpu_ms"]
        .as_u64()
        .unwrap_or_else(|| panic!("no job_cpu_ms in {st}"));
    assert!((250..2000).contains(&cpu), "cpu so far {cpu} ms in {st}");
    let out = std::process::Command::new(util::jobd_bin())
        .args(["status", "--scoreboard", sb.to_str().unwrap()])
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    let header = table.lines().find(|l| l.contains("SLOT")).unwrap();
    let col = header
        .split_whitespace()
        .position(|w| w == "CPU")
        .unwrap_or_else(|| panic!("no CPU column in {table}"));
    let row = table.lines().find(|l| l.contains(" busy ")).unwrap();
    let shown: f64 = row
        .split_whitespace()
        .nth(col)
        .and_then(|w| w.trim_end_matches('s').parse().ok())
        .unwrap_or_else(|| panic!("no CPU figure in {row}"));
    assert!(shown >= 0.25, "{table}");
    std::io::Write::write_all(&mut conn, b"done\n").unwrap();
    drop(conn);
    j.wait_log(|l| l.contains("job ended"));
    let st = Jobd::status_json(&sb);
    let slots = st["slots"].as_array().unwrap();
    assert!(slots.iter().all(|s| s["job_cpu_ms"].is_null()), "{st}");
    j.stop_clean();
}

/// A child of the test, killed (and reaped) if the test fails first.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Removes a cgroup tree this test made jobd leave, if the test fails
/// before jobd does: kills what is in it, removes it deepest first.
struct RemoveTree(std::path::PathBuf);

impl Drop for RemoveTree {
    fn drop(&mut self) {
        fn rm(d: &std::path::Path) {
            if let Ok(rd) = std::fs::read_dir(d) {
                for e in rd.flatten() {
                    if e.file_type().is_ok_and(|t| t.is_dir()) {
                        rm(&e.path());
                    }
                }
            }
            let _ = std::fs::write(d.join("cgroup.kill"), "1");
            let _ = util::poll_until(std::time::Instant::now() + util::DEADLINE, || {
                std::fs::read_to_string(d.join("cgroup.events"))
                    .map_or(true, |t| t.contains("populated 0"))
            });
            let _ = std::fs::remove_dir(d);
        }
        rm(&self.0);
    }
}

/// `--containment cgroup`: a supervisor SIGKILLed leaves its cgroup tree
/// (and an escaped job process in it); the next jobd kills what is in it
/// and removes it, and a clean stop leaves no tree behind.
#[test]
fn cgroups_left_by_a_killed_jobd_are_removed_at_the_next_start() {
    let Some(root) = cgroup_root() else {
        eprintln!("no cgroup v2 as root here: skipped");
        return;
    };
    let body = escaping_handler(false, "exec sleep 300");
    let mut j = Jobd::with_script(&body, &["--prefork", "1", "--containment", "cgroup"]);
    j.wait_log(|l| l.contains("job containment: a cgroup per slot"));
    let tree = root.join(format!("jobd-{}", j.pid()));
    let _guard = RemoveTree(tree.clone());
    assert!(tree.is_dir(), "{} missing", tree.display());
    let (_s, line) = j.request_line("");
    let (esc, _, _, job) = ids(&line);
    j.wait_log(|l| {
        l.contains("job started")
            && l.contains(&format!("job={job} "))
            && l.contains("containment=\"cgroup\"")
    });
    util::send(j.pid(), "KILL");
    let _ = j.wait_exit();
    if !tree.is_dir() {
        // A jobd of another test, starting in the same parent cgroup, took
        // the dead tree for stale and removed it first: what this test
        // checks happened, by another hand.
        eprintln!("the killed jobd's tree was removed by another jobd's start");
        return;
    }
    // Its workers die with it and kill their jobs (the escapee too: it is
    // in the job's cgroup); a process is left in the old tree by hand.
    wait_until("the escapee killed with its job", || !alive(esc));
    let mut stray = KillOnDrop(
        Command::new("sleep")
            .arg("1000")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let job_cg = std::fs::read_dir(tree.join("slot-0"))
        .unwrap()
        .flatten()
        .find(|e| e.file_name().to_string_lossy().starts_with("job-"))
        .expect("the dead worker's job cgroup")
        .path();
    std::fs::write(job_cg.join("cgroup.procs"), stray.0.id().to_string()).unwrap();
    let mut next = Jobd::with_script("echo hi", &["--prefork", "1", "--containment", "cgroup"]);
    wait_until("the stale tree removed", || !tree.exists());
    assert!(
        stray.0.wait().unwrap().signal().is_some(),
        "the stray process was killed"
    );
    next.wait_log(|l| l.contains("job containment: a cgroup per slot"));
    let mine = root.join(format!("jobd-{}", next.pid()));
    assert!(mine.is_dir());
    next.stop_clean();
    assert!(!mine.exists(), "a clean stop removes the tree");
}

/// `--job-limit`: a CPU limit ends a busy loop (reason limit-cpu), an
/// address-space limit makes a large allocation fail inside the job, a
/// file-size limit ends a job that writes past it (reason limit-fsize).
#[test]
fn job_limits_are_applied_to_the_handler() {
    let dir = util::tempdir();
    let out = dir.path().join("big");
    let h = util::script(
        dir.path(),
        "h.sh",
        &format!(
            concat!(
                "IFS= read -r what\n",
                "case $what in\n",
                " cpu) awk 'BEGIN {{ while (1) {{}} }}' ;;\n",
                " mem) if dd if=/dev/zero of=/dev/null bs=200M count=1 2>/dev/null; then echo allocated; else echo refused; fi ;;\n",
                " file) head -c 65536 /dev/zero > {} ;;\n",
                "esac"
            ),
            out.display()
        ),
    );
    let mut j = Jobd::start_in(
        dir,
        &[
            "--prefork",
            "1",
            "--job-limit",
            "cpu=1s",
            "--job-limit",
            "as=100M",
            "--job-limit",
            "fsize=4K",
            "--script",
            h.to_str().unwrap(),
        ],
    );
    assert_eq!(j.request_all("mem\n").trim(), "refused");
    assert_eq!(j.request_all("cpu\n"), "");
    let end = j.wait_log(|l| l.contains("job ended") && l.contains("job=2 "));
    assert!(
        end.contains("outcome=failed") && end.contains("reason=limit-cpu"),
        "{end}"
    );
    let cpu: u64 = util::field(&end, "cpu_user_ms").parse::<u64>().unwrap()
        + util::field(&end, "cpu_sys_ms").parse::<u64>().unwrap();
    // The kernel enforces RLIMIT_CPU on its tick-sampled CPU clock, while
    // wait4 reports the scheduler's precise time: on a guest whose host
    // steals time the two differ by tens of percent (845 ms was seen here
    // for a 1 s limit under load).
    assert!(
        (500..=2000).contains(&cpu),
        "the loop ran {cpu} ms of CPU before its 1 s limit: {end}"
    );
    assert_eq!(j.request_all("file\n"), "");
    let end = j.wait_log(|l| l.contains("job ended") && l.contains("job=3 "));
    assert!(end.contains("reason=limit-fsize"), "{end}");
    j.stop_clean();
}

/// Bad `--job-limit` values, and limits that need cgroup controllers jobd
/// does not manage, are refused with exit status 2 and a message naming
/// the value.
#[test]
fn bad_job_limits_are_refused() {
    for bad in [
        "cpu=forever",
        "as=lots",
        "memory=2G",
        "pids=100",
        "color=red",
        "cpu",
    ] {
        let (st, _out, err) = util::run_jobd(&["--job-limit", bad, "--script", "/bin/cat"]);
        assert_eq!(st.code(), Some(2), "{bad}: {err}");
        assert!(err.contains(bad), "{bad}: {err}");
    }
}
