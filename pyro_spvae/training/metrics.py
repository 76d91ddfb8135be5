"""Training metrics as JSON lines (``metrics.jsonl``): one object per logging interval.

Keys written by :class:`~pyro_spvae.training.Trainer`: ``step``, ``epoch``, ``train_loss``
(loss per example, averaged since the previous line), ``valid_loss`` (validation loss per
example, ``null`` when not evaluated at this step), ``examples_per_s``, ``wall_time`` (seconds
of training steps, continued across resumes), ``cpu_time`` (CPU seconds of this process in
training steps, all threads), ``lr`` and ``skipped_steps``.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

__all__ = ["MetricsWriter", "read_metrics"]


def _clean(value: Any) -> Any:
    """JSON has no NaN/Inf: write them as ``null``."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class MetricsWriter:
    """Append-only JSON-lines writer.

    :param path: the ``metrics.jsonl`` file.
    :param enabled: when false (non-zero ranks) nothing is written.
    """

    def __init__(self, path: str | os.PathLike, enabled: bool = True) -> None:
        self.path = Path(path)
        self.enabled = enabled

    def write(self, record: dict[str, Any]) -> None:
        """Append one record and flush it to disk."""
        if not self.enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        line = json.dumps({k: _clean(v) for k, v in record.items()}, allow_nan=False)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(line + "\n")
            f.flush()

    def truncate_after(self, step: int) -> None:
        """Drop records with ``step`` greater than ``step`` (work lost after the last checkpoint),
        and any torn last line, so a resumed run continues a consistent file."""
        if not self.enabled or not self.path.exists():
            return
        kept = [r for r in read_metrics(self.path) if r.get("step", 0) <= step]
        tmp = self.path.with_name(self.path.name + ".tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            for r in kept:
                f.write(json.dumps(r) + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)


def read_metrics(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Read a ``metrics.jsonl`` file, skipping a torn (incomplete) last line.

    :raises FileNotFoundError: when the file does not exist.
    """
    records = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return records
