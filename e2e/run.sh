#!/usr/bin/env bash
# `make e2e`: create a kind cluster, build and load both images, install the
# chart with Helm, run the e2e suite (the #[ignore]d tests of e2e/) against it,
# and delete the cluster whatever happened. Exits 1 with a clear message when a
# tool is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

CLUSTER="${KIND_CLUSTER:-tandem-e2e}"
HELM="${HELM:-helm}"
KIND="${KIND:-kind}"
KUBECTL="${KUBECTL:-kubectl}"
CARGO="${CARGO:-cargo}"
OPERATOR_IMAGE="${OPERATOR_IMAGE:-tandem-operator:dev}"
POSTGRES_IMAGE="${POSTGRES_IMAGE:-tandem-postgres:dev}"
NAMESPACE="${OPERATOR_NAMESPACE:-tandem-system}"
KEEP="${E2E_KEEP_CLUSTER:-}"

need() {
  command -v "$1" >/dev/null 2>&1 || { echo "e2e: $1 is not installed ($2)" >&2; exit 1; }
}
need "$KIND" "https://kind.sigs.k8s.io/docs/user/quick-start/#installation"
need docker "https://docs.docker.com/engine/install/"
need "$KUBECTL" "https://kubernetes.io/docs/tasks/tools/"
need "$HELM" "run make helm, or https://helm.sh/docs/intro/install/"
docker info >/dev/null 2>&1 || { echo "e2e: docker is installed but no Docker engine answers" >&2; exit 1; }

ARCHIVE="$(mktemp -d)/tandem-images.tar"
cleanup() {
  rm -rf "$(dirname "$ARCHIVE")"
  if [ -n "$KEEP" ]; then
    echo "e2e: keeping kind cluster $CLUSTER (E2E_KEEP_CLUSTER set)"
  else
    "$KIND" delete cluster --name "$CLUSTER" >/dev/null 2>&1 || true
  fi
}
trap cleanup EXIT

echo "e2e: building images"
docker build -t "$OPERATOR_IMAGE" -f Dockerfile .
docker build -t "$POSTGRES_IMAGE" -f Dockerfile.postgres .

echo "e2e: creating kind cluster $CLUSTER"
"$KIND" delete cluster --name "$CLUSTER" >/dev/null 2>&1 || true
"$KIND" create cluster --name "$CLUSTER" --wait 180s
export KUBECONFIG
KUBECONFIG="$(mktemp)"
"$KIND" get kubeconfig --name "$CLUSTER" > "$KUBECONFIG"

echo "e2e: loading images"
# Through an archive: `kind load docker-image` fails on Docker engines with the
# containerd image store ("content digest ... not found"), the default since
# Docker 29, when BuildKit added attestation manifests to the images.
docker save "$OPERATOR_IMAGE" "$POSTGRES_IMAGE" -o "$ARCHIVE"
"$KIND" load image-archive --name "$CLUSTER" "$ARCHIVE"

echo "e2e: installing the chart"
"$HELM" install tandem charts/tandem-operator \
  --namespace "$NAMESPACE" --create-namespace \
  --set image.repository="${OPERATOR_IMAGE%:*}" \
  --set image.tag="${OPERATOR_IMAGE##*:}" \
  --set image.pullPolicy=Never \
  --set postgresImage="$POSTGRES_IMAGE" \
  --set logFormat=text \
  --wait --timeout 180s

echo "e2e: running the suite"
E2E_OPERATOR_NAMESPACE="$NAMESPACE" E2E_POSTGRES_IMAGE="$POSTGRES_IMAGE" \
  "$CARGO" test --locked -p tandem-e2e --tests -- --ignored --test-threads=1 --nocapture \
  --skip testcluster_   # node faults need the test cluster (make test); kind has no fault injection here
