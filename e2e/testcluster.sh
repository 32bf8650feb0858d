#!/usr/bin/env bash
# The e2e suite on the test cluster of DESIGN.md §8 (part of `make test`):
# start the real control plane and three node stand-ins (`make kube-up`),
# install the chart with helm as a user does, run the #[ignore]d tests of
# e2e/ against it, and stop the cluster whatever happened (`make kube-down`).
# Needs root (network namespaces, cgroups, iptables); the Makefile builds
# what it needs first.
set -euo pipefail
cd "$(dirname "$0")/.."

KUBE_DIR="${KUBE_DIR:-$PWD/.cache/kube-cluster}"
KUBE_BIN="${KUBE_BIN:?KUBE_BIN (the test cluster binaries) is not set}"
HELM="${HELM:-helm}"
CARGO="${CARGO:-cargo}"
NAMESPACE="${OPERATOR_NAMESPACE:-tandem-system}"
THREADS="${E2E_THREADS:-2}"
export KUBE_DIR KUBECONFIG="$KUBE_DIR/kubeconfig"
export KUBECTL="$KUBE_BIN/kubectl"

down() {
  make --no-print-directory kube-down KUBE_DIR="$KUBE_DIR" >/dev/null 2>&1 || true
}
operator_dump() {
  echo "----- operator pods and logs" >&2
  "$KUBECTL" get pods -A -o wide >&2 || true
  "$KUBECTL" -n "$NAMESPACE" describe pods >&2 || true
  "$KUBECTL" -n "$NAMESPACE" logs -l app.kubernetes.io/name=tandem-operator --prefix --tail=100 >&2 || true
}
down
trap down EXIT

make --no-print-directory kube-up KUBE_DIR="$KUBE_DIR"

echo "e2e: helm install of charts/tandem-operator"
if ! "$HELM" install tandem-operator charts/tandem-operator \
  --namespace "$NAMESPACE" --create-namespace \
  --set image.repository=tandem-operator --set image.tag=dev \
  --set postgresImage=tandem-postgres:dev \
  --set logFormat=text \
  --wait --timeout 300s; then
  operator_dump
  exit 1
fi

# E2E_TESTS="drain promote" runs only those test binaries of e2e/tests,
# E2E_FILTER only the tests whose names contain it (while developing).
TARGETS=(--tests)
if [ -n "${E2E_TESTS:-}" ]; then
  TARGETS=()
  for t in $E2E_TESTS; do TARGETS+=(--test "$t"); done
fi
FILTER=()
if [ -n "${E2E_FILTER:-}" ]; then FILTER=("$E2E_FILTER"); fi
echo "e2e: the suite on the test cluster ($THREADS at a time)"
E2E_PLATFORM=testcluster E2E_OPERATOR_NAMESPACE="$NAMESPACE" E2E_POSTGRES_IMAGE=tandem-postgres:dev \
  "$CARGO" test --locked --no-fail-fast -p tandem-e2e "${TARGETS[@]}" -- --ignored --test-threads="$THREADS" "${FILTER[@]}"
