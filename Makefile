# Every target creates .venv and installs into it first, so each works on a fresh clone.
# TORCH_SPEC picks the PyTorch build: the default is the CPU wheel this project is
# tested with; a GPU user sets e.g. TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128".
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin
STAMP := $(VENV)/.t7synth-installed

.PHONY: install demo test test-slow test-all test-fast test-ddp bench bench-gpu benchmark clean

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# torch first: a plain dependency resolution could pull a multi-GB CUDA build.
	$(BIN)/python -m pip install --quiet $(TORCH_SPEC)
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

## Train the paper's U-Net on the embedded demo dataset (CPU) and print test scores.
demo: $(STAMP)
	$(BIN)/python -m t7synth.fit --config experiments/demo_unet.yaml

## The test suite without its slow tier (GPU tests skip themselves without a GPU): every
## behaviour has a test here; the slow tier adds the long end-to-end runs (DDP, kill and resume).
test: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

## The slow tier alone: long end-to-end runs (real 2-process DDP, kill-and-resume, sweeps).
test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow

## Both tiers, what CI runs.
test-all: test test-slow

test-fast: test

test-ddp: $(STAMP)
	$(BIN)/python -m pytest -q -m ddp

## Side-by-side performance comparisons (docs/performance.md); the last line holds the ratios.
bench: $(STAMP)
	$(BIN)/python benchmarks/bench.py

## The paper U-Net on the visible GPUs (bf16): samples/s, MFU, peak memory, DDP scaling.
bench-gpu: $(STAMP)
	$(BIN)/python benchmarks/gpu.py

benchmark: bench

clean:
	rm -rf $(VENV) runs .pytest_cache
