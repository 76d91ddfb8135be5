"""A training run in a run directory, validated completely before anything is written.

``pyro-spvae train`` is this module's API: :func:`plan_training` settles the configuration (a
preset with overrides, or the stored ``config.json`` of a resumed run with the overrides that may
change: see :func:`~pyro_spvae.training.resume_config`) and checks the run directory; a
:class:`TrainingSession` builds the (model, guide) and the trainer and loads the checkpoint. All of
this only reads: a refusal at any point leaves the run directory exactly as it was.
:meth:`TrainingSession.start` then writes (the directory, ``config.json``, the files of an earlier
attempt removed or rewound to the checkpoint) and :meth:`TrainingSession.fit` trains.

A new run in a directory that holds files of an earlier run is refused, naming them, unless
``overwrite`` asks to delete them first; a resumed run without a checkpoint (an attempt killed
before its first one) starts at step 0 with the stored configuration, and the metrics and
``best.pt`` of that attempt are removed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pyro_spvae.training.config import TrainConfig
from pyro_spvae.training.distributed import DistributedContext
from pyro_spvae.training.factory import RunError, build_model
from pyro_spvae.training.files import check_output_dir
from pyro_spvae.training.presets import DEFAULT_PRESET, preset_config
from pyro_spvae.training.resume import ResumePoint, resume_config
from pyro_spvae.training.rundir import CONFIG_NAME, remove_run_files, run_leftovers
from pyro_spvae.training.seeding import seed_everything
from pyro_spvae.training.trainer import Trainer, TrainResult

__all__ = ["TrainPlan", "TrainingSession", "plan_training"]


@dataclass
class TrainPlan:
    """What a training command will do (see :func:`plan_training`).

    :ivar out: the run directory.
    :ivar config: the run's configuration.
    :ivar resume: whether the run continues from its checkpoint.
    :ivar changes: ``{field: (stored, new)}`` that a resume applies.
    :ivar leftovers: files of an earlier run that a new run removes first (``overwrite``).
    """

    out: Path
    config: TrainConfig
    resume: bool = False
    changes: dict[str, Any] = field(default_factory=dict)
    leftovers: list[str] = field(default_factory=list)


def plan_training(out: str | Path, overrides: dict[str, Any], *, preset: str | None = None,
                  resume: bool = False, overwrite: bool = False) -> TrainPlan:
    """Settle the configuration of a training command and check its run directory (reads only).

    :param out: the run directory (created by :meth:`TrainingSession.start`).
    :param overrides: ``TrainConfig`` fields given by the user.
    :param preset: the preset of a new run (default :data:`~pyro_spvae.training.DEFAULT_PRESET`).
    :param resume: continue the run in ``out`` (its ``config.json`` is the source of truth).
    :param overwrite: delete the files of an earlier run in ``out`` before a new run.
    :raises RunError: for an unwritable ``out``, an invalid configuration, a resume without
        ``config.json`` or with overrides that cannot change, ``preset`` with ``resume``, or a new
        run over the files of an earlier one without ``overwrite`` (the message names them).
    """
    out = check_output_dir(out, "run directory")
    if resume:
        if overwrite:
            raise RunError("resume and overwrite exclude each other")
        if preset is not None:
            raise RunError("--preset cannot be combined with --resume (the run's config.json is used)")
        config, changes = resume_config(out, overrides)
        return TrainPlan(out, config, True, changes)
    try:
        config = preset_config(preset or DEFAULT_PRESET, **overrides)
    except (ValueError, TypeError) as e:
        raise RunError(str(e)) from None
    leftovers = run_leftovers(out)
    if leftovers and not overwrite:
        raise RunError(
            f"{out} already holds files of a run ({', '.join(leftovers)}): pass --resume to continue "
            "it, --overwrite to delete them and start again, or choose another --out"
        )
    return TrainPlan(out, config, leftovers=leftovers)


class TrainingSession:
    """The trainer of a :class:`TrainPlan`, with its checkpoint loaded (reads only).

    :param plan: from :func:`plan_training`.
    :param train_data: the training split of ``plan.config``'s data.
    :param valid_data: its validation split.
    :param progress: show a progress bar (default: on a terminal).
    :param distributed: the process group (default: one process).
    :raises RunError: when the model cannot be built.
    :raises ValueError: when the checkpoint does not fit the run, lies beyond its length, or the
        metrics file is damaged (:class:`~pyro_spvae.training.MetricsError`).
    :raises pyro_spvae.training.CheckpointError: when no checkpoint file can be loaded.
    :ivar point: where the run resumes (``None``: from step 0).
    """

    def __init__(self, plan: TrainPlan, train_data: Any, valid_data: Any = None, *,
                 progress: bool | None = None, distributed: DistributedContext | None = None) -> None:
        self.plan = plan
        self.ctx = distributed or DistributedContext()
        seed_everything(plan.config.seed)  # identical initialisation on every rank
        model, guide = build_model(plan.config, train_data)
        self.trainer = Trainer.from_config(plan.config, model.to(self.ctx.device), guide.to(self.ctx.device),
                                           train_data, valid_data, out_dir=plan.out, progress=progress,
                                           distributed=self.ctx)
        self.point: ResumePoint | None = self.trainer.prepare_resume() if plan.resume else None

    def start(self) -> None:
        """Write: create the run directory, remove the files of an earlier run (``overwrite``),
        save ``config.json`` (rank 0) and bring a resumed run's files back to its checkpoint."""
        out = self.plan.out
        if self.ctx.is_main:
            out.mkdir(parents=True, exist_ok=True)
            if self.plan.leftovers:
                remove_run_files(out)
            self.plan.config.save(out / CONFIG_NAME)
        if self.plan.resume:
            self.trainer.finish_resume(self.point)

    def fit(self) -> TrainResult:
        """:meth:`Trainer.fit`."""
        return self.trainer.fit()
