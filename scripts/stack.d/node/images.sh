# scripts/stack.d/node/images.sh — the images that cannot be pulled here (pause, the SSH image, the Dockerfile's bases),
# built from recipes and cached by their hash; putting images into the stack's registry and the node's containerd
# (import, push, dockerd's pull), and node_image_load (`scripts/stack image load`).

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
