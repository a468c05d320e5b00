# scripts/stack.d/node/objects.sh — what the node puts into the API server at up: RBAC (kubelet API, the
# NetworkPolicy enforcer), the default StorageClass and its local PersistentVolumes, the RuntimeClass `gvisor`.

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

# Storage: the StorageClass `standard` and a pool of `local` PersistentVolumes (directories under
# <stack>/node/pv, node affinity to this node): a PVC of that class binds when its pod is scheduled, and the
# kubelet applies the pod's fsGroup to it as on a cloud disk (a hostPath volume gets no fsGroup). Not the default
# class: that is local-path (provisioners.sh).
# Kept at NODE_PVS available volumes: a Released one (its claim deleted) is wiped and made Available again at up.
_node_storage() {
  local i pv dir logf="$LOG_DIR/node.log"
  _node_kubectl apply -f - >>"$logf" 2>&1 <<EOF || fail node "$logf" "StorageClass standard"
apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata:
  name: standard
  annotations:
    # The default is local-path (provisioners.sh), as on k3s.
    storageclass.kubernetes.io/is-default-class: "false"
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
