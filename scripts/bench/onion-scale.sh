#!/usr/bin/env bash
# scripts/bench/onion-scale.sh — the provider's onion design (ONE arti client, one service per lease) side by
# side with the seed's (one C tor process per lease), in one run, on the stack's private Tor network.
# For N = 1, 10, 100, 500 live leases, both designs: RSS (arti: the whole process; C tor: summed VmRSS of the
# N tor processes), idle CPU (% of one core over ONION_SCALE_IDLE s with no traffic, utime+stime from
# /proc/<pid>/stat), how many addresses answer and when the last one did (SOCKS5 CONNECT through the stack's
# C tor client to <addr>.onion:2222 reading the target's SSH banner, ≤ 32 probes in flight), and after
# `kill -9` and a restart with the same keys, when every address answers again. Then a 100 MB transfer over
# SSH (`torsocks ssh … 'cat > /dev/null'`) through one arti service and one C tor service to the same
# loopback sshd, 3 runs each, alternating. Prints a table, writes docs/bench-onion-scale.tsv and SVG plots
# into docs/. Prints numbers, asserts nothing.
#
#   scripts/bench/onion-scale.sh
#   ONION_SCALE_STEPS=1,10 ONION_SCALE_IDLE=10 ONION_SCALE_TRANSFER_RUNS=1 scripts/bench/onion-scale.sh
#
# Env: ONION_SCALE_STEPS (1,10,100,500), ONION_SCALE_IDLE (30 s), ONION_SCALE_SETTLE (15 s before reading
# memory/CPU), ONION_SCALE_BUDGET (600 s per "until every address answers"), ONION_SCALE_TRANSFER_RUNS (3;
# 0 skips), ONION_SCALE_TRANSFER_MB (100), ONION_SCALE_OUT (docs; where the TSV and SVGs go),
# ONION_SCALE_PROFILE (dev, or release as the image builds it), ONION_SCALE_NEW_LEASE_AFTER (5 s: a new lease
# published that long into arti's restore, timed).
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT="$PWD"
export PAYGRESS_CACHE="${PAYGRESS_CACHE:-$HOME/.cache/paygress}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PAYGRESS_CACHE/target}"
scripts/stack up
# shellcheck disable=SC1091
. "${PAYGRESS_STACK_DIR:-$PAYGRESS_CACHE/stack}/env.sh"

IFS=, read -r -a STEPS <<<"${ONION_SCALE_STEPS-1,10,100,500}"
IDLE="${ONION_SCALE_IDLE:-30}"
SETTLE="${ONION_SCALE_SETTLE:-15}"
BUDGET="${ONION_SCALE_BUDGET:-600}"
RUNS="${ONION_SCALE_TRANSFER_RUNS:-3}"
MB="${ONION_SCALE_TRANSFER_MB:-100}"
NEW_LEASE_AFTER="${ONION_SCALE_NEW_LEASE_AFTER:-5}"
OUT="${ONION_SCALE_OUT:-$ROOT/docs}"
HZ="$(getconf CLK_TCK)"

# dev: this repo's dev profile (dependencies at opt-level 1); release: as the shipped image is built.
PROFILE="${ONION_SCALE_PROFILE:-dev}"
if [ "$PROFILE" = release ]; then
  cargo build -q --release --example onion_scale; BIN="$CARGO_TARGET_DIR/release/examples/onion_scale"
else
  cargo build -q --example onion_scale; BIN="$CARGO_TARGET_DIR/debug/examples/onion_scale"
fi
WORK="$(mktemp -d /tmp/onion-scale.XXXXXX)"
RESULTS="$WORK/results.tsv"
PIDS=()          # long-lived helpers (banner server, sshd)
LIVE=()          # the design under test: arti process or N tor processes
CLIENT=""        # the probing C tor client of the current phase

stop_live() { # SIGNAL
  local p
  for p in "${LIVE[@]}"; do kill "-$1" "$p" 2>/dev/null || true; done
  for p in "${LIVE[@]}"; do wait "$p" 2>/dev/null || true; done
  LIVE=()
}
cleanup() {
  local p
  client_stop
  stop_live KILL
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 143' TERM INT

now() { date +%s.%N; }
log() { printf '[%s] %s\n' "$(date +%T)" "$*" >&2; }

# Summed utime+stime (clock ticks) and VmRSS (KiB) of the given pids. The comm field may hold spaces:
# fields are counted after its closing parenthesis.
ticks() { local p s=0 t; for p in "$@"; do t="$(sed 's/^.*) //' "/proc/$p/stat" 2>/dev/null | awk '{print $12+$13}')"; s=$(( s + ${t:-0} )); done; echo "$s"; }
rss_kib() { local p s=0 r; for p in "$@"; do r="$(awk '/^VmRSS:/ {print $2}' "/proc/$p/status" 2>/dev/null)"; s=$(( s + ${r:-0} )); done; echo "$s"; }
# Proportional set size: N tor processes share ~11.5 MB of the tor binary's and libraries' pages each, which
# summed VmRSS counts N times (at 500: 6.8 GB RSS, 1.2 GB PSS).
pss_kib() { local p s=0 r; for p in "$@"; do r="$(awk '/^Pss:/ {print $2}' "/proc/$p/smaps_rollup" 2>/dev/null)"; s=$(( s + ${r:-0} )); done; echo "$s"; }
idle_cpu_pct() { # over IDLE seconds, % of one core
  local a b; a="$(ticks "$@")"; sleep "$IDLE"; b="$(ticks "$@")"
  echo "scale=2; ($b - $a) * 100 / $HZ / $IDLE" | bc
}
# → "answering total all_s" (all_s "-" unless every address answered), seconds counted from T0
probe() { # ADDRFILE T0 [BUDGET]
  local line
  line="$(ONION_SCALE_T0="$2" "$BIN" probe "$1" "${3:-$BUDGET}")"
  echo "$line" >&2
  sed -E 's/answering=([0-9]+) total=([0-9]+) all_s=([^ ]+).*/\1 \2 \3/' <<<"$line"
}

# Every probe phase goes through its own fresh C tor client: a client that has probed hundreds of services
# not yet published keeps thousands of descriptor-fetch circuits and saturates a core (the stack's shared
# client did, in an earlier run), which would bill one design for the other's leftovers.
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
client_start() { # TAG → TORSOCKS_TOR_PORT of a bootstrapped client
  local d="$WORK/client-$1" port
  port="$(free_port)"
  mkdir -p -m 700 "$d"
  printf '%s\n' "%include $PAYGRESS_TOR_NETWORK_TORRC" "DataDirectory $d" "SocksPort 127.0.0.1:$port" \
    "UseMicrodescriptors 0" "RunAsDaemon 0" "Log notice file $d/tor.log" >"$d/torrc"
  tor -f "$d/torrc" >/dev/null 2>&1 & CLIENT=$!
  for _ in $(seq 1200); do grep -q 'Bootstrapped 100%' "$d/tor.log" 2>/dev/null && break; sleep 0.1; done
  export TORSOCKS_TOR_PORT="$port"
}
client_stop() { if [ -n "$CLIENT" ]; then kill "$CLIENT" 2>/dev/null || true; wait "$CLIENT" 2>/dev/null || true; CLIENT=""; fi; }

# The "pods": one banner server shared by every service of both designs.
"$BIN" banner "$WORK/banner-port" & PIDS+=($!)
for _ in $(seq 100); do [ -s "$WORK/banner-port" ] && break; sleep 0.1; done
TARGET="127.0.0.1:$(cat "$WORK/banner-port")"

# ---- arti: one process, N services ----------------------------------------------------------------------
arti_start() { # DIR N TARGET
  # tor_netdir warns every second on this 8-relay network that it wants more guards than exist.
  RUST_LOG="${RUST_LOG:-warn,tor_netdir=error}" "$BIN" serve "$1" "$2" "$3" >>"$1.log" 2>&1 & LIVE=($!)
}
arti_step() {
  local n=$1 d="$WORK/arti-$n" t0 first restart rss pss cpu newl
  log "arti: $n services"
  client_start "arti-$n"
  t0="$(now)"; arti_start "$d" "$n" "$TARGET"
  first="$(probe "$d/addresses" "$t0")"
  client_stop
  sleep "$SETTLE"
  rss="$(rss_kib "${LIVE[@]}")"; pss="$(pss_kib "${LIVE[@]}")"; cpu="$(idle_cpu_pct "${LIVE[@]}")"
  log "arti: kill -9 and restart with the same $n keys; a new lease is published $NEW_LEASE_AFTER s into it"
  stop_live KILL
  client_start "arti-$n-restart"
  t0="$(now)"; ONION_SCALE_NEW_LEASE_AFTER="$NEW_LEASE_AFTER" arti_start "$d" "$n" "$TARGET"
  restart="$(probe "$d/addresses" "$t0")"
  client_stop
  for _ in $(seq 1800); do [ -s "$d/new-lease" ] && break; sleep 0.1; done   # when the restore was quicker
  newl="$(awk '{print $1}' "$d/new-lease" 2>/dev/null || true)"
  stop_live TERM
  printf 'arti\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$n" "$rss" "$pss" "$cpu" "${first// /$'\t'}" "${restart// /$'\t'}" "${newl:--}" >>"$RESULTS"
  rm -rf "$d"
}

# ---- C tor: one process per lease -------------------------------------------------------------------------
ctor_start_one() { # DIR TARGET
  local d=$1
  if [ ! -e "$d/torrc" ]; then
    mkdir -p -m 700 "$d/data" "$d/hs"
    cat >"$d/torrc" <<EOF
%include $PAYGRESS_TOR_NETWORK_TORRC
DataDirectory $d/data
HiddenServiceDir $d/hs
HiddenServicePort 2222 $2
SocksPort 0
RunAsDaemon 0
Log notice file $d/tor.log
EOF
  fi
  tor -f "$d/torrc" >/dev/null 2>&1 & LIVE+=($!)
}
ctor_addresses() { # BASE N → BASE/addresses once every hostname file exists (tor writes it at start)
  local i
  for (( i=0; i<$2; i++ )); do
    for _ in $(seq 300); do [ -s "$1/lease-$i/hs/hostname" ] && break; sleep 0.1; done
    cat "$1/lease-$i/hs/hostname" 2>/dev/null || true
  done >"$1/addresses"
}
ctor_step() {
  local n=$1 b="$WORK/ctor-$n" i t0 first restart rss pss cpu avail
  avail="$(awk '/^MemAvailable:/ {print int($2/1024)}' /proc/meminfo)"
  if [ "$avail" -lt $(( n * 20 + 2048 )) ]; then
    log "C tor: skipping $n processes, only $avail MiB available"
    printf 'ctor\t%s\t-\t-\t-\t-\t%s\t-\t-\t%s\t-\t-\n' "$n" "$n" "$n" >>"$RESULTS"; return
  fi
  log "C tor: $n processes"
  mkdir -p "$b"
  client_start "ctor-$n"
  t0="$(now)"
  for (( i=0; i<n; i++ )); do ctor_start_one "$b/lease-$i" "$TARGET"; done
  ctor_addresses "$b" "$n"
  first="$(probe "$b/addresses" "$t0")"
  client_stop
  sleep "$SETTLE"
  rss="$(rss_kib "${LIVE[@]}")"; pss="$(pss_kib "${LIVE[@]}")"; cpu="$(idle_cpu_pct "${LIVE[@]}")"
  log "C tor: kill -9 all $n and restart them on the same HiddenServiceDirs"
  stop_live KILL
  client_start "ctor-$n-restart"
  t0="$(now)"
  for (( i=0; i<n; i++ )); do ctor_start_one "$b/lease-$i" "$TARGET"; done
  restart="$(probe "$b/addresses" "$t0")"
  client_stop
  stop_live TERM
  printf 'ctor\t%s\t%s\t%s\t%s\t%s\t%s\t-\n' "$n" "$rss" "$pss" "$cpu" "${first// /$'\t'}" "${restart// /$'\t'}" >>"$RESULTS"
  rm -rf "$b"
}

printf 'design\tleases\trss_kib\tpss_kib\tidle_cpu_pct\tanswering\ttotal\tstart_all_s\trestart_answering\trestart_total\trestart_all_s\tnew_lease_s\n' >"$RESULTS"
for n in "${STEPS[@]}"; do
  arti_step "$n"
  ctor_step "$n"
done

# ---- SSH throughput: one arti service vs one C tor service, same loopback sshd ---------------------------
TP="$WORK/transfer.tsv"; : >"$TP"
if [ "$RUNS" -gt 0 ]; then
  s="$WORK/sshd"; mkdir -p -m 700 "$s"
  ssh-keygen -q -t ed25519 -N '' -f "$s/host" && ssh-keygen -q -t ed25519 -N '' -f "$s/client"
  cp "$s/client.pub" "$s/authorized_keys"
  SSHD_PORT="$(free_port)"
  cat >"$s/config" <<EOF
ListenAddress 127.0.0.1
HostKey $s/host
AuthorizedKeysFile $s/authorized_keys
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
PidFile none
EOF
  # No sshd is installed here and there is no `sshd` privilege-separation user: use Debian's package unpacked
  # into the cache (apt-get download, nothing installed), and give it that user and /run/sshd in a private
  # mount namespace only, so the machine's /etc/passwd and /run are untouched.
  SSHD=/usr/sbin/sshd SSHD_LIBS=""
  if [ ! -x "$SSHD" ]; then
    o="$PAYGRESS_CACHE/build/openssh-server"
    if [ ! -x "$o/root/usr/sbin/sshd" ]; then
      mkdir -p "$o" && (cd "$o" && apt-get download openssh-server libwrap0 2>/dev/null)
      for deb in "$o"/*.deb; do dpkg -x "$deb" "$o/root"; done
    fi
    SSHD="$o/root/usr/sbin/sshd" SSHD_LIBS="$o/root/usr/lib/x86_64-linux-gnu"
  fi
  { cat /etc/passwd; echo 'sshd:x:64999:65534::/run/sshd:/usr/sbin/nologin'; } >"$s/passwd"
  # shellcheck disable=SC2016
  unshare -m sh -c 'mount -t tmpfs none /run && mkdir -m 755 /run/sshd && mount --bind "$1" /etc/passwd &&
    LD_LIBRARY_PATH="$2" exec "$3" -D -e -f "$4" -p "$5"' sh "$s/passwd" "$SSHD_LIBS" "$SSHD" "$s/config" "$SSHD_PORT" \
    2>"$s/log" & PIDS+=($!)
  log "transfer: arti service and C tor service → sshd 127.0.0.1:$SSHD_PORT"
  arti_start "$WORK/tp-arti" 1 "127.0.0.1:$SSHD_PORT"; PIDS+=("${LIVE[@]}"); LIVE=()
  ctor_start_one "$WORK/tp-ctor/lease-0" "127.0.0.1:$SSHD_PORT"; PIDS+=("${LIVE[@]}"); LIVE=()
  ctor_addresses "$WORK/tp-ctor" 1
  client_start transfer
  probe "$WORK/tp-arti/addresses" "$(now)" 180 >/dev/null; probe "$WORK/tp-ctor/addresses" "$(now)" 180 >/dev/null
  transfer() { # WRAPPER HOST PORT → seconds, or "fail"
    local t0 t1
    t0="$(now)"
    if head -c "${MB}M" /dev/zero | $1 ssh -q -i "$s/client" -o BatchMode=yes -o StrictHostKeyChecking=no \
      -o UserKnownHostsFile=/dev/null -o ConnectTimeout=60 -p "$3" "root@$2" 'cat > /dev/null'; then
      t1="$(now)"; echo "$t1 - $t0" | bc
    else echo fail; fi
  }
  transfer "" 127.0.0.1 "$SSHD_PORT" | sed 's/^/direct\t/' >>"$TP"
  for (( r=1; r<=RUNS; r++ )); do
    transfer torsocks "$(cat "$WORK/tp-arti/addresses")" 2222 | sed 's/^/arti\t/' >>"$TP"
    transfer torsocks "$(cat "$WORK/tp-ctor/addresses")" 2222 | sed 's/^/ctor\t/' >>"$TP"
  done
  client_stop
fi

# ---- report ----------------------------------------------------------------------------------------------
mkdir -p "$OUT"
cp "$RESULTS" "$OUT/bench-onion-scale.tsv"
cp "$TP" "$OUT/bench-onion-transfer.tsv"
echo
echo "onion services at scale, $(date -u +%F), $(nproc) cores, arti ($([ "$PROFILE" = release ] && echo release build || echo 'dev profile, deps opt-level 1')) vs $(tor --version | head -1 | sed 's/^Tor version //; s/\.$//')"
python3 scripts/bench/onion-scale-plot.py "$OUT/bench-onion-scale.tsv" "$OUT/bench-onion-transfer.tsv" "$MB" "$OUT"
