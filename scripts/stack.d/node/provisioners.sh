# scripts/stack.d/node/provisioners.sh — dynamic storage as operators' clusters have it (issue 19 item 3):
# rancher/local-path-provisioner (k3s's default storage), built from the Go module proxy, run twice as processes
# of the node:
#   - StorageClass `local-path` (provisioner rancher.io/local-path, the stack's default class), as on k3s;
#   - StorageClass `hostpath` (provisioner k8s.io/minikube-hostpath), standing in for minikube's
#     storage-provisioner, which makes the same kind of volume: a hostPath directory, root-owned, mode 0777.
# Both give hostPath volumes, to which the kubelet applies no fsGroup. Their directories are under
# <stack>/node/{local-path,hostpath}; each volume's directory is made and removed by a helper pod (the upstream
# ConfigMap's `setup`/`teardown`: `mkdir -m 0777 -p`, `rm -rf`) running the `busybox` stand-in (Debian's
# bookworm-slim stand-in under that name: it has the /bin/sh, mkdir and rm the scripts use).
# The `local` PersistentVolumes of class `standard` (objects.sh, fsGroup applied) stay, as a third class.

NODE_LPP_VERSION="${NODE_LPP_VERSION:-v0.0.30}"
NODE_LPP_BIN="$BUILD_DIR/local-path-provisioner-$NODE_LPP_VERSION/bin/local-path-provisioner"
NODE_BUSYBOX_IMAGE="docker.io/library/busybox:latest"
NODE_LPP_NS="local-path-storage"
# name:provisioner:directory, the first the default class.
NODE_STORAGE_CLASSES=("local-path:rancher.io/local-path:local-path" "hostpath:k8s.io/minikube-hostpath:hostpath")

_node_build_lpp() {
  _node_go_install local-path-provisioner "$NODE_LPP_BIN" "github.com/rancher/local-path-provisioner@$NODE_LPP_VERSION"
}

# The helper pods' image: the bookworm-slim stand-in, tagged busybox in the node's containerd and the registry.
_node_busybox_image() {
  grep -qxF "$NODE_BUSYBOX_IMAGE" <<<"$(_node_ctr images ls -q)" && return 0
  { _node_ctr images import "$(_node_debian_archive)" &&
    _node_ctr images tag --force "$NODE_DEBIAN_IMAGE" "$NODE_BUSYBOX_IMAGE"; } >>"$LOG_DIR/node-images.log" 2>&1 \
    || fail containerd "$LOG_DIR/node-images.log" "tagging the busybox stand-in failed"
  _node_push "$NODE_BUSYBOX_IMAGE"
}

# The classes, their ConfigMaps (upstream's scripts and helper pod) and the helper pods' ServiceAccount. `standard`
# (objects.sh) stops being the default.
_node_provisioner_objects() {
  local logf="$LOG_DIR/node.log" entry name prov dir default=true
  _node_kubectl annotate storageclass standard storageclass.kubernetes.io/is-default-class=false --overwrite \
    >>"$logf" 2>&1 || true
  _node_kubectl apply -f - >>"$logf" 2>&1 <<EOF || fail local-path-provisioner "$logf" "namespace $NODE_LPP_NS"
apiVersion: v1
kind: Namespace
metadata: {name: $NODE_LPP_NS}
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: local-path-provisioner-service-account, namespace: $NODE_LPP_NS}
EOF
  for entry in "${NODE_STORAGE_CLASSES[@]}"; do
    IFS=: read -r name prov dir <<<"$entry"
    mkdir -p "$NODE_DIR/$dir"
    _node_kubectl apply -f - >>"$logf" 2>&1 <<EOF || fail local-path-provisioner "$logf" "StorageClass $name"
apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata:
  name: $name
  annotations:
    storageclass.kubernetes.io/is-default-class: "$default"
provisioner: $prov
volumeBindingMode: WaitForFirstConsumer
reclaimPolicy: Delete
---
kind: ConfigMap
apiVersion: v1
metadata:
  name: $name-config
  namespace: $NODE_LPP_NS
data:
  config.json: |-
    {"nodePathMap": [{"node": "DEFAULT_PATH_FOR_NON_LISTED_NODES", "paths": ["$NODE_DIR/$dir"]}]}
  setup: |-
    #!/bin/sh
    set -eu
    mkdir -m 0777 -p "\$VOL_DIR"
  teardown: |-
    #!/bin/sh
    set -eu
    rm -rf "\$VOL_DIR"
  helperPod.yaml: |-
    apiVersion: v1
    kind: Pod
    metadata:
      name: helper-pod
    spec:
      containers:
      - name: helper-pod
        image: busybox
        imagePullPolicy: IfNotPresent
EOF
    default=false
  done
}

_node_provisioners_up() {
  [ -x "$NODE_LPP_BIN" ] || fail local-path-provisioner "$LOG_DIR/node-build-local-path-provisioner.log" "$NODE_LPP_BIN not built (scripts/stack install node)"
  _node_busybox_image
  _node_provisioner_objects
  local entry name prov dir
  for entry in "${NODE_STORAGE_CLASSES[@]}"; do
    IFS=: read -r name prov dir <<<"$entry"
    _node_start "provisioner-$name" "$NODE_LPP_BIN" start --kubeconfig "$K8S_KUBECONFIG" \
      --provisioner-name "$prov" --namespace "$NODE_LPP_NS" --configmap-name "$name-config" \
      --service-account-name local-path-provisioner-service-account --helper-image "$NODE_BUSYBOX_IMAGE"
  done
}

_node_provisioners_down() {
  local entry
  for entry in "${NODE_STORAGE_CLASSES[@]}"; do stop_proc "provisioner-${entry%%:*}"; done
}

_node_provisioners_running() {
  local entry
  for entry in "${NODE_STORAGE_CLASSES[@]}"; do is_running "provisioner-${entry%%:*}" || return 1; done
}
