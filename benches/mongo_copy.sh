#!/usr/bin/env bash
# Copy of N documents into a new collection, side by side in one run on one MongoDB
# server: a driver-level copy (pymongo: `find` in `_id` order into `insert_many` batches
# of 10,000, what a hand-written script does) and switchyard `copy` (without catch-up
# or verify, then with a checksum verify). Prints seconds, documents/s, ratios to the
# driver copy, and peak RSS.
#
#   benches/mongo_copy.sh [--docs N] [--repeat R]   # default 50,000 documents, 3 rounds
#
# The server is SWITCHYARD_TEST_MONGODB_URL (the stand-in of scripts/services by default,
# whose Python makes every tool slow alike: compare ratios, not documents/s, there).
set -euo pipefail
cd "$(dirname "$0")/.."

. benches/common.sh
rounds_args benches/mongo_copy.sh docs 50000 "$@"
command -v bc >/dev/null && [ -x /usr/bin/time ] || { apt-get update -qq && apt-get install -y -qq bc time >/dev/null; }
eval "$(scripts/services up)"
python=$(scripts/services mongo-venv)/bin/python
cargo build --release --locked --quiet
switchyard="$PWD/target/release/switchyard"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
url=$(python3 -c 'import sys; u=sys.argv[1]; s,r=u.split("://",1); h,_,t=r.partition("/"); o=t.partition("?")[2]; print(f"{s}://{h}/switchyard_bench" + (f"?{o}" if o else ""))' "$SWITCHYARD_TEST_MONGODB_URL")
mkdir -p "$work/config" "$work/jobs"
printf '[state]\nurl = "sqlite://%s/state.db"\n[databases.mongodb]\nkind = "mongodb"\nurl = "%s"\n' "$work" "$url" >"$work/config/switchyard.toml"

mongo() { "$python" - "$url" "$@"; }
mongo "$docs" <<'PY'
import sys, pymongo
db = pymongo.MongoClient(sys.argv[1]).get_default_database()
db.client.drop_database(db.name)
n = int(sys.argv[2])
for start in range(0, n, 10000):
    db.orders.insert_many([{"_id": i, "customer": f"c{i % 1000}", "cents": i * 3, "items": [i, i + 1], "note": "x" * 64} for i in range(start, min(n, start + 10000))])
PY

cat >"$work/driver_copy.py" <<'PY'
import sys, pymongo
db = pymongo.MongoClient(sys.argv[1]).get_default_database()
target = db[sys.argv[2]]
batch = []
for document in db.orders.find().sort("_id", 1).batch_size(10000):
    batch.append(document)
    if len(batch) == 10000:
        target.insert_many(batch)
        batch = []
if batch:
    target.insert_many(batch)
PY

job() {
  cat >"$work/jobs/$1.toml" <<TOML
name = "$1"
kind = "copy"
[source]
database = "mongodb"
collection = "orders"
[target]
database = "mongodb"
collection = "$1"
[copy]
batch_size = 10000
concurrency = 2
$(manual_job_tail "$2")
TOML
  echo "$work/jobs/$1.toml"
}

drop() { mongo "$1" <<<'import sys, pymongo; pymongo.MongoClient(sys.argv[1]).get_default_database().drop_collection(sys.argv[2])'; }

for round in $(seq 1 "$repeat"); do
  drop t_driver
  start=$(date +%s.%N)
  /usr/bin/time -f "%M" -o "$work/rss" "$python" "$work/driver_copy.py" "$url" t_driver
  driver=$(echo "$(date +%s.%N) - $start" | bc); driver_rss=$(cat "$work/rss")
  read -r sy_copy sy_copy_rss <<<"$(timed_job "$(job "t_sy_$round" none)")"
  read -r sy_verify sy_verify_rss <<<"$(timed_job "$(job "t_syv_$round" checksum)")"
  echo "$driver $driver_rss $sy_copy $sy_copy_rss $sy_verify $sy_verify_rss" >>"$work/rounds"
  for t in t_sy_$round t_syv_$round; do drop "$t"; done
done

echo "copy of $docs documents into a new collection, $repeat rounds, medians ($SWITCHYARD_TEST_MONGODB_URL)"
rounds_table "$work/rounds" "driver copy (pymongo find → insert_many)|0|1" \
  "switchyard copy (no catch-up, no verify)|2|3" "switchyard copy + checksum verify|4|5"
rates_table "$work/rounds" "$docs" documents "driver copy|0" "switchyard copy|2" "switchyard copy + verify|4"
mongo <<<'import sys, pymongo; c = pymongo.MongoClient(sys.argv[1]); c.drop_database(c.get_default_database().name)'
