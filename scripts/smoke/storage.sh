#!/usr/bin/env bash
# Operators' storage (issue 19 item 3): the unedited manifest starts, Tor on, on each StorageClass of the stack.
#  1. What each class hands out: a PVC of `local-path` (rancher/local-path-provisioner, k3s's default) and of
#     `hostpath` (minikube's kind) becomes a hostPath directory, root-owned, mode 0777, no fsGroup; one of
#     `standard` (local PVs) gets the pod's fsGroup (2775, group 65532). A claim's deletion removes its directory.
#  2. For `hostpath` and `standard` (`local-path`, the default class, is scripts/smoke/deploy.sh's), made the
#     default class for the run: `kubectl apply -f k8s/sidecar-service.yaml`, the stack's Tor network and relay
#     and mint set as deploy.sh sets them; the Deployment becomes available, i.e. /readyz passed: journal, wallet
#     and arti's state are on that volume and Tor bootstrapped. Then it is uninstalled (the PVC annotated first).
# Needs the image paygress:latest on the node (scripts/smoke/deploy.sh builds and loads it; it runs before this).
# Cleans up what it creates and puts the default class back.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
# shellcheck source=scripts/lib.sh
. "$HERE/../lib.sh"

say() { printf '[smoke storage] %s\n' "$*" >&2; }
PNS=ingress-system
NS=smoke-storage
DEFAULT_CLASS=local-path
TMP="$(mktemp -d)"
die() {
  say "FAILED: $*"
  kubectl -n "$PNS" logs deploy/paygress-sidecar --tail=30 2>/dev/null >&2 || true
  exit 1
}
set_default() {
  local c
  for c in local-path hostpath standard; do
    kubectl annotate storageclass "$c" storageclass.kubernetes.io/is-default-class="$([ "$c" = "$1" ] && echo true || echo false)" \
      --overwrite >/dev/null
  done
}
uninstall() {
  kubectl -n "$PNS" delete deploy paygress-sidecar --ignore-not-found --wait=true --timeout=90s >/dev/null 2>&1 || true
  kubectl -n "$PNS" annotate pvc paygress-state paygress.io/uninstall=confirmed --overwrite >/dev/null 2>&1 || true
  kubectl -n "$PNS" delete pvc/paygress-state configmap/paygress-tor-network --ignore-not-found --wait=true --timeout=90s \
    >/dev/null 2>&1 || true
}
cleanup() {
  local rc=$?
  set +e
  uninstall
  kubectl delete ns "$NS" --ignore-not-found --wait=false >/dev/null 2>&1
  set_default "$DEFAULT_CLASS"
  rm -rf "$TMP"
  exit "$rc"
}
trap cleanup EXIT
command -v kubectl >/dev/null && [ -n "${KUBECONFIG:-}" ] || die "run with the stack's env"
kubectl get storageclass local-path hostpath standard >/dev/null || die "the stack's StorageClasses are missing"

say "1. each class's volume, seen from the node"
kubectl create ns "$NS" --dry-run=client -o yaml | kubectl apply -f - >/dev/null
for class in local-path hostpath standard; do
  kubectl -n "$NS" apply -f - >/dev/null <<EOF
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: vol-$class}
spec:
  storageClassName: $class
  accessModes: ["ReadWriteOnce"]
  resources: {requests: {storage: 1Gi}}
---
apiVersion: v1
kind: Pod
metadata: {name: probe-$class}
spec:
  restartPolicy: Never
  securityContext: {runAsUser: 65532, runAsGroup: 65532, fsGroup: 65532, runAsNonRoot: true}
  containers:
  - name: c
    image: lscr.io/linuxserver/openssh-server:latest
    imagePullPolicy: IfNotPresent
    command: [bash, -c, 'stat -c "%a %u %g" /v; touch /v/x']
    volumeMounts: [{name: v, mountPath: /v}]
  volumes: [{name: v, persistentVolumeClaim: {claimName: vol-$class}}]
EOF
done
for class in local-path hostpath standard; do
  for _ in $(seq 1 120); do
    phase="$(kubectl -n "$NS" get pod "probe-$class" -o jsonpath='{.status.phase}')"
    [ "$phase" = Succeeded ] || [ "$phase" = Failed ] && break
    sleep 0.5
  done
  got="$(kubectl -n "$NS" logs "probe-$class" 2>&1 | head -1)"
  case "$class" in
    standard) want="2775 0 65532" ;;
    *) want="777 0 0" ;;
  esac
  [ "$got" = "$want" ] || die "class $class: volume root '$got' (phase $phase), expected '$want'"
  say "   $class: volume root mode/uid/gid $got"
done
kubectl delete ns "$NS" --wait=true --timeout=120s >/dev/null || die "namespace $NS not deleted"
# A deleted claim of a Delete class takes its directory with it (the helper pod's teardown).
for dir in local-path hostpath; do
  left="$(find "$STACK_DIR/node/$dir" -mindepth 1 -maxdepth 1 -name "*vol-*" 2>/dev/null | wc -l)"
  for _ in $(seq 1 60); do [ "$left" = 0 ] && break; sleep 1; left="$(find "$STACK_DIR/node/$dir" -mindepth 1 -maxdepth 1 -name "*vol-*" | wc -l)"; done
  [ "$left" = 0 ] || die "$dir: $left volume directories left after their claims were deleted"
done

for class in hostpath standard; do
  say "2. the unedited manifest, Tor on, with $class as the default class"
  set_default "$class"
  t0=$(date +%s)
  kubectl apply -f "$REPO/k8s/sidecar-service.yaml" >/dev/null
  kubectl -n "$PNS" create configmap paygress-tor-network --from-file=network.toml="$PAYGRESS_TOR_NETWORK_CONFIG" \
    --dry-run=client -o yaml | kubectl apply -f - >/dev/null
  kubectl -n "$PNS" set env deploy/paygress-sidecar NOSTR_RELAYS="$NOSTR_RELAYS" WHITELISTED_MINTS="$CASHU_MINT_URL" \
    PAYGRESS_TIERS=basic:100m:128Mi >/dev/null
  kubectl -n "$PNS" rollout status deploy/paygress-sidecar --timeout=300s >/dev/null \
    || die "$class: the provider did not become ready (Tor on)"
  [ "$(kubectl -n "$PNS" get pvc paygress-state -o jsonpath='{.spec.storageClassName}')" = "$class" ] \
    || die "$class: the PVC is not of class $class"
  root="$(kubectl -n "$PNS" exec deploy/paygress-sidecar -- stat -c '%a %u %g' /var/lib/paygress 2>/dev/null || echo '?')"
  say "   $class: ready in $(( $(date +%s) - t0 ))s; volume root $root"
  uninstall
done
say "all passed"
