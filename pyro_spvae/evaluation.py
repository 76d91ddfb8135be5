"""Evaluation of trained models: the importance-sampled log-likelihood of held-out data, as a
Python API (the ``pyro-spvae evaluate`` command is a thin wrapper around :func:`evaluate_run`).

The estimator follows the model:

- an SPN of VAE leaves (any model satisfying the protocol
  :class:`pyro_spvae.infer.spn_leaves.SPNLeafModel`, such as SPVAE) gets the paper's evaluation,
  :func:`pyro_spvae.infer.spn_log_likelihood`: leaf-averaged importance weights with
  ``num_samples`` samples per leaf pushed through the SPN (Tan & Peharz 2019, Table 1; see
  ``docs/spvae.md``). There is no single weight vector per example, so PSIS k-hat and the
  effective sample size are not defined;
- any other model gets :func:`pyro_spvae.infer.log_marginal_likelihood`: ``num_samples`` importance
  samples from the guide per example (the IWAE bound of Burda et al. 2016) with PSIS k-hat
  diagnostics (Vehtari et al. 2024) and effective sample sizes (see ``docs/estimators.md``).

Examples are sharded across the processes of a ``torch.distributed`` group and gathered, so every
process returns the full :class:`EvaluationReport`. With ``memory_budget``, settings whose largest
tensors would not fit (:func:`~pyro_spvae.training.memory.estimate_eval_bytes`) are refused before
any work; :func:`write_report` writes ``eval.json`` atomically.
"""

from __future__ import annotations

import dataclasses
import json
import math
import platform
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from pyro_spvae.infer.log_likelihood import KHAT_THRESHOLD, log_marginal_likelihood
from pyro_spvae.infer.spn_bounds import SPNLeafModel, spn_log_likelihood
from pyro_spvae.training import (
    DistributedContext,
    atomic_write_text,
    gather_concat,
    model_max_plate_nesting,
    rank_slice,
    restore_run,
    seed_everything,
)
from pyro_spvae.training.memory import check_memory, estimate_eval_bytes
from pyro_spvae.validation import check_nonnegative_int, check_positive_int, check_tensor

__all__ = ["ESTIMATORS", "EvaluationReport", "estimator_for", "evaluate", "evaluate_run", "write_report"]

#: Receives notes for the user (a large memory estimate, a corrupt checkpoint passed over).
Notify = Callable[[str], object]

#: Names of the estimators :func:`evaluate` picks from (see the module docstring).
ESTIMATORS: tuple[str, ...] = ("iwae", "spn-leaf-iw")


def estimator_for(model: Any) -> str:
    """``"spn-leaf-iw"`` for a model satisfying :class:`~pyro_spvae.infer.spn_leaves.SPNLeafModel`
    (an SPN of VAE leaves), else ``"iwae"``."""
    return "spn-leaf-iw" if isinstance(model, SPNLeafModel) else "iwae"


@dataclass(frozen=True, eq=False)
class EvaluationReport:
    """Per-example log-likelihood estimates and their summary (the content of ``eval.json``).

    :ivar log_px: ``(N,)`` float64 estimates of ``log p(x_i)`` in nats (lower bounds in expectation).
    :ivar khat: ``(N,)`` PSIS k-hat, or ``None`` for the SPN-aware estimator.
    :ivar ess: ``(N,)`` effective sample sizes, or ``None`` for the SPN-aware estimator.
    :ivar estimator: one of :data:`ESTIMATORS`.
    :ivar num_samples: importance samples per example (per leaf for ``"spn-leaf-iw"``).
    :ivar event_dim: number of dimensions ``D`` of one example (for bits per dimension).
    :ivar processes: number of processes that shared the examples.
    :ivar run: the run directory (``None`` outside :func:`evaluate_run`).
    :ivar checkpoint: file name of the restored checkpoint (``None`` outside :func:`evaluate_run`).
    :ivar step: training step of that checkpoint (``None`` outside :func:`evaluate_run`).
    :ivar split: the evaluated split (``None`` outside :func:`evaluate_run`).
    """

    log_px: torch.Tensor
    khat: torch.Tensor | None
    ess: torch.Tensor | None
    estimator: str
    num_samples: int
    event_dim: int
    processes: int = 1
    run: str | None = None
    checkpoint: str | None = None
    step: int | None = None
    split: str | None = None

    @property
    def num_examples(self) -> int:
        return int(self.log_px.numel())

    @property
    def log_likelihood_nats(self) -> float:
        """Mean estimate of ``log p(x)`` per example (nats)."""
        return float(self.log_px.mean())

    @property
    def log_likelihood_stderr(self) -> float:
        """Standard error of :attr:`log_likelihood_nats` over the examples (``nan`` for one)."""
        n = self.num_examples
        return float(self.log_px.std() / math.sqrt(n)) if n > 1 else float("nan")

    @property
    def nll_nats(self) -> float:
        """Negative log-likelihood per example (nats)."""
        return -self.log_likelihood_nats

    @property
    def bits_per_dim(self) -> float:
        """:attr:`nll_nats` divided by ``D ln 2``."""
        return self.nll_nats / (self.event_dim * math.log(2))

    def khat_summary(self) -> dict[str, Any] | None:
        """Mean, median and max of the finite k-hats, how many are not finite, and the fraction
        above :data:`~pyro_spvae.infer.log_likelihood.KHAT_THRESHOLD` (``None`` without k-hat)."""
        if self.khat is None:
            return None
        khat = self.khat
        finite = khat[torch.isfinite(khat)]
        some = finite.numel() > 0
        return {
            "mean": float(finite.mean()) if some else None,
            "median": float(finite.median()) if some else None,
            "max": float(finite.max()) if some else None,
            "num_nonfinite": int((~torch.isfinite(khat)).sum()),
            "threshold": KHAT_THRESHOLD,
            "fraction_above_threshold": float((khat > KHAT_THRESHOLD).double().mean()),
        }

    def ess_summary(self) -> dict[str, float] | None:
        """Mean, minimum and median effective sample size (``None`` without one)."""
        if self.ess is None:
            return None
        ess = self.ess
        return {"mean": float(ess.mean()), "min": float(ess.min()), "median": float(ess.median())}

    def to_dict(self) -> dict[str, Any]:
        """The ``eval.json`` content (with the torch and Python versions of this process)."""
        return {
            "run": self.run,
            "checkpoint": self.checkpoint,
            "step": self.step,
            "split": self.split,
            "num_examples": self.num_examples,
            "num_samples": self.num_samples,
            "log_likelihood_nats": self.log_likelihood_nats,
            "log_likelihood_stderr": self.log_likelihood_stderr,
            "nll_nats": self.nll_nats,
            "bits_per_dim": self.bits_per_dim,
            "khat": self.khat_summary(),
            "estimator": self.estimator,
            "ess": self.ess_summary(),
            "processes": self.processes,
            "torch": torch.__version__,
            "python": platform.python_version(),
        }

    def to_json(self) -> str:
        """:meth:`to_dict` as indented JSON (one trailing newline), as written to ``eval.json``."""
        return json.dumps(self.to_dict(), indent=2) + "\n"

    def summary(self) -> dict[str, float]:
        """The headline numbers: ``log_likelihood_nats``, ``nll_nats`` and ``bits_per_dim``."""
        return {"log_likelihood_nats": self.log_likelihood_nats, "nll_nats": self.nll_nats,
                "bits_per_dim": self.bits_per_dim}

    def describe(self) -> str:
        """A short summary for people: the estimate with its standard error and bits per dimension,
        then the PSIS diagnosis (Vehtari et al. 2024; ``docs/estimators.md``): the fraction of
        examples whose k-hat exceeds :data:`~pyro_spvae.infer.log_likelihood.KHAT_THRESHOLD` and
        what that means for the estimate.

        :returns: a few lines of text (no trailing newline).
        """
        per = " per leaf" if self.estimator == "spn-leaf-iw" else ""
        where = f" {self.split}" if self.split else ""
        lines = [f"log p(x) = {self.log_likelihood_nats:.2f} +- {self.log_likelihood_stderr:.2f} nats per "
                 f"example ({self.bits_per_dim:.4f} bits/dim) on {self.num_examples}{where} examples, "
                 f"{self.num_samples} importance samples{per} (estimator {self.estimator!r})"]
        if self.khat is None:
            lines.append("PSIS k-hat: not defined for this estimator (no single weight vector per example).")
            return "\n".join(lines)
        above = int((self.khat > KHAT_THRESHOLD).sum())
        lines.append(f"PSIS k-hat > {KHAT_THRESHOLD}: {above / self.num_examples:.1%} of the examples "
                     f"({above} of {self.num_examples}).")
        if above:
            lines.append(f"The estimate is unreliable for those examples: their importance weights are too "
                         f"heavy-tailed for {self.num_samples} samples, so more samples or a proposal closer "
                         "to the posterior (a better-trained guide) are needed.")
        else:
            lines.append("Every k-hat is at most the threshold: the importance weights are light-tailed "
                         "enough for the estimate to be reliable.")
        return "\n".join(lines)


def _examples(data: Any, max_examples: int | None, seed: int | None) -> torch.Tensor:
    """The first ``max_examples`` examples of a tensor or a dataset (noise of a stochastic
    transform drawn from a generator seeded with ``seed``)."""
    if isinstance(data, torch.Tensor):
        x = data
        if x.dim() < 1:
            raise ValueError("data must have a batch dimension, got a 0-d tensor")
        return x if max_examples is None else x[:max_examples]
    if not (hasattr(data, "batch") and hasattr(data, "__len__")):
        raise TypeError(
            f"data must be a tensor or a dataset with batch(idx, generator), got {type(data).__name__}"
        )
    n = len(data) if max_examples is None else min(max_examples, len(data))
    gen = torch.Generator().manual_seed(seed) if seed is not None else None
    return check_tensor("data.batch(...)", data.batch(torch.arange(n), gen))


def _check_budget(x: torch.Tensor, budget: int, notify: Notify | None, **settings: Any) -> None:
    """Refuse an evaluation of ``x`` whose largest tensors exceed ``budget`` bytes (a note to
    ``notify`` when they are large but fit); see :func:`~pyro_spvae.training.memory.estimate_eval_bytes`."""
    settings["batch_size"] = min(settings["batch_size"], x.shape[0])
    note = check_memory(*estimate_eval_bytes(x.shape[1:], **settings), budget)
    if note is not None and notify is not None:
        notify(note)


def _per_example(model: Any, guide: Any, x: torch.Tensor, estimator: str, *, num_samples: int,
                 batch_size: int, chunk_size: int | None, psis: bool, progress: bool) -> torch.Tensor:
    """``(N, 3)`` float64: ``log p(x_i)``, k-hat and ESS (NaN for the SPN-aware estimator)."""
    if estimator == "spn-leaf-iw":
        with torch.no_grad():
            log_px = torch.cat([spn_log_likelihood(model, guide, xb, num_samples=num_samples,
                                                   chunk_size=chunk_size) for xb in x.split(batch_size)])
        nan = torch.full_like(log_px, float("nan"))
        return torch.stack([log_px, nan, nan], -1).to(torch.float64)
    res = log_marginal_likelihood(model, guide, x, num_samples=num_samples, chunk_size=chunk_size,
                                  batch_size=batch_size, progress=progress, psis=psis,
                                  max_plate_nesting=model_max_plate_nesting(model))
    return torch.stack([res.log_px, res.khat, res.ess], -1).to(torch.float64)


def evaluate(
    model: Any,
    guide: Any,
    data: Any,
    *,
    num_samples: int = 5000,
    batch_size: int = 100,
    chunk_size: int | None = None,
    max_examples: int | None = None,
    psis: bool = True,
    seed: int | None = 0,
    progress: bool = False,
    distributed: DistributedContext | None = None,
    memory_budget: int | None = None,
    notify: Notify | None = None,
) -> EvaluationReport:
    """Importance-sampled ``log p(x)`` of each example, with the estimator of
    :func:`estimator_for` (see the module docstring).

    :param model: a model following the model contract (observation site ``"x"`` in a data plate),
        on the device of ``distributed``.
    :param guide: its guide.
    :param data: examples ``(N, *event_shape)``, or a dataset with ``__len__`` and
        ``batch(idx, generator)`` (e.g. :class:`pyro_spvae.data.ImageDataset`).
    :param num_samples: importance samples per example (per leaf for an SPN of VAEs).
    :param batch_size: examples per pass.
    :param chunk_size: importance samples per pass (memory ``~ chunk_size * batch_size``), or
        ``None`` (default): the evaluators pick the pass shape from a per-pass memory budget that
        keeps it in the CPU's cache (:func:`~pyro_spvae.infer.log_likelihood.pass_shape`,
        :func:`~pyro_spvae.infer.spn_likelihood.leaf_pass_shape`).
    :param max_examples: evaluate the first examples only (``None``: all).
    :param psis: compute PSIS k-hat (generic estimator only).
    :param seed: seeds the dataset's transform noise and then, offset by the rank, every global
        generator (``None``: neither; the current random state is used).
    :param progress: show a progress bar (rank 0 only).
    :param distributed: process group sharing the examples (default: one process).
    :param memory_budget: refuse settings estimated to need more bytes (``None``: no check).
    :param notify: receives a note when the estimate is large but fits.
    :raises TypeError: for arguments of the wrong type; :raises ValueError: for invalid values.
    :raises pyro_spvae.training.MemoryBudgetError: when the estimate exceeds ``memory_budget``.
    """
    for name, value in (("num_samples", num_samples), ("batch_size", batch_size), ("chunk_size", chunk_size)):
        if value is not None or name != "chunk_size":
            check_positive_int(name, value)
    if max_examples is not None:
        check_positive_int("max_examples", max_examples)
    if seed is not None:
        check_nonnegative_int("seed", seed)
    ctx = distributed or DistributedContext()
    x = _examples(data, max_examples, seed)
    if memory_budget is not None:
        _check_budget(x, memory_budget, notify, batch_size=batch_size, chunk_size=chunk_size,
                      num_samples=num_samples, psis=psis, device=ctx.device)
    mine = x[rank_slice(x.shape[0], ctx)].to(ctx.device)
    if seed is not None:
        seed_everything(seed + ctx.rank)
    estimator = estimator_for(model)
    fields = torch.zeros(0, 3, dtype=torch.float64, device=ctx.device)
    if mine.shape[0]:
        fields = _per_example(model, guide, mine, estimator, num_samples=num_samples, batch_size=batch_size,
                              chunk_size=chunk_size, psis=psis, progress=progress and ctx.is_main)
        fields = fields.to(ctx.device)
    log_px, khat, ess = gather_concat(fields, ctx).cpu().unbind(-1)
    generic = estimator == "iwae"
    return EvaluationReport(log_px=log_px, khat=khat if generic else None, ess=ess if generic else None,
                            estimator=estimator, num_samples=num_samples, event_dim=math.prod(x.shape[1:]),
                            processes=ctx.world_size)


def evaluate_run(
    run_dir: str | Path,
    *,
    which: str = "best",
    split: str = "test",
    num_samples: int = 5000,
    batch_size: int = 100,
    chunk_size: int | None = None,
    max_examples: int | None = None,
    psis: bool = True,
    seed: int | None = 0,
    progress: bool = False,
    distributed: DistributedContext | None = None,
    memory_budget: int | None = None,
    notify: Notify | None = None,
) -> EvaluationReport:
    """:func:`evaluate` a trained run directory: its (model, guide) with the ``which`` checkpoint
    on the ``split`` of its dataset (the other arguments are those of :func:`evaluate`).

    :param run_dir: a directory written by ``pyro-spvae train`` (see
        :func:`pyro_spvae.training.restore_run`).
    :param which: ``"best"`` (best validation loss, else the latest) or ``"last"``.
    :param split: ``"train"``, ``"valid"`` or ``"test"``.
    :param notify: also receives the problem of a corrupt checkpoint passed over for its previous
        version (see :func:`~pyro_spvae.training.restore_run`).
    :returns: the report, with ``run``, ``checkpoint``, ``step`` and ``split`` filled in.
    :raises pyro_spvae.training.RunError: when the run cannot be restored, or the settings exceed
        ``memory_budget``.
    """
    restored = restore_run(run_dir, which, split)
    for problem in restored.problems if notify is not None else ():
        notify(f"{problem}; using {restored.checkpoint.name} instead")
    ctx = distributed or DistributedContext()
    restored.model.to(ctx.device)
    restored.guide.to(ctx.device)
    report = evaluate(restored.model, restored.guide, restored.data, num_samples=num_samples,
                      batch_size=batch_size, chunk_size=chunk_size, max_examples=max_examples, psis=psis,
                      seed=seed, progress=progress, distributed=ctx, memory_budget=memory_budget,
                      notify=notify)
    return dataclasses.replace(report, run=str(Path(run_dir)), checkpoint=restored.checkpoint.name,
                               step=int(restored.state["step"]), split=split)


def write_report(report: EvaluationReport, path: str | Path) -> Path:
    """Write ``report`` as JSON (:meth:`EvaluationReport.to_json`) to ``path`` atomically: a failed
    write leaves the previous file intact (see :func:`~pyro_spvae.training.atomic_write`).

    :raises OSError: when the file cannot be written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write_text(path, report.to_json())
