#!/usr/bin/env bash
# Runs every cargo-fuzz target of fuzz/ for SECONDS each (default 60), one
# after the other, and prints per target the executions, the coverage and
# whether it crashed. Exits 1 when any target crashed (or failed to run).
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]
#
# Needs a nightly toolchain and cargo-fuzz (`cargo install cargo-fuzz`).
# The committed seeds (fuzz/corpus/<target>) are only read; what the fuzzer
# finds goes to fuzz/target/corpus/<target> (kept between runs, ignored by
# git), crashes to fuzz/artifacts/<target>/, full logs to fuzz/target/logs/.
#
# FUZZ_ARGS adds libFuzzer options, e.g. FUZZ_ARGS="-fork=1 -ignore_crashes=1"
# to keep fuzzing past a known crash (each crash still counts as one).
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"

secs=${1:-60}
[[ $secs =~ ^[1-9][0-9]*$ ]] || {
    echo "usage: $0 [SECONDS] [TARGET...]" >&2
    exit 2
}
shift || true
all=(proc_net_tcp sock_diag scoreboard durations hook_json proxy_header)
if (($#)); then targets=("$@"); else targets=("${all[@]}"); fi

if ! cargo +nightly fuzz --help >/dev/null 2>&1; then
    echo "fuzz.sh: needs nightly and cargo-fuzz: rustup toolchain install nightly && cargo install cargo-fuzz" >&2
    exit 2
fi

logs=fuzz/target/logs
bin=fuzz/target/$(rustc +nightly -vV | sed -n 's/^host: //p')/release
mkdir -p "$logs"
echo "building the fuzz targets"
cargo +nightly fuzz build >"$logs/build.log" 2>&1 || {
    tail -n 30 "$logs/build.log" >&2
    echo "fuzz.sh: build failed (full log: $logs/build.log)" >&2
    exit 1
}

failed=0
summary=()
for t in "${targets[@]}"; do
    [[ -d fuzz/corpus/$t ]] || {
        echo "fuzz.sh: no target $t (no fuzz/corpus/$t)" >&2
        exit 2
    }
    work=fuzz/target/corpus/$t
    mkdir -p "$work" "fuzz/artifacts/$t"
    log=$logs/$t.log
    echo "== $t: ${secs}s"
    stamp=$(mktemp)
    rc=0
    # shellcheck disable=SC2086 # FUZZ_ARGS is a list of options
    cargo +nightly fuzz run "$t" "$work" "fuzz/corpus/$t" -- \
        -max_total_time="$secs" -rss_limit_mb=2048 -print_final_stats=1 ${FUZZ_ARGS:-} \
        >"$log" 2>&1 || rc=$?
    # Crash, leak, OOM and timeout inputs written during this run.
    mapfile -t found < <(find "fuzz/artifacts/$t" -type f -newer "$stamp" \
        \( -name 'crash-*' -o -name 'leak-*' -o -name 'oom-*' -o -name 'timeout-*' \) | sort)
    rm -f "$stamp"
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
    # Plain mode: "#N DONE cov: ..."; fork mode: "#N: cov: ...".
    last=$(grep -E '^#[0-9]+:?[[:space:]].*cov: ' "$log" | tail -n 1 || true)
    [[ -n $runs ]] || runs=$(grep -oE '^#[0-9]+' <<<"$last" | tr -d '#' || true)
    cov=$(grep -oE 'cov: [0-9]+' <<<"$last" | cut -d' ' -f2 || true)
    ft=$(grep -oE 'ft: [0-9]+' <<<"$last" | cut -d' ' -f2 || true)
    corp=$(grep -oE 'corp: [0-9]+(/[0-9]+[bKMG]?b?)?' <<<"$last" | cut -d' ' -f2 || true)
    eps=$(grep -oE 'exec/s: [0-9]+' <<<"$last" | cut -d' ' -f2 || true)
    if ((rc == 0 && ${#found[@]} == 0)); then
        result="no crash"
    else
        failed=1
        if ((${#found[@]})); then
            result="CRASH: ${#found[@]} input(s), first ${found[0]}"
        else
            result="FAILED (exit $rc, no artifact; see $log)"
        fi
        # Group the inputs by what they hit (fork mode keeps no child log).
        for a in "${found[@]:0:50}"; do
            out=$(timeout 60 "$bin/$t" "$a" 2>&1 || true)
            sig=$(grep -m1 -A1 'panicked at' <<<"$out" | paste -sd' ' |
                sed -E 's/^thread .* panicked at/panicked at/; s#[^ ]*/out/(sockdiag|procfs)\.rs#src/detect/\1.rs#' || true)
            [[ -n $sig ]] || sig=$(grep -m1 '^SUMMARY' <<<"$out" || echo "no crash on rerun")
            echo "$sig"
        done | sort | uniq -c | sort -rn
    fi
    line=$(printf '%-13s runs %-10s cov %-6s ft %-6s corpus %-10s exec/s %-7s %s' \
        "$t" "${runs:-?}" "${cov:-?}" "${ft:-?}" "${corp:-?}" "${eps:-?}" "$result")
    echo "$line"
    summary+=("$line")
done

echo
echo "== summary (${secs}s per target; logs in $logs/)"
printf '%s\n' "${summary[@]}"
exit "$failed"
