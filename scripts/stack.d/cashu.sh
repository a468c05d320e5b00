# scripts/stack.d/cashu.sh — two Nutshell mints (FakeWallet Lightning backend) and the `cashu` wallet CLI.
# Sourced by scripts/stack (needs scripts/lib.sh). Both mints bind $STACK_ADDR only (127.0.0.1 on the main stack,
# the bridge address 198.18.0.1 on the real node's instance).
#
#   mint A  http://$STACK_ADDR:$PORT_MINT      the provider's whitelisted mint; input fee 0 ppk
#   mint B  http://$STACK_ADDR:$PORT_MINT_ALT  a second, non-whitelisted mint; input fee 100 ppk (unhappy paths)
#
# Both mints pay every invoice by themselves (FakeWallet, ~0.5 s after the quote) and have the IP rate
# limiter off, so tests may hit them quickly. Keys are fixed, so keyset ids are stable across restarts; the mint
# databases live under $STACK_DIR/cashu/mint-{a,b} and survive `down`/`up` (delete the dir to reset).
#
# `scripts/stack env` prints (cashu_env):
#   CASHU_MINT_URL      http://$STACK_ADDR:$PORT_MINT      (mint A, whitelisted, fee 0)
#   CASHU_MINT_URL_ALT  http://$STACK_ADDR:$PORT_MINT_ALT  (mint B, not whitelisted, fee 100 ppk)
#   CASHU_DIR           $STACK_DIR/cashu/wallet: default wallet data dir of the `cashu` CLI
#                       (use a fresh temporary dir per test to stay independent)
#   MINT_URL            = CASHU_MINT_URL: the mint the `cashu` CLI talks to unless given `--host`
#   PATH                the Nutshell venv's bin first: `cashu` (wallet CLI) and `mint`
# Wallet usage: `cashu -y invoice 1000` (FakeWallet pays it), `cashu -y send 100` prints a cashuB… token,
# `cashu -y receive <token>`; `--host $CASHU_MINT_URL_ALT` (or MINT_URL=…) selects mint B.

CASHU_VERSION=0.20.2
CASHU_VENV="$BUILD_DIR/cashu-$CASHU_VERSION/venv"
CASHU_STATE="$STACK_DIR/cashu"
# Fixed mint seeds (test-only secrets): stable keysets across restarts and machines.
CASHU_MINT_A_KEY="paygress-test-mint-a-0000000000000000000000000000000"
CASHU_MINT_B_KEY="paygress-test-mint-b-1111111111111111111111111111111"
CASHU_MINT_B_FEE_PPK=100
# Seconds before FakeWallet "pays" a new invoice. NOT 0: with 0 the paid-callback can run before the mint
# quote is stored, the mint logs "Quote not found for <id>", the quote stays UNPAID for websocket
# subscribers and `cashu invoice` hangs forever (seen on about 1 invoice in 3). Pollers of
# GET /v1/mint/quote/bolt11/<id> still see it paid (the mint asks the backend on each poll).
CASHU_FAKE_PAY_DELAY=0.5

cashu_install() {
  if "$CASHU_VENV/bin/python" -c 'import cashu.core.settings as s, sys; sys.exit(s.VERSION != "'"$CASHU_VERSION"'")' \
      >/dev/null 2>&1 && [ -x "$CASHU_VENV/bin/mint" ] && [ -x "$CASHU_VENV/bin/cashu" ]; then
    return 0
  fi
  log "cashu: installing nutshell $CASHU_VERSION into $CASHU_VENV"
  local logf="$LOG_DIR/cashu-install.log"
  rm -rf "$CASHU_VENV"
  mkdir -p "$(dirname "$CASHU_VENV")"
  # marshmallow<4 and limits<5: without them both `mint` and `cashu` crash at start (0.20.2 predates them).
  { "$(command -v python3.11 || command -v python3)" -m venv "$CASHU_VENV" &&
    nice "$CASHU_VENV/bin/pip" install --no-input "cashu==$CASHU_VERSION" "marshmallow<4" "limits<5"; } \
    >"$logf" 2>&1 || fail cashu "$logf" "pip install cashu==$CASHU_VERSION failed"
  "$CASHU_VENV/bin/cashu" --help >/dev/null 2>>"$logf" || fail cashu "$logf" "installed cashu CLI does not start"
}

# _cashu_start_mint NAME PORT PRIVATE_KEY FEE_PPK
_cashu_start_mint() {
  local name="$1" port="$2" key="$3" fee="$4"
  local dir="$CASHU_STATE/$name"
  mkdir -p "$dir/db" "$dir/home"
  is_running "cashu-$name" && return 0
  # Nutshell reads ./.env and ~/.cashu/.env and lets them OVERRIDE the environment: run in an empty
  # cwd with HOME pointing into the state dir so nothing from the developer's account leaks in.
  ( cd "$dir" && start_proc "cashu-$name" \
    env -i PATH="$CASHU_VENV/bin:/usr/bin:/bin" HOME="$dir/home" LANG=C.UTF-8 \
      DEBUG=FALSE LOG_LEVEL=INFO \
      CASHU_DIR="$dir/home/.cashu" \
      MINT_LISTEN_HOST="$STACK_ADDR" MINT_LISTEN_PORT="$port" \
      MINT_PRIVATE_KEY="$key" \
      MINT_DATABASE="$dir/db" \
      MINT_BACKEND_BOLT11_SAT=FakeWallet \
      MINT_INPUT_FEE_PPK="$fee" \
      FAKEWALLET_BRR=TRUE \
      FAKEWALLET_DELAY_INCOMING_PAYMENT="$CASHU_FAKE_PAY_DELAY" FAKEWALLET_DELAY_OUTGOING_PAYMENT=0 \
      MINT_RATE_LIMIT=FALSE \
      MINT_GLOBAL_RATE_LIMIT_PER_MINUTE=100000 MINT_TRANSACTION_RATE_LIMIT_PER_MINUTE=100000 \
      MINT_QUOTE_BACKEND_CHECK_RATE_LIMIT=0 \
      MINT_MAX_REQUEST_LENGTH=10000 \
      MINT_INFO_NAME="paygress test mint $name" \
      "$CASHU_VENV/bin/mint" )
}

cashu_up() {
  is_running cashu-mint-a && is_running cashu-mint-b && return 0
  stack_addr_check cashu
  if ! is_running cashu-mint-a && tcp_open "$PORT_MINT" "$STACK_ADDR"; then
    fail cashu "$LOG_DIR/cashu-mint-a.log" "port $PORT_MINT is taken by a process that is not ours"
  fi
  if ! is_running cashu-mint-b && tcp_open "$PORT_MINT_ALT" "$STACK_ADDR"; then
    fail cashu "$LOG_DIR/cashu-mint-b.log" "port $PORT_MINT_ALT is taken by a process that is not ours"
  fi
  mkdir -p "$CASHU_STATE/wallet"
  _cashu_start_mint mint-a "$PORT_MINT" "$CASHU_MINT_A_KEY" 0
  _cashu_start_mint mint-b "$PORT_MINT_ALT" "$CASHU_MINT_B_KEY" "$CASHU_MINT_B_FEE_PPK"
}

_cashu_info_ok() { curl -fsS --max-time 2 "http://$STACK_ADDR:$1/v1/info" >/dev/null 2>&1; }

_cashu_wait_one() {
  local name="$1" port="$2" logf="$LOG_DIR/cashu-$1.log"
  local deadline=$(( $(date +%s) + 60 ))
  until _cashu_info_ok "$port"; do
    is_running "cashu-$name" || fail cashu "$logf" "mint $name (port $port) exited during start"
    [ "$(date +%s)" -lt "$deadline" ] || fail cashu "$logf" "mint $name: GET http://$STACK_ADDR:$port/v1/info not answering after 60s"
    sleep 0.5
  done
}

cashu_wait() {
  _cashu_wait_one mint-a "$PORT_MINT"
  _cashu_wait_one mint-b "$PORT_MINT_ALT"
}

cashu_down() {
  stop_proc cashu-mint-b
  stop_proc cashu-mint-a
}

cashu_status() {
  is_running cashu-mint-a && is_running cashu-mint-b &&
    _cashu_info_ok "$PORT_MINT" && _cashu_info_ok "$PORT_MINT_ALT"
}

cashu_env() {
  echo "export CASHU_MINT_URL=http://$STACK_ADDR:$PORT_MINT"
  echo "export CASHU_MINT_URL_ALT=http://$STACK_ADDR:$PORT_MINT_ALT"
  echo "export CASHU_DIR='$CASHU_STATE/wallet'"
  echo "export MINT_URL=http://$STACK_ADDR:$PORT_MINT"
  echo "export PATH='$CASHU_VENV/bin':\$PATH"
}
