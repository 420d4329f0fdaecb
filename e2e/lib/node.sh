# shellcheck shell=bash
# The local environment's node: containerd (with runc and the CNI bridge plugins), kubelet,
# kube-proxy, kube-scheduler and kube-controller-manager, so that Deployments run as pods and
# `helm install --wait` means what it means on any cluster. Sourced by e2e/env, which defines
# DIR, PKI, start, wait_for, pid_of, stop_component, log and die.
#
# What no guide says and this machine needs (../shared/notes/one-node-cluster.md):
# - kubelet's cgroupRoot must exist in every cgroup v1 hierarchy, cpuset values copied in;
# - without CAP_SYS_RESOURCE runc cannot lower oom_score_adj: containerd must restrict it;
# - containerd 2.4's config is `version = 4`: server addresses live under the grpc/ttrpc plugins.
#
# One node per machine: kubelet and kube-proxy listen on fixed ports (10250, 10248, 10249, 10256),
# and a few paths are fixed outside $DIR (NODE_FIXED_PATHS): `down` removes those it created.

NODE_NAME=${EDGEVISOR_NODE_NAME:-edgevisor-node}
# The node's address: on the loopback interface (not every kernel has dummy interfaces), so it
# is the same on every machine and no real interface is touched; pods route to it through their
# bridge (the apiserver advertises it; pods reach the `kubernetes` Service there).
NODE_IP=${EDGEVISOR_NODE_IP:-10.200.0.1}
POD_CIDR=10.244.0.0/24
POD_BRIDGE=evcni0
SERVICE_CIDR=10.96.0.0/16
CLUSTER_DNS_IP=10.96.0.10
CGROUP_ROOT=/edgevisor-node
NODE_DIR=$DIR/node
NODE_COMPONENTS=(containerd kubelet kube-proxy kube-scheduler kube-controller-manager)
PAUSE_IMAGE_REPO=edgevisor/pause
PAUSE_VERSION=1

# node_pki — client certificates for the node's components, a serving cert for the kubelet.
node_pki() {
  [ -f "$PKI/.node-complete" ] && return 0
  log "creating the node's certificates"
  (
    cd "$PKI"
    local who
    for who in "kubelet:/O=system:nodes/CN=system:node:$NODE_NAME" \
      "kube-proxy:/CN=system:kube-proxy" \
      "kube-scheduler:/CN=system:kube-scheduler" \
      "kube-controller-manager:/CN=system:kube-controller-manager" \
      "apiserver-kubelet-client:/O=system:masters/CN=kube-apiserver-kubelet-client"; do
      openssl req -newkey rsa:2048 -nodes -subj "${who#*:}" -keyout "${who%%:*}.key" -out "${who%%:*}.csr" 2>/dev/null
      openssl x509 -req -in "${who%%:*}.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -days 3650 \
        -extfile client.ext -out "${who%%:*}.crt" 2>/dev/null
    done
    printf 'subjectAltName=IP:%s,DNS:%s\nextendedKeyUsage=serverAuth\n' "$NODE_IP" "$NODE_NAME" >kubelet-serving.ext
    openssl req -newkey rsa:2048 -nodes -subj "/CN=$NODE_NAME" -keyout kubelet-serving.key -out kubelet-serving.csr 2>/dev/null
    openssl x509 -req -in kubelet-serving.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 3650 \
      -extfile kubelet-serving.ext -out kubelet-serving.crt 2>/dev/null
    chmod 600 ./*.key
  ) || die "creating the node's certificates failed"
  touch "$PKI/.node-complete"
}

# node_kubeconfig NAME — a kubeconfig for component NAME with its client certificate.
node_kubeconfig() {
  local name=$1 out=$NODE_DIR/$1.kubeconfig
  install_file "$out" <<KC
apiVersion: v1
kind: Config
clusters:
- name: local
  cluster:
    server: https://$NODE_IP:$APISERVER_PORT
    certificate-authority: $PKI/ca.crt
users:
- name: $name
  user:
    client-certificate: $PKI/$name.crt
    client-key: $PKI/$name.key
contexts:
- name: local
  context: {cluster: local, user: $name}
current-context: local
KC
  chmod 600 "$out"
}

node_address_up() {
  ip addr replace "$NODE_IP/32" dev lo || die "adding $NODE_IP to lo failed"
}

# Host settings that the node changes, saved once so that `down` puts them back.
NODE_SYSCTLS=(net.ipv4.ip_forward net.ipv4.conf.all.route_localnet vm.overcommit_memory kernel.panic kernel.panic_on_oops)
node_save_sysctls() {
  [ -f "$NODE_DIR/sysctls.saved" ] && return 0
  local k
  for k in "${NODE_SYSCTLS[@]}"; do echo "$k=$(sysctl -n "$k")"; done >"$NODE_DIR/sysctls.tmp"
  mv "$NODE_DIR/sysctls.tmp" "$NODE_DIR/sysctls.saved"
}

node_restore_sysctls() {
  [ -f "$NODE_DIR/sysctls.saved" ] || return 0
  local line
  while read -r line; do sysctl -q -w "$line" >/dev/null 2>&1 || true; done <"$NODE_DIR/sysctls.saved"
  rm -f "$NODE_DIR/sysctls.saved"
}

# Every cgroup hierarchy needs kubelet's cgroupRoot (v1: each controller and name=systemd; v2:
# one directory with the controllers delegated).
node_cgroups_up() {
  if [ -f /sys/fs/cgroup/cgroup.controllers ]; then
    local c
    for c in cpu cpuset memory pids io hugetlb; do
      grep -qw "$c" /sys/fs/cgroup/cgroup.controllers && echo "+$c" >/sys/fs/cgroup/cgroup.subtree_control 2>/dev/null || true
    done
    mkdir -p "/sys/fs/cgroup$CGROUP_ROOT"
    return 0
  fi
  local h
  for h in /sys/fs/cgroup/*/; do
    h=${h%/}
    [ "$(basename "$h")" = unified ] && continue
    mkdir -p "$h$CGROUP_ROOT"
    if [ -f "$h/cpuset.cpus" ]; then
      cat "$h/cpuset.cpus" >"$h$CGROUP_ROOT/cpuset.cpus"
      cat "$h/cpuset.mems" >"$h$CGROUP_ROOT/cpuset.mems"
    fi
  done
}

# Kills what still runs under cgroupRoot (pods whose shim is gone) and removes the cgroups,
# deepest first.
node_cgroups_down() {
  local h dir pid tries
  for h in /sys/fs/cgroup /sys/fs/cgroup/*/; do
    h=${h%/}
    [ -d "$h$CGROUP_ROOT" ] || continue
    for tries in 1 2 3 4 5; do
      local any=0
      while read -r pid; do
        [ -n "$pid" ] || continue
        any=1
        kill -KILL "$pid" 2>/dev/null || true
      done < <(find "$h$CGROUP_ROOT" -name cgroup.procs -exec cat {} + 2>/dev/null)
      ((any)) || break
      sleep 0.3
    done
    find "$h$CGROUP_ROOT" -depth -type d -exec rmdir {} \; 2>/dev/null || true
  done
}

# The pause image: a static program that waits, reaps orphans and exits on SIGTERM, built here
# and kept as an OCI layout in the cache; pushed to the registry at every `up` (its data is
# wiped on `down`). Nothing is pulled from the internet.
PAUSE_IMAGE=""
node_pause_image() {
  local layout="$EDGEVISOR_CACHE/pause-$PAUSE_VERSION"
  if [ ! -f "$layout/.complete" ]; then
    log "building the pause image (once; cached in $layout)"
    local work
    work=$(mktemp -d "$EDGEVISOR_CACHE/.build-pause-XXXXXX")
    cat >"$work/pause.c" <<'C'
/* The pod sandbox's process: holds the namespaces, reaps orphans, exits on SIGTERM/SIGINT. */
#include <signal.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

static void quit(int sig) { (void)sig; _exit(0); }
static void reap(int sig) { (void)sig; while (waitpid(-1, NULL, WNOHANG) > 0) {} }

int main(void) {
  struct sigaction q = {.sa_handler = quit}, r = {.sa_handler = reap, .sa_flags = SA_NOCLDSTOP};
  sigaction(SIGTERM, &q, NULL);
  sigaction(SIGINT, &q, NULL);
  sigaction(SIGCHLD, &r, NULL);
  for (;;) pause();
  return 1;
}
C
    mkdir -p "$work/root"
    gcc -static -Os -s -o "$work/root/pause" "$work/pause.c" || die "compiling the pause program failed (is gcc installed?)"
    local B=(buildah --root "$work/storage" --runroot "$work/run" --storage-driver vfs) c
    c=$("${B[@]}" from scratch) || die "buildah from scratch failed"
    "${B[@]}" copy --chown 0:0 "$c" "$work/root/pause" /pause >/dev/null
    "${B[@]}" config --os linux --arch amd64 --entrypoint '["/pause"]' --user 65535:65535 "$c"
    "${B[@]}" commit -q --rm --format oci "$c" "oci:$work/layout:pause" >/dev/null || die "committing the pause image failed"
    "${B[@]}" rm -a >/dev/null 2>&1 || true
    rm -rf "$layout"
    mv "$work/layout" "$layout"
    touch "$layout/.complete"
    rm -rf "$work"
  fi
  PAUSE_IMAGE="127.0.0.1:$REGISTRY_PORT/$PAUSE_IMAGE_REPO:$PAUSE_VERSION"
  skopeo copy -q --dest-tls-verify=false "oci:$layout:pause" "docker://$PAUSE_IMAGE" >/dev/null \
    || die "pushing the pause image to the local registry failed"
}

# install_file PATH — writes standard input to PATH unless PATH holds exactly that already: a
# running kube-proxy exits when its configuration file changes.
install_file() {
  local tmp="$1.tmp"
  cat >"$tmp"
  if cmp -s "$tmp" "$1"; then rm -f "$tmp"; else mv "$tmp" "$1"; fi
}

node_write_configs() {
  mkdir -p "$NODE_DIR"/{containerd/root,containerd/state,containerd/certs.d,cni/net.d,kubelet,manifests}
  # The local registry, on plain HTTP.
  mkdir -p "$NODE_DIR/containerd/certs.d/127.0.0.1:$REGISTRY_PORT"
  install_file "$NODE_DIR/containerd/certs.d/127.0.0.1:$REGISTRY_PORT/hosts.toml" <<TOML
server = "http://127.0.0.1:$REGISTRY_PORT"
[host."http://127.0.0.1:$REGISTRY_PORT"]
  capabilities = ["pull", "resolve", "push"]
  skip_verify = true
TOML
  install_file "$NODE_DIR/containerd/config.toml" <<TOML
version = 4
root = "$NODE_DIR/containerd/root"
state = "$NODE_DIR/containerd/state"
# Nothing of the host's containerd configuration.
imports = []

[plugins."io.containerd.server.v1.grpc"]
  address = "$NODE_DIR/containerd/containerd.sock"
[plugins."io.containerd.server.v1.ttrpc"]
  address = "$NODE_DIR/containerd/containerd.sock.ttrpc"
[plugins."io.containerd.server.v1.debug"]
  address = ""
[plugins."io.containerd.internal.v1.opt"]
  path = "$NODE_DIR/containerd/opt"
[plugins."io.containerd.nri.v1.nri"]
  disable = true

[plugins."io.containerd.cri.v1.images"]
  snapshotter = "overlayfs"
  [plugins."io.containerd.cri.v1.images".pinned_images]
    sandbox = "$PAUSE_IMAGE"
  [plugins."io.containerd.cri.v1.images".registry]
    config_path = "$NODE_DIR/containerd/certs.d"

[plugins."io.containerd.cri.v1.runtime"]
  # This machine may lack CAP_SYS_RESOURCE: runc cannot lower oom_score_adj without it.
  restrict_oom_score_adj = true
  enable_selinux = false
  netns_mounts_under_state_dir = true
  [plugins."io.containerd.cri.v1.runtime".cni]
    bin_dirs = ["/usr/lib/cni"]
    conf_dir = "$NODE_DIR/cni/net.d"
  [plugins."io.containerd.cri.v1.runtime".containerd]
    default_runtime_name = "runc"
    [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc.options]
        BinaryName = "$(command -v runc)"
        SystemdCgroup = false
        Root = "$NODE_DIR/runc"
TOML
  # No loopback plugin: containerd brings lo up itself.
  install_file "$NODE_DIR/cni/net.d/10-edgevisor.conflist" <<JSON
{
  "cniVersion": "1.0.0",
  "name": "edgevisor-node",
  "plugins": [
    {"type": "bridge", "bridge": "$POD_BRIDGE", "isGateway": true, "ipMasq": true, "hairpinMode": true,
     "ipam": {"type": "host-local", "dataDir": "$NODE_DIR/cni/ipam", "ranges": [[{"subnet": "$POD_CIDR"}]], "routes": [{"dst": "0.0.0.0/0"}]}},
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
JSON
  install_file "$NODE_DIR/kubelet/config.yaml" <<YAML
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: $NODE_IP
healthzBindAddress: 127.0.0.1
cgroupDriver: cgroupfs
cgroupRoot: $CGROUP_ROOT
failCgroupV1: false
failSwapOn: false
containerRuntimeEndpoint: unix://$NODE_DIR/containerd/containerd.sock
staticPodPath: $NODE_DIR/manifests
readOnlyPort: 0
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $PKI/ca.crt}
authorization:
  mode: Webhook
tlsCertFile: $PKI/kubelet-serving.crt
tlsPrivateKeyFile: $PKI/kubelet-serving.key
clusterDomain: cluster.local
clusterDNS: [$CLUSTER_DNS_IP]
resolvConf: /etc/resolv.conf
podCIDR: $POD_CIDR
maxPods: 60
serializeImagePulls: false
# A test machine's disk is often fuller than the defaults allow.
evictionHard: {memory.available: "100Mi", nodefs.available: "1%", imagefs.available: "1%", nodefs.inodesFree: "1%"}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
YAML
  install_file "$NODE_DIR/kube-proxy.yaml" <<YAML
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection:
  kubeconfig: $NODE_DIR/kube-proxy.kubeconfig
mode: iptables
clusterCIDR: $POD_CIDR
hostnameOverride: $NODE_NAME
bindAddress: 127.0.0.1
healthzBindAddress: 127.0.0.1:10256
metricsBindAddress: 127.0.0.1:10249
# Leave the host's conntrack sysctls alone.
conntrack:
  maxPerCore: 0
  tcpEstablishedTimeout: 0s
  tcpCloseWaitTimeout: 0s
YAML
  local n
  for n in kubelet kube-proxy kube-scheduler kube-controller-manager; do node_kubeconfig "$n"; done
}

node_ready() {
  kubectl --kubeconfig "$KUBECONFIG_PATH" get node "$NODE_NAME" \
    -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null | grep -qx True
}

containerd_ready() {
  "$NODE_BIN/ctr" --address "$NODE_DIR/containerd/containerd.sock" version
}

# Paths the node's programs use whatever they are told (containerd's shim sockets, libcni's
# cache, kubelet's plugin sockets, the pod log links). Those that did not exist before the node's
# first start are recorded, and `down` removes exactly those: a host's own containerd or kubelet
# keeps its files.
NODE_FIXED_PATHS=(/run/containerd /var/lib/cni /var/lib/kubelet /var/log/pods /var/log/containers)
node_record_fixed_paths() {
  [ -f "$NODE_DIR/made-paths" ] && return 0
  local p
  for p in "${NODE_FIXED_PATHS[@]}"; do [ -e "$p" ] || echo "$p"; done >"$NODE_DIR/made-paths.tmp"
  mv "$NODE_DIR/made-paths.tmp" "$NODE_DIR/made-paths"
}

# node_up — starts the node's processes (the apiserver must be up) and waits until it is Ready.
node_up() {
  node_pki
  node_address_up
  mkdir -p "$NODE_DIR"
  node_record_fixed_paths
  node_save_sysctls
  node_cgroups_up
  node_pause_image
  node_write_configs
  # The shim is found on containerd's PATH.
  start containerd 0 env PATH="$NODE_BIN:$PATH" "$NODE_BIN/containerd" --config "$NODE_DIR/containerd/config.toml"
  wait_for containerd 60 containerd_ready
  start kube-controller-manager 10257 "$KUBE_NODE_BIN/kube-controller-manager" \
    --kubeconfig "$NODE_DIR/kube-controller-manager.kubeconfig" \
    --authentication-kubeconfig "$NODE_DIR/kube-controller-manager.kubeconfig" \
    --authorization-kubeconfig "$NODE_DIR/kube-controller-manager.kubeconfig" \
    --bind-address 127.0.0.1 --leader-elect=false --use-service-account-credentials \
    --service-account-private-key-file "$PKI/sa.key" --root-ca-file "$PKI/ca.crt" \
    --cluster-signing-cert-file "$PKI/ca.crt" --cluster-signing-key-file "$PKI/ca.key" \
    --service-cluster-ip-range "$SERVICE_CIDR"
  start kube-scheduler 10259 "$KUBE_NODE_BIN/kube-scheduler" \
    --kubeconfig "$NODE_DIR/kube-scheduler.kubeconfig" \
    --authentication-kubeconfig "$NODE_DIR/kube-scheduler.kubeconfig" \
    --authorization-kubeconfig "$NODE_DIR/kube-scheduler.kubeconfig" \
    --bind-address 127.0.0.1 --leader-elect=false
  start kubelet 10250 "$KUBE_NODE_BIN/kubelet" --config "$NODE_DIR/kubelet/config.yaml" \
    --kubeconfig "$NODE_DIR/kubelet.kubeconfig" --root-dir "$NODE_DIR/kubelet/root" \
    --node-ip "$NODE_IP" --hostname-override "$NODE_NAME"
  start kube-proxy 10256 "$KUBE_NODE_BIN/kube-proxy" --config "$NODE_DIR/kube-proxy.yaml"
  wait_for kubelet 120 node_ready
  log "node $NODE_NAME Ready at $NODE_IP (pods $POD_CIDR)"
}

# Removes iptables rules and chains the node made (KUBE-* by kube-proxy and kubelet, CNI-* by
# the bridge and portmap plugins), in every table, IPv4 and IPv6.
node_iptables_down() {
  local ipt table chain rule
  for ipt in iptables ip6tables; do
    command -v "$ipt" >/dev/null || continue
    for table in filter nat mangle raw; do
      "$ipt" -t "$table" -S >/dev/null 2>&1 || continue
      # Rules that jump to our chains, wherever they are.
      while read -r rule; do
        [ -n "$rule" ] || continue
        eval "$ipt -w -t $table -D ${rule#-A }" 2>/dev/null || true
      done < <("$ipt" -w -t "$table" -S | grep -E '^-A ' | grep -E -- '-j (KUBE-|CNI-)' | grep -vE '^-A (KUBE-|CNI-)')
      for chain in $("$ipt" -w -t "$table" -S | sed -n 's/^-N \(\(KUBE\|CNI\)-[^ ]*\)$/\1/p'); do
        "$ipt" -w -t "$table" -F "$chain" 2>/dev/null || true
      done
      for chain in $("$ipt" -w -t "$table" -S | sed -n 's/^-N \(\(KUBE\|CNI\)-[^ ]*\)$/\1/p'); do
        "$ipt" -w -t "$table" -X "$chain" 2>/dev/null || true
      done
    done
  done
}

# node_down — stops the pods and the node's processes and removes what they left on the host.
node_down() {
  local name id
  # Host-wide state (iptables chains, the pod bridge, cgroupRoot) is removed only by the
  # environment that made it: one whose node directory exists.
  [ -d "$NODE_DIR" ] || return 0
  # The pods first, while containerd still runs: their tasks are killed and their sandboxes'
  # network namespaces released.
  if pid_of kubelet >/dev/null; then stop_component kubelet; fi
  if pid_of containerd >/dev/null; then
    local ctr=("$NODE_BIN/ctr" --address "$NODE_DIR/containerd/containerd.sock" -n k8s.io)
    for id in $("${ctr[@]}" tasks ls -q 2>/dev/null); do
      "${ctr[@]}" tasks kill -a -s SIGKILL "$id" >/dev/null 2>&1 || true
    done
    sleep 0.5
    for id in $("${ctr[@]}" tasks ls -q 2>/dev/null); do "${ctr[@]}" tasks delete -f "$id" >/dev/null 2>&1 || true; done
    for id in $("${ctr[@]}" containers ls -q 2>/dev/null); do "${ctr[@]}" containers delete "$id" >/dev/null 2>&1 || true; done
  fi
  for name in kube-proxy kube-scheduler kube-controller-manager containerd; do
    if pid_of "$name" >/dev/null; then stop_component "$name"; fi
  done
  # Shims outlive containerd by design; ours name our socket.
  local pid
  for pid in $(pgrep -f "containerd-shim-runc-v2 .*-address $NODE_DIR/containerd" 2>/dev/null); do
    kill -KILL "$pid" 2>/dev/null || true
  done
  node_cgroups_down
  # Mounts under the node's directory (pod volumes, rootfs overlays, network namespaces),
  # deepest first.
  local m
  while read -r m; do
    umount -l "$m" 2>/dev/null || true
  done < <(awk -v d="$NODE_DIR" 'index($2, d) == 1 {print $2}' /proc/mounts | sort -r)
  ip link del "$POD_BRIDGE" 2>/dev/null || true
  ip addr del "$NODE_IP/32" dev lo 2>/dev/null || true
  node_iptables_down
  node_restore_sysctls
  local made
  if [ -f "$NODE_DIR/made-paths" ]; then
    while read -r made; do
      case $made in /run/containerd | /var/lib/cni | /var/lib/kubelet | /var/log/pods | /var/log/containers) rm -rf "$made" ;; esac
    done <"$NODE_DIR/made-paths"
  fi
  rm -rf "$NODE_DIR"
}

node_status() {
  local name rc=0
  for name in "${NODE_COMPONENTS[@]}"; do
    if pid=$(pid_of "$name"); then
      printf '%-24s running  pid %s\n' "$name" "$pid"
    else
      printf '%-24s stopped\n' "$name"
      rc=3
    fi
  done
  if ((rc == 0)); then
    kubectl --kubeconfig "$KUBECONFIG_PATH" get node "$NODE_NAME" -o wide 2>&1 | sed 's/^/  /'
  fi
  return $rc
}
