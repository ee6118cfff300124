PYTHON ?= python
PYTEST_ARGS ?=

.PHONY: test test-fast lint bench parity oracle web web-deps web-test

# The whole offline suite, parity tests against upstream 4.0.1 included.
test:
	$(PYTHON) -m pytest -q $(PYTEST_ARGS) tests

test-fast:
	$(PYTHON) -m pytest -q -x -m "not slow" $(PYTEST_ARGS) tests

lint:
	$(PYTHON) -m flake8 demucs tests bench examples

# Installs upstream demucs 4.0.1 (the test oracle) into .oracle/site, outside our package.
oracle:
	$(PYTHON) -m pip install -q --no-deps --target .oracle/site demucs==4.0.1 openunmix==1.3.0

bench:
	$(PYTHON) bench/bench_onnx.py
	$(PYTHON) bench/bench_speed.py
	$(PYTHON) bench/profile_forward.py

# Max abs difference vs upstream 4.0.1 and conv-vs-torch STFT SNR (needs `make oracle`).
parity:
	$(PYTHON) bench/parity.py

# The browser page (web/): npm packages from package-lock.json (onnxruntime-web, and
# puppeteer-core for the tests), installed when missing or outdated.
NPM ?= npm
ONNX ?= model.onnx

node_modules/.package-lock.json: package.json package-lock.json
	$(NPM) ci --no-audit --no-fund

web-deps: node_modules/.package-lock.json

# Serves the page with the graph ONNX (http://127.0.0.1:8000/).
web: web-deps
	$(PYTHON) -m demucs.web --onnx $(ONNX)

# JS core unit tests (node --test) and the page end to end in headless Chromium.
web-test: web-deps
	$(PYTHON) -m pytest -q $(PYTEST_ARGS) tests/test_web.py
