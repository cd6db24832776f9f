//! Entry points for the cargo-fuzz targets in `fuzz/` (feature `fuzzing`,
//! absent from every normal build). Each takes the raw fuzz input and hands
//! it to the parser jobd really uses; none of them parses anything itself.
//!
//! Two parsers are out of reach from here because they are private to their
//! modules (not `pub(crate)`): the sock_diag reply walker
//! (`detect::sockdiag::walk_datagram`) and the procfs filter
//! (`detect::procfs::push_matching`, `dedup_tail`). The fuzz crate compiles
//! the source of those two files itself (see `fuzz/build.rs`).

use std::path::PathBuf;

use crate::config::{parse_duration, parse_job_limit};
use crate::hooks::{DisconnectEvent, DisconnectReason};

/// A `/proc/net/tcp` or `/proc/net/tcp6` table, parsed by the call that
/// `procfs::net::tcp()` and `tcp6()` make (those only open the file first),
/// which is what `detect::procfs::ProcNet` reads. `None` when the crate
/// refuses the text.
pub fn proc_net_tcp(data: &[u8]) -> Option<Vec<procfs::net::TcpNetEntry>> {
    use procfs::FromReadSI;
    procfs::net::TcpNetEntries::from_read(data, procfs::current_system_info())
        .ok()
        .map(|t| t.0)
}

/// A scratch file for [`scoreboard`], one per fuzzing process.
fn scratch_path() -> PathBuf {
    std::env::temp_dir().join(format!("jobd-fuzz-scoreboard-{}", std::process::id()))
}

/// Writes `data` to a scratch file and reads it as `jobd status` does:
/// `Scoreboard::open_read`, `control::status::snapshot`, then the table and
/// the JSON rendering. Returns whether the file was taken for a scoreboard.
pub fn scoreboard(data: &[u8]) -> bool {
    let path = scratch_path();
    std::fs::write(&path, data).expect("cannot write the scratch scoreboard file");
    let accepted = match crate::scoreboard::Scoreboard::open_read(&path) {
        Ok(sb) => {
            let status = crate::control::status::snapshot(&sb);
            drop(sb);
            let _ = status.render();
            // As `jobd status --json` (src/bin/jobd/main.rs) does.
            let _ = serde_json::to_string(&status).expect("status serializes");
            true
        }
        Err(e) => {
            let _ = e.to_string();
            false
        }
    };
    let _ = std::fs::remove_file(&path);
    accepted
}

/// The text of a `--job-limit`, `--grace`, `--check-interval` ... value:
/// [`parse_duration`] and [`parse_job_limit`] on the input as it is, and
/// `parse_size` (private) through the `--job-limit` keys that take a size.
pub fn durations(data: &[u8]) {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(d) = parse_duration(s) {
        // parse_duration refuses more than 1e9 seconds.
        assert!(d.as_secs() <= 1_000_000_000, "{s:?} gave {d:?}");
    }
    let _ = parse_job_limit(s);
    for key in ["cpu", "as", "core", "fsize", "nofile"] {
        let _ = parse_job_limit(&format!("{key}={s}"));
    }
}

/// Takes `N` bytes from the front of `data` (zero-padded when short).
fn take<const N: usize>(data: &mut &[u8]) -> [u8; N] {
    let mut out = [0u8; N];
    let n = N.min(data.len());
    out[..n].copy_from_slice(&data[..n]);
    *data = &data[n..];
    out
}

/// The hook program protocol as it is: jobd writes the [`DisconnectEvent`]
/// as one JSON line to the `--disconnect-hook` program's stdin
/// (`watch::verdict::PendingHooks::start`) and takes the verdict from its
/// exit status; the program's stdout goes to /dev/null and is never parsed.
/// This checks that line for any event (any host text, any numbers): one
/// line, valid JSON, the same values back.
pub fn hook_event(data: &[u8]) {
    let mut d = data;
    let slot = u16::from_ne_bytes(take(&mut d)) as usize;
    let pid = i32::from_ne_bytes(take(&mut d));
    let job_id = u64::from_ne_bytes(take(&mut d));
    let ports: [u8; 4] = take(&mut d);
    let [flags]: [u8; 1] = take(&mut d);
    let job_start_unix_ms = u64::from_ne_bytes(take(&mut d));
    let detected_unix_ms = u64::from_ne_bytes(take(&mut d));
    let text = String::from_utf8_lossy(d);
    let mid = (0..=text.len() / 2)
        .rev()
        .find(|&i| text.is_char_boundary(i))
        .unwrap_or(0);
    let (local_host, foreign_host) = text.split_at(mid);
    let (local_host, foreign_host) = (local_host.to_string(), foreign_host.to_string());
    // `--proxy-protocol`: the balancer's address, any text here too.
    let proxy_peer = (flags & 0x40 != 0).then(|| format!("{foreign_host}{local_host}"));
    let reason = match flags % 3 {
        0 => DisconnectReason::ClientClosed,
        1 => DisconnectReason::ClientReset,
        _ => DisconnectReason::ClientUnresponsive,
    };
    let ev = DisconnectEvent {
        slot,
        pid,
        job_id,
        proto: if flags & 0x80 == 0 { "TCP" } else { "TCP6" },
        local_host,
        local_port: u16::from_ne_bytes([ports[0], ports[1]]),
        foreign_host,
        foreign_port: u16::from_ne_bytes([ports[2], ports[3]]),
        reason,
        proxy_peer,
        job_start_unix_ms,
        detected_unix_ms,
    };
    // As PendingHooks::start builds the line.
    let line = serde_json::to_string(&ev).expect("event serializes") + "\n";
    assert_eq!(line.find('\n'), Some(line.len() - 1), "{line:?}");
    let v: serde_json::Value = serde_json::from_str(&line).expect("event line is JSON");
    assert_eq!(v["slot"], slot);
    assert_eq!(v["pid"], pid);
    assert_eq!(v["job_id"], job_id);
    assert_eq!(v["local_host"], ev.local_host.as_str());
    assert_eq!(v["foreign_host"], ev.foreign_host.as_str());
    assert_eq!(v["reason"], reason.as_str());
    assert_eq!(v["proxy_peer"].as_str(), ev.proxy_peer.as_deref());
    assert_eq!(v["job_start_unix_ms"], job_start_unix_ms);
    assert_eq!(v["detected_unix_ms"], detected_unix_ms);
}

/// The PROXY protocol header parser, in every mode: never panics; a header
/// it accepts is never longer than the input, and one found in `any` mode
/// is the one the version-specific mode finds.
pub fn proxy_header(data: &[u8]) {
    use crate::config::ProxyProtocol as P;
    let any = crate::proxy::parse(data, P::Any);
    for mode in [P::V1, P::V2, P::Any] {
        if let Ok(Some((_, len))) = crate::proxy::parse(data, mode) {
            assert!(len <= data.len() && len > 0);
            if mode != P::Any {
                assert_eq!(any, crate::proxy::parse(data, mode));
            }
        }
    }
}
