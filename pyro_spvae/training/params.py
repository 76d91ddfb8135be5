"""The trainer and Pyro's global parameter store: which parameters a step touched, whose they are,
and clearing entries that would shadow a module's own parameters."""

from __future__ import annotations

from collections.abc import Iterable

import pyro
import torch
from pyro import poutine
from pyro.nn import PyroModule

__all__ = ["captured_params", "check_distinct_param_names", "param_fullnames", "release_foreign_params"]


def param_fullnames(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Param-store names that ``PyroModule`` gives to the parameters held directly by its
    ``PyroModule`` submodules (``PyroParam``s are stored unconstrained under their plain name).
    Parameters of plain ``nn.Module`` submodules are named by ``pyro.module`` calls instead and are
    not included."""
    names = {}
    for mod_name, mod in module.named_modules():
        if not isinstance(mod, PyroModule):
            continue
        prefix = getattr(mod, "_pyro_name", "") or ""
        if not prefix and mod is not module:
            prefix = mod_name
        for name, p in mod.named_parameters(recurse=False):
            if name.endswith("_unconstrained"):
                name = name[: -len("_unconstrained")]
            names[f"{prefix}.{name}" if prefix else name] = p
    return names


def check_distinct_param_names(model: torch.nn.Module, guide: torch.nn.Module) -> None:
    """:raises ValueError: when the model and the guide would share Pyro parameter names."""
    clash = sorted(set(param_fullnames(model)) & set(param_fullnames(guide)))
    if clash:
        raise ValueError(
            f"model and guide share Pyro parameter names {clash[:5]}: give the guide (or model) a "
            f"distinct PyroModule name so their parameters do not overwrite each other"
        )


def release_foreign_params(*modules: torch.nn.Module) -> list[str]:
    """Remove global param-store entries that are not parameters of ``modules``.

    Entries left by an earlier model in the same process would otherwise shadow these modules'
    parameters (``PyroModule`` and ``pyro.module`` both prefer an existing store value to the
    module's own tensor).

    :returns: the removed names.
    """
    store = pyro.get_param_store()
    owned = {id(p) for m in modules for p in m.parameters()}
    removed = [name for name, value in list(store.named_parameters()) if id(value) not in owned]
    for name in removed:
        del store[name]
    return removed


def captured_params(traces: Iterable[poutine.Trace]) -> list[tuple[str, torch.Tensor]]:
    """``(store name, unconstrained tensor)`` of every parameter in ``traces`` (recorded with
    ``poutine.trace(param_only=True)``, as :meth:`pyro.infer.SVI.step` does), sorted by name."""
    store = pyro.get_param_store()
    found: dict[int, torch.Tensor] = {}
    for tr in traces:
        for site in tr.nodes.values():
            p = site["value"].unconstrained()
            found[id(p)] = p
    named = [(store.param_name(p) or "", p) for p in found.values()]
    return sorted(named, key=lambda t: t[0])
