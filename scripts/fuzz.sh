#!/usr/bin/env bash
# Runs every cargo-fuzz target (or the ones named) for SECONDS each.
#   scripts/fuzz.sh 300                   # five minutes per target
#   scripts/fuzz.sh 60 relay_payload      # one target
# Needs a nightly toolchain and cargo-fuzz (installed here when missing). Findings land in
# fuzz/artifacts/<target>/; a crash makes the script exit non-zero.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
secs="${1:-60}"
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  targets=(frame_decoder barcode relay_payload config intake_json)
fi
rustup toolchain list | grep -q nightly || rustup toolchain install nightly --profile minimal
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
for t in "${targets[@]}"; do
  echo "== $t for ${secs}s"
  mkdir -p "corpus/$t" "artifacts/$t"
  log="artifacts/$t/last-run.log"
  status=0
  cargo +nightly fuzz run "$t" "corpus/$t" -- -max_total_time="$secs" -max_len=65536 -print_final_stats=1 >"$log" 2>&1 || status=$?
  grep -E '^(#[0-9]+.*DONE|stat::number_of_executed_units|stat::new_units_added|SUMMARY)' "$log" || true
  if [ "$status" -ne 0 ]; then
    tail -30 "$log" >&2
    echo "!! $t failed (exit $status); inputs that crash it are in fuzz/artifacts/$t/, the log in $log" >&2
    exit 1
  fi
done
