#!/usr/bin/env bash
# In-place backfill of one computed column on N pgbench_accounts rows, side by side in one
# run: a single UPDATE (the in-server limit, one long transaction holding every row lock)
# and switchyard `backfill` (batches of 10,000 with a dual-write trigger). Then throttle
# accuracy: a copy at rows_per_second = 20,000 for about 30 s, achieved rate measured.
#
#   benches/backfill.sh [--scale S]     # S × 100,000 rows; default 10 (1M rows)
set -euo pipefail
cd "$(dirname "$0")/.."

scale=10
while [ $# -gt 0 ]; do
  case "$1" in
    --scale) scale="$2"; shift 2 ;;
    *) echo "usage: benches/backfill.sh [--scale S]" >&2; exit 2 ;;
  esac
done

. benches/common.sh
bench_setup "$scale"
psql "$db" -qc "CREATE TABLE accounts_b (LIKE pgbench_accounts INCLUDING ALL)" -c "INSERT INTO accounts_b SELECT * FROM pgbench_accounts" -c "VACUUM ANALYZE pgbench_accounts, accounts_b"
psql "$db" -qc "ALTER TABLE pgbench_accounts ADD COLUMN cents bigint; ALTER TABLE accounts_b ADD COLUMN cents bigint"
rows=$(psql "$db" -tAc "SELECT count(*) FROM pgbench_accounts")

update=$(seconds psql "$db" -qc "UPDATE pgbench_accounts SET cents = abalance * 100")

cat >"$work/jobs/fill.toml" <<TOML
name = "fill"
kind = "backfill"
[source]
database = "bench"
table = "public.accounts_b"
[transform]
columns = { cents = "abalance * 100" }
[copy]
batch_size = 10000
concurrency = 2
[verify]
method = "count"
[contract]
after = "manual"
TOML
read -r backfill backfill_rss <<<"$(timed_job "$work/jobs/fill.toml")"
wrong=$(psql "$db" -tAc "SELECT count(*) FROM accounts_b WHERE cents IS DISTINCT FROM abalance * 100")

# Throttle accuracy needs rows for more than 30 s at 20,000 rows/s.
if [ "$rows" -ge 700000 ]; then
  rate_job=$(accounts_copy_job rate accounts_rate "$(printf '[copy]\nbatch_size = 1000\nrows_per_second = 20000\n[catch_up]\nmethod = "none"\n[verify]\nmethod = "none"')")
  sy job run "$rate_job" >/dev/null 2>&1 &
  runner=$!
  sleep 2   # expand and the first batches
  first=$(psql "$db" -tAc "SELECT coalesce(sum(rows), 0) FROM switchyard.copy_progress WHERE job = 'rate'")
  t0=$(date +%s.%N)
  sleep 30
  last=$(psql "$db" -tAc "SELECT coalesce(sum(rows), 0) FROM switchyard.copy_progress WHERE job = 'rate'")
  t1=$(date +%s.%N)
  kill "$runner" 2>/dev/null || true
  wait "$runner" 2>/dev/null || true
  achieved=$(echo "($last - $first) / ($t1 - $t0)" | bc -l)

else
  achieved=""
fi

echo "backfill of $rows pgbench_accounts rows (cents = abalance * 100), $(nproc) cores"
printf '%-44s %8s %8s %10s\n' "tool" "seconds" "ratio" "peak RSS"
printf '%-44s %8.2f %8s %10s\n' "one UPDATE" "$update" "1.00" "-"
printf '%-44s %8.2f %8.2f %9sK\n' "switchyard backfill (batches of 10,000)" "$backfill" "$(echo "$backfill / $update" | bc -l)" "$backfill_rss"
echo "rows left wrong after the backfill: $wrong"
if [ -n "$achieved" ]; then
  printf 'throttle: asked 20000 rows/s, achieved %.0f rows/s over 30 s (%+.1f%%)\n' "$achieved" "$(echo "($achieved - 20000) / 200" | bc -l)"
else
  echo "throttle: not measured (needs at least 700,000 rows: --scale 7 or more)"
fi
