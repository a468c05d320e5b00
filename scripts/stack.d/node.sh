# scripts/stack.d/node.sh — a real single-node Kubernetes beside the stack's API server (component `node`, named
# explicitly: `scripts/stack up k8s node`): containerd + runc (Debian), a CNI bridge network for pods in
# 198.18.0.0/15 (RFC 2544; no masquerade, no route off the machine), kubelet, kube-scheduler,
# kube-controller-manager and kube-proxy v1.36.3 (built from the Go module proxy like kube-apiserver), a local
# registry (CNCF Distribution) that is every registry's only host for containerd, dockerd on the node's containerd
# (DOCKER_HOST, BuildKit; `docker build` of the shipped Dockerfile, `scripts/stack image load`) whose build steps
# sit on the bridge and fetch crates from a crates.io mirror there (node/crates-mirror.py), a default StorageClass
# with local volumes, and the images that cannot be pulled here, made locally: the pod sandbox (pause), a stand-in
# for lscr.io/linuxserver/openssh-server:latest (Debian's OpenSSH, same interface) and for the Dockerfile's bases
# rust:1.95-bookworm (the host's Rust toolchain) and debian:bookworm-slim; gVisor as the runtime handler `runsc` (Debian's runsc, a shim built from gVisor's
# Go module) behind the RuntimeClass `gvisor`; NetworkPolicy enforced by kube-network-policies (kind's enforcer, built
# from the Go module proxy with a patch: the nft `queue` it uses is missing from this kernel). It replaces tools/stack-node and stack-kubelet: with the real node
# (PAYGRESS_NODE=real) k8s.sh runs neither, and its API server listens on the bridge address so pods reach it.
# Sourced by scripts/stack after lib.sh and k8s.sh. Functions: node_install node_up node_wait node_down node_status
# node_env, and node_network_up (used by k8s_up), node_image_load (`scripts/stack image load`). Needs root.
# Everything it changes on the machine is recorded at up (_node_machine_record) and undone by node_down: see
# docs/stack.md. Traps: root lacks CAP_SYS_RESOURCE here, so containerd needs restrict_oom_score_adj (and gVisor's
# shim a patch); cgroup v1 needs the kubelet's failCgroupV1: false; the kubelet refuses a loopback node IP, so the
# node's address is the bridge's; only one real node per machine (bridge, sysctls, /var/log/containers are
# machine-wide).

NODE_DIR="$STACK_DIR/node"
NODE_SRC="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/node"
NODE_BIN="$K8S_BUILD/bin"
NODE_NAME="$K8S_NODE_NAME"
NODE_BRIDGE="${PAYGRESS_NODE_BRIDGE:-pgbr0}"
NODE_IP="${PAYGRESS_NODE_IP:-198.18.0.1}"              # the bridge's address: node InternalIP, kubelet API
NODE_NET="${PAYGRESS_NODE_NET:-198.18.0.0/16}"         # the bridge's subnet
NODE_POD_FIRST="${PAYGRESS_NODE_POD_FIRST:-198.18.128.1}"   # pods get 198.18.128.0/17
NODE_POD_LAST="${PAYGRESS_NODE_POD_LAST:-198.18.255.254}"
NODE_ROUTED="198.18.0.0/15"                            # all a pod has routes to (plus the service range)
NODE_CTR_DIR="$NODE_DIR/containerd"
NODE_CTR_SOCK="$NODE_CTR_DIR/containerd.sock"
NODE_KUBELET_DIR="$NODE_DIR/kubelet"
NODE_PKI="$NODE_DIR/pki"
NODE_SANDBOX_IMAGE="registry.k8s.io/pause:3.6"
NODE_SSH_IMAGE="lscr.io/linuxserver/openssh-server:latest"
NODE_IMAGES="$BUILD_DIR/node-images"
NODE_SUITE="bookworm"
NODE_SSH_PACKAGES="openssh-server,openssh-sftp-server,bash,coreutils,sudo,passwd,util-linux,procps,iproute2,ca-certificates"
NODE_APT_PACKAGES=(containerd runc runsc containernetworking-plugins mmdebstrap docker.io iproute2 iptables nftables)
# gVisor: Debian's runsc (0.0~20221219) ships no containerd shim; containerd-shim-runsc-v1 is built from gVisor's Go
# module (its `go` branch, on the Go module proxy), and containerd finds it on its PATH (containerd 1.6.20 ignores
# the CRI runtime's runtime_path when it starts a sandbox's shim). That version: the last shims built on
# containerd 1.x print the plain address containerd 1.6 reads (2025's on containerd 2 print JSON it cannot dial).
NODE_GVISOR_VERSION="${NODE_GVISOR_VERSION:-v0.0.0-20240722211153-64c016c92987}"
NODE_RUNSC_SHIM="$BUILD_DIR/gvisor-shim-$NODE_GVISOR_VERSION-$(cat "$NODE_SRC/gvisor-shim-oom.patch" | sha256sum | cut -c1-8)/bin/containerd-shim-runsc-v1"
NODE_RUNTIME_CLASS="gvisor"                            # RuntimeClass of the runsc handler
NODE_FW_CHAIN="PAYGRESS-NODE-FWD"
NODE_REGISTRY_VERSION="${NODE_REGISTRY_VERSION:-v3.1.2}"   # github.com/distribution/distribution/v3 (CNCF Distribution)
NODE_REGISTRY_BIN="$BUILD_DIR/registry-$NODE_REGISTRY_VERSION/bin/registry"
# NetworkPolicy: sigs.k8s.io/kube-network-policies (kind's enforcer) with node/kube-network-policies-nfqueue.patch
# (the xtables NFQUEUE target instead of the nft `queue` expression, which needs CONFIG_NFT_QUEUE; docs/stack.md).
# It runs as a process of the node: nftables table `inet kube-network-policies`, nfqueue 100, fail closed.
NODE_NETPOL_VERSION="${NODE_NETPOL_VERSION:-v0.8.0}"
NODE_NETPOL_PATCH="$NODE_SRC/kube-network-policies-nfqueue.patch"
NODE_NETPOL_BIN="$BUILD_DIR/kube-network-policies-$NODE_NETPOL_VERSION-$(sha256sum < "$NODE_NETPOL_PATCH" | cut -c1-8)/bin/kube-network-policies"
NODE_NETPOL_TABLE="kube-network-policies"
NODE_NETPOL_QUEUE=100
# Sysctls the kubelet (setupKernelTunables), the CNI bridge plugin (ip_forward) and kube-proxy may change.
NODE_SYSCTLS=(kernel.panic kernel.panic_on_oops vm.overcommit_memory vm.panic_on_oom kernel.keys.root_maxkeys
  kernel.keys.root_maxbytes net.ipv4.ip_forward net.ipv4.conf.all.forwarding net.bridge.bridge-nf-call-iptables
  net.bridge.bridge-nf-call-ip6tables net.ipv4.conf.all.route_localnet net.netfilter.nf_conntrack_max
  net.netfilter.nf_conntrack_tcp_timeout_established net.netfilter.nf_conntrack_tcp_timeout_close_wait)
# Directories outside the stack dir that the kubelet or containerd create (hard-coded there).
NODE_HOST_DIRS=(/var/lib/kubelet /var/log/containers /var/log/pods /var/lib/cni /run/containerd /run/netns /etc/cni /opt/cni
  /var/run/kubernetes /etc/kubernetes /etc/docker/key.json /run/docker /var/lib/docker)
NODE_DOCKER_DIR="$NODE_DIR/docker"
# Stand-ins for the Docker Hub images the shipped Dockerfile builds FROM (docker.io cannot be reached here), built
# from Debian packages like the SSH image and pushed to the stack's registry under their Docker Hub names.
NODE_DEBIAN_IMAGE="docker.io/library/debian:bookworm-slim"
NODE_RUST_IMAGE="docker.io/library/rust:1.95-bookworm"
NODE_RUST_VERSION="1.95.0"
# The host's toolchain of that version (rustup's), of which the image gets rustc, cargo and rust-std only.
NODE_RUST_TOOLCHAIN="${PAYGRESS_NODE_RUST_TOOLCHAIN:-${RUSTUP_HOME:-$HOME/.rustup}/toolchains/$NODE_RUST_VERSION-x86_64-unknown-linux-gnu}"
# What the official image (buildpack-deps:bookworm) carries for building crates, less the -dev libraries of
# image, database and GUI stacks.
NODE_RUST_PACKAGES="ca-certificates,curl,wget,gnupg,dirmngr,git,openssh-client,procps,netbase,gcc,g++,libc6-dev,make,pkg-config,libssl-dev,zlib1g-dev,libsqlite3-dev,file,xz-utils,bzip2,unzip,patch,dpkg-dev,autoconf,automake,libtool"
# crates.io mirror for build steps (stack.d/node/crates-mirror.py), on the bridge address only; its cache is kept
# across downs, like the other build caches.
NODE_CRATES_CACHE="$PAYGRESS_CACHE/crates-mirror"
NODE_CRATES_URL="http://$NODE_IP:$PORT_NODE_CRATES"
# dockerd's containers (build steps) on the bridge, disjoint from the pods' 198.18.128.0/17.
NODE_DOCKER_CIDR="${PAYGRESS_NODE_DOCKER_CIDR:-198.18.96.0/20}"
NODE_PVS="${PAYGRESS_NODE_PVS:-4}"                  # local PersistentVolumes kept available for PVCs
NODE_DOCKER_HOST="unix://$NODE_DOCKER_DIR/docker.sock"

_node_ctr() { ctr -a "$NODE_CTR_SOCK" -n k8s.io "$@"; }

# _node_config PROC FILE < CONTENT: write FILE; if it changed while PROC runs, stop PROC so that up restarts it with
# the new file (restart_if_changed sees only command lines). Containers outlive a containerd restart.
_node_config() {
  local proc="$1" file="$2"
  cat > "$file.new"
  if [ -f "$file" ] && cmp -s "$file" "$file.new"; then rm -f "$file.new"; return 0; fi
  if [ -f "$file" ] && is_running "$proc"; then log "node: $(basename "$file") changed, restarting $proc"; stop_proc "$proc"; fi
  mv "$file.new" "$file"
}

# ---------------------------------------------------------------------------------------------------------------
# install

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

# The Debian mirror this machine uses (read at run time; never written into the repo).
_node_mirror() {
  awk '/^URIs:/ {u=$2} /^Suites:/ && u != "" { for (i=2;i<=NF;i++) if ($i == s) { print u; exit } }' \
    s="$NODE_SUITE" /etc/apt/sources.list.d/debian.sources 2>/dev/null
}

_node_hash() { cat "$@" | sha256sum | cut -c1-12; }

# Recipe hashes: the image archives are cached under $NODE_IMAGES keyed by them.
_node_pause_archive() {
  echo "$NODE_IMAGES/pause-$( { cat "$NODE_SRC/pause/main.go" "$NODE_SRC/pause/go.mod" "$NODE_SRC/oci-pack.sh"; echo "$NODE_SANDBOX_IMAGE"; } | _node_hash).oci.tar"
}
_node_ssh_archive() {
  echo "$NODE_IMAGES/openssh-server-$( { cat "$NODE_SRC/ssh-image/init" "$NODE_SRC/oci-pack.sh"; echo "$NODE_SSH_IMAGE $NODE_SUITE $NODE_SSH_PACKAGES"; declare -f _node_build_ssh_image; } | _node_hash).oci.tar"
}

_node_debian_archive() {
  echo "$NODE_IMAGES/debian-bookworm-slim-$( { cat "$NODE_SRC/oci-pack.sh"; echo "$NODE_DEBIAN_IMAGE $NODE_SUITE"; declare -f _node_build_debian_image _node_slim_opts _node_apt_sources; } | _node_hash).oci.tar"
}
# The toolchain's identity (rustc's version and commit, the component manifests) and the mirror's URL (in the
# image's cargo config) are part of the recipe.
_node_rust_archive() {
  echo "$NODE_IMAGES/rust-$NODE_RUST_VERSION-bookworm-$( { cat "$NODE_SRC/oci-pack.sh"; echo "$NODE_RUST_IMAGE $NODE_SUITE $NODE_RUST_PACKAGES $NODE_CRATES_URL"
    "$NODE_RUST_TOOLCHAIN/bin/rustc" -vV 2>/dev/null; cat "$NODE_RUST_TOOLCHAIN"/lib/rustlib/manifest-{rustc,cargo,rust-std}-x86_64-unknown-linux-gnu 2>/dev/null
    declare -f _node_build_rust_image _node_apt_sources; } | _node_hash).oci.tar"
}

_node_build_pause_image() {
  local out; out="$(_node_pause_archive)"
  [ -s "$out" ] && return 0
  local logf="$LOG_DIR/node-build-images.log" work
  log "node: building the pause image $NODE_SANDBOX_IMAGE (log $logf)"
  mkdir -p "$NODE_IMAGES"
  work="$(mktemp -d "$NODE_IMAGES/pause.XXXXXX")"
  ( cp "$NODE_SRC/pause/main.go" "$NODE_SRC/pause/go.mod" "$work/" && mkdir "$work/rootfs" &&
    cd "$work" && CGO_ENABLED=0 GOWORK=off GOFLAGS=-mod=mod nice -n 10 "$K8S_GO" build -trimpath -ldflags='-s -w' -o rootfs/pause . &&
    tar -C rootfs --owner=0 --group=0 --numeric-owner -cf layer.tar pause &&
    "$NODE_SRC/oci-pack.sh" "$NODE_SANDBOX_IMAGE" '{"Entrypoint":["/pause"],"User":"65535:65535"}' layer.tar "$out"
  ) >>"$logf" 2>&1 || { rm -rf "$work"; fail node "$logf" "pause image build failed"; }
  rm -rf "$work"
  find "$NODE_IMAGES" -maxdepth 1 -name 'pause-*.oci.tar' ! -path "$out" -delete   # older recipes
}

# The SSH image: a Debian minbase rootfs (mmdebstrap) with OpenSSH and the linuxserver-compatible /init.
_node_build_ssh_image() {
  local out; out="$(_node_ssh_archive)"
  [ -s "$out" ] && return 0
  local logf="$LOG_DIR/node-build-images.log" work mirror t0
  t0=$(date +%s)
  mirror="$(_node_mirror)"
  [ -n "$mirror" ] || fail node "$logf" "no Debian mirror for $NODE_SUITE in /etc/apt/sources.list.d/debian.sources"
  log "node: building $NODE_SSH_IMAGE from Debian $NODE_SUITE (mmdebstrap, ~1-2 min; log $logf)"
  mkdir -p "$NODE_IMAGES"
  work="$(mktemp -d "$NODE_IMAGES/ssh.XXXXXX")"
  # The user `abc` (uid/gid 911, home /config) is what the real image ships; /init renames it to USER_NAME.
  # Host keys are removed: each container makes its own in /config.
  ( nice -n 10 mmdebstrap --variant=minbase --include="$NODE_SSH_PACKAGES" \
      --aptopt='APT::Install-Recommends "false"' \
      --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/doc/*' \
      --dpkgopt='path-exclude=/usr/share/locale/*' \
      --customize-hook="copy-in $NODE_SRC/ssh-image/init /" \
      --customize-hook='chroot "$1" groupadd -g 911 abc' \
      --customize-hook='chroot "$1" useradd -u 911 -g 911 -d /config -s /bin/bash abc' \
      --customize-hook='mkdir -p "$1/config" && chmod 0755 "$1/init" && rm -f "$1"/etc/ssh/ssh_host_*' \
      --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*' \
      "$NODE_SUITE" "$work/rootfs.tar" "$mirror" &&
    "$NODE_SRC/oci-pack.sh" "$NODE_SSH_IMAGE" \
      '{"Entrypoint":["/init"],"Env":["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin","PUID=911","PGID=911"],"ExposedPorts":{"2222/tcp":{}},"WorkingDir":"/"}' \
      "$work/rootfs.tar" "$out"
  ) >>"$logf" 2>&1 || { rm -rf "$work"; fail node "$logf" "SSH image build failed"; }
  rm -rf "$work"
  find "$NODE_IMAGES" -maxdepth 1 -name 'openssh-server-*.oci.tar' ! -path "$out" -delete   # older recipes
  log "node: $NODE_SSH_IMAGE built in $(( $(date +%s) - t0 ))s"
}

# dpkg excludes of the official slim images (docs, man pages, locales; mmdebstrap keeps them in the image, as the
# official image keeps its own, for later installs).
_node_slim_opts() {
  local p
  for p in 'path-exclude=/usr/share/doc/*' 'path-include=/usr/share/doc/*/copyright' 'path-exclude=/usr/share/man/*' \
      'path-exclude=/usr/share/groff/*' 'path-exclude=/usr/share/info/*' 'path-exclude=/usr/share/lintian/*' \
      'path-exclude=/usr/share/linda/*' 'path-exclude=/usr/share/locale/*'; do
    printf '%s\n' "--dpkgopt=$p"
  done
}

# apt's sources in the stand-ins: deb.debian.org, as in the official images (not this machine's mirror).
_node_apt_sources() {
  printf 'Types: deb\nURIs: http://deb.debian.org/debian\nSuites: %s %s-updates\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n\n' "$NODE_SUITE" "$NODE_SUITE"
  printf 'Types: deb\nURIs: http://deb.debian.org/debian-security\nSuites: %s-security\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' "$NODE_SUITE"
}

# Stand-in for debian:bookworm-slim: mmdebstrap minbase of bookworm with slim's dpkg excludes, no apt lists.
_node_build_debian_image() {
  local out; out="$(_node_debian_archive)"
  [ -s "$out" ] && return 0
  local logf="$LOG_DIR/node-build-images.log" work mirror t0 opts
  t0=$(date +%s)
  mirror="$(_node_mirror)"
  [ -n "$mirror" ] || fail node "$logf" "no Debian mirror for $NODE_SUITE in /etc/apt/sources.list.d/debian.sources"
  log "node: building the stand-in $NODE_DEBIAN_IMAGE (mmdebstrap minbase; log $logf)"
  mkdir -p "$NODE_IMAGES"
  work="$(mktemp -d "$NODE_IMAGES/debian.XXXXXX")"
  mapfile -t opts < <(_node_slim_opts)
  _node_apt_sources > "$work/debian.sources"
  # shellcheck disable=SC2016  # $1: the hook's argument (the rootfs), expanded by mmdebstrap's shell
  ( nice -n 10 mmdebstrap --variant=minbase --aptopt='APT::Install-Recommends "false"' "${opts[@]}" \
      --customize-hook='rm -rf "$1"/etc/apt/sources.list "$1"/etc/apt/sources.list.d/*' \
      --customize-hook="copy-in $work/debian.sources /etc/apt/sources.list.d" \
      --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*' \
      "$NODE_SUITE" "$work/rootfs.tar" "$mirror" &&
    "$NODE_SRC/oci-pack.sh" "$NODE_DEBIAN_IMAGE" \
      '{"Cmd":["bash"],"Env":["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]}' \
      "$work/rootfs.tar" "$out"
  ) >>"$logf" 2>&1 || { rm -rf "$work"; fail node "$logf" "debian:bookworm-slim stand-in build failed"; }
  rm -rf "$work"
  find "$NODE_IMAGES" -maxdepth 1 -name 'debian-bookworm-slim-*.oci.tar' ! -path "$out" -delete   # older recipes
  log "node: $NODE_DEBIAN_IMAGE built in $(( $(date +%s) - t0 ))s ($(( $(stat -c %s "$out") >> 20 )) MiB)"
}

# Stand-in for rust:1.95-bookworm: bookworm with the build tools of the official image (NODE_RUST_PACKAGES), the
# host's Rust toolchain (rustc, cargo, rust-std, copied by their rustup manifests; no rustup) under
# RUSTUP_HOME=/usr/local/rustup with cargo, rustc and rustdoc linked into CARGO_HOME/bin, the official image's
# environment (RUSTUP_HOME, CARGO_HOME, PATH, RUST_VERSION), and one difference: /usr/local/cargo/config.toml
# replaces crates-io with the stack's mirror on the bridge (the only registry a build step can reach).
_node_build_rust_image() {
  local out; out="$(_node_rust_archive)"
  [ -s "$out" ] && return 0
  local logf="$LOG_DIR/node-build-images.log" work mirror t0 tc c
  local tcname="$NODE_RUST_VERSION-x86_64-unknown-linux-gnu"
  t0=$(date +%s)
  mirror="$(_node_mirror)"
  [ -n "$mirror" ] || fail node "$logf" "no Debian mirror for $NODE_SUITE in /etc/apt/sources.list.d/debian.sources"
  tc="$(readlink -f "$NODE_RUST_TOOLCHAIN")"
  "$tc/bin/rustc" -V 2>/dev/null | grep -q "^rustc $NODE_RUST_VERSION " \
    || fail node "$logf" "no Rust $NODE_RUST_VERSION toolchain at $NODE_RUST_TOOLCHAIN (rustup toolchain install $NODE_RUST_VERSION, or set PAYGRESS_NODE_RUST_TOOLCHAIN)"
  log "node: building the stand-in $NODE_RUST_IMAGE (mmdebstrap + the host's Rust $NODE_RUST_VERSION; log $logf)"
  mkdir -p "$NODE_IMAGES"
  work="$(mktemp -d "$NODE_IMAGES/rust.XXXXXX")"
  # The image's /usr/local: the toolchain's files (those rustup installed for rustc, cargo and rust-std, and their
  # manifests), the links of CARGO_HOME/bin, cargo's config.
  mkdir -p "$work/local/rustup/toolchains/$tcname/lib/rustlib" "$work/local/cargo/bin"
  for c in rustc cargo rust-std; do
    sed -n 's/^file://p' "$tc/lib/rustlib/manifest-$c-x86_64-unknown-linux-gnu"
    echo "lib/rustlib/manifest-$c-x86_64-unknown-linux-gnu"
  done > "$work/files"
  printf '%s-x86_64-unknown-linux-gnu\n' rustc cargo rust-std > "$work/local/rustup/toolchains/$tcname/lib/rustlib/components"
  for c in cargo rustc rustdoc; do ln -s "../../rustup/toolchains/$tcname/bin/$c" "$work/local/cargo/bin/$c"; done
  {
    echo "# The stack's stand-in for rust:$NODE_RUST_VERSION-bookworm (scripts/stack.d/node.sh): build steps reach no"
    echo "# registry but the stack's crates.io mirror, on the node's bridge."
    echo '[source.crates-io]'
    echo 'replace-with = "paygress-stack-mirror"'
    echo
    echo '[source.paygress-stack-mirror]'
    echo "registry = \"sparse+$NODE_CRATES_URL/index/\""
  } > "$work/local/cargo/config.toml"
  _node_apt_sources > "$work/debian.sources"
  # shellcheck disable=SC2016  # $1: the hook's argument (the rootfs), expanded by mmdebstrap's shell
  ( tar -C "$tc" -cf - -T "$work/files" | tar -C "$work/local/rustup/toolchains/$tcname" -xf - &&
    chmod -R a+w "$work/local/rustup" "$work/local/cargo" &&
    nice -n 10 mmdebstrap --variant=minbase --include="$NODE_RUST_PACKAGES" \
      --aptopt='APT::Install-Recommends "false"' \
      --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/doc/*' \
      --dpkgopt='path-exclude=/usr/share/locale/*' \
      --customize-hook="sync-in $work/local /usr/local" \
      --customize-hook='rm -rf "$1"/etc/apt/sources.list "$1"/etc/apt/sources.list.d/*' \
      --customize-hook="copy-in $work/debian.sources /etc/apt/sources.list.d" \
      --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*' \
      "$NODE_SUITE" "$work/rootfs.tar" "$mirror" &&
    "$NODE_SRC/oci-pack.sh" "$NODE_RUST_IMAGE" \
      "{\"Cmd\":[\"bash\"],\"Env\":[\"PATH=/usr/local/cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\",\"RUSTUP_HOME=/usr/local/rustup\",\"CARGO_HOME=/usr/local/cargo\",\"RUST_VERSION=$NODE_RUST_VERSION\"]}" \
      "$work/rootfs.tar" "$out"
  ) >>"$logf" 2>&1 || { rm -rf "$work"; fail node "$logf" "rust:$NODE_RUST_VERSION-bookworm stand-in build failed"; }
  rm -rf "$work"
  find "$NODE_IMAGES" -maxdepth 1 -name "rust-$NODE_RUST_VERSION-bookworm-*.oci.tar" ! -path "$out" -delete   # older recipes
  log "node: $NODE_RUST_IMAGE built in $(( $(date +%s) - t0 ))s ($(( $(stat -c %s "$out") >> 20 )) MiB)"
}

# The local registry: CNCF Distribution's `registry`, built from the Go module proxy (no replace directives, so a
# plain `go install …@version`).
_node_build_registry() {
  [ -x "$NODE_REGISTRY_BIN" ] && return 0
  local logf="$LOG_DIR/node-build-registry.log" t0
  t0=$(date +%s)
  log "node: building the registry (distribution $NODE_REGISTRY_VERSION) from the Go module proxy (log $logf)"
  mkdir -p "$(dirname "$NODE_REGISTRY_BIN")"
  ( cd "$(dirname "$NODE_REGISTRY_BIN")" && GOWORK=off GOBIN="$(dirname "$NODE_REGISTRY_BIN")" nice -n 10 "$K8S_GO" install \
      -trimpath -ldflags='-s -w' "github.com/distribution/distribution/v3/cmd/registry@$NODE_REGISTRY_VERSION" ) \
    >>"$logf" 2>&1 || fail registry "$logf" "build of the registry failed"
  log "node: registry built in $(( $(date +%s) - t0 ))s"
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
  _node_build_pause_image
  _node_build_ssh_image
  _node_build_debian_image
  _node_build_rust_image
}

# ---------------------------------------------------------------------------------------------------------------
# machine-wide state: recorded at up, undone at down

# Record each sysctl's value once (the first up after a down), so down restores the machine's own values.
_node_machine_record() {
  local f="$NODE_DIR/machine.saved" s d
  [ -f "$f" ] && return 0
  mkdir -p "$NODE_DIR"
  {
    # Pods on one bridge talk at L2: only br_netfilter sends that traffic through the IP hooks where NetworkPolicy
    # is enforced (built in on this kernel; loaded here, and unloaded at down, where it is a module).
    if [ ! -e /proc/sys/net/bridge ] && modprobe br_netfilter 2>/dev/null; then echo "module br_netfilter"; fi
    for s in "${NODE_SYSCTLS[@]}"; do
      [ -e "/proc/sys/${s//./\/}" ] && echo "sysctl $s $(sysctl -n "$s")"
    done
    for d in "${NODE_HOST_DIRS[@]}"; do [ -e "$d" ] || echo "dir $d"; done
    # dockerd's parent cgroup (the kubelet's kubepods is always ours).
    [ -e /sys/fs/cgroup/memory/docker ] || [ -e /sys/fs/cgroup/docker ] || echo "cgroup docker"
  } > "$f.tmp"
  mv "$f.tmp" "$f"
}

# node_network_up: the bridge (with the node's address) and the forward guard. Also called by k8s_up, whose API
# server listens on the bridge address when the real node runs.
node_network_up() {
  # One real node per machine: a bridge of that name that this stack dir did not record is another's.
  if [ ! -f "$NODE_DIR/machine.saved" ] && ip link show "$NODE_BRIDGE" >/dev/null 2>&1; then
    fail node "$LOG_DIR/node.log" "bridge $NODE_BRIDGE exists but this stack dir ($STACK_DIR) did not make it: another stack's real node runs (one per machine), or one was left without \`scripts/stack down\`"
  fi
  _node_machine_record
  if ! ip link show "$NODE_BRIDGE" >/dev/null 2>&1; then
    ip link add "$NODE_BRIDGE" type bridge || fail node "$LOG_DIR/node.log" "cannot create bridge $NODE_BRIDGE"
  fi
  local addrs; addrs="$(ip -4 -o addr show dev "$NODE_BRIDGE")"   # (not piped into grep -q: SIGPIPE under pipefail)
  [[ "$addrs" == *"inet $NODE_IP/"* ]] || ip addr add "$NODE_IP/${NODE_NET#*/}" dev "$NODE_BRIDGE"
  ip link set "$NODE_BRIDGE" up
  # Traffic through the bridge stays on the machine: what a pod sends is forwarded only back into the bridge
  # (pod to pod, and pod to a service's pod after kube-proxy's DNAT); nothing is forwarded into the bridge from
  # another interface. First in FORWARD, ahead of kube-proxy's and the CNI plugins' chains.
  iptables -w -N "$NODE_FW_CHAIN" 2>/dev/null || iptables -w -F "$NODE_FW_CHAIN"
  iptables -w -A "$NODE_FW_CHAIN" -i "$NODE_BRIDGE" -o "$NODE_BRIDGE" -j RETURN
  iptables -w -A "$NODE_FW_CHAIN" -i "$NODE_BRIDGE" -j DROP
  iptables -w -A "$NODE_FW_CHAIN" -o "$NODE_BRIDGE" -j DROP
  iptables -w -C FORWARD -j "$NODE_FW_CHAIN" 2>/dev/null || iptables -w -I FORWARD 1 -j "$NODE_FW_CHAIN"
}

_node_cni_config() {
  mkdir -p "$NODE_DIR/cni/net.d" "$NODE_DIR/cni/ipam"
  # No default route in pods: routes to 198.18.0.0/15 and the service range only, no masquerade.
  cat > "$NODE_DIR/cni/net.d/10-paygress.conflist.tmp" <<EOF
{
  "cniVersion": "1.0.0",
  "name": "paygress",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "$NODE_BRIDGE",
      "isGateway": true,
      "isDefaultGateway": false,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "dataDir": "$NODE_DIR/cni/ipam",
        "ranges": [[{"subnet": "$NODE_NET", "rangeStart": "$NODE_POD_FIRST", "rangeEnd": "$NODE_POD_LAST", "gateway": "$NODE_IP"}]],
        "routes": [{"dst": "$NODE_ROUTED"}, {"dst": "$K8S_SERVICE_CIDR"}]
      }
    }
  ]
}
EOF
  mv "$NODE_DIR/cni/net.d/10-paygress.conflist.tmp" "$NODE_DIR/cni/net.d/10-paygress.conflist"
}

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

# _node_push NAME: push an image of the node's containerd to the stack's registry, under its own name.
_node_push() {
  _node_ctr images push --plain-http --hosts-dir "$NODE_CTR_DIR/certs.d" "$1" >>"$LOG_DIR/node-images.log" 2>&1 \
    || fail registry "$LOG_DIR/node-images.log" "ctr images push $1 to the stack's registry failed"
}

# _node_import_registry ARCHIVE NAME: put an image archive into the stack's registry only, unless this very archive
# was and the registry has it: imported (not unpacked) into a containerd namespace of its own, pushed, removed (its content is collected at once).
_node_import_registry() {
  local archive="$1" name="$2" mark path ns=paygress-import logf="$LOG_DIR/node-images.log"
  mark="$NODE_DIR/registry/loaded/$(basename "$archive")"
  read -r _ path < <(_node_ref "$name")
  [ -f "$mark" ] && curl -sf -m 5 -o /dev/null -H 'Accept: application/vnd.oci.image.index.v1+json' \
    -H 'Accept: application/vnd.oci.image.manifest.v1+json' \
    "http://127.0.0.1:$PORT_NODE_REGISTRY/v2/${path%:*}/manifests/${path##*:}" && return 0
  { ctr -a "$NODE_CTR_SOCK" -n "$ns" images import --no-unpack "$archive" &&
    ctr -a "$NODE_CTR_SOCK" -n "$ns" images push --plain-http --hosts-dir "$NODE_CTR_DIR/certs.d" "$name" &&
    ctr -a "$NODE_CTR_SOCK" -n "$ns" images rm --sync "$name" &&
    ctr -a "$NODE_CTR_SOCK" namespaces rm "$ns"; } >>"$logf" 2>&1 \
    || fail registry "$logf" "import of $archive into the stack's registry failed"
  mkdir -p "$(dirname "$mark")" && touch "$mark"
}

# _node_docker_pull IMAGE...: pull (and so tag) Docker Hub images from the stack's registry into dockerd (its
# --registry-mirror), so `FROM` finds them locally; a no-op when the local image is the registry's.
_node_docker_pull() {
  local image logf="$LOG_DIR/node-images.log"
  for image in "$@"; do
    DOCKER_HOST="$NODE_DOCKER_HOST" docker pull -q "${image#docker.io/library/}" >>"$logf" 2>&1 \
      || fail dockerd "$logf" "docker pull ${image#docker.io/library/} (from the stack's registry) failed"
  done
}

# _node_import ARCHIVE NAME: import an image archive into the node's containerd and push it to the stack's registry,
# unless this very archive was.
_node_import() {
  local archive="$1" name="$2" mark
  mark="$NODE_DIR/registry/loaded/$(basename "$archive")"
  [ -f "$mark" ] && grep -qxF "$name" <<<"$(_node_ctr images ls -q)" && return 0
  _node_ctr images import "$archive" >>"$LOG_DIR/node-images.log" 2>&1 \
    || fail containerd "$LOG_DIR/node-images.log" "ctr images import $archive failed"
  _node_push "$name"
  mkdir -p "$(dirname "$mark")" && touch "$mark"
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
_node_registry_ready() { curl -sf -m 2 "http://127.0.0.1:$PORT_NODE_REGISTRY/v2/"; }

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

_node_kubectl() { _k8s_kubectl "$@"; }

# RBAC that kubeadm also creates: the API server's client certificate may use the kubelet API (logs, exec,
# port-forward), which the kubelet authorizes by SubjectAccessReview.
_node_rbac() {
  _node_kubectl apply -f - >>"$LOG_DIR/node.log" 2>&1 <<EOF || fail node "$LOG_DIR/node.log" "RBAC for the kubelet API failed"
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata:
  name: paygress:kube-apiserver-kubelet-client
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: ClusterRole
  name: system:kubelet-api-admin
subjects:
- apiGroup: rbac.authorization.k8s.io
  kind: User
  name: kube-apiserver-kubelet-client
---
# The NetworkPolicy enforcer reads what its policies select (as kind's manifest grants it).
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata:
  name: paygress:kube-network-policies
rules:
- apiGroups: [""]
  resources: [pods, namespaces, nodes]
  verbs: [list, watch]
- apiGroups: [networking.k8s.io]
  resources: [networkpolicies]
  verbs: [list, watch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata:
  name: paygress:kube-network-policies
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: ClusterRole
  name: paygress:kube-network-policies
subjects:
- apiGroup: rbac.authorization.k8s.io
  kind: User
  name: paygress:kube-network-policies
EOF
}

# Storage: the default StorageClass `standard` and a pool of `local` PersistentVolumes (directories under
# <stack>/node/pv, node affinity to this node), so a PVC without a class (the manifest's) binds when its pod is
# scheduled, and the kubelet applies the pod's fsGroup to it as on a cloud disk (a hostPath volume gets no fsGroup).
# Kept at NODE_PVS available volumes: a Released one (its claim deleted) is wiped and made Available again at up.
_node_storage() {
  local i pv dir logf="$LOG_DIR/node.log"
  _node_kubectl apply -f - >>"$logf" 2>&1 <<EOF || fail node "$logf" "StorageClass standard"
apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata:
  name: standard
  annotations:
    storageclass.kubernetes.io/is-default-class: "true"
provisioner: kubernetes.io/no-provisioner
volumeBindingMode: WaitForFirstConsumer
reclaimPolicy: Retain
EOF
  for i in $(seq 0 $(( NODE_PVS - 1 ))); do
    pv="paygress-local-$i" dir="$NODE_DIR/pv/$i"
    if [ "$(_node_kubectl get pv "$pv" -o jsonpath='{.status.phase}' 2>/dev/null)" = Released ]; then
      log "node: recycling Released volume $pv"
      find "$dir" -mindepth 1 -delete 2>/dev/null || true
      chown root:root "$dir" && chmod 0755 "$dir"
      _node_kubectl patch pv "$pv" --type=json -p '[{"op":"remove","path":"/spec/claimRef"}]' >>"$logf" 2>&1 || true
    fi
    mkdir -p "$dir"
    _node_kubectl get pv "$pv" >/dev/null 2>&1 && continue
    _node_kubectl apply -f - >>"$logf" 2>&1 <<EOF || fail node "$logf" "PersistentVolume $pv"
apiVersion: v1
kind: PersistentVolume
metadata:
  name: $pv
  labels: {paygress.dev/stack-volume: "true"}
spec:
  capacity: {storage: 10Gi}
  accessModes: [ReadWriteOnce]
  persistentVolumeReclaimPolicy: Retain
  storageClassName: standard
  volumeMode: Filesystem
  local: {path: $dir}
  nodeAffinity:
    required:
      nodeSelectorTerms:
      - matchExpressions:
        - {key: kubernetes.io/hostname, operator: In, values: [$NODE_NAME]}
EOF
  done
}

# The RuntimeClass of containerd's runsc handler: a pod with `runtimeClassName: gvisor` runs under gVisor.
_node_runtime_class() {
  _node_kubectl apply -f - >>"$LOG_DIR/node.log" 2>&1 <<EOF || fail node "$LOG_DIR/node.log" "RuntimeClass $NODE_RUNTIME_CLASS"
apiVersion: node.k8s.io/v1
kind: RuntimeClass
metadata:
  name: $NODE_RUNTIME_CLASS
handler: runsc
EOF
}

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
  # A Node object left by the simulated node of an earlier `up` of this stack dir (its pod CIDR and labels are
  # wrong for the real one): the kubelet registers anew.
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

# _node_restore_sysctls [NAME...]: the recorded values (all, or the NAMEs).
_node_restore_sysctls() {
  local f="$NODE_DIR/machine.saved" kind name val
  [ -f "$f" ] || return 0
  while read -r kind name val; do
    [ "$kind" = sysctl ] || continue
    if [ $# -gt 0 ] && [[ " $* " != *" $name "* ]]; then continue; fi
    [ "$(sysctl -n "$name" 2>/dev/null)" = "$val" ] || sysctl -q -w "$name=$val" >/dev/null 2>&1 \
      || log "node: WARNING could not restore $name=$val"
  done < "$f"
}

# Everything under DIR that is mounted, deepest first.
_node_mounts_under() {
  awk -v d="$1" '$2 == d || index($2, d "/") == 1 {print $2}' /proc/self/mounts | sort -r | uniq
}

_node_unmount_all() {
  local d m
  for d in "$@"; do
    [ -n "$d" ] || continue
    while read -r m; do [ -n "$m" ] && { umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true; }; done \
      < <(_node_mounts_under "$d")
  done
}

# iptables: delete every KUBE-* and CNI-* chain (v4 and v6) and our forward guard, references first.
_node_iptables_clean() {
  local ipt table chains c
  for ipt in iptables ip6tables; do
    command -v "$ipt" >/dev/null || continue
    for table in filter nat mangle; do
      chains="$("$ipt"-save -t "$table" 2>/dev/null | sed -n 's/^:\(\(KUBE-\|CNI-\|'"$NODE_FW_CHAIN"'\)[^ ]*\) .*/\1/p')"
      [ -n "$chains" ] || continue
      # Rules in the built-in chains that jump to ours.
      { "$ipt"-save -t "$table" | grep -E '^-A (INPUT|OUTPUT|FORWARD|PREROUTING|POSTROUTING) .*-j (KUBE-|CNI-|'"$NODE_FW_CHAIN"')' \
        || true; } | sed 's/^-A //' | while read -r rule; do eval "$ipt -w -t $table -D $rule" 2>/dev/null || true; done
      for c in $chains; do "$ipt" -w -t "$table" -F "$c" 2>/dev/null || true; done
      for c in $chains; do "$ipt" -w -t "$table" -X "$c" 2>/dev/null || true; done
    done
  done
}

node_down() {
  local name
  for name in kube-network-policies kube-proxy kube-controller-manager kube-scheduler kubelet dockerd crates-mirror; do
    stop_proc "$name"
  done
  # Stopped by TERM, the enforcer leaves its table (fail closed); the table goes here.
  nft delete table inet "$NODE_NETPOL_TABLE" 2>/dev/null || true
  # Pods' containers: stop and remove every sandbox (CNI DEL included) while containerd still runs.
  if is_running containerd; then
    if command -v crictl >/dev/null 2>&1; then
      crictl -r "unix://$NODE_CTR_SOCK" rmp -fa >/dev/null 2>&1 || true
    fi
    local c
    for c in $(_node_ctr tasks ls -q 2>/dev/null); do _node_ctr tasks kill -s SIGKILL "$c" >/dev/null 2>&1 || true; done
    sleep 0.5
    for c in $(_node_ctr tasks ls -q 2>/dev/null); do _node_ctr tasks delete -f "$c" >/dev/null 2>&1 || true; done
    for c in $(_node_ctr containers ls -q 2>/dev/null); do _node_ctr containers delete "$c" >/dev/null 2>&1 || true; done
  fi
  stop_proc containerd
  stop_proc registry
  # Shims left behind (containerd-shim-runc-v2 and -runsc-v1 of our namespace, parented to init once containerd
  # exits), and gVisor sandboxes and gofers of our runsc root.
  local pid
  for pid in $(pgrep -f "containerd-shim-runc-v2 -namespace k8s.io -id .* -address $NODE_CTR_SOCK" 2>/dev/null) \
      $(pgrep -f "containerd-shim-runsc-v1 -namespace k8s.io -address $NODE_CTR_SOCK -id " 2>/dev/null) \
      $(pgrep -f "^(runsc-sandbox|runsc-gofer|/usr/bin/runsc) --root=$NODE_CTR_DIR/runsc/" 2>/dev/null); do
    kill -KILL "$pid" 2>/dev/null || true
  done
  # Pod network namespaces, veths and the bridge.
  ip netns list 2>/dev/null | awk '$1 ~ /^cni-/ {print $1}' | while read -r ns; do ip netns delete "$ns" 2>/dev/null || true; done
  ip -o link show type veth 2>/dev/null | awk -F': ' '{print $2}' | sed 's/@.*//' | while read -r v; do
    [ "$(basename "$(readlink -f "/sys/class/net/$v/master" 2>/dev/null)")" = "$NODE_BRIDGE" ] && ip link delete "$v" 2>/dev/null || true
  done
  ip link show "$NODE_BRIDGE" >/dev/null 2>&1 && ip link delete "$NODE_BRIDGE" type bridge
  _node_iptables_clean
  # Mounts: the kubelet's (its root dir bind-mounted onto itself, pod volumes), containerd's (rootfs overlays,
  # sandbox shm), netns bind mounts under /run/netns.
  _node_unmount_all "$NODE_KUBELET_DIR" "$NODE_CTR_DIR" "$NODE_DOCKER_DIR" /var/lib/kubelet /run/containerd /run/docker
  # `ip netns` may have bind-mounted /run/netns onto itself after a sandbox's nsfs was mounted there, hiding that
  # mount beneath it (umount: "not mounted", rm: busy): when /run/netns is ours, take its self-mounts off first.
  if grep -qx 'dir /run/netns' "$NODE_DIR/machine.saved" 2>/dev/null; then
    while mountpoint -q /run/netns; do umount /run/netns 2>/dev/null || umount -l /run/netns 2>/dev/null || break; done
  fi
  awk '$2 ~ "^/run/netns/cni-" {print $2}' /proc/self/mounts | while read -r m; do
    umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true; rm -f "$m" 2>/dev/null || true
  done
  # cgroups the kubelet made (kubepods, and its QoS children) in every hierarchy, and dockerd's if it made it.
  local cg cgs=(kubepods)
  grep -qx 'cgroup docker' "$NODE_DIR/machine.saved" 2>/dev/null && cgs+=(docker)
  for name in "${cgs[@]}"; do
    for cg in /sys/fs/cgroup/*/"$name" /sys/fs/cgroup/"$name"; do
      [ -d "$cg" ] && find "$cg" -depth -type d -exec rmdir {} \; 2>/dev/null
    done
  done
  _node_restore_sysctls
  grep -qx 'module br_netfilter' "$NODE_DIR/machine.saved" 2>/dev/null && { modprobe -r br_netfilter 2>/dev/null || true; }
  # Directories outside the stack dir that did not exist before the first up.
  local f="$NODE_DIR/machine.saved" kind d
  if [ -f "$f" ]; then
    while read -r kind d; do
      [ "$kind" = dir ] && [ -e "$d" ] && { _node_unmount_all "$d"; rm -rf --one-file-system "$d"; }
    done < "$f"
    rm -f "$f"
  fi
  # No pod sandbox survives a down, so no address stays reserved (the kubelet's next start makes new sandboxes),
  # and no gVisor shim needs its log.
  rm -rf "$NODE_DIR/cni/ipam" "$NODE_CTR_DIR/runsc-log"
  rm -f "$NODE_DIR/real"
}

node_status() {
  is_running registry && _node_registry_ready >/dev/null 2>&1 && is_running dockerd \
    && is_running crates-mirror && _node_crates_ready >/dev/null 2>&1 \
    && is_running containerd && _node_ctr_ready >/dev/null 2>&1 && is_running kubelet && _node_kubelet_ready >/dev/null 2>&1 \
    && is_running kube-scheduler && is_running kube-controller-manager && is_running kube-proxy \
    && _node_registered_ready >/dev/null 2>&1 && is_running kube-network-policies && _node_netpol_ready >/dev/null 2>&1
}

# _node_ref IMAGE: the fully qualified reference (docker.io/library/x:latest for x) and the registry path of it.
_node_ref() {
  local ref="$1" host path
  [[ "$ref" == *@* || "${ref##*/}" == *:* ]] || ref="$ref:latest"
  host="${ref%%/*}"
  if [[ "$ref" != */* ]] || [[ "$host" != *.* && "$host" != *:* && "$host" != localhost ]]; then
    host=docker.io; path="$ref"
    [[ "$path" == */* ]] || path="library/$path"
  else
    path="${ref#*/}"
  fi
  echo "$host/$path $path"
}

# node_image_load IMAGE...: like `minikube image load`: an image of the stack's Docker engine goes to the stack's
# registry under its own name (so the node pulls it, whatever the pull policy) and into the node's containerd
# (so a pod with IfNotPresent gets this image, not an older one of the same name).
node_image_load() {
  local image full path logf="$LOG_DIR/node-images.log"
  [ $# -gt 0 ] || { echo "usage: scripts/stack image load IMAGE..." >&2; return 2; }
  is_running dockerd && is_running containerd && is_running registry \
    || fail node "$LOG_DIR/node.log" "the node is not up (scripts/stack up k8s node)"
  for image in "$@"; do
    read -r full path < <(_node_ref "$image")
    log "node: loading $image as $full"
    { DOCKER_HOST="$NODE_DOCKER_HOST" docker tag "$image" "127.0.0.1:$PORT_NODE_REGISTRY/$path" &&
      DOCKER_HOST="$NODE_DOCKER_HOST" docker push "127.0.0.1:$PORT_NODE_REGISTRY/$path" &&
      DOCKER_HOST="$NODE_DOCKER_HOST" docker rmi "127.0.0.1:$PORT_NODE_REGISTRY/$path" &&
      _node_ctr images pull --plain-http --hosts-dir "$NODE_CTR_DIR/certs.d" "$full"
    } >>"$logf" 2>&1 || fail node "$logf" "image load $image failed"
  done
}

node_env() {
  echo "export PAYGRESS_NODE=real"
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
