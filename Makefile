# pyro-spvae developer targets. Everything runs inside .venv (created on demand) with the CPU
# build of torch, so that no CUDA wheels are pulled where a CPU torch serves.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.installed

.PHONY: install test test-fast lint format demo bench notebooks clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet -e ".[dev]"
	$(PY) -m ipykernel install --sys-prefix --name python3 >/dev/null
	touch $(STAMP)

test: install
	$(PY) -m pytest

test-fast: install
	$(PY) -m pytest -m "not slow and not notebook and not distributed"

lint: install
	$(VENV)/bin/ruff check .

format: install
	$(VENV)/bin/ruff check --fix .

demo: install
	$(PY) -m pyro_spvae train --out runs/demo
	$(PY) -m pyro_spvae evaluate --run runs/demo
	$(PY) -m pyro_spvae sample --run runs/demo

bench: install
	$(PY) benchmarks/run.py

notebooks: install
	$(PY) tutorials/execute.py

clean:
	rm -rf runs .pytest_cache .ruff_cache build *.egg-info
