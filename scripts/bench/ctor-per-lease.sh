#!/usr/bin/env bash
# scripts/bench/ctor-per-lease.sh — the seed's design, measured: one C tor process per lease, each with its
# own DataDirectory and HiddenServiceDir and `HiddenServicePort 2222 -> target`, started when the lease
# starts, on the stack's private Tor network. Prints, for N = 1, 10, 50 live processes (cumulative, like
# examples/onion_rss.rs): time from process start to the first successful connection through the stack's
# C tor client (SOCKS), and the summed VmRSS of the N tor processes. Prints numbers, asserts nothing.
#
#   . ~/.cache/paygress/stack/env.sh && scripts/bench/ctor-per-lease.sh [1 10 50]
#
# Needs PAYGRESS_TOR_NETWORK_TORRC (the %include-able network fragment) and TORSOCKS_TOR_PORT.
set -euo pipefail

: "${PAYGRESS_TOR_NETWORK_TORRC:?run with the stack env (. ~/.cache/paygress/stack/env.sh)}"
: "${TORSOCKS_TOR_PORT:?run with the stack env (. ~/.cache/paygress/stack/env.sh)}"
STEPS=("$@"); [ ${#STEPS[@]} -gt 0 ] || STEPS=(1 10 50)
BUDGET="${CTOR_REACH_BUDGET:-300}"   # seconds a service may take to become reachable
WORK="$(mktemp -d /tmp/ctor-per-lease.XXXXXX)"
PIDS=()

cleanup() {
  local p
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

# The "pod": a banner server on a free loopback port.
python3 - "$WORK/target-port" <<'EOF' &
import socket, sys, threading
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", 0)); s.listen(256)
open(sys.argv[1], "w").write(str(s.getsockname()[1]))
def serve(c):
    try: c.sendall(b"SSH-2.0-ctor-bench\r\n")
    finally: c.close()
while True:
    c, _ = s.accept(); threading.Thread(target=serve, args=(c,), daemon=True).start()
EOF
PIDS+=($!)
for _ in $(seq 50); do [ -s "$WORK/target-port" ] && break; sleep 0.1; done
TARGET="$(cat "$WORK/target-port")"

# probe ONION: one SOCKS5 connect through the stack's client and a banner read (exit 0 on success).
probe() {
  python3 - "$1" "$TORSOCKS_TOR_PORT" <<'EOF'
import socket, struct, sys
host, port = sys.argv[1], int(sys.argv[2])
s = socket.create_connection(("127.0.0.1", port), timeout=60)
s.sendall(b"\x05\x01\x00"); assert s.recv(2) == b"\x05\x00"
s.sendall(b"\x05\x01\x00\x03" + bytes([len(host)]) + host.encode() + struct.pack(">H", 2222))
r = s.recv(10)
sys.exit(0 if len(r) >= 2 and r[1] == 0 and s.recv(8) == b"SSH-2.0-" else 1)
EOF
}

now() { date +%s.%N; }

# start_one I: a tor for lease I; records its pid and start time.
start_one() {
  local d="$WORK/lease-$1"
  mkdir -p -m 700 "$d/data" "$d/hs"
  cat >"$d/torrc" <<EOF
%include $PAYGRESS_TOR_NETWORK_TORRC
DataDirectory $d/data
HiddenServiceDir $d/hs
HiddenServicePort 2222 127.0.0.1:$TARGET
SocksPort 0
RunAsDaemon 0
Log notice file $d/tor.log
EOF
  now >"$d/started"
  tor -f "$d/torrc" >/dev/null 2>&1 &
  echo $! >"$d/pid"
  PIDS+=($!)
}

# reach_one I: wait for the hostname file, then probe until it answers; writes the seconds taken.
reach_one() {
  local d="$WORK/lease-$1" t0 onion deadline
  t0="$(cat "$d/started")"; deadline=$(( ${t0%.*} + BUDGET ))
  until [ -s "$d/hs/hostname" ]; do
    [ "$(date +%s)" -lt "$deadline" ] || { echo fail >"$d/reach"; return; }
    sleep 0.2
  done
  onion="$(cat "$d/hs/hostname")"
  until probe "$onion" 2>/dev/null; do
    [ "$(date +%s)" -lt "$deadline" ] || { echo fail >"$d/reach"; return; }
    sleep 0.5
  done
  echo "$(now) - $t0" | bc >"$d/reach"
}

rss_sum_kib() {
  local i sum=0 r
  for (( i=0; i<$1; i++ )); do
    r="$(awk '/^VmRSS:/ {print $2}' "/proc/$(cat "$WORK/lease-$i/pid")/status" 2>/dev/null || echo 0)"
    sum=$(( sum + ${r:-0} ))
  done
  echo "$sum"
}

summary() { # reads numbers (or "fail") on stdin
  sort -n | awk '$1=="fail"{f++; next} {v[n++]=$1} END {
    if (n==0) {printf "- (failed %d)", f; exit}
    printf "median %.1fs, min %.1fs, max %.1fs (n=%d%s)", v[int(n/2)], v[0], v[n-1], n, (f? ", failed " f : "")}'
}

echo "C tor $(tor --version | head -1 | sed 's/^Tor version //; s/\.$//'), one process per lease; target 127.0.0.1:$TARGET"
live=0
for n in "${STEPS[@]}"; do
  [ "$n" -gt "$live" ] || continue
  batch_t0="$(now)"
  for (( i=live; i<n; i++ )); do start_one "$i"; done
  waiters=()
  for (( i=live; i<n; i++ )); do reach_one "$i" & waiters+=($!); done
  wait "${waiters[@]}" 2>/dev/null || true
  batch="$(echo "$(now) - $batch_t0" | bc)"
  reach="$(for (( i=live; i<n; i++ )); do cat "$WORK/lease-$i/reach"; done | summary)"
  batch_size=$(( n - live )); live=$n
  sleep 10   # let circuits and descriptor uploads settle before reading memory
  printf 'processes=%d rss_sum_kib=%d | batch of %d: start -> reachable %s ; whole batch %.1fs\n' \
    "$n" "$(rss_sum_kib "$n")" "$batch_size" "$reach" "$batch"
done
