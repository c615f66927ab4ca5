# One entry point for users and CI: `make demo` and `make test` set everything up themselves.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# llama.cpp's native build uses AMX instructions that crash on some x86 CPUs; pin the ISA.
CMAKE_ARGS ?= -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON
export CMAKE_ARGS

.PHONY: demo test lint typecheck unit browser bench clean print-cmake-args

$(PY):
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Orchestra needs Python >= 3.11; set PYTHON=python3.11 (or newer)")'
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

# Stamps record what was installed; they are redone when pyproject.toml changes.
$(VENV)/.local-installed: pyproject.toml | $(PY)
	$(PY) -m pip install --quiet -e ".[local]"
	@touch $@

$(VENV)/.dev-installed: pyproject.toml | $(PY)
	$(PY) -m pip install --quiet -e ".[local,dev,gemini,huggingface,search,otel,mcp,postgres,ray]"
	@touch $@ $(VENV)/.local-installed

demo: $(VENV)/.local-installed
	$(PY) demos/quickstart.py
	$(PY) demos/todo_app.py

lint: $(VENV)/.dev-installed
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

typecheck: $(VENV)/.dev-installed
	$(PY) -m mypy

unit: $(VENV)/.dev-installed browser
	$(PY) -m pytest

# The run report's test opens its page in headless Chromium: as root on Debian (CI), install
# it; elsewhere say what to install, and that test is skipped.
browser:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; \
	  else \
	    echo "no chromium: the report's browser test will be skipped (apt-get install chromium)"; \
	  fi; }

test: lint typecheck unit

# litellm pins openai 2.x, so it is measured from a side environment of its own.
.venv-litellm/bin/python:
	$(PYTHON) -m venv .venv-litellm
	.venv-litellm/bin/python -m pip install --quiet litellm

bench: $(VENV)/.dev-installed .venv-litellm/bin/python
	$(PY) bench/import_time.py
	$(PY) bench/local_model.py
	$(PY) bench/grammar.py
	$(PY) bench/executor.py
	$(PY) bench/provider_path.py
	$(PY) bench/todo_demo.py
	$(PY) bench/faults.py
	$(PY) bench/tool_loop.py

clean:
	rm -rf $(VENV) .venv-litellm .mypy_cache .ruff_cache .pytest_cache *.egg-info

print-cmake-args:
	@echo $(CMAKE_ARGS)
