#!/usr/bin/env bash
# How the provider holds against strangers (tests/bench_hostile.rs): junk events absorbed per second with the
# journal's size and RSS, and a paid request's latency alone and during a junk flood. Prints; asserts nothing.
#   scripts/bench/hostile.sh              # 2000 junk events
#   BENCH_JUNK=5000 scripts/bench/hostile.sh
#   BENCH_TOR=1 scripts/bench/hostile.sh  # also: a stalling client holding streams to one onion service
set -euo pipefail
cd "$(dirname "$0")/../.."
export PAYGRESS_CACHE="${PAYGRESS_CACHE:-$HOME/.cache/paygress}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PAYGRESS_CACHE/target}"
scripts/stack up
# shellcheck disable=SC1091
. "${PAYGRESS_STACK_DIR:-$PAYGRESS_CACHE/stack}/env.sh"
cargo test -q --test bench_hostile -- --ignored --nocapture --test-threads=1
kubectl delete pods,services,secrets -n user-workloads -l app.kubernetes.io/managed-by=paygress --wait=false >/dev/null
