# Two commands do all set-up on a fresh machine:  `make demo`  and  `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: install demo test test-unit lint bench clean

install: $(VENV)/.installed

# torch first and pinned: anything that pulls plain `torch` later must find it satisfied (no CUDA build).
# llama-cpp-python is built by scripts/build-llama-cpp.sh (AMX off; cached per machine, ~10 min the first time).
$(VENV)/.installed: pyproject.toml scripts/build-llama-cpp.sh src/nomoat/exporting/converter.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q "$$(PYTHON=$(PY) scripts/build-llama-cpp.sh)"
	$(PY) -m pip install -q -e ".[dev]"
	$(PY) -m nomoat.exporting.converter   # llama.cpp's convert_hf_to_gguf.py of the same llama.cpp version
	touch $@

demo: install
	$(VENV)/bin/nomoat models
	@echo '$$ nomoat chat --once "What is the capital of France?" --no-kb'
	$(VENV)/bin/nomoat chat --once "What is the capital of France?" --no-kb
	$(VENV)/bin/nomoat ingest docs --kb nomoat-docs
	@echo '$$ nomoat ask "Which llama.cpp build does nomoat use, and why?" --kb nomoat-docs'
	$(VENV)/bin/nomoat ask "Which llama.cpp build does nomoat use, and why?" --kb nomoat-docs

test: install
	$(PY) -m pytest -q

test-unit: install
	$(PY) -m pytest -q -m "not integration"

lint: install
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/ruff format --check src tests bench

bench: install
	$(PY) bench/generate.py

clean:
	rm -rf $(VENV) build *.egg-info
