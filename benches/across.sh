#!/usr/bin/env bash
# Copy of N pgbench_accounts rows onto another PostgreSQL server, side by side in one run:
#   a binary COPY pipe between the servers (psql | psql, the floor for moving rows
#   through a client), pgcopydb (clone of that one table into a database of the other
#   server: COPY in two parts, then the primary key), and switchyard `copy` onto the other
#   server (without catch-up or verify, then with both). Prints seconds, ratios to the
#   COPY pipe, and peak RSS (pgcopydb's: its main process).
#
#   benches/across.sh [--scale S] [--repeat R]  # S × 100,000 rows, default 10 (1M rows);
#                                               # R rounds (default 3), medians reported
set -euo pipefail
cd "$(dirname "$0")/.."

. benches/common.sh
copy_rounds_setup benches/across.sh "$@"
columns="aid integer PRIMARY KEY, bid integer, abalance integer, filler character(84)"

# One round of every tool; the round's seconds go to $work/rounds.
round() {
  local copy_pipe pgcopydb sy_copy sy_full copied
  psql "$other_db" -qc "CREATE TABLE t_pipe ($columns)"
  copy_pipe=$(seconds bash -c "psql '$db' -qc 'COPY pgbench_accounts TO STDOUT (FORMAT binary)' | psql '$other_db' -qc 'COPY t_pipe FROM STDIN (FORMAT binary)'")

  pgcopydb=$(pgcopydb_clone "$other_admin")

  read -r sy_copy sy_copy_rss <<<"$(timed_job "$(copy_job "t_sy_copy_$1" none none other)")"
  read -r sy_full sy_full_rss <<<"$(timed_job "$(copy_job "t_sy_full_$1" logical_replication checksum other)")"
  for table in t_pipe "t_sy_copy_$1" "t_sy_full_$1"; do
    copied=$(psql "$other_db" -tAc "SELECT count(*) FROM $table")
    [ "$copied" = "$rows" ] || { echo "$table holds $copied rows of $rows" >&2; exit 1; }
  done
  echo "$copy_pipe $pgcopydb $sy_copy $sy_full $(cat "$work/pgcopydb_rss") $sy_copy_rss $sy_full_rss" >>"$work/rounds"
  psql "$other_db" -qc "DROP TABLE t_pipe, t_sy_copy_$1, t_sy_full_$1"
}

: >"$work/rounds"
for r in $(seq 1 "$repeat"); do round "$r"; done

echo "copy of $rows pgbench_accounts rows onto another server, $(nproc) cores, PostgreSQL $(psql "$db" -tAc 'SHOW server_version'); median of $repeat rounds (each round runs every tool once, in this order)"
rounds_table "$work/rounds" \
  "binary COPY pipe (psql | psql)|0|" \
  "pgcopydb clone (2 table jobs, 2 index jobs)|1|4" \
  "switchyard copy (no catch-up, no verify)|2|5" \
  "switchyard copy (+ slot, catch-up, checksum)|3|6"
