#!/usr/bin/env bash
# The Debian packages as an operator gets them, end to end, on this machine (run as root; CI
# calls it from .ci/run): builds gapsync-common, gapsync-sender and gapsync-receiver with
# cargo-deb, installs them with dpkg -i, checks every file, owner and mode, runs check-config on
# the installed example configs as the gapsync user, moves a file between the installed
# binaries as that user through the folders the packages made (a producer drops it, a consumer
# reads it), checks SIGHUP, runs systemd-analyze verify on the installed units, then purges the
# packages and checks what is left. Any mismatch stops it with FAIL and the reason.
# Safe to run again: a previous install (and what a previous run left) is removed first.
set -euo pipefail
cd "$(dirname "$0")/../.."
repo=$PWD
export CARGO_TERM_COLOR=never

checked=0
step() { printf '\n--- %s\n' "$*"; }
fail() {
	printf 'FAIL: %s\n' "$*" >&2
	exit 1
}
pass() {
	checked=$((checked + 1))
	printf 'ok   %s\n' "$*"
}

# expect_stat PATH MODE OWNER GROUP
expect_stat() {
	local got
	got=$(stat -c '%a %U %G' "$1" 2>/dev/null) || fail "$1 does not exist"
	[ "$got" = "$2 $3 $4" ] || fail "$1 is '$got', expected '$2 $3 $4'"
	pass "$1 $2 $3:$4"
}

# expect_same INSTALLED SOURCE: the installed file has the source's bytes.
expect_same() {
	cmp -s "$1" "$2" || fail "$1 differs from $2"
}

expect_absent() {
	[ ! -e "$1" ] && [ ! -L "$1" ] || fail "$1 is still there: $(ls -ld "$1")"
	pass "gone: $1"
}

packages=(gapsync-sender gapsync-receiver gapsync-common)
producer=gapsync-ci-producer
consumer=gapsync-ci-consumer
work=/tmp/gapsync-deb-check
pids=()

cleanup() {
	local pid
	for pid in "${pids[@]}"; do
		pkill -TERM -P "$pid" 2>/dev/null || true
	done
	for pid in "${pids[@]}"; do
		wait "$pid" 2>/dev/null || true
	done
}
trap cleanup EXIT

# What this script itself puts in the installed folders (removed before the purge and at the
# start of a run, so that a failed run does not block the next one).
remove_test_data() {
	rm -rf /srv/gapsync/outbox/scada/ci /srv/gapsync/inbox/scada/ci \
		/srv/gapsync/outbox/scada/.ci.tmp "$work" /run/gapsync-sender /run/gapsync-receiver
	local u
	for u in "$producer" "$consumer"; do
		if getent passwd "$u" >/dev/null; then userdel "$u"; fi
	done
}

step "tools"
[ "$(id -u)" = 0 ] || fail "run as root: the check installs packages and switches users"
missing=()
command -v systemd-analyze >/dev/null || missing+=(systemd)
command -v adduser >/dev/null || missing+=(adduser)
command -v deb-systemd-helper >/dev/null || missing+=(init-system-helpers)
if [ ${#missing[@]} -gt 0 ]; then
	apt-get update -qq && apt-get install -y -qq "${missing[@]}" >/dev/null
fi
command -v cargo-deb >/dev/null || cargo install cargo-deb --locked --quiet
cargo deb --version

step "a previous install and its test data"
# Set right after this script's dpkg -i and removed after its purge: packages installed without
# it are a real installation, whose keys, state and done logs a purge would destroy.
marker=/var/tmp/gapsync-deb-check.installed
installed=()
for p in "${packages[@]}"; do
	if dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null | grep -qv '^not-installed$'; then
		[ -e "$marker" ] || [ "${GAPSYNC_DEB_CHECK_PURGE:-}" = 1 ] ||
			fail "$p is installed, and not by this check: it would purge it (keys, state, done logs). Run the check on a machine without gapsync, or set GAPSYNC_DEB_CHECK_PURGE=1 to let it purge"
		installed+=("$p")
	fi
done
remove_test_data
for p in "${installed[@]}"; do
	echo "purging $p (left by an earlier run of this check)"
	dpkg --purge "$p" >/dev/null
done
rm -f "$marker"
if [ -e /srv/gapsync ]; then
	fail "/srv/gapsync exists without the packages (not left by this script: $(find /srv/gapsync | head -5)); move it away, the check needs a fresh install"
fi

step "build the packages (cargo deb)"
declare -A deb
# gapsync-common has no binary: nothing to build (a release build of the library alone would
# only compile it once more with other features).
deb[gapsync-common]=$(cargo deb -p gapsync-daemon --locked --no-build | tail -n 1)
deb[gapsync-sender]=$(cargo deb -p gapsync-sender --locked | tail -n 1)
deb[gapsync-receiver]=$(cargo deb -p gapsync-receiver --locked | tail -n 1)
for p in "${packages[@]}"; do
	[ -f "${deb[$p]}" ] || fail "cargo deb did not print the path of $p's package: ${deb[$p]}"
	[ "$(dpkg-deb -f "${deb[$p]}" Package)" = "$p" ] || fail "${deb[$p]} is not $p"
	pass "built ${deb[$p]}"
done
version=$(dpkg-deb -f "${deb[gapsync-common]}" Version)
for p in gapsync-sender gapsync-receiver; do
	dpkg-deb -f "${deb[$p]}" Depends | grep -qF "gapsync-common (= $version)" ||
		fail "$p must depend on gapsync-common (= $version): $(dpkg-deb -f "${deb[$p]}" Depends) (update depends in its Cargo.toml)"
	pass "$p depends on gapsync-common (= $version)"
	# Maintainer scripts: the unit is never started or enabled by the package itself.
	scripts=$(mktemp -d)
	dpkg-deb -e "${deb[$p]}" "$scripts"
	# (Commands only: the postinst's closing message tells the operator to enable it.)
	if grep -nE '^[[:space:]]*(deb-systemd-invoke[[:space:]]+(start|restart)|systemctl[[:space:]].*[[:space:]](start|enable|restart)[[:space:]])' "$scripts"/postinst; then
		fail "$p's postinst starts or enables its unit"
	fi
	grep -q "^/etc/gapsync/${p#gapsync-}.toml$" "$scripts/conffiles" || fail "$p: /etc/gapsync/${p#gapsync-}.toml is not a conffile"
	rm -rf "$scripts"
	pass "$p: maintainer scripts neither start nor enable the unit; its config is a conffile"
done

step "dpkg -i"
touch "$marker"
dpkg -i "${deb[gapsync-common]}" "${deb[gapsync-sender]}" "${deb[gapsync-receiver]}"
for p in "${packages[@]}"; do
	[ "$(dpkg-query -W -f='${db:Status-Abbrev}' "$p")" = "ii " ] || fail "$p is not installed"
done
pass "installed: ${packages[*]}"

step "files, owners and modes"
for role in sender receiver; do
	expect_stat "/usr/bin/gapsync-$role" 755 root root
	expect_stat "/etc/gapsync/$role.toml" 640 root gapsync
	expect_same "/etc/gapsync/$role.toml" "examples/$role.toml"
	unit=/lib/systemd/system/gapsync-$role.service
	expect_stat "$unit" 644 root root
	expect_same "$unit" "systemd/gapsync-$role.service"
	doc=$(sed -n 's#^Documentation=file://##p' "$unit")
	[ -n "$doc" ] || fail "$unit has no Documentation=file://"
	[ -f "$doc" ] || fail "$unit names $doc, which is not installed"
	dpkg -S "$doc" | grep -q "^gapsync-$role:" || fail "$doc is not a file of gapsync-$role"
	pass "$unit: Documentation=$doc is installed by gapsync-$role"
	for f in README.md SECURITY.md copyright "examples/$role-diode.toml" examples/90-gapsync-udp.conf; do
		expect_stat "/usr/share/doc/gapsync-$role/$f" 644 root root
	done
	expect_same "/usr/share/doc/gapsync-$role/examples/$role-diode.toml" "examples/$role-diode.toml"
done
count=0
for f in hardware-profiles/*.toml; do
	expect_same "/usr/share/gapsync/hardware-profiles/${f##*/}" "$f"
	[ "$(stat -c '%a %U' "/usr/share/gapsync/hardware-profiles/${f##*/}")" = "644 root" ] ||
		fail "/usr/share/gapsync/hardware-profiles/${f##*/} is not 644 root"
	count=$((count + 1))
done
pass "$count hardware profiles in /usr/share/gapsync/hardware-profiles, 644 root, as in the repository"
expect_stat /etc/gapsync/keys 750 root gapsync
expect_stat /etc/gapsync/keys/scada-1.key 640 root gapsync
expect_stat /var/lib/gapsync 750 gapsync gapsync
expect_stat /var/log/gapsync 750 gapsync gapsync
expect_stat /srv/gapsync 755 root root
expect_stat /srv/gapsync/outbox 2750 gapsync gapsync-producers
expect_stat /srv/gapsync/outbox/scada 2770 gapsync gapsync-producers
expect_stat /srv/gapsync/inbox 2750 gapsync gapsync-consumers
expect_stat /srv/gapsync/inbox/scada 2750 gapsync gapsync-consumers

IFS=: read -r _ _ uid gid _ home shell < <(getent passwd gapsync)
[ "$uid" -lt 1000 ] || fail "gapsync is not a system user (uid $uid)"
[ "$(getent group "$gid" | cut -d: -f1)" = gapsync ] || fail "gapsync's primary group is not gapsync"
[ "$shell" = /usr/sbin/nologin ] || fail "gapsync's shell is $shell"
id -nG gapsync | tr ' ' '\n' | grep -qx gapsync-producers || fail "gapsync is not in gapsync-producers"
if id -nG gapsync | tr ' ' '\n' | grep -qx gapsync-consumers; then
	fail "gapsync needs no membership of gapsync-consumers"
fi
pass "system user gapsync (uid $uid, home $home, $shell), group gapsync, member of gapsync-producers"

wants=$(find /etc/systemd -name 'gapsync-*' 2>/dev/null)
[ -z "$wants" ] || fail "units enabled or masked after install: $wants"
for p in gapsync-sender gapsync-receiver; do
	# -f: the names are longer than the 15 characters pgrep matches otherwise.
	if pgrep -f "^(/usr/bin/)?$p " >/dev/null; then fail "$p runs after install"; fi
done
pass "units neither enabled nor started"

step "check-config on the installed examples, as user gapsync"
for role in sender receiver; do
	runuser -u gapsync -- "gapsync-$role" check-config --config "/etc/gapsync/$role.toml" ||
		fail "check-config of /etc/gapsync/$role.toml as gapsync"
	pass "gapsync-$role check-config --config /etc/gapsync/$role.toml (as gapsync)"
done

step "a transfer between the installed binaries, as user gapsync, in the packaged folders"
useradd --system --no-create-home --shell /usr/sbin/nologin -G gapsync-producers "$producer"
useradd --system --no-create-home --shell /usr/sbin/nologin -G gapsync-consumers "$consumer"
install -d -m 0755 "$work"
# Copies of the installed configs: loopback instead of the example addresses, the key by its
# absolute path; folders, state and logs stay the packaged ones.
sed -e 's#^listen = .*#listen = "127.0.0.1:0"#' -e 's#^allow = .*#allow = ["127.0.0.0/8"]#' \
	-e 's#"keys/#"/etc/gapsync/keys/#' /etc/gapsync/receiver.toml >"$work/receiver.toml"
head -c 3000000 /dev/urandom >"$work/sample.bin"
head -c 70000 /dev/urandom >"$work/deep.bin"
chmod 0644 "$work"/*

# Each daemon as the unit runs it: user gapsync, UMask=0027, and the runtime folder of its
# control socket that the unit's RuntimeDirectory= makes (gapsync:gapsync 0750).
install -d -o gapsync -g gapsync -m 0750 /run/gapsync-receiver /run/gapsync-sender
start_daemon() {
	runuser -u gapsync -- sh -c "umask 0027; exec gapsync-$1 run --config $work/$1.toml" \
		>"$work/$1.stderr" 2>&1 &
	pids+=($!)
}
wait_for() { # WHAT SECONDS COMMAND...
	local what=$1 until=$((SECONDS + $2))
	shift 2
	until "$@"; do
		[ "$SECONDS" -lt "$until" ] || fail "timed out waiting for $what"
		sleep 0.2
	done
}
log_of() { cat /var/log/gapsync/gapsync-"$1".*.log 2>/dev/null; }

start_daemon receiver
wait_for "the receiver's listening line" 30 sh -c 'cat /var/log/gapsync/gapsync-receiver.*.log 2>/dev/null | grep -q listening'
addr=$(log_of receiver | grep listening | grep -o '127\.0\.0\.1:[0-9]\+' | tail -n 1)
[ -n "$addr" ] || fail "no address in the receiver's listening line: $(log_of receiver)"
sed -e "s#^gate = .*#gate = \"$addr\"#" -e 's#"keys/#"/etc/gapsync/keys/#' \
	/etc/gapsync/sender.toml >"$work/sender.toml"
chgrp gapsync "$work"/*.toml
chmod 0640 "$work"/*.toml
start_daemon sender
pass "receiver listening on $addr, sender started (both as gapsync)"

# A producer (member of gapsync-producers, umask 0007) writes under a temporary name in the
# spool and renames, as the spool rule says; one file in a folder it makes.
runuser -u "$producer" -- sh -c "umask 0007 && cd /srv/gapsync/outbox/scada &&
	cp $work/sample.bin .ci.tmp && mkdir -p ci/deeper && mv .ci.tmp ci/sample.bin &&
	cp $work/deep.bin ci/deeper/.deep.tmp && mv ci/deeper/.deep.tmp ci/deeper/deep.bin"
landed=/srv/gapsync/inbox/scada/ci
wait_for "both files to land whole" 60 sh -c "cmp -s $landed/sample.bin $work/sample.bin && cmp -s $landed/deeper/deep.bin $work/deep.bin"
pass "landed byte for byte: ci/sample.bin (3000000 bytes), ci/deeper/deep.bin (70000 bytes)"
wait_for "the sender to delete the delivered spool files" 30 sh -c '! find /srv/gapsync/outbox/scada -type f | grep -q .'
pass "the sender (as gapsync) deleted what the producer wrote, also inside the producer's folder"
expect_stat "$landed/sample.bin" 640 gapsync gapsync-consumers
expect_stat "$landed/deeper/deep.bin" 640 gapsync gapsync-consumers
runuser -u "$consumer" -- cat "$landed/deeper/deep.bin" | cmp -s - "$work/deep.bin" ||
	fail "a member of gapsync-consumers cannot read $landed/deeper/deep.bin"
pass "a member of gapsync-consumers reads the landed files"
if runuser -u nobody -- cat "$landed/sample.bin" >/dev/null 2>&1; then
	fail "user nobody can read $landed/sample.bin"
fi
pass "others (user nobody) cannot"
log_of receiver | grep -q 'delivered' || fail "no delivered line in the receiver's log"
log_of sender | grep -q ' sent ' || fail "no sent line in the sender's log"
pass "delivered (receiver) and sent (sender) lines in /var/log/gapsync"

# The control socket of each installed daemon, as root (what an operator types).
for role in receiver sender; do
	expect_stat "/run/gapsync-$role/control.sock" 660 gapsync gapsync
	rows=$("gapsync-$role" pipes --config "$work/$role.toml") ||
		fail "gapsync-$role pipes: $rows"
	grep -q '^scada ' <<<"$rows" || fail "gapsync-$role pipes shows no row for scada: $rows"
	json=$("gapsync-$role" pipes --config "$work/$role.toml" --json) ||
		fail "gapsync-$role pipes --json: $json"
	grep -Eq '"delivered_objects": ?2,' <<<"$json" ||
		fail "gapsync-$role pipes --json does not count the 2 files delivered: $json"
	out=$(runuser -u gapsync -- "gapsync-$role" reload --config "$work/$role.toml" 2>&1) ||
		fail "gapsync-$role reload (as ExecReload= runs it, user gapsync): $out"
	# A config nobody may read, naming only the socket: the refusal must come from the socket.
	echo "control_socket = \"/run/gapsync-$role/control.sock\"" >"$work/nobody-$role.toml"
	chmod 0644 "$work/nobody-$role.toml"
	if out=$(runuser -u nobody -- "gapsync-$role" pipes --config "$work/nobody-$role.toml" 2>&1); then
		fail "user nobody reached gapsync-$role's control socket: $out"
	fi
	grep -q 'gapsync' <<<"$out" || fail "the refusal to nobody does not say who may use the socket: $out"
	pass "gapsync-$role pipes (as root, 2 files delivered) and reload (as gapsync) on /run/gapsync-$role/control.sock; refused to nobody"
done

# SIGHUP to each installed daemon: logged, and it keeps running.
for i in 0 1; do
	role=$([ "$i" = 0 ] && echo receiver || echo sender)
	daemon=$(pgrep -P "${pids[$i]}") || fail "no gapsync-$role under runuser ${pids[$i]}"
	grep -qx "gapsync-$role" <(tr '\0' '\n' <"/proc/$daemon/cmdline" | head -n 1) ||
		fail "process $daemon under runuser is not gapsync-$role"
	kill -HUP "$daemon"
	wait_for "gapsync-$role's SIGHUP line" 10 sh -c "cat /var/log/gapsync/gapsync-$role.*.log | grep -q 'SIGHUP received'"
	sleep 0.5
	kill -0 "$daemon" 2>/dev/null || fail "gapsync-$role died of SIGHUP"
	[ "$(stat -c %U "/proc/$daemon")" = gapsync ] || fail "gapsync-$role does not run as gapsync"
	pass "gapsync-$role (pid $daemon, user gapsync) logged SIGHUP and keeps running"
done
for i in 1 0; do
	# SIGTERM to the daemon itself (runuser, its parent, returns the daemon's exit status).
	pkill -TERM -P "${pids[$i]}"
	status=0
	wait "${pids[$i]}" || status=$?
	[ "$status" = 0 ] || fail "a daemon exited $status on SIGTERM: $(cat "$work"/*.stderr)"
done
pids=()
pass "both stopped on SIGTERM with exit 0"

step "dpkg -i again (the upgrade path: postinst configure with the old version)"
key_before=$(sha256sum </etc/gapsync/keys/scada-1.key)
dpkg -i "${deb[gapsync-common]}" "${deb[gapsync-sender]}" "${deb[gapsync-receiver]}" >/dev/null
[ "$(sha256sum </etc/gapsync/keys/scada-1.key)" = "$key_before" ] || fail "the reinstall replaced the key"
pass "the key is kept"
expect_stat /etc/gapsync/sender.toml 640 root gapsync
expect_stat /etc/gapsync/receiver.toml 640 root gapsync
expect_stat /etc/gapsync/keys 750 root gapsync
expect_stat /srv/gapsync/inbox/scada 2750 gapsync gapsync-consumers
[ -f "$landed/sample.bin" ] || fail "the reinstall touched landed data"
pass "landed data untouched"

step "systemd-analyze verify on the installed units"
out=$(systemd-analyze verify /lib/systemd/system/gapsync-sender.service \
	/lib/systemd/system/gapsync-receiver.service 2>&1) || fail "systemd-analyze verify: $out"
[ -z "$out" ] || fail "systemd-analyze verify is not clean: $out"
pass "systemd-analyze verify: clean"

step "dpkg --purge"
remove_test_data
dpkg --purge "${packages[@]}"
rm -f "$marker"
for p in "${packages[@]}"; do
	[ "$(dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null || echo not-installed)" = not-installed ] ||
		fail "$p is still known to dpkg"
done
for path in /usr/bin/gapsync-sender /usr/bin/gapsync-receiver /usr/share/gapsync /etc/gapsync \
	/lib/systemd/system/gapsync-sender.service /lib/systemd/system/gapsync-receiver.service \
	/usr/share/doc/gapsync-common /usr/share/doc/gapsync-sender /usr/share/doc/gapsync-receiver \
	/var/lib/gapsync /var/log/gapsync /srv/gapsync; do
	expect_absent "$path"
done
left=$(find /etc/systemd /var/lib/systemd -name '*gapsync*' 2>/dev/null)
[ -z "$left" ] || fail "systemd state left after purge: $left"
pass "no unit links or deb-systemd-helper state left"
for g in gapsync gapsync-producers gapsync-consumers; do
	getent group "$g" >/dev/null || fail "group $g was removed (it stays on purge)"
done
getent passwd gapsync >/dev/null || fail "user gapsync was removed (it stays on purge)"
pass "stays, as Debian recommends: user gapsync; groups gapsync, gapsync-producers, gapsync-consumers"

printf '\nDebian package check: %d checks passed\n' "$checked"
