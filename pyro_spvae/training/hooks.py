"""Training hooks: state that an estimator or a model carries from one optimisation step to the next,
driven by the :class:`~pyro_spvae.training.Trainer` once per step, checkpointed and logged.

A hook (:class:`TrainingHook`) has a ``name`` (its key in checkpoints and the prefix of its metrics,
``geco/lambda``), and the trainer calls, for every step ``t`` (0-based, skipped steps included):

- :meth:`~TrainingHook.before_step` before the shards' losses and gradients are computed;
- :meth:`~TrainingHook.after_step` once the step is decided: ``ok`` is ``False`` for a step whose
  update was skipped (non-finite loss, gradients or parameters), and ``ctx`` is the process group
  (every process calls it with the same ``ok``, so hooks may all-reduce);
- :meth:`~TrainingHook.state_dict` / :meth:`~TrainingHook.load_state_dict` with the checkpoints
  (plain Python values: ``weights_only`` safe), so that an exact resume continues the trajectory;
- :meth:`~TrainingHook.metrics` at every metrics line.

A hook may also train modules of its own (:meth:`~TrainingHook.modules`, e.g. the ``Q`` network of
the mutual-information bound): their parameters are optimised with the model's and their
``state_dict`` is checkpointed. A trainer without hooks does no per-step work for them.

The hooks of this module (:func:`hooks_for` finds those an estimator needs):

- :class:`GECOHook`: the Lagrange multiplier of :class:`~pyro_spvae.infer.GECO` (Rezende & Viola
  2018; Klushyn et al. 2019, ``docs/hierarchical_priors.md``): the constraint values of every shard
  and process are summed (:meth:`GECO.constraint_stats <pyro_spvae.infer.GECO.constraint_stats>`)
  and the multiplier updated once per applied step; a skipped step discards them.
- :class:`CapacityHook`: the step ``t`` of the capacity schedules of
  :class:`~pyro_spvae.infer.CapacityELBO` (JointVAE, Dupont 2018), advanced once per applied step.
- :class:`TemperatureHook`: the Gumbel-softmax temperature of a relaxed code
  (``model.set_temperature``, :class:`~pyro_spvae.models.MIVAE`), set from a schedule of the
  number of applied steps before each step (Jang, Gu & Poole 2017).
- :class:`MIHook`: the ``Q`` network of :class:`~pyro_spvae.infer.MIRegularizedELBO` (Serdega & Kim
  2020, ``docs/mutual_information.md``) trained with the model; logs the last batch bound.

Skipped steps advance no schedule: the schedules count the updates that were applied.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from pyro.infer import ELBO, Trace_ELBO

from pyro_spvae.infer import GECO, CapacityELBO, CodePosteriorNet, MIRegularizedELBO
from pyro_spvae.training.distributed import DistributedContext, all_reduce_sum_
from pyro_spvae.validation import check_instance, check_nonnegative_int

__all__ = [
    "CapacityHook",
    "GECOHook",
    "MIHook",
    "TemperatureHook",
    "TrainingHook",
    "hook_metrics",
    "hooks_for",
    "load_hooks_state",
    "unwrap_elbos",
    "validation_elbo",
]


class TrainingHook:
    """Base class of the trainer's hooks (see the module docstring); every method is a no-op.

    :ivar name: key of the hook's state in checkpoints and prefix of its metrics.
    """

    name: str = "hook"

    def before_step(self, step: int) -> None:
        """Called before step ``step`` (0-based) computes its losses and gradients."""

    def after_step(self, step: int, ok: bool, ctx: DistributedContext) -> None:
        """Called after step ``step``: ``ok`` is whether its update was applied."""

    def state_dict(self) -> dict[str, Any]:
        """The hook's state (plain Python values)."""
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`."""

    def metrics(self) -> dict[str, float]:
        """Values logged as ``{name}/{key}`` on each metrics line."""
        return {}

    def modules(self) -> list[torch.nn.Module]:
        """Modules whose parameters the trainer optimises and checkpoints with the model's."""
        return []


def _counter(state: Mapping[str, Any], key: str, who: str) -> int:
    if not isinstance(state, Mapping) or key not in state:
        raise ValueError(f"{who} state lacks {key!r}")
    return check_nonnegative_int(f"{who} {key}", state[key])


class GECOHook(TrainingHook):
    """Drive :class:`~pyro_spvae.infer.GECO`'s multiplier once per step (``auto_update`` is turned
    off: the estimator only accumulates the constraint of each shard).

    :param geco: the estimator (or the GECO found inside a wrapper).
    """

    name = "geco"

    def __init__(self, geco: GECO) -> None:
        self.geco = check_instance("geco", geco, GECO, "pyro_spvae.infer.GECO")
        geco.auto_update = False

    def before_step(self, step: int) -> None:
        self.geco.discard_pending()  # values of calls outside training (e.g. a user's loss_and_grads)

    def after_step(self, step: int, ok: bool, ctx: DistributedContext) -> None:
        if not ok:
            self.geco.discard_pending()
            return
        stats = self.geco.constraint_stats().to(ctx.device)
        all_reduce_sum_(stats, ctx)
        self.geco.update(GECO.constraint_from_stats(stats.cpu()))

    def state_dict(self) -> dict[str, Any]:
        return self.geco.state_dict()

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.geco.load_state_dict(state)

    def metrics(self) -> dict[str, float]:
        return self.geco.metrics()


class CapacityHook(TrainingHook):
    """Set :class:`~pyro_spvae.infer.CapacityELBO`'s step (``auto_step`` is turned off) to the
    number of applied steps, and log the capacities it uses.

    :param elbo: the capacity objective.
    """

    name = "capacity"

    def __init__(self, elbo: CapacityELBO) -> None:
        self.elbo = check_instance("elbo", elbo, CapacityELBO, "pyro_spvae.infer.CapacityELBO")
        elbo.auto_step = False

    def after_step(self, step: int, ok: bool, ctx: DistributedContext) -> None:
        if ok:
            self.elbo.num_steps += 1

    def state_dict(self) -> dict[str, Any]:
        return {"num_steps": self.elbo.num_steps}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.elbo.num_steps = _counter(state, "num_steps", "capacity")

    def metrics(self) -> dict[str, float]:
        t = self.elbo.num_steps
        return {"step": float(t), **{site: float(s(t)) for site, s in self.elbo.capacities.items()}}


class TemperatureHook(TrainingHook):
    """Anneal a relaxed code: ``set_temperature(schedule(t))`` on ``module`` before each step, ``t``
    the number of applied steps (e.g. :class:`~pyro_spvae.infer.ExponentialSchedule`).

    :param module: a module with ``set_temperature(value)`` (:class:`~pyro_spvae.models.MIVAE`,
        whose guide shares the temperature buffer).
    :param schedule: ``step -> temperature``.
    :raises TypeError: for a module without ``set_temperature`` or a schedule that is not callable.
    """

    name = "temperature"

    def __init__(self, module: torch.nn.Module, schedule: Callable[[int], float]) -> None:
        if not callable(getattr(module, "set_temperature", None)):
            raise TypeError(f"{type(module).__name__} has no set_temperature(value) to anneal")
        if not callable(schedule):
            raise TypeError(f"schedule must be callable step -> temperature, got {type(schedule).__name__}")
        self.module, self.schedule = module, schedule
        self.num_steps = 0
        self.temperature = float(schedule(0))

    def before_step(self, step: int) -> None:
        self.module.set_temperature(self.temperature)

    def after_step(self, step: int, ok: bool, ctx: DistributedContext) -> None:
        if ok:
            self.num_steps += 1
            self.temperature = float(self.schedule(self.num_steps))

    def state_dict(self) -> dict[str, Any]:
        return {"num_steps": self.num_steps, "temperature": self.temperature}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.num_steps = _counter(state, "num_steps", "temperature")
        self.temperature = float(self.schedule(self.num_steps))
        self.module.set_temperature(self.temperature)

    def metrics(self) -> dict[str, float]:
        """``value``: the temperature of the next step."""
        return {"value": self.temperature}


class MIHook(TrainingHook):
    """Train the ``Q`` network of :class:`~pyro_spvae.infer.MIRegularizedELBO` with the model (its
    parameters in the optimiser, its weights in the checkpoints); logs the bound of each code on
    the last training batch (nats, this process's last shard).

    :param elbo: the regularised estimator.
    """

    name = "mi"

    def __init__(self, elbo: MIRegularizedELBO) -> None:
        self.elbo = check_instance("elbo", elbo, MIRegularizedELBO, "pyro_spvae.infer.MIRegularizedELBO")

    def modules(self) -> list[torch.nn.Module]:
        return [self.elbo.q] if isinstance(self.elbo.q, CodePosteriorNet) else []

    def metrics(self) -> dict[str, float]:
        return dict(self.elbo.last_bounds)


def unwrap_elbos(elbo: ELBO) -> list[ELBO]:
    """``elbo`` and the estimators it wraps (``.elbo`` of :class:`~pyro_spvae.infer.GECO` and
    :class:`~pyro_spvae.infer.MIRegularizedELBO`), outermost first."""
    chain = [elbo]
    while isinstance(chain[-1], (GECO, MIRegularizedELBO)):
        chain.append(chain[-1].elbo)
    return chain


def hooks_for(elbo: ELBO) -> list[TrainingHook]:
    """The hooks the estimator ``elbo`` needs in a trainer (one per GECO, capacity objective and
    regulariser with a ``Q`` network, wrappers included)."""
    hooks: list[TrainingHook] = []
    for e in unwrap_elbos(elbo):
        if isinstance(e, GECO):
            hooks.append(GECOHook(e))
        elif isinstance(e, CapacityELBO):
            hooks.append(CapacityHook(e))
        elif isinstance(e, MIRegularizedELBO):
            hooks.append(MIHook(e))
    return hooks


def validation_elbo(elbo: ELBO) -> ELBO:
    """The estimator a trainer validates with when none is given: the innermost ELBO under
    :class:`~pyro_spvae.infer.GECO` and :class:`~pyro_spvae.infer.MIRegularizedELBO` (the
    unconstrained, unregularised bound), and ``Trace_ELBO`` for :class:`~pyro_spvae.infer.CapacityELBO`
    (whose objective moves with its schedule; with a relaxed code in eval mode it is the ELBO of the
    categorical model)."""
    inner = unwrap_elbos(elbo)[-1]
    if isinstance(inner, CapacityELBO):
        mpn = inner.max_plate_nesting
        kw = {"num_particles": inner.num_particles, "vectorize_particles": inner.vectorize_particles}
        return Trace_ELBO(**kw, **({} if mpn == float("inf") else {"max_plate_nesting": int(mpn)}))
    return inner


def hook_metrics(hooks: Sequence[TrainingHook]) -> dict[str, float]:
    """``{"{hook}/{key}": value}`` of every hook (the metrics file writes NaN as ``null``)."""
    return {f"{h.name}/{key}": float(value) for h in hooks for key, value in h.metrics().items()}


def load_hooks_state(hooks: Sequence[TrainingHook], modules: Mapping[str, torch.nn.Module],
                     state: Mapping[str, Any], source: str) -> None:
    """Restore the hooks' states and modules from a trainer checkpoint ``state`` (entries
    ``"hooks"`` and ``"hook_modules"``).

    :raises ValueError: naming ``source`` when a hook's state or module is missing or does not fit.
    """
    if not hooks:
        return
    saved, weights = state.get("hooks") or {}, state.get("hook_modules") or {}
    missing = [h.name for h in hooks if h.name not in saved] + [k for k in modules if k not in weights]
    if missing:
        raise ValueError(f"{source} has no state for the training hooks {missing}: it was written by a run "
                         "with another estimator")
    try:
        for h in hooks:
            h.load_state_dict(saved[h.name])
        for key, module in modules.items():
            module.load_state_dict(weights[key])
    except (TypeError, ValueError, RuntimeError) as e:
        details = " ".join(str(e).split())
        raise ValueError(f"{source} holds a training-hook state that does not fit: {details}") from None
