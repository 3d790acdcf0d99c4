#!/usr/bin/env bash
# Catch-up under load: copy pgbench_accounts (N rows) while pgbench updates it at full
# rate, then report how fast switchyard applied the captured changes and how far behind
# it was (lag sampled from `job status` every 200 ms while pgbench ran).
#
#   benches/catchup.sh [--scale S] [--seconds T]   # defaults: 10 (1M rows), 20 s of pgbench
set -euo pipefail
cd "$(dirname "$0")/.."

scale=10
seconds=20
while [ $# -gt 0 ]; do
  case "$1" in
    --scale) scale="$2"; shift 2 ;;
    --seconds) seconds="$2"; shift 2 ;;
    *) echo "usage: benches/catchup.sh [--scale S] [--seconds T]" >&2; exit 2 ;;
  esac
done

eval "$(scripts/services up)"
cargo build --release --locked --quiet
switchyard="$PWD/target/release/switchyard"
admin="$SWITCHYARD_TEST_POSTGRES_URL"
db="${admin%/*}/switchyard_bench"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

psql "$admin" -qc "DROP DATABASE IF EXISTS switchyard_bench WITH (FORCE)" -c "CREATE DATABASE switchyard_bench"
pgbench -i -q -s "$scale" "$db" >/dev/null 2>&1
mkdir -p "$work/config" "$work/jobs"
cat >"$work/config/switchyard.toml" <<TOML
[state]
url = "sqlite://$work/state.db"
[databases.bench]
kind = "postgresql"
url = "$db"
TOML
cat >"$work/jobs/catchup.toml" <<TOML
name = "catchup"
kind = "copy"
[source]
database = "bench"
table = "public.pgbench_accounts"
[target]
database = "bench"
table = "public.accounts_copy"
[expand]
sql = ["CREATE TABLE IF NOT EXISTS public.accounts_copy (LIKE public.pgbench_accounts INCLUDING ALL)"]
[verify]
method = "count"
TOML
sy() { "$switchyard" --config "$work/config/switchyard.toml" "$@"; }

pgbench -n -b simple-update -c 2 -j 2 -T "$seconds" "$db" >"$work/pgbench.log" 2>&1 &
load=$!
start=$(date +%s.%N)
sy job run "$work/jobs/catchup.toml" >/dev/null &
runner=$!
: >"$work/lag"
while kill -0 "$load" 2>/dev/null; do
  sy job status catchup --json 2>/dev/null | python3 -c 'import json,sys; r=json.load(sys.stdin)[0]; print(r["phase"], r["lag_seconds"], r["changes_applied"])' >>"$work/lag" || true
  sleep 0.2
done
wait "$runner" || true
end=$(date +%s.%N)
tps=$(grep -oP 'tps = \K[0-9.]+' "$work/pgbench.log" | head -1)
python3 - "$work/lag" "$start" "$end" "$tps" <<'PY'
import sys
rows = [l.split() for l in open(sys.argv[1]) if l.strip()]
catch = [(float(lag), int(applied)) for phase, lag, applied in rows if phase == "catch_up"]
lags = sorted(l for l, _ in catch) or [0.0]
pick = lambda q: lags[min(len(lags) - 1, int(q * len(lags)))]
applied = catch[-1][1] if catch else 0
span = len(catch) * 0.2
print(f"pgbench simple-update: {float(sys.argv[4]):.0f} tx/s (one change to pgbench_accounts each)")
print(f"catch-up while pgbench ran: {len(catch)} samples, changes applied {applied}, ~{applied / span if span else 0:.0f} changes/s")
print(f"lag p50 {pick(0.5):.2f} s, p99 {pick(0.99):.2f} s, max {lags[-1]:.2f} s")
print(f"job run finished (caught up after pgbench stopped) {float(sys.argv[3]) - float(sys.argv[2]):.1f} s after start")
PY
