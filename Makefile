# chatnode — the two commands that matter on a fresh machine:
#   make run    set up, build (release) and run a single node on 127.0.0.1:7070, data in ./data
#   make cluster  the same, three nodes on 127.0.0.1:7070/7080/7090, data in ./data/node*
#   make test   set up and run every test (fmt, clippy with warnings as errors, the
#               fault-injection build; unit, property, end-to-end, crash, cluster, a 90 s
#               jepsen smoke run and the checker proof, `chatnode-jepsen prove`, when root)

DATA_DIR ?= ./data
LISTEN ?= 127.0.0.1:7070
CARGO ?= cargo

.PHONY: setup build run cluster test jepsen bench fmt clippy clean

setup:
	@bash scripts/setup.sh

build: setup
	$(CARGO) build --release --bin chatnode --bin chatbench

run: build
	$(CARGO) run --release --bin chatnode -- --data-dir $(DATA_DIR) --listen $(LISTEN)

# Three nodes on 127.0.0.1 (client ports 7070, 7080, 7090), data under ./data/node{1,2,3};
# Ctrl-C stops all three.
cluster: build
	BIN=$$($(CARGO) metadata --format-version 1 --no-deps | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')/release/chatnode bash scripts/cluster.sh

test: setup
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	$(CARGO) build -p chatnode --bin chatnode --features fault-injection
	$(CARGO) test --workspace --no-fail-fast
	$(CARGO) test --manifest-path lossyfs/Cargo.toml --no-fail-fast
	bash scripts/jepsen-smoke.sh
	bash scripts/jepsen-prove.sh

# A full jepsen run (root): 5 nodes, all faults, 300 s. JEPSEN_ARGS="--time 120 --seed 7 --nemesis kill,pause"
jepsen: build
	$(CARGO) build --release -p chatnode-jepsen
	$$($(CARGO) metadata --format-version 1 --no-deps | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')/release/chatnode-jepsen run $(JEPSEN_ARGS)

# The load generator against a running node (see docs/BENCHMARKS.md).
bench: build
	$(CARGO) run --release --bin chatbench -- --url ws://$(LISTEN)

fmt:
	$(CARGO) fmt --all

clippy: setup
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	$(CARGO) clippy -p chatnode --all-targets --features fault-injection -- -D warnings

clean:
	$(CARGO) clean
