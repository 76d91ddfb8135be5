"""Training metrics as JSON lines (``metrics.jsonl``): one object per logging interval.

Keys written by :class:`~pyro_spvae.training.Trainer`: ``step``, ``epoch``, ``train_loss``
(loss per example, averaged since the previous line), ``valid_loss`` (validation loss per
example, ``null`` when not evaluated at this step), ``examples_per_s``, ``wall_time`` (seconds
of training steps, continued across resumes), ``cpu_time`` (CPU seconds of this process in
training steps, all threads), ``lr``, ``skipped_steps`` and the metrics of the training hooks as
``{hook}/{metric}`` (e.g. ``geco/lambda``, ``geco/constraint``; :mod:`pyro_spvae.training.hooks`).
:class:`TrainResult` is the summary of a whole run.

The running average behind ``train_loss`` (:class:`LossWindow`) travels in checkpoints, so a
resumed run writes the same values as an uninterrupted one. :func:`read_metrics` tolerates only
a torn last line (a write cut by a kill); any other line that is not a JSON object is an error
naming the file and the line.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pyro_spvae.training.files import atomic_write_text

__all__ = ["LossWindow", "MetricsError", "MetricsWriter", "TrainResult", "read_metrics"]


class MetricsError(ValueError):
    """A metrics file cannot be read: not a file, not UTF-8 text, or a line that is not a JSON
    object with an integer ``step`` (the message names the file and the line)."""


def _clean(value: Any) -> Any:
    """JSON has no NaN/Inf: write them as ``null``."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


@dataclass
class LossWindow:
    """Running totals of the training steps since the last metrics line."""

    loss: float = 0.0  # sum of the finite step losses (per example)
    n: int = 0  # number of finite step losses
    steps: int = 0
    time: float = 0.0  # wall-clock seconds of the steps

    def add(self, loss: float, seconds: float) -> None:
        """Count a step of ``seconds`` with loss ``loss`` (a skipped step's ``nan`` is not averaged)."""
        self.steps += 1
        self.time += seconds
        if math.isfinite(loss):
            self.loss += loss
            self.n += 1

    def mean_loss(self) -> float:
        """Mean of the finite step losses (``nan`` without any)."""
        return self.loss / self.n if self.n else math.nan

    def examples_per_s(self, batch_size: int) -> float:
        return self.steps * batch_size / max(self.time, 1e-9)

    def state_dict(self) -> dict[str, Any]:
        """The totals, as plain values (stored in checkpoints)."""
        return asdict(self)

    @classmethod
    def from_state_dict(cls, state: dict[str, Any] | None) -> LossWindow:
        """A window continuing ``state`` (``None``: an empty one)."""
        if state is None:
            return cls()
        return cls(float(state["loss"]), int(state["n"]), int(state["steps"]), float(state["time"]))


class MetricsWriter:
    """Append-only JSON-lines writer.

    :param path: the ``metrics.jsonl`` file.
    :param enabled: when false (non-zero ranks) nothing is written.
    """

    def __init__(self, path: str | os.PathLike, enabled: bool = True) -> None:
        self.path = Path(path)
        self.enabled = enabled

    def write(self, record: dict[str, Any]) -> None:
        """Append one record and flush it to disk (one ``write`` call: a kill leaves at most a
        torn last line, which :func:`read_metrics` ignores)."""
        if not self.enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        line = json.dumps({k: _clean(v) for k, v in record.items()}, allow_nan=False)
        try:
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(line + "\n")
                f.flush()
        except OSError as e:
            raise OSError(e.errno, f"cannot write {self.path}: {e.strerror}", str(self.path)) from None

    def kept_after_resume(self, step: int) -> list[dict[str, Any]] | None:
        """The records a run resumed at ``step`` keeps (those with ``step <= step``), read and
        checked now so that a damaged file is reported before anything is written; ``None`` when
        there is no file (or this writer is disabled).

        :raises MetricsError: for a damaged file (see :func:`read_metrics`).
        """
        if not self.enabled or not (self.path.exists() or self.path.is_symlink()):
            return None
        return [r for r in read_metrics(self.path) if r["step"] <= step]

    def rewrite(self, records: list[dict[str, Any]]) -> None:
        """Atomically replace the file with ``records`` (e.g. :meth:`kept_after_resume`)."""
        if self.enabled:
            atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in records))

    def truncate_after(self, step: int) -> None:
        """Drop records with ``step`` greater than ``step`` (work lost after the last checkpoint),
        and a torn last line, so a resumed run continues a consistent file.

        :raises MetricsError: for a damaged file.
        """
        kept = self.kept_after_resume(step)
        if kept is not None:
            self.rewrite(kept)


def _parse_line(path: Path, number: int, line: str) -> dict[str, Any]:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as e:
        raise MetricsError(f"{path}, line {number}: not valid JSON ({e.msg}): {line[:80]!r}") from None
    if not isinstance(record, dict):
        raise MetricsError(f"{path}, line {number}: expected a JSON object, got {line[:80]!r}")
    step = record.get("step")
    if isinstance(step, bool) or not isinstance(step, int):
        raise MetricsError(f"{path}, line {number}: no integer 'step' in {line[:80]!r}")
    return record


def read_metrics(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Read a ``metrics.jsonl`` file; a torn last line (no final newline) is skipped.

    :raises FileNotFoundError: when the file does not exist.
    :raises MetricsError: when it is not a readable UTF-8 file, or a complete line is not a JSON
        object with an integer ``step`` (naming the file and the line).
    """
    path = Path(path)
    if path.is_dir():
        raise MetricsError(f"{path} is a directory, not a metrics file")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        line = path.read_bytes()[: e.start].count(b"\n") + 1
        raise MetricsError(f"{path}, line {line}: not UTF-8 text ({e.reason})") from None
    except FileNotFoundError:
        raise
    except OSError as e:
        raise MetricsError(f"cannot read {path}: {e.strerror}") from None
    lines = text.split("\n")
    torn = lines.pop()  # "" when the file ends with a newline
    records = []
    for number, line in enumerate(lines, start=1):
        if line.strip():
            records.append(_parse_line(path, number, line))
    if torn.strip():
        try:  # a complete record whose newline was cut off is still good
            records.append(_parse_line(path, len(lines) + 1, torn))
        except MetricsError:
            pass
    return records


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
