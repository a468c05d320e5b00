# scripts/stack.d/node/install.sh — node_install: Debian packages, and the Go builds of the registry, gVisor's
# containerd shim and kube-network-policies (the kube binaries through k8s.sh's k8s_build_cmds); then the images.

_node_apt() {
  local missing=() p logf="$LOG_DIR/node-build-apt.log"
  for p in "${NODE_APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q '^install ok installed' || missing+=("$p")
  done
  [ ${#missing[@]} -gt 0 ] || return 0
  log "node: apt-get install ${missing[*]} (log $logf)"
  { apt-get install -y -q --no-install-recommends "${missing[@]}" || \
    { apt-get update -q && apt-get install -y -q --no-install-recommends "${missing[@]}"; }; } >>"$logf" 2>&1 \
    || fail node "$logf" "apt-get install ${missing[*]} failed"
}

# _node_go_install PEER BIN PACKAGE@VERSION: a command from the Go module proxy whose module has no replace
# directives (so a plain `go install …@version`) into BIN's directory, unless BIN is there.
_node_go_install() {
  local peer="$1" bin="$2" pkg="$3" logf="$LOG_DIR/node-build-$1.log" t0
  [ -x "$bin" ] && return 0
  t0=$(date +%s)
  log "node: building $peer ($pkg) from the Go module proxy (log $logf)"
  mkdir -p "$(dirname "$bin")"
  ( cd "$(dirname "$bin")" && GOWORK=off GOBIN="$(dirname "$bin")" nice -n 10 "$K8S_GO" install \
      -trimpath -ldflags='-s -w' "$pkg" ) >>"$logf" 2>&1 || fail "$peer" "$logf" "build of $peer failed"
  log "node: $peer built in $(( $(date +%s) - t0 ))s"
}

# The local registry: CNCF Distribution's `registry`.
_node_build_registry() {
  _node_go_install registry "$NODE_REGISTRY_BIN" "github.com/distribution/distribution/v3/cmd/registry@$NODE_REGISTRY_VERSION"
}

# gVisor's containerd shim (containerd-shim-runsc-v1), built from gVisor's module (Go module proxy) copied under
# build/ with node/gvisor-shim-oom.patch: the shim sets its own oom_score_adj to -999 and fails the pod's start if
# it may not (root here lacks CAP_SYS_RESOURCE, as for containerd's restrict_oom_score_adj); patched, it keeps the
# score it inherited. It runs Debian's /usr/bin/runsc (binary_name in runsc.toml).
_node_build_runsc_shim() {
  [ -x "$NODE_RUNSC_SHIM" ] && return 0
  local logf="$LOG_DIR/node-build-gvisor.log" t0 top src
  t0=$(date +%s) top="$(dirname "$(dirname "$NODE_RUNSC_SHIM")")"
  src="$top/src"
  log "node: building containerd-shim-runsc-v1 (gvisor.dev/gvisor $NODE_GVISOR_VERSION) from the Go module proxy (log $logf)"
  mkdir -p "$top/bin"
  ( cd "$top" && GOWORK=off "$K8S_GO" mod download "gvisor.dev/gvisor@$NODE_GVISOR_VERSION" &&
    mod="$("$K8S_GO" env GOMODCACHE)/gvisor.dev/gvisor@$NODE_GVISOR_VERSION" &&
    [ -d "$mod" ] && rm -rf "$src" && cp -r "$mod" "$src" && chmod -R u+w "$src" &&
    patch -d "$src" -p1 < "$NODE_SRC/gvisor-shim-oom.patch" &&
    cd "$src" && GOWORK=off CGO_ENABLED=0 nice -n 10 "$K8S_GO" build -trimpath -ldflags='-s -w' \
      -o "$NODE_RUNSC_SHIM" ./shim ) >>"$logf" 2>&1 || fail containerd "$logf" "build of containerd-shim-runsc-v1 failed"
  rm -rf "$src"
  find "$(dirname "$top")" -maxdepth 1 -name 'gvisor-shim-*' ! -path "$top" -exec rm -rf {} +   # older recipes
  log "node: containerd-shim-runsc-v1 built in $(( $(date +%s) - t0 ))s"
}

# kube-network-policies, built from its module (Go module proxy) copied under build/ and patched; like the shim above.
_node_build_netpol() {
  [ -x "$NODE_NETPOL_BIN" ] && return 0
  local logf="$LOG_DIR/node-build-netpol.log" t0 top src
  t0=$(date +%s) top="$(dirname "$(dirname "$NODE_NETPOL_BIN")")"
  src="$top/src"
  log "node: building kube-network-policies $NODE_NETPOL_VERSION (patched) from the Go module proxy (log $logf)"
  mkdir -p "$top/bin"
  ( cd "$top" && GOWORK=off "$K8S_GO" mod download "sigs.k8s.io/kube-network-policies@$NODE_NETPOL_VERSION" &&
    mod="$("$K8S_GO" env GOMODCACHE)/sigs.k8s.io/kube-network-policies@$NODE_NETPOL_VERSION" &&
    [ -d "$mod" ] && rm -rf "$src" && cp -r "$mod" "$src" && chmod -R u+w "$src" &&
    patch -d "$src" -p1 < "$NODE_NETPOL_PATCH" &&
    cd "$src" && GOWORK=off GOFLAGS=-mod=mod CGO_ENABLED=0 nice -n 10 "$K8S_GO" build -trimpath -ldflags='-s -w' \
      -o "$NODE_NETPOL_BIN" ./cmd ) >>"$logf" 2>&1 || fail kube-network-policies "$logf" "build of kube-network-policies failed"
  rm -rf "$src"
  find "$(dirname "$top")" -maxdepth 1 -name 'kube-network-policies-*' ! -path "$top" -exec rm -rf {} +   # older recipes
  log "node: kube-network-policies built in $(( $(date +%s) - t0 ))s"
}

node_install() {
  [ "$(id -u)" = 0 ] || fail node "$LOG_DIR/node-build-apt.log" "the real node needs root"
  _node_apt
  k8s_build_cmds node kubelet kube-scheduler kube-controller-manager kube-proxy
  _node_build_registry
  _node_build_runsc_shim
  _node_build_netpol
  _node_build_lpp
  _node_build_pause_image
  _node_build_ssh_image
  _node_build_debian_image
  _node_build_rust_image
}
