#!/usr/bin/env bash
# The 3-node benchmark of docs/BENCHMARKS.md: three release nodes on 127.0.0.1 (data in a
# temp dir), leaders balanced, then chatbench over all three; then a failover: SIGKILL the
# node leading the most groups, time until every group has a leader again and a write on
# the killed node's shards succeeds, restart it and time its catch-up.
# Usage: scripts/bench-cluster.sh [chatbench args…]   (default: 1000 senders, closed loop)
set -euo pipefail
T=${CARGO_TARGET_DIR:-target}/release
[ -x "$T/chatnode" ] && [ -x "$T/chatbench" ] || { echo "build first: cargo build --release (looked in $T)" >&2; exit 2; }
DIR=$(mktemp -d /tmp/chatnode-bench.XXXX)
pids=()
cleanup() { for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$DIR"; }
trap cleanup EXIT INT TERM
cfg=$DIR/bench.toml
sed '/^data_dir/d;/^listen/d' config/bench.toml > "$cfg"
start() { # node-number [extra args]
    local n=$1; shift
    "$T/chatnode" --config "$cfg" --data-dir "$DIR/n$n" --listen "127.0.0.1:$((7060 + n * 10))" \
        --peer-listen "127.0.0.1:$((7061 + n * 10))" "$@" >"$DIR/n$n.log" 2>&1 &
    pids[$n]=$!
}
leaders() { "$T/chatnode" status --addr 127.0.0.1:7070 --data-dir "$DIR/n1" --json | python3 -c '
import json,sys
d=json.load(sys.stdin); c={}
for s in d["node_statuses"]:
  for g in s.get("groups",[]):
    if g["state"]=="leader": c[s["node_id"]]=c.get(s["node_id"],0)+1
print(" ".join(f"{k}:{v}" for k,v in sorted(c.items())), sum(c.values()))'; }
start 1
for _ in $(seq 600); do [ -s "$DIR/n1/join-token" ] && break; sleep 0.1; done
[ -s "$DIR/n1/join-token" ] || { echo "node 1 did not start:" >&2; tail "$DIR/n1.log" >&2; exit 2; }
start 2 --join 127.0.0.1:7071 --token "$(cat "$DIR/n1/join-token")"
start 3 --join 127.0.0.1:7071 --token "$(cat "$DIR/n1/join-token")"
echo "waiting for 3 voters per group and balanced leaders…"
for _ in $(seq 120); do sleep 1; l=$(leaders || true); echo "  leaders per node: $l"; case "$l" in *" 17") [[ "$l" =~ ^1:[56]\ 2:[56]\ 3:[56] ]] && break;; esac; done
"$T/chatbench" --url ws://127.0.0.1:7070 --url ws://127.0.0.1:7080 --url ws://127.0.0.1:7090 \
    --pid "${pids[1]}" --pid "${pids[2]}" --pid "${pids[3]}" "${@:---senders 1000 --conversations 1000 --rate 0 --inflight 8 --duration 20s --warmup 5s}"
for n in 1 2 3; do
    echo "node $n synced writes: $(curl -s 127.0.0.1:$((7060 + n * 10))/metrics | grep '^chatnode_synced_writes_total' || true)"
done
