//! Bad input: each gets a clear message naming the input and what is wrong,
//! exit status 2 (usage or configuration) or 1 (a port in use), and nothing
//! left running (the harness checks no process of the run remains).

use crate::util::{run_jobd, script, tempdir};

fn expect(args: &[&str], code: i32, needles: &[&str]) {
    let (st, out, err) = run_jobd(args);
    assert_eq!(
        st.code(),
        Some(code),
        "jobd {args:?}: {st:?}\nstdout: {out}\nstderr: {err}"
    );
    for n in needles {
        assert!(
            err.contains(n),
            "jobd {args:?}: {n:?} not in stderr:\n{err}"
        );
    }
    assert!(!err.contains("panicked"), "jobd {args:?} panicked:\n{err}");
}

#[test]
fn missing_script() {
    expect(
        &["--script", "/nonexistent/handler"],
        2,
        &["/nonexistent/handler", "no such file"],
    );
}

#[test]
fn script_not_executable() {
    let dir = tempdir();
    let p = dir.path().join("plain.txt");
    std::fs::write(&p, "echo hi\n").unwrap();
    expect(
        &["--script", p.to_str().unwrap()],
        2,
        &[p.to_str().unwrap(), "not executable"],
    );
}

#[test]
fn script_is_a_directory() {
    let dir = tempdir();
    expect(
        &["--script", dir.path().to_str().unwrap()],
        2,
        &[dir.path().to_str().unwrap(), "directory"],
    );
}

#[test]
fn no_script_at_all() {
    expect(&[], 2, &["--script"]);
}

#[test]
fn prefork_not_a_number() {
    expect(
        &["--prefork", "four", "--script", "/bin/cat"],
        2,
        &["--prefork", "four"],
    );
}

#[test]
fn prefork_absurd() {
    expect(
        &["--prefork", "10001", "--script", "/bin/cat"],
        2,
        &["--prefork", "10001"],
    );
    expect(
        &["--prefork", "-3", "--script", "/bin/cat"],
        2,
        &["--prefork"],
    );
}

#[test]
fn unparseable_listen() {
    expect(
        &["--listen", "localhost:http", "--script", "/bin/cat"],
        2,
        &["--listen", "localhost:http"],
    );
    expect(
        &["--listen", "127.0.0.1:99999", "--script", "/bin/cat"],
        2,
        &["--listen", "127.0.0.1:99999"],
    );
}

#[test]
fn bad_durations() {
    expect(
        &["--grace", "-1s", "--script", "/bin/cat"],
        2,
        &["--grace", "negative"],
    );
    expect(
        &["--kill-grace", "soon", "--script", "/bin/cat"],
        2,
        &["--kill-grace", "soon"],
    );
    expect(
        &["--check-interval", "0", "--script", "/bin/cat"],
        2,
        &["--check-interval", "greater than zero"],
    );
}

#[test]
fn scoreboard_in_missing_directory() {
    expect(
        &[
            "--scoreboard",
            "/nonexistent-dir/jobd.sb",
            "--script",
            "/bin/cat",
        ],
        2,
        &["/nonexistent-dir/jobd.sb", "does not exist"],
    );
}

#[test]
fn status_on_missing_file() {
    expect(
        &["status", "--scoreboard", "/nonexistent/jobd.sb"],
        2,
        &["/nonexistent/jobd.sb"],
    );
}

#[test]
fn status_on_a_file_that_is_not_a_scoreboard() {
    let dir = tempdir();
    let small = script(dir.path(), "x.sh", "echo hi");
    expect(
        &["status", "--scoreboard", small.to_str().unwrap()],
        2,
        &["not a jobd scoreboard"],
    );
    let big = dir.path().join("big");
    std::fs::write(&big, vec![b'z'; 8192]).unwrap();
    expect(
        &["status", "--scoreboard", big.to_str().unwrap()],
        2,
        &["not a jobd scoreboard"],
    );
}

#[test]
fn bad_hook_program() {
    expect(
        &[
            "--disconnect-hook",
            "/nonexistent/hook",
            "--script",
            "/bin/cat",
        ],
        2,
        &["--disconnect-hook", "/nonexistent/hook"],
    );
}

#[test]
fn port_in_use_names_the_address() {
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = busy.local_addr().unwrap().to_string();
    expect(
        &["--listen", &addr, "--script", "/bin/cat"],
        1,
        &[&format!("failed to listen on {addr}"), "in use"],
    );
}
