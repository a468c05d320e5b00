# scripts/stack.d/node/config.sh — the files the node's processes read, written at up: containerd's (with runsc.toml),
# the registry's, certificates and kubeconfigs from the stack CA, the kubelet's and kube-proxy's configurations.

_node_containerd_config() {
  local d="$NODE_CTR_DIR" r
  mkdir -p "$d/root" "$d/state" "$d/opt" "$d/runc" "$d/certs.d"
  # No pull ever leaves the machine: every registry's only host is the stack's own registry on loopback (`server`
  # replaces the upstream, with no fallback to it), which holds every image loaded onto the node under its own
  # name, so `imagePullPolicy: Always` pulls for real and an image never loaded fails at once.
  for r in _default docker.io registry.k8s.io lscr.io ghcr.io quay.io gcr.io; do
    mkdir -p "$d/certs.d/$r"
    printf 'server = "http://127.0.0.1:%s"\n\n[host."http://127.0.0.1:%s"]\n  capabilities = ["pull", "resolve", "push"]\n' \
      "$PORT_NODE_REGISTRY" "$PORT_NODE_REGISTRY" > "$d/certs.d/$r/hosts.toml"
  done
  mkdir -p "$d/runsc" "$d/runsc-log"
  # Read by the shim at each pod's start (no containerd restart needed); runsc_config: runsc's flags. Platform
  # ptrace: Debian's runsc predates systrap, and its KVM platform hangs in this VM. Network host (gVisor's hostinet,
  # in the pod's netns): with its own netstack this runsc fails every pod ("cannot run with network enabled in root
  # network namespace": it takes the existence of net.core.rmem_default, in every netns on this kernel, for the
  # host's namespace). docs/stack.md, "gVisor on the real node".
  cat > "$d/runsc.toml.new" <<EOF
binary_name = "/usr/bin/runsc"
root = "$d/runsc"
log_path = "$d/runsc-log/%ID%/shim.log"
log_level = "info"
[runsc_config]
  platform = "ptrace"
  network = "host"
EOF
  mv "$d/runsc.toml.new" "$d/runsc.toml"
  _node_config containerd "$d/config.toml" <<EOF
version = 2
root = "$d/root"
state = "$d/state"
oom_score = 0

[grpc]
  address = "$NODE_CTR_SOCK"

[ttrpc]
  address = ""

[debug]
  address = ""
  level = "info"

[metrics]
  address = ""

[plugins]
  [plugins."io.containerd.internal.v1.opt"]
    path = "$d/opt"
  [plugins."io.containerd.grpc.v1.cri"]
    sandbox_image = "$NODE_SANDBOX_IMAGE"
    # root here lacks CAP_SYS_RESOURCE: runc cannot lower oom_score_adj below the caller's (docs/stack.md).
    restrict_oom_score_adj = true
    stream_server_address = "127.0.0.1"
    stream_server_port = "0"
    enable_selinux = false
    [plugins."io.containerd.grpc.v1.cri".containerd]
      snapshotter = "overlayfs"
      default_runtime_name = "runc"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
        runtime_type = "io.containerd.runc.v2"
        [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
          SystemdCgroup = false
          Root = "$d/runc"
      # gVisor (RuntimeClass $NODE_RUNTIME_CLASS): containerd-shim-runsc-v1 from containerd's PATH; the shim's
      # options and runsc's flags in runsc.toml.
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runsc]
        runtime_type = "io.containerd.runsc.v1"
        [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runsc.options]
          TypeUrl = "io.containerd.runsc.v1.options"
          ConfigPath = "$d/runsc.toml"
    [plugins."io.containerd.grpc.v1.cri".cni]
      bin_dir = "/usr/lib/cni"
      conf_dir = "$NODE_DIR/cni/net.d"
      max_conf_num = 1
    [plugins."io.containerd.grpc.v1.cri".registry]
      config_path = "$d/certs.d"
EOF
}

_node_registry_config() {
  mkdir -p "$NODE_DIR/registry/data"
  [ -s "$NODE_DIR/registry/http.secret" ] || { openssl rand -hex 32 > "$NODE_DIR/registry/http.secret"; chmod 600 "$NODE_DIR/registry/http.secret"; }
  _node_config registry "$NODE_DIR/registry/config.yml" <<EOF
version: 0.1
log:
  level: warn
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: $NODE_DIR/registry/data
  delete:
    enabled: true
  maintenance:
    uploadpurging:
      enabled: false
http:
  addr: 127.0.0.1:$PORT_NODE_REGISTRY
  secret: $(cat "$NODE_DIR/registry/http.secret")
EOF
}

# Certificates from the stack CA (k8s.sh's PKI): one client certificate per component, the kubelet's serving one.
_node_cert() {
  local name="$1" subj="$2" ext="$3" k="$K8S_DIR/pki"
  [ -s "$NODE_PKI/$name.crt" ] && return 0
  ( cd "$NODE_PKI" &&
    openssl req -newkey rsa:2048 -nodes -subj "$subj" -keyout "$name.key" -out "$name.csr" &&
    printf '%b' "$ext" > "$name.ext" &&
    openssl x509 -req -in "$name.csr" -CA "$k/ca.crt" -CAkey "$k/ca.key" -CAcreateserial -days 3650 \
      -extfile "$name.ext" -out "$name.crt.tmp" && chmod 600 "$name.key" && mv "$name.crt.tmp" "$name.crt"
  ) >>"$LOG_DIR/node-pki.log" 2>&1 || fail node "$LOG_DIR/node-pki.log" "certificate $name: openssl failed"
}

# _node_kubeconfig NAME: a kubeconfig for the API server with NAME's client certificate.
_node_kubeconfig() {
  local name="$1" k="$K8S_DIR/pki" proc="$1"
  [ "$name" != kubelet-client ] || proc=kubelet
  _node_config "$proc" "$NODE_PKI/$name.kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: paygress
  cluster:
    server: https://$(_k8s_api_host):$PORT_APISERVER
    certificate-authority: $k/ca.crt
users:
- name: $name
  user:
    client-certificate: $NODE_PKI/$name.crt
    client-key: $NODE_PKI/$name.key
contexts:
- name: paygress
  context:
    cluster: paygress
    user: $name
current-context: paygress
EOF
  chmod 600 "$NODE_PKI/$name.kubeconfig"
}

_node_pki() {
  mkdir -p "$NODE_PKI"
  local client='extendedKeyUsage=clientAuth\n'
  _node_cert kubelet-client "/O=system:nodes/CN=system:node:$NODE_NAME" "$client"
  _node_cert kubelet-serving "/O=system:nodes/CN=system:node:$NODE_NAME" \
    "subjectAltName=IP:$NODE_IP,IP:127.0.0.1,DNS:$NODE_NAME,DNS:localhost\nextendedKeyUsage=serverAuth\n"
  _node_cert kube-scheduler "/CN=system:kube-scheduler" "$client"
  _node_cert kube-controller-manager "/CN=system:kube-controller-manager" "$client"
  _node_cert kube-proxy "/CN=system:kube-proxy" "$client"
  _node_cert kube-network-policies "/CN=paygress:kube-network-policies" "$client"
  _node_kubeconfig kubelet-client
  _node_kubeconfig kube-scheduler
  _node_kubeconfig kube-controller-manager
  _node_kubeconfig kube-proxy
  _node_kubeconfig kube-network-policies
}

_node_kubelet_config() {
  mkdir -p "$NODE_KUBELET_DIR" "$NODE_DIR/pod-logs"
  # Like kind's: image GC never removes an image (they cannot be pulled again here), disk-pressure eviction off;
  # resolvConf empty (pods get no resolver of the host's: nothing leaves the machine), no cluster DNS yet.
  _node_config kubelet "$NODE_DIR/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: $NODE_IP
port: $PORT_KUBELET
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: $PORT_KUBELET_HEALTHZ
tlsCertFile: $NODE_PKI/kubelet-serving.crt
tlsPrivateKeyFile: $NODE_PKI/kubelet-serving.key
authentication:
  anonymous:
    enabled: false
  webhook:
    enabled: true
  x509:
    clientCAFile: $K8S_DIR/pki/ca.crt
authorization:
  mode: Webhook
containerRuntimeEndpoint: unix://$NODE_CTR_SOCK
cgroupDriver: cgroupfs
failCgroupV1: false
failSwapOn: false
resolvConf: ""
podLogsDir: $NODE_DIR/pod-logs
imageGCHighThresholdPercent: 100
evictionHard:
  memory.available: "100Mi"
  nodefs.available: "0%"
  nodefs.inodesFree: "0%"
  imagefs.available: "0%"
hairpinMode: hairpin-veth
serializeImagePulls: false
rotateCertificates: false
serverTLSBootstrap: false
EOF
}

_node_proxy_config() {
  _node_config kube-proxy "$NODE_DIR/kube-proxy.yaml" <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection:
  kubeconfig: $NODE_PKI/kube-proxy.kubeconfig
hostnameOverride: $NODE_NAME
mode: iptables
clusterCIDR: $NODE_NET
bindAddress: 127.0.0.1
healthzBindAddress: 127.0.0.1:$PORT_PROXY_HEALTHZ
metricsBindAddress: 127.0.0.1:$PORT_PROXY_METRICS
nodePortAddresses: ["$NODE_IP/32"]
iptables:
  localhostNodePorts: false
  masqueradeAll: false
conntrack:
  # 0: leave the machine's conntrack sysctls alone.
  maxPerCore: 0
  min: 0
  tcpEstablishedTimeout: 0s
  tcpCloseWaitTimeout: 0s
EOF
}
