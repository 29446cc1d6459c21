# Basalt entry points. Every target that builds runs hack/setup.sh first (fast when done).
CARGO ?= cargo
SHELL := /bin/bash

.PHONY: cluster reload test setup fmt fmt-check lint unit image image-lock bench fuzz-smoke clean

TARGET_DIR ?= $(or $(CARGO_TARGET_DIR),target)
# Development images (a debug machined, rebuilt at every change) are packed fast; the
# image that ships (`make bench` builds it from a release machined) at zstd's level 19.
DEV_IMAGE := IMAGE_ZSTD_LEVEL=3 bash hack/image.sh

## cluster: a local Basalt cluster from this tree (1 control plane and 2 workers on the
## container provider; root): machined and osctl built, the image, `osctl cluster create`.
## CLUSTER_ARGS adds flags (`--workers 3`, `--name lab --cidr 10.6.0.0/24`...).
CLUSTER_ARGS ?=
cluster: setup
	$(CARGO) build --locked -p basalt-machined -p osctl
	$(DEV_IMAGE) build $(TARGET_DIR)/debug/machined
	$(TARGET_DIR)/debug/osctl cluster create --image _out $(CLUSTER_ARGS)
	@echo "osctl is $(abspath $(TARGET_DIR))/debug/osctl: export PATH=\"$(abspath $(TARGET_DIR))/debug:\$$PATH\""

## reload: the inner loop: machined rebuilt (incrementally) and put into _out/rootfs,
## then into the running cluster's nodes one at a time, each keeping its state
## (`osctl cluster reload`; RELOAD_ARGS adds flags, e.g. `--name lab`)
RELOAD_ARGS ?=
reload: setup
	$(CARGO) build --locked -p basalt-machined -p osctl
	bash hack/image.sh init $(TARGET_DIR)/debug/machined
	$(TARGET_DIR)/debug/osctl cluster reload --image _out $(RELOAD_ARGS)

## test: format check, clippy with warnings as errors, the boot image, every test (unit,
## property, integration, QEMU end to end)
test: setup fmt-check lint image unit

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
	$(CARGO) nextest run --workspace --locked --no-tests=fail --test-threads $$(( 3 * $$(nproc) ))

## image: the boot image under _out/ (vmlinuz, initramfs.cpio.zst) around the machined the
## tests build: one compile serves both (a `cargo build --bins` would unify features
## without the dev-dependencies and compile most of the tree a second time)
image: setup
	$(CARGO) nextest run --workspace --locked --no-run
	$(DEV_IMAGE) build $(TARGET_DIR)/debug/machined

## image-lock: pin the newest Debian cloud kernel in image/kernel.lock
image-lock:
	bash hack/image.sh lock

## bench: criterion benchmarks, then the local-cluster figures (hack/bench-cluster.sh)
## and the node's (hack/bench-node.sh: size, boot, API ready, memory), both root; figures
## are recorded in docs/benchmarks.md
bench: setup
	$(CARGO) bench --workspace --locked
	bash hack/bench-cluster.sh
	bash hack/bench-node.sh

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
