"""Validation bookkeeping: the best loss (for ``best.pt``), early stopping and reduce-on-plateau
learning rates (the scale applied to every parameter group of the step's optimiser)."""

from __future__ import annotations

import math
from typing import Any

from pyro_spvae.training.optimizer import StepOptimizer
from pyro_spvae.training.settings import EarlyStopping

__all__ = ["PlateauTracker", "apply_lr_scale", "current_lr"]


class PlateauTracker:
    """Follows the validation loss under an :class:`~pyro_spvae.training.EarlyStopping` policy.

    Improvements for the patience counters are measured from the last one that counted (as
    torch's ``ReduceLROnPlateau`` does), so slow steady progress still adds up, while the best
    loss follows every decrease.

    :ivar best_valid_loss: lowest validation loss so far (``inf`` before the first).
    :ivar best_step: step at which it was reached (``-1`` before the first).
    :ivar bad_checks: validations without a counted improvement (early stopping).
    :ivar lr_bad_checks: the same since the last learning-rate decay.
    :ivar ref_valid_loss: the last validation loss that counted as an improvement.
    :ivar lr_scale: product of the learning-rate decays so far.
    :ivar stopped_early: whether ``patience`` ran out.
    """

    #: Checkpoint keys of :meth:`state_dict` (top-level keys of the trainer's checkpoint).
    KEYS = ("best_valid_loss", "best_step", "bad_checks", "lr_bad_checks", "ref_valid_loss", "lr_scale",
            "stopped_early")

    def __init__(self, policy: EarlyStopping) -> None:
        if not isinstance(policy, EarlyStopping):
            raise TypeError(f"early_stopping must be an EarlyStopping, got {type(policy).__name__}")
        self.policy = policy
        self.best_valid_loss = math.inf
        self.best_step = -1
        self.bad_checks = 0
        self.lr_bad_checks = 0
        self.ref_valid_loss = math.inf
        self.lr_scale = 1.0
        self.stopped_early = False

    def record_best(self, step: int, valid_loss: float) -> bool:
        """First half of a validation: follow the lowest loss.

        :returns: whether ``valid_loss`` is a new best (the caller then writes ``best.pt``, before
            :meth:`count` updates the patience counters).
        """
        if valid_loss < self.best_valid_loss:
            self.best_valid_loss, self.best_step = valid_loss, step
            return True
        return False

    def count(self, valid_loss: float) -> None:
        """Second half of a validation: update the patience counters, stop early when
        ``patience`` runs out and decay :attr:`lr_scale` when ``lr_patience`` does."""
        ref = self.ref_valid_loss
        margin = self.policy.min_rel_improvement * abs(ref) if math.isfinite(ref) else 0.0
        if valid_loss < ref - margin:
            self.ref_valid_loss = valid_loss
            self.bad_checks = self.lr_bad_checks = 0
            return
        self.bad_checks += 1
        self.lr_bad_checks += 1
        if self.policy.patience is not None and self.bad_checks >= self.policy.patience:
            self.stopped_early = True
        if self.policy.lr_decay is not None and self.lr_bad_checks >= self.policy.lr_patience:
            self.lr_scale *= self.policy.lr_decay
            self.lr_bad_checks = 0

    def state_dict(self) -> dict[str, Any]:
        """The counters, as plain values."""
        return {key: getattr(self, key) for key in self.KEYS}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` (checkpoints older than the learning-rate decay lack
        ``lr_bad_checks``, ``ref_valid_loss`` and ``lr_scale``: their neutral values are used)."""
        self.best_valid_loss = float(state["best_valid_loss"])
        self.best_step = int(state["best_step"])
        self.bad_checks = int(state["bad_checks"])
        self.lr_bad_checks = int(state.get("lr_bad_checks", 0))
        self.ref_valid_loss = float(state.get("ref_valid_loss", self.best_valid_loss))
        self.lr_scale = float(state.get("lr_scale", 1.0))
        self.stopped_early = bool(state["stopped_early"])


def apply_lr_scale(optimizer: StepOptimizer, scale: float) -> None:
    """Set every parameter group's rate to its initial rate times ``scale`` (groups created since
    the last call included; the initial rate is kept as ``initial_lr``, as torch's schedulers do,
    and travels with the optimiser state in checkpoints)."""
    for opt in optimizer.torch_optimizers():
        for group in opt.param_groups:
            if "lr" in group:
                group.setdefault("initial_lr", group["lr"])
                group["lr"] = group["initial_lr"] * scale


def current_lr(optimizer: StepOptimizer) -> float | list[float] | None:
    """Learning rate(s) of the step's optimiser (a sorted list when parameter groups differ; before
    the first step, the rate its Pyro optimiser is configured with)."""
    lrs = sorted({g["lr"] for o in optimizer.torch_optimizers() for g in o.param_groups if "lr" in g})
    args = optimizer.optim.pt_optim_args
    if not lrs and isinstance(args, dict):
        lr = args.get("lr")
        return float(lr) if lr is not None else None
    if not lrs:
        return None
    return lrs[0] if len(lrs) == 1 else lrs
