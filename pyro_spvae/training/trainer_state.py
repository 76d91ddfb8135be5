"""Checkpoints and exact resume of the :class:`~pyro_spvae.training.Trainer`, as the mixin
:class:`TrainerState` that it inherits from: the trainer's state as a weights-only loadable ``dict``
(:meth:`~pyro_spvae.training.Trainer.state_dict`, restored by
:meth:`~pyro_spvae.training.Trainer.load_state_dict`), atomic checkpoint files
(:meth:`~pyro_spvae.training.Trainer.save`), and resuming an interrupted run from its run directory
(:meth:`~pyro_spvae.training.Trainer.prepare_resume`, then
:meth:`~pyro_spvae.training.Trainer.finish_resume`).

The files are written and read by :mod:`pyro_spvae.training.checkpoint` (atomic, integrity-checked,
the previous version kept as ``*.prev.pt``); what a resume may change and how the run directory is
brought back to its checkpoint is :mod:`pyro_spvae.training.resume`.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from pyro_spvae.training.checkpoint import (
    capture_rng_state,
    load_checkpoint_or_previous,
    previous_checkpoint_path,
    require_entries,
    restore_rng_state,
    save_checkpoint,
)
from pyro_spvae.training.distributed import barrier
from pyro_spvae.training.hooks import load_hooks_state
from pyro_spvae.training.metrics import LossWindow
from pyro_spvae.training.resume import ResumePoint, check_same_run, configured_optimizer_state, rewind_run_dir
from pyro_spvae.training.rundir import BEST_NAME, CHECKPOINT_NAME

__all__ = ["STATE_ENTRIES", "TrainerState"]

#: Entries of :meth:`Trainer.state_dict` that :meth:`Trainer.load_state_dict` needs.
STATE_ENTRIES = ("model", "guide", "optimizer", "rng", "step", "epoch", "position", "perm", "best_valid_loss",
                 "best_step", "bad_checks", "stopped_early", "skipped_steps", "wall_time")


class TrainerState:
    """The checkpoint half of :class:`~pyro_spvae.training.Trainer` (a mixin it inherits from):
    its state as a weights-only loadable ``dict``, atomic checkpoint files and exact resume.

    The methods read and set the trainer's components and counters (``model``, ``guide``,
    ``optim``, ``optimizer``, ``sampler``, ``plateau``, ``guard``, ``window``, ``hooks``,
    ``hook_modules``, ``options``, ``schedule``, ``num_shards``, ``config``, ``ctx``, ``out_dir``,
    ``metrics``, ``total_steps``, ``valid_data``, ``step_count``, ``wall_time``, ``cpu_time``,
    ``last_train_loss``) and call its ``_sync_param_store()`` after loading parameters.
    """

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume exactly (weights-only loadable)."""
        return {
            "model": self.model.state_dict(),
            "guide": self.guide.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "rng": capture_rng_state(self.sampler.generator),
            "step": self.step_count,
            **self.sampler.state_dict(),
            **self.plateau.state_dict(),
            "skipped_steps": self.guard.skipped_steps,
            "wall_time": self.wall_time,
            "cpu_time": self.cpu_time,
            "loss_window": self.window.state_dict(),
            "last_train_loss": self.last_train_loss,
            "seed": self.options.seed,
            "batch_size": self.schedule.batch_size,
            "num_shards": self.num_shards,
            "config": self.config,
            **({"hooks": {h.name: h.state_dict() for h in self.hooks},
                "hook_modules": {k: m.state_dict() for k, m in self.hook_modules.items()}}
               if self.hooks else {}),
        }

    def load_state_dict(self, state: dict[str, Any], source: str = "the state") -> None:
        """Restore a :meth:`state_dict` (parameters, optimiser, generators, position, the running
        average of the metrics). The optimiser keeps the learning rates it was built with (times
        the decay reached so far; see :func:`~pyro_spvae.training.resume.configured_optimizer_state`).

        :param source: how messages name the state (e.g. ``"checkpoint run/checkpoint.pt"``).
        :raises pyro_spvae.training.CheckpointError: when entries are missing.
        :raises ValueError: when the checkpoint was made with a different seed, batch size or
            number of shards (the resumed run could not continue the same trajectory), or holds
            parameters that do not fit the model and guide.
        """
        require_entries(state, STATE_ENTRIES, source)
        for key, mine in (
            ("seed", self.options.seed),
            ("batch_size", self.schedule.batch_size),
            ("num_shards", self.num_shards),
        ):
            if key in state and state[key] != mine:
                hint = " (--shards sets it independently of the number of processes)"
                hint = hint if key == "num_shards" else ""
                raise ValueError(
                    f"checkpoint was written with {key}={state[key]}, this trainer has {key}={mine}{hint}"
                )
        try:
            self.model.load_state_dict(state["model"])
            self.guide.load_state_dict(state["guide"])
        except RuntimeError as e:
            details = " ".join(str(e).split())
            raise ValueError(f"{source} does not fit the model and guide: {details}") from None
        load_hooks_state(self.hooks, self.hook_modules, state, source)
        self._sync_param_store()
        self.plateau.load_state_dict(state)
        optim_state = configured_optimizer_state(state["optimizer"], self.optim, self.plateau.lr_scale)
        self.optimizer.load_state_dict(optim_state)
        restore_rng_state(state["rng"], self.sampler.generator)
        self.step_count = int(state["step"])
        self.sampler.load_state_dict(state)
        self.guard.skipped_steps = int(state["skipped_steps"])
        self.wall_time = float(state["wall_time"])
        self.cpu_time = float(state.get("cpu_time", 0.0))
        self.window = LossWindow.from_state_dict(state.get("loss_window"))
        self.last_train_loss = float(state.get("last_train_loss", math.nan))

    def save(self, path: str | Path) -> Path | None:
        """Atomically write a checkpoint, keeping the file it replaces as ``*.prev.pt`` (rank 0
        only; other ranks return ``None``)."""
        if not self.ctx.is_main:
            return None
        return save_checkpoint(path, self.state_dict(), keep_previous=True)

    def prepare_resume(self, path: str | Path | None = None) -> ResumePoint | None:
        """Load ``path`` (default ``out_dir/checkpoint.pt``; its previous version ``*.prev.pt`` when
        it is missing or corrupt) into this trainer and check the metrics file, changing nothing on
        disk (see :meth:`finish_resume`).

        :returns: where the run resumes, or ``None`` when there is no checkpoint.
        :raises pyro_spvae.training.CheckpointError: when no checkpoint file can be loaded (corrupt,
            unsafe, entries missing).
        :raises ValueError: when the checkpoint does not fit this trainer (seed, batch size, shards,
            model, a configuration that differs outside the resumable fields: see
            :func:`~pyro_spvae.training.resume.check_same_run`) or lies beyond its ``steps``/``epochs``.
        :raises pyro_spvae.training.MetricsError: for a damaged ``metrics.jsonl``.
        """
        path = self._checkpoint_file(path)
        if not path.exists() and not previous_checkpoint_path(path).exists():
            return None
        loaded = load_checkpoint_or_previous(path, map_location=self.ctx.device)
        source = f"checkpoint {loaded.path}"
        require_entries(loaded.state, STATE_ENTRIES, source)
        step = loaded.state["step"]
        if not isinstance(step, int) or step < 0:
            raise ValueError(f"{source} has an invalid step {step!r}")
        if step > self.total_steps:
            raise ValueError(
                f"{source} is at step {step}, beyond this run's {self.total_steps} steps: ask for at "
                f"least {step} steps (or the matching number of epochs)"
            )
        written = loaded.state.get("config")
        if self.config and isinstance(written, dict) and written:
            check_same_run(self.config, written, source)
        metrics = self.metrics.kept_after_resume(step) if self.out_dir is not None else None
        self.load_state_dict(loaded.state, source)
        return ResumePoint(loaded.path, loaded.problems, metrics, step)

    def finish_resume(self, point: ResumePoint | None) -> None:
        """Bring the run directory back to the checkpoint of :meth:`prepare_resume`: remove stale
        temporary files, set a corrupt latest checkpoint aside as ``checkpoint.pt.corrupt`` (so the
        good previous version is not rotated away), drop the metrics written after the checkpoint
        and a ``best.pt`` written after it. Without a checkpoint (``point=None``) the metrics and
        ``best.pt`` of the attempt that never checkpointed are removed: training starts at step 0.
        """
        if self.out_dir is not None and self.ctx.is_main:
            rewind_run_dir(self.out_dir, point, self.metrics)
        barrier(self.ctx)

    def resume(self, path: str | Path | None = None) -> bool:
        """:meth:`prepare_resume` then :meth:`finish_resume`.

        :returns: whether a checkpoint was loaded.
        """
        point = self.prepare_resume(path)
        self.finish_resume(point)
        return point is not None

    def _checkpoint_file(self, path: str | Path | None) -> Path:
        if path is None:
            if self.out_dir is None:
                raise ValueError("resume() needs a path when the trainer has no out_dir")
            return self.out_dir / CHECKPOINT_NAME
        return Path(path)

    def _write_final_checkpoints(self) -> None:
        """``checkpoint.pt`` if none was written, and ``best.pt`` (the final state) without
        validation data."""
        if self.out_dir is None:
            return
        if not (self.out_dir / CHECKPOINT_NAME).exists():
            self.save(self.out_dir / CHECKPOINT_NAME)
        if self.valid_data is None:
            self.save(self.out_dir / BEST_NAME)
