# Shared by the benchmarks (sourced, not run): tools (bc, time, pgcopydb from Debian's
# packages, installed when missing), the private server, a release
# build, a fresh `switchyard_bench` database with pgbench tables at the given scale, and
# a switchyard configuration for it.
#
#   bench_setup SCALE   sets: switchyard, admin, db, work (a temporary folder), and
#                       other_admin, other_db: an empty `switchyard_bench` database on the
#                       `other` server, configured as database `other`; `sy` runs
#                       switchyard with the bench configuration; `accounts_copy_job` writes
#                       a copy job of pgbench_accounts.
#   rounds_args SCRIPT SIZE DEFAULT ARGS…
#                       `--SIZE N --repeat R` into the variables SIZE and repeat
#   copy_rounds_setup SCRIPT [--scale S] [--repeat R]
#                       the arguments of a copy benchmark (scale, repeat; defaults 10
#                       and 3), then bench_setup and a vacuumed pgbench_accounts of
#                       `rows` rows
#   seconds CMD…        how long a command takes
#   copy_job NAME CATCH_UP VERIFY [DATABASE]
#                       accounts_copy_job into NAME with two workers, batches of 10,000
#                       and the given catch-up and verify methods
#   manual_job_tail METHOD  the last sections of a job file: no catch-up, verify by
#                       METHOD, manual cutover
#   rates_table FILE COUNT UNIT "tool|column" …
#                       COUNT UNIT a second at each tool's median seconds
#   rounds_table FILE "tool|column|rss column" …   (the last two `|` split)
#                       medians of the rounds in FILE, each tool's ratio to the first
#   pgcopydb_clone SERVER
#                       pgcopydb's clone of pgbench_accounts into a new database of SERVER
#                       (an admin URL); prints seconds, leaves its peak RSS in
#                       $work/pgcopydb_rss
#   timed_job FILE      `job run FILE`: "seconds peak_rss_kib"
#
# Only bench_setup and accounts_copy_job are PostgreSQL's: a MongoDB or Elasticsearch
# benchmark adds its own setup beside them and times its peers (`_reindex`, a driver-level
# copy) and switchyard's job with `seconds` and `timed_job`, in the same rounds.

bench_setup() {
  local scale="$1"
  for tool in bc /usr/bin/time pgcopydb; do
    command -v "$tool" >/dev/null || { apt-get update -qq && apt-get install -y -qq bc time pgcopydb >/dev/null; }
  done
  eval "$(scripts/services up)"
  cargo build --release --locked --quiet
  switchyard="$PWD/target/release/switchyard"
  admin="$SWITCHYARD_TEST_POSTGRES_URL"
  db="${admin%/*}/switchyard_bench"
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  other_admin="$SWITCHYARD_TEST_OTHER_POSTGRES_URL"
  other_db="${other_admin%/*}/switchyard_bench"
  for server in "$admin" "$other_admin"; do
    psql "$server" -qc "DROP DATABASE IF EXISTS switchyard_bench WITH (FORCE)" -c "CREATE DATABASE switchyard_bench"
  done
  pgbench -i -q -s "$scale" "$db" >/dev/null 2>&1
  mkdir -p "$work/config" "$work/jobs"
  cat >"$work/config/switchyard.toml" <<TOML
[state]
url = "sqlite://$work/state.db"
[databases.bench]
kind = "postgresql"
url = "$db"
[databases.other]
kind = "postgresql"
url = "$other_db"
TOML
}

sy() { "$switchyard" --config "$work/config/switchyard.toml" "$@"; }

# Writes $work/jobs/NAME.toml, a copy of pgbench_accounts into public.TARGET of database
# DATABASE (default: the source's; created at expand like the source, with its primary
# key) with the TOML in EXTRA appended, and prints its path.
accounts_copy_job() {
  local name="$1" target="$2" extra="$3" database="${4:-bench}"
  cat >"$work/jobs/$name.toml" <<TOML
name = "$name"
kind = "copy"
[source]
database = "bench"
table = "public.pgbench_accounts"
[target]
database = "$database"
table = "public.$target"
[expand]
sql = ["CREATE TABLE IF NOT EXISTS public.$target (aid integer PRIMARY KEY, bid integer, abalance integer, filler character(84))"]
$extra
TOML
  echo "$work/jobs/$name.toml"
}

# Runs `switchyard job run FILE` with the bench configuration; prints "seconds peak_rss_kib".
timed_job() {
  local start end
  start=$(date +%s.%N)
  /usr/bin/time -f "%M" -o "$work/rss" "$switchyard" --config "$work/config/switchyard.toml" job run "$1" >/dev/null
  end=$(date +%s.%N)
  echo "$(echo "$end - $start" | bc) $(cat "$work/rss")"
}

# Seconds a command takes.
seconds() {
  local start end
  start=$(date +%s.%N)
  "$@" >/dev/null
  end=$(date +%s.%N)
  echo "$end - $start" | bc
}

# pgcopydb clones pgbench_accounts alone (`--filters` include-only) into a fresh
# `switchyard_bench_pgcopydb` database on SERVER, split in two parts copied by two jobs
# (like switchyard's two workers), then builds the primary key; prints seconds.
pgcopydb_clone() {
  local server="$1" target split_mb start seconds copied
  target="${server%/*}/switchyard_bench_pgcopydb"
  psql "$server" -qc "DROP DATABASE IF EXISTS switchyard_bench_pgcopydb WITH (FORCE)" -c "CREATE DATABASE switchyard_bench_pgcopydb"
  printf '[include-only-table]\npublic.pgbench_accounts\n' >"$work/pgcopydb.ini"
  split_mb=$(psql "$db" -tAc "SELECT greatest(1, pg_table_size('pgbench_accounts') / 2 / 1048576 + 1)")
  rm -rf "$work/pgcopydb"
  start=$(date +%s.%N)
  /usr/bin/time -f "%M" -o "$work/pgcopydb_rss" pgcopydb clone --source "$db" --target "$target" \
    --table-jobs 2 --index-jobs 2 --split-tables-larger-than "${split_mb}MB" --filters "$work/pgcopydb.ini" \
    --dir "$work/pgcopydb" --no-owner --no-acl >"$work/pgcopydb.log" 2>&1
  seconds=$(echo "$(date +%s.%N) - $start" | bc)
  copied=$(psql "$target" -tAc "SELECT count(*) FROM pgbench_accounts")
  [ "$copied" = "$(psql "$db" -tAc "SELECT count(*) FROM pgbench_accounts")" ] || { echo "pgcopydb copied $copied rows" >&2; exit 1; }
  psql "$server" -qc "DROP DATABASE switchyard_bench_pgcopydb WITH (FORCE)"
  echo "$seconds"
}

copy_job() {
  accounts_copy_job "$1" "$1" "$(printf '[copy]\nbatch_size = 10000\nconcurrency = 2\n[catch_up]\nmethod = "%s"\n[verify]\nmethod = "%s"' "$2" "$3")" "${4:-bench}"
}

# The end of a benchmark job file: no catch-up, verify by METHOD, manual cutover.
manual_job_tail() {
  printf '[catch_up]\nmethod = "none"\n[verify]\nmethod = "%s"\n[cutover]\nmode = "manual"\n' "$1"
}

# COUNT items (UNIT) a second for each "tool|column of its seconds" in FILE's rounds.
rates_table() {
  python3 - "$@" <<'PY'
import statistics, sys
rounds = [list(map(float, l.split())) for l in open(sys.argv[1]) if l.strip()]
count, unit = int(sys.argv[2]), sys.argv[3]
for tool in sys.argv[4:]:
    name, column = tool.rsplit("|", 1)
    print(f"{name:<30} {count / statistics.median(r[int(column)] for r in rounds):>10.0f} {unit}/s")
PY
}

# FILE holds one line of numbers per round; each further argument names a tool, the
# column of its seconds and the column of its peak RSS in KiB (empty: not measured).
rounds_table() {
  python3 - "$@" <<'PY'
import statistics, sys
rounds = [list(map(float, l.split())) for l in open(sys.argv[1]) if l.strip()]
tools = [t.rsplit("|", 2) for t in sys.argv[2:]]
median = lambda i: statistics.median(r[i] for r in rounds)
base = int(tools[0][1])
print(f"{'tool':<46} {'seconds':>8} {'ratio':>7} {'peak RSS':>10}   ratio per round")
for name, column, rss in tools:
    i = int(column)
    per_round = " ".join(f"{r[i] / r[base]:.2f}" for r in rounds)
    memory = f"{max(r[int(rss)] for r in rounds) / 1024:.1f} MiB" if rss else "-"
    print(f"{name:<46} {median(i):8.2f} {median(i) / median(base):7.2f} {memory:>10}   {per_round}")
PY
}

# `--SIZE N --repeat R` of a benchmark (SCRIPT names it in the usage line): sets the
# variable SIZE (default DEFAULT) and repeat (default 3).
rounds_args() {
  local script="$1" size="$2" default="$3"
  shift 3
  printf -v "$size" '%s' "$default"
  repeat=3
  while [ $# -gt 0 ]; do
    case "$1" in
      "--$size") printf -v "$size" '%s' "$2"; shift 2 ;;
      --repeat) repeat="$2"; shift 2 ;;
      *) echo "usage: $script [--$size N] [--repeat R]" >&2; exit 2 ;;
    esac
  done
}

copy_rounds_setup() {
  local script="$1"
  shift
  rounds_args "$script" scale 10 "$@"
  bench_setup "$scale"
  psql "$db" -qc "VACUUM ANALYZE pgbench_accounts"
  rows=$(psql "$db" -tAc "SELECT count(*) FROM pgbench_accounts")
}
