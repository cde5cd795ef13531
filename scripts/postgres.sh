#!/usr/bin/env bash
# Start a local PostgreSQL (Debian's package) for the scale-out tests and print the URL to use.
# Needs root (installs the package when missing). Prints nothing and exits 0 when it cannot.
set -uo pipefail
if [ "$(id -u)" != "0" ]; then exit 0; fi
if ! command -v pg_lsclusters >/dev/null 2>&1; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql) >/dev/null 2>&1 || exit 0
fi
cluster=$(pg_lsclusters --no-header 2>/dev/null | awk 'NR==1 {print $1" "$2}')
if [ -z "$cluster" ]; then
  ver=$(ls /usr/lib/postgresql 2>/dev/null | sort -n | tail -1)
  [ -n "$ver" ] || exit 0
  pg_createcluster "$ver" main >/dev/null 2>&1 || exit 0
  cluster="$ver main"
fi
pg_ctlcluster $cluster start >/dev/null 2>&1 || true
port=$(pg_lsclusters --no-header | awk 'NR==1 {print $3}')
for _ in $(seq 1 30); do
  su postgres -c "psql -p $port -tAc 'select 1'" >/dev/null 2>&1 && break
  sleep 0.5
done
su postgres -c "psql -p $port -tAc \"select 1 from pg_roles where rolname='feesync'\"" | grep -q 1 || \
  su postgres -c "psql -p $port -qc \"create role feesync login password 'feesync' createdb\"" >/dev/null
su postgres -c "psql -p $port -tAc \"select 1 from pg_database where datname='feesync_test'\"" | grep -q 1 || \
  su postgres -c "createdb -p $port -O feesync feesync_test" >/dev/null
echo "postgresql+psycopg://feesync:feesync@127.0.0.1:$port/feesync_test"
