# stn_jax: every target that needs Python installs the virtual environment first.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: install test train bench clean

$(VENV)/.installed: pyproject.toml
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "error: $(PYTHON) not found; set PYTHON=/path/to/python3.11" >&2; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -e ".[test]"
	touch $@

install: $(VENV)/.installed

test: install
	$(PY) -m pytest -n 2 -q tests

train: install
	@echo "make train: the training loop is not built yet; it arrives with the models/training issue (#4)."; exit 1

bench: install
	$(PY) experiments/bench_sampler.py

clean:
	rm -rf $(VENV) build *.egg-info
