#!/usr/bin/env bash
# Copy of N pgbench_accounts rows into a new table, side by side in one run on one server:
#   INSERT … SELECT (the in-server limit), a binary COPY pipe, and switchyard `copy`
#   (without catch-up or verify, then with both). Prints seconds, ratios to INSERT … SELECT,
#   and switchyard's peak RSS.
#
#   benches/copy.sh [--scale S]     # S × 100,000 rows; default 10 (1M rows)
set -euo pipefail
cd "$(dirname "$0")/.."

scale=10
while [ $# -gt 0 ]; do
  case "$1" in
    --scale) scale="$2"; shift 2 ;;
    *) echo "usage: benches/copy.sh [--scale S]" >&2; exit 2 ;;
  esac
done

. benches/common.sh
bench_setup "$scale"
psql "$db" -qc "VACUUM ANALYZE pgbench_accounts"
rows=$(psql "$db" -tAc "SELECT count(*) FROM pgbench_accounts")

new_table() { psql "$db" -qc "SET client_min_messages = warning; DROP TABLE IF EXISTS $1; CREATE TABLE $1 (LIKE pgbench_accounts INCLUDING ALL)"; }

new_table t_insert
insert_select=$(seconds psql "$db" -qc "INSERT INTO t_insert SELECT * FROM pgbench_accounts")

new_table t_copy
copy_pipe=$(seconds bash -c "psql '$db' -qc 'COPY pgbench_accounts TO STDOUT (FORMAT binary)' | psql '$db' -qc 'COPY t_copy FROM STDIN (FORMAT binary)'")

job() { # name, catch_up method, verify method
  new_table "$1"
  accounts_copy_job "$1" "$1" "$(printf '[copy]\nbatch_size = 10000\nconcurrency = 2\n[catch_up]\nmethod = "%s"\n[verify]\nmethod = "%s"' "$2" "$3")"
}
run_job() { # file → "seconds peak_rss_kib"
  local start end
  start=$(date +%s.%N)
  /usr/bin/time -f "%M" -o "$work/rss" "$switchyard" --config "$work/config/switchyard.toml" job run "$1" >/dev/null
  end=$(date +%s.%N)
  echo "$(echo "$end - $start" | bc) $(cat "$work/rss")"
}
read -r sy_copy sy_copy_rss <<<"$(run_job "$(job t_sy_copy none none)")"
read -r sy_full sy_full_rss <<<"$(run_job "$(job t_sy_full logical_replication checksum)")"

ratio() { printf '%.2f' "$(echo "scale=4; $1 / $insert_select" | bc)"; }
echo "copy of $rows pgbench_accounts rows, $(nproc) cores, PostgreSQL $(psql "$db" -tAc 'SHOW server_version')"
printf '%-46s %8s %8s %10s\n' "tool" "seconds" "ratio" "peak RSS"
printf '%-46s %8.2f %8s %10s\n' "INSERT … SELECT" "$insert_select" "1.00" "-"
printf '%-46s %8.2f %8s %10s\n' "binary COPY pipe (psql | psql)" "$copy_pipe" "$(ratio "$copy_pipe")" "-"
printf '%-46s %8.2f %8s %9sK\n' "switchyard copy (no catch-up, no verify)" "$sy_copy" "$(ratio "$sy_copy")" "$sy_copy_rss"
printf '%-46s %8.2f %8s %9sK\n' "switchyard copy (+ slot, catch-up, checksum)" "$sy_full" "$(ratio "$sy_full")" "$sy_full_rss"
