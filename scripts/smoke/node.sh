#!/usr/bin/env bash
# Smoke test of the real node (component `node`: kubelet + containerd + CNI bridge + scheduler + controller-manager
# + kube-proxy). Runs with the env of `scripts/stack env` sourced. Cleans up what it creates.
#  1. The node is Ready, kubelet v1.36.3 on containerd; a new namespace gets its `default` ServiceAccount.
#  2. A pod shaped like a lease (linuxserver env, password from a Secret, Guaranteed QoS, all capabilities dropped
#     but the five the image's init needs) runs as a real container with an IP on the bridge; `kubectl logs`,
#     `exec`, the ServiceAccount token volume; SSH with the password into it (a wrong one refused), bash is the shell.
#  3. A ClusterIP Service (kube-proxy): SSH from the host to the ClusterIP, a banner from another pod through it;
#     `kubectl port-forward svc/…` and SSH through it; the API server through the `kubernetes` Service from a pod
#     (KUBERNETES_SERVICE_HOST) and, with a ServiceAccount token, from the host.
#  4. A container killed from outside restarts in place (same pod, same IP, restartCount 1).
#  5. A Deployment becomes available; deleting it removes its ReplicaSet and pods (garbage collector).
#  6. Images: `docker build` on the stack's engine (FROM the SSH image, pulled from the stack's registry), then
#     `scripts/stack image load`; a pod with imagePullPolicy Always runs it (pulled from the stack's registry); an
#     image never loaded fails to pull.
#  7. gVisor: the RuntimeClass `gvisor` (handler runsc) exists; a lease-shaped pod with it runs under gVisor's
#     kernel (SSH in with the password: `dmesg` starts with "Starting gVisor", /proc/version is gVisor's, not the
#     host's), and the runc pod of step 2 still sees the host's kernel.
#  8. NetworkPolicy is enforced (kube-network-policies): its table and queue are in place; a deny-all-ingress policy
#     on the lease pod cuts the client pod off (by pod IP and ClusterIP) but not the node (SSH from the host); without
#     the policy the client gets through again.
#  9. The instance's own peers on the bridge (stack.d/{tor,cashu,nostr}.sh with STACK_ADDR 198.18.0.1): from a pod
#     and from the host, the relay (websocket handshake), mint A (GET /v1/info), Tor authority auth0's DirPort (its
#     descriptor names STACK_ADDR) and the Tor client's SocksPort (SOCKS5 greeting) answer at STACK_ADDR; env.sh names
#     them there; `ss -ltnp`: the peers' processes listen on STACK_ADDR only (their ControlPorts on 127.0.0.1, by
#     design) and nothing listens on the peers' ports elsewhere. Skipped when none of the peers runs.
# 10. The namespace is deleted to the end (namespace controller). Volumes of each StorageClass, fsGroup among
#     them: scripts/smoke/storage.sh.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=scripts/lib.sh
. "$HERE/../lib.sh"

say() { printf '[smoke node] %s\n' "$*" >&2; }

NS=smoke-node
KLOG="$LOG_DIR/kubelet.log"
TMP="$(mktemp -d)"
SSH_OPTS=(-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o ConnectTimeout=5 -o LogLevel=ERROR)
PF_PID=""
cleanup() {
  local rc=$?
  [ -z "$PF_PID" ] || kill "$PF_PID" 2>/dev/null || true
  kubectl delete ns "$NS" --wait=false >/dev/null 2>&1 || true
  rm -rf "$TMP"
  exit $rc
}
trap cleanup EXIT
step() { say "$*"; T0=$(date +%s.%N); }
took() { awk -v a="$T0" -v b="$(date +%s.%N)" 'BEGIN {printf "[smoke node]   ok (%.1fs)\n", b - a}' >&2; }

step "1. node Ready, kubelet and runtime versions; namespace gets its default ServiceAccount"
kubectl wait --for=condition=Ready node --all --timeout=60s >/dev/null || fail kubelet "$KLOG" "node not Ready"
info="$(kubectl get node -o jsonpath='{.items[0].status.nodeInfo.kubeletVersion} {.items[0].status.nodeInfo.containerRuntimeVersion}')"
[[ "$info" == "v1.36.3 containerd://"* ]] || fail kubelet "$KLOG" "unexpected node info: $info"
kubectl delete ns "$NS" --wait=true --timeout=60s >/dev/null 2>&1 || true
kubectl create ns "$NS" >/dev/null
for _ in $(seq 1 40); do kubectl -n "$NS" get sa default >/dev/null 2>&1 && break; sleep 0.5; done
kubectl -n "$NS" get sa default >/dev/null || fail kube-controller-manager "$LOG_DIR/kube-controller-manager.log" "no default ServiceAccount"
took

step "2. a lease-shaped pod runs as a real container; logs, exec, token volume, SSH"
kubectl -n "$NS" apply -f - >/dev/null <<'EOF'
apiVersion: v1
kind: Secret
metadata: {name: lease-auth}
stringData: {password: hunter2}
---
apiVersion: v1
kind: Pod
metadata: {name: lease, labels: {app: lease}}
spec:
  containers:
  - name: ssh
    image: lscr.io/linuxserver/openssh-server:latest
    imagePullPolicy: IfNotPresent
    env:
    - {name: PUID, value: "1000"}
    - {name: PGID, value: "1000"}
    - {name: TZ, value: UTC}
    - {name: USER_NAME, value: bob}
    - name: USER_PASSWORD
      valueFrom: {secretKeyRef: {name: lease-auth, key: password, optional: false}}
    - {name: PASSWORD_ACCESS, value: "true"}
    ports: [{name: ssh, containerPort: 2222, protocol: TCP}]
    resources:
      requests: {cpu: 100m, memory: 128Mi}
      limits: {cpu: 100m, memory: 128Mi}
    readinessProbe: {tcpSocket: {port: 2222}, periodSeconds: 2}
    securityContext:
      allowPrivilegeEscalation: false
      privileged: false
      capabilities: {drop: [ALL], add: [CHOWN, DAC_OVERRIDE, FOWNER, SETGID, SETUID]}
      seccompProfile: {type: RuntimeDefault}
---
apiVersion: v1
kind: Service
metadata: {name: lease-ssh}
spec:
  selector: {app: lease}
  ports: [{port: 2222, targetPort: 2222}]
---
apiVersion: v1
kind: Pod
metadata: {name: client}
spec:
  containers:
  - name: c
    image: lscr.io/linuxserver/openssh-server:latest
    imagePullPolicy: IfNotPresent
EOF
kubectl -n "$NS" wait --for=condition=Ready pod/lease pod/client --timeout=90s >/dev/null \
  || { kubectl -n "$NS" describe pod lease | tail -20 >&2; fail kubelet "$KLOG" "pods not Ready"; }
ip="$(kubectl -n "$NS" get pod lease -o jsonpath='{.status.podIP}')"
[[ "$ip" == 198.18.* ]] || fail kubelet "$KLOG" "pod IP $ip not on the bridge"
[[ "$(kubectl -n "$NS" get pod lease -o jsonpath='{.status.containerStatuses[0].containerID}')" == containerd://* ]] \
  || fail kubelet "$KLOG" "no containerd container ID"
[ "$(kubectl -n "$NS" get pod lease -o jsonpath='{.status.qosClass}')" = Guaranteed ] || fail kubelet "$KLOG" "not Guaranteed"
kubectl -n "$NS" logs lease | grep -q 'starting sshd on port 2222 as bob' || fail kubelet "$KLOG" "kubectl logs: no init line"
[ "$(kubectl -n "$NS" exec lease -- cat /proc/1/comm)" = sshd ] || fail kubelet "$KLOG" "kubectl exec: PID 1 is not sshd"
kubectl -n "$NS" exec lease -- test -s /var/run/secrets/kubernetes.io/serviceaccount/token \
  || fail kubelet "$KLOG" "no ServiceAccount token in the pod"
out="$(sshpass -p hunter2 ssh "${SSH_OPTS[@]}" -p 2222 "bob@$ip" 'echo "$(id -un) $SHELL $(id -u)"')" \
  || fail kubelet "$KLOG" "SSH with the password into $ip failed"
[ "$out" = "bob /bin/bash 1000" ] || fail kubelet "$KLOG" "SSH session: $out"
if sshpass -p wrong ssh "${SSH_OPTS[@]}" -p 2222 "bob@$ip" true 2>/dev/null; then fail kubelet "$KLOG" "a wrong password logged in"; fi
took

step "3. ClusterIP (kube-proxy) from the host and from a pod; kubectl port-forward svc"
cip="$(kubectl -n "$NS" get svc lease-ssh -o jsonpath='{.spec.clusterIP}')"
for _ in $(seq 1 20); do tcp_open 2222 "$cip" && break; sleep 0.5; done
[ "$(sshpass -p hunter2 ssh "${SSH_OPTS[@]}" -p 2222 "bob@$cip" hostname)" = lease ] \
  || fail kube-proxy "$LOG_DIR/kube-proxy.log" "SSH to ClusterIP $cip failed"
kubectl -n "$NS" exec client -- bash -c "exec 3<>/dev/tcp/$cip/2222 && head -c 7 <&3" | grep -q '^SSH-2.0' \
  || fail kube-proxy "$LOG_DIR/kube-proxy.log" "pod to ClusterIP $cip: no SSH banner"
# A free port: the range holds the instance's own Tor ports too (21540-21549 for the real node), and a
# forward that lost the bind to one of them would meet a Tor relay instead of sshd.
pf_port=$(( PORT_KUBELET + 100 + RANDOM % 400 ))
while tcp_open "$pf_port"; do pf_port=$(( PORT_KUBELET + 100 + RANDOM % 400 )); done
kubectl -n "$NS" port-forward svc/lease-ssh "$pf_port:2222" >"$TMP/pf.log" 2>&1 & PF_PID=$!
for _ in $(seq 1 40); do grep -q '^Forwarding from' "$TMP/pf.log" && break; sleep 0.5; done
[ "$(sshpass -p hunter2 ssh "${SSH_OPTS[@]}" -p "$pf_port" bob@127.0.0.1 hostname)" = lease ] \
  || fail kubelet "$TMP/pf.log" "SSH through kubectl port-forward svc/lease-ssh failed"
kill "$PF_PID"; PF_PID=""
kubectl -n "$NS" exec client -- bash -c 'exec 3<>"/dev/tcp/$KUBERNETES_SERVICE_HOST/$KUBERNETES_SERVICE_PORT"' \
  || fail kube-proxy "$LOG_DIR/kube-proxy.log" "pod to the kubernetes Service: no connection"
kapi="$(kubectl -n default get svc kubernetes -o jsonpath='{.spec.clusterIP}')"
kubectl --kubeconfig=/dev/null --server="https://$kapi:443" --certificate-authority="$STACK_DIR/k8s/pki/ca.crt" \
  --token="$(kubectl -n "$NS" create token default)" auth whoami -o jsonpath='{.status.userInfo.username}' \
  | grep -qx "system:serviceaccount:$NS:default" || fail kube-apiserver "$LOG_DIR/kube-apiserver.log" "ServiceAccount token via $kapi"
took

step "4. a killed container restarts in place"
cid="$(kubectl -n "$NS" get pod lease -o jsonpath='{.status.containerStatuses[0].containerID}')"
ctr -a "$CONTAINERD_ADDRESS" -n k8s.io tasks kill -s SIGKILL "${cid#containerd://}" >/dev/null
for _ in $(seq 1 40); do
  [ "$(kubectl -n "$NS" get pod lease -o jsonpath='{.status.containerStatuses[0].restartCount}')" = 1 ] && break; sleep 0.5
done
kubectl -n "$NS" wait --for=condition=Ready pod/lease --timeout=60s >/dev/null || fail kubelet "$KLOG" "no restart after a kill"
[ "$(kubectl -n "$NS" get pod lease -o jsonpath='{.status.podIP} {.status.containerStatuses[0].restartCount}')" = "$ip 1" ] \
  || fail kubelet "$KLOG" "restart not in place"
took

step "5. Deployment → ReplicaSet → pods; garbage collection"
kubectl -n "$NS" create deployment web --image=lscr.io/linuxserver/openssh-server:latest --replicas=2 --dry-run=client -o json \
  | jq '.spec.template.spec.containers[0].imagePullPolicy = "IfNotPresent"' | kubectl -n "$NS" apply -f - >/dev/null
kubectl -n "$NS" wait --for=condition=Available deploy/web --timeout=90s >/dev/null \
  || fail kube-controller-manager "$LOG_DIR/kube-controller-manager.log" "Deployment not available"
kubectl -n "$NS" delete deploy web --cascade=background >/dev/null
for _ in $(seq 1 60); do
  [ -z "$(kubectl -n "$NS" get rs,pods -l app=web -o name)" ] && break; sleep 1
done
[ -z "$(kubectl -n "$NS" get rs,pods -l app=web -o name)" ] \
  || fail kube-controller-manager "$LOG_DIR/kube-controller-manager.log" "ReplicaSet/pods not collected"
took

step "6. docker build, scripts/stack image load, a pod pulls it; an unknown image does not pull"
tag="smoke-node-$RANDOM"
mkdir -p "$TMP/ctx"
printf 'FROM 127.0.0.1:%s/linuxserver/openssh-server:latest\nRUN echo %s > /smoke-mark\n' "$PORT_NODE_REGISTRY" "$tag" > "$TMP/ctx/Dockerfile"
DOCKER_BUILDKIT=0 docker build -q -t "$tag:v1" "$TMP/ctx" >"$TMP/build.log" 2>&1 || fail dockerd "$TMP/build.log" "docker build failed"
"$HERE/../stack" image load "$tag:v1" || fail registry "$LOG_DIR/node-images.log" "scripts/stack image load failed"
docker rmi "$tag:v1" >/dev/null 2>&1 || true
kubectl -n "$NS" run built --image="$tag:v1" --image-pull-policy=Always --restart=Never --command -- cat /smoke-mark >/dev/null
for _ in $(seq 1 60); do
  [ "$(kubectl -n "$NS" get pod built -o jsonpath='{.status.phase}')" = Succeeded ] && break; sleep 0.5
done
[ "$(kubectl -n "$NS" logs built)" = "$tag" ] || fail kubelet "$KLOG" "the loaded image did not run"
kubectl -n "$NS" run nothere --image=docker.io/library/not-loaded-anywhere:1 --restart=Never >/dev/null
for _ in $(seq 1 40); do
  reason="$(kubectl -n "$NS" get pod nothere -o jsonpath='{.status.containerStatuses[0].state.waiting.reason}')"
  [[ "$reason" == ErrImagePull || "$reason" == ImagePullBackOff ]] && break; sleep 0.5
done
[[ "$reason" == ErrImagePull || "$reason" == ImagePullBackOff ]] || fail kubelet "$KLOG" "an unknown image: $reason"
ctr -a "$CONTAINERD_ADDRESS" -n k8s.io images rm "docker.io/library/$tag:v1" >/dev/null 2>&1 || true
took

step "7. gVisor: RuntimeClass gvisor; a lease-shaped pod runs under gVisor's kernel, SSH into it"
[ "$(kubectl get runtimeclass gvisor -o jsonpath='{.handler}')" = runsc ] || fail node "$LOG_DIR/node.log" "no RuntimeClass gvisor (handler runsc)"
kubectl -n "$NS" get pod lease -o json \
  | jq '{apiVersion, kind, metadata: {name: "sandboxed", labels: {app: "sandboxed"}},
         spec: (.spec | {containers: [.containers[0] | del(.terminationMessagePath, .terminationMessagePolicy, .volumeMounts)],
                         runtimeClassName: "gvisor", automountServiceAccountToken: false})}' \
  | kubectl -n "$NS" apply -f - >/dev/null
kubectl -n "$NS" wait --for=condition=Ready pod/sandboxed --timeout=90s >/dev/null \
  || { kubectl -n "$NS" describe pod sandboxed | tail -20 >&2; fail kubelet "$KLOG" "the gVisor pod is not Ready"; }
gip="$(kubectl -n "$NS" get pod sandboxed -o jsonpath='{.status.podIP}')"
out="$(sshpass -p hunter2 ssh "${SSH_OPTS[@]}" -p 2222 "bob@$gip" 'id -un; dmesg | head -1; cat /proc/version')" \
  || fail kubelet "$LOG_DIR/containerd.log" "SSH with the password into the gVisor pod $gip failed"
say "  gVisor pod: $(echo "$out" | tr '\n' '|')"
[ "$(sed -n 1p <<<"$out")" = bob ] || fail kubelet "$KLOG" "SSH into the gVisor pod: $out"
grep -q 'Starting gVisor' <<<"$out" || fail containerd "$LOG_DIR/containerd.log" "the pod's dmesg is not gVisor's: $out"
host_version="$(cat /proc/version)"
[ "$(sed -n 3p <<<"$out")" != "$host_version" ] || fail containerd "$LOG_DIR/containerd.log" "the gVisor pod sees the host kernel"
[ "$(kubectl -n "$NS" exec lease -- cat /proc/version)" = "$host_version" ] || fail kubelet "$KLOG" "the runc pod does not see the host kernel"
took

step "8. NetworkPolicy enforced: a deny-all-ingress policy cuts a pod off, not the node"
NPLOG="$LOG_DIR/kube-network-policies.log"
curl -sf -m 2 -o /dev/null "http://127.0.0.1:$PORT_NETPOL_METRICS/metrics" || fail kube-network-policies "$NPLOG" "no metrics on $PORT_NETPOL_METRICS"
nft list table inet kube-network-policies >/dev/null 2>&1 || fail kube-network-policies "$NPLOG" "no nftables table inet kube-network-policies"
awk '$1 == 100 {f = 1} END {exit !f}' /proc/net/netfilter/nfnetlink_queue || fail kube-network-policies "$NPLOG" "nothing listens on nfqueue 100"
# dial IP PORT: from the client pod, prints `open` or `closed` (the pod's verdict: a failing exec is no verdict).
# shellcheck disable=SC2016  # $0 and $1 are the pod's shell's
dial() { kubectl -n "$NS" exec client -- bash -c 'timeout 3 bash -c "exec 3<>/dev/tcp/$0/$1" && echo open || echo closed' "$1" "$2"; }
[ "$(dial "$ip" 2222)" = open ] || fail kube-network-policies "$NPLOG" "client → lease before any policy: not open"
kubectl -n "$NS" apply -f - >/dev/null <<'EOF'
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: lease-deny-ingress}
spec:
  podSelector: {matchLabels: {app: lease}}
  policyTypes: [Ingress]
EOF
for _ in $(seq 1 20); do [ "$(dial "$ip" 2222)" = closed ] && break; sleep 0.5; done
[ "$(dial "$ip" 2222)" = closed ] || fail kube-network-policies "$NPLOG" "client → lease $ip:2222 opened under a deny-all policy"
[ "$(dial "$cip" 2222)" = closed ] || fail kube-network-policies "$NPLOG" "client → lease ClusterIP $cip:2222 opened under a deny-all policy"
[ "$(sshpass -p hunter2 ssh "${SSH_OPTS[@]}" -p 2222 "bob@$ip" hostname)" = lease ] \
  || fail kube-network-policies "$NPLOG" "SSH from the host into the lease failed under the policy (the node must pass)"
kubectl -n "$NS" delete networkpolicy lease-deny-ingress >/dev/null
for _ in $(seq 1 20); do [ "$(dial "$ip" 2222)" = open ] && break; sleep 0.5; done
[ "$(dial "$ip" 2222)" = open ] || fail kube-network-policies "$NPLOG" "client → lease still closed after the policy went"
took

step "9. the instance's own relay, mints and Tor on $STACK_ADDR: reached from a pod and the host, bound nowhere else"
# (ss / pid sessions: `ps --sid` of each recorded peer, as start_proc runs every peer in a session of its own)
peer_names=(nostr-relay cashu-mint-a cashu-mint-b)
for f in "$PID_DIR"/tor-*.pid; do [ -e "$f" ] && peer_names+=("$(basename "$f" .pid)"); done
running=(); for n in "${peer_names[@]}"; do is_running "$n" && running+=("$n"); done
if [ "$STACK_ADDR" = 127.0.0.1 ] || [ ${#running[@]} -eq 0 ]; then
  say "  skipped: no peers of this instance run on a bridge address (STACK_ADDR $STACK_ADDR; \`scripts/stack up tor cashu nostr\`)"
else
  for n in nostr-relay cashu-mint-a cashu-mint-b tor-auth0 tor-client9; do
    is_running "$n" || fail "$n" "$LOG_DIR/$n.log" "not running (the instance's peers are partly up: ${running[*]})"
  done
  if ! { [ "${NOSTR_RELAYS:-}" = "ws://$STACK_ADDR:$PORT_RELAY" ] && [ "${CASHU_MINT_URL:-}" = "http://$STACK_ADDR:$PORT_MINT" ] &&
         [ "${PAYGRESS_TOR_SOCKS:-}" = "$STACK_ADDR:$PORT_TOR_SOCKS" ] && [ "${TORSOCKS_TOR_ADDRESS:-}" = "$STACK_ADDR" ] &&
         grep -q "orports = \[\"$STACK_ADDR:" "${PAYGRESS_TOR_NETWORK_CONFIG:-/dev/null}"; }; then
    fail stack "$STACK_DIR/env.sh" "env does not name the peers at $STACK_ADDR: NOSTR_RELAYS=${NOSTR_RELAYS:-} CASHU_MINT_URL=${CASHU_MINT_URL:-} PAYGRESS_TOR_SOCKS=${PAYGRESS_TOR_SOCKS:-}"
  fi
  dir0=$(( PORT_TOR_BASE + 20 ))
  # The probe runs on the host and, as is, in the client pod (bash, coreutils; no curl there): each answer in a section.
  cat >"$TMP/probe.sh" <<'PROBE'
a="$1" relay="$2" mint="$3" dir="$4" socks="$5"
# ask PORT REQUEST [head args]: the answer (up to 8 KiB, or what head stops at) within 5 s
ask() { timeout 5 bash -c 'exec 3<>"/dev/tcp/$0/$1" || exit 1; printf "%b" "$2" >&3; shift 2; head "$@" <&3' "$a" "$@" 2>/dev/null | tr -d '\r'; }
echo "== relay"; ask "$relay" "GET / HTTP/1.1\r\nHost: $a:$relay\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: cGF5Z3Jlc3Mtc3RhY2stMQ==\r\n\r\n" -n 1
echo "== mint"; ask "$mint" "GET /v1/info HTTP/1.0\r\nHost: $a:$mint\r\nConnection: close\r\n\r\n" -c 8192; echo
echo "== dir"; ask "$dir" "GET /tor/server/authority HTTP/1.0\r\nHost: $a:$dir\r\n\r\n" -c 8192
echo "== socks"; ask "$socks" '\x05\x01\x00' -c 2 | od -An -tx1 | tr -d ' \n'; echo
echo "== end"
PROBE
  # sec NAME FILE: a section of the probe's output; has NAME FILE REGEX...: it has a line matching each REGEX.
  sec() { awk -v s="== $1" '$0 == s {on = 1; next} /^== / {on = 0} on' "$2"; }
  has() { local n="$1" f="$2" r; shift 2; for r in "$@"; do sec "$n" "$f" | grep -q -- "$r" || return 1; done; }
  # answers WHERE FILE: every peer answered as itself.
  answers() {
    has relay "$2" '^HTTP/1.1 101' ||
      fail nostr-relay "$LOG_DIR/nostr-relay.log" "$1: no websocket handshake at ws://$STACK_ADDR:$PORT_RELAY: $(sec relay "$2" | head -c 200)"
    has mint "$2" '^HTTP/1.1 200' '"name":"paygress test mint mint-a"' ||
      fail cashu-mint-a "$LOG_DIR/cashu-mint-a.log" "$1: GET http://$STACK_ADDR:$PORT_MINT/v1/info: $(sec mint "$2" | head -c 200)"
    has dir "$2" '^HTTP/1.0 200' "^router pgauth0 $STACK_ADDR $PORT_TOR_BASE " ||
      fail tor-auth0 "$LOG_DIR/tor-auth0.log" "$1: GET http://$STACK_ADDR:$dir0/tor/server/authority: $(sec dir "$2" | head -c 200)"
    [ "$(sec socks "$2")" = 0500 ] ||
      fail tor-client9 "$LOG_DIR/tor-client9.log" "$1: SocksPort $STACK_ADDR:$PORT_TOR_SOCKS: no SOCKS5 greeting ($(sec socks "$2"))"
  }
  bash "$TMP/probe.sh" "$STACK_ADDR" "$PORT_RELAY" "$PORT_MINT" "$dir0" "$PORT_TOR_SOCKS" >"$TMP/host.out"
  answers "from the host" "$TMP/host.out"
  kubectl -n "$NS" exec -i client -- bash -s -- "$STACK_ADDR" "$PORT_RELAY" "$PORT_MINT" "$dir0" "$PORT_TOR_SOCKS" \
    <"$TMP/probe.sh" >"$TMP/pod.out" || fail kubelet "$KLOG" "kubectl exec of the peer probe in pod client failed"
  answers "from pod client ($(kubectl -n "$NS" get pod client -o jsonpath='{.status.podIP}'))" "$TMP/pod.out"
  # Listening sockets (TCP: every port of these peers is TCP) of the peers' process sessions, and of anything on their ports.
  pids=" "
  for n in "${running[@]}"; do
    for p in $(ps -o pid= --sid "$(recorded_pid "$n")"); do pids+="$p "; done
  done
  bad=""; seen=""
  while read -r _ _ _ local _ users; do
    port="${local##*:}"; addr="${local%:*}"; pid=""
    if [[ "$users" =~ pid=([0-9]+) ]]; then pid="${BASH_REMATCH[1]}"; fi
    ours=0; [[ "$pids" == *" $pid "* ]] && ours=1
    peer_port=0
    { [ "$port" = "$PORT_RELAY" ] || [ "$port" = "$PORT_MINT" ] || [ "$port" = "$PORT_MINT_ALT" ] ||
      [ "$port" = "$PORT_TOR_SOCKS" ] || { [ "$port" -ge "$PORT_TOR_BASE" ] && [ "$port" -lt $(( PORT_TOR_BASE + 60 )) ]; }; } && peer_port=1
    [ $ours = 1 ] || [ $peer_port = 1 ] || continue
    if [ "$addr" = "$STACK_ADDR" ] && [ $ours = 1 ]; then seen+=" $port"; continue; fi
    # tor's ControlPorts (no auth) stay on loopback: only these scripts use them, pods must not reach them.
    if [ "$addr" = 127.0.0.1 ] && [ $ours = 1 ] && [ "$port" -ge $(( PORT_TOR_BASE + 40 )) ] && [ "$port" -lt $(( PORT_TOR_BASE + 50 )) ]; then continue; fi
    bad+=" $local($users)"
  done < <(ss -Hltnp | tee "$LOG_DIR/smoke-node-ss.log")
  [ -z "$bad" ] || fail stack "$LOG_DIR/smoke-node-ss.log" "listening elsewhere than $STACK_ADDR (ControlPorts on 127.0.0.1 aside):$bad"
  for p in "$PORT_RELAY" "$PORT_MINT" "$PORT_MINT_ALT" "$PORT_TOR_SOCKS" "$PORT_TOR_BASE" "$dir0" $(( PORT_TOR_BASE + 8 )); do
    [[ " $seen " == *" $p "* ]] || fail stack "$LOG_DIR/smoke-node-ss.log" "nothing of the peers listens on $STACK_ADDR:$p"
  done
  say "  $(wc -w <<<"$seen") peer sockets, all on $STACK_ADDR; reached from the host and from pod client"
fi
took

step "10. the namespace is deleted to the end (namespace controller); volumes are scripts/smoke/storage.sh's"
kubectl delete ns "$NS" --timeout=90s >/dev/null || fail kube-controller-manager "$LOG_DIR/kube-controller-manager.log" "namespace not deleted"
took
say "all passed"
