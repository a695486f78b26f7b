#!/usr/bin/env bash
# sunsetd under a real systemd: boot the host's /usr as a systemd-nspawn container (systemd as its PID 1,
# an in-memory root), `make install` inside it from wheels built here, and check the unit end to end:
# commands by bare name, start, status, journal, SIGKILL and SIGSTOP of the daemon, reloads (a refused
# one fails), a profile error that does not restart-loop, the GPU drop-in, operators in the socket group,
# stop, and `make uninstall`. Prints PASS/FAIL lines; exit status 0 when every check passed. Needs root
# and systemd-nspawn.
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
# --volatile=yes mounts the host's /usr read-only: writable overlays (upper layers in $WORK) where
# `make install` links the commands (/usr/local/bin) and puts completions and documentation (/usr/share).
mkdir -p "$WORK/ov/local" "$WORK/ov/share"
( mk_cg
  exec systemd-nspawn -D / --volatile=yes -b -M "$M" --register=no --keep-unit --private-network \
       --console=read-only --bind-ro="$WORK/src":/src --bind-ro="$WORK/wheels":/wheels \
       --overlay=/usr/local:"$WORK/ov/local":/usr/local --overlay=/usr/share:"$WORK/ov/share":/usr/share \
       systemd.firstboot=no
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
# Commands run as in a root login shell: its PATH (commands by bare name), none of this host's variables.
ENV=(env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 TERM=dumb)
IN() { nsenter -t "$L" -m -u -i -n -p -- "${ENV[@]}" "$@"; }
INT() { local t=$1; shift; timeout "$t" nsenter -t "$L" -m -u -i -n -p -- "${ENV[@]}" "$@"; }  # with a time limit
# As another user, with that user's groups and a fresh environment (its PATH has /usr/local/bin). setpriv,
# not runuser or su: the volatile root has no PAM configuration.
AS() { local t=$1 u=$2; shift 2
  timeout "$t" nsenter -t "$L" -m -u -i -n -p -- "${ENV[@]}" setpriv --reuid="$u" --regid="$(IN id -g "$u")" --init-groups --reset-env "$@"; }
for _ in $(seq 300); do IN test -S /run/systemd/private 2>/dev/null && break; sleep 0.1; done
state=$(timeout 60 nsenter -t "$L" -m -u -i -n -p -- systemctl is-system-running --wait 2>&1)
case $state in running|degraded) ok "container booted, systemd $(IN systemctl --version | head -1 | cut -d' ' -f2), state $state";;
               *) bad "system state '$state'"; tail -30 "$LOG"; exit 1;; esac
mainpid() { IN systemctl show -p MainPID --value "$1"; }
# Agents by their process titles (`sunsetd-agent NAME#INCARNATION profile=... rundir=...`); not the zygote.
agent_pids() { IN pgrep -u sunsetd -f '^sunsetd-agent ' | sort; }  # sorted for comm
count() { grep -c . || true; }  # non-empty lines: an empty list is 0, not 1
# agents ready, from `sunsetctl status --json` (whatever its exit status: 3 when not every essential is ready)
ready() { IN sunsetctl "$@" status --json 2>/dev/null | IN python3 -c 'import json, sys
try: print(sum(a["state"] == "ready" for a in json.load(sys.stdin)["agents"]))
except Exception: print(-1)'; }

# ---- install
info "make install (offline, from the wheels)"
if IN make -C /src install INSTALL_FROM=sunsetd PIP_INSTALL_OPTS="--no-index --find-links /wheels" >"$WORK/install.log" 2>&1; then
  ok "make install"
else
  bad "make install failed"; tail -20 "$WORK/install.log"; exit 1
fi
IN make -C /src install INSTALL_FROM=sunsetd PIP_INSTALL_OPTS="--no-index --find-links /wheels" >"$WORK/install2.log" 2>&1 \
  && ok "make install again (idempotent)" || { bad "second make install failed"; tail -5 "$WORK/install2.log"; }
for c in sunsetd sunsetctl; do
  w=$(IN sh -c "command -v $c"); t=$(IN readlink "/usr/local/bin/$c")
  [ "$w" = "/usr/local/bin/$c" ] && [ "$t" = "/opt/sunsetd/venv/bin/$c" ] \
    && ok "command -v $c: $w -> $t" || bad "command -v $c: '$w' -> '$t'"
done
IN sunsetd --profile core --check >/dev/null 2>&1 && ok "sunsetd --profile core --check by its bare name" || bad "sunsetd --check by name failed"
comps=""
for l in /usr/share/bash-completion/completions/sunsetd /usr/share/bash-completion/completions/sunsetctl \
         /usr/share/zsh/vendor-completions/_sunsetd /usr/share/zsh/vendor-completions/_sunsetctl; do
  IN test -L "$l" -a -s "$l" && comps="$comps $l" || bad "completion $l not linked to a file"
done
[ -n "$comps" ] && ok "completions linked:$comps"
got=$(IN bash --norc -c 'source /usr/share/bash-completion/completions/sunsetctl; COMP_WORDS=(sunsetctl st); COMP_CWORD=1
  _sunsetctl sunsetctl st sunsetctl; echo "${COMPREPLY[*]}"' 2>&1)
case " $got " in *" status "*) ok "bash completes 'sunsetctl st': $got";; *) bad "bash completion of 'sunsetctl st': '$got'";; esac
IN test -f /usr/share/doc/sunsetd/gpu.conf -a -f /usr/share/doc/sunsetd/SYSTEMD.md \
  && ok "drop-in example and docs in /usr/share/doc/sunsetd" || bad "no /usr/share/doc/sunsetd/{gpu.conf,SYSTEMD.md}"
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
if INT 120 systemctl start sunsetd; then ok "systemctl start returned (READY=1 received)"
else bad "systemctl start failed"; IN journalctl -u sunsetd --no-pager -n 40; exit 1; fi
[ "$(IN systemctl is-active sunsetd)" = active ] && ok "active" || bad "not active"
st=$(IN systemctl show -p StatusText --value sunsetd)
case $st in "running: 16/16 agents ready, essential 16/16, 0 failed; profile core") ok "STATUS: $st";; *) bad "STATUS: '$st'";; esac
out=$(IN sunsetctl status); rc=$?
[ $rc = 0 ] && ok "sunsetctl status: exit 0" || { bad "sunsetctl status: exit $rc"; echo "$out"; }
n=$(ready)
[ "$n" = 16 ] && ok "sunsetctl status --json: 16 agents ready" || { bad "sunsetctl status: $n ready"; echo "$out"; }
[ "$(IN sunsetctl call ServiceRegistry ping)" = '"pong"' ] && ok "sunsetctl call through the installed daemon" || bad "call failed"
IN stat -c '%U %G %a' /run/sunsetd | grep -q '^sunsetd sunsetd 750$' && ok "runtime directory /run/sunsetd: sunsetd sunsetd 0750" \
  || bad "runtime dir: $(IN stat -c '%U %G %a' /run/sunsetd)"
modes=$(IN stat -c '%n %U %G %a' /run/sunsetd/sunsetd.sock /run/sunsetd/events.sock /run/sunsetd/agents.sock 2>&1 | tr '\n' ';')
[ "$modes" = "/run/sunsetd/sunsetd.sock sunsetd sunsetd 660;/run/sunsetd/events.sock sunsetd sunsetd 660;/run/sunsetd/agents.sock sunsetd sunsetd 600;" ] \
  && ok "sockets: front and events 0660 group sunsetd, agents 0600" || bad "socket modes: $modes"
# not dumpable: the kernel gives a non-dumpable process's /proc files to root, out of reach of its own uid
zyg=$(IN pgrep -u sunsetd -f '^sunsetd-zygote ' | head -1); ag=$(agent_pids | head -1)
owners=$(IN stat -c '%U' /proc/"$(mainpid sunsetd)"/environ /proc/"$zyg"/environ /proc/"$ag"/environ 2>&1 | tr '\n' ' ')
[ "$owners" = "root root root " ] && ok "daemon, zygote and agents not dumpable (their /proc files are root's)" \
  || bad "dumpable: /proc owners of daemon, zygote, agent: $owners"
IN python3 -c 'import urllib.request as u; print(u.urlopen("http://127.0.0.1:9464/health").read().decode())' \
  | grep -q '"healthy": true' \
  && ok "/health on 127.0.0.1:9464 says healthy" || bad "/health not healthy"
titles=$(IN systemctl status sunsetd --no-pager -l -n 0)
echo "$titles" | grep -q 'sunsetd-agent KnowledgeBase#' && ok "process titles in systemctl status ($(echo "$titles" | grep -o 'sunsetd-agent KnowledgeBase#[^ ]*'))" \
  || { bad "no 'sunsetd-agent KnowledgeBase#' in systemctl status"; echo "$titles" | tail -20; }

# ---- journal
sleep 0.5
n=$(IN journalctl -u sunsetd --no-pager -o cat AGENT=KnowledgeBase | wc -l)
[ "$n" -ge 2 ] && ok "journalctl -u sunsetd AGENT=KnowledgeBase: $n lines" || bad "AGENT= filter found $n lines"
IN journalctl -u sunsetd --no-pager -o json -n 1 AGENT=KnowledgeBase EVENT=state | grep -q '"INCARNATION"' \
  && ok "records carry EVENT and INCARNATION fields" || bad "no EVENT/INCARNATION fields"
victim=$(IN sunsetctl call KnowledgeBase info | sed 's/.*"pid": \([0-9]*\).*/\1/')
IN kill -9 "$victim"
sleep 1
IN journalctl -u sunsetd --no-pager -o cat -p warning AGENT=KnowledgeBase | grep -q "killed by SIGKILL" \
  && ok "journalctl -p warning shows the agent's SIGKILL" || bad "no warning for the killed agent"

# ---- SIGKILL of the daemon: systemd restarts it, no agent of the old one survives
info "SIGKILL of the main process"
for _ in $(seq 50); do [ "$(ready)" = 16 ] && break; sleep 0.2; done   # KnowledgeBase back
p1=$(mainpid sunsetd); old_agents=$(agent_pids); n_old=$(echo "$old_agents" | count)
[ "$n_old" = 16 ] && ok "16 agents by their process titles before the kill" || bad "$n_old agents by process title before the kill (want 16)"
IN kill -9 "$p1"
for _ in $(seq 100); do p2=$(mainpid sunsetd); [ "$p2" != 0 ] && [ "$p2" != "$p1" ] && [ "$(IN systemctl is-active sunsetd)" = active ] && break; sleep 0.2; done
[ "$p2" != "$p1" ] && [ "$p2" != 0 ] && ok "restarted by systemd: MainPID $p1 -> $p2" || bad "not restarted after SIGKILL"
new_agents=$(agent_pids)
survivors=$(comm -12 <(echo "$old_agents") <(echo "$new_agents") | count)
if [ "$n_old" -gt 0 ] && [ "$survivors" = 0 ]; then ok "no agent of the killed daemon survives ($n_old were running, $(echo "$new_agents" | count) new)"
else bad "$survivors of $n_old agents survived the daemon's SIGKILL"; fi

# ---- SIGSTOP of the daemon: the watchdog restarts it
info "SIGSTOP of the main process (WatchdogSec=3s via drop-in)"
p1=$(mainpid sunsetd)
IN kill -STOP "$p1"
for _ in $(seq 100); do p2=$(mainpid sunsetd); [ "$p2" != 0 ] && [ "$p2" != "$p1" ] && [ "$(IN systemctl is-active sunsetd)" = active ] && break; sleep 0.2; done
IN journalctl -u sunsetd --no-pager -o cat | grep -q "Watchdog timeout" && [ "$p2" != "$p1" ] \
  && ok "watchdog fired, restarted: MainPID $p1 -> $p2" || bad "watchdog did not restart the frozen daemon"

# ---- reload: applied, then refused (systemctl reload fails, nothing changes), then applied again
info "systemctl reload"
if INT 130 systemctl reload sunsetd; then ok "systemctl reload returned 0"; else bad "reload failed"; fi
sleep 0.5
IN journalctl -u sunsetd --no-pager -o cat EVENT=reload | grep -q "done" && ok "the daemon reloaded its profile" \
  || { bad "no reload in the journal"; IN journalctl -u sunsetd --no-pager -o cat EVENT=reload | tail -5; }
[ "$(IN systemctl is-active sunsetd)" = active ] && ok "still active after reload" || bad "inactive after reload"
info "systemctl reload of an invalid profile"
IN cp /etc/sunsetd/profiles/core.yaml /root/core.yaml.good
IN sh -c 'printf "name: core\nagents:\n  - name: ServiceRegistry\n    restart: sometimes\n" > /etc/sunsetd/profiles/core.yaml'
p1=$(mainpid sunsetd)
if INT 130 systemctl reload sunsetd 2>/dev/null; then bad "systemctl reload of an invalid profile returned 0"
else ok "systemctl reload of an invalid profile fails (exit $?)"; fi
n=$(ready)
[ "$(IN systemctl is-active sunsetd)" = active ] && [ "$(mainpid sunsetd)" = "$p1" ] && [ "$n" = 16 ] \
  && ok "refused: still active, same MainPID, $n agents ready" || bad "after the refused reload: $(IN systemctl is-active sunsetd), $n ready"
IN journalctl -u sunsetd --no-pager -o cat EVENT=reload | grep -q "refused" && ok "the refusal is in the journal" || bad "no refusal in the journal"
IN cp /root/core.yaml.good /etc/sunsetd/profiles/core.yaml
if INT 130 systemctl reload sunsetd; then ok "profile restored: systemctl reload returns 0"; else bad "reload after restoring the profile failed"; fi

# ---- a profile error is not restarted
info "systemctl start sunsetd@typo"
if INT 60 systemctl start sunsetd@typo 2>/dev/null; then bad "sunsetd@typo started"; else ok "systemctl start sunsetd@typo fails"; fi
sleep 3   # RestartSec=1s: a restart loop would have counted by now
r=$(IN systemctl show -p NRestarts --value sunsetd@typo); a=$(IN systemctl show -p ActiveState --value sunsetd@typo)
x=$(IN systemctl show -p ExecMainStatus --value sunsetd@typo)
[ "$r" = 0 ] && [ "$a" = failed ] && [ "$x" = 2 ] && ok "sunsetd@typo: failed with exit status 2, NRestarts=0" \
  || bad "sunsetd@typo: ActiveState=$a ExecMainStatus=$x NRestarts=$r"
IN systemctl reset-failed sunsetd@typo

# ---- operators: the socket group
info "operators: alice in group sunsetd, bob not"
IN useradd -M -G sunsetd alice && IN useradd -M bob
out=$(AS 30 alice sunsetctl status 2>&1); rc=$?
[ $rc = 0 ] && ok "alice (group sunsetd): sunsetctl status: exit 0" || { bad "alice: sunsetctl status exit $rc"; echo "$out" | tail -5
  IN journalctl -u sunsetd --no-pager -o cat -n 25; }
[ "$(AS 30 alice sunsetctl call ServiceRegistry ping 2>&1)" = '"pong"' ] && ok "alice: sunsetctl call ServiceRegistry ping" || bad "alice: call failed"
out=$(AS 60 bob sunsetctl status 2>&1); rc=$?
if [ $rc != 0 ] && [ $rc != 124 ] && ! echo "$out" | grep -q Traceback; then ok "bob: sunsetctl status exit $rc, no traceback: $(echo "$out" | tail -1)"
else bad "bob: sunsetctl status exit $rc: $(echo "$out" | tail -3)"; fi

# ---- the GPU drop-in: verifies, and the service starts with it on a host without GPUs
info "GPU drop-in (from /usr/share/doc/sunsetd/gpu.conf)"
for d in sunsetd.service.d sunsetd@.service.d; do IN install -D -m 0644 /usr/share/doc/sunsetd/gpu.conf /etc/systemd/system/$d/gpu.conf; done
IN systemctl daemon-reload
for u in sunsetd.service sunsetd@vision.service; do
  v=$(IN systemd-analyze verify "$u" 2>&1 >/dev/null)
  [ -z "$v" ] && ok "systemd-analyze verify $u with gpu.conf: nothing on stderr" || bad "verify $u with gpu.conf: $v"
done
if INT 120 systemctl restart sunsetd; then ok "systemctl restart with gpu.conf"; else bad "restart with gpu.conf failed"; IN journalctl -u sunsetd --no-pager -n 30; fi
n=$(ready); pd=$(IN systemctl show -p PrivateDevices --value sunsetd); da=$(IN systemctl show -p DeviceAllow --value sunsetd | paste -sd,)
[ "$(IN systemctl is-active sunsetd)" = active ] && [ "$n" = 16 ] && [ "$pd" = no ] && case $da in *char-nvidia*) true;; *) false;; esac \
  && ok "active with gpu.conf: $n ready, PrivateDevices=$pd, DeviceAllow=$da" || bad "with gpu.conf: $n ready, PrivateDevices=$pd, DeviceAllow=$da"
c=$(IN stat -c '%U %a' /var/cache/sunsetd/models 2>&1)
e=$(IN sh -c "tr '\0' '\n' < /proc/$(mainpid sunsetd)/environ | grep -E '^(HF_HOME|OLLAMA_MODELS)=' | tr '\n' ' '")
case "$c|$e" in "sunsetd "*"|HF_HOME=/var/cache/sunsetd/models/huggingface OLLAMA_MODELS="*) ok "model cache /var/cache/sunsetd/models ($c), $e";;
                *) bad "model cache: '$c', environment: '$e'";; esac
AS 10 sunsetd test -w /var/cache/sunsetd/models && ok "the cache is writable by sunsetd" || bad "the cache is not writable by sunsetd"

# ---- stop
info "systemctl stop"
INT 90 systemctl stop sunsetd
[ "$(IN systemctl is-active sunsetd)" = inactive ] && ok "stopped: $(IN systemctl show -p Result --value sunsetd)" || bad "still active after stop"
[ -z "$(IN pgrep -u sunsetd)" ] && ok "no process of the sunsetd user is left" || bad "processes left: $(IN pgrep -u sunsetd -a)"
IN journalctl -u sunsetd --no-pager -o cat EVENT=exit AGENT=sunsetd | grep -q "all agents stopped" \
  && ok "the daemon stopped every agent itself before exiting" || bad "no clean-exit record"

score=$(systemd-analyze security --offline=yes "$REPO/systemd/sunsetd.service" 2>/dev/null | tail -1)
info "exposure (systemd-analyze security --offline=yes): $score"

# ---- uninstall, last: removes exactly what install linked
info "make uninstall"
IN make -C /src uninstall >"$WORK/uninstall.log" 2>&1 && ok "make uninstall" || { bad "make uninstall failed"; tail -10 "$WORK/uninstall.log"; }
left=""
for l in /usr/local/bin/sunsetd /usr/local/bin/sunsetctl /usr/share/bash-completion/completions/sunsetd \
         /usr/share/bash-completion/completions/sunsetctl /usr/share/zsh/vendor-completions/_sunsetd \
         /usr/share/zsh/vendor-completions/_sunsetctl /usr/share/doc/sunsetd /opt/sunsetd \
         /etc/systemd/system/sunsetd.service /etc/systemd/system/sunsetd@.service; do
  IN sh -c "test -e $l || test -L $l" && left="$left $l"
done
[ -z "$left" ] && ok "uninstalled: links, completions, docs, venv and units are gone" || bad "left after uninstall:$left"
IN sh -c 'command -v sunsetctl' >/dev/null && bad "sunsetctl still on PATH after uninstall" || ok "sunsetctl no longer on PATH"

if [ $FAILS -gt 0 ]; then info "container journal (last 80 lines)"; IN journalctl -b --no-pager -n 80; fi
info "done: $FAILS failure(s)"
exit $((FAILS > 0))
