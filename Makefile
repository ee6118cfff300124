# `make test` works from a fresh clone: it creates the virtual environment (pinned CPU
# torch, this package with its extras) and installs the upstream oracle when missing.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH ?= torch==2.13.0
EXTRAS ?= onnx,dev,quantized,ray,hf
PYTEST_ARGS ?=
NPM ?= npm
comma := ,
STAMP := $(VENV)/.installed-$(subst /,_,$(subst $(comma),_,$(EXTRAS)))

.PHONY: setup test test-fast lint format bench parity oracle web web-deps web-test

setup: $(STAMP)

# Pinned: an unpinned torch pulls a multi-GB CUDA build.
$(STAMP): setup.py pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e '.[$(EXTRAS)]'
	touch $@

# Upstream demucs 4.0.1 and 4.1.0 (the test oracles), outside our import path.
oracle: .oracle/site/demucs/htdemucs.py .oracle/site410/demucs/htdemucs.py

.oracle/site/demucs/htdemucs.py: | $(STAMP)
	$(PY) -m pip install -q --no-deps --target .oracle/site demucs==4.0.1 openunmix==1.3.0

.oracle/site410/demucs/htdemucs.py: | $(STAMP)
	$(PY) -m pip install -q --no-deps --target .oracle/site410 demucs==4.1.0

# The whole offline suite: parity tests against upstream, the Ray engine and the browser
# page included (the npm packages are installed when npm is there; the slowest 15 shown).
test: setup oracle $(if $(shell command -v $(NPM) 2>/dev/null),web-deps)
	DEMUCS_REQUIRE_ORACLE=1 $(PY) -m pytest -q --durations=15 $(PYTEST_ARGS) tests

test-fast: setup
	$(PY) -m pytest -q -x -m "not slow" $(PYTEST_ARGS) tests

lint: setup
	$(PY) -m ruff check demucs tests bench examples
	$(PY) -m ruff format --check demucs tests bench examples
	$(PY) -m mypy demucs

format: setup
	$(PY) -m ruff format demucs tests bench examples
	$(PY) -m ruff check --fix demucs tests bench examples

bench: setup
	$(PY) bench/bench_onnx.py
	$(PY) bench/bench_speed.py
	$(PY) bench/profile_forward.py

# Max abs difference vs upstream 4.0.1 and conv-vs-torch STFT SNR.
parity: setup oracle
	$(PY) bench/parity.py

# The browser page (web/): npm packages from package-lock.json (onnxruntime-web, and
# puppeteer-core for the tests), installed when missing or outdated.
ONNX ?= model.onnx

node_modules/.package-lock.json: package.json package-lock.json
	$(NPM) ci --no-audit --no-fund

web-deps: node_modules/.package-lock.json

# Serves the page with the graph ONNX (http://127.0.0.1:8000/).
web: setup web-deps
	$(PY) -m demucs.web --onnx $(ONNX)

# JS core unit tests (node --test) and the page end to end in headless Chromium (also
# part of `make test`).
web-test: setup web-deps
	$(PY) -m pytest -q $(PYTEST_ARGS) tests/test_web.py
