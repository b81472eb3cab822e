#!/usr/bin/env bash
# Inlet side by side with the Node/BullMQ baseline peer, on this machine.
#
#   bench/compare.sh            # prints one markdown table on stdout
#
# What it does (a few minutes on 2 cores):
#   1. cargo build --release -p inlet-gateway -p inlet-worker -p inlet-bench
#      (without crates/inlet-worker, the Inlet worker row is skipped);
#   2. copies the peer ($PEER_DIR, default ../shared/peers/node-bullmq) to
#      target/bench-peer/ and runs `npm ci` there unless the peer dir already
#      has node_modules (the peer dir itself is never written); no peer = Inlet
#      figures only;
#   3. starts inlet-gateway (queue mode, Redis 127.0.0.1:6379, its own stream
#      prefix bench:<run>:, a fresh Postgres database) and the peer gateway;
#   4. against Inlet, then against the peer: closed-loop load ($CONNECTIONS
#      connections, $DURATION after $WARMUP warmup), then open-loop load at 50%
#      of Inlet's max;
#   5. peak RSS (VmHWM) of each gateway process;
#   6. worker throughput: `inlet-bench worker` (preload + inlet-worker) and the
#      peer's `node fill.mjs N` + `node worker.mjs`, timed the same way by
#      `inlet-bench wait-rows` until N rows are in its own database;
#   7. Inlet's direct mode (no Redis; the peer has no such mode): the same
#      closed loop against a gateway on SQLite, then on a fresh Postgres
#      database (DIRECT=0 skips it);
#   8. stops everything it started, deletes its Redis keys (its own prefix and
#      the peer queue's bull:webhook-events:*) and drops its databases.
#
# Knobs (environment): PEER_DIR, CONNECTIONS=64, DURATION=10s, WARMUP=2s, DIRECT=1,
# WORKER_EVENTS=20000, INLET_PORT=18080, PEER_PORT=18090, PGHOST=127.0.0.1,
# PGPORT=5432, PGUSER=postgres. Load goes to 127.0.0.1 only.
# Needs: cargo, redis-cli, psql, curl, jq or python3; node and npm for the peer.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
BIN=$TARGET_DIR/release
PEER_DIR=${PEER_DIR:-$ROOT/../shared/peers/node-bullmq}
CONNECTIONS=${CONNECTIONS:-64}
DURATION=${DURATION:-10s}
WARMUP=${WARMUP:-2s}
WORKER_EVENTS=${WORKER_EVENTS:-20000}
DIRECT=${DIRECT:-1}
INLET_PORT=${INLET_PORT:-18080}
PEER_PORT=${PEER_PORT:-18090}
PGHOST=${PGHOST:-127.0.0.1}
PGPORT=${PGPORT:-5432}
PGUSER=${PGUSER:-postgres}
# The peer's scripts hard-code Redis at 127.0.0.1:6379; Inlet uses the same.
REDIS_HOST=127.0.0.1
REDIS_PORT=6379
SECRET=bench-secret
FIXTURE=$ROOT/tests/fixtures/meta/wa_text.json
PEER_QUEUE_PATTERN='bull:webhook-events:*'

RUN_ID="$(date +%s)$$"
PREFIX="bench:$RUN_ID:"
INLET_DB="inlet_bench_$RUN_ID"
PEER_DB="peer_bench_$RUN_ID"
DIRECT_DB="inlet_direct_$RUN_ID"
RESULTS=$TARGET_DIR/bench-results/$RUN_ID
WORK=$(mktemp -d "${TMPDIR:-/tmp}/inlet-compare.XXXXXX")

log() { echo "compare: $*" >&2; }
die() {
  log "error: $*"
  exit 1
}

# --- helpers -----------------------------------------------------------------

# jget FILE .a.b: one value of a JSON file (jq, else python3).
jget() {
  if command -v jq >/dev/null 2>&1; then
    jq -r "$2 // \"\"" "$1"
  else
    python3 - "$1" "$2" <<'PY'
import json, sys
v = json.load(open(sys.argv[1]))
for k in sys.argv[2].strip('.').split('.'):
    v = v.get(k) if isinstance(v, dict) else None
print('' if v is None else v)
PY
  fi
}

rcli() { redis-cli -h "$REDIS_HOST" -p "$REDIS_PORT" "$@"; }

# Deletes the keys matching one glob (SCAN + UNLINK; never KEYS or FLUSH*).
redis_del() {
  rcli --scan --pattern "$1" | xargs -r -n 1000 redis-cli -h "$REDIS_HOST" -p "$REDIS_PORT" UNLINK >/dev/null
}

psql_admin() { psql -h "$PGHOST" -p "$PGPORT" -U "$PGUSER" -d postgres -v ON_ERROR_STOP=1 -qAt "$@"; }
db_url() { echo "postgres://$PGUSER@$PGHOST:$PGPORT/$1"; }

# Processes this script started; only these are ever signalled.
STARTED=()
forget() {
  local keep=() p
  for p in "${STARTED[@]}"; do [[ $p == "$1" ]] || keep+=("$p"); done
  STARTED=("${keep[@]}")
}
stop() {
  local pid=$1 _
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
  fi
  wait "$pid" 2>/dev/null || true
  forget "$pid"
}

# wait_http URL CODE PID: until URL answers CODE (at most 20 s) while PID lives.
wait_http() {
  local _ code
  for _ in $(seq 1 200); do
    kill -0 "$3" 2>/dev/null || return 1
    code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 1 "$1" || true)
    [[ $code == "$2" ]] && return 0
    sleep 0.1
  done
  return 1
}

port_free() { ! curl -s -o /dev/null --max-time 1 "http://127.0.0.1:$1/"; }

# Peak resident set (VmHWM) of a process, in MiB.
peak_rss_mib() { awk '/^VmHWM:/ { printf "%.1f", $2 / 1024 }' "/proc/$1/status"; }

# fmt X: a number with at most one decimal, or "–".
fmt() { [[ -n ${1:-} ]] && awk -v x="$1" 'BEGIN { printf (x >= 100 ? "%.0f" : "%.2f"), x }' || echo "–"; }
# ratio A B: A/B (two decimals, two significant digits below 0.1), or "–".
ratio() {
  if [[ -n ${1:-} && -n ${2:-} ]]; then
    awk -v a="$1" -v b="$2" 'BEGIN {
      if (b <= 0) { printf "–"; exit }
      r = a / b; printf (r >= 0.1 ? "%.2f" : "%.2g"), r }'
  else echo "–"; fi
}

HAVE_PEER=0
CREATED_DBS=()
cleanup() {
  local rc=$?
  set +e
  local pid
  for pid in "${STARTED[@]}"; do stop "$pid"; done
  redis_del "${PREFIX}*"
  [[ $HAVE_PEER == 1 ]] && redis_del "$PEER_QUEUE_PATTERN"
  local db
  for db in "${CREATED_DBS[@]}"; do psql_admin -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null; done
  rm -rf "$WORK"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- prerequisites -----------------------------------------------------------

for tool in cargo redis-cli psql curl; do
  command -v "$tool" >/dev/null 2>&1 || die "$tool is not installed"
done
command -v jq >/dev/null 2>&1 || command -v python3 >/dev/null 2>&1 || die "need jq or python3"
[[ $(rcli ping 2>/dev/null) == PONG ]] ||
  die "Redis is not answering on $REDIS_HOST:$REDIS_PORT (redis-server --daemonize yes --bind 127.0.0.1 --save '')"
psql_admin -c 'SELECT 1' >/dev/null 2>&1 || die "Postgres is not answering as $PGUSER@$PGHOST:$PGPORT"
port_free "$INLET_PORT" || die "port $INLET_PORT is in use (set INLET_PORT)"
port_free "$PEER_PORT" || die "port $PEER_PORT is in use (set PEER_PORT)"
mkdir -p "$RESULTS"

# --- build -------------------------------------------------------------------

HAVE_WORKER=0
PKGS=(-p inlet-gateway -p inlet-bench)
if [[ -f crates/inlet-worker/Cargo.toml ]] && cargo pkgid -q inlet-worker >/dev/null 2>&1; then
  HAVE_WORKER=1
  PKGS+=(-p inlet-worker)
else
  log "crates/inlet-worker is not in the workspace yet: the Inlet worker figure is skipped"
fi
log "building release binaries (${PKGS[*]})"
cargo build --release "${PKGS[@]}" >&2

# --- peer --------------------------------------------------------------------

PEER_RUN=""
if [[ ! -f $PEER_DIR/gateway.mjs ]]; then
  log "no peer at $PEER_DIR (set PEER_DIR to the node-bullmq peer): Inlet figures only"
elif ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
  log "node/npm not installed: the peer is skipped, Inlet figures only"
elif [[ -d $PEER_DIR/node_modules ]]; then
  PEER_RUN=$(cd "$PEER_DIR" && pwd)
else
  # The peer dir may be read-only (and is never ours to write): install in a copy.
  PEER_RUN=$TARGET_DIR/bench-peer
  mkdir -p "$PEER_RUN"
  find "$PEER_DIR" -maxdepth 1 -type f -exec cp -f {} "$PEER_RUN/" \;
  chmod -R u+w "$PEER_RUN"
  if [[ ! -d $PEER_RUN/node_modules ]] || ! cmp -s "$PEER_RUN/package-lock.json" "$PEER_RUN/.installed-lock"; then
    log "npm ci in $PEER_RUN"
    cp "$PEER_DIR/package-lock.json" "$PEER_RUN/.installed-lock"
    if (cd "$PEER_RUN" && npm ci --no-audit --no-fund --loglevel=error >&2); then
      :
    elif log "npm ci refused the lock file (another npm wrote it); npm install in the copy instead" &&
      (cd "$PEER_RUN" && npm install --no-audit --no-fund --loglevel=error >&2); then
      # npm install rewrites the copy's lock; remember the original one.
      cp "$PEER_DIR/package-lock.json" "$PEER_RUN/package-lock.json"
    else
      rm -f "$PEER_RUN/.installed-lock"
      log "installing the peer's packages failed: the peer is skipped, Inlet figures only"
      PEER_RUN=""
    fi
  fi
fi
[[ -n $PEER_RUN ]] && HAVE_PEER=1

# --- databases and services --------------------------------------------------

# How busy the CPUs are (all processes, %) over 2 s, from /proc/stat.
cpu_busy() {
  local a b
  a=$(head -1 /proc/stat)
  sleep 2
  b=$(head -1 /proc/stat)
  awk -v a="$a" -v b="$b" 'BEGIN {
    n = split(a, x); split(b, y); total = 0
    for (i = 2; i <= n; i++) total += y[i] - x[i]
    idle = (y[5] + y[6]) - (x[5] + x[6])
    printf "%d", (total > 0 ? 100 * (total - idle) / total : 0) }'
}
BUSY=$(cpu_busy)
[[ $BUSY -gt 20 ]] && log "warning: the CPUs are ${BUSY}% busy before starting (other work): figures will be noisy"

psql_admin -c "CREATE DATABASE $INLET_DB" >/dev/null
CREATED_DBS+=("$INLET_DB")
if [[ $HAVE_PEER == 1 ]]; then
  psql_admin -c "CREATE DATABASE $PEER_DB" >/dev/null
  CREATED_DBS+=("$PEER_DB")
  redis_del "$PEER_QUEUE_PATTERN"
fi

# start_inlet NAME MODE REDIS_URL DATABASE_URL: an inlet-gateway on
# $INLET_PORT with its data under $WORK/NAME, ready and in MODE (queue or
# direct); its pid in INLET_PID.
start_inlet() {
  local name=$1 mode=$2 redis_url=$3 database_url=$4
  mkdir -p "$WORK/$name"
  log "starting inlet-gateway ($name, $mode mode) on 127.0.0.1:$INLET_PORT"
  env INLET_REDIS_URL="$redis_url" INLET_APP_SECRET="$SECRET" \
    INLET_STREAM_PREFIX="$PREFIX" INLET_LISTEN="127.0.0.1:$INLET_PORT" \
    INLET_DATA_DIR="$WORK/$name" INLET_DATABASE_URL="$database_url" INLET_LOG=warn \
    "$BIN/inlet-gateway" >"$RESULTS/$name-gateway.log" 2>&1 &
  INLET_PID=$!
  STARTED+=("$INLET_PID")
  wait_http "http://127.0.0.1:$INLET_PORT/readyz" 200 "$INLET_PID" ||
    die "inlet-gateway ($name) did not become ready; see $RESULTS/$name-gateway.log"
  curl -s "http://127.0.0.1:$INLET_PORT/readyz" | grep -q "\"$mode\"" ||
    die "inlet-gateway ($name) is not in $mode mode: $(curl -s "http://127.0.0.1:$INLET_PORT/readyz")"
}

start_inlet inlet queue "redis://$REDIS_HOST:$REDIS_PORT" "$(db_url "$INLET_DB")"

if [[ $HAVE_PEER == 1 ]]; then
  log "starting the peer gateway on 127.0.0.1:$PEER_PORT"
  (cd "$PEER_RUN" && exec env PORT="$PEER_PORT" APP_SECRET="$SECRET" REDIS_PORT="$REDIS_PORT" \
    node gateway.mjs >"$RESULTS/peer-gateway.log" 2>&1) &
  PEER_PID=$!
  STARTED+=("$PEER_PID")
  wait_http "http://127.0.0.1:$PEER_PORT/webhooks/whatsapp" 403 "$PEER_PID" ||
    die "the peer gateway did not start; see $RESULTS/peer-gateway.log"
fi

# --- gateway load ------------------------------------------------------------

# load NAME PORT [RATE]: one run of inlet-bench load, JSON into $RESULTS/NAME.json.
load() {
  local out=$RESULTS/$1.json
  "$BIN/inlet-bench" load --url "http://127.0.0.1:$2/webhooks/whatsapp" --secret "$SECRET" \
    --fixture "$FIXTURE" --connections "$CONNECTIONS" --duration "$DURATION" --warmup "$WARMUP" \
    ${3:+--rate "$3"} --json >"$out"
  log "$1: $(fmt "$(jget "$out" .rps)") req/s, p50 $(jget "$out" .latency_ms.p50) ms," \
    "p99 $(jget "$out" .latency_ms.p99) ms, failed $(jget "$out" .failed), never sent $(jget "$out" .missed)"
  # Keep Redis the same size for every run.
  redis_del "${PREFIX}*"
  [[ $HAVE_PEER == 1 ]] && redis_del "$PEER_QUEUE_PATTERN"
  settle
  return 0
}

# settle: wait until Redis has freed what UNLINK handed to its background
# thread (at most 10 s), then a second more, so that freeing one run's keys
# does not take CPU from the next run.
settle() {
  local _ pending
  for _ in $(seq 1 100); do
    pending=$(rcli INFO memory | awk -F: '/^lazyfree_pending_objects:/ { print $2 + 0 }')
    [[ ${pending:-0} -eq 0 ]] && break
    sleep 0.1
  done
  sleep 1
}

# Each side's two runs back to back (Inlet first: its maximum sets the
# open-loop rate), so neither runs right after the other's heaviest load.
log "closed loop: $CONNECTIONS connections, $DURATION after $WARMUP warmup"
load inlet-max "$INLET_PORT"
RATE=$(awk -v r="$(jget "$RESULTS/inlet-max.json" .rps)" 'BEGIN { printf "%d", r / 2 }')
[[ $RATE -ge 1 ]] || die "Inlet answered nothing successfully in the closed-loop run"
log "open loop at $RATE req/s (50% of Inlet's max)"
load inlet-half "$INLET_PORT" "$RATE"
if [[ $HAVE_PEER == 1 ]]; then
  load peer-max "$PEER_PORT"
  load peer-half "$PEER_PORT" "$RATE"
fi

INLET_RSS=$(peak_rss_mib "$INLET_PID")
PEER_RSS=""
[[ $HAVE_PEER == 1 ]] && PEER_RSS=$(peak_rss_mib "$PEER_PID")
stop "$INLET_PID"
[[ $HAVE_PEER == 1 ]] && stop "$PEER_PID"

# --- workers -----------------------------------------------------------------

INLET_EPS=""
if [[ $HAVE_WORKER == 1 ]]; then
  log "Inlet worker: $WORKER_EVENTS events"
  "$BIN/inlet-bench" worker --redis-url "redis://$REDIS_HOST:$REDIS_PORT" --prefix "${PREFIX}w:" \
    --count "$WORKER_EVENTS" --fixture "$FIXTURE" --database-url "$(db_url "$INLET_DB")" \
    --spawn-worker "$BIN/inlet-worker" --timeout 300s --json >"$RESULTS/inlet-worker.json"
  INLET_EPS=$(jget "$RESULTS/inlet-worker.json" .events_per_sec)
  log "Inlet worker: $(fmt "$INLET_EPS") events/s"
  redis_del "${PREFIX}*"
fi

PEER_EPS=""
if [[ $HAVE_PEER == 1 ]]; then
  log "peer worker: $WORKER_EVENTS events"
  redis_del "$PEER_QUEUE_PATTERN"
  (cd "$PEER_RUN" && node fill.mjs "$WORKER_EVENTS" "$FIXTURE" >&2)
  (cd "$PEER_RUN" && exec env DATABASE_URL="$(db_url "$PEER_DB")" REDIS_PORT="$REDIS_PORT" \
    node worker.mjs >"$RESULTS/peer-worker.log" 2>&1) &
  PEER_WORKER_PID=$!
  STARTED+=("$PEER_WORKER_PID")
  "$BIN/inlet-bench" wait-rows --database-url "$(db_url "$PEER_DB")" --table peer_messages \
    --count "$WORKER_EVENTS" --timeout 300s --json >"$RESULTS/peer-worker.json"
  stop "$PEER_WORKER_PID"
  PEER_EPS=$(jget "$RESULTS/peer-worker.json" .events_per_sec)
  log "peer worker: $(fmt "$PEER_EPS") events/s"
  redis_del "$PEER_QUEUE_PATTERN"
fi

# --- direct mode ---------------------------------------------------------------

# direct NAME [DATABASE_URL]: a gateway without Redis (SQLite when no URL),
# one closed-loop run, its peak RSS into $RESULTS/NAME.rss.
direct() {
  start_inlet "$1" direct "" "${2:-}"
  load "$1" "$INLET_PORT"
  peak_rss_mib "$INLET_PID" >"$RESULTS/$1.rss"
  stop "$INLET_PID"
}

if [[ $DIRECT == 1 ]]; then
  direct direct-sqlite
  psql_admin -c "CREATE DATABASE $DIRECT_DB" >/dev/null
  CREATED_DBS+=("$DIRECT_DB")
  direct direct-postgres "$(db_url "$DIRECT_DB")"
fi

# --- table -------------------------------------------------------------------

v() { if [[ -f $RESULTS/$1.json ]]; then jget "$RESULTS/$1.json" "$2"; fi; }
IM_RPS=$(v inlet-max .rps) PM_RPS=$(v peer-max .rps)
IM_50=$(v inlet-max .latency_ms.p50) PM_50=$(v peer-max .latency_ms.p50)
IM_99=$(v inlet-max .latency_ms.p99) PM_99=$(v peer-max .latency_ms.p99)
IH_50=$(v inlet-half .latency_ms.p50) PH_50=$(v peer-half .latency_ms.p50)
IH_99=$(v inlet-half .latency_ms.p99) PH_99=$(v peer-half .latency_ms.p99)
fails() { [[ -f $RESULTS/$1.json ]] && echo "$(v "$1" .failed) / $(v "$1" .missed)" || echo "–"; }
[[ $HAVE_WORKER == 1 ]] || INLET_EPS=""

PEER_NAME="peer (Node/BullMQ)"
[[ $HAVE_PEER == 1 ]] || PEER_NAME="peer (not run)"
cat <<EOF

Run $RUN_ID, $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), CPUs ${BUSY}% busy with other work at the start.
Load: $CONNECTIONS connections, $DURATION measured after $WARMUP warmup, signed $(basename "$FIXTURE") with unique ids; worker: $WORKER_EVENTS events.

| metric | Inlet | $PEER_NAME | Inlet/peer |
|---|---:|---:|---:|
| gateway max throughput (req/s, closed loop) | $(fmt "$IM_RPS") | $(fmt "$PM_RPS") | $(ratio "$IM_RPS" "$PM_RPS") |
| p50 at max load (ms) | $(fmt "$IM_50") | $(fmt "$PM_50") | $(ratio "$IM_50" "$PM_50") |
| p99 at max load (ms) | $(fmt "$IM_99") | $(fmt "$PM_99") | $(ratio "$IM_99" "$PM_99") |
| p50 at $RATE req/s = 50% of Inlet's max (ms) | $(fmt "$IH_50") | $(fmt "$PH_50") | $(ratio "$IH_50" "$PH_50") |
| p99 at $RATE req/s = 50% of Inlet's max (ms) | $(fmt "$IH_99") | $(fmt "$PH_99") | $(ratio "$IH_99" "$PH_99") |
| worker throughput (events/s into Postgres) | $( [[ $HAVE_WORKER == 1 ]] && fmt "$INLET_EPS" || echo "not built") | $(fmt "$PEER_EPS") | $(ratio "$INLET_EPS" "$PEER_EPS") |
| gateway peak RSS (MiB, VmHWM) | $(fmt "$INLET_RSS") | $(fmt "$PEER_RSS") | $(ratio "$INLET_RSS" "$PEER_RSS") |
| failed / never-sent requests (max load; 50%) | $(fails inlet-max); $(fails inlet-half) | $(fails peer-max); $(fails peer-half) | |

Inlet/peer above 1 is better for throughput, below 1 for latency and memory.
EOF
if [[ $DIRECT == 1 ]]; then
  cat <<EOF

Direct mode (no Redis: the gateway stores each event before its 200; Inlet only), closed loop, same load:

| store | req/s | p50 (ms) | p99 (ms) | p99.9 (ms) | peak RSS (MiB) |
|---|---:|---:|---:|---:|---:|
EOF
  for name in direct-sqlite direct-postgres; do
    echo "| ${name#direct-} | $(fmt "$(v "$name" .rps)") | $(fmt "$(v "$name" .latency_ms.p50)") |" \
      "$(fmt "$(v "$name" .latency_ms.p99)") | $(fmt "$(v "$name" .latency_ms.p999)") |" \
      "$(fmt "$(cat "$RESULTS/$name.rss" 2>/dev/null)") |"
  done
fi
echo
echo "Raw JSON: ${RESULTS#"$ROOT"/}/"
