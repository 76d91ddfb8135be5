"""Resuming a run: what may change, and bringing the run directory back to its checkpoint.

A resumed run continues the trajectory of its checkpoint, so the run's stored ``config.json`` is
the source of truth (:func:`resume_config`): settings that shaped what was already computed
(model, data, estimator, batch size, seed, shards, ...) cannot change, and asking for a different
value is refused, naming it, before anything is written; :data:`RESUMABLE_FIELDS` (learning rates,
length of training, intervals, early stopping) apply from the resumed step on and are recorded in
``config.json``, in the checkpoints and (the learning rate) in ``metrics.jsonl``.

:func:`configured_optimizer_state` gives the restored optimiser state the learning rates of the
trainer's optimiser (times the decay reached so far), so that a new ``lr`` really applies.
:func:`reconcile_best` removes a ``best.pt`` written after the checkpoint (work that was lost).
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any, NamedTuple

from pyro.optim import PyroOptim
from pyro.params.param_store import normalize_param_name

from pyro_spvae.training.checkpoint import CheckpointError, load_checkpoint, previous_checkpoint_path
from pyro_spvae.training.config import TrainConfig
from pyro_spvae.training.factory import RunError
from pyro_spvae.training.files import remove_stale_temporaries
from pyro_spvae.training.metrics import MetricsWriter
from pyro_spvae.training.rundir import BEST_NAME, CHECKPOINT_NAME, CONFIG_NAME, METRICS_NAME, load_run_config

__all__ = [
    "RESUMABLE_FIELDS",
    "ResumePoint",
    "check_same_run",
    "configured_optimizer_state",
    "reconcile_best",
    "resume_config",
    "rewind_run_dir",
]

#: Configuration fields that a resume may change (they take effect from the resumed step on).
RESUMABLE_FIELDS: tuple[str, ...] = (
    "lr", "group_lrs", "steps", "epochs", "patience", "lr_decay", "lr_patience", "min_rel_improvement",
    "eval_every", "log_every", "checkpoint_every", "valid_max_examples", "on_nonfinite", "data_dir",
)

_UNSET = "<unset>"


class ResumePoint(NamedTuple):
    """A checkpoint loaded into a trainer by :meth:`~pyro_spvae.training.Trainer.prepare_resume`,
    before anything in the run directory is changed.

    :ivar path: the file the state came from (the previous version when the latest was corrupt).
    :ivar problems: the problems of the checkpoint files passed over (empty normally).
    :ivar metrics: the ``metrics.jsonl`` records that the resumed run keeps (``None``: no file).
    :ivar step: the checkpoint's step.
    """

    path: Path
    problems: list[str]
    metrics: list[dict[str, Any]] | None
    step: int


def _normal(value: Any) -> Any:
    return json.loads(json.dumps(value))


def _requested_changes(stored: dict[str, Any], overrides: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """``{field: (stored, requested)}`` for every override that differs from the stored value
    (``model_kwargs`` and ``group_lrs`` key by key, as ``"model_kwargs.z_dim"``)."""
    changes: dict[str, tuple[Any, Any]] = {}
    for key, value in overrides.items():
        if key in ("model_kwargs", "group_lrs") and isinstance(value, dict):
            for sub, v in value.items():
                old = stored.get(key, {}).get(sub, _UNSET)
                if old == _UNSET or _normal(old) != _normal(v):
                    changes[f"{key}.{sub}"] = (old, v)
        elif key not in stored or _normal(stored[key]) != _normal(value):
            changes[key] = (stored.get(key, _UNSET), value)
    return changes


def resume_config(run_dir: str | os.PathLike,
                  overrides: dict[str, Any]) -> tuple[TrainConfig, dict[str, Any]]:
    """The configuration of a resumed run: the run's ``config.json`` with those of ``overrides``
    (``TrainConfig`` fields) that differ from it applied.

    Reads only; nothing is written.

    :returns: the configuration and ``{field: (stored, new)}`` of the applied changes.
    :raises RunError: when ``config.json`` is missing or invalid, when an override changes a field
        outside :data:`RESUMABLE_FIELDS` (every such field is named, with both values), or when the
        result is not a valid configuration.
    """
    run_dir = Path(run_dir)
    if not (run_dir / CONFIG_NAME).exists() and run_dir.is_dir():
        raise RunError(
            f"cannot resume {run_dir}: {run_dir / CONFIG_NAME} not found (a run's configuration is "
            "needed to continue it; start a new run without --resume)"
        )
    stored = load_run_config(run_dir).to_dict()
    changes = _requested_changes(stored, overrides)
    fixed = {k: v for k, v in changes.items() if k.split(".")[0] not in RESUMABLE_FIELDS}
    if fixed:
        shown = ", ".join(f"{k} ({old!r} -> {new!r})" for k, (old, new) in fixed.items())
        raise RunError(
            f"cannot resume {run_dir} with a different {shown}: fixed by {run_dir / CONFIG_NAME} for "
            "the whole run (leave it out to keep the stored value, or start a new run: another "
            "--out, or --overwrite)"
        )
    values = copy.deepcopy(stored)
    for key, (_, new) in changes.items():
        top, _, sub = key.partition(".")
        if sub:
            values[top][sub] = new
        else:
            values[top] = new
    try:
        return TrainConfig.from_dict(values), changes
    except (ValueError, TypeError) as e:
        raise RunError(f"invalid settings for resuming {run_dir}: {e}") from None


def check_same_run(config: dict[str, Any], written: dict[str, Any], source: str) -> None:
    """Check that a checkpoint's configuration ``written`` belongs to the run of ``config``: the
    fields outside :data:`RESUMABLE_FIELDS` that both hold must agree (a hand-edited or damaged
    ``config.json``, or a checkpoint copied from another run, would otherwise continue a different
    model; a field that a checkpoint of an older version lacks is not compared).

    :raises ValueError: naming the fields that differ.
    """
    fixed = sorted((set(config) & set(written)) - set(RESUMABLE_FIELDS))
    differ = [k for k in fixed if _normal(config[k]) != _normal(written[k])]
    if differ:
        shown = ", ".join(f"{k} {written[k]!r} (config.json: {config[k]!r})" for k in differ)
        raise ValueError(f"{source} was written by a run with {shown}: the checkpoint and config.json "
                         "belong to different runs")


def _configured_lr(optim: PyroOptim, param_name: str) -> float | None:
    """The learning rate ``optim`` gives the parameter ``param_name`` (its per-parameter
    settings included), or ``None`` when it names none."""
    args = optim.pt_optim_args
    if callable(args):
        if getattr(optim, "pt_optim_args_argc", 1) != 1:
            return None
        args = args(normalize_param_name(param_name))
    lr = args.get("lr") if isinstance(args, dict) else None
    return float(lr) if isinstance(lr, (int, float)) and not isinstance(lr, bool) else None


def configured_optimizer_state(state: dict[str, Any], optim: PyroOptim, lr_scale: float) -> dict[str, Any]:
    """A copy of the optimiser ``state`` (``{param name: torch optimiser state dict}``) whose
    parameter groups have the learning rates of ``optim`` times ``lr_scale``: loading a state
    would otherwise bring back the rates it was saved with.

    Computed as :func:`~pyro_spvae.training.early_stopping.apply_lr_scale` does (``initial_lr``
    the configured rate, ``lr = initial_lr * scale``), so an unchanged rate resumes bit-identically.
    """
    out: dict[str, Any] = {}
    for name, st in state.items():
        rate = _configured_lr(optim, name)
        if rate is None or not isinstance(st, dict) or "param_groups" not in st:
            out[name] = st
            continue
        groups = []
        for group in st["param_groups"]:
            group = dict(group)
            if "initial_lr" in group or lr_scale != 1.0:
                group["initial_lr"] = rate
                group["lr"] = rate * lr_scale
            else:
                group["lr"] = rate
            groups.append(group)
        out[name] = {**st, "param_groups": groups}
    return out


def _step_of(path: Path) -> int | None:
    try:
        step = load_checkpoint(path).get("step")
    except CheckpointError:
        return None
    return step if isinstance(step, int) else None


def reconcile_best(run_dir: str | os.PathLike, step: int) -> list[str]:
    """Make ``best.pt`` (and its previous version) belong to a run resumed at ``step``: a file
    written after ``step`` holds work that was lost, and is removed (``best.prev.pt`` takes its
    place when it is older). Unreadable files are left to the loader's fallback.

    :returns: the names of the removed files.
    """
    best = Path(run_dir) / BEST_NAME
    prev = previous_checkpoint_path(best)
    removed = []
    best_step = _step_of(best) if best.exists() else None
    if best_step is not None and best_step > step:
        prev_step = _step_of(prev) if prev.exists() else None
        if prev_step is not None and prev_step <= step:
            os.replace(prev, best)
            removed.append(prev.name)
        else:
            best.unlink()
            removed.append(best.name)
            if prev.exists() and prev_step is not None:
                prev.unlink()
                removed.append(prev.name)
    return removed


def rewind_run_dir(run_dir: str | os.PathLike, point: ResumePoint | None, metrics: MetricsWriter) -> None:
    """Bring ``run_dir`` back to the checkpoint a run resumes from (the writes of
    :meth:`~pyro_spvae.training.Trainer.finish_resume`): remove stale temporary files, set a corrupt
    latest checkpoint aside as ``checkpoint.pt.corrupt`` (so that the good previous version is not
    rotated away by the next save), keep only the metrics up to the checkpoint and remove a
    ``best.pt`` written after it (:func:`reconcile_best`). Without a checkpoint (``point=None``) the
    metrics and ``best.pt`` of the attempt that never checkpointed are removed.
    """
    run_dir = Path(run_dir)
    remove_stale_temporaries(run_dir)
    if point is None:
        for name in (METRICS_NAME, BEST_NAME, previous_checkpoint_path(BEST_NAME).name):
            (run_dir / name).unlink(missing_ok=True)
        return
    latest = run_dir / CHECKPOINT_NAME
    if point.path == previous_checkpoint_path(latest) and latest.exists():
        os.replace(latest, latest.with_name(latest.name + ".corrupt"))
    if point.metrics is not None:
        metrics.rewrite(point.metrics)
    reconcile_best(run_dir, point.step)
