# The two commands a user runs: `make demo` and `make test`. Everything they need is installed
# or built by e2e/lib/tools.sh (cached under ~/.cache/edgevisor, keyed by version).
SHELL := bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help
CARGO ?= cargo

.PHONY: help demo test test-steps env-up env-down env-status fmt-check clippy unit-test e2e-test crds image
.PHONY: deb checksums lint-workflows

help: ## Show the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

demo: ## Bring up the local environment, install the chart, roll a Fleet out to five real devices
	e2e/demo

test: ## Everything: fmt, clippy, unit, chart and integration tests
	@mkdir -p target
	@$(MAKE) --no-print-directory test-steps 2>&1 | tee target/test.log
	@awk '/^test result:/ {p += $$4; f += $$6; s += $$8} END {printf "tests: %d passed, %d failed, %d skipped\n", p, f, s}' target/test.log

test-steps: env-up fmt-check clippy lint-workflows unit-test e2e-test

env-up: ## Start etcd, kube-apiserver, the registry and a node (builds them once)
	e2e/env up

env-down: ## Stop the local environment
	e2e/env down

env-status: ## What runs where
	e2e/env status

fmt-check:
	$(CARGO) fmt --all --check

clippy:
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings

unit-test: ## Unit tests (no cluster needed)
	$(CARGO) test --workspace --locked --no-fail-fast --exclude edgevisor-e2e

# The image and the device packages first: the chart tests install the image on the node, the
# device package tests install the .deb (a test could build either, but inside a test a cold
# build's output is hidden and its time counts against a timeout).
e2e-test: env-up image deb ## Integration tests against the real apiserver, registry, node and runc
	$(CARGO) test -p edgevisor-e2e --locked --no-fail-fast -- --test-threads=4

image: ## Build the controller/gateway image and push it (REGISTRY=host[:port], default: the local registry; TAG, ARCH)
	controller/image/build

crds: ## Regenerate the CRD YAML from the Rust types
	$(CARGO) run -q -p edgevisor-crds --bin crdgen

# The device packages, by device-runtime/packaging/build.sh (see its --help): ARCH (amd64, arm64,
# armhf, riscv64; default this machine's) cross-compiles; DIST_DIR is where they go.
DIST_DIR ?= target/dist
deb: ## Build the device packages: .deb, tarball and SHA256SUMS in target/dist (ARCH=arm64|armhf|riscv64 to cross-compile)
	CARGO="$(CARGO)" device-runtime/packaging/build.sh --out "$(DIST_DIR)" $(if $(ARCH),--arch $(ARCH))

checksums: ## Write DIST_DIR/SHA256SUMS over the packages there (gathered from several builds)
	device-runtime/packaging/build.sh --checksums-only --out "$(DIST_DIR)"

lint-workflows: ## Lint .github/workflows with actionlint (built once from its Go module)
	source e2e/lib/tools.sh && dir=$$(go_build_cached actionlint "$$ACTIONLINT_VERSION" _setup_actionlint) \
		&& "$$dir/actionlint" .github/workflows/*.yml
