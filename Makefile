PYTHON ?= python
PYTEST_ARGS ?=

.PHONY: test test-fast lint bench parity oracle

# The whole offline suite, parity tests against upstream 4.0.1 included.
test:
	$(PYTHON) -m pytest -q $(PYTEST_ARGS) tests

test-fast:
	$(PYTHON) -m pytest -q -x -m "not slow" $(PYTEST_ARGS) tests

lint:
	$(PYTHON) -m flake8 demucs tests bench examples

# Installs upstream demucs 4.0.1 (the test oracle) into .oracle/site, and 4.1.0 (its
# safetensors model format, tests/test_hf.py) into .oracle/site410, outside our package.
oracle:
	$(PYTHON) -m pip install -q --no-deps --target .oracle/site demucs==4.0.1 openunmix==1.3.0
	$(PYTHON) -m pip install -q --no-deps --target .oracle/site410 demucs==4.1.0

bench:
	$(PYTHON) bench/bench_onnx.py
	$(PYTHON) bench/bench_speed.py
	$(PYTHON) bench/profile_forward.py

# Max abs difference vs upstream 4.0.1 and conv-vs-torch STFT SNR (needs `make oracle`).
parity:
	$(PYTHON) bench/parity.py
