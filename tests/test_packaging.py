"""Packaging: one version source, and a wheel and an sdist built with ``python -m build`` that
install in a fresh virtual environment (no system site-packages) with the embedded data included.

The install test is slow (it builds, creates a virtual environment and installs torch from the
local wheel cache or the index), so it runs when ``PYRO_SPVAE_CHECK_DIST=1``: ``make dist`` (which CI
runs) sets it after building ``dist/``.
"""

from __future__ import annotations

import importlib.metadata
import os
import subprocess
import sys
import venv
from pathlib import Path

import pytest

import pyro_spvae

ROOT = Path(__file__).resolve().parents[1]
TORCH_SPEC = os.environ.get("TORCH_SPEC", "torch==2.13.0")

#: Run outside the repository by the installed package: version, embedded data, one model step.
CHECK = """
import pathlib, sys
import pyro_spvae
from pyro_spvae.data import load_dataset
assert "site-packages" in pathlib.Path(pyro_spvae.__file__).parts, pyro_spvae.__file__
data = load_dataset("embedded", "train", "binary-dynamic")
import importlib.metadata as md
print(pyro_spvae.__version__, md.version("pyro-spvae"), len(data), tuple(data.event_shape))
"""


def test_the_version_has_one_source():
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "version" not in meta["project"] and "version" in meta["project"]["dynamic"]
    assert meta["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "pyro_spvae.__version__"}
    assert importlib.metadata.version("pyro-spvae") == pyro_spvae.__version__


def test_the_license_is_an_spdx_expression_without_classifiers():
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["license"] == "Apache-2.0"
    assert not [c for c in project.get("classifiers", []) if c.startswith("License ::")]


def _run(*args: str | Path, cwd: Path) -> str:
    result = subprocess.run([str(a) for a in args], cwd=cwd, capture_output=True, text=True, timeout=900)
    command = " ".join(map(str, args))
    assert result.returncode == 0, f"{command} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result.stdout


@pytest.mark.slow
@pytest.mark.timeout(1800)
@pytest.mark.skipif(os.environ.get("PYRO_SPVAE_CHECK_DIST") != "1",
                    reason="installs torch in a fresh venv: run by `make dist` (PYRO_SPVAE_CHECK_DIST=1)")
def test_wheel_and_sdist_install_in_a_fresh_venv_with_the_embedded_data(tmp_path):
    pytest.importorskip("build")
    dist = tmp_path / "dist"
    _run(sys.executable, "-m", "build", "--outdir", dist, ROOT, cwd=tmp_path)
    wheel, = dist.glob("pyro_spvae-*.whl")
    sdist, = dist.glob("pyro_spvae-*.tar.gz")
    assert wheel.name.startswith(f"pyro_spvae-{pyro_spvae.__version__}-")
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True, system_site_packages=False).create(env_dir)
    py = env_dir / "bin" / "python"
    _run(py, "-m", "pip", "install", "--quiet", TORCH_SPEC, cwd=tmp_path)
    for artefact in (wheel, sdist):
        _run(py, "-m", "pip", "install", "--quiet", "--force-reinstall", "--no-deps", artefact, cwd=tmp_path)
        _run(py, "-m", "pip", "install", "--quiet", artefact, cwd=tmp_path)  # the dependencies
        out = _run(py, "-I", "-c", CHECK, cwd=tmp_path).split()
        assert out[:2] == [pyro_spvae.__version__] * 2, out
        assert int(out[2]) == 3000 and "".join(out[3:]) == "(1,28,28)", out
