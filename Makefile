# chatnode — the two commands that matter on a fresh machine:
#   make run    set up, build (release) and run a single node on 127.0.0.1:7070, data in ./data
#   make test   set up and run every test (unit, property, end-to-end, crash)

DATA_DIR ?= ./data
LISTEN ?= 127.0.0.1:7070
CARGO ?= cargo

.PHONY: setup build run test bench fmt clippy clean

setup:
	@bash scripts/setup.sh

build: setup
	$(CARGO) build --release --bin chatnode --bin chatbench

run: build
	$(CARGO) run --release --bin chatnode -- --data-dir $(DATA_DIR) --listen $(LISTEN)

test: setup
	$(CARGO) test --workspace --no-fail-fast

# The load generator against a running node (see docs/BENCHMARKS.md).
bench: build
	$(CARGO) run --release --bin chatbench -- --url ws://$(LISTEN)

fmt:
	$(CARGO) fmt --all

clippy: setup
	$(CARGO) clippy --workspace --all-targets

clean:
	$(CARGO) clean
