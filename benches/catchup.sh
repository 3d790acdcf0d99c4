#!/usr/bin/env bash
# Catch-up, two ways:
#  1. drain: a job is ready to cut over; 100,000 single-row update transactions are
#     committed; `job cutover` applies them all and cuts over. Reports changes/s, the
#     writes-blocked time and peak RSS.
#  2. under load: `job run --follow` copies pgbench_accounts (N rows) while pgbench
#     updates it at full rate, then keeps applying; 3 s before pgbench ends, `job cutover`.
#     Reports the lag, sampled from `job status` in a loop (200 ms pauses; each sample
#     timed): how long until the backlog left by the copy is applied, then the steady
#     lag while following; and the writes-blocked time of that cutover under full load.
#
#   benches/catchup.sh [--scale S] [--seconds T]   # defaults: 10 (1M rows), 40 s of pgbench
set -euo pipefail
cd "$(dirname "$0")/.."

scale=10
seconds=40
while [ $# -gt 0 ]; do
  case "$1" in
    --scale) scale="$2"; shift 2 ;;
    --seconds) seconds="$2"; shift 2 ;;
    *) echo "usage: benches/catchup.sh [--scale S] [--seconds T]" >&2; exit 2 ;;
  esac
done

. benches/common.sh
bench_setup "$scale"
# Contract right after cutover: a following run then ends (it would otherwise carry the
# new table's writes back until contract is due).
catchup_job=$(accounts_copy_job catchup accounts_copy "$(printf '[verify]\nmethod = "count"\n[contract]\nafter = "0s"')")

# 1. Drain.
psql "$db" -qc "CREATE TABLE drain (id int PRIMARY KEY, n int NOT NULL, v text); INSERT INTO drain SELECT g, 0, 'x' FROM generate_series(1, 10000) g"
cat >"$work/jobs/drain.toml" <<TOML
name = "drain"
kind = "copy"
[source]
database = "bench"
table = "public.drain"
[target]
database = "bench"
table = "public.drain_v2"
[expand]
sql = ["CREATE TABLE IF NOT EXISTS public.drain_v2 (LIKE public.drain INCLUDING ALL)"]
[verify]
method = "count"
[cutover]
max_lag = "1h"
TOML
sy job run "$work/jobs/drain.toml" >/dev/null
printf '\\set id random(1, 10000)\nUPDATE drain SET n = n + 1 WHERE id = :id;\n' >"$work/drain.sql"
pgbench -n -c 2 -t 50000 -f "$work/drain.sql" "$db" >/dev/null 2>&1
start=$(date +%s.%N)
/usr/bin/time -f "%M" -o "$work/rss" "$switchyard" --config "$work/config/switchyard.toml" job cutover drain >"$work/cutover.out"
end=$(date +%s.%N)
blocked=$(grep -oP 'blocked for \K[0-9]+' "$work/cutover.out")
equal=$(psql "$db" -tAc "SELECT (SELECT sum(n) FROM drain) = (SELECT sum(n) FROM drain_old)")
echo "drain: 100000 changes applied and cut over in $(printf '%.2f' "$(echo "$end - $start" | bc)") s" \
  "($(printf '%.0f' "$(echo "100000 / ($end - $start)" | bc -l)") changes/s, process start and cutover included);" \
  "writes blocked ${blocked} ms; peak RSS $(cat "$work/rss") KiB; target equal: $equal"

# 2. Under load.

pgbench -n -b simple-update -c 2 -j 2 -T "$seconds" "$db" >"$work/pgbench.log" 2>&1 &
load=$!
start=$(date +%s.%N)
sy job run --follow "$catchup_job" >/dev/null &
runner=$!
: >"$work/lag"
cut=""
while kill -0 "$load" 2>/dev/null; do
  sy job status catchup --json 2>/dev/null | python3 -c 'import json,sys,time; r=json.load(sys.stdin)[0]; print(r["phase"], r["lag_seconds"], r["changes_applied"], time.time())' >>"$work/lag" 2>/dev/null || true
  if [ -z "$cut" ] && [ "$(echo "$(date +%s.%N) - $start > $seconds - 3" | bc)" = 1 ]; then
    sy job cutover catchup >/dev/null &
    cut=$!
  fi
  sleep 0.2
done
wait "$runner" || true
[ -n "$cut" ] && wait "$cut"
blocked_under_load=$(sy job status catchup --json | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["writes_blocked_ms"])')
end=$(date +%s.%N)
tps=$(grep -oP 'tps = \K[0-9.]+' "$work/pgbench.log" | head -1)
python3 - "$work/lag" "$start" "$end" "$tps" "$blocked_under_load" <<'PY'
import sys
rows = [l.split() for l in open(sys.argv[1]) if l.strip()]
catch = [(float(lag), int(applied), float(at)) for phase, lag, applied, at in rows if phase in ("catch_up", "ready_to_cutover")]
# The backlog the copy left is applied first; the steady lag is measured from the first
# sample under 1 s after the peak on.
peak = max(range(len(catch)), key=lambda i: catch[i][0], default=0)
first = next((i for i in range(peak, len(catch)) if catch[i][0] < 1.0), len(catch))
steady = catch[first:]
lags = sorted(l for l, *_ in steady) or [0.0]
pick = lambda q: lags[min(len(lags) - 1, int(q * len(lags)))]
applied = catch[-1][1] if catch else 0
span = catch[-1][2] - catch[0][2] if len(catch) > 1 else 0
print(f"pgbench simple-update: {float(sys.argv[4]):.0f} tx/s (one change to pgbench_accounts each)")
phases = {}
for phase, *_ in rows:
    phases[phase] = phases.get(phase, 0) + 1
print("samples by phase: " + ", ".join(f"{p} {n}" for p, n in phases.items()))
print(f"catch-up while pgbench ran (catch_up and ready_to_cutover, following): {len(catch)} samples, changes applied {applied}, ~{applied / span if span else 0:.0f} changes/s")
cleared = catch[first][2] - catch[0][2] if first < len(catch) else float("nan")
print(f"backlog left by the copy: peak lag {catch[peak][0] if catch else 0:.2f} s, under 1 s {cleared:.1f} s after catch-up began (verify included)")
gap = span / (len(catch) - 1) if len(catch) > 1 else 0
print(f"steady lag ({len(steady)} samples, one every {gap:.2f} s): p50 {pick(0.5):.2f} s, p99 {pick(0.99):.2f} s, max {lags[-1]:.2f} s")
print(f"cutover 3 s before pgbench stopped: writes blocked {sys.argv[5]} ms")
PY
