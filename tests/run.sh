#!/usr/bin/env bash
# The README's test command, and what .ci/run calls: installs the system parts the tests need
# (from Debian's packages, PostgreSQL among them, and crates.io), then runs every test of the
# workspace and the Debian package check (build, dpkg -i, a transfer as user gapsync, purge).
#
# Run it as root: the landing tests make mount namespaces and bind mounts, the spool tests run a
# sender as another user, and the package check installs packages. Nothing is skipped: a part
# that cannot be installed stops the run with the reason.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" != 0 ]; then
  echo "tests/run.sh: run it as root (sudo bash tests/run.sh): the tests mount, switch users and install packages" >&2
  exit 2
fi

echo "=== system parts the tests need: util-linux, PostgreSQL (the package check installs its own: systemd, adduser, cargo-deb)"
missing=()
for tool in unshare nsenter setpriv runuser prlimit; do
  command -v "$tool" >/dev/null || missing=(util-linux)
done
if [ ${#missing[@]} -gt 0 ]; then
  apt-get update -qq && apt-get install -y -qq "${missing[@]}" >/dev/null
fi
echo "util-linux $(unshare --version | awk '{print $NF}')"

# The table tests (tests/tests/tables*.rs, pg_harness.rs) make their own PostgreSQL clusters
# (initdb as user nobody, their own ports and sockets): they need the server binaries, which
# Debian's package puts under /usr/lib/postgresql/<version>/bin with psql and pgbench. A
# default cluster the package may start is left alone.
pg_bin() { ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n1; }
pg_ready() {
  local d
  d=$(pg_bin)
  [ -n "$d" ] && for b in initdb pg_ctl postgres psql pgbench; do [ -x "$d/$b" ] || return 1; done
}
if ! pg_ready; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
fi
if ! pg_ready; then
  echo "tests/run.sh: PostgreSQL's initdb, pg_ctl, postgres, psql and pgbench are still missing under /usr/lib/postgresql/*/bin after apt-get install postgresql" >&2
  exit 1
fi
echo "$("$(pg_bin)/postgres" --version) ($(pg_bin))"

echo "=== cargo test --workspace --locked"
cargo test --workspace --locked

echo "=== the Debian packages: build, dpkg -i, files and modes, check-config and a transfer as user gapsync, purge"
tests/deb/check.sh
