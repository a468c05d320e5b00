# scripts/stack.d/node/network.sh — machine-wide state, recorded at up (machine.saved) and undone at down (sysctls);
# the bridge and its forward guard (node_network_up, also used by k8s_up), the CNI network of the pods.

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
