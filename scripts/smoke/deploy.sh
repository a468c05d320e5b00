#!/usr/bin/env bash
# The operator's path on the real node, command for command as README "Deploying" gives it: the shipped
# Dockerfile built by the stack's Docker engine, the image loaded onto the node, the manifest applied unedited,
# settings changed with `kubectl set env`, the provider running in its pod with its ServiceAccount, PVC and
# securityContext; then a user's NIP-44 request with nak, the encrypted reply, and `torsocks ssh` over the
# onion address the provider publishes from inside its pod into the lease's real container.
#  1. docker build -t paygress:latest . ; scripts/stack image load paygress:latest
#  2. kubectl apply -f k8s/sidecar-service.yaml; the private Tor network as the ConfigMap `paygress-tor-network`;
#     kubectl set env (relay, mint, prices); the Deployment becomes available; port-forward + curl /healthz;
#     the provider's pubkey from its log (a key it made on its PVC).
#  3. A NIP-44 request (nak) → reply → `torsocks ssh` into the lease's container, which runs on the bridge.
#  4. Tenant isolation with the provider in its pod: from inside a lease, neither another lease's SSH port, nor the
#     provider's pod, nor the API server, nor the kubelet opens; from the provider's pod all of them do.
#  5. The lease's container, killed from outside, restarts in place and the onion address lets ssh in again.
#  6. `kubectl rollout restart`: a new provider pod, and every live lease keeps its onion address (ssh again).
#  7. A short lease ends on time: its pod and its container go.
#  8. ENABLE_TOR_SIDECAR=false: no Tor; the reply's `kubectl port-forward` + ssh is the way in.
#  9. Uninstall: `kubectl delete -f` of the manifest deletes the Deployment but keeps (with the policy's message)
#     the namespaces and the wallet's PVC.
# Runs with the env of `scripts/stack env` sourced.
# Cleans up what it creates: the Deployment, its PVC and ConfigMap, and every lease object.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
# shellcheck source=scripts/lib.sh
. "$HERE/../lib.sh"

say() { printf '[smoke deploy] %s\n' "$*" >&2; }

PNS=ingress-system
LNS=user-workloads
DEPLOY=deploy/paygress-sidecar
HTTP_PORT="${PAYGRESS_DEPLOY_HTTP_PORT:-8080}"
RELAY="${NOSTR_RELAYS%%,*}"
TMP="$(mktemp -d)"
PF_PIDS=()
export CASHU_DIR="$TMP/wallet" MINT_URL="$CASHU_MINT_URL"
mkdir -p "$CASHU_DIR"

die() {
  say "FAILED: $*"
  say "---- provider log (last 40 lines) ----"
  kubectl -n "$PNS" logs "$DEPLOY" --tail=40 2>/dev/null >&2 || true
  exit 1
}
cleanup() {
  local rc=$?
  local p; for p in "${PF_PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  kubectl -n "$PNS" delete deploy paygress-sidecar --wait=true --timeout=60s >/dev/null 2>&1 || true
  # The wallet's volume is kept by the manifest's admission policy unless annotated (step 9).
  kubectl -n "$PNS" annotate pvc/paygress-state paygress.io/uninstall=confirmed --overwrite >/dev/null 2>&1 || true
  kubectl -n "$PNS" delete pvc/paygress-state configmap/paygress-tor-network --wait=false >/dev/null 2>&1 || true
  kubectl -n "$LNS" delete pods,services,secrets -l app.kubernetes.io/managed-by=paygress --wait=false >/dev/null 2>&1 || true
  rm -rf "$TMP"
  exit $rc
}
trap cleanup EXIT
step() { say "$*"; T0=$(date +%s.%N); }
took() { awk -v a="$T0" -v b="$(date +%s.%N)" 'BEGIN {printf "[smoke deploy]   ok (%.1fs)\n", b - a}' >&2; }
# wait_for SECONDS WHAT CMD…: retry CMD every second until it succeeds.
wait_for() {
  local secs="$1" what="$2"; shift 2
  local deadline=$(( $(date +%s) + secs ))
  until "$@" >/dev/null 2>&1; do
    [ "$(date +%s)" -lt "$deadline" ] || die "timed out after ${secs}s waiting for $what"
    sleep 1
  done
}
cashu() { (cd "$CASHU_DIR" && HOME="$CASHU_DIR" command cashu -y "$@"); }
SSH_OPTS=(-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR
  -o PreferredAuthentications=password -o PubkeyAuthentication=no)
# tor_ssh ONION PASSWORD CMD: the user's `torsocks ssh -p 2222 alice@ONION`, password through sshpass.
tor_ssh() { sshpass -p "$2" torsocks ssh "${SSH_OPTS[@]}" -o ConnectTimeout=60 -p 2222 "alice@$1" "$3"; }

# buy SATS → prints the decrypted reply (JSON): the seed's request, NIP-44 encrypted to the provider.
buy() {
  local token ct id reply="" deadline
  token="$(cashu send "$1" | grep -o 'cashu[AB][A-Za-z0-9_=-]*' | head -1)"
  [ -n "$token" ] || die "no token from cashu send"
  ct="$(printf '{"cashu_token":"%s","ssh_username":"alice"}' "$token" | nak encrypt --sec "$SEC" -p "$PROVIDER")"
  id="$(nak event --sec "$SEC" -k 1000 -p "$PROVIDER" -c "$ct" "$RELAY" | jq -r .id)"
  deadline=$(( $(date +%s) + 180 ))
  while [ -z "$reply" ]; do
    [ "$(date +%s)" -lt "$deadline" ] || die "no reply to request $id after 180s"
    sleep 1
    reply="$(nak req -k 1001 -p "$PUB" -e "$id" "$RELAY" 2>/dev/null | head -1 | jq -r .content \
      | nak decrypt --sec "$SEC" -p "$PROVIDER" 2>/dev/null)" || reply=""
  done
  [ "$(jq -r .status <<<"$reply")" = ok ] || die "request refused: $(jq -c 'del(.access.ssh_password)' <<<"$reply")"
  echo "$reply"
}
# forward_http: `kubectl port-forward svc/paygress-sidecar` (again after a rollout: a forward ends with its pod).
forward_http() {
  [ -z "${HTTP_PF:-}" ] || kill "$HTTP_PF" 2>/dev/null || true
  kubectl -n "$PNS" port-forward svc/paygress-sidecar "$HTTP_PORT:8080" >>"$TMP/pf-http.log" 2>&1 &
  HTTP_PF=$!; PF_PIDS+=("$HTTP_PF")
  wait_for 30 "port-forward to the provider" curl -fsS "http://127.0.0.1:$HTTP_PORT/healthz"
}
container_of() {
  kubectl -n "$LNS" get pod "$1" -o jsonpath='{.status.containerStatuses[0].containerID}' 2>/dev/null | sed 's|containerd://||'
}

cd "$REPO"
step "1. docker build -t paygress:latest . (the shipped Dockerfile) and scripts/stack image load"
docker build -t paygress:latest . >"$TMP/build.log" 2>&1 || { tail -40 "$TMP/build.log" >&2; die "docker build"; }
took; step "   image load"
scripts/stack image load paygress:latest >/dev/null || die "image load"
took

step "2. kubectl apply -f k8s/sidecar-service.yaml, the Tor network ConfigMap, set env; available; /healthz"
kubectl apply -f k8s/sidecar-service.yaml >/dev/null
# The stack's private Tor network (an arti fragment naming its authorities on the bridge), as an operator of a
# private network or of bridges would give it.
kubectl -n "$PNS" create configmap paygress-tor-network --from-file=network.toml="$PAYGRESS_TOR_NETWORK_CONFIG" \
  --dry-run=client -o yaml | kubectl apply -f - >/dev/null
# 1 sat a second, and a tier small enough for the stack's 2-CPU node.
kubectl -n "$PNS" set env "$DEPLOY" NOSTR_RELAYS="$NOSTR_RELAYS" WHITELISTED_MINTS="$CASHU_MINT_URL" \
  PAYMENT_RATE_SATS_PER_HOUR=3600 PAYGRESS_MIN_DURATION_SECONDS=10 PAYGRESS_TIERS=basic:100m:128Mi >/dev/null
kubectl -n "$PNS" wait --for=condition=available "$DEPLOY" --timeout=300s >/dev/null || die "Deployment not available"
kubectl -n "$PNS" rollout status "$DEPLOY" --timeout=300s >/dev/null || die "rollout"
forward_http
PROVIDER="$(kubectl -n "$PNS" logs "$DEPLOY" | grep pubkey | grep -o '"pubkey":"[0-9a-f]\{64\}"' | head -1 | cut -d'"' -f4)"
[ -n "$PROVIDER" ] || die "no pubkey in the provider's log"
PROVIDER_POD="$(kubectl -n "$PNS" get pods -l app.kubernetes.io/name=paygress-sidecar -o jsonpath='{.items[0].metadata.name}')"
PROVIDER_IP="$(kubectl -n "$PNS" get pod "$PROVIDER_POD" -o jsonpath='{.status.podIP}')"
wait_for 240 "/readyz (relays, Tor bootstrap, API server)" curl -fsS "http://127.0.0.1:$HTTP_PORT/readyz"
took

step "3. a NIP-44 request with nak, the reply, torsocks ssh into the lease's container"
cashu invoice 2000 >/dev/null
SEC="$(nak key generate)"; PUB="$(nak key public "$SEC")"
T_REQ=$(date +%s.%N)
A="$(buy 900)"
T_REPLY=$(date +%s.%N)
A_POD="$(jq -r .access.pod_name <<<"$A")"; A_ONION="$(jq -r .access.onion_address <<<"$A")"
A_PW="$(jq -r .access.ssh_password <<<"$A")"
[[ "$A_ONION" == *.onion ]] || die "no onion address in the reply"
A_IP="$(kubectl -n "$LNS" get pod "$A_POD" -o jsonpath='{.status.podIP}')"
[[ "$A_IP" == 198.18.* ]] || die "lease pod IP $A_IP is not on the bridge"
wait_for 180 "torsocks ssh into the lease" tor_ssh "$A_ONION" "$A_PW" true
T_SSH=$(date +%s.%N)
# shellcheck disable=SC2016  # expanded by the tenant's shell
who="$(tor_ssh "$A_ONION" "$A_PW" 'id -un; echo $SHELL')"
[ "$(tr '\n' ' ' <<<"$who")" = "alice /bin/bash " ] || die "ssh over Tor: $who"
# Printed for docs/benchmarks.md, never asserted: provider in its pod, container start included.
awk -v a="$T_REQ" -v b="$T_REPLY" -v c="$T_SSH" \
  'BEGIN {printf "[smoke deploy]   request → reply %.1fs, → first ssh over Tor %.1fs\n", b - a, c - a}' >&2
took

step "4. tenant isolation with the provider in its pod, each refusal with a positive control"
B="$(buy 600)"
B_ONION="$(jq -r .access.onion_address <<<"$B")"; B_PW="$(jq -r .access.ssh_password <<<"$B")"
B_IP="$(kubectl -n "$LNS" get pod "$(jq -r .access.pod_name <<<"$B")" -o jsonpath='{.status.podIP}')"
targets=("$B_IP:2222" "$PROVIDER_IP:8080" 10.96.0.1:443 "198.18.0.1:$PORT_APISERVER" "198.18.0.1:$PORT_KUBELET")
# shellcheck disable=SC2016  # expanded by the pod's shell
probe='for t in "$@"; do if timeout 4 bash -c "exec 3<>/dev/tcp/${t%:*}/${t#*:}" 2>/dev/null; then echo "open $t"; fi; done; echo done'
# From inside lease A: another tenant's SSH port, the provider's pod, the API server (Service and endpoint) and
# the kubelet do not open (NetworkPolicy, enforced fail closed).
out="$(tor_ssh "$A_ONION" "$A_PW" "bash -c '$probe' _ ${targets[*]}")"
[ "$out" = "done" ] || die "a tenant reached: $out"
# The same targets from the provider's pod (no egress policy) all open, but its own port (nothing dials
# itself through a policy): the refusals above are the tenants' policies, not missing routes.
out="$(kubectl -n "$PNS" exec "$PROVIDER_POD" -- bash -c "$probe" _ "$B_IP:2222" 10.96.0.1:443 \
  "198.18.0.1:$PORT_APISERVER" "198.18.0.1:$PORT_KUBELET")"
[ "$(grep -c '^open ' <<<"$out")" = 4 ] || die "the provider's pod should reach all four: $out"
curl -fsS --max-time 5 "http://$PROVIDER_IP:8080/healthz" >/dev/null || die "the host cannot reach the provider's pod"
took

step "5. the lease's container, killed from outside, restarts in place; the onion address lets ssh in again"
cid="$(container_of "$A_POD")"
ctr -a "$CONTAINERD_ADDRESS" -n k8s.io tasks kill -s SIGKILL "$cid" >/dev/null
restarted() { [ "$(kubectl -n "$LNS" get pod "$A_POD" -o jsonpath='{.status.containerStatuses[0].restartCount}:{.status.containerStatuses[0].ready}')" = "1:true" ]; }
wait_for 90 "the lease's container to restart in place" restarted
wait_for 90 "ssh over Tor after the container restart" tor_ssh "$A_ONION" "$A_PW" true
took

step "6. kubectl rollout restart: every live lease keeps its onion address"
kubectl -n "$PNS" rollout restart "$DEPLOY" >/dev/null
kubectl -n "$PNS" rollout status "$DEPLOY" --timeout=300s >/dev/null || die "rollout"
NEW_POD="$(kubectl -n "$PNS" get pods -l app.kubernetes.io/name=paygress-sidecar -o jsonpath='{.items[0].metadata.name}')"
[ "$NEW_POD" != "$PROVIDER_POD" ] || die "the rollout made no new pod"
for lease in "$A_ONION:$A_PW" "$B_ONION:$B_PW"; do
  wait_for 240 "ssh over Tor to a lease after the rollout" tor_ssh "${lease%%:*}" "${lease#*:}" true
done
took

step "7. a short lease ends on time: its pod and its container go"
C="$(buy 20)"
C_POD="$(jq -r .access.pod_name <<<"$C")"
C_CID="$(container_of "$C_POD")"
[ -n "$C_CID" ] || die "no container for the short lease"
gone() { ! kubectl -n "$LNS" get pod "$C_POD" >/dev/null 2>&1; }
wait_for 120 "the short lease's pod to go at expiry" gone
no_container() { ! ctr -a "$CONTAINERD_ADDRESS" -n k8s.io containers ls -q | grep -qx "$C_CID"; }
wait_for 60 "containerd to drop the short lease's container" no_container
took

step "8. ENABLE_TOR_SIDECAR=false: the reply's kubectl port-forward is the way in"
kubectl -n "$PNS" set env "$DEPLOY" ENABLE_TOR_SIDECAR=false >/dev/null
kubectl -n "$PNS" rollout status "$DEPLOY" --timeout=300s >/dev/null || die "rollout with Tor off"
forward_http
wait_for 120 "/readyz with Tor off" curl -fsS "http://127.0.0.1:$HTTP_PORT/readyz"
D="$(buy 300)"
[ "$(jq -r '.access.onion_address // "none"' <<<"$D")" = none ] || die "an onion address with Tor off"
pf="$(jq -r .access.port_forward_command <<<"$D")"; D_PW="$(jq -r .access.ssh_password <<<"$D")"
[[ "$pf" == "kubectl -n user-workloads port-forward svc/ssh-pod-"*"-ssh 2222:2222" ]] || die "port-forward command: $pf"
$pf >"$TMP/pf-ssh.log" 2>&1 &
PF_PIDS+=($!)
pf_ssh() { sshpass -p "$D_PW" ssh "${SSH_OPTS[@]}" -o ConnectTimeout=10 -p 2222 alice@127.0.0.1 "$@"; }
wait_for 60 "ssh through kubectl port-forward" pf_ssh true
[ "$(pf_ssh 'id -un')" = alice ] || die "ssh through port-forward"
took

step "9. uninstall: kubectl delete -f of the manifest keeps the namespaces and the wallet's volume, and says why"
PVC_UID="$(kubectl -n "$PNS" get pvc paygress-state -o jsonpath='{.metadata.uid}')"
if kubectl delete -f k8s/sidecar-service.yaml --wait=false >"$TMP/uninstall.log" 2>&1; then
  die "kubectl delete -f succeeded: the wallet's volume was not protected"
fi
grep -q "paygress: PersistentVolumeClaim paygress-state holds the provider's wallet" "$TMP/uninstall.log" \
  || die "no reason given for keeping the volume: $(cat "$TMP/uninstall.log")"
[ "$(kubectl -n "$PNS" get pvc paygress-state -o jsonpath='{.metadata.uid}')" = "$PVC_UID" ] || die "the wallet's PVC is gone"
[ -z "$(kubectl -n "$PNS" get pvc paygress-state -o jsonpath='{.metadata.deletionTimestamp}')" ] || die "the PVC is being deleted"
for ns in "$PNS" "$LNS"; do
  [ "$(kubectl get ns "$ns" -o jsonpath='{.status.phase}')" = Active ] || die "namespace $ns is not Active after the delete"
done
kubectl get deploy -n "$PNS" paygress-sidecar >/dev/null 2>&1 && die "the Deployment was not deleted"
# Installed again over the kept volume (the cleanup deletes it all, annotated).
kubectl apply -f k8s/sidecar-service.yaml >/dev/null
took
say "all steps passed"
