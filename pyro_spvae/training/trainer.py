"""SVI training loop for any ``pyro.infer.ELBO``: sharded/data-parallel steps, NaN guard,
validation with early stopping, atomic checkpoints with exact resume, JSON-lines metrics.

A :class:`Trainer` is built from grouped settings (:class:`~pyro_spvae.training.Schedule`,
:class:`~pyro_spvae.training.EarlyStopping`, :class:`~pyro_spvae.training.StepOptions`), or from a
whole run configuration with :meth:`Trainer.from_config`. One step runs the stages of
:mod:`pyro_spvae.training.step` (sharding, loss and gradients, all-reduce, NaN/Inf guard,
optimiser step); validation bookkeeping lives in :mod:`pyro_spvae.training.early_stopping`, the
checkpoints and exact resume in the base class :class:`~pyro_spvae.training.trainer_state.TrainerState`.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from pyro.infer import ELBO
from pyro.optim import PyroOptim
from tqdm import tqdm

from pyro_spvae.training.components import check_components
from pyro_spvae.training.config import TrainConfig
from pyro_spvae.training.distributed import (
    DistributedContext,
    barrier,
    broadcast_parameters,
    check_num_shards,
    shard_slices,
)
from pyro_spvae.training.early_stopping import PlateauTracker, apply_lr_scale, current_lr
from pyro_spvae.training.factory import make_objective, make_optimizer
from pyro_spvae.training.hooks import TrainingHook, hook_metrics, hooks_for, validation_elbo
from pyro_spvae.training.metrics import LossWindow, MetricsWriter, TrainResult
from pyro_spvae.training.optimizer import make_step_optimizer
from pyro_spvae.training.params import captured_params, check_distinct_param_names, release_foreign_params
from pyro_spvae.training.rundir import BEST_NAME, CHECKPOINT_NAME, METRICS_NAME
from pyro_spvae.training.sampler import BatchSource, EpochSampler
from pyro_spvae.training.settings import EarlyStopping, Schedule, StepOptions
from pyro_spvae.training.step import (
    GetBatch,
    NonFiniteGuard,
    average_gradients,
    check_owned,
    clear_grads,
    guarded_update,
    nonfinite_problem,
    shard_losses_and_grads,
    validation_loss,
)
from pyro_spvae.training.trainer_state import STATE_ENTRIES as STATE_ENTRIES  # re-exported: its old home
from pyro_spvae.training.trainer_state import TrainerState
from pyro_spvae.validation import check_instance, check_tensor

__all__ = ["BEST_NAME", "CHECKPOINT_NAME", "METRICS_NAME", "BatchSource", "TrainResult", "Trainer"]


class Trainer(TrainerState):
    """Stochastic variational inference with checkpoints, validation and data parallelism.

    :param model: a ``PyroModule`` whose ``forward(x)`` is the Pyro model.
    :param guide: a ``PyroModule`` whose ``forward(x)`` samples the model's latent sites.
    :param elbo: any ``pyro.infer.ELBO`` (losses summed over the data plate).
    :param optim: a Pyro optimiser (e.g. ``pyro.optim.Adam``; per-parameter settings through a
        callable, see :func:`pyro_spvae.training.make_optimizer`). It configures the step's
        optimiser, :attr:`optimizer`: one torch optimiser over all the parameters (fused kernels
        where torch has them) when the update is elementwise, as Pyro runs it otherwise (see
        :mod:`pyro_spvae.training.optimizer`); checkpoints hold Pyro's optimiser-state layout either way.
    :param train_data: dataset with ``len()`` and ``batch(idx, generator)``.
    :param schedule: batch size, length of training, validation/logging/checkpoint intervals.
    :param valid_data: optional validation dataset.
    :param valid_elbo: estimator for validation (default: ``elbo``, the bound inside a
        :class:`~pyro_spvae.infer.GECO` or an MI regulariser, ``Trace_ELBO`` for a capacity objective:
        :func:`~pyro_spvae.training.hooks.validation_elbo`); validation runs in ``eval()`` mode.
    :param early_stopping: patience and learning-rate decay (default: neither).
    :param options: seed, shards and NaN/Inf policy of the steps (default :class:`StepOptions`).
    :param out_dir: run directory for ``checkpoint.pt``, ``best.pt`` and ``metrics.jsonl``
        (``None``: write nothing).
    :param progress: show a tqdm bar (default: on rank 0 when stderr is a terminal).
    :param config: plain-type dict stored in checkpoints.
    :param distributed: process-group context (default: single process).
    :param hooks: per-step state of the estimator or the model (:mod:`pyro_spvae.training.hooks`:
        GECO's multiplier, capacity and temperature schedules, the MI regulariser's ``Q`` network),
        checkpointed and logged as ``{hook}/{metric}``; default: what ``elbo`` needs
        (:func:`~pyro_spvae.training.hooks.hooks_for`).
    :raises TypeError: for components or settings of the wrong kind.
    :raises ValueError: when the batch exceeds the training set, or the number of shards does not
        fit the batch and the processes.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        guide: torch.nn.Module,
        elbo: ELBO,
        optim: PyroOptim,
        train_data: BatchSource,
        schedule: Schedule,
        *,
        valid_data: BatchSource | None = None,
        valid_elbo: ELBO | None = None,
        early_stopping: EarlyStopping | None = None,
        options: StepOptions | None = None,
        out_dir: str | Path | None = None,
        progress: bool | None = None,
        config: dict[str, Any] | None = None,
        distributed: DistributedContext | None = None,
        hooks: Sequence[TrainingHook] | None = None,
    ) -> None:
        check_components(model=model, guide=guide, elbo=elbo, valid_elbo=valid_elbo, optim=optim,
                          schedule=schedule, train_data=train_data, valid_data=valid_data)
        self.model, self.guide, self.optim = model, guide, optim
        self.optimizer = make_step_optimizer(optim)  # one torch optimiser where possible
        self.elbo, self.valid_elbo = elbo, valid_elbo if valid_elbo is not None else validation_elbo(elbo)
        self.hooks = tuple(hooks_for(elbo) if hooks is None else hooks)
        if not all(isinstance(h, TrainingHook) for h in self.hooks):
            raise TypeError("hooks must be pyro_spvae.training.hooks.TrainingHook instances")
        self.hook_modules = {f"{h.name}.{i}": m for h in self.hooks for i, m in enumerate(h.modules())}
        self.train_data, self.valid_data = train_data, valid_data
        self.schedule = schedule
        self.options = options if options is not None else StepOptions()
        self.ctx = distributed or DistributedContext()
        self.num_shards = self.options.shards or self.ctx.world_size
        self.sampler = EpochSampler(len(train_data), schedule.batch_size, self.options.seed)
        check_num_shards(self.num_shards, schedule.batch_size, self.ctx)
        self.total_steps = schedule.total_steps(self.sampler.steps_per_epoch)
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.config = dict(config or {})
        if progress is None:
            progress = self.ctx.is_main and sys.stderr.isatty()
        self.progress = bool(progress) and self.ctx.is_main
        self.plateau = PlateauTracker(early_stopping if early_stopping is not None else EarlyStopping())
        self.guard = NonFiniteGuard(self.options.on_nonfinite, self.options.max_consecutive_skips)
        self.step_count = 0
        self.wall_time, self.cpu_time = 0.0, 0.0
        self.last_train_loss = math.nan
        self.window = LossWindow()  # the steps since the last metrics line (saved in checkpoints)
        self.metrics = MetricsWriter(
            (self.out_dir or Path(".")) / METRICS_NAME, enabled=self.out_dir is not None and self.ctx.is_main
        )
        self._init_parameters()

    @classmethod
    def from_config(
        cls,
        config: TrainConfig,
        model: torch.nn.Module,
        guide: torch.nn.Module,
        train_data: BatchSource,
        valid_data: BatchSource | None = None,
        *,
        valid_elbo: ELBO | None = None,
        out_dir: str | Path | None = None,
        progress: bool | None = None,
        distributed: DistributedContext | None = None,
    ) -> Trainer:
        """A trainer for ``config`` (already validated by :class:`TrainConfig`): its estimator and
        hooks (:func:`~pyro_spvae.training.factory.make_objective`), its optimiser
        (:func:`make_optimizer`) and its settings groups; the configuration is stored in the
        checkpoints. The keywords are what a configuration does not hold (see :meth:`__init__`).

        :raises TypeError: if ``config`` is not a :class:`TrainConfig`.
        """
        check_instance("config", config, TrainConfig)
        elbo, hooks = make_objective(config, model, train_data)
        optim = make_optimizer(config.lr, group_lrs=config.group_lrs, clip_norm=config.clip_norm)
        return cls(model, guide, elbo, optim, train_data, config.schedule(), valid_data=valid_data,
                   valid_elbo=valid_elbo, early_stopping=config.early_stopping(),
                   options=config.step_options(), out_dir=out_dir, progress=progress,
                   config=config.to_dict(), distributed=distributed, hooks=hooks)

    # ------------------------------------------------------------------ parameters
    def _modules(self) -> list[torch.nn.Module]:
        """The model, the guide and the hooks' modules (every trained parameter)."""
        return [self.model, self.guide, *self.hook_modules.values()]

    def _init_parameters(self) -> None:
        check_distinct_param_names(self.model, self.guide)
        self._sync_param_store()
        params = [p for m in self._modules() for p in m.parameters()]
        broadcast_parameters(
            [p for p in params if not isinstance(p, torch.nn.parameter.UninitializedParameter)], self.ctx
        )

    def _sync_param_store(self) -> None:
        modules = self._modules()
        release_foreign_params(*modules)
        self._owned_ids = {id(p) for m in modules for p in m.parameters()}

    # ------------------------------------------------------------------ step
    def _shard_step(self, n: int, get_batch: GetBatch) -> float:
        """One optimisation step over a global batch of ``n`` examples: sharding, loss and
        gradients, all-reduce, NaN/Inf guard, optimiser step (see :mod:`pyro_spvae.training.step`).

        :returns: the loss per example (``nan`` when the step was skipped).
        """
        step, hooks = self.step_count, self.hooks
        for h in hooks:
            h.before_step(step)
        shards = shard_slices(n, self.num_shards, self.ctx)
        loss_sum, traces = shard_losses_and_grads(
            self.elbo, self.model, self.guide, shards, get_batch, seed=self.options.seed, step=step,
            num_shards=self.num_shards, data_plate=self.options.data_plate, device=self.ctx.device,
        )
        named = captured_params(traces)
        check_owned(named, self._owned_ids)
        params = [p for _, p in named]
        loss, grads_finite = average_gradients(params, loss_sum, n, self.ctx)
        problem = nonfinite_problem(named, loss, grads_finite)
        if problem is None:  # the update, undone with "skip" when it makes a parameter non-finite
            problem = guarded_update(self.optimizer, named, undo=self.guard.on_nonfinite == "skip")
        clear_grads(params)
        for h in hooks:
            h.after_step(step, problem is None, self.ctx)
        if problem is None:
            self.guard.passed()
        else:
            self.guard.failed(step, problem)  # raises, or counts the skipped step
            loss = math.nan
        self.step_count += 1
        return loss

    def step(self, x: torch.Tensor) -> float:
        """One optimisation step on the global batch ``x`` (this process's shards of it).

        :returns: the loss per example (``nan`` when the update was skipped).
        :raises TypeError: if ``x`` is not a tensor; :raises ValueError: for an empty batch.
        """
        check_tensor("x", x)
        if x.dim() == 0 or x.shape[0] == 0:
            raise ValueError("x must be a tensor with a non-empty batch dimension")
        return self._shard_step(x.shape[0], lambda part, gen: x[part])  # a view of x, no copy

    # ------------------------------------------------------------------ validation
    def evaluate(self, data: BatchSource | None = None, max_examples: int | None = None) -> float:
        """Validation loss per example of ``data`` (default: the validation set, at most
        ``schedule.valid_max_examples`` examples) under ``valid_elbo``, sharded across processes
        (see :func:`~pyro_spvae.training.step.validation_loss`), with the model and guide in
        ``eval()`` mode (e.g. a relaxed code's hard one-hot draws, :class:`~pyro_spvae.models.MIVAE`)."""
        data = data if data is not None else self.valid_data
        if data is None:
            raise ValueError("no validation data to evaluate")
        n = len(data)
        max_examples = max_examples if max_examples is not None else self.schedule.valid_max_examples
        if max_examples is not None:
            n = min(n, max_examples)
        return validation_loss(self.valid_elbo, self.model, self.guide, data, num_examples=n,
                               batch_size=self.schedule.valid_batch_size or self.schedule.batch_size,
                               seed=self.options.seed, ctx=self.ctx)

    # ------------------------------------------------------------------ loop
    def current_lr(self) -> float | list[float] | None:
        """Learning rate(s) of the optimiser (a list when parameter groups differ)."""
        return current_lr(self.optimizer)

    def _timed_step(self) -> tuple[float, float]:
        """One training step on the next batch; returns its loss per example and wall time."""
        t0, c0 = time.perf_counter(), time.process_time()
        idx = self.sampler.next_indices()
        loss = self._shard_step(idx.numel(), lambda part, gen: self.train_data.batch(idx[part], gen))
        self.sampler.advance()
        dt = time.perf_counter() - t0
        self.wall_time += dt
        self.cpu_time += time.process_time() - c0
        return loss, dt

    def _log_and_validate(self, step: int, do_eval: bool) -> None:
        valid_loss = None
        if do_eval:
            valid_loss = self.evaluate()
            if self.plateau.record_best(step, valid_loss) and self.out_dir is not None:
                self.save(self.out_dir / BEST_NAME)
            self.plateau.count(valid_loss)
        if self.plateau.lr_scale != 1.0:
            apply_lr_scale(self.optimizer, self.plateau.lr_scale)
        window, self.window = self.window, LossWindow()
        self.last_train_loss = window.mean_loss()
        self.metrics.write(
            {
                "step": step,
                "epoch": self.sampler.progress,
                "train_loss": self.last_train_loss,
                "valid_loss": valid_loss,
                "examples_per_s": window.examples_per_s(self.schedule.batch_size),
                "wall_time": self.wall_time,
                "cpu_time": self.cpu_time,
                "lr": self.current_lr(),
                "skipped_steps": self.guard.skipped_steps,
                **hook_metrics(self.hooks),
            }
        )

    def fit(self) -> TrainResult:
        """Train until ``steps``/``epochs`` or early stopping, validating every ``eval_every``
        steps, writing ``metrics.jsonl``, ``best.pt`` and ``checkpoint.pt``.

        Call :meth:`resume` first to continue an interrupted run.
        """
        s, total = self.schedule, self.total_steps
        checkpoint_every = s.checkpoint_every or s.eval_every
        bar = tqdm(total=total, initial=self.step_count, disable=not self.progress, desc="train",
                   dynamic_ncols=True)
        try:
            while self.step_count < total and not self.plateau.stopped_early:
                window = self.window
                window.add(*self._timed_step())
                step = self.step_count
                do_eval = self.valid_data is not None and (step % s.eval_every == 0 or step == total)
                do_log = do_eval or step % s.log_every == 0 or step == total
                if self.progress and (step % 10 == 0 or do_log):
                    bar.set_postfix(loss=f"{window.loss / max(window.n, 1):.2f}",
                                    ex_s=f"{window.examples_per_s(s.batch_size):.0f}")
                bar.update(1)
                if do_log:
                    self._log_and_validate(step, do_eval)
                if self.out_dir is not None and (
                    step % checkpoint_every == 0 or step == total or self.plateau.stopped_early
                ):
                    self.save(self.out_dir / CHECKPOINT_NAME)
        finally:
            bar.close()
        self._write_final_checkpoints()
        barrier(self.ctx)
        p = self.plateau
        return TrainResult(step=self.step_count, epoch=self.sampler.epoch, train_loss=self.last_train_loss,
                           best_valid_loss=p.best_valid_loss, best_step=p.best_step,
                           stopped_early=p.stopped_early, skipped_steps=self.guard.skipped_steps)
