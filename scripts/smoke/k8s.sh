#!/usr/bin/env bash
# Smoke test of the Kubernetes peers (kube-apiserver + etcd + stack-node agent + stack-kubelet). Runs with the env of
# `scripts/stack env` sourced (KUBECONFIG, PATH with a 1.36 kubectl). Cleans up what it creates.
#  1. kubectl as admin lists namespaces.
#  2. An openssh-server style pod becomes Running with a loopback pod IP, SSH logs in with its password (a wrong
#     one is refused), also through `kubectl port-forward`, and after deleting the pod its SSH port stops
#     answering.
#  3. A ServiceAccount token bound to a Role allowing get,list pods: pods are listed, secrets and other
#     namespaces are Forbidden.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=scripts/lib.sh
. "$HERE/../lib.sh"

NS=smoke-k8s
POD=smoke-ssh
API_LOG="$LOG_DIR/kube-apiserver.log"
NODE_LOG="$LOG_DIR/stack-node.log"
TMP="$(mktemp -d)"
SMOKE_SKIP_SSH="${SMOKE_SKIP_SSH:-0}"   # 1: skip step 2 (node agent not available)

[ -n "${KUBECONFIG:-}" ] && [ -f "$KUBECONFIG" ] || fail kube-apiserver "$API_LOG" "KUBECONFIG not set or missing (source the env of scripts/stack env)"
command -v kubectl >/dev/null || fail kube-apiserver "$API_LOG" "kubectl not on PATH"

say() { printf '[smoke k8s] %s\n' "$*" >&2; }

# Namespaces need the namespace controller (kube-controller-manager, not run here) to finish deleting: with the
# contents removed, clear spec.finalizers through the finalize subresource.
finalize_ns() {
  kubectl get ns "$1" >/dev/null 2>&1 || return 0
  kubectl delete ns "$1" --wait=false >/dev/null 2>&1 || true
  kubectl get ns "$1" -o json 2>/dev/null | jq '.spec.finalizers = []' \
    | kubectl replace --raw "/api/v1/namespaces/$1/finalize" -f - >/dev/null 2>&1 || true
  local i
  for i in $(seq 1 20); do kubectl get ns "$1" >/dev/null 2>&1 || return 0; sleep 0.5; done
  say "WARNING: namespace $1 still present"
}

cleanup() {
  local rc=$?
  set +e
  if kubectl get ns "$NS" >/dev/null 2>&1; then
    kubectl -n "$NS" delete pod --all --timeout=30s >/dev/null 2>&1
    # If the agent did not finalise a pod, remove it so the namespace can go.
    kubectl -n "$NS" delete pod --all --grace-period=0 --force >/dev/null 2>&1
    kubectl -n "$NS" delete rolebinding,role,serviceaccount --all >/dev/null 2>&1
    finalize_ns "$NS"
  fi
  rm -rf "$TMP"
  exit "$rc"
}
trap cleanup EXIT

# A leftover namespace from an interrupted run (possibly stuck Terminating).
if kubectl get ns "$NS" >/dev/null 2>&1; then
  say "removing leftover namespace $NS"
  kubectl -n "$NS" delete pod --all --grace-period=0 --force >/dev/null 2>&1 || true
  kubectl -n "$NS" delete rolebinding,role,serviceaccount --all >/dev/null 2>&1 || true
  finalize_ns "$NS"
fi

# ---- 1. admin lists namespaces -------------------------------------------------------------------------------
say "1. kubectl as admin lists namespaces"
nss="$(kubectl get ns -o jsonpath='{.items[*].metadata.name}' 2>"$TMP/err")" \
  || fail kube-apiserver "$API_LOG" "kubectl get ns failed: $(cat "$TMP/err")"
case " $nss " in *" default "*) ;; *) fail kube-apiserver "$API_LOG" "namespace default not listed (got: $nss)";; esac
kubectl create ns "$NS" >/dev/null 2>"$TMP/err" || fail kube-apiserver "$API_LOG" "create namespace: $(cat "$TMP/err")"

# ---- 2. SSH pod ---------------------------------------------------------------------------------------------------
ssh_opts=(-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR -o ConnectTimeout=5
          -o PreferredAuthentications=password -o PubkeyAuthentication=no -o NumberOfPasswordPrompts=1)
if [ "$SMOKE_SKIP_SSH" = 1 ]; then
  say "2. SKIPPED (SMOKE_SKIP_SSH=1)"
else
  say "2. openssh-server pod via the node agent"
  command -v sshpass >/dev/null || fail sshpass "$LOG_DIR/k8s-build-apt.log" "sshpass not installed (scripts/stack install k8s)"
  pw="$(openssl rand -hex 12)"
  cat > "$TMP/pod.yaml" <<EOF
apiVersion: v1
kind: Pod
metadata:
  name: $POD
  namespace: $NS
  labels: {app: smoke-ssh}
spec:
  automountServiceAccountToken: false
  containers:
  - name: ssh
    image: lscr.io/linuxserver/openssh-server:latest
    ports:
    - containerPort: 2222
      name: ssh
    env:
    - {name: USER_NAME, value: alice}
    - {name: USER_PASSWORD, value: "$pw"}
    - {name: PASSWORD_ACCESS, value: "true"}
EOF
  kubectl apply -f "$TMP/pod.yaml" >/dev/null 2>"$TMP/err" || fail kube-apiserver "$API_LOG" "create pod: $(cat "$TMP/err")"
  kubectl -n "$NS" wait --for=jsonpath='{.status.phase}'=Running "pod/$POD" --timeout=60s >/dev/null 2>"$TMP/err" \
    || fail stack-node "$NODE_LOG" "pod $NS/$POD not Running after 60s: $(cat "$TMP/err"); status: $(kubectl -n "$NS" get pod "$POD" -o jsonpath='{.spec.nodeName} {.status}' 2>&1)"
  ip="$(kubectl -n "$NS" get pod "$POD" -o jsonpath='{.status.podIP}')"
  if [ "${PAYGRESS_NODE:-sim}" = real ]; then
    # The real node (stack.d/node.sh): pods on its bridge, in 198.18.0.0/15.
    [[ "$ip" =~ ^198\.1[89]\.[0-9]+\.[0-9]+$ ]] || fail kubelet "$LOG_DIR/kubelet.log" "pod IP '$ip' is not inside 198.18.0.0/15"
  else
    [[ "$ip" =~ ^127\.[0-9]+\.[0-9]+\.[0-9]+$ ]] || fail stack-node "$NODE_LOG" "pod IP '$ip' is not inside 127.0.0.0/8"
  fi
  say "   pod Running on $(kubectl -n "$NS" get pod "$POD" -o jsonpath='{.spec.nodeName}') with IP $ip"

  deadline=$(( $(date +%s) + 30 ))
  until tcp_open 2222 "$ip"; do
    [ "$(date +%s)" -lt "$deadline" ] || fail stack-node "$NODE_LOG" "nothing answers on $ip:2222 30s after Running"
    sleep 0.5
  done
  out="$(sshpass -p "$pw" ssh "${ssh_opts[@]}" -p 2222 "alice@$ip" 'echo ok' 2>"$TMP/err")" \
    || fail stack-node "$NODE_LOG" "ssh alice@$ip:2222 with the pod's password failed: $(cat "$TMP/err")"
  [ "$(printf '%s' "$out" | tr -d '\r')" = ok ] || fail stack-node "$NODE_LOG" "ssh 'echo ok' printed '$out'"
  say "   ssh alice@$ip -p 2222 'echo ok' -> ok"
  if sshpass -p "wrong-$pw" ssh "${ssh_opts[@]}" -p 2222 "alice@$ip" 'echo ok' >"$TMP/out" 2>&1; then
    fail stack-node "$NODE_LOG" "ssh with a wrong password was accepted"
  fi
  grep -q '^ok' "$TMP/out" && fail stack-node "$NODE_LOG" "ssh with a wrong password ran the command"
  say "   wrong password refused"

  # kubectl port-forward: kubectl -> kube-apiserver -> stack-kubelet (the kubelet's port-forward code) -> pod.
  pf_port=$(( 29300 + RANDOM % 500 ))
  kubectl -n "$NS" port-forward --address 127.0.0.1 "pod/$POD" "$pf_port:2222" >"$TMP/pf.out" 2>&1 &
  pf=$!
  deadline=$(( $(date +%s) + 20 ))
  until grep -q '^Forwarding from' "$TMP/pf.out"; do
    kill -0 "$pf" 2>/dev/null || fail stack-kubelet "$LOG_DIR/stack-kubelet.log" "kubectl port-forward exited: $(cat "$TMP/pf.out")"
    [ "$(date +%s)" -lt "$deadline" ] || fail stack-kubelet "$LOG_DIR/stack-kubelet.log" "kubectl port-forward not listening after 20s"
    sleep 0.2
  done
  out="$(sshpass -p "$pw" ssh "${ssh_opts[@]}" -p "$pf_port" alice@127.0.0.1 'echo ok' 2>"$TMP/err")" \
    || { kill "$pf" 2>/dev/null; fail stack-kubelet "$LOG_DIR/stack-kubelet.log" "ssh through kubectl port-forward failed: $(cat "$TMP/err") / $(cat "$TMP/pf.out")"; }
  kill "$pf" 2>/dev/null; wait "$pf" 2>/dev/null || true
  [ "$(printf '%s' "$out" | tr -d '\r')" = ok ] || fail stack-kubelet "$LOG_DIR/stack-kubelet.log" "ssh via port-forward printed '$out'"
  say "   kubectl port-forward pod/$POD $pf_port:2222; ssh -p $pf_port alice@127.0.0.1 'echo ok' -> ok"

  kubectl -n "$NS" delete pod "$POD" --timeout=60s >/dev/null 2>"$TMP/err" \
    || fail stack-node "$NODE_LOG" "pod $NS/$POD not deleted (finalised by the agent) within 60s: $(cat "$TMP/err")"
  deadline=$(( $(date +%s) + 15 ))
  while tcp_open 2222 "$ip"; do
    [ "$(date +%s)" -lt "$deadline" ] || fail stack-node "$NODE_LOG" "$ip:2222 still answers 15s after the pod was deleted"
    sleep 0.5
  done
  say "   pod deleted; $ip:2222 closed"
fi

# ---- 3. ServiceAccount + Role: RBAC with a real token ----------------------------------------------------------
say "3. ServiceAccount token limited by a Role to get,list pods in $NS"
{
  kubectl -n "$NS" create serviceaccount reader &&
  kubectl -n "$NS" create role pod-reader --verb=get,list --resource=pods &&
  kubectl -n "$NS" create rolebinding reader-pods --role=pod-reader --serviceaccount="$NS:reader"
} >/dev/null 2>"$TMP/err" || fail kube-apiserver "$API_LOG" "create SA/Role/RoleBinding: $(cat "$TMP/err")"
token="$(kubectl -n "$NS" create token reader --duration=10m 2>"$TMP/err")" \
  || fail kube-apiserver "$API_LOG" "kubectl create token: $(cat "$TMP/err")"
server="$(kubectl config view --raw --minify -o jsonpath='{.clusters[0].cluster.server}')"
kubectl config view --raw --minify -o jsonpath='{.clusters[0].cluster.certificate-authority-data}' | base64 -d > "$TMP/ca.crt"
cat > "$TMP/reader.kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: c
  cluster: {server: "$server", certificate-authority: "$TMP/ca.crt"}
users:
- name: reader
  user: {token: "$token"}
contexts:
- name: c
  context: {cluster: c, user: reader}
current-context: c
EOF
as_reader() { kubectl --kubeconfig "$TMP/reader.kubeconfig" "$@"; }

who="$(as_reader auth whoami -o jsonpath='{.status.userInfo.username}' 2>"$TMP/err")" \
  || fail kube-apiserver "$API_LOG" "whoami with the SA token failed: $(cat "$TMP/err")"
[ "$who" = "system:serviceaccount:$NS:reader" ] || fail kube-apiserver "$API_LOG" "token authenticates as '$who'"
as_reader -n "$NS" get pods >/dev/null 2>"$TMP/err" \
  || fail kube-apiserver "$API_LOG" "SA token cannot list pods in $NS: $(cat "$TMP/err")"
expect_forbidden() {
  if as_reader "$@" >/dev/null 2>"$TMP/err"; then
    fail kube-apiserver "$API_LOG" "SA token was allowed: kubectl $*"
  fi
  grep -qi forbidden "$TMP/err" || fail kube-apiserver "$API_LOG" "kubectl $* failed but not Forbidden: $(cat "$TMP/err")"
}
expect_forbidden -n "$NS" get secrets
expect_forbidden -n default get pods
expect_forbidden -n "$NS" delete pod nothing-here
say "   $who: list pods ok; secrets, other namespaces and delete are Forbidden"

say "PASS"
