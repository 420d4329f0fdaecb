#!/usr/bin/env bash
# Runs each fuzz target for a bounded time and prints executions and findings.
#   device-runtime/fuzz/run.sh [SECONDS_PER_TARGET]   (default 60)
# Needs a nightly toolchain and cargo-fuzz (`cargo install cargo-fuzz`).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
secs="${1:-60}"
command -v cargo-fuzz >/dev/null || { echo "fuzz: cargo-fuzz is not installed (cargo install cargo-fuzz)" >&2; exit 1; }
rustup toolchain list | grep -q nightly || { echo "fuzz: a nightly toolchain is required" >&2; exit 1; }

# Seeds: a valid state, and small layers in each compression.
mkdir -p seeds/state_parser seeds/layer_unpack
d="sha256:$(printf 'a%.0s' $(seq 64))"
printf '{"#spec":"edgevisor-state@1","goalTimeoutSeconds":5,"containers":[{"name":"web","image":{"config":{"digest":"%s","size":1},"layers":[{"digest":"%s","size":2}]},"command":["/bin/sh"],"env":{"A":"1"},"health":{"type":"tcp","port":80},"mounts":[{"source":"/a","destination":"/b","readOnly":true}],"volumes":[{"name":"data","destination":"/data"}],"limits":{"memoryBytes":16777216}}],"files":[{"path":"etc/x","digest":"%s","size":3,"mode":420}]}' "$d" "$d" "$d" > seeds/state_parser/valid.json
tmp="$(mktemp -d)"
mkdir -p "$tmp/l/etc/sub" && echo hi > "$tmp/l/etc/hello" && ln -s hello "$tmp/l/etc/link" && touch "$tmp/l/etc/.wh.gone" "$tmp/l/etc/sub/.wh..wh..opq"
tar -C "$tmp/l" -cf seeds/layer_unpack/plain.tar etc
gzip -c seeds/layer_unpack/plain.tar > seeds/layer_unpack/layer.tar.gz
command -v zstd >/dev/null && zstd -q -f seeds/layer_unpack/plain.tar -o seeds/layer_unpack/layer.tar.zst || true
rm -rf "$tmp"

status=0
for target in state_parser layer_unpack; do
  mkdir -p "corpus/$target"
  log="$(mktemp)"
  if cargo +nightly fuzz run "$target" "corpus/$target" "seeds/$target" -- \
      -max_total_time="$secs" -rss_limit_mb=2048 -print_final_stats=1 >"$log" 2>&1; then
    result="no findings"
  else
    result="FINDING (see fuzz/artifacts/$target)"; status=1
  fi
  runs=$(grep -E '^stat::number_of_executed_units' "$log" | awk '{print $2}' | tail -1 || true)
  echo "fuzz: $target ${secs}s executions=${runs:-?} $result"
  [ "$result" = "no findings" ] || tail -30 "$log"
  rm -f "$log"
done
exit "$status"
