#!/usr/bin/env bash
# Ingest into a three-master Redis Cluster with redis.raw_shards = 1 and = 3,
# side by side in one run on this machine.
#
#   bench/cluster.sh            # prints one markdown table on stdout
#
# What it does (a minute or two after the build, on 2 cores):
#   1. cargo build --release -p inlet-gateway -p inlet-bench;
#   2. starts three redis-server --cluster-enabled yes on loopback ports
#      $BASE_PORT.. (bus ports +100), no persistence (like the Redis of
#      bench/compare.sh), and joins them with redis-cli --cluster create
#      (equal slot ranges, no replicas);
#   3. for raw_shards in 1 and 3: an inlet-gateway in queue mode on the
#      cluster (INLET_REDIS__CLUSTER=true) with its own key prefix, then
#      `inlet-bench load` closed loop ($CONNECTIONS connections, $DURATION
#      after $WARMUP, bodies from $CONTACTS conversations), then per master:
#      the entries its raw shards hold, its XADD calls and its CPU seconds
#      (INFO commandstats / INFO cpu, as deltas over the run);
#   4. stops everything it started and removes the cluster's directories.
#
# The gateway's own limits (2 cores shared by the gateway, three Redis
# servers and the load generator) cap throughput on one machine: what the
# shards change here is where the XADD work lands (one master, or spread
# over three), which is what frees a cluster's masters at scale (SCALING.md).
#
# Knobs (environment): CONNECTIONS=64, DURATION=10s, WARMUP=2s, CONTACTS=1000,
# BASE_PORT=17100, INLET_PORT=18180. Needs: cargo, redis-server, redis-cli,
# curl, python3.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
BIN=$TARGET_DIR/release
CONNECTIONS=${CONNECTIONS:-64}
DURATION=${DURATION:-10s}
WARMUP=${WARMUP:-2s}
CONTACTS=${CONTACTS:-1000}
BASE_PORT=${BASE_PORT:-17100}
INLET_PORT=${INLET_PORT:-18180}
SECRET=bench-secret
FIXTURE=$ROOT/tests/fixtures/meta/wa_text.json
RUN_ID="$(date +%s)$$"
WORK=$(mktemp -d "${TMPDIR:-/tmp}/inlet-cluster.XXXXXX")
PORTS=("$BASE_PORT" "$((BASE_PORT + 1))" "$((BASE_PORT + 2))")

log() { echo "cluster: $*" >&2; }
die() {
  log "error: $*"
  exit 1
}

STARTED=()
stop() {
  local pid=$1 _
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
  fi
  wait "$pid" 2>/dev/null || true
}
cleanup() {
  local rc=$? pid
  set +e
  for pid in "${STARTED[@]}"; do stop "$pid"; done
  rm -rf "$WORK"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

for tool in cargo redis-server redis-cli curl python3; do
  command -v "$tool" >/dev/null 2>&1 || die "$tool is not installed"
done
for p in "${PORTS[@]}" "$INLET_PORT"; do
  ! redis-cli -p "$p" ping >/dev/null 2>&1 || die "port $p is in use (set BASE_PORT / INLET_PORT)"
done

log "building release binaries"
cargo build --release -p inlet-gateway -p inlet-bench >&2

# --- the cluster -------------------------------------------------------------

for p in "${PORTS[@]}"; do
  mkdir -p "$WORK/redis-$p"
  redis-server --port "$p" --bind 127.0.0.1 --cluster-enabled yes \
    --cluster-port "$((p + 100))" --cluster-config-file nodes.conf \
    --save "" --appendonly no --dir "$WORK/redis-$p" >"$WORK/redis-$p.log" 2>&1 &
  STARTED+=($!)
done
for p in "${PORTS[@]}"; do
  for _ in $(seq 1 100); do redis-cli -p "$p" ping >/dev/null 2>&1 && break; sleep 0.1; done
done
redis-cli --cluster create "${PORTS[@]/#/127.0.0.1:}" --cluster-replicas 0 --cluster-yes >"$WORK/create.log" 2>&1 ||
  die "redis-cli --cluster create failed: $(cat "$WORK/create.log")"
for p in "${PORTS[@]}"; do
  for _ in $(seq 1 100); do
    redis-cli -p "$p" cluster info | grep -q cluster_state:ok && break
    sleep 0.1
  done
done
SEEDS=$(printf 'redis://127.0.0.1:%s,' "${PORTS[@]}")
SEEDS=${SEEDS%,}

# xadd_calls PORT / cpu_seconds PORT: counters of one node.
xadd_calls() { redis-cli -p "$1" info commandstats | tr -d '\r' | sed -n 's/^cmdstat_xadd:calls=\([0-9]*\),.*/\1/p' | grep . || echo 0; }
cpu_seconds() {
  redis-cli -p "$1" info cpu | tr -d '\r' |
    awk -F: '/^used_cpu_(sys|user):/ { s += $2 } END { printf "%.2f", s }'
}

# --- one run per shard count -------------------------------------------------

ROWS=()
for shards in 1 3; do
  prefix="bench:$RUN_ID:$shards:"
  declare -A xadd0 cpu0
  for p in "${PORTS[@]}"; do xadd0[$p]=$(xadd_calls "$p"); cpu0[$p]=$(cpu_seconds "$p"); done
  log "inlet-gateway with raw_shards = $shards"
  env INLET_REDIS_URL="$SEEDS" INLET_REDIS__CLUSTER=true INLET_REDIS__RAW_SHARDS="$shards" \
    INLET_APP_SECRET="$SECRET" INLET_STREAM_PREFIX="$prefix" INLET_LISTEN="127.0.0.1:$INLET_PORT" \
    INLET_DATA_DIR="$WORK/gateway-$shards" INLET_LOG=warn \
    "$BIN/inlet-gateway" >"$WORK/gateway-$shards.log" 2>&1 &
  gw=$!
  STARTED+=("$gw")
  for _ in $(seq 1 200); do
    curl -s --max-time 1 "http://127.0.0.1:$INLET_PORT/readyz" | grep -q '"queue"' && break
    kill -0 "$gw" 2>/dev/null || die "inlet-gateway exited: $(cat "$WORK/gateway-$shards.log")"
    sleep 0.1
  done
  curl -s "http://127.0.0.1:$INLET_PORT/readyz" | grep -q '"queue"' ||
    die "inlet-gateway is not in queue mode: $(cat "$WORK/gateway-$shards.log")"
  INLET_BENCH_SECRET=$SECRET "$BIN/inlet-bench" load --json \
    --url "http://127.0.0.1:$INLET_PORT/webhooks/whatsapp" --fixture "$FIXTURE" \
    --contacts "$CONTACTS" --connections "$CONNECTIONS" --duration "$DURATION" \
    --warmup "$WARMUP" >"$WORK/load-$shards.json"
  stop "$gw"
  # Entries per master: every raw shard's length, on the node that serves it.
  per_node=""
  xadds=""
  cpus=""
  for p in "${PORTS[@]}"; do
    n=0
    for key in $(redis-cli -p "$p" --scan --pattern "${prefix}{incoming.raw*"); do
      [[ $key == *"{incoming.raw.shards}" ]] && continue
      n=$((n + $(redis-cli -p "$p" xlen "$key")))
    done
    per_node+="$n / "
    xadds+="$(($(xadd_calls "$p") - ${xadd0[$p]})) / "
    cpus+="$(awk -v a="$(cpu_seconds "$p")" -v b="${cpu0[$p]}" 'BEGIN { printf "%.2f", a - b }') / "
  done
  row=$(python3 - "$WORK/load-$shards.json" "$shards" "${per_node% / }" "${xadds% / }" "${cpus% / }" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
lat = r["latency_ms"]
print(f"| {sys.argv[2]} | {r['rps']:.0f} | {lat.get('p50', '–')} | {lat.get('p99', '–')} | {r['failed']} | {sys.argv[3]} | {sys.argv[4]} | {sys.argv[5]} |")
PY
  )
  ROWS+=("$row")
  unset xadd0 cpu0 xadds cpus
  for p in "${PORTS[@]}"; do
    redis-cli -p "$p" --scan --pattern "${prefix}*" | xargs -r -n 100 redis-cli -p "$p" unlink >/dev/null
  done
done

echo "Ingest into a three-master Redis Cluster ($(nproc) cores, $(date -u +%Y-%m-%d)): closed loop, $CONNECTIONS connections, $DURATION after $WARMUP warmup, $CONTACTS conversations; per master in port order ${PORTS[*]}."
echo
echo "| raw_shards | events/s | p50 ms | p99 ms | failed | raw entries per master | XADD calls per master | Redis CPU s per master |"
echo "|---|---|---|---|---|---|---|---|"
printf '%s\n' "${ROWS[@]}"
