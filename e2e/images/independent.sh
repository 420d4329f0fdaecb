#!/usr/bin/env bash
# Builds tiny busybox images with an image builder that is not ours (Debian's buildah and
# skopeo) and pushes them to a plain-HTTP registry in the forms real tools produce, so the
# tests read what podman, buildah and docker users push, not what our own code writes.
#
#   REGISTRY=127.0.0.1:5000 WORK=/tmp/dir [PREFIX=independent] e2e/images/independent.sh
#
# Repositories pushed under $PREFIX (tag $TAG, default v1), each with /etc/ota-form =
# "<repo> <tag>":
#   oci-gzip          OCI manifest, gzip layer
#   v2s2-gzip         Docker schema 2 manifest, gzip layer
#   oci-zstd          OCI manifest, zstd layer
#   oci-zstd-chunked  OCI manifest, zstd:chunked layer (a frame per file, skippable frames)
#   oci-zstd-2frames  OCI manifest, a layer of two ordinary zstd frames (no builder flag
#                     makes one: written as an OCI layout by hand, copied by skopeo)
#   multi-oci         OCI image index, linux/amd64 and linux/arm64
#   multi-v2s2        Docker manifest list, linux/amd64 and linux/arm64
set -euo pipefail
REGISTRY=${REGISTRY:?set REGISTRY=host:port}
WORK=${WORK:?set WORK to a scratch directory}
BUSYBOX=${BUSYBOX:-/bin/busybox}
TAG=${TAG:-v1}
PREFIX=${PREFIX:-independent}
rm -rf "$WORK"
mkdir -p "$WORK"
B=(buildah --root "$WORK/storage" --runroot "$WORK/run" --storage-driver vfs)
D=docker://$REGISTRY/$PREFIX

# containers/image keeps a host-wide cache of pushed blobs and reuses a blob of the same
# content in another compression (a zstd push comes out gzip). Each push gets an empty
# cache of its own, in a private mount namespace; each form has its own content too.
nocache() {
  unshare -m --propagation private sh -c \
    'mkdir -p /var/lib/containers/cache && mount -t tmpfs -o mode=0700 cache /var/lib/containers/cache && exec "$@"' \
    nocache "$@"
}

rootfs() { # dir form
  rm -rf "$1"
  mkdir -p "$1/bin" "$1/etc"
  cp "$BUSYBOX" "$1/bin/busybox"
  chmod 0755 "$1/bin/busybox"
  for a in sh ls cat echo sleep true wc; do ln -s busybox "$1/bin/$a"; done
  printf '%s %s\n' "$2" "$TAG" >"$1/etc/ota-form"
}

image() { # name form arch — FROM scratch: no RUN, so no container runtime is involved
  rootfs "$WORK/root-$2" "$2"
  local c
  c=$("${B[@]}" from --arch "$3" scratch)
  "${B[@]}" copy --chown 0:0 "$c" "$WORK/root-$2/" / >/dev/null
  "${B[@]}" config --os linux --arch "$3" --entrypoint '["/bin/sh"]' --cmd '' "$c"
  "${B[@]}" commit -q --rm --format oci "$c" "$1" >/dev/null
}

push() { nocache "${B[@]}" push -q --tls-verify=false "$@"; }

image f1 oci-gzip amd64
push --format oci f1 "$D/oci-gzip:$TAG"
image f2 v2s2-gzip amd64
push --format v2s2 f2 "$D/v2s2-gzip:$TAG"
image f3 oci-zstd amd64
push --format oci --compression-format zstd f3 "$D/oci-zstd:$TAG"
image f4 oci-zstd-chunked amd64
push --format oci --compression-format zstd:chunked f4 "$D/oci-zstd-chunked:$TAG"

image multi-amd64 multi amd64
image multi-arm64 multi arm64
"${B[@]}" manifest create multi >/dev/null
for a in amd64 arm64; do
  "${B[@]}" manifest add multi "containers-storage:localhost/multi-$a:latest" >/dev/null
done
nocache "${B[@]}" manifest push -q --all --tls-verify=false --format oci multi "$D/multi-oci:$TAG"
nocache "${B[@]}" manifest push -q --all --tls-verify=false --format v2s2 multi "$D/multi-v2s2:$TAG"

# Two ordinary zstd frames, split mid-archive at a block boundary.
L=$WORK/layout
rootfs "$WORK/root-2f" oci-zstd-2frames
mkdir -p "$L/blobs/sha256"
tar --sort=name --numeric-owner --owner=0 --group=0 --mtime=@0 -C "$WORK/root-2f" -cf "$WORK/l.tar" bin etc
half=$(($(stat -c%s "$WORK/l.tar") / 1024 * 512))
{
  head -c "$half" "$WORK/l.tar" | zstd -q -c
  tail -c "+$((half + 1))" "$WORK/l.tar" | zstd -q -c
} >"$WORK/l.tar.zst"
blob() {
  local d
  d=$(sha256sum "$1" | cut -d' ' -f1)
  cp "$1" "$L/blobs/sha256/$d"
  echo "sha256:$d"
}
LD=$(blob "$WORK/l.tar.zst")
jq -n --arg diff "sha256:$(sha256sum "$WORK/l.tar" | cut -d' ' -f1)" \
  '{architecture:"amd64",os:"linux",config:{Entrypoint:["/bin/sh"]},rootfs:{type:"layers",diff_ids:[$diff]}}' >"$WORK/cfg.json"
CD=$(blob "$WORK/cfg.json")
jq -n --arg c "$CD" --argjson cs "$(stat -c%s "$WORK/cfg.json")" --arg l "$LD" --argjson ls "$(stat -c%s "$WORK/l.tar.zst")" \
  '{schemaVersion:2,mediaType:"application/vnd.oci.image.manifest.v1+json",
    config:{mediaType:"application/vnd.oci.image.config.v1+json",digest:$c,size:$cs},
    layers:[{mediaType:"application/vnd.oci.image.layer.v1.tar+zstd",digest:$l,size:$ls}]}' >"$WORK/m.json"
MD=$(blob "$WORK/m.json")
jq -n --arg m "$MD" --argjson ms "$(stat -c%s "$WORK/m.json")" \
  '{schemaVersion:2,manifests:[{mediaType:"application/vnd.oci.image.manifest.v1+json",digest:$m,size:$ms,
    annotations:{"org.opencontainers.image.ref.name":"img"}}]}' >"$L/index.json"
echo '{"imageLayoutVersion":"1.0.0"}' >"$L/oci-layout"
nocache skopeo copy -q --dest-tls-verify=false "oci:$L:img" "$D/oci-zstd-2frames:$TAG"
