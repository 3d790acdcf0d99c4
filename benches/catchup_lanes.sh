#!/usr/bin/env bash
# Catch-up passes applied in one session or in parallel by key (lanes): a job is ready to
# cut over; CHANGES single-row update transactions are committed while no run follows it;
# then `job run --follow` applies the backlog in catch-up passes, timed from its start until
# `job status` counts every change applied (sampled every 50 ms). The job
# has `copy.concurrency` 1 (one session: the serial apply) or 2 and 4 (as many lanes).
# Reports seconds (process start included), changes/s, the ratio to one session, peak
# RSS, and whether the target equals the source.
#
#   benches/catchup_lanes.sh [--changes N]   # default 100,000
set -euo pipefail
cd "$(dirname "$0")/.."

changes=100000
while [ $# -gt 0 ]; do
  case "$1" in
    --changes) changes="$2"; shift 2 ;;
    *) echo "usage: benches/catchup_lanes.sh [--changes N]" >&2; exit 2 ;;
  esac
done

. benches/common.sh
bench_setup 1

echo "| sessions applying | seconds | changes/s | time vs 1 session | peak RSS | target equal |"
echo "|---|---:|---:|---:|---:|---|"
base=""
for lanes in 1 2 4; do
  name="lanes$lanes"
  psql "$db" -qc "CREATE TABLE $name (id int PRIMARY KEY, n int NOT NULL, v text); INSERT INTO $name SELECT g, 0, 'x' FROM generate_series(1, 10000) g"
  cat >"$work/jobs/$name.toml" <<TOML
name = "$name"
kind = "copy"
[source]
database = "bench"
table = "public.$name"
[target]
database = "bench"
table = "public.${name}_v2"
[expand]
sql = ["CREATE TABLE IF NOT EXISTS public.${name}_v2 (LIKE public.$name INCLUDING ALL)"]
[copy]
concurrency = $lanes
[verify]
method = "count"
[cutover]
max_lag = "1h"
TOML
  sy job run "$work/jobs/$name.toml" >/dev/null
  printf '\\set id random(1, 10000)\nUPDATE %s SET n = n + 1 WHERE id = :id;\n' "$name" >"$work/$name.sql"
  pgbench -n -c 2 -t $((changes / 2)) -f "$work/$name.sql" "$db" >/dev/null 2>&1
  applied() { sy job status "$name" --json | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["changes_applied"])'; }
  goal=$(( $(applied) + changes ))
  start=$(date +%s.%N)
  /usr/bin/time -f "%M" -o "$work/rss" "$switchyard" --config "$work/config/switchyard.toml" job run --follow "$work/jobs/$name.toml" >/dev/null 2>&1 &
  runner=$!
  while [ "$(applied)" -lt "$goal" ]; do sleep 0.05; done
  took=$(echo "$(date +%s.%N) - $start" | bc)
  pkill -TERM -P "$runner" switchyard || true
  wait "$runner" || true
  rss=$(cat "$work/rss")
  equal=$(psql "$db" -tAc "SELECT (SELECT sum(n) FROM $name) = (SELECT sum(n) FROM ${name}_v2)")
  base=${base:-$took}
  printf '| %s | %.2f | %.0f | %.2f | %.1f MiB | %s |\n' "$lanes" "$took" \
    "$(echo "$changes / $took" | bc -l)" "$(echo "$took / $base" | bc -l)" \
    "$(echo "$rss / 1024" | bc -l)" "$equal"
done
