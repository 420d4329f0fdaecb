# shellcheck shell=bash
# Builds and caches the tools the tests and the demo run: kube-apiserver and kubectl (from the
# k8s.io/kubernetes Go module), etcd (from the go.etcd.io/etcd/server module), helm (from
# helm.sh/helm), and the Debian packages (runc, the CNCF distribution registry, busybox-static).
#
# Everything is cached outside the repo under $EDGEVISOR_CACHE (default ~/.cache/edgevisor), one
# directory per tool and version, so a version bump builds again and nothing else does. A build
# writes into a temp directory and is renamed into place only when complete: an interrupted build
# leaves nothing that looks finished.

# The Kubernetes release the tests run against: the newest that the pinned k8s-openapi supports
# (feature v1_37 in Cargo.toml). Keep the two in step.
KUBERNETES_VERSION=${KUBERNETES_VERSION:-v1.37.2}
# The etcd minor that this Kubernetes release is built and tested with (its go.mod requires v3.7).
ETCD_VERSION=${ETCD_VERSION:-v3.7.3}
HELM_VERSION=${HELM_VERSION:-v4.3.1}
# The containerd whose CRI matches this kubelet (containerd 2.4 supports Kubernetes 1.37).
CONTAINERD_VERSION=${CONTAINERD_VERSION:-v2.4.2}
ACTIONLINT_VERSION=${ACTIONLINT_VERSION:-v1.7.12}
# Prometheus 3.16 (its Go module is versioned v0.316.0): the local environment's Prometheus,
# and promtool for the chart's alert rules.
PROMETHEUS_VERSION=${PROMETHEUS_VERSION:-v0.316.0}
EDGEVISOR_CACHE=${EDGEVISOR_CACHE:-$HOME/.cache/edgevisor}
# apache2-utils: htpasswd, for the registry that requires credentials in the tests.
# containernetworking-plugins, iptables, conntrack: the node's pod network and kube-proxy;
# gcc, libc6-dev: the pause image's static program; binutils: `make image` (readelf, objcopy).
DEBIAN_PACKAGES=(runc docker-registry busybox-static openssl iproute2 curl jq lua5.4 apache2-utils buildah skopeo zstd
  containernetworking-plugins iptables conntrack gcc libc6-dev binutils)

log() { printf '[env] %s\n' "$*" >&2; }
die() { printf '[env] error: %s\n' "$*" >&2; exit 1; }

# ensure_debian_packages [PACKAGE...] — installs those (default: all of DEBIAN_PACKAGES) that are
# missing; apt-get update only when something is.
ensure_debian_packages() {
  local missing=() p wanted=("$@")
  ((${#wanted[@]})) || wanted=("${DEBIAN_PACKAGES[@]}")
  for p in "${wanted[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  ((${#missing[@]})) || return 0
  log "installing Debian packages: ${missing[*]}"
  local sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo"
  $sudo apt-get update -qq >&2 || die "apt-get update failed"
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2 \
    || die "apt-get install ${missing[*]} failed"
  # Debian starts the registry as a system service on :5000; the tests run their own instance.
  if [[ " ${missing[*]} " == *" docker-registry "* ]] && command -v systemctl >/dev/null; then
    $sudo systemctl disable --now docker-registry >/dev/null 2>&1 || true
  fi
}

# go_build_cached NAME VERSION SETUP_FN — runs SETUP_FN in a fresh module directory with $out set
# to where the binaries go, then moves $out into the cache. Prints the cache directory.
go_build_cached() {
  local name=$1 version=$2 setup=$3
  local dest="$EDGEVISOR_CACHE/$name-$version"
  if [ -f "$dest/.complete" ]; then echo "$dest"; return 0; fi
  command -v go >/dev/null || die "go is not installed; install Go 1.26 or newer"
  mkdir -p "$EDGEVISOR_CACHE"
  local work
  work=$(mktemp -d "$EDGEVISOR_CACHE/.build-$name-XXXXXX")
  log "building $name $version (once; cached in $dest)"
  local start=$SECONDS
  if ! (cd "$work" && out="$work/out" && mkdir -p "$out" && "$setup" "$version" "$out") >"$work.log" 2>&1; then
    tail -n 30 "$work.log" >&2
    die "building $name $version failed (full log: $work.log)"
  fi
  rm -rf "$dest"
  mv "$work/out" "$dest"
  touch "$dest/.complete"
  rm -rf "$work" "$work.log"
  log "built $name $version in $((SECONDS - start))s"
  echo "$dest"
}

# _kubernetes_module VERSION PACKAGE... — a wrapper module that builds k8s.io/kubernetes commands.
# Prints the -ldflags that stamp the version into them.
_kubernetes_module() {
  local version=$1 minor=${1#v1.}
  shift
  minor=${minor%%.*}
  local staging_version="v0.${version#v1.}"
  go mod init edgevisor.dev/kube-build >&2
  go mod edit -go=1.26.0 -require="k8s.io/kubernetes@$version"
  # k8s.io/kubernetes replaces its staging modules with ./staging paths that do not exist in the
  # module zip: pin each to its published v0.X.Y instead.
  local gomod
  gomod=$(go mod download -json "k8s.io/kubernetes@$version" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')
  local m
  for m in $(sed -n 's#^\s*\(k8s.io/[a-z0-9-]*\) => ./staging/.*#\1#p' "$gomod"); do
    go mod edit -replace="$m=$m@$staging_version"
  done
  {
    printf '//go:build tools\n\npackage tools\n\nimport (\n'
    for m in "$@"; do printf '\t_ "%s"\n' "$m"; done
    printf ')\n'
  } >tools.go
  go mod tidy >&2
  local pkg ldflags=""
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ldflags+=" -X $pkg.gitVersion=$version -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
    ldflags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
  done
  echo "-s -w $ldflags"
}

_setup_kubernetes() {
  local version=$1 out=$2 ldflags
  local cmds=(k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kubectl)
  ldflags=$(_kubernetes_module "$version" "${cmds[@]}")
  CGO_ENABLED=0 go build -trimpath -ldflags "$ldflags" -o "$out/" "${cmds[@]}"
}

# The node: the same Kubernetes build as the apiserver, in a cache entry of its own so that the
# apiserver alone (unit tests, a machine without a node) does not wait for it.
_setup_kubernetes_node() {
  local version=$1 out=$2 ldflags
  local cmds=(k8s.io/kubernetes/cmd/kubelet k8s.io/kubernetes/cmd/kube-scheduler
    k8s.io/kubernetes/cmd/kube-controller-manager k8s.io/kubernetes/cmd/kube-proxy)
  ldflags=$(_kubernetes_module "$version" "${cmds[@]}")
  CGO_ENABLED=0 go build -trimpath -ldflags "$ldflags" -o "$out/" "${cmds[@]}"
}

# containerd from its Go module: Debian's 1.6 lacks the CRI calls this kubelet makes. Its CRI
# plugin is tested against the Kubernetes minor above (see ../shared/notes/one-node-cluster.md).
_setup_containerd() {
  local version=$1 out=$2
  go mod init edgevisor.dev/containerd-build
  go mod edit -go=1.26.0 -require="github.com/containerd/containerd/v2@$version"
  local cmds=(github.com/containerd/containerd/v2/cmd/containerd
    github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2
    github.com/containerd/containerd/v2/cmd/ctr)
  {
    printf '//go:build tools\n\npackage tools\n\nimport (\n'
    for m in "${cmds[@]}"; do printf '\t_ "%s"\n' "$m"; done
    printf ')\n'
  } >tools.go
  go mod tidy
  CGO_ENABLED=0 go build -trimpath -tags "no_btrfs no_devmapper no_zfs" \
    -ldflags "-s -w -X github.com/containerd/containerd/v2/version.Version=$version" -o "$out/" "${cmds[@]}"
}

# prometheus and promtool from their Go module (the web UI's assets are not in the module: the
# server answers its HTTP API, which is what the tests and Grafana use).
_setup_prometheus() {
  local version=$1 out=$2 release=${1#v0.}
  release="${release:0:1}.${release:1}" # v0.316.0 is Prometheus 3.16.0
  go mod init edgevisor.dev/prometheus-build
  go mod edit -go=1.26.0 -require="github.com/prometheus/prometheus@$version"
  printf '//go:build tools\n\npackage tools\n\nimport (\n\t_ "github.com/prometheus/prometheus/cmd/prometheus"\n\t_ "github.com/prometheus/prometheus/cmd/promtool"\n)\n' >tools.go
  go mod tidy
  # Kubernetes service discovery only: the cloud providers' SDKs would triple the build.
  CGO_ENABLED=0 go build -trimpath -tags remove_all_sd,enable_kubernetes_sd \
    -ldflags "-s -w -X github.com/prometheus/common/version.Version=$release" \
    -o "$out/" github.com/prometheus/prometheus/cmd/prometheus github.com/prometheus/prometheus/cmd/promtool
}

# actionlint, the GitHub Actions workflow linter, for .github/workflows.
_setup_actionlint() {
  local version=$1 out=$2
  GOBIN=$out go install "github.com/rhysd/actionlint/cmd/actionlint@$version"
}

_setup_etcd() {
  local version=$1 out=$2
  go mod init edgevisor.dev/etcd-build
  go mod edit -go=1.26.0 -require="go.etcd.io/etcd/server/v3@$version"
  cat >main.go <<'GO'
// Command etcd is the etcd server, built from its Go module.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
GO
  go mod tidy
  CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o "$out/etcd" .
}

_setup_helm() {
  local version=$1 out=$2 major=${1%%.*}
  go mod init edgevisor.dev/helm-build
  go mod edit -go=1.26.0 -require="helm.sh/helm/$major@$version"
  cat >tools.go <<GO
//go:build tools

package tools

import _ "helm.sh/helm/$major/cmd/helm"
GO
  go mod tidy
  CGO_ENABLED=0 go build -trimpath \
    -ldflags "-s -w -X helm.sh/helm/$major/internal/version.version=$version" \
    -o "$out/helm" "helm.sh/helm/$major/cmd/helm"
}

# ensure_tools — everything the environment needs; exports KUBE_BIN, ETCD_BIN, HELM_BIN and puts
# them first on PATH.
ensure_tools() {
  ensure_debian_packages
  local k e h
  k=$(go_build_cached kubernetes "$KUBERNETES_VERSION" _setup_kubernetes) || exit 1
  e=$(go_build_cached etcd "$ETCD_VERSION" _setup_etcd) || exit 1
  h=$(go_build_cached helm "$HELM_VERSION" _setup_helm) || exit 1
  export KUBE_BIN=$k ETCD_BIN=$e HELM_BIN=$h
  export PATH="$k:$e:$h:$PATH"
  ensure_kstatus
}

# The kstatus command (e2e/kstatus: the status model of sigs.k8s.io/cli-utils, which kpt, Config
# Sync, Flux and Helm 4's --wait share), and the cli-utils version its go.mod pins: the cache key.
KSTATUS_SRC=$(cd "$(dirname "${BASH_SOURCE[0]}")/../kstatus" && pwd)
KSTATUS_VERSION=$(sed -n 's#^[[:space:]]*sigs\.k8s\.io/cli-utils \(v[^[:space:]]*\).*#\1#p' "$KSTATUS_SRC/go.mod")

_setup_kstatus() {
  local out=$2
  cp "$KSTATUS_SRC"/go.mod "$KSTATUS_SRC"/go.sum "$KSTATUS_SRC"/*.go .
  CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o "$out/kstatus" .
}

# ensure_kstatus — builds kstatus once into $EDGEVISOR_CACHE/kstatus-$KSTATUS_VERSION/kstatus;
# exports KSTATUS_BIN, its path. The cache is keyed by the cli-utils version only: after a change
# to e2e/kstatus/main.go alone, remove that directory.
ensure_kstatus() {
  [ -n "$KSTATUS_VERSION" ] || die "$KSTATUS_SRC/go.mod does not require sigs.k8s.io/cli-utils"
  local dir
  dir=$(go_build_cached kstatus "$KSTATUS_VERSION" _setup_kstatus) || exit 1
  export KSTATUS_BIN=$dir/kstatus
}

# ensure_node_tools — the node's binaries (built once); exports KUBE_NODE_BIN (kubelet,
# kube-proxy, kube-scheduler, kube-controller-manager) and NODE_BIN (containerd, its runc shim,
# ctr).
ensure_node_tools() {
  local k c
  k=$(go_build_cached kubernetes-node "$KUBERNETES_VERSION" _setup_kubernetes_node) || exit 1
  c=$(go_build_cached containerd "$CONTAINERD_VERSION" _setup_containerd) || exit 1
  export KUBE_NODE_BIN=$k NODE_BIN=$c
}

# ensure_prometheus — builds prometheus and promtool once; exports PROMETHEUS_BIN.
ensure_prometheus() {
  local p
  p=$(go_build_cached prometheus "$PROMETHEUS_VERSION" _setup_prometheus) || exit 1
  export PROMETHEUS_BIN=$p
}

# ensure_node_tools_present — the same paths without building anything (for `down`).
ensure_node_tools_present() {
  export KUBE_NODE_BIN=$EDGEVISOR_CACHE/kubernetes-node-$KUBERNETES_VERSION
  export NODE_BIN=$EDGEVISOR_CACHE/containerd-$CONTAINERD_VERSION
}
