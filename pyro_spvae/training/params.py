"""The trainer and Pyro's global parameter store: which parameters a step touched, whose they are,
clearing entries that would shadow a module's own parameters, and a store of its own for one of
several (model, guide) pairs in a process (:class:`ParamStoreSlot`)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator

import pyro
import torch
from pyro import poutine
from pyro.nn import PyroModule

__all__ = [
    "ParamStoreSlot",
    "captured_params",
    "check_distinct_param_names",
    "param_fullnames",
    "release_foreign_params",
]


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


class ParamStoreSlot:
    """A Pyro param store of its own, for one of several (model, guide) pairs in one process.

    Pyro's param store is global, and two instances of one model class name their parameters alike
    (``decoder$$$...``): a trainer, or ``pyro.infer.SVI``, would find the other instance's tensors
    under its names. Each pair runs inside its slot's :meth:`active`, which swaps the slot's entries
    in (:meth:`pyro.params.param_store.ParamStoreDict.set_state`) and out again.
    """

    def __init__(self) -> None:
        self.state: dict | None = None

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        """Hold this slot's entries in the global store for the ``with`` block (an empty store the
        first time); the store is empty after it."""
        store = pyro.get_param_store()
        store.clear()
        if self.state is not None:
            store.set_state(self.state)
        try:
            yield
        finally:
            self.state = store.get_state()
            store.clear()
