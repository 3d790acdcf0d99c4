#!/usr/bin/env bash
# Reindex of N documents into a new index, side by side in one run on one server: the
# server's own `_reindex` (synchronous, into an index with the same mapping: what a
# hand-written reindex script calls) and switchyard's `reindex` job (point-in-time reads
# into `_bulk`, external versions, checkpoints; without catch-up, then also with a
# checksum verify; and with `[copy] method = "server"`, the copy handed to the server's
# `_reindex`). Prints seconds, documents/s, ratios to `_reindex`, and peak RSS.
#
#   benches/elastic_reindex.sh [--docs N] [--repeat R]   # default 50,000 documents, 3 rounds
#
# The server is SWITCHYARD_TEST_ELASTICSEARCH_URL (the in-memory stand-in of
# scripts/services by default: compare ratios there, not documents/s).
set -euo pipefail
cd "$(dirname "$0")/.."

. benches/common.sh
rounds_args benches/elastic_reindex.sh docs 50000 "$@"
command -v bc >/dev/null && [ -x /usr/bin/time ] || { apt-get update -qq && apt-get install -y -qq bc time >/dev/null; }
eval "$(scripts/services up)"
cargo build --release --locked --quiet
switchyard="$PWD/target/release/switchyard"
es="$SWITCHYARD_TEST_ELASTICSEARCH_URL"
work=$(mktemp -d)
trap 'rm -rf "$work"; curl -s -XDELETE "$es/bench_catalog*" >/dev/null' EXIT
mkdir -p "$work/config" "$work/jobs"
printf '[state]\nurl = "sqlite://%s/state.db"\n[databases.elasticsearch]\nkind = "elasticsearch"\nurl = "%s"\n' "$work" "$es" >"$work/config/switchyard.toml"

call() { curl -sf -X "$1" "$es$2" -H 'content-type: application/json' ${3:+-d "$3"} >/dev/null; }
mapping='{"mappings": {"properties": {"sku": {"type": "keyword"}, "title": {"type": "text"}, "cents": {"type": "long"}, "updated_at": {"type": "date"}}}}'
curl -s -XDELETE "$es/bench_catalog*" >/dev/null
call PUT /bench_catalog_v1 "$mapping"
python3 - "$docs" "$work/bulk" <<'PY'
import json, sys
n, path = int(sys.argv[1]), sys.argv[2]
with open(path, "w") as out:
    for i in range(n):
        out.write(json.dumps({"index": {"_index": "bench_catalog_v1", "_id": str(i)}}) + "\n")
        out.write(json.dumps({"sku": f"sku-{i}", "title": f"chair number {i} in oak", "cents": i * 3, "tags": ["a", "b"], "updated_at": 1700000000000 + i}) + "\n")
PY
split -l 20000 "$work/bulk" "$work/part."
for part in "$work"/part.*; do
  curl -sf -XPOST "$es/_bulk" -H 'content-type: application/x-ndjson' --data-binary "@$part" >/dev/null
done
call POST /bench_catalog_v1/_refresh
call POST /_aliases '{"actions": [{"add": {"index": "bench_catalog_v1", "alias": "bench_catalog"}}]}'

job() {
  cat >"$work/jobs/$1.toml" <<TOML
name = "$1"
kind = "reindex"
[source]
database = "elasticsearch"
index = "bench_catalog"
[copy]
batch_size = 5000
${3:-}
$(manual_job_tail "$2")
TOML
  echo "$work/jobs/$1.toml"
}

server_reindex() {
  call PUT /bench_catalog_server "$mapping"
  curl -sf -XPOST "$es/_reindex?refresh=true&wait_for_completion=true" -H 'content-type: application/json' \
    -d '{"source": {"index": "bench_catalog_v1"}, "dest": {"index": "bench_catalog_server"}}' >/dev/null
}

for round in $(seq 1 "$repeat"); do
  server=$(seconds server_reindex)
  call DELETE /bench_catalog_server
  read -r sy sy_rss <<<"$(timed_job "$(job "bench_sy_$round" none)")"
  "$switchyard" --config "$work/config/switchyard.toml" job abort "bench_sy_$round" >/dev/null
  read -r syv syv_rss <<<"$(timed_job "$(job "bench_syv_$round" checksum)")"
  "$switchyard" --config "$work/config/switchyard.toml" job abort "bench_syv_$round" >/dev/null
  read -r sys sys_rss <<<"$(timed_job "$(job "bench_sys_$round" none 'method = "server"')")"
  "$switchyard" --config "$work/config/switchyard.toml" job abort "bench_sys_$round" >/dev/null
  echo "$server 0 $sy $sy_rss $syv $syv_rss $sys $sys_rss" >>"$work/rounds"
done

echo "reindex of $docs documents into a new index, $repeat rounds, medians ($es)"
rounds_table "$work/rounds" "server _reindex (synchronous)|0|" \
  "switchyard reindex (no catch-up, no verify)|2|3" "switchyard reindex + checksum verify|4|5" \
  "switchyard reindex, method = server (no verify)|6|7"
rates_table "$work/rounds" "$docs" documents "server _reindex|0" "switchyard reindex|2" "switchyard reindex + verify|4" \
  "switchyard reindex, method = server|6"
