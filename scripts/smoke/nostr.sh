#!/usr/bin/env bash
# Smoke test of the Nostr relay and the `nak` CLI (scripts/stack.d/nostr.sh).
# Needs the env of `scripts/stack env` (NOSTR_RELAYS, PATH with nak).
# With a fresh key: a kind-1 "hello" published by `nak event` reads back with `nak req -k 1 -a PUBKEY`;
# a kind-1000 event with 10 KiB of content round-trips intact; a kind-1059 event backdated by 2 days
# (as NIP-59 gift wraps are) is accepted and found by its p tag; an already expired event (NIP-40) is
# refused with its reason.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=scripts/lib.sh
. "$HERE/../lib.sh"

LOGF="$LOG_DIR/nostr-relay.log"
: "${NOSTR_RELAYS:?NOSTR_RELAYS unset: source the output of scripts/stack env first}"
RELAY="${NOSTR_RELAYS%% *}"
command -v nak >/dev/null || fail nostr "$LOG_DIR/nostr-install.log" "nak is not on PATH"

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

sec="$(nak key generate)"
pub="$(nak key public "$sec")"
[[ "$pub" =~ ^[0-9a-f]{64}$ ]] || fail nostr "$LOGF" "nak key public gave '$pub'"

# publish EVENT-ARGS...: nak event ... $RELAY, prints the event JSON; fails naming the relay log.
publish() {
  local out
  out="$(timeout 30 nak event --sec "$sec" "$@" "$RELAY" 2>"$tmp/pub.err" </dev/null)" ||
    fail nostr "$LOGF" "nak event $* $RELAY failed: $(cat "$tmp/pub.err")"
  grep -q 'success' "$tmp/pub.err" || fail nostr "$LOGF" "relay did not accept the event: $(cat "$tmp/pub.err")"
  printf '%s\n' "$out"
}

# fetch REQ-ARGS...: nak req ... $RELAY, prints the events (one JSON per line).
fetch() {
  timeout 30 nak req "$@" "$RELAY" 2>"$tmp/req.err" </dev/null ||
    fail nostr "$LOGF" "nak req $* $RELAY failed: $(cat "$tmp/req.err")"
}

# 1. kind 1 "hello"
ev="$(publish --kind 1 -c hello)"
id="$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["id"])' "$ev")"
got="$(fetch -k 1 -a "$pub")"
python3 - "$got" "$id" "$pub" <<'PYEOF' || fail nostr "$LOGF" "kind-1 event $id not read back from $RELAY: $got"
import json, sys
lines = [json.loads(l) for l in sys.argv[1].splitlines() if l.strip()]
ok = [e for e in lines if e["id"] == sys.argv[2] and e["content"] == "hello" and e["pubkey"] == sys.argv[3] and e["kind"] == 1]
sys.exit(0 if len(ok) == 1 and len(lines) == 1 else 1)
PYEOF
echo "nostr smoke: kind 1 round-trip ok ($id)"

# 2. kind 1000 with 10 KiB of content
python3 -c 'import secrets; print(secrets.token_hex(5120), end="")' > "$tmp/content"
[ "$(wc -c < "$tmp/content")" -eq 10240 ] || fail nostr "$LOGF" "could not make the 10 KiB content"
ev="$(publish -k 1000 -c "@$tmp/content" -t d=smoke)"
id="$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["id"])' "$ev")"
fetch -k 1000 -a "$pub" > "$tmp/got1000"
python3 - "$tmp/got1000" "$id" "$tmp/content" <<'PYEOF' || fail nostr "$LOGF" "10 KiB kind-1000 event $id did not round-trip through $RELAY"
import json, sys
lines = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
want = open(sys.argv[3]).read()
sys.exit(0 if any(e["id"] == sys.argv[2] and e["content"] == want and len(e["content"]) == 10240 for e in lines) else 1)
PYEOF
echo "nostr smoke: kind 1000 with 10 KiB content round-trip ok ($id)"

# 3. kind 1059 backdated by 2 days, found by #p
other="$(nak key public "$(nak key generate)")"
ev="$(publish -k 1059 -c wrapped -p "$other" --created-at "$(( $(date +%s) - 2*86400 ))")"
id="$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["id"])' "$ev")"
fetch -k 1059 -p "$other" | grep -q "\"id\":\"$id\"" ||
  fail nostr "$LOGF" "backdated kind-1059 event $id not found by #p on $RELAY"
echo "nostr smoke: backdated kind 1059 ok ($id)"
# 4. NIP-40: an already expired event is refused with a reason (not silently, not after a timeout)
if timeout 30 nak event --sec "$sec" -k 1 -c expired -t "expiration=$(( $(date +%s) - 60 ))" "$RELAY" \
    >/dev/null 2>"$tmp/exp.err" </dev/null; then
  fail nostr "$LOGF" "relay accepted an event whose expiration tag has passed"
fi
grep -q 'expired' "$tmp/exp.err" || fail nostr "$LOGF" "expired event refused without the reason: $(cat "$tmp/exp.err")"
echo "nostr smoke: expired event refused ok"
echo "nostr smoke: OK"
