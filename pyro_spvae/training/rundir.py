"""Run directories written by a training run and restoring a trained (model, guide) pair from one.

A run directory holds ``config.json`` (the run's configuration, the source of truth when it is
resumed), ``checkpoint.pt`` (latest) and ``best.pt`` (best validation), each with its previous
version ``*.prev.pt`` (the fallback when the file is corrupt), ``metrics.jsonl`` and the outputs
``curve.png``, ``samples.png``, ``reconstructions.png`` and ``eval.json``. :data:`RUN_FILES` lists
them; :func:`run_leftovers` finds them, so that a fresh run never mixes its files with those of an
earlier attempt (it refuses, or removes them on request with :func:`remove_run_files`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from pyro_spvae.training.checkpoint import (
    CheckpointError,
    load_checkpoint_or_previous,
    previous_checkpoint_path,
    require_entries,
)
from pyro_spvae.training.config import TrainConfig
from pyro_spvae.training.factory import RunError, build_model, load_data
from pyro_spvae.training.files import TMP_PREFIX
from pyro_spvae.training.params import release_foreign_params
from pyro_spvae.validation import check_choice

__all__ = [
    "BEST_NAME",
    "CHECKPOINTS",
    "CHECKPOINT_NAME",
    "CONFIG_NAME",
    "METRICS_NAME",
    "RUN_FILES",
    "RestoredRun",
    "checkpoint_path",
    "load_run_config",
    "remove_run_files",
    "restore_run",
    "run_leftovers",
]

CONFIG_NAME = "config.json"
CHECKPOINT_NAME = "checkpoint.pt"
BEST_NAME = "best.pt"
METRICS_NAME = "metrics.jsonl"

#: Every file a run writes into its directory (temporaries ``.tmp-*`` aside).
RUN_FILES: tuple[str, ...] = (
    CONFIG_NAME, CHECKPOINT_NAME, previous_checkpoint_path(CHECKPOINT_NAME).name,
    f"{CHECKPOINT_NAME}.corrupt", BEST_NAME, previous_checkpoint_path(BEST_NAME).name, METRICS_NAME,
    "curve.png", "samples.png", "reconstructions.png", "eval.json",
)

#: Which checkpoint of a run to restore: ``"best"`` (best validation, else the latest) or ``"last"``.
CHECKPOINTS: tuple[str, ...] = ("best", "last")

#: Checkpoint entries that :func:`restore_run` needs.
_RESTORE_ENTRIES = ("model", "guide", "step")


def run_leftovers(run_dir: str | Path, keep: tuple[str, ...] = ()) -> list[str]:
    """Names of the run files (:data:`RUN_FILES` and temporaries) present in ``run_dir``, except
    those in ``keep``."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    names = [n for n in RUN_FILES if n not in keep and ((run_dir / n).exists() or (run_dir / n).is_symlink())]
    return names + sorted(p.name for p in run_dir.glob(TMP_PREFIX + "*"))


def remove_run_files(run_dir: str | Path, keep: tuple[str, ...] = ()) -> list[str]:
    """Delete the run files of ``run_dir`` (see :func:`run_leftovers`); other files are left alone.

    :returns: the removed names.
    :raises RunError: when one of them is a directory.
    """
    run_dir = Path(run_dir)
    names = run_leftovers(run_dir, keep)
    for name in names:
        path = run_dir / name
        if path.is_dir() and not path.is_symlink():
            raise RunError(f"cannot remove {path}: it is a directory where the run keeps a file")
        path.unlink(missing_ok=True)
    return names


def load_run_config(run_dir: str | Path) -> TrainConfig:
    """The ``config.json`` of ``run_dir``.

    :raises RunError: for a missing directory or file, or a file that cannot be read or holds an
        invalid configuration (the message names the file).
    """
    run_dir = Path(run_dir)
    if not run_dir.exists():
        raise RunError(f"run directory {run_dir} does not exist")
    if not run_dir.is_dir():
        raise RunError(f"run directory {run_dir} is not a directory")
    try:
        return TrainConfig.load(run_dir / CONFIG_NAME)
    except (FileNotFoundError, ValueError) as e:
        raise RunError(str(e)) from None


@dataclass
class RestoredRun:
    """A trained run, restored by :func:`restore_run`.

    :ivar run_dir: the run directory.
    :ivar config: its configuration.
    :ivar data: the restored split of its dataset.
    :ivar model: the model with the checkpoint's parameters.
    :ivar guide: the guide with the checkpoint's parameters.
    :ivar checkpoint: the checkpoint file read (``*.prev.pt`` when the requested one was corrupt).
    :ivar state: the checkpoint's content (``step``, ``best_valid_loss``, ...).
    :ivar problems: the problems of the checkpoint files passed over (empty normally).
    """

    run_dir: Path
    config: TrainConfig
    data: Any
    model: torch.nn.Module
    guide: torch.nn.Module
    checkpoint: Path
    state: dict[str, Any]
    problems: list[str] = field(default_factory=list)


def checkpoint_path(run_dir: str | Path, which: str = "best") -> Path:
    """``best.pt`` (``which="best"``, when it or its previous version exists) or ``checkpoint.pt``
    of ``run_dir``.

    :raises RunError: when the run has neither.
    """
    check_choice("checkpoint", which, CHECKPOINTS)
    run_dir = Path(run_dir)
    best, last = run_dir / BEST_NAME, run_dir / CHECKPOINT_NAME

    def present(p: Path) -> bool:
        return p.exists() or previous_checkpoint_path(p).exists()

    path = best if which == "best" and present(best) else last
    if not present(path):
        raise RunError(f"no checkpoint in {run_dir} (expected {BEST_NAME} or {CHECKPOINT_NAME}); train first")
    return path


def restore_run(run_dir: str | Path, which: str = "best", split: str = "test") -> RestoredRun:
    """Rebuild a run's (model, guide) from its ``config.json``, load a checkpoint into them (its
    previous version when it is corrupt: see :attr:`RestoredRun.problems`) and load the ``split``
    of its dataset. Param-store entries that would shadow the restored parameters are cleared.
    The pair is built for inference: in ``eval()`` mode (e.g. the hard one-hot codes of a relaxed
    :class:`~pyro_spvae.models.MIVAE`) and with discrete guide sites sampled rather than marked for
    enumeration (``build_model(..., sampled=True)``), as importance sampling needs.

    :param run_dir: a directory written by ``pyro-spvae train`` or a :class:`Trainer` built with
        :meth:`~pyro_spvae.training.Trainer.from_config` (with ``config.json`` saved beside it).
    :param which: ``"best"`` or ``"last"`` (see :func:`checkpoint_path`).
    :param split: ``"train"``, ``"valid"`` or ``"test"``.
    :raises RunError: for a missing directory, configuration, data or checkpoint, or a checkpoint
        that cannot be loaded into the model (the message says which).
    """
    run_dir = Path(run_dir)
    config = load_run_config(run_dir)
    path = checkpoint_path(run_dir, which)
    data = load_data(config, split)
    model, guide = build_model(config, data, sampled=True)
    try:
        loaded = load_checkpoint_or_previous(path)
        require_entries(loaded.state, _RESTORE_ENTRIES, f"checkpoint {loaded.path}")
        model.load_state_dict(loaded.state["model"])
        guide.load_state_dict(loaded.state["guide"])
    except (CheckpointError, RuntimeError, KeyError, TypeError, AttributeError) as e:
        message = " ".join(str(e).split())  # load_state_dict lists the mismatches on several lines
        raise RunError(f"cannot restore {path}: {message}") from None
    release_foreign_params(model, guide)
    model.eval()
    guide.eval()
    return RestoredRun(run_dir, config, data, model, guide, loaded.path, loaded.state, loaded.problems)
