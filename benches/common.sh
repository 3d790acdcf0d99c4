# Shared by the benchmarks (sourced, not run): tools, the private server, a release
# build, a fresh `switchyard_bench` database with pgbench tables at the given scale, and
# a switchyard configuration for it.
#
#   bench_setup SCALE   sets: switchyard, admin, db, work (a temporary folder); `sy` runs
#                       switchyard with the bench configuration.

bench_setup() {
  local scale="$1"
  for tool in bc /usr/bin/time; do
    command -v "$tool" >/dev/null || { apt-get update -qq && apt-get install -y -qq bc time >/dev/null; }
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

# Seconds a command takes.
seconds() {
  local start end
  start=$(date +%s.%N)
  "$@" >/dev/null
  end=$(date +%s.%N)
  echo "$end - $start" | bc
}
