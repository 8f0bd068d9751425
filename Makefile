# stn_jax: every target that needs Python installs the virtual environment first.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
WORKDIR ?= workdirs/rts_st_cnn_small

.PHONY: install test lint format train bench clean

$(VENV)/.installed: pyproject.toml
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "error: $(PYTHON) not found; set PYTHON=/path/to/python3.11" >&2; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -e ".[test]"
	touch $@

install: $(VENV)/.installed

test: install
	$(PY) -m pytest -n 2 -q tests

lint: install
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

format: install
	$(PY) -m ruff check --fix .
	$(PY) -m ruff format .

train: install
	$(PY) -m stn_jax.main --config=configs/mnist.py:distortion=rts,model=st_cnn,transform=affine,small=true --workdir=$(WORKDIR)

bench: install
	$(PY) experiments/bench_sampler.py

clean:
	rm -rf $(VENV) build *.egg-info
