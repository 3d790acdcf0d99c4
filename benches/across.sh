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

scale=10
repeat=3
while [ $# -gt 0 ]; do
  case "$1" in
    --scale) scale="$2"; shift 2 ;;
    --repeat) repeat="$2"; shift 2 ;;
    *) echo "usage: benches/across.sh [--scale S] [--repeat R]" >&2; exit 2 ;;
  esac
done

. benches/common.sh
bench_setup "$scale"
psql "$db" -qc "VACUUM ANALYZE pgbench_accounts"
rows=$(psql "$db" -tAc "SELECT count(*) FROM pgbench_accounts")
columns="aid integer PRIMARY KEY, bid integer, abalance integer, filler character(84)"

# One round of every tool; the round's seconds go to $work/rounds.
round() {
  local copy_pipe pgcopydb sy_copy sy_full copied
  psql "$other_db" -qc "CREATE TABLE t_pipe ($columns)"
  copy_pipe=$(seconds bash -c "psql '$db' -qc 'COPY pgbench_accounts TO STDOUT (FORMAT binary)' | psql '$other_db' -qc 'COPY t_pipe FROM STDIN (FORMAT binary)'")

  pgcopydb=$(pgcopydb_clone "$other_admin")

  read -r sy_copy sy_copy_rss <<<"$(timed_job "$(job "t_sy_copy_$1" none none)")"
  read -r sy_full sy_full_rss <<<"$(timed_job "$(job "t_sy_full_$1" logical_replication checksum)")"
  for table in t_pipe "t_sy_copy_$1" "t_sy_full_$1"; do
    copied=$(psql "$other_db" -tAc "SELECT count(*) FROM $table")
    [ "$copied" = "$rows" ] || { echo "$table holds $copied rows of $rows" >&2; exit 1; }
  done
  echo "$copy_pipe $pgcopydb $sy_copy $sy_full $(cat "$work/pgcopydb_rss") $sy_copy_rss $sy_full_rss" >>"$work/rounds"
  psql "$other_db" -qc "DROP TABLE t_pipe, t_sy_copy_$1, t_sy_full_$1"
}

job() { # name, catch_up method, verify method
  accounts_copy_job "$1" "$1" "$(printf '[copy]\nbatch_size = 10000\nconcurrency = 2\n[catch_up]\nmethod = "%s"\n[verify]\nmethod = "%s"' "$2" "$3")" other
}

: >"$work/rounds"
for r in $(seq 1 "$repeat"); do round "$r"; done

echo "copy of $rows pgbench_accounts rows onto another server, $(nproc) cores, PostgreSQL $(psql "$db" -tAc 'SHOW server_version'); median of $repeat rounds (each round runs every tool once, in this order)"
python3 - "$work/rounds" <<'PY'
import statistics, sys
rounds = [list(map(float, l.split())) for l in open(sys.argv[1]) if l.strip()]
col = lambda i: statistics.median(r[i] for r in rounds)
base = col(0)
rows = [
    ("binary COPY pipe (psql | psql)", 0, None),
    ("pgcopydb clone (2 table jobs, 2 index jobs)", 1, 4),
    ("switchyard copy (no catch-up, no verify)", 2, 5),
    ("switchyard copy (+ slot, catch-up, checksum)", 3, 6),
]
print(f"{'tool':<46} {'seconds':>8} {'ratio':>7} {'peak RSS':>10}   ratio per round")
for name, i, rss in rows:
    per_round = " ".join(f"{r[i] / r[0]:.2f}" for r in rounds)
    memory = f"{max(r[rss] for r in rounds) / 1024:.1f} MiB" if rss else "-"
    print(f"{name:<46} {col(i):8.2f} {col(i) / base:7.2f} {memory:>10}   {per_round}")
PY
