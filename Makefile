# stn_jax: every target that needs Python installs the virtual environment first.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
WORKDIR ?= workdirs/rts_st_cnn_small

.PHONY: install test lint format docs train bench clean

$(VENV)/.installed: pyproject.toml
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "error: $(PYTHON) not found; set PYTHON=/path/to/python3.11" >&2; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -e ".[test]"
	touch $@

install: $(VENV)/.installed

# The docs extra (mkdocs, material, mkdocstrings) on top of the install.
$(VENV)/.docs-installed: $(VENV)/.installed pyproject.toml
	$(PY) -m pip install -e ".[docs]"
	touch $@

test: install
	$(PY) -m pytest -n 2 -q --durations=15 tests

lint: install
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

format: install
	$(PY) -m ruff check --fix .
	$(PY) -m ruff format .

# The documentation site into site/; --strict: a broken link or reference fails.
docs: $(VENV)/.docs-installed
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict

train: install
	$(PY) -m stn_jax.main --config=configs/mnist.py:distortion=rts,model=st_cnn,transform=affine,small=true --workdir=$(WORKDIR)

bench: install
	$(PY) experiments/bench_sampler.py

clean:
	rm -rf $(VENV) build site *.egg-info
