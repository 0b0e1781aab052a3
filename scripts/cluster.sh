#!/usr/bin/env bash
# Starts a 3-node chatnode cluster on 127.0.0.1 (client ports 7070, 7080, 7090; peer ports
# 7071, 7081, 7091) with data under ./data/node{1,2,3}, and stops all three on Ctrl-C.
# Node 1 creates the cluster on first start; nodes 2 and 3 join it with its token. Later
# starts reuse the data dirs (no join needed).
set -euo pipefail
BIN=${BIN:-${CARGO_TARGET_DIR:-target}/release/chatnode}
TOKEN_WAIT_S=60
pids=()
stop() {
    trap - INT TERM EXIT
    echo "stopping the cluster…"
    for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    wait || true
}
trap stop INT TERM EXIT
mkdir -p data
"$BIN" --config config/cluster/node1.toml &
pids+=($!)
for _ in $(seq $((TOKEN_WAIT_S * 10))); do
    [ -s data/node1/join-token ] && break
    sleep 0.1
done
[ -s data/node1/join-token ] || { echo "node 1 wrote no join token" >&2; exit 1; }
TOKEN=$(cat data/node1/join-token)
for n in 2 3; do
    "$BIN" --config "config/cluster/node$n.toml" --token "$TOKEN" &
    pids+=($!)
done
echo "cluster up: ws://127.0.0.1:7070/v1/ws, ws://127.0.0.1:7080/v1/ws, ws://127.0.0.1:7090/v1/ws"
echo "status: $BIN status --addr 127.0.0.1:7070 --data-dir data/node1    (Ctrl-C stops all three)"
echo "  (admin commands read the cluster's admin token from data/node1/admin-token)"
wait
