#!/usr/bin/env bash
# sunsetd under a real systemd: boot the host's /usr as a systemd-nspawn container (systemd as its PID 1,
# an in-memory root), `make install` inside it from wheels built here, and check the unit end to end.
# Prints PASS/FAIL lines; exit status 0 when every check passed. Needs root and systemd-nspawn.
#
#   tests/systemd/e2e.sh [REPO]        (REPO defaults to this checkout)
set -u
REPO=$(cd "${1:-$(dirname "$0")/../..}" && pwd)
M=sdtest$$
WORK=$(mktemp -d /tmp/sunsetd-e2e.XXXXXX)
LOG=$WORK/console.log
CG=sunsetd-e2e-$M
FAILS=0
t0=$(date +%s.%N)
ts()   { awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%6.1fs", b - a }'; }
ok()   { echo "[$(ts)] PASS: $*"; }
bad()  { echo "[$(ts)] FAIL: $*"; FAILS=$((FAILS+1)); }
info() { echo "[$(ts)] ---- $*"; }

[ "$(id -u)" = 0 ] || { echo "needs root"; exit 2; }
command -v systemd-nspawn >/dev/null || { echo "needs systemd-nspawn (package systemd-container)"; exit 2; }

# ---- wheels of sunsetd and its dependencies, for an offline install in the container (no network there)
info "building wheels from a copy of $REPO"
mkdir -p "$WORK/src" "$WORK/wheels"
tar -C "$REPO" --exclude=./.venv --exclude=./.git --exclude='*.egg-info' --exclude=./build -cf - . | tar -C "$WORK/src" -xf -
PIP=/usr/bin/python3
[ -x "$REPO/.venv/bin/python" ] && PIP="$REPO/.venv/bin/python"   # same CPython minor version (3.11) as the container's
if ! "$PIP" -m pip wheel -q --disable-pip-version-check -w "$WORK/wheels" "$WORK/src" >"$WORK/wheels.log" 2>&1; then
  cat "$WORK/wheels.log"; bad "could not build wheels"; exit 1
fi
ok "wheels: $(ls "$WORK/wheels" | tr '\n' ' ')"

# ---- boot
mk_cg() {  # a cgroup of our own, so parallel runs do not share one
  for h in /sys/fs/cgroup/systemd /sys/fs/cgroup/unified /sys/fs/cgroup; do
    [ -e $h/cgroup.procs ] || continue
    if [ $h = /sys/fs/cgroup ] && [ "$(stat -fc %T /sys/fs/cgroup)" != cgroup2fs ]; then continue; fi
    mkdir -p $h/$CG && echo $BASHPID > $h/$CG/cgroup.procs
  done
}
NSPAWN=""
L=""
cleanup() {
  if [ -n "$NSPAWN" ] && kill -0 "$NSPAWN" 2>/dev/null; then
    [ -n "$L" ] && timeout 10 nsenter -t "$L" -m -u -i -n -p -- systemctl poweroff --no-block >/dev/null 2>&1
    for _ in $(seq 100); do kill -0 "$NSPAWN" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$NSPAWN" 2>/dev/null && { kill -TERM "$NSPAWN"; sleep 3; kill -KILL "$NSPAWN" 2>/dev/null; }
    wait "$NSPAWN" 2>/dev/null
  fi
  for h in /sys/fs/cgroup/systemd /sys/fs/cgroup/unified /sys/fs/cgroup; do
    [ -d $h/$CG ] && find $h/$CG -depth -type d -exec rmdir {} \; 2>/dev/null
  done
  rmdir "/run/systemd/nspawn/propagate/$M" 2>/dev/null
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM HUP

info "booting container $M"
( mk_cg
  exec systemd-nspawn -D / --volatile=yes -b -M "$M" --register=no --keep-unit --private-network \
       --console=read-only --bind-ro="$WORK/src":/src --bind-ro="$WORK/wheels":/wheels systemd.firstboot=no
) >"$LOG" 2>&1 </dev/null &
NSPAWN=$!
MYNS=$(readlink /proc/self/ns/pid)
for _ in $(seq 300); do
  for c in $(cat /proc/$NSPAWN/task/*/children 2>/dev/null); do
    if [ "$(readlink /proc/$c/ns/pid 2>/dev/null)" != "$MYNS" ] && [ "$(cat /proc/$c/comm 2>/dev/null)" = systemd ]; then L=$c; fi
  done
  [ -n "$L" ] && break
  kill -0 $NSPAWN 2>/dev/null || break
  sleep 0.1
done
[ -n "$L" ] || { bad "the container's PID 1 never appeared"; tail -30 "$LOG"; exit 1; }
IN() { nsenter -t "$L" -m -u -i -n -p -- "$@"; }
for _ in $(seq 300); do IN test -S /run/systemd/private 2>/dev/null && break; sleep 0.1; done
state=$(timeout 60 nsenter -t "$L" -m -u -i -n -p -- systemctl is-system-running --wait 2>&1)
case $state in running|degraded) ok "container booted, systemd $(IN systemctl --version | head -1 | cut -d' ' -f2), state $state";;
               *) bad "system state '$state'"; tail -30 "$LOG"; exit 1;; esac
mainpid() { IN systemctl show -p MainPID --value "$1"; }
agent_pids() { IN pgrep -u sunsetd -f 'sunsetd[.]agent' | sort; }

# ---- install
info "make install (offline, from the wheels)"
if IN make -C /src install INSTALL_FROM=sunsetd PIP_INSTALL_OPTS="--no-index --find-links /wheels" >"$WORK/install.log" 2>&1; then
  ok "make install"
else
  bad "make install failed"; tail -20 "$WORK/install.log"; exit 1
fi
IN make -C /src install INSTALL_FROM=sunsetd PIP_INSTALL_OPTS="--no-index --find-links /wheels" >"$WORK/install2.log" 2>&1 \
  && ok "make install again (idempotent)" || { bad "second make install failed"; tail -5 "$WORK/install2.log"; }
for u in sunsetd.service sunsetd@vision.service; do
  v=$(IN systemd-analyze verify "$u" 2>&1 >/dev/null)
  [ -z "$v" ] && ok "systemd-analyze verify $u: nothing on stderr" || bad "verify $u: $v"
done
# The watchdog test below should not wait 10 s: a drop-in, as an operator would write one.
IN mkdir -p /etc/systemd/system/sunsetd.service.d
IN sh -c 'printf "[Service]\nWatchdogSec=3s\n" > /etc/systemd/system/sunsetd.service.d/e2e.conf'
IN systemctl daemon-reload

# ---- start
info "systemctl start sunsetd"
if timeout 120 nsenter -t "$L" -m -u -i -n -p -- systemctl start sunsetd; then ok "systemctl start returned (READY=1 received)"
else bad "systemctl start failed"; IN journalctl -u sunsetd --no-pager -n 40; exit 1; fi
[ "$(IN systemctl is-active sunsetd)" = active ] && ok "active" || bad "not active"
st=$(IN systemctl show -p StatusText --value sunsetd)
case $st in "running: 16/16 agents ready, essential 16/16, 0 failed; profile core") ok "STATUS: $st";; *) bad "STATUS: '$st'";; esac
out=$(IN /opt/sunsetd/venv/bin/sunsetctl status)
n=$(echo "$out" | awk 'NR>2 && $2=="ready"' | wc -l)
[ "$n" = 16 ] && ok "sunsetctl status inside: 16 agents ready" || { bad "sunsetctl status: $n ready"; echo "$out"; }
[ "$(IN /opt/sunsetd/venv/bin/sunsetctl call ServiceRegistry ping)" = '"pong"' ] && ok "sunsetctl call through the installed daemon" || bad "call failed"
IN stat -c '%U %a' /run/sunsetd | grep -q '^sunsetd 700$' && ok "runtime directory /run/sunsetd: sunsetd 0700" || bad "runtime dir: $(IN stat -c '%U %a' /run/sunsetd)"
IN /opt/sunsetd/venv/bin/python -c 'import urllib.request as u; print(u.urlopen("http://127.0.0.1:9464/health").read().decode())' \
  | grep -q '"healthy": true' \
  && ok "/health on 127.0.0.1:9464 says healthy" || bad "/health not healthy"

# ---- journal
sleep 0.5
n=$(IN journalctl -u sunsetd --no-pager -o cat AGENT=KnowledgeBase | wc -l)
[ "$n" -ge 2 ] && ok "journalctl -u sunsetd AGENT=KnowledgeBase: $n lines" || bad "AGENT= filter found $n lines"
IN journalctl -u sunsetd --no-pager -o json -n 1 AGENT=KnowledgeBase EVENT=state | grep -q '"INCARNATION"' \
  && ok "records carry EVENT and INCARNATION fields" || bad "no EVENT/INCARNATION fields"
victim=$(IN /opt/sunsetd/venv/bin/sunsetctl call KnowledgeBase info | sed 's/.*"pid": \([0-9]*\).*/\1/')
IN kill -9 "$victim"
sleep 1
IN journalctl -u sunsetd --no-pager -o cat -p warning AGENT=KnowledgeBase | grep -q "killed by SIGKILL" \
  && ok "journalctl -p warning shows the agent's SIGKILL" || bad "no warning for the killed agent"

# ---- SIGKILL of the daemon: systemd restarts it, no agent of the old one survives
info "SIGKILL of the main process"
p1=$(mainpid sunsetd); old_agents=$(agent_pids)
IN kill -9 "$p1"
for _ in $(seq 100); do p2=$(mainpid sunsetd); [ "$p2" != 0 ] && [ "$p2" != "$p1" ] && [ "$(IN systemctl is-active sunsetd)" = active ] && break; sleep 0.2; done
[ "$p2" != "$p1" ] && [ "$p2" != 0 ] && ok "restarted by systemd: MainPID $p1 -> $p2" || bad "not restarted after SIGKILL"
survivors=$(comm -12 <(echo "$old_agents") <(agent_pids) | grep -c . )
[ "$survivors" = 0 ] && ok "no agent of the killed daemon survives ($(echo "$old_agents" | wc -l) were running)" || bad "$survivors agents survived"

# ---- SIGSTOP of the daemon: the watchdog restarts it
info "SIGSTOP of the main process (WatchdogSec=3s via drop-in)"
p1=$(mainpid sunsetd)
IN kill -STOP "$p1"
for _ in $(seq 100); do p2=$(mainpid sunsetd); [ "$p2" != 0 ] && [ "$p2" != "$p1" ] && [ "$(IN systemctl is-active sunsetd)" = active ] && break; sleep 0.2; done
IN journalctl -u sunsetd --no-pager -o cat | grep -q "Watchdog timeout" && [ "$p2" != "$p1" ] \
  && ok "watchdog fired, restarted: MainPID $p1 -> $p2" || bad "watchdog did not restart the frozen daemon"

# ---- reload and stop
info "systemctl reload"
before=$(IN /opt/sunsetd/venv/bin/sunsetctl status --json | grep -c '"pid": [0-9]')
if timeout 60 nsenter -t "$L" -m -u -i -n -p -- systemctl reload sunsetd; then ok "systemctl reload returned"; else bad "reload failed"; fi
sleep 0.5
IN journalctl -u sunsetd --no-pager -o cat EVENT=reload | grep -q "done" && ok "the daemon reloaded its profile" || bad "no reload in the journal"
[ "$(IN systemctl is-active sunsetd)" = active ] && ok "still active after reload" || bad "inactive after reload"

info "systemctl stop"
timeout 90 nsenter -t "$L" -m -u -i -n -p -- systemctl stop sunsetd
[ "$(IN systemctl is-active sunsetd)" = inactive ] && ok "stopped: $(IN systemctl show -p Result --value sunsetd)" || bad "still active after stop"
[ -z "$(IN pgrep -u sunsetd)" ] && ok "no process of the sunsetd user is left" || bad "processes left: $(IN pgrep -u sunsetd -a)"
IN journalctl -u sunsetd --no-pager -o cat EVENT=exit AGENT=sunsetd | grep -q "all agents stopped" \
  && ok "the daemon stopped every agent itself before exiting" || bad "no clean-exit record"

score=$(systemd-analyze security --offline=yes "$REPO/systemd/sunsetd.service" 2>/dev/null | tail -1)
info "exposure (systemd-analyze security --offline=yes): $score"

if [ $FAILS -gt 0 ]; then info "container journal (last 80 lines)"; IN journalctl -b --no-pager -n 80; fi
info "done: $FAILS failure(s)"
exit $((FAILS > 0))
