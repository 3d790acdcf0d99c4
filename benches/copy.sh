#!/usr/bin/env bash
# Copy of N pgbench_accounts rows into a new table, side by side in one run on one server:
#   INSERT … SELECT (the in-server limit), a binary COPY pipe, pgcopydb (clone of that one
#   table into another database: COPY in two parts, then the primary key), and switchyard
#   `copy` (without catch-up or verify, then with both). Prints seconds, ratios to
#   INSERT … SELECT, and peak RSS (pgcopydb's: its main process).
#
#   benches/copy.sh [--scale S] [--repeat R]   # S × 100,000 rows, default 10 (1M rows);
#                                               # R rounds (default 3), medians reported
set -euo pipefail
cd "$(dirname "$0")/.."

. benches/common.sh
copy_rounds_setup benches/copy.sh "$@"

new_table() { psql "$db" -qc "SET client_min_messages = warning; DROP TABLE IF EXISTS $1; CREATE TABLE $1 (LIKE pgbench_accounts INCLUDING ALL)"; }

# One round of every tool; the round's seconds go to $work/round.
round() {
  local insert_select copy_pipe pgcopydb sy_copy sy_full
  new_table t_insert
  insert_select=$(seconds psql "$db" -qc "INSERT INTO t_insert SELECT * FROM pgbench_accounts")

  new_table t_copy
  copy_pipe=$(seconds bash -c "psql '$db' -qc 'COPY pgbench_accounts TO STDOUT (FORMAT binary)' | psql '$db' -qc 'COPY t_copy FROM STDIN (FORMAT binary)'")

  pgcopydb=$(pgcopydb_clone "$admin")

  read -r sy_copy sy_copy_rss <<<"$(timed_job "$(job "t_sy_copy_$1" none none)")"
  read -r sy_full sy_full_rss <<<"$(timed_job "$(job "t_sy_full_$1" logical_replication checksum)")"
  echo "$insert_select $copy_pipe $pgcopydb $sy_copy $sy_full $(cat "$work/pgcopydb_rss") $sy_copy_rss $sy_full_rss" >>"$work/rounds"
  psql "$db" -qc "DROP TABLE t_insert, t_copy, t_sy_copy_$1, t_sy_full_$1"
}

job() { # name, catch_up method, verify method
  new_table "$1"
  copy_job "$1" "$2" "$3"
}

: >"$work/rounds"
for r in $(seq 1 "$repeat"); do round "$r"; done

echo "copy of $rows pgbench_accounts rows, $(nproc) cores, PostgreSQL $(psql "$db" -tAc 'SHOW server_version'); median of $repeat rounds (each round runs every tool once, in this order)"
rounds_table "$work/rounds" \
  "INSERT … SELECT|0|" \
  "binary COPY pipe (psql | psql)|1|" \
  "pgcopydb clone (2 table jobs, 2 index jobs)|2|5" \
  "switchyard copy (no catch-up, no verify)|3|6" \
  "switchyard copy (+ slot, catch-up, checksum)|4|7"
