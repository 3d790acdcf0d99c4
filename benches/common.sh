# Shared by the benchmarks (sourced, not run): tools (bc, time, pgcopydb from Debian's
# packages, installed when missing), the private server, a release
# build, a fresh `switchyard_bench` database with pgbench tables at the given scale, and
# a switchyard configuration for it.
#
#   bench_setup SCALE   sets: switchyard, admin, db, work (a temporary folder); `sy` runs
#                       switchyard with the bench configuration; `accounts_copy_job` writes
#                       a copy job of pgbench_accounts.
#   seconds CMD…        how long a command takes
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
  psql "$admin" -qc "DROP DATABASE IF EXISTS switchyard_bench WITH (FORCE)" -c "CREATE DATABASE switchyard_bench"
  pgbench -i -q -s "$scale" "$db" >/dev/null 2>&1
  mkdir -p "$work/config" "$work/jobs"
  cat >"$work/config/switchyard.toml" <<TOML
[state]
url = "sqlite://$work/state.db"
[databases.bench]
kind = "postgresql"
url = "$db"
TOML
}

sy() { "$switchyard" --config "$work/config/switchyard.toml" "$@"; }

# Writes $work/jobs/NAME.toml, a copy of pgbench_accounts into public.TARGET (created at
# expand like the source) with the TOML in EXTRA appended, and prints its path.
accounts_copy_job() {
  local name="$1" target="$2" extra="$3"
  cat >"$work/jobs/$name.toml" <<TOML
name = "$name"
kind = "copy"
[source]
database = "bench"
table = "public.pgbench_accounts"
[target]
database = "bench"
table = "public.$target"
[expand]
sql = ["CREATE TABLE IF NOT EXISTS public.$target (LIKE public.pgbench_accounts INCLUDING ALL)"]
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
