#!/usr/bin/env bash
# A PostgreSQL table (pgbench_accounts) copied into a new Elasticsearch index, side by
# side in one run: the hand-written script a team would otherwise run (psql's COPY of each
# row's `to_jsonb` piped into `_bulk` requests of 5,000 documents by a short Python
# loader) and switchyard's `copy` into an index (key-ordered reads into `_bulk`, external
# versions, checkpoints; without catch-up, then with logical replication and a checksum
# verify of every document against its row). Prints seconds, rows/s, ratios and peak RSS.
#
#   benches/elastic_copy.sh [--scale S] [--repeat R]   # pgbench scale (100,000 rows each), default 1; 3 rounds
#
# The index server is SWITCHYARD_TEST_ELASTICSEARCH_URL (the in-memory stand-in of
# scripts/services by default: compare ratios there, not rows/s).
set -euo pipefail
cd "$(dirname "$0")/.."

. benches/common.sh
rounds_args benches/elastic_copy.sh scale 1 "$@"
bench_setup "$scale"
psql "$db" -qc "VACUUM ANALYZE pgbench_accounts"
rows=$(psql "$db" -tAc "SELECT count(*) FROM pgbench_accounts")
es="$SWITCHYARD_TEST_ELASTICSEARCH_URL"
trap 'rm -rf "$work"; curl -s -XDELETE "$es/bench_accounts*" >/dev/null' EXIT
printf '[databases.search]\nkind = "elasticsearch"\nurl = "%s"\n' "$es" >>"$work/config/switchyard.toml"
mapping='{"properties": {"aid": {"type": "integer"}, "bid": {"type": "integer"}, "abalance": {"type": "integer"}, "filler": {"type": "keyword", "index": false}}}'

# The script: every row as JSON from psql, 5,000 documents per `_bulk` request.
script_copy() {
  curl -sf -XPUT "$es/bench_accounts_script" -H 'content-type: application/json' -d "{\"mappings\": $mapping}" >/dev/null
  /usr/bin/time -f "%M" -o "$work/script_rss" bash -c "psql '$db' -qAt -c \"COPY (SELECT aid, to_jsonb(a) FROM pgbench_accounts a) TO STDOUT\" | python3 -c '
import sys, urllib.request
def send(lines):
    request = urllib.request.Request(sys.argv[1] + \"/_bulk\", data=\"\".join(lines).encode(), headers={\"content-type\": \"application/x-ndjson\"})
    urllib.request.urlopen(request).read()
lines = []
for line in sys.stdin:
    key, document = line.rstrip(\"\n\").split(\"\t\", 1)
    lines.append(\"{\\\"index\\\": {\\\"_index\\\": \\\"bench_accounts_script\\\", \\\"_id\\\": \\\"\" + key + \"\\\"}}\n\" + document + \"\n\")
    if len(lines) == 5000:
        send(lines); lines = []
if lines:
    send(lines)
' '$es'"
  curl -sf -XPOST "$es/bench_accounts_script/_refresh" >/dev/null
  local copied
  copied=$(curl -sf "$es/bench_accounts_script/_count" | python3 -c 'import json,sys; print(json.load(sys.stdin)["count"])')
  [ "$copied" = "$rows" ] || { echo "the script copied $copied documents of $rows" >&2; exit 1; }
}

job() {
  cat >"$work/jobs/$1.toml" <<TOML
name = "$1"
kind = "copy"
[source]
database = "bench"
table = "public.pgbench_accounts"
[target]
database = "search"
index = "bench_accounts_$1"
[expand]
mapping = $(python3 -c 'import json,sys; m=json.loads(sys.argv[1]); print("{ properties = { " + ", ".join(f"{k} = {{ " + ", ".join(f"{a} = {json.dumps(b)}" for a, b in v.items()) + " }" for k, v in m["properties"].items()) + " } }")' "$mapping")
[copy]
batch_size = 5000
[catch_up]
method = "$2"
[verify]
method = "$3"
[cutover]
mode = "manual"
TOML
  echo "$work/jobs/$1.toml"
}

for round in $(seq 1 "$repeat"); do
  script=$(seconds script_copy)
  curl -s -XDELETE "$es/bench_accounts_script" >/dev/null
  read -r sy sy_rss <<<"$(timed_job "$(job "plain_$round" none count)")"
  sy job abort "plain_$round" >/dev/null
  read -r syv syv_rss <<<"$(timed_job "$(job "full_$round" logical_replication checksum)")"
  sy job abort "full_$round" >/dev/null
  echo "$script $(cat "$work/script_rss") $sy $sy_rss $syv $syv_rss" >>"$work/rounds"
done

echo "copy of pgbench_accounts ($rows rows) into a new index, $repeat rounds, medians ($es)"
rounds_table "$work/rounds" "psql COPY to_jsonb | _bulk script|0|1" \
  "switchyard copy (no catch-up, count verify)|2|3" "switchyard copy + replication + checksum|4|5"
rates_table "$work/rounds" "$rows" rows "script|0" "switchyard copy|2" "switchyard copy + checksum|4"
