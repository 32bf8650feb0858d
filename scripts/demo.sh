#!/usr/bin/env bash
# make demo: run a 3-instance tandem local cluster in a temporary directory
# until Ctrl-C, then stop it and remove the directory.
# Usage: scripts/demo.sh TANDEM_BINARY [MANIFEST]
set -euo pipefail

bin=$(realpath "$1")
manifest=$(realpath "${2:-examples/local/cluster.yaml}")
tmp=$(mktemp -d /tmp/tandem-demo.XXXXXX)
# postgres (the postgres user when we run as root) must reach its data directories.
chmod 755 "$tmp"
dir="$tmp/cluster"
up_pid=

cleanup() {
  trap - INT TERM EXIT
  if [ -n "$up_pid" ] && kill -0 "$up_pid" 2>/dev/null; then
    "$bin" local down --dir "$dir" >/dev/null 2>&1 || true
    for _ in $(seq 1 300); do kill -0 "$up_pid" 2>/dev/null || break; sleep 0.1; done
    kill "$up_pid" 2>/dev/null || true
  fi
  wait 2>/dev/null || true
  rm -rf "$tmp"
  echo "demo stopped; removed $tmp"
}
trap cleanup INT TERM EXIT

echo "tandem demo: 3 instances in $dir (the tandem binary is $bin)"
echo "logs: $tmp/up.log"
TANDEM_LOG=${TANDEM_LOG:-info} "$bin" local up -f "$manifest" --dir "$dir" 2>"$tmp/up.log" &
up_pid=$!

# `local up` prints the status table and the rw / ro connection strings once
# the cluster is healthy; fail loudly if it dies first.
for _ in $(seq 1 1200); do
  if ! kill -0 "$up_pid" 2>/dev/null; then
    echo "tandem local up exited; its log:" >&2
    tail -n 40 "$tmp/up.log" >&2
    exit 1
  fi
  if "$bin" local status --dir "$dir" --json 2>/dev/null | grep -Eq '"phase": ?"Healthy"'; then
    break
  fi
  sleep 0.25
done
cat <<HINT
Try, in another terminal:
  alias tandem=$bin
  tandem local status --dir $dir
  tandem local switchover --dir $dir --to any
  tandem local kill --dir $dir demo-0 --agent     # node loss of demo-0
  tandem local status --dir $dir
Ctrl-C stops the cluster and removes $tmp.
HINT
wait "$up_pid" || true
