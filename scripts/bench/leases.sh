#!/usr/bin/env bash
# Request → reply latency of paid leases against the stack (tests/bench_leases.rs). Prints numbers; asserts none.
#   scripts/bench/leases.sh                       # batches of 1, 10 and 20 requests sent at once, Tor off
#   BENCH_TOR=1 BENCH_LEASES=1,10 scripts/bench/leases.sh
#   BENCH_TOR=1 BENCH_LEASES=1,10,50 BENCH_POOLS=0,50 scripts/bench/leases.sh   # without and with a warm pool
set -euo pipefail
cd "$(dirname "$0")/../.."
export PAYGRESS_CACHE="${PAYGRESS_CACHE:-$HOME/.cache/paygress}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PAYGRESS_CACHE/target}"
scripts/stack up
# shellcheck disable=SC1091
. "${PAYGRESS_STACK_DIR:-$PAYGRESS_CACHE/stack}/env.sh"
# Each provider deletes the leases it sold when its batches are done (only its own: the stack is shared).
cargo test -q --test bench_leases -- --ignored --nocapture --test-threads=1
