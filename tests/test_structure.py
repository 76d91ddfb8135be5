"""Structure of the package, checked by parsing its source (no import is executed).

- models never import guides (not even lazily, inside a function);
- no module imports a ``_private`` name of a module in another (sub)package;
- layering: imports point one way (``CONTRIBUTING.md``, "Layout and layering")::

      validation -> distributions, spn, nn, data -> infer -> models, guides -> zoo
                 -> training, evaluation, cli, plots

  a module may import its own layer and the layers below it, never one above;
- no file over 500 lines, no function over 80 lines unless a comment on or directly above its
  ``def`` line says why with the word ``long:``.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: source folder -> the package it is installed as (see ``[tool.setuptools.package-dir]``)
SOURCES = {"pyro_spvae": "pyro_spvae", "models": "pyro_spvae.models", "guides": "pyro_spvae.guides"}
MAX_FILE_LINES = 500
MAX_FUNCTION_LINES = 80

#: first component below ``pyro_spvae`` -> layer (a module may import layers <= its own)
LAYERS: dict[str, int] = {
    "validation": 0, "validation_memo": 0,
    "distributions": 1, "spn": 1, "nn": 1, "data": 1,
    "infer": 2,
    "models": 3, "guides": 3,
    "zoo": 4,
    "mixtures": 5,
    "training": 5, "evaluation": 5, "cli": 5, "plots": 5, "__main__": 5, "__init__": 5,
}


class Module(NamedTuple):
    name: str  # dotted name, e.g. "pyro_spvae.spn.network"
    package: str  # the package it belongs to, e.g. "pyro_spvae.spn"
    path: Path
    tree: ast.Module
    lines: list[str]


def _modules() -> list[Module]:
    out = []
    for folder, package in SOURCES.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            parts = path.relative_to(ROOT / folder).with_suffix("").parts
            is_init = parts[-1] == "__init__"
            name = ".".join((package, *(parts[:-1] if is_init else parts)))
            pkg = name if is_init else name.rpartition(".")[0]
            text = path.read_text(encoding="utf-8")
            out.append(Module(name, pkg, path, ast.parse(text, str(path)), text.splitlines()))
    return out


MODULES = _modules()
PACKAGES = {m.package for m in MODULES}


def _where(module: Module, node: ast.AST | None = None) -> str:
    line = f":{node.lineno}" if node is not None else ""
    return f"{module.path.relative_to(ROOT)}{line}"


def _imports(module: Module) -> Iterator[tuple[ast.AST, str, list[str]]]:
    """Every import anywhere in the module (top level or lazy): ``(node, module imported, names)``."""
    for node in ast.walk(module.tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node, alias.name, []
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against the importing module's package
                base = module.package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            yield node, target, [alias.name for alias in node.names]


def _layer_name(dotted: str) -> str | None:
    """``"pyro_spvae.spn.network"`` -> ``"spn"``; ``None`` outside the package or for the bare root."""
    parts = dotted.split(".")
    if parts[0] != "pyro_spvae" or len(parts) < 2:
        return None
    return parts[1]


def _package_of(target: str) -> str:
    return target if target in PACKAGES else target.rpartition(".")[0]


def test_sources_found():
    names = {m.name for m in MODULES}
    assert {"pyro_spvae.validation", "pyro_spvae.zoo", "pyro_spvae.models.vae", "pyro_spvae.guides"} <= names


def test_every_module_has_a_layer():
    unknown = sorted({_layer_name(m.name) for m in MODULES} - set(LAYERS) - {None})
    assert not unknown, f"give these subpackages/modules a layer in tests/test_structure.py LAYERS: {unknown}"


def guide_imports_in_models(modules: list[Module]) -> list[str]:
    bad = []
    for m in modules:
        if _layer_name(m.name) != "models":
            continue
        for node, target, names in _imports(m):
            hits = [target] if _layer_name(target) == "guides" else []
            if target == "pyro_spvae":
                hits += [n for n in names if n == "guides"]
            bad += [f"{_where(m, node)} imports {h}" for h in hits]
    return bad


def private_imports_across_packages(modules: list[Module]) -> list[str]:
    bad = []
    for m in modules:
        for node, target, names in _imports(m):
            if not target.startswith("pyro_spvae") or _package_of(target) == m.package:
                continue
            private = [n for n in names if n.startswith("_") and not n.startswith("__")]
            private += [p for p in target.split(".") if p.startswith("_") and not p.startswith("__")]
            bad += [f"{_where(m, node)} imports {target}.{n}" for n in private]
    return bad


def upward_imports(modules: list[Module]) -> list[str]:
    bad = []
    for m in modules:
        own = LAYERS.get(_layer_name(m.name) or "__init__")
        for node, target, _ in _imports(m):
            layer = _layer_name(target)
            if layer is None or own is None or layer not in LAYERS:
                continue
            if LAYERS[layer] > own:
                bad.append(f"{_where(m, node)} ({_layer_name(m.name)}, layer {own}) imports {target} "
                           f"(layer {LAYERS[layer]})")
    return bad


def test_models_never_import_guides():
    bad = guide_imports_in_models(MODULES)
    assert not bad, "models must not import guides (the builders live in pyro_spvae.zoo):\n" + "\n".join(bad)


def test_no_private_names_across_packages():
    bad = private_imports_across_packages(MODULES)
    assert not bad, "private names imported from another package:\n" + "\n".join(bad)


def test_layering():
    bad = upward_imports(MODULES)
    assert not bad, "imports that point up the layers:\n" + "\n".join(bad)


def test_file_sizes():
    bad = [f"{_where(m)}: {len(m.lines)} lines" for m in MODULES if len(m.lines) > MAX_FILE_LINES]
    assert not bad, f"files over {MAX_FILE_LINES} lines:\n" + "\n".join(bad)


def _justified(m: Module, node: ast.FunctionDef | ast.AsyncFunctionDef) -> bool:
    """A comment with ``long:`` on the ``def`` line or in the comment lines directly above it (and
    above its decorators)."""
    if "long:" in m.lines[node.lineno - 1].partition("#")[2]:
        return True
    i = min([node.lineno] + [d.lineno for d in node.decorator_list]) - 2
    while i >= 0 and m.lines[i].strip().startswith("#"):
        if "long:" in m.lines[i]:
            return True
        i -= 1
    return False


def test_function_sizes():
    bad = []
    for m in MODULES:
        for node in ast.walk(m.tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > MAX_FUNCTION_LINES and not _justified(m, node):
                    bad.append(f"{_where(m, node)} {node.name}: {n} lines")
    assert not bad, (f"functions over {MAX_FUNCTION_LINES} lines without a '# long: <why>' comment:\n"
                     + "\n".join(bad))


@pytest.mark.parametrize(
    "source, check",
    [
        ("from pyro_spvae.guides.gaussian import GaussianGuide\n", guide_imports_in_models),
        ("def f():\n    from pyro_spvae import guides\n", guide_imports_in_models),
        ("from ..guides import spvae\n", guide_imports_in_models),
        ("from pyro_spvae.spn.network import _make_leaves\n", private_imports_across_packages),
        ("from pyro_spvae._private import helper\n", private_imports_across_packages),
        ("from pyro_spvae.training import Trainer\n", upward_imports),
        ("import pyro_spvae.zoo\n", upward_imports),
    ],
)
def test_checks_catch_violations(source, check):
    """The checks themselves, on a fake model module with one violation."""
    fake = Module("pyro_spvae.models.fake", "pyro_spvae.models", ROOT / "models" / "fake.py",
                  ast.parse(source), source.splitlines())
    assert check([fake]), source
    fine = "from pyro_spvae.models.vae import VAE\nfrom .linear_gaussian import _init_ppca\nimport torch\n"
    ok = Module("pyro_spvae.models.fake", "pyro_spvae.models", ROOT / "models" / "fake.py",
                ast.parse(fine), fine.splitlines())
    assert not check([ok])


def test_long_function_needs_a_reason():
    body = "".join(f"    x{i} = {i}\n" for i in range(MAX_FUNCTION_LINES))
    for header, justified in [("def f():\n", False), ("# long: one table\ndef f():\n", True),
                              ("# long: one table\n@staticmethod\ndef f():\n", True),
                              ("def f():  # long: one table\n", True)]:
        source = header + body
        m = Module("pyro_spvae.fake", "pyro_spvae", ROOT / "fake.py", ast.parse(source), source.splitlines())
        node = next(n for n in ast.walk(m.tree) if isinstance(n, ast.FunctionDef))
        assert _justified(m, node) is justified, header
