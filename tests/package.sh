#!/usr/bin/env bash
# The Debian package, installed for real on this machine (root; systemd need not be PID 1):
# builds it with scripts/package from a prebuilt binary (default target/debug/amqp-agent, so no
# release build), `dpkg -i`, checks files, owners, modes, the conffile, the system user, the
# unit (the supervisors/ unit with /usr/bin) and `amqp-agent check-config` as the service user
# against the installed config; edits the config, `dpkg -r` (conffile and user kept), reinstalls
# (the edit survives), `dpkg --purge` (config and state gone, user kept per Debian practice).
# Leaves the machine as it found it: a user it created is deleted at the end.
#
# Usage: tests/package.sh [path/to/amqp-agent]     (scripts/test runs it)
set -uo pipefail
cd "$(dirname "$0")/.."

BINARY=${1:-target/debug/amqp-agent}
PASSED=0
FAILED=0
ok() { PASSED=$((PASSED + 1)); printf 'package: ok   %s\n' "$*"; }
bad() { FAILED=$((FAILED + 1)); printf 'package: FAIL %s\n' "$*"; }
check() { # check DESCRIPTION COMMAND...
  local what=$1; shift
  if "$@"; then ok "$what"; else bad "$what"; printf '    (failed: %s)\n' "$*"; fi
}
die() { printf 'package: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "needs root (dpkg -i)"
command -v dpkg >/dev/null || die "needs dpkg"
[ -x "$BINARY" ] || die "$BINARY missing: cargo build first"
if dpkg-query -W -f='${Status}' amqp-agent 2>/dev/null | grep -q 'installed\|config-files'; then
  die "amqp-agent is already installed on this machine (dpkg -l amqp-agent): the test would replace it"
fi
for path in /etc/amqp-agent /usr/bin/amqp-agent; do
  [ ! -e "$path" ] || die "$path exists (a hand install?): the package would take it over; remove it first"
done
USER_EXISTED=0
getent passwd amqp-agent >/dev/null && USER_EXISTED=1

WORK=$(mktemp -d)
# /var/lib/amqp-agent is also the default agent.state_dir, so an agent run as root (other tests
# of this repository, a demo) may have made it: purge removes it, and the test puts it back as
# it was. An agent running meanwhile would lose its crash-loop journal for those seconds: run
# this test alone (scripts/test runs it after cargo test).
STATE_EXISTED=0
if [ -e /var/lib/amqp-agent ]; then
  STATE_EXISTED=1
  cp -a /var/lib/amqp-agent "$WORK/state-before"
  echo "package: note: /var/lib/amqp-agent exists already ($(stat -c '%a %U:%G' /var/lib/amqp-agent)): restored after the test"
fi
cleanup() {
  dpkg --purge amqp-agent >/dev/null 2>&1 || true
  if [ "$STATE_EXISTED" = 1 ] && [ ! -e /var/lib/amqp-agent ]; then
    cp -a "$WORK/state-before" /var/lib/amqp-agent
  fi
  if [ "$USER_EXISTED" = 0 ] && getent passwd amqp-agent >/dev/null; then
    deluser --system --quiet amqp-agent >/dev/null 2>&1 || userdel amqp-agent 2>/dev/null || true
    getent group amqp-agent >/dev/null && { delgroup --system --quiet amqp-agent >/dev/null 2>&1 || groupdel amqp-agent 2>/dev/null || true; }
  fi
  rm -rf "$WORK"
}
trap cleanup EXIT

mode_owner() { stat -c '%a %U:%G' "$1" 2>/dev/null; }
is() { [ "$1" = "$2" ] || { echo "    expected '$2', got '$1'"; return 1; }; }

started=$(date +%s%N)
deb=$(scripts/package --binary "$BINARY" --output "$WORK" 2>"$WORK/package.log" | tail -1) || {
  cat "$WORK/package.log"; die "scripts/package failed"; }
built=$(date +%s%N)
printf 'package: built %s (%s bytes) in %s ms\n' "$(basename "$deb")" "$(stat -c %s "$deb")" "$(( (built - started) / 1000000 ))"
check "control: Depends has adduser" grep -q '^Depends:.*adduser' <(dpkg-deb -f "$deb")
check "the .deb lists /etc/amqp-agent/amqp-agent.toml as a conffile" \
  grep -qx /etc/amqp-agent/amqp-agent.toml <(dpkg-deb --ctrl-tarfile "$deb" | tar -xO ./conffiles)

# --- install ---------------------------------------------------------------------------------
dpkg -i "$deb" > "$WORK/install.log" 2>&1 || { cat "$WORK/install.log"; die "dpkg -i failed"; }
ok "dpkg -i"
check "dpkg reports it installed" is "$(dpkg-query -W -f='${Status}' amqp-agent)" "install ok installed"
check "postinst tells what to do next" grep -q 'systemctl enable --now amqp-agent' "$WORK/install.log"
check "/usr/bin/amqp-agent 755 root:root" is "$(mode_owner /usr/bin/amqp-agent)" "755 root:root"
check "/usr/bin/amqp-agent runs" bash -c "/usr/bin/amqp-agent --version >/dev/null"
check "/etc/amqp-agent 750 root:amqp-agent" is "$(mode_owner /etc/amqp-agent)" "750 root:amqp-agent"
check "/etc/amqp-agent/amqp-agent.toml 640 root:amqp-agent" is "$(mode_owner /etc/amqp-agent/amqp-agent.toml)" "640 root:amqp-agent"
check "the config is the example" cmp -s /etc/amqp-agent/amqp-agent.toml config/amqp-agent.example.toml
check "dpkg knows the conffile" grep -q /etc/amqp-agent/amqp-agent.toml <(dpkg-query -W -f='${Conffiles}' amqp-agent)
check "/var/lib/amqp-agent 750 amqp-agent:amqp-agent" is "$(mode_owner /var/lib/amqp-agent)" "750 amqp-agent:amqp-agent"
check "rules and dashboard in /usr/share/amqp-agent" test -f /usr/share/amqp-agent/prometheus/amqp-agent.rules.yml -a -f /usr/share/amqp-agent/grafana/amqp-agent.json

# The system user: a system uid, its own group, no home, no shell.
IFS=: read -r _ _ uid gid _ home shell < <(getent passwd amqp-agent)
check "user amqp-agent exists" test -n "${uid:-}"
check "user amqp-agent is a system user (uid $uid < 1000)" test "${uid:-1000}" -lt 1000
check "group amqp-agent is its primary group" is "$(getent group "$gid" | cut -d: -f1)" "amqp-agent"
check "home /nonexistent, not created" bash -c "[ '$home' = /nonexistent ] && [ ! -e /nonexistent ]"
check "shell nologin" is "$shell" "/usr/sbin/nologin"

# The unit: supervisors/systemd/amqp-agent.service with the packaged binary's path.
UNIT=/usr/lib/systemd/system/amqp-agent.service
[ -f "$UNIT" ] || UNIT=/lib/systemd/system/amqp-agent.service
check "unit installed ($UNIT, 644)" is "$(mode_owner "$UNIT")" "644 root:root"
check "unit = supervisors/ unit with /usr/bin in its Exec lines" \
  diff <(sed '/^Exec/s#/usr/local/bin/amqp-agent#/usr/bin/amqp-agent#g' supervisors/systemd/amqp-agent.service) <(tail -n +4 "$UNIT")
for line in Type=notify User=amqp-agent StateDirectory=amqp-agent ProtectSystem=strict NoNewPrivileges=yes \
            'ExecStart=/usr/bin/amqp-agent run --config /etc/amqp-agent/amqp-agent.toml' 'SystemCallFilter=@system-service'; do
  check "unit has $line" grep -qx "$line" "$UNIT"
done
check "unit not enabled at install" test ! -e /etc/systemd/system/multi-user.target.wants/amqp-agent.service
if command -v systemd-analyze >/dev/null; then
  # Offline: parses the unit and checks the binaries it names exist (no running systemd needed).
  check "systemd-analyze verify" systemd-analyze verify "$UNIT"
fi
if [ -d /run/systemd/system ]; then
  echo "package: note: systemd is running here; the test still does not start the unit"
else
  echo "package: note: systemd is not PID 1 here ($(ps -o comm= -p 1)): the unit is checked, not started"
fi

# check-config as the service user, as ExecStartPre runs it.
as_agent() { runuser -u amqp-agent -- env -i PATH=/usr/bin:/bin "$@"; }
out=$(as_agent /usr/bin/amqp-agent check-config --config /etc/amqp-agent/amqp-agent.toml 2>&1)
check "check-config refuses the example's placeholder signing secret" \
  bash -c '[ "$0" != 0 ] && grep -q "fpm.signing_secrets.*placeholder" <<<"$1"' "$?" "$out"
# The admin's secrets, where the unit reads them (EnvironmentFile=-/etc/amqp-agent/env).
install -m 0640 -g amqp-agent /dev/null /etc/amqp-agent/env
printf 'AMQP_AGENT_AMQP_URL=amqp://guest:guest@127.0.0.1:5672/%%2f\nAMQP_AGENT_SIGNING_SECRET=%s\nAMQP_AGENT_ADMIN_TOKEN=%s\n' \
  "$(od -An -N24 -tx1 /dev/urandom | tr -d ' \n')" "$(od -An -N24 -tx1 /dev/urandom | tr -d ' \n')" > /etc/amqp-agent/env
out=$(as_agent bash -c 'set -a; . /etc/amqp-agent/env; set +a; exec /usr/bin/amqp-agent check-config --config /etc/amqp-agent/amqp-agent.toml' 2>&1)
rc=$?
check "check-config accepts the installed config with the secrets of /etc/amqp-agent/env" is "$rc" 0
[ "$rc" = 0 ] || echo "$out" | sed 's/^/    /'
echo "$out" | sed -n '1,3s/^/    check-config: /p'
check "check-config does not print the secrets" bash -c '! grep -q -f <(sed -n "s/^AMQP_AGENT_\(SIGNING_SECRET\|ADMIN_TOKEN\)=//p" /etc/amqp-agent/env) <<<"$0"' "$out"
check "another user cannot read the config" bash -c '! runuser -u nobody -- cat /etc/amqp-agent/amqp-agent.toml >/dev/null 2>&1'
check "the service user can write its state directory" as_agent bash -c 'touch /var/lib/amqp-agent/.probe && rm /var/lib/amqp-agent/.probe'

# --- remove: binary and unit go; conffile, env file and user stay --------------------------------
echo '# edited by the admin' >> /etc/amqp-agent/amqp-agent.toml
dpkg -r amqp-agent > "$WORK/remove.log" 2>&1 || { cat "$WORK/remove.log"; die "dpkg -r failed"; }
ok "dpkg -r"
check "state after remove: config-files" is "$(dpkg-query -W -f='${Status}' amqp-agent)" "deinstall ok config-files"
check "binary removed" test ! -e /usr/bin/amqp-agent
check "unit removed" test ! -e "$UNIT"
check "conffile kept with the admin's edit" grep -q '^# edited by the admin' /etc/amqp-agent/amqp-agent.toml
check "env file kept" test -f /etc/amqp-agent/env
check "user kept" bash -c "getent passwd amqp-agent >/dev/null"

# --- reinstall: the edited conffile is not replaced ------------------------------------------------
dpkg -i "$deb" > "$WORK/reinstall.log" 2>&1 || { cat "$WORK/reinstall.log"; die "second dpkg -i failed"; }
check "reinstall keeps the admin's edit of the conffile" grep -q '^# edited by the admin' /etc/amqp-agent/amqp-agent.toml
check "reinstall keeps the config's mode and group" is "$(mode_owner /etc/amqp-agent/amqp-agent.toml)" "640 root:amqp-agent"
check "reinstall keeps the same uid" is "$(id -u amqp-agent)" "$uid"

# --- purge: config, secrets and state go; the user stays ------------------------------------------
dpkg --purge amqp-agent > "$WORK/purge.log" 2>&1 || { cat "$WORK/purge.log"; die "dpkg --purge failed"; }
ok "dpkg --purge"
check "dpkg no longer knows the package" bash -c '! dpkg-query -W -f="\${Status}" amqp-agent 2>/dev/null | grep -q "ok"'
check "/etc/amqp-agent removed (with the env file)" test ! -e /etc/amqp-agent
check "/var/lib/amqp-agent removed" test ! -e /var/lib/amqp-agent
check "no file of the package left" bash -c '! ls /usr/share/amqp-agent /usr/share/doc/amqp-agent /usr/bin/amqp-agent 2>/dev/null | grep -q .'
check "purge printed no warning" bash -c '! grep -i "warning" "$0"' "$WORK/purge.log"
check "user and group kept after purge (Debian practice for system users)" bash -c 'getent passwd amqp-agent >/dev/null && getent group amqp-agent >/dev/null'

printf 'package: %s ms in all\n' "$(( ($(date +%s%N) - started) / 1000000 ))"
echo "package: $PASSED passed, $FAILED failed"
[ "$FAILED" = 0 ]
