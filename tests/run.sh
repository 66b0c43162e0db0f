#!/usr/bin/env bash
# The README's test command, and what .ci/run calls: installs the system parts the tests need
# (from Debian's packages and crates.io), then runs every test of the workspace and the Debian
# package check (build, dpkg -i, a transfer as user gapsync, purge).
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

echo "=== system parts the tests need (the package check installs its own: systemd, adduser, cargo-deb)"
missing=()
for tool in unshare nsenter setpriv runuser prlimit; do
  command -v "$tool" >/dev/null || missing=(util-linux)
done
if [ ${#missing[@]} -gt 0 ]; then
  apt-get update -qq && apt-get install -y -qq "${missing[@]}" >/dev/null
fi
echo "util-linux $(unshare --version | awk '{print $NF}')"

echo "=== cargo test --workspace --locked"
cargo test --workspace --locked

echo "=== the Debian packages: build, dpkg -i, files and modes, check-config and a transfer as user gapsync, purge"
tests/deb/check.sh
