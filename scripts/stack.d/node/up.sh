# scripts/stack.d/node/up.sh — node_up (the node's processes, in order), node_wait, node_status and node_env, with
# the readiness probes they use.

_node_registry_ready() { curl -sf -m 2 "http://127.0.0.1:$PORT_NODE_REGISTRY/v2/"; }
_node_ctr_ready() { _node_ctr version; }
_node_docker_ready() { DOCKER_HOST="$NODE_DOCKER_HOST" docker version; }
_node_crates_ready() { curl -sf -m 2 "$NODE_CRATES_URL/index/config.json"; }
_node_kubelet_ready() { curl -sf -m 2 "http://127.0.0.1:$PORT_KUBELET_HEALTHZ/healthz"; }
_node_registered_ready() {
  _node_kubectl get node "$NODE_NAME" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}' | grep -qx True
}
_node_scheduler_ready() { curl -skf -m 2 "https://127.0.0.1:$PORT_SCHEDULER/healthz"; }
_node_cm_ready() { curl -skf -m 2 "https://127.0.0.1:$PORT_CONTROLLER_MANAGER/healthz"; }
_node_proxy_ready() { curl -sf -m 2 "http://127.0.0.1:$PORT_PROXY_HEALTHZ/healthz"; }
# Enforcing: its table is in place and a process listens on its queue (nfnetlink_queue lists bound queues only).
_node_netpol_ready() {
  curl -sf -m 2 -o /dev/null "http://127.0.0.1:$PORT_NETPOL_METRICS/metrics" &&
    nft list table inet "$NODE_NETPOL_TABLE" >/dev/null &&
    awk -v q="$NODE_NETPOL_QUEUE" '$1 == q {f = 1} END {exit !f}' /proc/net/netfilter/nfnetlink_queue
}

# _node_start NAME CMD...: restart_if_changed + start_proc, failing at once if the port is someone else's.
_node_start() {
  local name="$1"; shift
  restart_if_changed "$name" "$@"
  is_running "$name" && return 0
  [ -x "$1" ] || fail "$name" "$LOG_DIR/k8s-build-node.log" "$1 not built (scripts/stack install node)"
  start_proc "$name" "$@"
}

node_up() {
  [ "$(id -u)" = 0 ] || fail node "$LOG_DIR/node.log" "the real node needs root"
  mkdir -p "$NODE_DIR"
  _node_machine_record
  node_network_up
  _node_cni_config

  _node_registry_config
  # Its OpenTelemetry exporter would otherwise post traces to localhost:4318 every few seconds.
  OTEL_TRACES_EXPORTER=none OTEL_SDK_DISABLED=true \
    _node_start registry "$NODE_REGISTRY_BIN" serve "$NODE_DIR/registry/config.yml"
  _k8s_wait_proc registry 30 _node_registry_ready

  _node_containerd_config
  # A fixed PATH (in the command line, so a change restarts it) with gVisor's shim first.
  _node_start containerd /usr/bin/env PATH="$(dirname "$NODE_RUNSC_SHIM"):/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" \
    /usr/bin/containerd --config "$NODE_CTR_DIR/config.toml"
  _k8s_wait_proc containerd 30 _node_ctr_ready
  _node_import "$(_node_pause_archive)" "$NODE_SANDBOX_IMAGE"
  _node_import "$(_node_ssh_archive)" "$NODE_SSH_IMAGE"
  # The Dockerfile's base images: into the registry only (not unpacked on the node).
  _node_import_registry "$(_node_debian_archive)" "$NODE_DEBIAN_IMAGE"
  _node_import_registry "$(_node_rust_archive)" "$NODE_RUST_IMAGE"

  # The crates.io mirror for build steps, on the bridge address only (a copy of the script in the stack dir, so a
  # change of it restarts the mirror and the command line does not depend on the checkout).
  mkdir -p "$NODE_CRATES_CACHE"
  _node_config crates-mirror "$NODE_DIR/crates-mirror.py" < "$NODE_SRC/crates-mirror.py"
  _node_start crates-mirror /usr/bin/python3 "$NODE_DIR/crates-mirror.py" --listen "$NODE_IP" --port "$PORT_NODE_CRATES" \
    --cache "$NODE_CRATES_CACHE" --host-cache "${CARGO_HOME:-$HOME/.cargo}/registry/cache/index.crates.io-*"

  # A Docker engine for `docker build` and `scripts/stack image load` (DOCKER_HOST in env), on the node's
  # containerd (namespace moby). Its containers (build steps) sit on the node's bridge, addresses from
  # NODE_DOCKER_CIDR (disjoint from the pods'), the bridge's address as gateway and as their only DNS server (none
  # listens there: nothing is resolved, no query leaves the machine); no iptables rules, no ip_forward, no
  # masquerade, so like a pod they reach 198.18.0.0/16 (the crates mirror, the stack's peers) and nothing else
  # (PAYGRESS-NODE-FWD). Docker Hub pulls (`FROM rust:…`) go to the stack's registry (--registry-mirror; loopback
  # registries need no TLS); a proxy that refuses every connection keeps dockerd's fallback to the real Docker Hub
  # (an image the stack's registry lacks) from leaving the machine: Go never proxies loopback, and NO_PROXY the bridge.
  mkdir -p "$NODE_DOCKER_DIR/bin"
  ln -sfn /usr/bin/docker "$NODE_DOCKER_DIR/bin/docker"
  _node_start dockerd /usr/bin/env HTTP_PROXY=http://127.0.0.1:9 HTTPS_PROXY=http://127.0.0.1:9 NO_PROXY="$NODE_NET" \
    /usr/sbin/dockerd -H "$NODE_DOCKER_HOST" --data-root "$NODE_DOCKER_DIR/data" \
    --exec-root "$NODE_DOCKER_DIR/exec" --pidfile "$NODE_DOCKER_DIR/dockerd.pid" --containerd "$NODE_CTR_SOCK" \
    --bridge="$NODE_BRIDGE" --fixed-cidr="$NODE_DOCKER_CIDR" --dns="$NODE_IP" \
    --iptables=false --ip6tables=false --ip-forward=false --ip-masq=false \
    --registry-mirror="http://127.0.0.1:$PORT_NODE_REGISTRY" \
    --storage-driver=overlay2 --log-level=warn

  _node_pki
  _node_rbac
  _node_storage
  _node_runtime_class
  _node_kubelet_config
  _node_proxy_config
  local k="$K8S_DIR/pki"
  # A Node object left in this stack dir by the simulated node of older stacks (tools/stack-node, gone; its pod
  # CIDR and labels are wrong for the real one): the kubelet registers anew.
  if ! is_running kubelet && _node_kubectl get node "$NODE_NAME" -o jsonpath='{.metadata.labels}' 2>/dev/null \
      | grep -q 'paygress.dev/stack-node'; then
    _node_kubectl delete node "$NODE_NAME" >>"$LOG_DIR/node.log" 2>&1 || true
  fi

  _node_start kubelet "$NODE_BIN/kubelet" --config="$NODE_DIR/kubelet.yaml" \
    --kubeconfig="$NODE_PKI/kubelet-client.kubeconfig" --root-dir="$NODE_KUBELET_DIR" \
    --hostname-override="$NODE_NAME" --node-ip="$NODE_IP" --v=1

  _node_start kube-scheduler "$NODE_BIN/kube-scheduler" \
    --kubeconfig="$NODE_PKI/kube-scheduler.kubeconfig" \
    --authentication-kubeconfig="$NODE_PKI/kube-scheduler.kubeconfig" \
    --authorization-kubeconfig="$NODE_PKI/kube-scheduler.kubeconfig" \
    --bind-address=127.0.0.1 --secure-port="$PORT_SCHEDULER" --cert-dir="$NODE_DIR/kube-scheduler" \
    --leader-elect=false --profiling=false --v=1

  # --use-service-account-credentials: each controller acts as its own ServiceAccount (as kubeadm sets it up).
  _node_start kube-controller-manager "$NODE_BIN/kube-controller-manager" \
    --kubeconfig="$NODE_PKI/kube-controller-manager.kubeconfig" \
    --authentication-kubeconfig="$NODE_PKI/kube-controller-manager.kubeconfig" \
    --authorization-kubeconfig="$NODE_PKI/kube-controller-manager.kubeconfig" \
    --bind-address=127.0.0.1 --secure-port="$PORT_CONTROLLER_MANAGER" --cert-dir="$NODE_DIR/kube-controller-manager" \
    --service-account-private-key-file="$k/sa.key" --root-ca-file="$k/ca.crt" \
    --use-service-account-credentials=true \
    --cluster-signing-cert-file="$k/ca.crt" --cluster-signing-key-file="$k/ca.key" \
    --service-cluster-ip-range="$K8S_SERVICE_CIDR" --allocate-node-cidrs=false \
    --leader-elect=false --profiling=false --v=1

  _node_start kube-proxy "$NODE_BIN/kube-proxy" --config="$NODE_DIR/kube-proxy.yaml" --v=1

  # NetworkPolicy: bridged (pod to pod) traffic through iptables' hooks (the machine's values restored at down);
  # then the enforcer, fail closed (no --fail-open: while it is down, policy-selected pods get no new connections).
  sysctl -q -w net.bridge.bridge-nf-call-iptables=1 net.bridge.bridge-nf-call-ip6tables=1 >/dev/null \
    || fail kube-network-policies "$LOG_DIR/node.log" "cannot set net.bridge.bridge-nf-call-iptables (br_netfilter)"
  # Restarted at once when it exits: a dead enforcer leaves its table with a stale set, so pods started meanwhile
  # would go unpoliced. (stop_proc TERMs the whole process group: loop and enforcer.)
  [ -x "$NODE_NETPOL_BIN" ] || fail kube-network-policies "$LOG_DIR/node-build-netpol.log" "$NODE_NETPOL_BIN not built (scripts/stack install node)"
  # shellcheck disable=SC2016  # expanded by the loop's sh
  _node_start kube-network-policies /bin/sh -c 'while :; do "$@"; echo "[stack] kube-network-policies exited ($?), restarting" >&2; sleep 1; done' \
    kube-network-policies "$NODE_NETPOL_BIN" --kubeconfig="$NODE_PKI/kube-network-policies.kubeconfig" \
    --hostname-override="$NODE_NAME" --nfqueue-id="$NODE_NETPOL_QUEUE" --disable-nri \
    --metrics-bind-address="127.0.0.1:$PORT_NETPOL_METRICS" --v=1
  # Dynamic storage as k3s and minikube have it (provisioners.sh).
  _node_provisioners_up
  touch "$NODE_DIR/real"
}

node_wait() {
  _k8s_wait_proc crates-mirror 15 _node_crates_ready
  _k8s_wait_proc dockerd 30 _node_docker_ready
  _node_docker_pull "$NODE_DEBIAN_IMAGE" "$NODE_RUST_IMAGE"
  _k8s_wait_proc kubelet 60 _node_kubelet_ready
  _k8s_wait_proc kube-scheduler 60 _node_scheduler_ready
  _k8s_wait_proc kube-controller-manager 60 _node_cm_ready
  _k8s_wait_proc kube-proxy 60 _node_proxy_ready
  _k8s_wait_proc kubelet 90 _node_registered_ready
  _k8s_wait_proc kube-network-policies 60 _node_netpol_ready
  # The kubelet sets kernel.panic=10 and kernel.panic_on_oops=1 once, at start; a test machine should not
  # reboot on an oops, so they go back to the machine's values at once (the kubelet does not check them again).
  _node_restore_sysctls kernel.panic kernel.panic_on_oops
}

node_status() {
  is_running registry && _node_registry_ready >/dev/null 2>&1 && is_running dockerd \
    && is_running crates-mirror && _node_crates_ready >/dev/null 2>&1 \
    && is_running containerd && _node_ctr_ready >/dev/null 2>&1 && is_running kubelet && _node_kubelet_ready >/dev/null 2>&1 \
    && is_running kube-scheduler && is_running kube-controller-manager && is_running kube-proxy \
    && _node_registered_ready >/dev/null 2>&1 && is_running kube-network-policies && _node_netpol_ready >/dev/null 2>&1 \
    && _node_provisioners_running
}

node_env() {
  echo "export DOCKER_HOST='$NODE_DOCKER_HOST'"
  # BuildKit for `docker build` (cache mounts, parallel stages): the preinstalled docker 28 client
  # (/usr/local/bin/docker) builds only through the buildx plugin, which is not installed (and could only be
  # fetched from GitHub); Debian's 20.10 client (/usr/bin/docker, package docker.io) uses the daemon's built-in
  # BuildKit with DOCKER_BUILDKIT=1. So a directory holding only `docker` -> /usr/bin/docker goes first on PATH.
  echo "export PATH='$NODE_DOCKER_DIR/bin':\$PATH"
  echo "export DOCKER_BUILDKIT=1"
  echo "export PAYGRESS_CRATES_MIRROR='$NODE_CRATES_URL'"
  echo "export CONTAINERD_ADDRESS='$NODE_CTR_SOCK'"
  echo "export CONTAINERD_NAMESPACE=k8s.io"
}
