"""Sphinx configuration of the pyro-spvae documentation (``make docs``).

Sources: the ``docs/*.md`` pages (MyST; every page at the top level is listed by the glob
toctree of ``index.md``, so a new page needs no edit here), the API pages ``docs/api/*.md``
(autodoc from the docstrings, ``:param:`` fields and type hints) and the tutorials: every
``tutorials/*.ipynb`` is copied into ``docs/tutorials/`` (git-ignored) when the build starts and
rendered by myst-nb from its committed outputs, never executed.
"""

from __future__ import annotations

import importlib
import inspect
import re
import shutil
import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent
sys.path.insert(0, str(ROOT))  # the package without an install (an editable install works too)


import pyro_spvae  # noqa: E402

project = "pyro-spvae"
author = "pyro-spvae developers"
copyright = "pyro-spvae developers"
release = pyro_spvae.__version__
version = release

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
    "sphinxarg.ext",
    "myst_nb",
]

source_suffix = {".md": "myst-nb", ".ipynb": "myst-nb", ".rst": "restructuredtext"}
root_doc = "index"
exclude_patterns = ["_build", "**.ipynb_checkpoints", "Thumbs.db", ".DS_Store"]

# --- autodoc: reST :param: fields as written in the docstrings, type hints in the descriptions ---
autodoc_default_options = {"members": True, "undoc-members": True, "show-inheritance": True}
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_typehints_description_target = "documented_params"
autodoc_class_signature = "separated"
autodoc_preserve_defaults = True
napoleon_google_docstring = False
napoleon_numpy_docstring = False
# Heavy optional imports of the docs build are real (torch, pyro): nothing is mocked.

# Methods without a docstring of their own are documented without one: the docstrings of torch's
# and Pyro's base classes are not written for this site.
autodoc_inherit_docstrings = False
# The build is offline (no intersphinx): names of torch and Pyro stay plain text.

# --- MyST and notebooks --------------------------------------------------------------------------
myst_enable_extensions = ["dollarmath", "amsmath", "colon_fence", "deflist"]
myst_heading_anchors = 3
nb_execution_mode = "off"  # tutorials are rendered from their committed outputs
nb_output_stderr = "show"
nb_merge_streams = True

# Markdown links are resolved in these domains only (sphinx-argparse's domain cannot resolve them).
myst_ref_domains = ["std", "py", "math"]

# --- HTML ----------------------------------------------------------------------------------------
html_theme = "furo"
html_title = f"pyro-spvae {release}"
html_static_path = ["_static"]
html_css_files = ["custom.css"]

TUTORIALS_SRC = ROOT / "tutorials"
TUTORIALS_DST = DOCS / "tutorials"


def copy_tutorials(app=None) -> list[Path]:
    """Copy every ``tutorials/*.ipynb`` into ``docs/tutorials/`` (replacing stale copies)."""
    if TUTORIALS_DST.exists():
        shutil.rmtree(TUTORIALS_DST)
    TUTORIALS_DST.mkdir()
    copied = []
    for nb in sorted(TUTORIALS_SRC.glob("*.ipynb")):
        copied.append(Path(shutil.copy2(nb, TUTORIALS_DST / nb.name)))
    return copied


RESULTS_SRC = ROOT / "benchmarks" / "results"
RESULTS_DST = DOCS / "results"


def include_result_reports() -> list[Path]:
    """A page ``docs/results/<name>.md`` (git-ignored) that includes each report
    ``benchmarks/results/<name>.md``, so that the links of ``benchmarks/RESULTS.md`` (included in
    ``benchmarks.md``) resolve to pages of this site."""
    if RESULTS_DST.exists():
        shutil.rmtree(RESULTS_DST)
    RESULTS_DST.mkdir()
    pages = []
    for report in sorted(RESULTS_SRC.glob("*.md")):
        page = RESULTS_DST / report.name
        lines = report.read_text().split("\n")
        first = next((i for i, line in enumerate(lines) if line.strip()), 0)
        own_title = lines[first].startswith("# ")
        title = lines[first][2:].strip() if own_title else report.stem.replace("_", " ")
        option = f":start-line: {first + 1}" if own_title else ":heading-offset: 1"
        page.write_text(f"# {title}\n\n```{{include}} ../../benchmarks/results/{report.name}\n"
                        f"{option}\n:relative-images:\n```\n")
        pages.append(page)
    return pages


copy_tutorials()  # before Sphinx collects the sources
include_result_reports()


_FIELD = re.compile(r"^:[^:\s`][^:`]*:(\s|$)")  # a field, not a role such as :class:`X`


def indent_field_continuations(app, what, name, obj, options, lines: list[str]) -> None:
    """Indent the unindented continuation lines of a field that opens a docstring's line.

    A docstring such as ``\"\"\":raises ValueError: when ...\n    more text\"\"\"`` loses the
    continuation's indentation when Python dedents it (the first line is not counted), which reST
    reads as the end of the field list; indenting the continuation restores the field's body.
    """
    in_field = False
    for i, line in enumerate(lines):
        if not line.strip():
            in_field = False
        elif _FIELD.match(line):
            in_field = True
        elif in_field and not line[0].isspace():
            lines[i] = "   " + line


def document_reexported_data(app, docname: str, source: list[str]) -> None:
    """Add ``autodata`` entries to an API page for the constants that its package re-exports in
    ``__all__``: autodoc's ``:members:`` takes only data assigned in the module's own source, so
    ``pyro_spvae.training.PRESETS`` would be left out (the ``source-read`` event)."""
    if not docname.startswith("api/"):
        return
    extra = []
    for modname in re.findall(r"^\.\. automodule:: (\S+)", source[0], re.M):
        module = importlib.import_module(modname)
        own = inspect.getsource(module)
        for name in getattr(module, "__all__", ()):
            value = getattr(module, name)
            if inspect.ismodule(value) or inspect.isclass(value) or inspect.isroutine(value):
                continue
            if not re.search(rf"^{re.escape(name)}\s*[:=]", own, re.M):
                extra.append(f".. autodata:: {modname}.{name}\n   :no-value:\n")
    if extra:
        block = "\n".join(extra)
        source[0] += f"\n## Constants re-exported from its modules\n\n```{{eval-rst}}\n{block}```\n"


def drop_builtin_type_docstrings(app, what, name, obj, options, lines: list[str]) -> None:
    """A constant (a dict, a tuple, a str) has no docstring of its own: do not show its type's."""
    raw = type(obj).__doc__  # a descriptor, not a string, for some types (e.g. functools.partial)
    type_doc = inspect.cleandoc(raw) if isinstance(raw, str) else ""
    if what == "data" and type_doc and type_doc.split("\n")[0] in lines:
        lines.clear()


def setup(app):
    app.connect("autodoc-process-docstring", drop_builtin_type_docstrings)
    app.connect("source-read", document_reexported_data)
    app.connect("autodoc-process-docstring", indent_field_continuations)
