# scripts/stack.d/nostr.sh — an independent Nostr relay (PyPI nostr-relay, Python) and the `nak` CLI.
# Sourced by scripts/stack (needs scripts/lib.sh). The relay binds $STACK_ADDR only (127.0.0.1 on the main stack,
# the bridge address 198.18.0.1 on the real node's instance).
#
#   relay  ws://$STACK_ADDR:$PORT_RELAY   nostr-relay 1.14 (uvicorn, sqlite under $STACK_DIR/nostr)
#          config generated at $STACK_DIR/nostr/config.yaml on every `up`: no auth, signatures checked,
#          content up to 256 KiB, events up to 1 year old (NIP-59 gift wraps backdate created_at by up to
#          2 days) and up to 1 h in the future, 256 subscriptions per connection, 10000 events per REQ.
#          Replaceable (0, 3, 10000–19999) and addressable (30000–39999, by d tag) kinds are replaced,
#          ephemeral kinds 20000–29999 are not kept, kind 5 deletes; other kinds (1000–1002, 1059, …)
#          are stored as is. NIP-40: an event already expired when published is refused ("invalid: event
#          expired at …"); one that expires later is deleted by the relay's garbage collector, which runs
#          every 2 s (so an expired event can still be served for up to ~2 s).
#   nak    `nak-compat`, a stand-in for fiatjaf's nak built from scripts/stack.d/nak-compat (Go, on
#          go-nostr v0.38.2): the Go module proxy refuses github.com/fiatjaf/nak (403 for every version).
#          It keeps nak's command line for: event, req, key generate|public, encode, decode, verify
#          (see the comment at the top of nak-compat/main.go for the flags).
#
# `scripts/stack env` prints (nostr_env):
#   NOSTR_RELAYS   ws://$STACK_ADDR:$PORT_RELAY  (space-separated list; one relay here)
#   PATH           nak's bin dir and the relay venv's bin (`nostr-relay`) first
# Data persists across `down`/`up`; delete $STACK_DIR/nostr to start from an empty relay.

NOSTR_RELAY_VERSION=1.14
NOSTR_RELAY_VENV="$BUILD_DIR/nostr-relay-$NOSTR_RELAY_VERSION/venv"
# The relay's dependencies as they worked on 2026-11-24 (newer uvicorn/websockets releases may break it).
NOSTR_RELAY_PINS=(uvicorn==0.54.0 websockets==17.4 SQLAlchemy==2.1.9 aiosqlite==0.22.1 alembic==1.20.1
  aionostr==0.20.0 falcon==4.4.0 coincurve==21.0.0 PyYAML==6.0.3)
NAK_SRC="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/nak-compat"
NAK_VERSION=0.1.0
NOSTR_STATE="$STACK_DIR/nostr"

# The build dir is keyed by version and a hash of the sources, so an edit of nak-compat rebuilds it.
_nak_bin_dir() {
  local h
  h="$(cat "$NAK_SRC/go.mod" "$NAK_SRC/go.sum" "$NAK_SRC/main.go" | sha256sum | cut -c1-10)"
  echo "$BUILD_DIR/nak-compat-$NAK_VERSION-$h/bin"
}

nostr_install() {
  local logf="$LOG_DIR/nostr-install.log" bindir
  if ! { [ -x "$NOSTR_RELAY_VENV/bin/nostr-relay" ] &&
         "$NOSTR_RELAY_VENV/bin/python" -c 'import nostr_relay.web, importlib.metadata as m, sys; sys.exit(m.version("nostr-relay") != "'"$NOSTR_RELAY_VERSION"'")' >/dev/null 2>&1; }; then
    log "nostr: installing nostr-relay $NOSTR_RELAY_VERSION into $NOSTR_RELAY_VENV"
    rm -rf "$NOSTR_RELAY_VENV"
    mkdir -p "$(dirname "$NOSTR_RELAY_VENV")"
    { "$(command -v python3.11 || command -v python3)" -m venv "$NOSTR_RELAY_VENV" &&
      nice "$NOSTR_RELAY_VENV/bin/pip" install --no-input "nostr-relay==$NOSTR_RELAY_VERSION" "${NOSTR_RELAY_PINS[@]}"; } \
      >"$logf" 2>&1 || fail nostr "$logf" "pip install nostr-relay==$NOSTR_RELAY_VERSION failed"
  fi
  _nostr_patch_relay >>"$logf" 2>&1 || fail nostr "$logf" "patching nostr-relay $NOSTR_RELAY_VERSION failed"
  bindir="$(_nak_bin_dir)"
  if ! [ -x "$bindir/nak" ] || ! "$bindir/nak" --version >/dev/null 2>&1; then
    log "nostr: building nak-compat $NAK_VERSION into $bindir"
    mkdir -p "$bindir"
    ( cd "$NAK_SRC" && GOFLAGS=-mod=readonly nice go build -trimpath -o "$bindir/nak.tmp" . ) >>"$logf" 2>&1 ||
      fail nostr "$logf" "go build of nak-compat failed"
    mv "$bindir/nak.tmp" "$bindir/nak"
  fi
}

# nostr-relay 1.14 answers a refused EVENT with ["OK", "", false, reason] (empty event id, so clients
# keyed by id time out instead of seeing the refusal) and then throttles that connection, doubling a
# sleep before every later message (1 s, 2 s, 4 s, …). Patch both in our venv (idempotent).
_nostr_patch_relay() {
  "$NOSTR_RELAY_VENV/bin/python" - "$NOSTR_RELAY_VENV" <<'PYEOF'
import pathlib, sys
import nostr_relay
web = pathlib.Path(nostr_relay.__file__).parent / "web.py"
src = web.read_text()
if "# paygress-patched" in src:
    sys.exit(0)
old_throttle = "                        throttle = max(throttle, 1) * 2\n"
old_id = '                        eventid = ""\n'
new_id = ('                        eventid = (message[1].get("id") or "") if isinstance(message[1], dict) else ""'
          '  # paygress-patched\n')
if src.count(old_throttle) != 1 or src.count(old_id) != 2:
    sys.exit(f"nostr_relay/web.py is not the expected 1.14 code: cannot patch {web}")
src = src.replace(old_throttle, "                        pass  # paygress-patched: no throttling after a refused event\n")
src = src.replace(old_id, new_id)
web.write_text(src)
PYEOF
}

_nostr_write_config() {
  mkdir -p "$NOSTR_STATE/plugins"
  # NIP-40: "relays SHOULD drop events that are published to them if they are expired"; nostr-relay
  # itself only garbage-collects them later.
  cat > "$NOSTR_STATE/plugins/paygress_relay_validators.py" <<'PYEOF'
# generated by scripts/stack.d/nostr.sh
from time import time

from nostr_relay.errors import StorageError


def is_not_expired(event, config):
    for tag in event.tags:
        if len(tag) > 1 and tag[0] == "expiration":
            try:
                exp = int(tag[1])
            except ValueError:
                raise StorageError(f"invalid: bad expiration tag {tag[1]!r}")
            if exp <= time():
                raise StorageError(f"invalid: event expired at {exp}")
PYEOF
  cat > "$NOSTR_STATE/config.yaml" <<EOF
# generated by scripts/stack.d/nostr.sh on every up; edits are lost
DEBUG: false
relay_name: paygress test relay
relay_description: local relay for the paygress test stack
sysop_pubkey: ''
sysop_contact: ''
storage:
  sqlalchemy.url: sqlite+aiosqlite:///$NOSTR_STATE/nostr.sqlite3
  num_concurrent_reqs: 10
  num_concurrent_adds: 2
  validators:
    - nostr_relay.validators.is_not_too_large
    - nostr_relay.validators.is_signed
    - nostr_relay.validators.is_recent
    - paygress_relay_validators.is_not_expired
verification:
  nip05_verification: disabled
  expiration: 2592000
  update_frequency: 3600
gunicorn:
  bind: $STACK_ADDR:$PORT_RELAY
  host: $STACK_ADDR
  workers: 1
  loglevel: warning
  reload: false
authentication:
  enabled: false
garbage_collector:
  collect_interval: 2
message_timeout: 3600
subscription_limit: 256
max_limit: 10000
max_event_size: 262144
oldest_event: 31536000
hellthread_limit: 0
EOF
}

nostr_up() {
  is_running nostr-relay && return 0
  stack_addr_check nostr
  if tcp_open "$PORT_RELAY" "$STACK_ADDR"; then
    fail nostr "$LOG_DIR/nostr-relay.log" "port $PORT_RELAY is taken by a process that is not ours"
  fi
  _nostr_write_config
  ( cd "$NOSTR_STATE" && start_proc nostr-relay \
      env HOME="$NOSTR_STATE" PYTHONUNBUFFERED=1 PYTHONPATH="$NOSTR_STATE/plugins" \
      "$NOSTR_RELAY_VENV/bin/nostr-relay" -c "$NOSTR_STATE/config.yaml" serve --use-uvicorn )
}

# _nostr_ws_ok: the relay completes a websocket handshake (HTTP 101) on $STACK_ADDR:$PORT_RELAY.
_nostr_ws_ok() {
  ( exec 3<>"/dev/tcp/$STACK_ADDR/$PORT_RELAY" || exit 1
    printf 'GET / HTTP/1.1\r\nHost: %s:%s\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: cGF5Z3Jlc3Mtc3RhY2stMQ==\r\n\r\n' "$STACK_ADDR" "$PORT_RELAY" >&3
    IFS= read -r -t 3 line <&3 || exit 1
    [[ "$line" == "HTTP/1.1 101"* ]] ) 2>/dev/null
}

nostr_wait() {
  local logf="$LOG_DIR/nostr-relay.log" deadline=$(( $(date +%s) + 60 ))
  until _nostr_ws_ok; do
    is_running nostr-relay || fail nostr "$logf" "relay exited during start"
    [ "$(date +%s)" -lt "$deadline" ] || fail nostr "$logf" "relay ws://$STACK_ADDR:$PORT_RELAY accepts no websocket after 60s"
    sleep 0.5
  done
}

nostr_down() { stop_proc nostr-relay; }

nostr_status() { is_running nostr-relay && _nostr_ws_ok; }

nostr_env() {
  echo "export NOSTR_RELAYS=ws://$STACK_ADDR:$PORT_RELAY"
  echo "export PATH='$(_nak_bin_dir)':'$NOSTR_RELAY_VENV/bin':\$PATH"
}
