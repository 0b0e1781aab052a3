#!/usr/bin/env bash
# Shows that the jepsen checker works (part of `make test`): builds chatnode with the
# `fault-injection` feature, runs `chatnode-jepsen prove` (one 30 s run per broken switch,
# each must be caught with its anomaly class; then the real build through the same runs,
# which must show no anomaly). Needs root; skipped with a message otherwise.
set -euo pipefail
source "$(dirname "$0")/jepsen-common.sh" "jepsen prove"
# The broken build, kept under its own name; then the real one back in place (cargo keeps
# both compiled, so switching back only relinks).
$CARGO build --bin chatnode -p chatnode --features fault-injection
cp "$T/debug/chatnode" "$T/debug/chatnode-broken"
$CARGO build --bin chatnode -p chatnode
$CARGO build -p chatnode-jepsen
exec "$T/debug/chatnode-jepsen" prove --broken-bin "$T/debug/chatnode-broken" \
    --bin "$T/debug/chatnode" --out "${JEPSEN_OUT:-jepsen/out}/prove" "$@"
