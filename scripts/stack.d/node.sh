# scripts/stack.d/node.sh — the stack's real node, beside its API server (component `node`): containerd + runc
# (Debian), a CNI bridge network for pods in 198.18.0.0/15 (RFC 2544; no masquerade, no route off the machine), kubelet, kube-scheduler,
# kube-controller-manager and kube-proxy v1.36.3 (built from the Go module proxy like kube-apiserver), a local
# registry (CNCF Distribution) that is every registry's only host for containerd, dockerd on the node's containerd
# (DOCKER_HOST, BuildKit; `docker build` of the shipped Dockerfile, `scripts/stack image load`) whose build steps
# sit on the bridge and fetch crates from a crates.io mirror there (node/crates-mirror.py), a default StorageClass
# with local volumes, and the images that cannot be pulled here, made locally: the pod sandbox (pause), a stand-in
# for lscr.io/linuxserver/openssh-server:latest (Debian's OpenSSH, same interface) and for the Dockerfile's bases
# rust:1.95-bookworm (the host's Rust toolchain) and debian:bookworm-slim; gVisor as the runtime handler `runsc` (Debian's runsc, a shim built from gVisor's
# Go module) behind the RuntimeClass `gvisor`; NetworkPolicy enforced by kube-network-policies (kind's enforcer, built
# from the Go module proxy with a patch: the nft `queue` it uses is missing from this kernel). The API server
# (k8s.sh) listens on the bridge address, so pods reach it.
# Sourced by scripts/stack after lib.sh and k8s.sh. Functions: node_install node_up node_wait node_down node_status
# node_env, and node_network_up (used by k8s_up), node_image_load (`scripts/stack image load`). Needs root.
# Everything it changes on the machine is recorded at up (_node_machine_record) and undone by node_down: see
# docs/stack.md. Traps: root lacks CAP_SYS_RESOURCE here, so containerd needs restrict_oom_score_adj (and gVisor's
# shim a patch); cgroup v1 needs the kubelet's failCgroupV1: false; the kubelet refuses a loopback node IP, so the
# node's address is the bridge's; only one real node per machine (bridge, sysctls, /var/log/containers are
# machine-wide).
# This file sets the variables and small helpers the parts share; the code is in node/, by concern: install.sh,
# images.sh, network.sh, config.sh, objects.sh, provisioners.sh, up.sh, down.sh (sourced at the end).

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
_node_kubectl() { _k8s_kubectl "$@"; }

# _node_config PROC FILE < CONTENT: write FILE; if it changed while PROC runs, stop PROC so that up restarts it with
# the new file (restart_if_changed sees only command lines). Containers outlive a containerd restart.
_node_config() {
  local proc="$1" file="$2"
  cat > "$file.new"
  if [ -f "$file" ] && cmp -s "$file" "$file.new"; then rm -f "$file.new"; return 0; fi
  if [ -f "$file" ] && is_running "$proc"; then log "node: $(basename "$file") changed, restarting $proc"; stop_proc "$proc"; fi
  mv "$file.new" "$file"
}

# The parts (functions only).
# shellcheck source=scripts/stack.d/node/install.sh
. "$NODE_SRC/install.sh"
# shellcheck source=scripts/stack.d/node/images.sh
. "$NODE_SRC/images.sh"
# shellcheck source=scripts/stack.d/node/network.sh
. "$NODE_SRC/network.sh"
# shellcheck source=scripts/stack.d/node/config.sh
. "$NODE_SRC/config.sh"
# shellcheck source=scripts/stack.d/node/objects.sh
. "$NODE_SRC/objects.sh"
# shellcheck source=scripts/stack.d/node/provisioners.sh
. "$NODE_SRC/provisioners.sh"
# shellcheck source=scripts/stack.d/node/up.sh
. "$NODE_SRC/up.sh"
# shellcheck source=scripts/stack.d/node/down.sh
. "$NODE_SRC/down.sh"
