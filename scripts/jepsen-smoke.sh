#!/usr/bin/env bash
# The short jepsen run of `make test`: 90 s, 3 nodes in network namespaces, partitions,
# SIGKILLs and pauses, then the checker (exit 0 = no anomaly). Needs root (namespaces,
# nftables); skipped with a message otherwise. `make jepsen` is the full run.
set -euo pipefail
source "$(dirname "$0")/jepsen-common.sh" "jepsen smoke"
# The debug chatnode of the test build (no second, release build of RocksDB).
$CARGO build --bin chatnode -p chatnode
$CARGO build -p chatnode-jepsen
exec "$T/debug/chatnode-jepsen" run --time 90 --nodes 3 --rate 100 \
    --nemesis partition-halves,kill,pause --bin "$T/debug/chatnode" --out "${JEPSEN_OUT:-jepsen/out}" "$@"
