#!/usr/bin/env bash
# Smoke test of the Kubernetes API (kube-apiserver + etcd; the node's pods are smoke/node.sh's). Runs with the env
# of `scripts/stack env` sourced (KUBECONFIG, PATH with a 1.36 kubectl). Cleans up what it creates.
#  1. kubectl as admin lists namespaces.
#  2. A ServiceAccount token bound to a Role allowing get,list pods: pods are listed, secrets and other
#     namespaces are Forbidden.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=scripts/lib.sh
. "$HERE/../lib.sh"

NS=smoke-k8s
API_LOG="$LOG_DIR/kube-apiserver.log"
TMP="$(mktemp -d)"

[ -n "${KUBECONFIG:-}" ] && [ -f "$KUBECONFIG" ] || fail kube-apiserver "$API_LOG" "KUBECONFIG not set or missing (source the env of scripts/stack env)"
command -v kubectl >/dev/null || fail kube-apiserver "$API_LOG" "kubectl not on PATH"

say() { printf '[smoke k8s] %s\n' "$*" >&2; }

cleanup() {
  local rc=$?
  set +e
  kubectl delete ns "$NS" --ignore-not-found --timeout=60s >/dev/null 2>&1
  rm -rf "$TMP"
  exit "$rc"
}
trap cleanup EXIT

# A leftover namespace from an interrupted run.
kubectl delete ns "$NS" --ignore-not-found --timeout=60s >/dev/null 2>&1 || true

# ---- 1. admin lists namespaces -------------------------------------------------------------------------------
say "1. kubectl as admin lists namespaces"
nss="$(kubectl get ns -o jsonpath='{.items[*].metadata.name}' 2>"$TMP/err")" \
  || fail kube-apiserver "$API_LOG" "kubectl get ns failed: $(cat "$TMP/err")"
case " $nss " in *" default "*) ;; *) fail kube-apiserver "$API_LOG" "namespace default not listed (got: $nss)";; esac
kubectl create ns "$NS" >/dev/null 2>"$TMP/err" || fail kube-apiserver "$API_LOG" "create namespace: $(cat "$TMP/err")"

# ---- 2. ServiceAccount + Role: RBAC with a real token ----------------------------------------------------------
say "2. ServiceAccount token limited by a Role to get,list pods in $NS"
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
