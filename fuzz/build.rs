//! Copies the two detection backends' source into OUT_DIR with their module
//! doc turned into plain comments (`include!` cannot take `//!` lines), so that
//! src/lib.rs can compile them and reach their private parsers
//! (`walk_datagram`, `push_matching`, `dedup_tail`) unchanged.

use std::path::Path;

fn main() {
    let out = std::env::var("OUT_DIR").expect("OUT_DIR");
    for name in ["sockdiag", "procfs"] {
        let src = format!("../src/detect/{name}.rs");
        println!("cargo:rerun-if-changed={src}");
        let text = std::fs::read_to_string(&src).unwrap_or_else(|e| panic!("{src}: {e}"));
        // A `//!` line becomes a plain `//` comment: the line numbers of
        // a panic stay those of the file in src/.
        let body: String = text
            .lines()
            .map(|l| {
                l.strip_prefix("//!")
                    .map_or(l.to_string(), |r| format!("//{r}"))
            })
            .flat_map(|l| [l, "\n".to_string()])
            .collect();
        assert!(
            !body.lines().any(|l| l.trim_start().starts_with("#![")),
            "{src}: an inner attribute, which include! cannot take"
        );
        std::fs::write(Path::new(&out).join(format!("{name}.rs")), body).expect("write");
    }
}
