#!/usr/bin/env bash
# Runs every fuzz target for SECONDS (default 60) from its committed corpus
# and fails if any of them finds a crash, a hang (10 s), a leak or an OOM
# (2 GiB). New inputs go to a scratch directory, so the tree stays clean;
# what a target finds is in tests/fuzz/artifacts/<target>/, and the
# command to reproduce it is printed.
#
#   tests/fuzz/run.sh [--merge] [SECONDS]
#
# --merge adds to the committed corpus the new inputs that reach edges it
# does not (a set-cover merge, so it stays small); commit the result.
# Needs a nightly toolchain; installs cargo-fuzz from crates.io if missing.
set -euo pipefail
cd "$(dirname "$0")/../.."
merge=false
if [[ ${1:-} == --merge ]]; then
    merge=true
    shift
fi
secs=${1:-60}
fuzz_dir=tests/fuzz

if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked
fi
if ! rustup run nightly rustc --version >/dev/null 2>&1; then
    rustup toolchain install nightly --profile minimal
fi

# Build every target once; the runs below then start at once.
cargo +nightly fuzz build --fuzz-dir "$fuzz_dir"

scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
failed=()
for target in $(cargo +nightly fuzz list --fuzz-dir "$fuzz_dir"); do
    printf '\n[fuzz] %s for %s s\n' "$target" "$secs"
    mkdir -p "$scratch/$target"
    if ! cargo +nightly fuzz run --fuzz-dir "$fuzz_dir" "$target" \
        "$scratch/$target" "$fuzz_dir/corpus/$target" -- \
        -max_total_time="$secs" -rss_limit_mb=2048 -timeout=10 \
        -print_final_stats=1 2>"$scratch/$target.log"; then
        tail -n 60 "$scratch/$target.log"
        failed+=("$target")
        continue
    fi
    grep -E '^(Done|stat::(number_of_executed_units|average_exec_per_sec|new_units_added|peak_rss_mb))' \
        "$scratch/$target.log" || true
    grep -E '^#[0-9]+.*DONE' "$scratch/$target.log" | tail -n 1 || true
    if $merge; then
        cargo +nightly fuzz run --fuzz-dir "$fuzz_dir" "$target" \
            "$fuzz_dir/corpus/$target" "$scratch/$target" -- \
            -set_cover_merge=1 -use_counters=0 -rss_limit_mb=2048 -timeout=10 \
            2>>"$scratch/$target.log"
    fi
done

if ((${#failed[@]})); then
    printf '\n[fuzz] findings in: %s (inputs in %s/artifacts/)\n' "${failed[*]}" "$fuzz_dir"
    exit 1
fi
printf '\n[fuzz] no findings\n'
