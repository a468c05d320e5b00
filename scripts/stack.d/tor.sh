# scripts/stack.d/tor.sh — a private Tor network on $STACK_ADDR (sourced by scripts/stack after scripts/lib.sh).
#
# 3 directory authorities, 5 relays, 1 exit and 1 client (SocksPort $STACK_ADDR:$PORT_TOR_SOCKS), all Debian C tor
# with the TestingTorNetwork options. Every server node is a directory cache and HSDir. The exit accepts
# 127.0.0.0/8 only on the main stack (STACK_ADDR 127.0.0.1); on another address (the real node's bridge,
# 198.18.0.1) it accepts that address only: pods reach the SocksPort there, and an exit into the host's loopback
# would hand them the node's control plane (etcd, API server, registry).
#
# State: $STACK_DIR/tor/
#   torrc.network           shared network options + DirAuthority lines (%include'd by every node and
#                           by anything else that wants to join, e.g. scripts/smoke/tor.sh)
#   nodes/<name>/torrc      per-node config; nodes/<name>/data = DataDirectory (keys/ kept across runs)
#   arti-network.toml       arti-client 0.47 config fragment for this network
#   torsocks.conf           torsocks config pointing at the client SocksPort
#   network.json            machine-readable node table (fingerprints, ports)
# Ports (in the PORT_TOR_BASE..+99 range owned by tor, 25000.. on the main stack): node i has ORPort BASE+i and
# DirPort BASE+20+i on $STACK_ADDR, ControlPort BASE+40+i (no auth) always on 127.0.0.1 (only these scripts use
# it; never on the bridge, where pods could reconfigure tor). BASE+60..69 are left for scripts/smoke/tor.sh.
#
# Shared random: authorities get a seeded sr-state on a cold start (_tor_seed_srv), so arti onion
# services see both SRVs in the first consensus.
#
# Start-up: servers first; the client only once the authorities serve a consensus listing every relay
# (tor_wait), at which point the relays get SIGHUP so they drop their 404 back-off. Usable (client at
# 100%, 9 HSDirs, all descriptors, every relay with a consensus) ~13-31 s after a cold start, depending
# on where in the 20 s voting cycle it starts; key generation adds ~9 s on the very first run.
#
# Keys are generated once and reused; only caches/state are wiped when the network is (re)started from
# fully down, so a consensus left over from a long downtime never confuses anyone, while fingerprints
# (and hence arti-network.toml) stay stable across runs.

TOR_DIR="$STACK_DIR/tor"
TOR_GEN_VERSION=1                       # bump when the node table or key layout changes
TOR_PASSPHRASE="paygress-test-network"  # authority identity keys (test only)
TOR_VOTING_INTERVAL=20                  # seconds; arti hsdir_interval = 24 * this / 60 minutes
TOR_WAIT_TIMEOUT="${TOR_WAIT_TIMEOUT:-240}"
# name:role, index = position
TOR_NODES=(auth0:auth auth1:auth auth2:auth relay3:relay relay4:relay relay5:relay relay6:relay relay7:relay
           exit8:exit client9:client)
TOR_CLIENT=client9
# HSDirs the client's consensus must list before the network counts as usable (all 9 servers by default).
TOR_MIN_HSDIRS="${TOR_MIN_HSDIRS:-9}"

tor_or_port()   { echo $(( PORT_TOR_BASE + $1 )); }
tor_dir_port()  { echo $(( PORT_TOR_BASE + 20 + $1 )); }
tor_ctl_port()  { echo $(( PORT_TOR_BASE + 40 + $1 )); }
tor_node_name() { echo "${TOR_NODES[$1]%%:*}"; }
tor_node_role() { echo "${TOR_NODES[$1]##*:}"; }
tor_node_dir()  { echo "$TOR_DIR/nodes/$(tor_node_name "$1")"; }
tor_proc()      { echo "tor-$(tor_node_name "$1")"; }
tor_any_running() { local i; for i in "${!TOR_NODES[@]}"; do is_running "$(tor_proc "$i")" && return 0; done; return 1; }
tor_client_idx() { local i; for i in "${!TOR_NODES[@]}"; do [ "$(tor_node_name "$i")" = "$TOR_CLIENT" ] && echo "$i"; done; }

tor_install() {
  if command -v tor >/dev/null && command -v tor-gencert >/dev/null && command -v torsocks >/dev/null &&
     command -v curl >/dev/null; then
    return 0
  fi
  local pkgs=(tor torsocks curl) ilog="$LOG_DIR/tor-install.log"
  log "tor: apt-get install ${pkgs[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get install -y "${pkgs[@]}" >"$ilog" 2>&1 ||
    { DEBIAN_FRONTEND=noninteractive apt-get update >>"$ilog" 2>&1 &&
      DEBIAN_FRONTEND=noninteractive apt-get install -y "${pkgs[@]}" >>"$ilog" 2>&1; } ||
    fail tor "$ilog" "apt-get install ${pkgs[*]} failed"
  # Debian's package may start a system tor (SocksPort 9050); it is not ours and does not conflict.
}

# tor_ctl PORT COMMAND...: send commands to a node's control port (no auth), print the reply.
tor_ctl() {
  local port="$1"; shift
  local req="AUTHENTICATE\r\n" c
  for c in "$@"; do req+="$c\r\n"; done
  req+="QUIT\r\n"
  timeout 5 bash -c 'exec 3<>"/dev/tcp/127.0.0.1/$1" || exit 1; printf "$2" >&3; cat <&3' _ "$port" "$req" 2>/dev/null
}

# ---- key generation -----------------------------------------------------------------------------------

# _tor_keys_valid: every node has its keys and every authority certificate is valid for 7 more days.
_tor_keys_valid() {
  [ "$(cat "$TOR_DIR/gen-version" 2>/dev/null)" = "$TOR_GEN_VERSION" ] || return 1
  local i d
  for i in "${!TOR_NODES[@]}"; do
    d="$(tor_node_dir "$i")/data"
    [ "$(tor_node_role "$i")" = client ] && continue
    [ -s "$d/keys/secret_id_key" ] && [ -s "$d/keys/ed25519_master_id_secret_key" ] &&
      [ -s "$d/fingerprint" ] && [ -s "$d/fingerprint-ed25519" ] || return 1
    if [ "$(tor_node_role "$i")" = auth ]; then
      [ -s "$d/keys/authority_identity_key" ] && [ -s "$d/keys/authority_signing_key" ] &&
        [ -s "$d/keys/authority_certificate" ] || return 1
      # the certificate names the authority's DirPort address (tor-gencert -a): regenerate if STACK_ADDR moved
      grep -qx "dir-address $STACK_ADDR:$(tor_dir_port "$i")" "$d/keys/authority_certificate" || return 1
    fi
  done
}

# _tor_renew_certs: re-sign an authority signing key that expires within 7 days (identity stays the same).
_tor_renew_certs() {
  local i d exp
  for i in "${!TOR_NODES[@]}"; do
    [ "$(tor_node_role "$i")" = auth ] || continue
    d="$(tor_node_dir "$i")/data/keys"
    exp="$(sed -n 's/^dir-key-expires //p' "$d/authority_certificate")"
    if [ "$(date -u -d "$exp" +%s)" -lt $(( $(date +%s) + 7*86400 )) ]; then
      log "tor: renewing authority signing key of $(tor_node_name "$i")"
      echo "$TOR_PASSPHRASE" | tor-gencert -m 12 -a "$STACK_ADDR:$(tor_dir_port "$i")" \
        -i "$d/authority_identity_key" -s "$d/authority_signing_key" -c "$d/authority_certificate" \
        --passphrase-fd 0 >>"$LOG_DIR/tor-gen.log" 2>&1 || fail tor "$LOG_DIR/tor-gen.log" "tor-gencert failed"
    fi
  done
}

_tor_generate_keys() {
  log "tor: generating keys for ${#TOR_NODES[@]} nodes"
  local i d name genlog="$LOG_DIR/tor-gen.log"
  : >"$genlog"
  rm -rf "$TOR_DIR/nodes"
  for i in "${!TOR_NODES[@]}"; do
    name="$(tor_node_name "$i")"; d="$(tor_node_dir "$i")/data"
    mkdir -p "$d"; chmod 700 "$d"
    [ "$(tor_node_role "$i")" = client ] && continue
    mkdir -p "$d/keys"; chmod 700 "$d/keys"
    if [ "$(tor_node_role "$i")" = auth ]; then
      echo "$TOR_PASSPHRASE" | tor-gencert --create-identity-key -m 12 -a "$STACK_ADDR:$(tor_dir_port "$i")" \
        -i "$d/keys/authority_identity_key" -s "$d/keys/authority_signing_key" \
        -c "$d/keys/authority_certificate" --passphrase-fd 0 >>"$genlog" 2>&1 ||
        fail tor "$genlog" "tor-gencert failed for $name"
    fi
    # Relay identity (RSA + ed25519) keys; writes fingerprint and fingerprint-ed25519.
    echo >"$TOR_DIR/empty.torrc"
    tor --list-fingerprint -f "$TOR_DIR/empty.torrc" --DataDirectory "$d" --Nickname "pg$name" \
      --ORPort "$STACK_ADDR:$(tor_or_port "$i")" --Address "$STACK_ADDR" --ContactInfo test@localhost \
      --DirAuthority "x orport=1 no-v2 v3ident=0000000000000000000000000000000000000000 $STACK_ADDR:1 0000000000000000000000000000000000000000" \
      >>"$genlog" 2>&1 || fail tor "$genlog" "tor --list-fingerprint failed for $name"
    rm -f "$d/lock"
  done
  echo "$TOR_GEN_VERSION" >"$TOR_DIR/gen-version"
}

# ---- configuration ------------------------------------------------------------------------------------

_tor_rsa_fp()  { awk '{print $2}' "$(tor_node_dir "$1")/data/fingerprint"; }
_tor_ed_fp()   { awk '{print $2}' "$(tor_node_dir "$1")/data/fingerprint-ed25519"; }
_tor_v3ident() { sed -n 's/^fingerprint //p' "$(tor_node_dir "$1")/data/keys/authority_certificate"; }

# _tor_write FILE: write stdin to FILE only if the content changed (returns 0 if changed).
_tor_write() {
  local tmp="$1.tmp.$$"
  cat >"$tmp"
  if [ -f "$1" ] && cmp -s "$tmp" "$1"; then rm -f "$tmp"; return 1; fi
  mv "$tmp" "$1"
}

_tor_write_configs() {
  local i name role d changed
  : >"$TOR_DIR/empty.geoip"
  {
    echo "# generated by scripts/stack.d/tor.sh — the private Paygress test network"
    echo "TestingTorNetwork 1"
    echo "PathsNeededToBuildCircuits 0.67"
    echo "ClientUseIPv6 0"
    echo "# no GeoIP parsing: saves ~2-3 s of CPU per tor at start"
    echo "GeoIPFile $TOR_DIR/empty.geoip"
    echo "GeoIPv6File $TOR_DIR/empty.geoip"
    echo "# fetch each new consensus right after it is published (plain clients wait until it is"
    echo "# almost stale: up to ~19 s of a 20 s voting interval)"
    echo "FetchDirInfoEarly 1"
    echo "FetchDirInfoExtraEarly 1"
    for i in "${!TOR_NODES[@]}"; do
      [ "$(tor_node_role "$i")" = auth ] || continue
      echo "DirAuthority pg$(tor_node_name "$i") orport=$(tor_or_port "$i") no-v2 v3ident=$(_tor_v3ident "$i") $STACK_ADDR:$(tor_dir_port "$i") $(_tor_rsa_fp "$i")"
    done
  } | _tor_write "$TOR_DIR/torrc.network" && changed=1 || changed=0
  if [ "$changed" = 1 ] && tor_any_running; then
    log "tor: network options changed, restarting the whole network"
    tor_down
  fi

  for i in "${!TOR_NODES[@]}"; do
    name="$(tor_node_name "$i")"; role="$(tor_node_role "$i")"; d="$(tor_node_dir "$i")"
    {
      echo "%include $TOR_DIR/torrc.network"
      echo "Nickname pg$name"
      echo "DataDirectory $d/data"
      echo "RunAsDaemon 0"
      echo "Log notice stdout"
      echo "SafeLogging 0"
      echo "LogTimeGranularity 1"
      echo "ShutdownWaitLength 0"
      echo "ControlPort 127.0.0.1:$(tor_ctl_port "$i")"
      echo "CookieAuthentication 0"
      echo "ContactInfo paygress-test-$name@localhost"
      if [ "$role" = client ]; then
        echo "SocksPort $STACK_ADDR:$PORT_TOR_SOCKS"
        # Microdescriptor exit-policy summaries only count accepts of the whole internet (tor #11264),
        # so "accept 127.0.0.0/8:*" summarises to "reject 1-65535" and a microdesc client finds no
        # exit at all. Full descriptors carry the real policy.
        echo "UseMicrodescriptors 0"
      else
        echo "SocksPort 0"
        echo "Address $STACK_ADDR"
        echo "ORPort $STACK_ADDR:$(tor_or_port "$i")"
        echo "DirPort $STACK_ADDR:$(tor_dir_port "$i")"
        echo "AssumeReachable 1"
        echo "DirCache 1"
      fi
      case "$role" in
        auth)
          echo "AuthoritativeDirectory 1"
          echo "V3AuthoritativeDirectory 1"
          echo "TestingDirAuthVoteExit *"
          echo "TestingDirAuthVoteHSDir *"
          echo "TestingDirAuthVoteGuard *"
          echo "TestingMinExitFlagThreshold 0"
          echo "AuthDirMaxServersPerAddr 0"
          echo "V3AuthVotingInterval $TOR_VOTING_INTERVAL"
          echo "V3AuthVoteDelay 4"
          echo "V3AuthDistDelay 4"
          echo "V3AuthNIntervalsValid 2"
          echo "TestingV3AuthInitialVotingInterval $TOR_VOTING_INTERVAL"
          echo "TestingV3AuthInitialVoteDelay 4"
          echo "TestingV3AuthInitialDistDelay 4"
          # Circuit-build timeouts are learned (80th percentile of recent builds). On loopback builds take
          # ~50 ms, so clients learn ~100 ms; a load spike (a provider restoring 500 onion services) then
          # times out nearly every build, marks every guard down and stalls all publication (arti's
          # hspool: "Too many preemptive onion service circuits failed"). The live network's builds take
          # seconds; this floor gives the private network a live-like timeout.
          echo "ConsensusParams cbtmintimeout=2000"
          echo "ExitRelay 0"
          echo "ExitPolicy reject *:*" ;;
        relay)
          echo "ExitRelay 0"
          echo "ExitPolicy reject *:*" ;;
        exit)
          echo "ExitRelay 1"
          echo "ExitPolicyRejectPrivate 0"
          echo "ExitPolicyRejectLocalInterfaces 0"
          # loopback on the main stack; elsewhere the stack's address only (see the header)
          if [[ "$STACK_ADDR" == 127.* ]]; then echo "ExitPolicy accept 127.0.0.0/8:*"
          else echo "ExitPolicy accept $STACK_ADDR/32:*"; fi
          echo "ExitPolicy reject *:*" ;;
      esac
    } | _tor_write "$d/torrc" && changed=1 || changed=0
    if [ "$changed" = 1 ] && is_running "$(tor_proc "$i")"; then
      log "tor: config of $name changed, restarting it"
      stop_proc "$(tor_proc "$i")"
    fi
  done

  _tor_write_arti_toml | _tor_write "$TOR_DIR/arti-network.toml" || true
  _tor_write_network_json | _tor_write "$TOR_DIR/network.json" || true
  _tor_write "$TOR_DIR/torsocks.conf" <<EOF || true
# generated by scripts/stack.d/tor.sh — torsocks through the private network's client
TorAddress $STACK_ADDR
TorPort $PORT_TOR_SOCKS
OnionAddrRange 127.42.42.0/24
# let programs under torsocks still reach local services directly (never through Tor)
AllowOutboundLocalhost 1
EOF
}

# arti-client 0.47 TorClientConfig fragment (TOML). Authorities use the prop330 form of
# tor-dircommon's AuthorityContacts (v3idents + uploads/downloads/votes, each a list per authority of
# "ip:dirport" lists); fallback_caches and authorities must be overridden together.
_tor_write_arti_toml() {
  local i first role auths=() caches=()
  for i in "${!TOR_NODES[@]}"; do
    role="$(tor_node_role "$i")"
    [ "$role" = client ] && continue
    caches+=("$i")
    [ "$role" = auth ] && auths+=("$i")
  done
  echo "# generated by scripts/stack.d/tor.sh — arti-client 0.47 config fragment for the private Tor network"
  echo "# (merge into TorClientConfig; storage/keystore settings are up to the user)"
  echo
  echo "[tor_network]"
  echo "fallback_caches = ["
  for i in "${caches[@]}"; do
    printf '  { rsa_identity = "%s", ed_identity = "%s", orports = ["%s:%s"] },\n' \
      "$(_tor_rsa_fp "$i")" "$(_tor_ed_fp "$i")" "$STACK_ADDR" "$(tor_or_port "$i")"
  done
  echo "]"
  echo
  echo "[tor_network.authorities]"
  local key list
  list=""; for i in "${auths[@]}"; do list+="\"$(_tor_v3ident "$i")\", "; done
  echo "v3idents = [${list%, }]"
  for key in uploads downloads votes; do
    list=""; for i in "${auths[@]}"; do list+="[\"$STACK_ADDR:$(tor_dir_port "$i")\"], "; done
    echo "$key = [${list%, }]"
  done
  echo
  echo "[path_rules]"
  echo "# every relay is on $STACK_ADDR: disable the same-subnet family rule"
  echo "ipv4_subnet_family_prefix = 33"
  echo "ipv6_subnet_family_prefix = 129"
  echo
  echo "[address_filter]"
  echo "allow_local_addrs = true"
  echo
  echo "[override_net_params]"
  echo "# C tor in TestingTorNetwork mode uses a time period of 24 voting intervals; arti reads the"
  echo "# consensus parameter instead, so it must be told (minutes). Without it onion services break."
  echo "hsdir_interval = $(( 24 * TOR_VOTING_INTERVAL / 60 ))"
}

_tor_write_network_json() {
  local i sep=""
  echo "{\"voting_interval\": $TOR_VOTING_INTERVAL, \"socks\": \"$STACK_ADDR:$PORT_TOR_SOCKS\", \"nodes\": ["
  for i in "${!TOR_NODES[@]}"; do
    printf '%s  {"name": "%s", "role": "%s", "control_port": %s' "$sep" "$(tor_node_name "$i")" \
      "$(tor_node_role "$i")" "$(tor_ctl_port "$i")"
    if [ "$(tor_node_role "$i")" != client ]; then
      printf ', "or_port": %s, "dir_port": %s, "rsa_identity": "%s", "ed_identity": "%s"' \
        "$(tor_or_port "$i")" "$(tor_dir_port "$i")" "$(_tor_rsa_fp "$i")" "$(_tor_ed_fp "$i")"
    fi
    [ "$(tor_node_role "$i")" = auth ] && printf ', "v3ident": "%s"' "$(_tor_v3ident "$i")"
    printf '}'; sep=$',\n'
  done
  printf '\n]}\n'
}

# _tor_wipe_state: drop caches, consensus, shared-random and guard state; keep keys and fingerprints.
_tor_wipe_state() {
  local i d f
  for i in "${!TOR_NODES[@]}"; do
    d="$(tor_node_dir "$i")/data"
    [ -d "$d" ] || continue
    for f in "$d"/* "$d"/.[!.]*; do
      [ -e "$f" ] || continue
      # sr-state: the authorities' shared-random state. Kept so that a quick restart keeps the SRVs
      # arti needs (see tor_srv_ready); tor itself discards it once it is out of date.
      case "$(basename "$f")" in keys|fingerprint|fingerprint-ed25519|sr-state) ;; *) rm -rf "$f" ;; esac
    done
  done
}

# _tor_seed_srv: give every authority the same shared-random state (previous + current SRV) unless it
# has a valid one. tor accepts a state file whose ValidUntil is still ahead, so the very first consensus
# carries both SRVs and arti onion services reach Running at once instead of after 8-16 minutes (see
# tor_srv_ready). The values are fixed test constants; all authorities must agree on them.
_tor_seed_srv() {
  local i f now until va b prev cur
  now=$(date +%s)
  b=$(( (now / (24 * TOR_VOTING_INTERVAL) + 1) * 24 * TOR_VOTING_INTERVAL ))   # next SR run boundary
  until=$(( b - TOR_VOTING_INTERVAL ))
  [ "$until" -gt $(( now + 10 )) ] || until=$(( until + 24 * TOR_VOTING_INTERVAL ))
  va=$(( now / TOR_VOTING_INTERVAL * TOR_VOTING_INTERVAL ))
  prev="$(printf 'paygress-test-srv-previous' | sha256sum | cut -c1-64 | xxd -r -p | base64)"
  cur="$(printf 'paygress-test-srv-current' | sha256sum | cut -c1-64 | xxd -r -p | base64)"
  for i in "${!TOR_NODES[@]}"; do
    [ "$(tor_node_role "$i")" = auth ] || continue
    f="$(tor_node_dir "$i")/data/sr-state"
    if [ -f "$f" ]; then
      local vu; vu="$(sed -n 's/^ValidUntil //p' "$f")"
      if [ -n "$vu" ] && [ "$(date -u -d "$vu" +%s 2>/dev/null || echo 0)" -gt $(( now + 10 )) ]; then continue; fi
    fi
    {
      echo "# Tor shared random state file (seeded by scripts/stack.d/tor.sh for the test network)"
      echo "SharedRandPreviousValue 0 $prev"
      echo "SharedRandCurrentValue 0 $cur"
      echo "TorVersion $(tor --version | sed -n '1s/^Tor version \([^ ]*\)\.$/\1/p')"
      echo "ValidAfter $(date -u -d "@$va" '+%F %T')"
      echo "ValidUntil $(date -u -d "@$until" '+%F %T')"
      echo "Version 1"
    } >"$f"
  done
}

# ---- lifecycle ----------------------------------------------------------------------------------------

tor_up() {
  stack_addr_check tor
  mkdir -p "$TOR_DIR"
  local i running=0 total=${#TOR_NODES[@]} servers_running=0
  if ! _tor_keys_valid; then
    tor_down
    _tor_generate_keys
  fi
  _tor_renew_certs
  _tor_write_configs
  for i in "${!TOR_NODES[@]}"; do is_running "$(tor_proc "$i")" && running=$((running+1)); done

  if [ "$running" -eq "$total" ]; then
    log "tor: network already running ($total nodes), reusing it"
    return 0
  fi
  if [ "$running" -eq 0 ]; then
    _tor_wipe_state
    _tor_seed_srv
    date +%s >"$TOR_DIR/started-at"
    rm -f "$TOR_DIR/usable-after"
  fi
  log "tor: starting $((total - running)) of $total nodes"
  for i in "${!TOR_NODES[@]}"; do
    [ "$(tor_node_role "$i")" = client ] && continue
    _tor_start "$i"
  done
  # The client is started once the authorities publish a consensus (tor_wait does it on a cold start):
  # a client that starts earlier gets 404s, backs off exponentially and then sits up to ~30 s on a
  # consensus that has long been available.
  if _tor_auth_consensus_ready; then _tor_start "$(tor_client_idx)"; fi
}

_tor_start() {
  is_running "$(tor_proc "$1")" && return 0
  [ "$1" = "$(tor_client_idx)" ] && _TOR_CLIENT_STARTED=1
  echo "==== $(date '+%F %T') start" >>"$LOG_DIR/$(tor_proc "$1").log"
  start_proc "$(tor_proc "$1")" tor -f "$(tor_node_dir "$1")/torrc"
}

# _tor_auth_consensus_ready: an authority serves a current consensus listing >= TOR_MIN_HSDIRS HSDirs.
_tor_auth_consensus_ready() {
  local i n
  for i in "${!TOR_NODES[@]}"; do
    [ "$(tor_node_role "$i")" = auth ] || continue
    n="$(curl -s --max-time 3 "http://$STACK_ADDR:$(tor_dir_port "$i")/tor/status-vote/current/consensus-microdesc" \
          2>/dev/null | grep -c '^s .*HSDir' || true)"
    [ "${n:-0}" -ge "$TOR_MIN_HSDIRS" ] && return 0
  done
  return 1
}

# tor_hsdir_count: number of HSDir relays in the client's current consensus.
tor_hsdir_count() {
  tor_ctl "$(tor_ctl_port "$(tor_client_idx)")" "GETINFO ns/all" | grep -c '^s .*HSDir' || true
}

# _tor_usable: client bootstrapped 100%, its consensus lists >= TOR_MIN_HSDIRS HSDirs and it holds the
# descriptors of as many relays (bootstrap only needs 67%; the one exit may be among the missing).
_tor_usable() {
  local port; port="$(tor_ctl_port "$(tor_client_idx)")"
  tor_ctl "$port" "GETINFO status/bootstrap-phase" | grep -q 'PROGRESS=100' || return 1
  [ "$(tor_hsdir_count)" -ge "$TOR_MIN_HSDIRS" ] || return 1
  [ "$(tor_ctl "$port" "GETINFO desc/all-recent" | grep -c '^router ' || true)" -ge "$TOR_MIN_HSDIRS" ] || return 1
  # every relay has a consensus too (HSDirs, intro points, the exit)
  local i
  for i in "${!TOR_NODES[@]}"; do
    [ "$(tor_node_role "$i")" = client ] && continue
    tor_ctl "$(tor_ctl_port "$i")" "GETINFO status/enough-dir-info" | grep -q 'enough-dir-info=1' || return 1
  done
}

# tor_srv_ready: the consensus carries both shared random values. Without them an arti onion service has
# only one usable time period (arti wants an SRV covering the start of a second one) and its status stays
# Bootstrapping/DegradedUnreachable although it publishes. Left alone, a fresh network gets its first
# SRV at the first SR-run boundary (runs are 24 voting intervals = 8 min, aligned to the epoch) and the
# previous one 8 min later: 8-16 min. _tor_seed_srv avoids that wait; TOR_WAIT_SRV=1 makes tor_wait
# wait for the SRVs anyway (safety net, normally instant).
tor_srv_ready() {
  local i c
  for i in "${!TOR_NODES[@]}"; do
    [ "$(tor_node_role "$i")" = auth ] || continue
    c="$(curl -s --max-time 3 "http://$STACK_ADDR:$(tor_dir_port "$i")/tor/status-vote/current/consensus-microdesc" 2>/dev/null)" || continue
    grep -q '^shared-rand-current-value' <<<"$c" && grep -q '^shared-rand-previous-value' <<<"$c" && return 0
  done
  return 1
}

tor_wait() {
  local i c clientlog="$LOG_DIR/tor-$TOR_CLIENT.log" authlog="$LOG_DIR/tor-$(tor_node_name 0).log"
  local deadline=$(( $(date +%s) + TOR_WAIT_TIMEOUT ))
  c="$(tor_client_idx)"
  until is_running "$(tor_proc "$c")" && _tor_usable; do
    for i in "${!TOR_NODES[@]}"; do
      [ "$i" = "$c" ] && continue
      is_running "$(tor_proc "$i")" ||
        fail tor "$LOG_DIR/$(tor_proc "$i").log" "tor node $(tor_node_name "$i") exited"
    done
    if ! is_running "$(tor_proc "$c")"; then
      # started by this run (a stale pid file was dropped by is_running) and gone since
      if [ -n "${_TOR_CLIENT_STARTED:-}" ]; then fail tor "$clientlog" "tor client exited"; fi
      if _tor_auth_consensus_ready; then
        log "tor: authorities published a consensus with >= $TOR_MIN_HSDIRS HSDirs after $(( $(date +%s) - $(cat "$TOR_DIR/started-at" 2>/dev/null || date +%s) ))s; starting the client"
        # Relays got 404s for the consensus until now and back off exponentially (an exit without a
        # consensus refuses streams with "misc error"); SIGHUP resets their download schedules.
        for i in "${!TOR_NODES[@]}"; do
          [ "$(tor_node_role "$i")" = relay ] || [ "$(tor_node_role "$i")" = exit ] || continue
          tor_ctl "$(tor_ctl_port "$i")" "SIGNAL RELOAD" >/dev/null || true
        done
        _tor_start "$c"
      elif [ "$(date +%s)" -ge "$deadline" ]; then
        fail tor "$authlog" "authorities published no consensus with $TOR_MIN_HSDIRS HSDirs after ${TOR_WAIT_TIMEOUT}s"
      fi
    elif [ "$(date +%s)" -ge "$deadline" ]; then
      fail tor "$clientlog" "network not usable after ${TOR_WAIT_TIMEOUT}s (client bootstrap: $(tor_ctl \
        "$(tor_ctl_port "$c")" "GETINFO status/bootstrap-phase" | grep -o 'PROGRESS=[0-9]*' || echo none), HSDirs in consensus: $(tor_hsdir_count)/$TOR_MIN_HSDIRS)"
    fi
    sleep 0.5
  done
  if [ ! -f "$TOR_DIR/usable-after" ] && [ -f "$TOR_DIR/started-at" ]; then
    echo $(( $(date +%s) - $(cat "$TOR_DIR/started-at") )) >"$TOR_DIR/usable-after"
    log "tor: network usable $(cat "$TOR_DIR/usable-after")s after start ($(tor_hsdir_count) HSDirs)"
  fi
  if tor_srv_ready; then return 0; fi
  if [ "${TOR_WAIT_SRV:-0}" = 1 ]; then
    log "tor: waiting for the shared random values (up to 17 min on a fresh network)"
    deadline=$(( $(date +%s) + 1020 ))
    until tor_srv_ready; do
      [ "$(date +%s)" -lt "$deadline" ] || fail tor "$authlog" "no shared random values in the consensus after 17 min"
      sleep 2
    done
    log "tor: shared random values present $(( $(date +%s) - $(cat "$TOR_DIR/started-at" 2>/dev/null || date +%s) ))s after start"
  else
    log "tor: note: no shared random values yet; arti onion services report Bootstrapping/DegradedUnreachable until they appear (TOR_WAIT_SRV=1 waits)"
  fi
}

tor_down() {
  local i f
  # TERM every node at once (each tor takes ~2 s to exit), then let stop_proc wait/KILL and clean up.
  for i in "${!TOR_NODES[@]}"; do
    f="$(recorded_pid "$(tor_proc "$i")")" && kill -TERM -- "-$f" 2>/dev/null || true
  done
  for (( i=${#TOR_NODES[@]}-1; i>=0; i-- )); do stop_proc "$(tor_proc "$i")"; done
}

tor_status() {
  local i
  for i in "${!TOR_NODES[@]}"; do is_running "$(tor_proc "$i")" || return 1; done
  tcp_open "$PORT_TOR_SOCKS" "$STACK_ADDR"
}

tor_env() {
  echo "export TORSOCKS_CONF_FILE='$TOR_DIR/torsocks.conf'"
  echo "export TORSOCKS_TOR_ADDRESS=$STACK_ADDR"
  echo "export TORSOCKS_TOR_PORT=$PORT_TOR_SOCKS"
  echo "export PAYGRESS_TOR_NETWORK_CONFIG='$TOR_DIR/arti-network.toml'"
  echo "export PAYGRESS_TOR_SOCKS=$STACK_ADDR:$PORT_TOR_SOCKS"
  echo "export PAYGRESS_TOR_NETWORK_TORRC='$TOR_DIR/torrc.network'"
}
