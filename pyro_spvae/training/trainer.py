"""SVI training loop for any ``pyro.infer.ELBO``: sharded/data-parallel steps, NaN guard,
validation with early stopping, atomic checkpoints with exact resume, JSON-lines metrics.

The step follows :meth:`pyro.infer.SVI.step` (parameters captured with
``poutine.trace(param_only=True)`` around ``elbo.loss_and_grads``), then

1. divides the gradients by the **global** batch size (estimators return losses summed over the
   data plate, so the update is that of the per-example loss whatever the batch size),
2. all-reduces (``SUM``) gradients and loss across processes under ``torch.distributed``,
3. checks loss and gradients for NaN/Inf (raise :class:`NonFiniteError` naming the step and the
   offending parameters, or skip the update with ``on_nonfinite="skip"``),
4. applies the Pyro optimiser.
"""

from __future__ import annotations

import contextlib
import math
import sys
import time
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Protocol

import pyro
import torch
from pyro import poutine
from pyro.infer import ELBO
from pyro.nn import PyroModule
from pyro.optim import PyroOptim
from pyro.poutine.messenger import Messenger
from tqdm.auto import tqdm

from pyro_spvae.validation import check_unit_interval
from pyro_spvae.training.checkpoint import (
    capture_rng_state,
    load_checkpoint,
    remove_stale_temporaries,
    restore_rng_state,
    save_checkpoint,
)
from pyro_spvae.training.distributed import (
    DistributedContext,
    all_reduce_sum_,
    barrier,
    broadcast_parameters,
    shards_for_rank,
)
from pyro_spvae.training.metrics import MetricsWriter
from pyro_spvae.training.seeding import derive_seed, seed_everything

__all__ = ["BatchSource", "NonFiniteError", "TrainResult", "Trainer", "release_foreign_params"]

#: Seed key separating validation noise from training-step noise.
_VALID_KEY = (1 << 62) + 1
#: Sub-key of the data-transform generator within a shard.
_DATA_KEY = 1

CHECKPOINT_NAME = "checkpoint.pt"
BEST_NAME = "best.pt"
METRICS_NAME = "metrics.jsonl"


class NonFiniteError(FloatingPointError):
    """The loss or a gradient became NaN/Inf during training."""


class BatchSource(Protocol):
    """What the trainer needs from a dataset (``pyro_spvae.data.ImageDataset`` satisfies it)."""

    def __len__(self) -> int: ...

    def batch(self, idx: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor: ...


@dataclass
class TrainResult:
    """Summary of :meth:`Trainer.fit`.

    :ivar step: number of optimisation steps completed (including skipped ones).
    :ivar epoch: number of completed passes over the training data.
    :ivar train_loss: mean training loss per example over the last logging window.
    :ivar best_valid_loss: best validation loss per example (``inf`` without validation).
    :ivar best_step: step at which it was reached (-1 without validation).
    :ivar stopped_early: whether early stopping ended the run.
    :ivar skipped_steps: steps whose update was skipped for non-finite values.
    """

    step: int
    epoch: int
    train_loss: float
    best_valid_loss: float
    best_step: int
    stopped_early: bool
    skipped_steps: int


class _ScaleGlobalSites(Messenger):
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


def _param_fullnames(module: torch.nn.Module) -> dict[str, torch.Tensor]:
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


class Trainer:
    """Stochastic variational inference with checkpoints, validation and data parallelism.

    :param model: a ``PyroModule`` whose ``forward(x)`` is the Pyro model.
    :param guide: a ``PyroModule`` whose ``forward(x)`` samples the model's latent sites.
    :param elbo: any ``pyro.infer.ELBO`` (losses summed over the data plate).
    :param optim: a Pyro optimiser (e.g. ``pyro.optim.Adam``; per-parameter settings through a
        callable, see :func:`pyro_spvae.training.make_optimizer`).
    :param train_data: dataset with ``len()`` and ``batch(idx, generator)``.
    :param batch_size: the GLOBAL batch size (split across shards and processes).
    :param valid_data: optional validation dataset.
    :param valid_elbo: estimator for validation (default: ``elbo``).
    :param max_steps: stop after this many steps.
    :param max_epochs: stop after this many epochs (``len(train_data) // batch_size`` steps each).
    :param eval_every: validate every this many steps.
    :param patience: stop after this many validations without improvement (``None``: never).
    :param lr_decay: multiply every learning rate by this factor in ``(0, 1)`` after ``lr_patience``
        validations without improvement (reduce-on-plateau; ``None``: constant learning rates).
        Early stopping counts validations without improvement independently, so ``patience``
        larger than ``lr_patience`` leaves room for several decays.
    :param lr_patience: validations without improvement before each decay.
    :param min_rel_improvement: a validation counts as an improvement for ``patience`` and
        ``lr_patience`` only when it beats the best loss by more than this fraction of its
        magnitude (``0``: any decrease; ``best.pt`` always keeps the lowest loss). With a decaying
        learning rate, a small threshold such as ``1e-4`` stops noise-level gains from postponing
        early stopping indefinitely.
    :param valid_batch_size: batch size for validation (default ``batch_size``).
    :param valid_max_examples: evaluate only the first examples of ``valid_data``.
    :param seed: master seed; every step's randomness derives from ``(seed, step, shard)``.
    :param out_dir: run directory for ``checkpoint.pt``, ``best.pt`` and ``metrics.jsonl``
        (``None``: write nothing).
    :param checkpoint_every: write ``checkpoint.pt`` every this many steps (default ``eval_every``).
    :param log_every: write a metrics line every this many steps (and at every validation).
    :param on_nonfinite: ``"raise"`` (stop with :class:`NonFiniteError`) or ``"skip"`` (drop the
        update and continue).
    :param max_consecutive_skips: with ``"skip"``, raise after this many skipped steps in a row.
    :param progress: show a tqdm bar (default: on rank 0 when stderr is a terminal).
    :param num_shards: micro-batches per global batch (default: number of processes). Each shard
        draws its randomness from ``(seed, step, shard)``, so ``N`` processes and one process with
        the same ``num_shards`` produce the same parameters.
    :param data_plate: name of the data plate (sites outside it are scaled by ``1/num_shards``).
    :param config: plain-type dict stored in checkpoints.
    :param distributed: process-group context (default: single process).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        guide: torch.nn.Module,
        elbo: ELBO,
        optim: PyroOptim,
        train_data: BatchSource,
        *,
        batch_size: int,
        valid_data: BatchSource | None = None,
        valid_elbo: ELBO | None = None,
        max_steps: int | None = None,
        max_epochs: int | None = None,
        eval_every: int = 100,
        patience: int | None = None,
        lr_decay: float | None = None,
        lr_patience: int = 5,
        min_rel_improvement: float = 0.0,
        valid_batch_size: int | None = None,
        valid_max_examples: int | None = None,
        seed: int = 0,
        out_dir: str | Path | None = None,
        checkpoint_every: int | None = None,
        log_every: int = 50,
        on_nonfinite: str = "raise",
        max_consecutive_skips: int = 100,
        progress: bool | None = None,
        num_shards: int | None = None,
        data_plate: str = "data",
        config: dict[str, Any] | None = None,
        distributed: DistributedContext | None = None,
    ) -> None:
        for name, obj in (("model", model), ("guide", guide)):
            if not isinstance(obj, torch.nn.Module):
                raise TypeError(f"{name} must be a torch.nn.Module (PyroModule), got {type(obj).__name__}")
        if not isinstance(elbo, ELBO):
            raise TypeError(f"elbo must be a pyro.infer.ELBO instance, got {type(elbo).__name__}")
        if valid_elbo is not None and not isinstance(valid_elbo, ELBO):
            raise TypeError(f"valid_elbo must be a pyro.infer.ELBO instance, got {type(valid_elbo).__name__}")
        if not isinstance(optim, PyroOptim):
            raise TypeError(
                f"optim must be a pyro.optim.PyroOptim (e.g. pyro.optim.Adam), got {type(optim).__name__}"
            )
        for name, data in (("train_data", train_data), ("valid_data", valid_data)):
            if data is not None and not (hasattr(data, "batch") and hasattr(data, "__len__")):
                raise TypeError(
                    f"{name} must have __len__ and batch(idx, generator), got {type(data).__name__}"
                )

        def _check_int(name: str, value: Any, minimum: int, optional: bool = False) -> None:
            if value is None and optional:
                return
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")

        _check_int("batch_size", batch_size, 1)
        _check_int("max_steps", max_steps, 1, optional=True)
        _check_int("max_epochs", max_epochs, 1, optional=True)
        _check_int("eval_every", eval_every, 1)
        _check_int("patience", patience, 1, optional=True)
        _check_int("lr_patience", lr_patience, 1)
        if lr_decay is not None:
            check_unit_interval("lr_decay", lr_decay)
        check_unit_interval("min_rel_improvement", min_rel_improvement, closed_low=True)
        _check_int("valid_batch_size", valid_batch_size, 1, optional=True)
        _check_int("valid_max_examples", valid_max_examples, 1, optional=True)
        _check_int("seed", seed, 0)
        _check_int("checkpoint_every", checkpoint_every, 1, optional=True)
        _check_int("log_every", log_every, 1)
        _check_int("max_consecutive_skips", max_consecutive_skips, 1)
        _check_int("num_shards", num_shards, 1, optional=True)
        if max_steps is None and max_epochs is None:
            raise ValueError("give max_steps or max_epochs (or both) to bound training")
        if on_nonfinite not in ("raise", "skip"):
            raise ValueError(f"on_nonfinite must be 'raise' or 'skip', got {on_nonfinite!r}")
        n = len(train_data)
        if n < batch_size:
            raise ValueError(f"batch_size {batch_size} exceeds the {n} training examples")

        self.model = model
        self.guide = guide
        self.elbo = elbo
        self.valid_elbo = valid_elbo if valid_elbo is not None else elbo
        self.optim = optim
        self.train_data = train_data
        self.valid_data = valid_data
        self.batch_size = batch_size
        self.max_steps = max_steps
        self.max_epochs = max_epochs
        self.eval_every = eval_every
        self.patience = patience
        self.lr_decay = None if lr_decay is None else float(lr_decay)
        self.lr_patience = lr_patience
        self.min_rel_improvement = float(min_rel_improvement)
        self.valid_batch_size = valid_batch_size or batch_size
        self.valid_max_examples = valid_max_examples
        self.seed = seed
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.checkpoint_every = checkpoint_every or eval_every
        self.log_every = log_every
        self.on_nonfinite = on_nonfinite
        self.max_consecutive_skips = max_consecutive_skips
        self.ctx = distributed or DistributedContext()
        self.num_shards = num_shards or self.ctx.world_size
        if self.num_shards < self.ctx.world_size:
            raise ValueError(
                f"num_shards ({self.num_shards}) must be at least the number of processes "
                f"({self.ctx.world_size})"
            )
        if self.num_shards > batch_size:
            raise ValueError(f"num_shards ({self.num_shards}) exceeds batch_size ({batch_size})")
        self.data_plate = data_plate
        self.config = dict(config or {})
        if progress is None:
            progress = self.ctx.is_main and sys.stderr.isatty()
        self.progress = bool(progress) and self.ctx.is_main
        self.steps_per_epoch = n // batch_size
        limits = []
        if max_steps is not None:
            limits.append(max_steps)
        if max_epochs is not None:
            limits.append(max_epochs * self.steps_per_epoch)
        self.total_steps = min(limits)

        # Trainer-owned generator: shuffles each epoch.
        self.generator = torch.Generator().manual_seed(seed)
        self.step_count = 0
        self.epoch = 0
        self.position = 0
        self._perm: torch.Tensor | None = None
        self.best_valid_loss = math.inf
        self.best_step = -1
        self.bad_checks = 0
        self.lr_bad_checks = 0
        #: the last validation loss that counted as an improvement (``min_rel_improvement``)
        self.ref_valid_loss = math.inf
        #: product of the learning-rate decays so far (every rate is its initial value times this)
        self.lr_scale = 1.0
        self.skipped_steps = 0
        self._consecutive_skips = 0
        self.stopped_early = False
        self.wall_time = 0.0
        self.cpu_time = 0.0
        self.last_train_loss = math.nan

        self.metrics = MetricsWriter(
            (self.out_dir or Path(".")) / METRICS_NAME, enabled=self.out_dir is not None and self.ctx.is_main
        )
        self._check_param_names()
        self._sync_param_store()
        broadcast_parameters(
            [
                p
                for p in list(model.parameters()) + list(guide.parameters())
                if not isinstance(p, torch.nn.parameter.UninitializedParameter)
            ],
            self.ctx,
        )

    # ------------------------------------------------------------------ parameters
    def _check_param_names(self) -> None:
        clash = sorted(set(_param_fullnames(self.model)) & set(_param_fullnames(self.guide)))
        if clash:
            raise ValueError(
                f"model and guide share Pyro parameter names {clash[:5]}: give the guide (or model) a "
                f"distinct PyroModule name so their parameters do not overwrite each other"
            )

    def _owned_parameters(self) -> dict[int, torch.Tensor]:
        return {id(p): p for m in (self.model, self.guide) for p in m.parameters()}

    def _sync_param_store(self) -> None:
        release_foreign_params(self.model, self.guide)
        self._owned_ids = set(self._owned_parameters())

    # ------------------------------------------------------------------ step
    def _captured_params(self, traces: Iterable[poutine.Trace]) -> list[tuple[str, torch.Tensor]]:
        store = pyro.get_param_store()
        found: dict[int, torch.Tensor] = {}
        for tr in traces:
            for site in tr.nodes.values():
                p = site["value"].unconstrained()
                found[id(p)] = p
        named = [(store.param_name(p) or "", p) for p in found.values()]
        return sorted(named, key=lambda t: t[0])

    def _shard_step(
        self, n: int, get_batch: Callable[[torch.Tensor, torch.Generator], torch.Tensor]
    ) -> float:
        """One optimisation step over a global batch of ``n`` examples; returns loss per example
        (``nan`` when the step was skipped)."""
        step = self.step_count
        shards = shards_for_rank(torch.arange(n), self.num_shards, self.ctx)
        scale = (
            _ScaleGlobalSites(1.0 / self.num_shards, self.data_plate)
            if self.num_shards > 1
            else contextlib.nullcontext()
        )
        loss_sum = 0.0
        traces = []
        for k, sidx in shards:
            seed_everything(derive_seed(self.seed, step, k))
            gen = torch.Generator().manual_seed(derive_seed(self.seed, step, k, _DATA_KEY))
            x = get_batch(sidx, gen).to(self.ctx.device)
            with warnings.catch_warnings():
                # Pyro warns on NaN losses; the guard below reports them precisely.
                warnings.filterwarnings("ignore", message="Encountered (NaN|\\+/-Inf)")
                with scale, poutine.trace(param_only=True) as capture:
                    loss = self.elbo.loss_and_grads(self.model, self.guide, x)
            if isinstance(loss, tuple):
                loss = loss[0]
            loss_sum += float(loss)
            traces.append(capture.trace)
        named = self._captured_params(traces)
        params = [p for _, p in named]
        foreign = [name for name, p in named if id(p) not in self._owned_ids]
        if foreign:
            for p in params:
                p.grad = None
            raise ValueError(
                f"parameters {foreign[:5]} are not parameters of the model or guide modules, so they "
                "could not be checkpointed: create them as module attributes (PyroModule/PyroParam or "
                "pyro.module-registered submodules) rather than with bare pyro.param calls"
            )
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        if self.ctx.enabled:
            dtype = grads[0].dtype if grads else torch.get_default_dtype()
            flat = torch.cat(
                [g.reshape(-1) for g in grads]
                + [torch.tensor([loss_sum], dtype=dtype, device=self.ctx.device)]
            )
            all_reduce_sum_(flat, self.ctx)
            flat.div_(n)
            offset = 0
            for p in params:
                p.grad = flat[offset : offset + p.numel()].view_as(p).clone()
                offset += p.numel()
            loss_per_example = float(flat[-1])
        else:
            for p, g in zip(params, grads):
                p.grad = g.div_(n)
            loss_per_example = loss_sum / n

        # Fast check: NaN/Inf anywhere makes the sum non-finite; only then look parameter by
        # parameter (which also clears the rare false alarm of a finite sum overflowing).
        grads_finite = [True] * len(params)
        if params and not bool(torch.isfinite(torch.stack([p.grad.sum() for p in params]).sum())):
            grads_finite = [bool(torch.isfinite(p.grad).all()) for p in params]
        if not (math.isfinite(loss_per_example) and all(grads_finite)):
            bad = [name for (name, _), ok in zip(named, grads_finite) if not ok]
            for p in params:
                p.grad = None
            what = []
            if not math.isfinite(loss_per_example):
                what.append(f"loss is {loss_per_example}")
            if bad:
                shown = ", ".join(bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
                what.append(f"non-finite gradients of {shown}")
            message = f"step {step + 1}: " + "; ".join(what)
            self._consecutive_skips += 1
            if self.on_nonfinite == "raise":
                raise NonFiniteError(
                    message + ". Lower the learning rate, check the data, or pass on_nonfinite='skip' "
                    "(--on-nonfinite skip) to skip such steps."
                )
            if self._consecutive_skips > self.max_consecutive_skips:
                raise NonFiniteError(
                    f"{message}; {self._consecutive_skips} consecutive steps skipped, giving up"
                )
            self.skipped_steps += 1
            self.step_count += 1
            return math.nan
        self._consecutive_skips = 0
        self.optim(params)
        for p in params:
            p.grad = None
        self.step_count += 1
        return loss_per_example

    def step(self, x: torch.Tensor) -> float:
        """One optimisation step on the global batch ``x`` (this process's shards of it).

        :returns: the loss per example (``nan`` when the update was skipped).
        """
        if not isinstance(x, torch.Tensor) or x.dim() == 0 or x.shape[0] == 0:
            raise ValueError("x must be a tensor with a non-empty batch dimension")
        return self._shard_step(x.shape[0], lambda sidx, gen: x[sidx])

    # ------------------------------------------------------------------ validation
    @torch.no_grad()
    def evaluate(self, data: BatchSource | None = None, max_examples: int | None = None) -> float:
        """Validation loss per example of ``data`` (default: the validation set) under
        ``valid_elbo``, sharded across processes. Noise is keyed by the evaluation chunk so the
        value does not depend on the number of processes or on when it is computed."""
        data = data if data is not None else self.valid_data
        if data is None:
            raise ValueError("no validation data to evaluate")
        n = len(data)
        max_examples = max_examples if max_examples is not None else self.valid_max_examples
        if max_examples is not None:
            n = min(n, max_examples)
        chunks = torch.arange(n).split(self.valid_batch_size)
        total = torch.zeros(2, dtype=torch.float64, device=self.ctx.device)
        for c in range(self.ctx.rank, len(chunks), self.ctx.world_size):
            seed_everything(derive_seed(self.seed, _VALID_KEY, c))
            gen = torch.Generator().manual_seed(derive_seed(self.seed, _VALID_KEY, c, _DATA_KEY))
            x = data.batch(chunks[c], gen).to(self.ctx.device)
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="Encountered (NaN|\\+/-Inf)")
                loss = self.valid_elbo.loss(self.model, self.guide, x)
            if isinstance(loss, tuple):
                loss = loss[0]
            total[0] += float(loss)
            total[1] += x.shape[0]
        all_reduce_sum_(total, self.ctx)
        return float(total[0] / total[1])

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume exactly (weights-only loadable)."""
        optim_state = dict(getattr(self.optim, "_state_waiting_to_be_consumed", {}))
        optim_state.update(self.optim.get_state())
        return {
            "model": self.model.state_dict(),
            "guide": self.guide.state_dict(),
            "optimizer": optim_state,
            "rng": capture_rng_state(self.generator),
            "step": self.step_count,
            "epoch": self.epoch,
            "position": self.position,
            "perm": self._perm,
            "best_valid_loss": self.best_valid_loss,
            "best_step": self.best_step,
            "bad_checks": self.bad_checks,
            "lr_bad_checks": self.lr_bad_checks,
            "ref_valid_loss": self.ref_valid_loss,
            "lr_scale": self.lr_scale,
            "skipped_steps": self.skipped_steps,
            "stopped_early": self.stopped_early,
            "wall_time": self.wall_time,
            "cpu_time": self.cpu_time,
            "seed": self.seed,
            "batch_size": self.batch_size,
            "num_shards": self.num_shards,
            "config": self.config,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a :meth:`state_dict` (parameters, optimiser, generators, position).

        :raises ValueError: when the checkpoint was made with a different seed, batch size or
            number of shards (the resumed run could not continue the same trajectory).
        """
        for key, mine in (
            ("seed", self.seed),
            ("batch_size", self.batch_size),
            ("num_shards", self.num_shards),
        ):
            if key in state and state[key] != mine:
                hint = (
                    " (--shards sets it independently of the number of processes)"
                    if key == "num_shards"
                    else ""
                )
                raise ValueError(
                    f"checkpoint was written with {key}={state[key]}, this trainer has {key}={mine}{hint}"
                )
        self.model.load_state_dict(state["model"])
        self.guide.load_state_dict(state["guide"])
        self._sync_param_store()
        self.optim.set_state(state["optimizer"])
        restore_rng_state(state["rng"], self.generator)
        self.step_count = int(state["step"])
        self.epoch = int(state["epoch"])
        self.position = int(state["position"])
        self._perm = state["perm"]
        self.best_valid_loss = float(state["best_valid_loss"])
        self.best_step = int(state["best_step"])
        self.bad_checks = int(state["bad_checks"])
        self.lr_bad_checks = int(state.get("lr_bad_checks", 0))
        self.ref_valid_loss = float(state.get("ref_valid_loss", self.best_valid_loss))
        self.lr_scale = float(state.get("lr_scale", 1.0))
        self.skipped_steps = int(state["skipped_steps"])
        self.stopped_early = bool(state["stopped_early"])
        self.wall_time = float(state["wall_time"])
        self.cpu_time = float(state.get("cpu_time", 0.0))

    def save(self, path: str | Path) -> Path | None:
        """Atomically write a checkpoint (rank 0 only; other ranks return ``None``)."""
        if not self.ctx.is_main:
            return None
        return save_checkpoint(path, self.state_dict())

    def resume(self, path: str | Path | None = None) -> bool:
        """Load ``path`` (default ``out_dir/checkpoint.pt``) if it exists.

        :returns: whether a checkpoint was loaded.
        :raises pyro_spvae.training.CheckpointError: when it exists but is unreadable or unsafe.
        """
        if path is None:
            if self.out_dir is None:
                raise ValueError("resume() needs a path when the trainer has no out_dir")
            path = self.out_dir / CHECKPOINT_NAME
        path = Path(path)
        if self.ctx.is_main:
            remove_stale_temporaries(path.parent)
        barrier(self.ctx)
        if not path.exists():
            return False
        self.load_state_dict(load_checkpoint(path, map_location=self.ctx.device))
        self.metrics.truncate_after(self.step_count)
        return True

    # ------------------------------------------------------------------ loop
    def _apply_lr_scale(self) -> None:
        """Set every parameter group's rate to its initial rate times :attr:`lr_scale` (groups
        created since the last call included; the initial rate is kept as ``initial_lr``, as torch's
        schedulers do, and travels with the optimiser state in checkpoints)."""
        for opt in self.optim.optim_objs.values():
            for group in opt.param_groups:
                if "lr" in group:
                    group.setdefault("initial_lr", group["lr"])
                    group["lr"] = group["initial_lr"] * self.lr_scale

    def current_lr(self) -> float | list[float] | None:
        """Learning rate(s) of the optimiser (a list when parameter groups differ)."""
        lrs = sorted({g["lr"] for o in self.optim.optim_objs.values() for g in o.param_groups if "lr" in g})
        if not lrs and isinstance(self.optim.pt_optim_args, dict):
            lr = self.optim.pt_optim_args.get("lr")
            return float(lr) if lr is not None else None
        if not lrs:
            return None
        return lrs[0] if len(lrs) == 1 else lrs

    def _next_indices(self) -> torch.Tensor:
        if self._perm is None:
            self._perm = torch.randperm(len(self.train_data), generator=self.generator)
            self.position = 0
        b = self.batch_size
        return self._perm[self.position * b : (self.position + 1) * b]

    def _advance(self) -> None:
        self.position += 1
        if self.position >= self.steps_per_epoch:
            self.epoch += 1
            self.position = 0
            self._perm = None

    def _log_and_validate(
        self,
        step: int,
        do_eval: bool,
        window_loss: float,
        window_n: int,
        window_steps: int,
        window_time: float,
    ) -> None:
        valid_loss = None
        if do_eval:
            valid_loss = self.evaluate()
            # improvements for the patience counters are measured from the last one that counted
            # (as torch's ReduceLROnPlateau does), so slow steady progress still adds up
            ref = self.ref_valid_loss
            margin = self.min_rel_improvement * abs(ref) if math.isfinite(ref) else 0.0
            if valid_loss < self.best_valid_loss:
                self.best_valid_loss, self.best_step = valid_loss, step
                if self.out_dir is not None:
                    self.save(self.out_dir / BEST_NAME)
            if valid_loss < ref - margin:
                self.ref_valid_loss = valid_loss
                self.bad_checks = self.lr_bad_checks = 0
            else:
                self.bad_checks += 1
                self.lr_bad_checks += 1
                if self.patience is not None and self.bad_checks >= self.patience:
                    self.stopped_early = True
                if self.lr_decay is not None and self.lr_bad_checks >= self.lr_patience:
                    self.lr_scale *= self.lr_decay
                    self.lr_bad_checks = 0
        if self.lr_scale != 1.0:
            self._apply_lr_scale()
        self.last_train_loss = window_loss / window_n if window_n else math.nan
        self.metrics.write(
            {
                "step": step,
                "epoch": self.epoch + self.position / self.steps_per_epoch,
                "train_loss": self.last_train_loss,
                "valid_loss": valid_loss,
                "examples_per_s": window_steps * self.batch_size / max(window_time, 1e-9),
                "wall_time": self.wall_time,
                "cpu_time": self.cpu_time,
                "lr": self.current_lr(),
                "skipped_steps": self.skipped_steps,
            }
        )

    def fit(self) -> TrainResult:
        """Train until ``max_steps``/``max_epochs`` or early stopping, validating every
        ``eval_every`` steps, writing ``metrics.jsonl``, ``best.pt`` and ``checkpoint.pt``.

        Call :meth:`resume` first to continue an interrupted run.
        """
        bar = tqdm(
            total=self.total_steps,
            initial=self.step_count,
            disable=not self.progress,
            desc="train",
            dynamic_ncols=True,
        )
        window_loss, window_n, window_steps, window_time = 0.0, 0, 0, 0.0
        try:
            while self.step_count < self.total_steps and not self.stopped_early:
                t0, c0 = time.perf_counter(), time.process_time()
                idx = self._next_indices()
                loss = self._shard_step(
                    idx.numel(), lambda sidx, gen, idx=idx: self.train_data.batch(idx[sidx], gen)
                )
                self._advance()
                dt = time.perf_counter() - t0
                self.wall_time += dt
                self.cpu_time += time.process_time() - c0
                window_time += dt
                window_steps += 1
                if math.isfinite(loss):
                    window_loss += loss
                    window_n += 1
                step = self.step_count
                do_eval = self.valid_data is not None and (
                    step % self.eval_every == 0 or step == self.total_steps
                )
                do_log = do_eval or step % self.log_every == 0 or step == self.total_steps
                if self.progress and (step % 10 == 0 or do_log):
                    bar.set_postfix(
                        loss=f"{window_loss / max(window_n, 1):.2f}",
                        ex_s=f"{window_steps * self.batch_size / max(window_time, 1e-9):.0f}",
                    )
                bar.update(1)
                if do_log:
                    self._log_and_validate(step, do_eval, window_loss, window_n, window_steps, window_time)
                    window_loss, window_n, window_steps, window_time = 0.0, 0, 0, 0.0
                if self.out_dir is not None and (
                    step % self.checkpoint_every == 0 or step == self.total_steps or self.stopped_early
                ):
                    self.save(self.out_dir / CHECKPOINT_NAME)
        finally:
            bar.close()
        if self.out_dir is not None:
            if not (self.out_dir / CHECKPOINT_NAME).exists():
                self.save(self.out_dir / CHECKPOINT_NAME)
            if self.valid_data is None:
                self.save(self.out_dir / BEST_NAME)
        barrier(self.ctx)
        return TrainResult(
            step=self.step_count,
            epoch=self.epoch,
            train_loss=self.last_train_loss,
            best_valid_loss=self.best_valid_loss,
            best_step=self.best_step,
            stopped_early=self.stopped_early,
            skipped_steps=self.skipped_steps,
        )
