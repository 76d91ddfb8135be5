"""The stages of one optimisation step over a global batch (:meth:`pyro_spvae.training.Trainer.step`).

The step follows :meth:`pyro.infer.SVI.step` (parameters captured with
``poutine.trace(param_only=True)`` around ``elbo.loss_and_grads``), in named stages:

1. **sharding** (:func:`shard_losses_and_grads`): the global batch is split into shards whose
   randomness is keyed by ``(seed, step, shard)``; each shard's loss and gradients are accumulated,
   with sample sites outside the data plate scaled by ``1 / shards`` (:class:`ScaleGlobalSites`),
   and the checks of the shard's data run once (:func:`~pyro_spvae.validation_memo.checks_once`);
2. **all-reduce** (:func:`average_gradients`): gradients and loss are summed (``SUM``) across
   processes under ``torch.distributed`` and divided by the **global** batch size (estimators
   return losses summed over the data plate, so the update is that of the per-example loss
   whatever the batch size);
3. **NaN/Inf guard** (:func:`nonfinite_problem`, :class:`NonFiniteGuard`): a non-finite loss or
   gradient raises :class:`NonFiniteError` naming the step and the offending parameters, or skips
   the update with ``on_nonfinite="skip"``;
4. **optimiser step** (:func:`guarded_update`): the optimiser
   (:mod:`pyro_spvae.training.optimizer`: one torch optimiser configured by the Pyro optimiser) is
   applied to the captured parameters, and the guard checks the updated parameters too (a finite
   gradient times a huge learning rate overflows): with ``"skip"`` the parameters and the optimiser
   state are restored to their values before the step (:class:`~pyro_spvae.training.optimizer.Snapshot`),
   with ``"raise"`` the step is named.

:func:`validation_loss` evaluates an estimator the same way, without gradients.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch
from pyro import poutine
from pyro.infer import ELBO
from pyro.poutine.messenger import Messenger

from pyro_spvae.training.distributed import DistributedContext, all_reduce_sum_
from pyro_spvae.training.optimizer import StepOptimizer
from pyro_spvae.training.seeding import derive_seed, seed_everything
from pyro_spvae.validation_memo import checks_once

__all__ = [
    "DATA_KEY",
    "VALID_KEY",
    "NonFiniteError",
    "NonFiniteGuard",
    "ScaleGlobalSites",
    "average_gradients",
    "check_owned",
    "clear_grads",
    "guarded_update",
    "nonfinite_parameters",
    "nonfinite_problem",
    "scale_grads_",
    "shard_losses_and_grads",
    "validation_loss",
]

#: Seed key separating validation noise from training-step noise.
VALID_KEY = (1 << 62) + 1
#: Sub-key of the data-transform generator within a shard.
DATA_KEY = 1

#: A global batch's shard (a slice of its positions) -> its examples (drawn with the given generator).
GetBatch = Callable[[slice, torch.Generator], torch.Tensor]


class NonFiniteError(FloatingPointError):
    """The loss or a gradient became NaN/Inf during training."""


class ScaleGlobalSites(Messenger):
    """Scale sample sites outside the data plate: with ``S`` shards per step a global latent would
    otherwise be counted ``S`` times in the summed loss (exact for estimators linear in the site
    log-densities, such as ``Trace_ELBO``)."""

    def __init__(self, scale: float, plate_name: str) -> None:
        super().__init__()
        self.scale = scale
        self.plate_name = plate_name

    def _process_message(self, msg: dict) -> None:
        if msg["type"] == "sample" and not any(f.name == self.plate_name for f in msg["cond_indep_stack"]):
            msg["scale"] = self.scale * msg["scale"]


def shard_losses_and_grads(
    elbo: ELBO,
    model: torch.nn.Module,
    guide: torch.nn.Module,
    shards: Sequence[tuple[int, slice]],
    get_batch: GetBatch,
    *,
    seed: int,
    step: int,
    num_shards: int,
    data_plate: str,
    device: torch.device,
) -> tuple[float, list[poutine.Trace]]:
    """Accumulate the gradients of this process's ``shards`` (``(shard number, positions)`` pairs of
    :func:`~pyro_spvae.training.distributed.shard_slices`) into ``.grad``.

    :returns: the summed loss of the shards and the parameter traces of their steps.
    """
    scale = ScaleGlobalSites(1.0 / num_shards, data_plate) if num_shards > 1 else contextlib.nullcontext()
    loss_sum = 0.0
    traces = []
    for k, sidx in shards:
        seed_everything(derive_seed(seed, step, k))
        gen = torch.Generator().manual_seed(derive_seed(seed, step, k, DATA_KEY))
        x = get_batch(sidx, gen).to(device)
        with warnings.catch_warnings():
            # Pyro warns on NaN losses; the guard reports them precisely.
            warnings.filterwarnings("ignore", message="Encountered (NaN|\\+/-Inf)")
            with scale, checks_once(), poutine.trace(param_only=True) as capture:
                loss = elbo.loss_and_grads(model, guide, x)
        if isinstance(loss, tuple):
            loss = loss[0]
        loss_sum += float(loss)
        traces.append(capture.trace)
    return loss_sum, traces


def clear_grads(params: Sequence[torch.Tensor]) -> None:
    """Drop the gradients of ``params`` (``None``, as ``zero_grad(set_to_none=True)``)."""
    for p in params:
        p.grad = None


def check_owned(named: Sequence[tuple[str, torch.Tensor]], owned_ids: set[int]) -> None:
    """:raises ValueError: when a captured parameter belongs to neither the model nor the guide
    (it could not be checkpointed); gradients are cleared first."""
    foreign = [name for name, p in named if id(p) not in owned_ids]
    if foreign:
        clear_grads([p for _, p in named])
        raise ValueError(
            f"parameters {foreign[:5]} are not parameters of the model or guide modules, so they "
            "could not be checkpointed: create them as module attributes (PyroModule/PyroParam or "
            "pyro.module-registered submodules) rather than with bare pyro.param calls"
        )


def average_gradients(
    params: Sequence[torch.Tensor], loss_sum: float, n: int, ctx: DistributedContext
) -> tuple[float, bool | None]:
    """Sum the gradients of ``params`` and ``loss_sum`` over processes (one flat all-reduce) and
    divide both by the global batch size ``n``; a missing gradient counts as zero.

    :returns: the loss per example of the global batch, and whether every gradient is finite when
        the division found out on the way (:func:`scale_grads_`), else ``None``.
    """
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    if not ctx.enabled:
        finite = scale_grads_(grads, n)
        for p, g in zip(params, grads):
            p.grad = g
        return loss_sum / n, finite
    dtype = grads[0].dtype if grads else torch.get_default_dtype()
    flat = torch.cat(
        [g.reshape(-1) for g in grads] + [torch.tensor([loss_sum], dtype=dtype, device=ctx.device)]
    )
    all_reduce_sum_(flat, ctx)
    flat.div_(n)
    offset = 0
    for p in params:
        p.grad = flat[offset : offset + p.numel()].view_as(p).clone()
        offset += p.numel()
    return float(flat[-1]), None


def scale_grads_(grads: Sequence[torch.Tensor], n: int) -> bool | None:
    """Divide ``grads`` by ``n`` in place.

    When they are all float32 on one device, one fused kernel (torch's AMP gradient unscaling,
    ``torch._amp_foreach_non_finite_check_and_unscale_``) multiplies them by ``1/n`` (as float32)
    and finds any NaN/Inf in the same pass over memory; otherwise they are divided by ``n`` (one
    ``foreach`` kernel; exact for float64).

    :returns: whether every entry is finite (fused path), or ``None`` (not checked).
    """
    if not grads:
        return True
    first, fused = grads[0], getattr(torch, "_amp_foreach_non_finite_check_and_unscale_", None)
    if fused is not None and all(g.dtype == torch.float32 and g.device == first.device for g in grads):
        found = torch.zeros(1, device=first.device)
        scale = torch.full((1,), 1.0 / n, device=first.device)
        fused(list(grads), found, scale)
        return not bool(found)
    torch._foreach_div_(list(grads), float(n))
    return None


def nonfinite_problem(named: Sequence[tuple[str, torch.Tensor]], loss: float,
                      grads_finite: bool | None = None) -> str | None:
    """What is non-finite in ``loss`` and the gradients of the ``(name, parameter)`` pairs, or
    ``None`` when everything is finite.

    :param grads_finite: whether every gradient is finite, when already known (from
        :func:`average_gradients`); ``None``: found out here. Fast path: NaN/Inf anywhere makes
        the sum of the gradient sums non-finite; only then are the parameters looked at one by
        one (which also clears the rare false alarm of a finite sum overflowing).
    """
    if grads_finite is None:
        grads_finite = not named or bool(torch.isfinite(torch.stack([p.grad.sum() for _, p in named]).sum()))
    finite = [True] * len(named)
    if not grads_finite:
        finite = [bool(torch.isfinite(p.grad).all()) for _, p in named]
    if math.isfinite(loss) and all(finite):
        return None
    what = []
    if not math.isfinite(loss):
        what.append(f"loss is {loss}")
    bad = [name for (name, _), ok in zip(named, finite) if not ok]
    if bad:
        what.append(f"non-finite gradients of {_shown(bad)}")
    return "; ".join(what)


def _shown(names: Sequence[str]) -> str:
    return ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")


def nonfinite_parameters(named: Sequence[tuple[str, torch.Tensor]]) -> str | None:
    """What is non-finite among the ``(name, parameter)`` pairs after an update, or ``None``.

    Same fast path as :func:`nonfinite_problem`: one sum of the parameter sums, looked at one by one
    only when it is not finite.
    """
    if not named or bool(torch.isfinite(torch.stack([p.detach().sum() for _, p in named]).sum())):
        return None
    bad = [name for name, p in named if not bool(torch.isfinite(p.detach()).all())]
    if not bad:
        return None
    return f"non-finite parameters after the update: {_shown(bad)} (is the learning rate too large?)"


def guarded_update(
    optimizer: StepOptimizer, named: Sequence[tuple[str, torch.Tensor]], *, undo: bool
) -> str | None:
    """Apply ``optimizer`` to the parameters of ``named`` and check them afterwards.

    :param undo: restore the parameters and the optimiser state when the update made a parameter
        non-finite (``on_nonfinite="skip"``; the snapshot is taken only then).
    :returns: the problem (see :func:`nonfinite_parameters`), or ``None``.
    """
    snapshot = optimizer.snapshot(named) if undo else None
    optimizer.step(named)
    problem = nonfinite_parameters(named)
    if problem is not None and snapshot is not None:
        optimizer.restore(snapshot)
    return problem


class NonFiniteGuard:
    """Raise or skip on a non-finite step, per ``on_nonfinite`` (``"raise"`` or ``"skip"``).

    :ivar skipped_steps: steps skipped so far (saved in checkpoints).
    :ivar consecutive: steps skipped in a row (reset by :meth:`passed`).
    """

    def __init__(self, on_nonfinite: str, max_consecutive_skips: int) -> None:
        self.on_nonfinite = on_nonfinite
        self.max_consecutive_skips = max_consecutive_skips
        self.skipped_steps = 0
        self.consecutive = 0

    def passed(self) -> None:
        """A step with finite loss and gradients."""
        self.consecutive = 0

    def failed(self, step: int, problem: str) -> None:
        """A step (0-based ``step``) whose update is dropped because of ``problem``.

        :raises NonFiniteError: with ``"raise"``, or after more than ``max_consecutive_skips``
            skipped steps in a row with ``"skip"``.
        """
        message = f"step {step + 1}: {problem}"
        self.consecutive += 1
        if self.on_nonfinite == "raise":
            raise NonFiniteError(
                message + ". Lower the learning rate, check the data, or pass on_nonfinite='skip' "
                "(--on-nonfinite skip) to skip such steps."
            )
        if self.consecutive > self.max_consecutive_skips:
            raise NonFiniteError(f"{message}; {self.consecutive} consecutive steps skipped, giving up")
        self.skipped_steps += 1


@torch.no_grad()
def validation_loss(
    elbo: ELBO, model: torch.nn.Module, guide: torch.nn.Module, data: Any, *, num_examples: int,
    batch_size: int, seed: int, ctx: DistributedContext,
) -> float:
    """Loss per example of the first ``num_examples`` examples of ``data`` under ``elbo``, in
    chunks of ``batch_size`` shared across processes. The noise of a chunk is keyed by
    ``(seed, chunk)``, so the value does not depend on the number of processes or on when it is
    computed. The model and guide run in ``eval()`` mode (their modes are restored after)."""
    modes = [(m, m.training) for m in (model, guide)]
    try:
        for m, _ in modes:
            m.eval()
        return _validation_loss(elbo, model, guide, data, num_examples, batch_size, seed, ctx)
    finally:
        for m, mode in modes:
            m.train(mode)


def _validation_loss(elbo: ELBO, model: torch.nn.Module, guide: torch.nn.Module, data: Any, num_examples: int,
                     batch_size: int, seed: int, ctx: DistributedContext) -> float:
    chunks = torch.arange(num_examples).split(batch_size)
    total = torch.zeros(2, dtype=torch.float64, device=ctx.device)
    for c in range(ctx.rank, len(chunks), ctx.world_size):
        seed_everything(derive_seed(seed, VALID_KEY, c))
        gen = torch.Generator().manual_seed(derive_seed(seed, VALID_KEY, c, DATA_KEY))
        x = data.batch(chunks[c], gen).to(ctx.device)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Encountered (NaN|\\+/-Inf)")
            with checks_once():
                loss = elbo.loss(model, guide, x)
        if isinstance(loss, tuple):
            loss = loss[0]
        total[0] += float(loss)
        total[1] += x.shape[0]
    all_reduce_sum_(total, ctx)
    return float(total[0] / total[1])
