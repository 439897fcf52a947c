# losslab: `make demo` and `make test` set up .venv themselves (offline-friendly).
PYTHON ?= python3
VENV   ?= .venv
TORCH  ?= torch==2.13.0
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip --disable-pip-version-check -q
STAMP  := $(VENV)/.losslab-installed

.PHONY: setup demo test test-all lint bench bench-noisy clean catalog

# torch first (a CPU wheel; override with `make demo TORCH=torch==X`), then the package.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install "$(TORCH)"
	$(PIP) install -e ".[lab,dev]"
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(PY) -m losslab.demo

test: $(STAMP)
	$(PY) -m ruff check src tests $(wildcard benchmarks scripts)
	$(PY) -m pytest -q

test-all: $(STAMP)
	$(PY) -m pytest -q -m "slow or not slow"

lint: $(STAMP)
	$(PY) -m ruff check src tests $(wildcard benchmarks scripts)

catalog: $(STAMP)
	$(VENV)/bin/losslab list --update-readme README.md

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache .ruff_cache
