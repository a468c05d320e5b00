#!/usr/bin/env bash
# oci-pack.sh NAME CONFIG_JSON LAYER_TAR OUT: wrap one uncompressed rootfs tar as a one-layer OCI image archive
# (what `ctr image import` and `docker load` read). CONFIG_JSON is the image config's "config" object
# (Entrypoint, Cmd, Env, User, WorkingDir, ExposedPorts). NAME becomes the io.containerd.image.name annotation.
set -euo pipefail
name="$1" config="$2" layer="$3" out="$4"
work="$(mktemp -d "${out}.XXXXXX")"
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/blobs/sha256"

# blob FILE: move FILE into blobs/ under its digest, print "DIGEST SIZE".
blob() {
  local d s; d="$(sha256sum "$1" | cut -d' ' -f1)"; s="$(stat -c %s "$1")"
  mv "$1" "$work/blobs/sha256/$d"; echo "sha256:$d $s"
}

cp "$layer" "$work/layer"
read -r layer_digest layer_size < <(blob "$work/layer")
# Uncompressed layer: its diff_id is its digest.
printf '{"architecture":"amd64","os":"linux","config":%s,"rootfs":{"type":"layers","diff_ids":["%s"]},"history":[{"created_by":"paygress scripts/stack.d/node (oci-pack.sh)"}]}' \
  "$config" "$layer_digest" > "$work/config"
read -r config_digest config_size < <(blob "$work/config")
printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"%s","size":%s},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"%s","size":%s}]}' \
  "$config_digest" "$config_size" "$layer_digest" "$layer_size" > "$work/manifest"
read -r manifest_digest manifest_size < <(blob "$work/manifest")
tag="${name##*:}"; [ "$tag" != "$name" ] && [[ "$tag" != */* ]] || tag=latest
printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"%s","size":%s,"platform":{"architecture":"amd64","os":"linux"},"annotations":{"io.containerd.image.name":"%s","org.opencontainers.image.ref.name":"%s"}}]}' \
  "$manifest_digest" "$manifest_size" "$name" "$tag" > "$work/index.json"
echo '{"imageLayoutVersion":"1.0.0"}' > "$work/oci-layout"
tar -C "$work" -cf "$out.tmp" oci-layout index.json blobs
mv "$out.tmp" "$out"
