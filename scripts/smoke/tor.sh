#!/usr/bin/env bash
# Smoke test of the private Tor network (scripts/stack.d/tor.sh):
#  1. the client reaches a local HTTP server on $STACK_ADDR through the exit (SOCKS; the exit accepts 127.0.0.0/8 on
#     the main stack, the real node's instance's only its bridge address);
#  2. a fresh C tor onion service (own tor instance, HiddenServiceDir) in front of that HTTP server is
#     reached by the C tor client with `torsocks curl http://<addr>.onion/`, within a timeout.
# Prints how long the onion service took to become reachable. Cleans up its processes and files.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=scripts/lib.sh
. "$HERE/../lib.sh"

TOR_DIR="$STACK_DIR/tor"
SOCKS="${PAYGRESS_TOR_SOCKS:-$STACK_ADDR:$PORT_TOR_SOCKS}"
export TORSOCKS_CONF_FILE="${TORSOCKS_CONF_FILE:-$TOR_DIR/torsocks.conf}"
ONION_TIMEOUT="${SMOKE_TOR_ONION_TIMEOUT:-180}"
WEB_PORT=$(( PORT_TOR_BASE + 61 ))   # 25061: local HTTP server behind the onion service
HS_CTL_PORT=$(( PORT_TOR_BASE + 60 ))
HS_LOG="$LOG_DIR/smoke-tor-hs.log"
WEB_LOG="$LOG_DIR/smoke-tor-web.log"
CLIENT_LOG="$LOG_DIR/tor-client9.log"

say() { printf '[smoke tor %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

# Leftovers of an interrupted earlier run.
stop_proc smoke-tor-hs; stop_proc smoke-tor-web

[ -f "$TOR_DIR/torrc.network" ] || fail tor "$CLIENT_LOG" "no $TOR_DIR/torrc.network: run scripts/stack up tor"
tcp_open "${SOCKS##*:}" "${SOCKS%:*}" || fail tor "$CLIENT_LOG" "client SocksPort $SOCKS is not open: run scripts/stack up tor"
[ -f "$TORSOCKS_CONF_FILE" ] || fail torsocks "$CLIENT_LOG" "no torsocks config $TORSOCKS_CONF_FILE"
# Circuit-build timeouts have a live-like floor: learned on loopback they are ~100 ms, and a load spike (500
# onion services publishing) then times out every build and marks every guard down (tor.sh).
grep -qs '^params .*cbtmintimeout=2000' "$TOR_DIR"/nodes/*/data/cached-consensus ||
  fail tor "$CLIENT_LOG" "the consensus sets no circuit-build timeout floor (cbtmintimeout)"

work="$(mktemp -d "$TOR_DIR/smoke.XXXXXX")"
cleanup() {
  stop_proc smoke-tor-hs; stop_proc smoke-tor-web
  rm -rf "$work"
}
trap cleanup EXIT

# ---- local HTTP server with a random token --------------------------------------------------------------
token="paygress-smoke-$(od -An -N8 -tx1 /dev/urandom | tr -d ' \n')"
mkdir -p "$work/www"
echo "$token" >"$work/www/index.html"
: >"$WEB_LOG"
start_proc smoke-tor-web python3 -m http.server "$WEB_PORT" --bind "$STACK_ADDR" --directory "$work/www"
wait_for http-server "$WEB_LOG" 20 tcp_open "$WEB_PORT" "$STACK_ADDR"

# ---- 1. exit path: client -> guard -> middle -> exit8 -> $STACK_ADDR --------------------------------------
t0=$(date +%s)
got=""
# Short attempts: right after bootstrap a C tor client sometimes marks the first stream's exit as
# "doomed" and keeps it pending; a new stream a few seconds later goes straight through.
for _ in $(seq 1 10); do
  got="$(curl -sS --max-time 6 --socks5-hostname "$SOCKS" "http://$STACK_ADDR:$WEB_PORT/" 2>>"$WEB_LOG" || true)"
  [ "$got" = "$token" ] && break
  sleep 1
done
[ "$got" = "$token" ] ||
  fail tor "$LOG_DIR/tor-exit8.log" "curl through the exit to $STACK_ADDR:$WEB_PORT returned '${got:0:80}' (client log: $CLIENT_LOG)"
say "exit path OK ($(( $(date +%s) - t0 ))s)"

# ---- 2. onion service ---------------------------------------------------------------------------------
mkdir -p "$work/data" "$work/hs"; chmod 700 "$work/data" "$work/hs"
cat >"$work/torrc" <<EOF
%include $TOR_DIR/torrc.network
Nickname pgsmokehs
DataDirectory $work/data
RunAsDaemon 0
Log notice stdout
SafeLogging 0
LogTimeGranularity 1
ShutdownWaitLength 0
SocksPort 0
ControlPort 127.0.0.1:$HS_CTL_PORT
CookieAuthentication 0
HiddenServiceDir $work/hs
HiddenServicePort 80 $STACK_ADDR:$WEB_PORT
EOF
: >"$HS_LOG"
t_hs=$(date +%s.%N)
start_proc smoke-tor-hs tor -f "$work/torrc"
wait_for onion-service "$HS_LOG" 30 test -s "$work/hs/hostname"
onion="$(cat "$work/hs/hostname")"
say "onion service $onion started; fetching it with torsocks curl"

deadline=$(( $(date +%s) + ONION_TIMEOUT ))
attempts=0
while :; do
  attempts=$((attempts+1))
  got="$(torsocks curl -sS --max-time 20 "http://$onion/" 2>>"$WEB_LOG" || true)"
  [ "$got" = "$token" ] && break
  is_running smoke-tor-hs || fail onion-service "$HS_LOG" "onion service tor exited"
  if [ "$(date +%s)" -ge "$deadline" ]; then
    fail tor "$HS_LOG" "onion $onion not reachable via torsocks curl after ${ONION_TIMEOUT}s ($attempts attempts; last reply '${got:0:80}'; client log: $CLIENT_LOG)"
  fi
  sleep 1
done
elapsed="$(awk -v a="$t_hs" -v b="$(date +%s.%N)" 'BEGIN{printf "%.1f", b-a}')"
say "onion reachable ${elapsed}s after the onion service's tor started ($attempts attempt(s))"
echo "onion_reachable_seconds=$elapsed" >"$LOG_DIR/smoke-tor.timing"
say "PASS"
