#!/usr/bin/env bash
# A table (pgbench_accounts) exported to JSON Lines and imported into an empty copy of it,
# side by side in one run: what a team would otherwise run (psql's COPY of each row's
# `to_jsonb` to a file; psql loading the file into a staging table and upserting it with
# `jsonb_populate_record`) and switchyard's `export` / `import` (key-ordered batches,
# resumable, upserts by primary key). Prints seconds, rows/s, ratios and peak RSS; checks
# every round trip equal by checksum.
#
#   benches/export.sh [--scale S] [--repeat R]   # pgbench scale (100,000 rows each), default 10; 3 rounds
set -euo pipefail
cd "$(dirname "$0")/.."

. benches/common.sh
copy_rounds_setup benches/export.sh "$@"
psql "$db" -qc "CREATE TABLE accounts_copy (LIKE pgbench_accounts INCLUDING ALL)"
sum() { psql "$db" -tAc "SELECT md5(string_agg(to_jsonb(a)::text, '' ORDER BY aid)) FROM $1 a"; }
source_sum=$(sum pgbench_accounts)
rss() { /usr/bin/time -f "%M" -o "$work/$1" "${@:2}" >/dev/null; }

for round in $(seq 1 "$repeat"); do
  rm -f "$work"/*.jsonl*
  psql_out=$(seconds rss psql_out_rss psql "$db" -qAt -c "\\copy (SELECT to_jsonb(a) FROM pgbench_accounts a ORDER BY aid) TO '$work/psql.jsonl'")
  psql "$db" -qc "TRUNCATE accounts_copy"
  psql_in=$(seconds rss psql_in_rss psql "$db" -q -c "CREATE TEMP TABLE staging (doc jsonb)" \
    -c "\\copy staging FROM '$work/psql.jsonl'" \
    -c "INSERT INTO accounts_copy SELECT r.* FROM staging, jsonb_populate_record(NULL::accounts_copy, doc) r ON CONFLICT (aid) DO UPDATE SET bid = EXCLUDED.bid, abalance = EXCLUDED.abalance, filler = EXCLUDED.filler")
  [ "$(sum accounts_copy)" = "$source_sum" ] || { echo "psql's round trip differs" >&2; exit 1; }
  psql "$db" -qc "TRUNCATE accounts_copy"
  sy_out=$(seconds rss sy_out_rss "$switchyard" --config "$work/config/switchyard.toml" export --database bench --table public.pgbench_accounts --out "$work/sy.jsonl")
  sy_in=$(seconds rss sy_in_rss "$switchyard" --config "$work/config/switchyard.toml" import --database bench --table public.accounts_copy "$work/sy.jsonl")
  [ "$(sum accounts_copy)" = "$source_sum" ] || { echo "switchyard's round trip differs" >&2; exit 1; }
  psql "$db" -qc "TRUNCATE accounts_copy"
  echo "$psql_out $(cat "$work/psql_out_rss") $sy_out $(cat "$work/sy_out_rss") $psql_in $(cat "$work/psql_in_rss") $sy_in $(cat "$work/sy_in_rss")" >>"$work/rounds"
done

echo "export and import of pgbench_accounts ($rows rows), $repeat rounds, medians; every round trip equal by checksum"
rounds_table "$work/rounds" "psql COPY to_jsonb > file|0|1" "switchyard export|2|3"
rounds_table "$work/rounds" "psql COPY file + jsonb_populate_record upsert|4|5" "switchyard import|6|7"
rates_table "$work/rounds" "$rows" rows "psql export|0" "switchyard export|2" "psql import|4" "switchyard import|6"
