#!/usr/bin/env bash
# Builds the device packages: edgevisor-device_<version>-1_<arch>.deb (cargo-deb), the same
# files as edgevisor-device-<version>-<arch>.tar.gz for other distributions, and SHA256SUMS over
# every package in the output directory. `make deb` runs it; so does the release workflow, once
# per architecture.
set -euo pipefail

usage() {
    cat <<'USAGE'
Usage: device-runtime/packaging/build.sh [--arch ARCH] [--out DIR]
       device-runtime/packaging/build.sh --checksums-only [--out DIR]

Builds edgevisor-runtime, evctl and edgevisor-agent in release mode and packages them with
their systemd units and configuration, then writes SHA256SUMS over every .deb and .tar.gz in
the output directory (--checksums-only: only that, for packages gathered from several builds).

  --arch ARCH  Debian architecture to build for (default: this machine's, by
               `dpkg --print-architecture`). Another than this machine's is cross-compiled with
               the Rust target and Debian's cross linker (unless CARGO_TARGET_<TRIPLE>_LINKER
               is set):
                 amd64    x86_64-unknown-linux-gnu       x86_64-linux-gnu-gcc
                 arm64    aarch64-unknown-linux-gnu      aarch64-linux-gnu-gcc
                 armhf    armv7-unknown-linux-gnueabihf  arm-linux-gnueabihf-gcc
                 riscv64  riscv64gc-unknown-linux-gnu    riscv64-linux-gnu-gcc
  --out DIR    Where the packages go (default: target/dist).

Environment: CARGO (default: cargo; may be a command with arguments, such as
"flock /tmp/lock cargo"), CARGO_DEB_VERSION (default 3.8.0), installed once under
~/.cache/edgevisor/cargo-deb-<version> unless cargo-deb of that version is on the PATH.
USAGE
}

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
host_arch=$(dpkg --print-architecture)
arch=$host_arch
out="$repo/target/dist"
checksums_only=0
while [[ $# -gt 0 ]]; do
    case "$1" in
    --arch) arch=${2:?--arch needs a Debian architecture}; shift 2 ;;
    --out) out=${2:?--out needs a directory}; shift 2 ;;
    --checksums-only) checksums_only=1; shift ;;
    -h | --help) usage; exit 0 ;;
    *) echo "build.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done

out=$(realpath -m "$out")

checksums() {
    shopt -s nullglob
    local packages=("$out"/*.deb "$out"/*.tar.gz)
    ((${#packages[@]})) || { echo "build.sh: no .deb or .tar.gz in $out" >&2; exit 1; }
    (cd "$out" && sha256sum -- "${packages[@]##*/}" >SHA256SUMS)
    echo "==> $out:"
    (cd "$out" && ls -l -- "${packages[@]##*/}" SHA256SUMS)
}
if ((checksums_only)); then
    checksums
    exit 0
fi

case "$arch" in
amd64) triple=x86_64-unknown-linux-gnu linker=x86_64-linux-gnu-gcc ;;
arm64) triple=aarch64-unknown-linux-gnu linker=aarch64-linux-gnu-gcc ;;
armhf) triple=armv7-unknown-linux-gnueabihf linker=arm-linux-gnueabihf-gcc ;;
riscv64) triple=riscv64gc-unknown-linux-gnu linker=riscv64-linux-gnu-gcc ;;
*) echo "build.sh: --arch $arch: amd64, arm64, armhf or riscv64" >&2; exit 2 ;;
esac
read -r -a cargo <<<"${CARGO:-cargo}"
cd "$repo"

# cargo-deb, pinned: its output (file names, control fields) is part of what releases publish.
deb_version=${CARGO_DEB_VERSION:-3.8.0}
if ! cargo-deb --version 2>/dev/null | grep -qx "cargo-deb $deb_version"; then
    deb_root="$HOME/.cache/edgevisor/cargo-deb-$deb_version"
    if [[ ! -x "$deb_root/bin/cargo-deb" ]]; then
        echo "==> installing cargo-deb $deb_version into $deb_root (once)"
        "${cargo[@]}" install cargo-deb --version "$deb_version" --locked --root "$deb_root"
    fi
    export PATH="$deb_root/bin:$PATH"
fi

# This machine's own architecture builds into target/release, shared with every other release
# build here; another is cross-compiled into target/<triple>/release.
target_args=()
if [[ "$arch" != "$host_arch" ]]; then
    target_args=(--target "$triple")
    var="CARGO_TARGET_$(tr 'a-z-' 'A-Z_' <<<"$triple")_LINKER"
    if [[ -z "${!var:-}" ]]; then
        command -v "$linker" >/dev/null ||
            { echo "build.sh: $linker not found; apt-get install gcc-${linker%-gcc}, or set $var" >&2; exit 1; }
        export "$var=$linker"
    fi
fi

echo "==> building runtime, evctl and agent for $arch (release)"
"${cargo[@]}" build --release --locked -p edgevisor-device-runtime -p edgevisor-agent --bins \
    "${target_args[@]}"

mkdir -p "$out"
echo "==> packaging the .deb"
# --no-build: the binaries above are the ones packaged (cargo-deb would build only this crate's).
# --no-strip: the release profile strips already, and a cross strip may not be installed.
deb=$("${cargo[@]}" deb -p edgevisor-device-runtime --no-build --no-strip --output "$out" \
    "${target_args[@]}" | tail -n 1)
[[ -f "$deb" ]] || { echo "build.sh: cargo deb did not say where the .deb is ($deb)" >&2; exit 1; }

version=$(dpkg-deb -f "$deb" Version)
deb_arch=$(dpkg-deb -f "$deb" Architecture)
[[ "$deb_arch" == "$arch" ]] || { echo "build.sh: cargo deb made a $deb_arch package, not $arch" >&2; exit 1; }
tarball="$out/edgevisor-device-${version%-*}-$arch.tar.gz"
echo "==> packaging $(basename "$tarball")"
staging=$(mktemp -d)
trap 'rm -rf "$staging"' EXIT
dpkg-deb -x "$deb" "$staging"
# Files and symlinks only, no directory entries: extracting a "lib/" entry over a merged-/usr
# system's /lib symlink would replace the symlink with a directory. Owned by root, dated by the
# last commit, sorted, gzip without a timestamp: the same sources give the same bytes.
epoch=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || echo 0)}
(cd "$staging" && find . \( -type f -o -type l \) -printf '%P\n' | LC_ALL=C sort) |
    tar -C "$staging" --owner=0 --group=0 --numeric-owner --mtime="@$epoch" --no-recursion \
        -T - -cf - | gzip -9n >"$tarball"

checksums
