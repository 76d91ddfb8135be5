"""The optimiser of a training step: one torch optimiser over every updated parameter, configured by
a Pyro optimiser.

A Pyro optimiser (:class:`pyro.optim.PyroOptim`, e.g. ``pyro.optim.Adam``) keeps one torch
optimiser per parameter and steps them one by one; for the VAE that is 12 optimiser calls per step.
:class:`FusedOptimizer` gives the same update with one torch optimiser whose parameter groups hold
the parameters that share their per-parameter settings (the callable of
:func:`~pyro_spvae.training.make_optimizer`'s ``group_lrs``), stepped in one call with torch's
fused (or multi-tensor) kernels where the optimiser has them. This is the pattern Pyro documents for
torch optimisers (``loss.backward(); optimizer.step()``); it applies to optimisers whose update of a
parameter depends on that parameter only (:data:`ELEMENTWISE`). Any other Pyro optimiser (a
learning-rate scheduler, a custom constructor) runs as Pyro runs it (:class:`PyroStepOptimizer`).

Both keep Pyro's state layout, ``{param name: torch optimiser state dict of that parameter}``
(:meth:`pyro.optim.PyroOptim.get_state`), so checkpoints are the same whichever runs, and a state
can be handed to ``PyroOptim.set_state``.
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Sequence
from typing import Any

import torch
from pyro.optim import PyroOptim
from pyro.optim.adagrad_rmsprop import AdagradRMSProp
from pyro.optim.clipped_adam import ClippedAdam
from pyro.params.param_store import module_from_param_with_module_name, normalize_param_name, user_param_name

__all__ = [
    "ELEMENTWISE",
    "FusedOptimizer",
    "PyroStepOptimizer",
    "Snapshot",
    "StepOptimizer",
    "fusable",
    "make_step_optimizer",
]

#: Torch optimisers whose update of a parameter reads only that parameter's gradient and state, so
#: that one instance over all parameters equals one instance per parameter.
ELEMENTWISE: tuple[type, ...] = (
    torch.optim.Adam, torch.optim.AdamW, torch.optim.Adamax, torch.optim.NAdam, torch.optim.RAdam,
    torch.optim.SGD, torch.optim.RMSprop, torch.optim.Adagrad, torch.optim.Adadelta, ClippedAdam,
    AdagradRMSProp,
)

Named = Sequence[tuple[str, torch.Tensor]]


class StepOptimizer:
    """What the trainer needs of an optimiser (see the two implementations below).

    :ivar optim: the Pyro optimiser that configures it.
    """

    optim: PyroOptim

    def step(self, named: Named) -> None:
        """Update the ``(name, parameter)`` pairs from their ``.grad``."""
        raise NotImplementedError

    def snapshot(self, named: Named) -> Snapshot:
        """The parameters and their optimiser state, to undo the next :meth:`step`."""
        raise NotImplementedError

    def restore(self, snap: Snapshot) -> None:
        """Undo the update made since :meth:`snapshot` (values, optimiser states, learning rates)."""
        raise NotImplementedError

    def torch_optimizers(self) -> list[torch.optim.Optimizer]:
        """The torch optimisers (for their ``param_groups``: learning rates)."""
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        """``{param name: torch optimiser state dict}``, with states loaded for parameters not seen yet."""
        raise NotImplementedError

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a :meth:`state_dict` (a parameter not seen yet takes its state when it is)."""
        raise NotImplementedError


class Snapshot:
    """Parameter values and optimiser state before an update (taken only with
    ``on_nonfinite="skip"``: with ``"raise"`` training stops, so the copy is not paid for).

    :ivar states: ``{id(param): its optimiser state}`` (``None``: it had none yet).
    :ivar lrs: the learning rates of the parameter groups.
    :ivar pending: loaded states waiting for their parameter.
    """

    def __init__(self, params: Sequence[torch.Tensor], states: dict[int, Any], lrs: list[float],
                 pending: dict[str, Any]) -> None:
        self.params = list(params)
        self.values = [p.detach().clone() for p in self.params]
        self.states = states
        self.lrs = lrs
        self.pending = pending


class PyroStepOptimizer(StepOptimizer):
    """A Pyro optimiser run as :meth:`pyro.infer.SVI.step` runs it (one torch optimiser per parameter)."""

    def __init__(self, optim: PyroOptim) -> None:
        self.optim = optim

    def step(self, named: Named) -> None:
        self.optim([p for _, p in named])

    def snapshot(self, named: Named) -> Snapshot:
        objs = self.optim.optim_objs
        params = [p for _, p in named]
        states = {id(p): copy.deepcopy(objs[p].state_dict()) if p in objs else None for p in params}
        return Snapshot(params, states, [], dict(getattr(self.optim, "_state_waiting_to_be_consumed", {})))

    @torch.no_grad()
    def restore(self, snap: Snapshot) -> None:
        """Optimiser objects the update created are removed again and the saved state they consumed
        is put back."""
        for p, v in zip(snap.params, snap.values):
            p.copy_(v)
        for p in snap.params:
            state = snap.states[id(p)]
            if state is None:
                self.optim.optim_objs.pop(p, None)
                getattr(self.optim, "grad_clip", {}).pop(p, None)
            else:
                self.optim.optim_objs[p].load_state_dict(state)
        if hasattr(self.optim, "_state_waiting_to_be_consumed"):
            self.optim._state_waiting_to_be_consumed = snap.pending  # type: ignore[attr-defined]

    def torch_optimizers(self) -> list[torch.optim.Optimizer]:
        return list(self.optim.optim_objs.values())

    def state_dict(self) -> dict[str, Any]:
        state = dict(getattr(self.optim, "_state_waiting_to_be_consumed", {}))
        state.update(self.optim.get_state())
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.optim.set_state(state)


def _accepts(constructor: type, keyword: str) -> bool:
    try:
        return keyword in inspect.signature(constructor).parameters
    except (TypeError, ValueError):  # pragma: no cover - builtins
        return False


class FusedOptimizer(StepOptimizer):
    """One torch optimiser over the parameters of the steps, configured by ``optim``.

    Parameters join it as the steps first update them (named as in Pyro's param store), in a
    parameter group per distinct setting of ``optim``'s per-parameter arguments; Pyro's gradient
    clipping (``clip_args``) is applied per parameter as Pyro does. Where the optimiser has a fused
    kernel for the parameters (``fused=True``: Adam, AdamW, SGD, Adagrad on CPU and CUDA floats) and
    the arguments choose no implementation, it is used: the same update in one kernel call.

    ``ClippedAdam``'s learning-rate decay ``lrd`` is applied once per step to each group, as Pyro
    does for each parameter updated at that step.

    :param optim: a Pyro optimiser accepted by :func:`fusable`.
    """

    def __init__(self, optim: PyroOptim) -> None:
        self.optim = optim
        self.constructor: type = optim.pt_optim_constructor
        self.torch_optim: torch.optim.Optimizer | None = None
        self.names: dict[torch.Tensor, str] = {}
        self._by_name: dict[str, torch.Tensor] = {}
        self._groups: dict[str, dict[str, Any]] = {}
        self._args_of: dict[torch.Tensor, dict[str, Any]] = {}
        self._clips: list[tuple[torch.Tensor, dict[str, Any]]] = []
        self._pending: dict[str, Any] = {}
        self._fused_ok = _accepts(self.constructor, "fused")

    # ------------------------------------------------------------------ parameters
    def _optim_args(self, name: str) -> dict[str, Any]:
        """Pyro's arguments for the parameter ``name`` (:meth:`pyro.optim.PyroOptim._get_optim_args`)."""
        args = self.optim.pt_optim_args
        if not callable(args):
            return dict(args)
        if getattr(self.optim, "pt_optim_args_argc", 1) == 1:
            return dict(args(normalize_param_name(name)))
        return dict(args(module_from_param_with_module_name(name), user_param_name(name)))

    def _clip_args(self, name: str) -> dict[str, Any]:
        """Pyro's gradient clipping for ``name`` (:meth:`pyro.optim.PyroOptim._get_grad_clip_args`)."""
        args = self.optim.pt_clip_args
        if callable(args):
            return dict(args(module_from_param_with_module_name(name), user_param_name(name)))
        return dict(args or {})

    def _kernel_args(self, args: dict[str, Any], p: torch.Tensor) -> dict[str, Any]:
        """``args`` with ``fused=True`` where torch has a fused kernel and ``args`` choose none."""
        chosen = {"fused", "foreach", "differentiable"} & set(args)
        if self._fused_ok and not chosen and p.dtype.is_floating_point and p.device.type in ("cpu", "cuda"):
            return {**args, "fused": True}
        return args

    def _add(self, name: str, p: torch.Tensor) -> None:
        args = self._kernel_args(self._optim_args(name), p)
        key = repr(sorted(args.items())) + f"|{p.dtype}|{p.device}"
        group = self._groups.get(key)
        if group is not None:
            group["params"].append(p)
        elif self.torch_optim is None:
            self.torch_optim = self.constructor([{"params": [p], **args}], **args)
            self._groups[key] = self.torch_optim.param_groups[-1]
        else:
            self.torch_optim.add_param_group({"params": [p], **args})
            self._groups[key] = self.torch_optim.param_groups[-1]
        self.names[p] = name
        self._by_name[name] = p
        self._args_of[p] = args
        clip = self._clip_args(name)
        if clip:
            self._clips.append((p, clip))
        state = self._pending.pop(name, None)
        if state is not None:
            self._load_param_state(p, state)

    def _load_param_state(self, p: torch.Tensor, state: dict[str, Any]) -> None:
        """Load ``p``'s per-parameter state dict (Pyro's layout) through a torch optimiser of its own
        (which casts the state as torch does), then take over its state and learning rate."""
        group = self._group_of(p)
        single = self.constructor([p], **self._args_of[p])
        single.load_state_dict(state)
        assert self.torch_optim is not None
        loaded = single.state[p]
        step = loaded.get("step")
        if group.get("fused") and isinstance(step, torch.Tensor):  # fused kernels read it on p's device
            loaded["step"] = step.to(device=p.device, dtype=torch.float32)
        self.torch_optim.state[p] = loaded
        for key in ("lr", "initial_lr"):
            if key in single.param_groups[0]:
                group[key] = single.param_groups[0][key]

    def _group_of(self, p: torch.Tensor) -> dict[str, Any]:
        assert self.torch_optim is not None
        return next(g for g in self.torch_optim.param_groups if any(q is p for q in g["params"]))

    # ------------------------------------------------------------------ steps
    def step(self, named: Named) -> None:
        for name, p in named:
            if p not in self.names:
                self._add(name, p)
        # as Pyro, update the given parameters only: another one of the optimiser's keeps its
        # gradient, set aside during the update
        idle = []
        if len(named) != len(self.names):
            given = {id(p) for _, p in named}
            idle = [(p, p.grad) for p in self.names if id(p) not in given and p.grad is not None]
        for p, _ in idle:
            p.grad = None
        try:
            for p, clip in self._clips:
                if p.grad is not None:
                    PyroOptim._clip_grad(p, **clip)
            if self.torch_optim is not None:
                self.torch_optim.step()
        finally:
            for p, grad in idle:
                p.grad = grad

    def snapshot(self, named: Named) -> Snapshot:
        opt = self.torch_optim
        params = [p for _, p in named]
        states = {id(p): copy.deepcopy(opt.state[p]) if opt is not None and p in opt.state else None
                  for p in params}
        lrs = [g["lr"] for g in opt.param_groups] if opt is not None else []
        return Snapshot(params, states, lrs, dict(self._pending))

    @torch.no_grad()
    def restore(self, snap: Snapshot) -> None:
        for p, v in zip(snap.params, snap.values):
            p.copy_(v)
        opt = self.torch_optim
        if opt is None:
            return
        for p in snap.params:
            state = snap.states[id(p)]
            if state is None:
                opt.state.pop(p, None)
            else:
                opt.state[p] = state
        for g, lr in zip(opt.param_groups, snap.lrs):
            g["lr"] = lr
        self._pending = snap.pending

    # ------------------------------------------------------------------ state
    def torch_optimizers(self) -> list[torch.optim.Optimizer]:
        return [] if self.torch_optim is None else [self.torch_optim]

    def state_dict(self) -> dict[str, Any]:
        out = dict(self._pending)
        opt = self.torch_optim
        if opt is None:
            return out
        for group in opt.param_groups:
            fields = {k: v for k, v in group.items() if k != "params"}
            for p in group["params"]:
                state = {0: opt.state[p]} if p in opt.state else {}
                out[self.names[p]] = {"state": state, "param_groups": [{**fields, "params": [0]}]}
        return out

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for name, st in state.items():
            p = self._by_name.get(name)
            if p is None:
                self._pending[name] = st
            else:
                self._load_param_state(p, st)


def fusable(optim: PyroOptim) -> bool:
    """Whether ``optim`` can run as one torch optimiser: a plain :class:`~pyro.optim.PyroOptim` (no
    scheduler or multi-optimiser wrapper) of an :data:`ELEMENTWISE` optimiser."""
    return type(optim) is PyroOptim and optim.pt_optim_constructor in ELEMENTWISE


def make_step_optimizer(optim: PyroOptim) -> StepOptimizer:
    """:class:`FusedOptimizer` when :func:`fusable`, else :class:`PyroStepOptimizer`."""
    return FusedOptimizer(optim) if fusable(optim) else PyroStepOptimizer(optim)

