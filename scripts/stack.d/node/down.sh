# scripts/stack.d/node/down.sh — node_down: stop the processes and pods, then undo what the node changed on the
# machine (bridge, veths, netns, iptables chains, mounts, cgroups, sysctls, host directories).

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
  _node_provisioners_down
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
