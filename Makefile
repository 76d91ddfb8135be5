# pyro-spvae developer targets. Everything runs inside .venv (created on demand) with the CPU
# build of torch, so that no CUDA wheels are pulled where a CPU torch serves.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.installed
DOCS_STAMP := $(VENV)/.installed-docs

.PHONY: install test test-fast lint format demo docs dist bench notebooks clean

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

# An SPVAE and a VAE of equal size, same training budget, same 5000-sample bound: one table and
# runs/demo/comparison.png (scripts/demo.py; options: python scripts/demo.py --help).
demo: install
	$(PY) scripts/demo.py --out runs/demo

# The documentation site (Sphinx + MyST + myst-nb, tutorials from their committed outputs), warnings
# as errors; open docs/_build/html/index.html.
$(DOCS_STAMP): $(STAMP)
	$(PY) -m pip install --quiet -e ".[dev,docs]"
	touch $(DOCS_STAMP)

docs: install $(DOCS_STAMP)
	$(PY) -m sphinx -b html -W --keep-going docs docs/_build/html

# Wheel and sdist in dist/; tests/test_packaging.py builds both again and installs each in a fresh
# virtual environment (embedded data included, one version).
dist: install
	rm -rf dist
	$(PY) -m build --outdir dist .
	PYRO_SPVAE_CHECK_DIST=1 $(PY) -m pytest -q tests/test_packaging.py

bench: install
	$(PY) benchmarks/run.py

notebooks: install
	$(PY) tutorials/execute.py

clean:
	rm -rf runs .pytest_cache .ruff_cache build dist *.egg-info docs/_build docs/tutorials
