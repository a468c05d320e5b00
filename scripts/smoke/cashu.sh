#!/usr/bin/env bash
# Smoke test of the two Nutshell mints and the `cashu` wallet CLI (scripts/stack.d/cashu.sh).
# Needs the env of `scripts/stack env` (CASHU_MINT_URL, CASHU_MINT_URL_ALT, PATH with the cashu venv).
# For each mint, in a fresh wallet dir: `cashu -y invoice 1000` (FakeWallet pays), `cashu -y send 100`
# gives a cashuB token worth 100 from that mint, the mint reports its proofs UNSPENT (NUT-07
# /v1/checkstate with Y = hash_to_curve(secret)), and the keyset's input_fee_ppk is 0 on mint A and
# non-zero on mint B.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=scripts/lib.sh
. "$HERE/../lib.sh"

: "${CASHU_MINT_URL:?CASHU_MINT_URL unset: source the output of scripts/stack env first}"
: "${CASHU_MINT_URL_ALT:?CASHU_MINT_URL_ALT unset: source the output of scripts/stack env first}"
command -v cashu >/dev/null || fail cashu "$LOG_DIR/cashu-install.log" "the cashu CLI is not on PATH"
PY="$(dirname "$(command -v cashu)")/python"

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
# Nutshell reads ./.env (and ~/.cashu/.env) and lets it override the environment: run from an empty dir.
cd "$tmp"

# check_mint NAME URL FEE_EXPECTATION(zero|nonzero)
check_mint() {
  local name="$1" url="$2" fee="$3" logf="$LOG_DIR/cashu-$1.log"
  local wdir="$tmp/$name" out token
  mkdir -p "$wdir"
  curl -fsS --max-time 5 "$url/v1/info" >/dev/null 2>&1 || fail "cashu-$name" "$logf" "GET $url/v1/info failed"

  out="$(CASHU_DIR="$wdir" MINT_URL="$url" timeout 60 cashu --host "$url" -y invoice 1000 2>&1)" ||
    fail "cashu-$name" "$logf" "cashu -y invoice 1000 against $url failed or hung (60 s): $out"
  grep -q 'Balance: 1000 sat' <<<"$out" || fail "cashu-$name" "$logf" "invoice 1000 did not give a 1000 sat balance: $out"

  out="$(CASHU_DIR="$wdir" MINT_URL="$url" timeout 60 cashu --host "$url" -y send 100 2>&1)" ||
    fail "cashu-$name" "$logf" "cashu -y send 100 against $url failed: $out"
  token="$(grep -o 'cashuB[A-Za-z0-9_=-]*' <<<"$out" | head -n1 || true)"
  [ -n "$token" ] || fail "cashu-$name" "$logf" "cashu send printed no cashuB token: $out"

  # Decode the token, check mint/amount, ask the mint for the state of its proofs (NUT-07) and for the
  # fee of its keyset (NUT-02).
  out="$("$PY" - "$token" "$url" "$fee" <<'PYEOF' 2>&1
import json, sys, urllib.request
from cashu.core.base import TokenV4
from cashu.core.crypto.b_dhke import hash_to_curve

token_str, url, fee = sys.argv[1], sys.argv[2].rstrip("/"), sys.argv[3]
tok = TokenV4.deserialize(token_str)
assert tok.mint.rstrip("/") == url, f"token names mint {tok.mint}, expected {url}"
assert tok.amount == 100, f"token amount {tok.amount}, expected 100"
assert tok.unit == "sat", f"token unit {tok.unit}"
proofs = tok.proofs
ys = [hash_to_curve(p.secret.encode()).format().hex() for p in proofs]

def call(path, body=None):
    req = urllib.request.Request(url + path, method="POST" if body is not None else "GET",
                                 data=None if body is None else json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.load(r)

states = call("/v1/checkstate", {"Ys": ys})["states"]
assert len(states) == len(ys), f"checkstate answered {len(states)} states for {len(ys)} Ys"
for s in states:
    assert s["state"] == "UNSPENT", f"proof {s['Y']} is {s['state']}, expected UNSPENT"

keyset_ids = {p.id for p in proofs}
keysets = {k["id"]: k for k in call("/v1/keysets")["keysets"]}
for kid in keyset_ids:
    # TokenV4 carries v2 keyset ids shortened to 8 bytes (NUT-02): match by prefix.
    full = [k for k in keysets if k.startswith(kid)]
    assert len(full) == 1, f"keyset {kid} of the token not listed (once) by the mint: {sorted(keysets)}"
    ppk = keysets[full[0]].get("input_fee_ppk", 0)
    if fee == "zero":
        assert ppk == 0, f"keyset {kid} has input_fee_ppk={ppk}, expected 0"
    else:
        assert ppk > 0, f"keyset {kid} has input_fee_ppk={ppk}, expected > 0"
print(f"ok: {len(proofs)} proofs UNSPENT, keysets {sorted(keyset_ids)} input_fee_ppk={ppk}")
PYEOF
)" || fail "cashu-$name" "$logf" "token check against $url failed: $out"
  echo "cashu smoke: $name ($url): $out"
}

check_mint mint-a "$CASHU_MINT_URL" zero
check_mint mint-b "$CASHU_MINT_URL_ALT" nonzero
echo "cashu smoke: OK"
