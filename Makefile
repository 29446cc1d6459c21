# Basalt entry points. Every target that builds runs hack/setup.sh first (fast when done).
CARGO ?= cargo
SHELL := /bin/bash

.PHONY: test setup fmt fmt-check lint unit bench fuzz-smoke clean

## test: format check, clippy with warnings as errors, every test (unit, property, integration)
test: setup fmt-check lint unit

setup:
	@bash hack/setup.sh

fmt:
	$(CARGO) fmt --all

fmt-check:
	$(CARGO) fmt --all -- --check

lint: setup
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings

unit: setup
	$(CARGO) test --workspace --locked --doc --quiet
	$(CARGO) nextest run --workspace --locked --no-tests=fail

## bench: criterion benchmarks; figures are recorded in docs/benchmarks.md
bench: setup
	$(CARGO) bench --workspace --locked

## fuzz-smoke: every fuzz target for FUZZ_SECONDS (default 60) each
FUZZ_SECONDS ?= 60
fuzz-smoke:
	@BASALT_SETUP_FUZZ=1 bash hack/setup.sh
	cd fuzz && for t in $$(RUSTC_BOOTSTRAP=1 cargo fuzz list); do \
	  mkdir -p corpus/$$t seeds/$$t; \
	  RUSTC_BOOTSTRAP=1 cargo fuzz run $$t corpus/$$t seeds/$$t -- -max_total_time=$(FUZZ_SECONDS) || exit 1; \
	done

clean:
	$(CARGO) clean
