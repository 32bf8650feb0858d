#!/usr/bin/env bash
# `make bench` on Kubernetes: start the test cluster of DESIGN.md §8 with the
# release build of tandem in its pods, install the chart with helm as a user
# does, run e2e/benches/kube_bench (arguments passed on), and stop the
# cluster whatever happened. Needs root, as the test cluster does.
set -euo pipefail
cd "$(dirname "$0")/.."

KUBE_DIR="${KUBE_DIR:-$PWD/.cache/kube-cluster}"
KUBE_BIN="${KUBE_BIN:?KUBE_BIN (the test cluster binaries) is not set}"
HELM="${HELM:-helm}"
CARGO="${CARGO:-cargo}"
NAMESPACE="${OPERATOR_NAMESPACE:-tandem-system}"
export KUBE_DIR KUBECONFIG="$KUBE_DIR/kubeconfig"
export KUBECTL="$KUBE_BIN/kubectl"

down() {
  # BENCH_KUBE_LOGS=FILE keeps the operator replicas' logs (where a figure's time went).
  if [ -n "${BENCH_KUBE_LOGS:-}" ] && [ -f "$KUBECONFIG" ]; then
    "$KUBECTL" -n "$NAMESPACE" logs -l app.kubernetes.io/name=tandem-operator --prefix --tail=-1 \
      > "$BENCH_KUBE_LOGS" 2>&1 || true
  fi
  target/debug/tandem-testcluster down --dir "$KUBE_DIR" >/dev/null 2>&1 || true
}
"$CARGO" build --locked --release -p tandem --bin tandem
"$CARGO" build --locked -p tandem-testcluster --bin tandem-testcluster
"$CARGO" bench --locked -p tandem-e2e --bench kube_bench --no-run
down
trap down EXIT
target/debug/tandem-testcluster up --dir "$KUBE_DIR" --kube-bin "$KUBE_BIN" --tandem-bin "$PWD/target/release/tandem"

echo "bench: helm install of charts/tandem-operator"
"$HELM" install tandem-operator charts/tandem-operator \
  --namespace "$NAMESPACE" --create-namespace \
  --set image.repository=tandem-operator --set image.tag=dev \
  --set postgresImage=tandem-postgres:dev \
  --wait --timeout 300s

E2E_PLATFORM=testcluster E2E_OPERATOR_NAMESPACE="$NAMESPACE" E2E_POSTGRES_IMAGE=tandem-postgres:dev \
  "$CARGO" bench --locked -p tandem-e2e --bench kube_bench -- "$@"
