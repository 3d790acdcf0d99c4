#!/usr/bin/env bash
# One copy job shared by 1, 2 and 3 `switchyard serve` workers (a PostgreSQL state store),
# side by side in one run: N pgbench_accounts rows onto the other server (COPY streams
# through switchyard), each worker with one copy task, 24 chunks, no catch-up or verify
# (the copy alone, which is what scales). Beside them, the binary COPY pipe between the
# servers (psql | psql) as the floor. Prints seconds from the workers' start to the end
# of the copy, each ratio to one worker, and each worker's peak RSS.
#
#   benches/workers.sh [--scale S] [--repeat R]   # S × 100,000 rows, default 10 (1M rows);
#                                                  # R rounds (default 3), medians reported
set -euo pipefail
cd "$(dirname "$0")/.."

. benches/common.sh
copy_rounds_setup benches/workers.sh "$@"

state="${admin%/*}/switchyard_bench_state"
psql "$admin" -qc "DROP DATABASE IF EXISTS switchyard_bench_state WITH (FORCE)" -c "CREATE DATABASE switchyard_bench_state"
sed -i "s|^url = \"sqlite://.*\"|url = \"$state\"\nlease = \"10s\"|" "$work/config/switchyard.toml"
target_table() { psql "$other_db" -qc "SET client_min_messages = warning; DROP TABLE IF EXISTS $1"; }

# Starts N workers on job NAME (the only file of the jobs folder), waits for the end of
# its copy; prints "seconds max_peak_rss_kib".
shared_copy() {
  local name="$1" workers="$2" start pids=() i phase rss=0
  rm -f "$work"/jobs/*.toml
  target_table "$name"
  accounts_copy_job "$name" "$name" "$(printf '[copy]\nbatch_size = 10000\nconcurrency = 1\nchunks = 24\n%s' "$(manual_job_tail none)")" other >/dev/null
  start=$(date +%s.%N)
  for i in $(seq 1 "$workers"); do
    (cd "$work" && SWITCHYARD__SERVER__LISTEN="127.0.0.1:$((19460 + i))" \
      /usr/bin/time -f "%M" -o "$work/rss.$i" "$switchyard" --config config/switchyard.toml serve --worker-id "w$i" \
      >/dev/null 2>"$work/worker.$i.log") &
    pids+=($!)
  done
  while :; do
    phase=$(sy job status "$name" --json 2>/dev/null | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["phase"])' 2>/dev/null || true)
    case "$phase" in
      ready_to_cutover) break ;;
      failed) echo "job $name failed:" >&2; sy job status "$name" >&2; exit 1 ;;
    esac
    sleep 0.1
  done
  echo "$(date +%s.%N) - $start" | bc >"$work/took"
  pkill -TERM -f "^$switchyard --config config/switchyard.toml serve" || true   # not /usr/bin/time
  wait "${pids[@]}" 2>/dev/null || true
  for i in $(seq 1 "$workers"); do
    tail -1 "$work/rss.$i" | grep -qE '^[0-9]+$' || { echo "worker $i: no peak RSS" >&2; cat "$work/worker.$i.log" >&2; exit 1; }
    rss=$(( $(tail -1 "$work/rss.$i") > rss ? $(tail -1 "$work/rss.$i") : rss ))
  done
  copied=$(psql "$other_db" -tAc "SELECT count(*) FROM $name")
  [ "$copied" = "$rows" ] || { echo "$workers workers copied $copied of $rows rows" >&2; exit 1; }
  echo "$(cat "$work/took") $rss"
}

round() {
  local one two three pipe
  read -r one one_rss <<<"$(shared_copy "w1_$1" 1)"
  read -r two two_rss <<<"$(shared_copy "w2_$1" 2)"
  read -r three three_rss <<<"$(shared_copy "w3_$1" 3)"
  target_table t_pipe
  psql "$other_db" -qc "CREATE TABLE t_pipe (aid integer PRIMARY KEY, bid integer, abalance integer, filler character(84))"
  pipe=$(seconds bash -c "psql '$db' -qc 'COPY pgbench_accounts TO STDOUT (FORMAT binary)' | psql '$other_db' -qc 'COPY t_pipe FROM STDIN (FORMAT binary)'")
  echo "$one $two $three $pipe $one_rss $two_rss $three_rss" >>"$work/rounds"
  for t in "w1_$1" "w2_$1" "w3_$1" t_pipe; do target_table "$t"; done
}

: >"$work/rounds"
for r in $(seq 1 "$repeat"); do round "$r"; done

echo "copy of $rows pgbench_accounts rows onto the other server, one job shared by N workers (1 task each, 24 chunks), $(nproc) cores, PostgreSQL $(psql "$db" -tAc 'SHOW server_version'); median of $repeat rounds"
rounds_table "$work/rounds" \
  "switchyard, 1 worker|0|4" \
  "switchyard, 2 workers|1|5" \
  "switchyard, 3 workers|2|6" \
  "binary COPY pipe (psql | psql), one stream|3|"
