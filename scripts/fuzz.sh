#!/usr/bin/env bash
# Runs every cargo-fuzz target (or the ones named) for SECONDS each.
#   scripts/fuzz.sh 300                   # five minutes per target
#   scripts/fuzz.sh 60 relay_payload      # one target
# Needs cargo-fuzz (installed here when missing). With a nightly toolchain the targets run
# under AddressSanitizer; without one, on stable with `-s none` (libFuzzer and its coverage
# work on stable; only the sanitizer needs nightly): Rust's own checks (bounds, overflow with
# debug assertions, panics) still make a finding a crash. Findings land in
# fuzz/artifacts/<target>/; a crash makes the script exit non-zero.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
secs="${1:-60}"
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  targets=(frame_decoder barcode relay_payload config intake_json)
fi
if rustup toolchain list | grep -q nightly; then
  run=(cargo +nightly fuzz run)
else
  run=(cargo fuzz run -s none)
fi
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
for t in "${targets[@]}"; do
  echo "== $t for ${secs}s"
  mkdir -p "corpus/$t" "artifacts/$t"
  log="artifacts/$t/last-run.log"
  status=0
  "${run[@]}" "$t" "corpus/$t" -- -max_total_time="$secs" -max_len=65536 -print_final_stats=1 >"$log" 2>&1 || status=$?
  grep -E '^(#[0-9]+.*DONE|stat::number_of_executed_units|stat::new_units_added|SUMMARY)' "$log" || true
  if [ "$status" -ne 0 ]; then
    tail -30 "$log" >&2
    echo "!! $t failed (exit $status); inputs that crash it are in fuzz/artifacts/$t/, the log in $log" >&2
    exit 1
  fi
done
