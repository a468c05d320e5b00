# Shared helpers for scripts/stack and its components (scripts/stack.d/*.sh).
# Sourced, never executed. Everything binds 127.0.0.1 or the node's bridge address; every process is recorded by PID.

PAYGRESS_CACHE="${PAYGRESS_CACHE:-$HOME/.cache/paygress}"
# Runtime state of the running stack (logs, data dirs, pid files, generated configs).
STACK_DIR="${PAYGRESS_STACK_DIR:-$PAYGRESS_CACHE/stack}"
# Build/install cache, keyed by version: $PAYGRESS_CACHE/build/<name>-<version>/...
BUILD_DIR="$PAYGRESS_CACHE/build"
PID_DIR="$STACK_DIR/pids"
LOG_DIR="$STACK_DIR/logs"
mkdir -p "$STACK_DIR" "$BUILD_DIR" "$PID_DIR" "$LOG_DIR"

# The address every peer (API server, relay, mints, Tor network) listens on and is named by in env.sh: the node's
# bridge address, where the host and pods both reach them (pods cannot reach the host's loopback).
STACK_ADDR="${PAYGRESS_STACK_ADDR:-198.18.0.1}"

# Fixed ports, one table so components never collide; below 32768 (outside Linux's ephemeral range). Each can be
# moved from the environment (PAYGRESS_PORT_APISERVER=36443 …).
PORT_ETCD_CLIENT="${PAYGRESS_PORT_ETCD_CLIENT:-21790}"
PORT_ETCD_PEER="${PAYGRESS_PORT_ETCD_PEER:-21800}"
PORT_APISERVER="${PAYGRESS_PORT_APISERVER:-21443}"
PORT_RELAY="${PAYGRESS_PORT_RELAY:-21777}"
PORT_MINT="${PAYGRESS_PORT_MINT:-21338}"
PORT_MINT_ALT="${PAYGRESS_PORT_MINT_ALT:-21339}"
PORT_TOR_BASE="${PAYGRESS_PORT_TOR_BASE:-21500}"      # tor network uses BASE..BASE+99 (authorities, relays, exit, client)
PORT_TOR_SOCKS="${PAYGRESS_PORT_TOR_SOCKS:-21050}"    # C tor client SocksPort used by torsocks
PORT_KUBELET="${PAYGRESS_PORT_KUBELET:-21250}"        # kubelet API (on the bridge address)
# The node's other components: local ports, all on 127.0.0.1.
PORT_KUBELET_HEALTHZ="${PAYGRESS_PORT_KUBELET_HEALTHZ:-21251}"
PORT_SCHEDULER="${PAYGRESS_PORT_SCHEDULER:-21252}"
PORT_CONTROLLER_MANAGER="${PAYGRESS_PORT_CONTROLLER_MANAGER:-21253}"
PORT_PROXY_HEALTHZ="${PAYGRESS_PORT_PROXY_HEALTHZ:-21254}"
PORT_PROXY_METRICS="${PAYGRESS_PORT_PROXY_METRICS:-21255}"
PORT_NODE_REGISTRY="${PAYGRESS_PORT_NODE_REGISTRY:-21256}"  # every registry's only host for the node's containerd
# shellcheck disable=SC2034  # used by stack.d/node/up.sh and smoke/node.sh
PORT_NETPOL_METRICS="${PAYGRESS_PORT_NETPOL_METRICS:-21257}"  # kube-network-policies' metrics (its readiness)
# shellcheck disable=SC2034  # used by stack.d/node.sh
PORT_NODE_CRATES="${PAYGRESS_PORT_NODE_CRATES:-21258}"  # crates.io mirror for image builds (on the bridge)

# port_env: the PAYGRESS_PORT_* exports of the stack (for env.sh).
port_env() {
  local v
  for v in ETCD_CLIENT ETCD_PEER APISERVER RELAY MINT MINT_ALT TOR_BASE TOR_SOCKS KUBELET \
      KUBELET_HEALTHZ SCHEDULER CONTROLLER_MANAGER PROXY_HEALTHZ PROXY_METRICS NODE_REGISTRY NETPOL_METRICS \
      NODE_CRATES; do
    local name="PORT_$v"
    echo "export PAYGRESS_PORT_$v='${!name}'"
  done
  echo "export PAYGRESS_STACK_ADDR='$STACK_ADDR'"
}

log() { printf '[stack %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

# fail PEER LOGFILE MESSAGE: a failure names the peer and the path of its log.
fail() {
  printf '[stack] FAILED peer=%s log=%s: %s\n' "$1" "$2" "$3" >&2
  if [ -f "$2" ]; then echo "---- last lines of $2 ----" >&2; tail -n 30 "$2" >&2; fi
  exit 1
}

# A pid file holds "PID STARTTIME" (STARTTIME: field 22 of /proc/PID/stat). The start time tells a
# live process of ours from a stale file whose PID was reused, e.g. after the machine or session that
# ran the stack was torn down without `stack down`.
# Prints nothing for a zombie (state Z: dead, not yet reaped by init), so a zombie counts as gone. The
# command name (field 2) may hold spaces, so fields are counted after its closing parenthesis.
_proc_start_time() { sed 's/^.*) //' "/proc/$1/stat" 2>/dev/null | awk '$1 != "Z" {print $20}'; }

# recorded_pid NAME: the PID of NAME if it is still our process; removes a stale pid file.
recorded_pid() {
  local f="$PID_DIR/$1.pid" pid start now
  [ -f "$f" ] || return 1
  read -r pid start <"$f" || true
  now="$( [ -n "$pid" ] && _proc_start_time "$pid")"
  # A file without a start time (written by older scripts) cannot tell our process from a reused PID:
  # stale, so that nothing is ever killed on its word.
  if [ -n "$now" ] && [ "$now" = "$start" ]; then
    echo "$pid"; return 0
  fi
  rm -f "$f"
  return 1
}

# is_running NAME: the recorded process is alive.
is_running() { recorded_pid "$1" >/dev/null; }

# start_proc NAME CMD...: start CMD in the background (own process group), log to $LOG_DIR/NAME.log,
# record its PID. Idempotent: does nothing if NAME is already running.
start_proc() {
  local name="$1"; shift
  if is_running "$name"; then return 0; fi
  local logf="$LOG_DIR/$name.log"
  setsid "$@" >>"$logf" 2>&1 < /dev/null &
  # A child that already exited has no start time: "gone" makes its file stale at once.
  local started; started="$(_proc_start_time $!)"
  echo "$! ${started:-gone}" > "$PID_DIR/$name.pid"
  echo "$*" > "$PID_DIR/$name.cmd"
}

# restart_if_changed NAME CMD...: stop NAME if it runs with another command line than CMD (flags changed
# since an older stack started it), so that the caller's start_proc starts CMD. start_proc records it.
restart_if_changed() {
  local name="$1"; shift
  if is_running "$name" && [ "$(cat "$PID_DIR/$name.cmd" 2>/dev/null)" != "$*" ]; then
    log "$name: command line changed, restarting it"
    stop_proc "$name"
  fi
}

# stop_proc NAME: TERM the process group, wait up to 10 s, then KILL.
stop_proc() {
  local name="$1" pid i
  if pid="$(recorded_pid "$name")"; then
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null
    for i in $(seq 1 100); do [ -n "$(_proc_start_time "$pid")" ] || break; sleep 0.1; done
    kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$PID_DIR/$name.pid" "$PID_DIR/$name.cmd"
}

# wait_for PEER LOGFILE TIMEOUT_SECONDS CMD...: poll CMD every 0.5 s until it succeeds, else fail naming the peer.
wait_for() {
  local peer="$1" logf="$2" timeout="$3"; shift 3
  local deadline=$(( $(date +%s) + timeout ))
  until "$@" >/dev/null 2>&1; do
    if [ "$(date +%s)" -ge "$deadline" ]; then fail "$peer" "$logf" "not ready after ${timeout}s"; fi
    sleep 0.5
  done
}

# tcp_open PORT [HOST]: something listens there.
tcp_open() { (exec 3<>"/dev/tcp/${2:-127.0.0.1}/$1") 2>/dev/null; }

# Go builds go to the Go module proxy only; keep their caches with ours so warm runs are quick.
export GOPATH="${GOPATH:-$PAYGRESS_CACHE/go}"
export GOMODCACHE="${GOMODCACHE:-$PAYGRESS_CACHE/go/pkg/mod}"
export GOCACHE="${GOCACHE:-$PAYGRESS_CACHE/go-build}"
export GOFLAGS="${GOFLAGS:--mod=mod}"
