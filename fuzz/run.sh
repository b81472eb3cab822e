#!/usr/bin/env bash
# Runs every fuzz target for SECONDS (default 10) each, seeded with the
# webhook fixtures, and prints one line per target: executions, corpus size,
# crashes. Needs the nightly toolchain and cargo-fuzz
# (`cargo install --locked cargo-fuzz`).
#
#   fuzz/run.sh            # CI: a few seconds per target
#   SECONDS_PER_TARGET=3600 fuzz/run.sh   # a long run (see RELIABILITY.md)
set -euo pipefail
cd "$(dirname "$0")"
SECS=${SECONDS_PER_TARGET:-10}
ROOT=$(cd .. && pwd)
work=${FUZZ_WORK:-$(mktemp -d)}
mkdir -p "$work/normalize" "$work/envelope" "$work/signature"
cp "$ROOT"/tests/fixtures/meta/*.json "$work/normalize/"
cp "$ROOT"/tests/fixtures/meta/*.json "$work/envelope/"
printf 'sha256=%064d' 0 > "$work/signature/zero"
cargo +nightly fuzz build -O >/dev/null
status=0
for t in signature envelope normalize; do
  log="$work/$t.log"
  if cargo +nightly fuzz run -O "$t" "$work/$t" -- -max_total_time="$SECS" -print_final_stats=1 >"$log" 2>&1; then
    outcome=ok
  else
    outcome=CRASH
    status=1
  fi
  execs=$(grep -m1 'stat::number_of_executed_units' "$log" | awk '{print $2}')
  corpus=$(ls "$work/$t" | wc -l)
  echo "fuzz $t: ${SECS}s, ${execs:-?} executions, corpus $corpus, $outcome"
  [ "$outcome" = ok ] || tail -40 "$log"
done
exit $status
