"""The documentation site (``docs/``, built by ``make docs``) covers the public API.

Fast checks read the sources: every public package has an API page whose ``automodule`` lists
its members, and no name of a package's ``__all__`` is excluded from its page without being named
there. The slow check builds the site with warnings as errors and reads the built inventory
(``objects.inv``): every public name is a documented object.
"""

from __future__ import annotations

import importlib
import pkgutil
import re
import types
import warnings
from pathlib import Path

import pytest

import pyro_spvae

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
API = DOCS / "api"
_AUTOMODULE = re.compile(r"^\.\. automodule:: (\S+)\n((?:[ \t]+:.*\n?)*)", re.M)


def public_modules() -> list[str]:
    """``pyro_spvae`` and every subpackage or module of it whose name has no leading underscore
    at the top level (``pyro_spvae.X``), plus the modules that the package lists (``models``,
    ``guides`` live in their own folders)."""
    names = ["pyro_spvae"]
    for info in pkgutil.iter_modules(pyro_spvae.__path__):
        if not info.name.startswith("_"):
            names.append(f"pyro_spvae.{info.name}")
    for extra in ("pyro_spvae.models", "pyro_spvae.guides"):
        if extra not in names:
            names.append(extra)
    return sorted(names)


def public_names(module: types.ModuleType) -> list[str]:
    """``__all__``, else the public attributes defined in the package (re-exports included)."""
    if hasattr(module, "__all__"):
        return list(module.__all__)
    prefix = module.__name__
    return sorted(
        name for name, value in vars(module).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType)
        and getattr(value, "__module__", "").startswith(prefix)
    )


def api_pages() -> dict[str, tuple[Path, dict[str, str]]]:
    """``{module: (page, {option: value})}`` of every ``automodule`` directive in ``docs/api``."""
    pages = {}
    for page in sorted(API.glob("*.md")):
        for match in _AUTOMODULE.finditer(page.read_text()):
            options = dict(re.findall(r":([\w-]+):[ \t]*(.*)", match.group(2)))
            pages[match.group(1)] = (page, options)
    return pages


MODULES = public_modules()


def test_the_public_modules_are_found():
    for name in ("pyro_spvae.distributions", "pyro_spvae.spn", "pyro_spvae.nn", "pyro_spvae.infer",
                 "pyro_spvae.models", "pyro_spvae.guides", "pyro_spvae.training", "pyro_spvae.data",
                 "pyro_spvae.evaluation", "pyro_spvae.zoo", "pyro_spvae.plots", "pyro_spvae.cli"):
        assert name in MODULES


@pytest.mark.parametrize("name", MODULES)
def test_every_public_module_has_an_api_page_with_its_members(name):
    pages = api_pages()
    assert name in pages, f"no docs/api/*.md page has '.. automodule:: {name}'"
    page, options = pages[name]
    assert "members" in options, f"{page.name}: automodule {name} needs :members:"
    module = importlib.import_module(name)
    if not hasattr(module, "__all__") and name != "pyro_spvae":
        # without __all__, autodoc skips re-exported names unless asked for them
        assert "imported-members" in options, f"{page.name}: {name} has no __all__: add :imported-members:"
    excluded = {n.strip() for n in options.get("exclude-members", "").split(",") if n.strip()}
    text = page.read_text()
    for member in public_names(module):
        if member in excluded:
            assert f"`{member}`" in text, f"{page.name} excludes {member}: say where it is documented"


def test_api_index_lists_every_page():
    index = (API / "index.md").read_text()
    for page in API.glob("*.md"):
        if page.stem != "index":
            assert re.search(rf"^{re.escape(page.stem)}$", index, re.M), f"api/index.md misses {page.stem}"


def test_every_tutorial_and_page_is_reachable():
    """The glob toctrees pick up every ``docs/*.md`` page and every ``tutorials/*.ipynb``."""
    index = (DOCS / "index.md").read_text()
    assert re.search(r":glob:\n(?:.*\n)*?\*\n", index) and "api/index" in index
    tutorials = (DOCS / "tutorials.md").read_text()
    assert ":glob:" in tutorials and "tutorials/*" in tutorials
    conf = (DOCS / "conf.py").read_text()
    assert 'nb_execution_mode = "off"' in conf


def _sources() -> list[Path]:
    """The files the site is built from: pages, configuration, notebooks, package sources."""
    files = [*DOCS.glob("*.md"), *API.glob("*.md"), DOCS / "conf.py", *(ROOT / "tutorials").glob("*.ipynb")]
    for folder in ("pyro_spvae", "models", "guides"):
        files += (ROOT / folder).rglob("*.py")
    files += [ROOT / "benchmarks" / "RESULTS.md", ROOT / "benchmarks" / "results" / "spvae_reproduction.md"]
    return files


def _built_site(tmp_path: Path) -> Path:
    """The HTML output of ``make docs`` when it is newer than every source (CI builds it just
    before the tests), else a fresh build with warnings as errors."""
    site = DOCS / "_build" / "html"
    inventory = site / "objects.inv"
    if inventory.is_file() and inventory.stat().st_mtime > max(f.stat().st_mtime for f in _sources()):
        return site
    sphinx_build = pytest.importorskip("sphinx.cmd.build")
    out = tmp_path / "html"
    args = ["-b", "html", "-W", "--keep-going", "-q", "-d", str(tmp_path / "doctrees"), str(DOCS), str(out)]
    with warnings.catch_warnings():
        # Extensions (myst-nb, sphinx-argparse) still touch Sphinx APIs that Sphinx marks deprecated: those
        # Python warnings are not documentation warnings; ``-W`` still fails the build on every one of those.
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", PendingDeprecationWarning)
        status = sphinx_build.build_main(args)
    assert status == 0, "the documentation build has warnings (run `make docs`)"
    return out


@pytest.mark.slow
def test_the_built_site_documents_every_public_name(tmp_path):
    pytest.importorskip("sphinx")
    from sphinx.util.inventory import InventoryFile

    out = _built_site(tmp_path)
    with open(out / "objects.inv", "rb") as f:
        inventory = InventoryFile.load(f, "", lambda base, uri: uri)
    documented = {name for entries in inventory.values() for name in entries}
    missing = []
    for name in MODULES:
        module = importlib.import_module(name)
        for member in public_names(module):
            value = getattr(module, member)
            canonical = f"{getattr(value, '__module__', '')}.{getattr(value, '__qualname__', member)}"
            if f"{name}.{member}" not in documented and canonical not in documented:
                missing.append(f"{name}.{member}")
    assert not missing, f"public names missing from the API pages: {missing}"
    for page in ("tutorials/spvae.html", "cli.html", "benchmarks.html", "reproduction.html", "api/nn.html"):
        assert (out / page).is_file(), page
