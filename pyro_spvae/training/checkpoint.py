"""Atomic, safe-to-load training checkpoints.

A checkpoint is a ``dict`` of tensors and plain Python containers (``dict``, ``list``,
``tuple``, ``str``, ``int``, ``float``, ``bool``, ``None``) so that it loads with
``torch.load(..., weights_only=True)``: loading never runs code stored in the file, and a file
crafted to do so is refused with :class:`CheckpointError`.

Writes are atomic: the file is written to a temporary file in the same directory, flushed and
``fsync``-ed, moved over the destination with :func:`os.replace` and the directory is
``fsync``-ed. A process killed at any moment (``SIGKILL`` included) therefore leaves either the
previous complete checkpoint or the new complete checkpoint, never a torn file.
"""

from __future__ import annotations

import io
import os
import pickle
import random
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = [
    "CHECKPOINT_FORMAT",
    "CheckpointError",
    "NonFiniteCheckpointError",
    "capture_rng_state",
    "load_checkpoint",
    "remove_stale_temporaries",
    "restore_rng_state",
    "save_checkpoint",
]

#: Version of the checkpoint layout written by :func:`save_checkpoint`.
CHECKPOINT_FORMAT = 1

#: Fault-injection hook for tests: seconds to sleep after the temporary file is complete and
#: before it replaces an EXISTING destination (simulates a slow disk so that a kill lands while a
#: good checkpoint is being overwritten).
_FAULT_SLEEP_ENV = "PYRO_SPVAE_CHECKPOINT_SLEEP"

_TMP_PREFIX = ".tmp-"


class CheckpointError(RuntimeError):
    """A checkpoint file is missing, corrupt, of an unknown format or unsafe to load."""


class NonFiniteCheckpointError(CheckpointError):
    """Refusal to write a checkpoint whose parameters or optimiser state contain NaN/Inf."""


def _non_finite_entries(obj: Any, prefix: str = "") -> list[str]:
    """Names of floating-point tensors (nested in dicts/lists) holding NaN or Inf."""
    bad: list[str] = []
    if isinstance(obj, torch.Tensor):
        if obj.is_floating_point() and not bool(torch.isfinite(obj).all()):
            bad.append(prefix or "<tensor>")
    elif isinstance(obj, dict):
        for k, v in obj.items():
            bad.extend(_non_finite_entries(v, f"{prefix}.{k}" if prefix else str(k)))
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            bad.extend(_non_finite_entries(v, f"{prefix}[{i}]"))
    return bad


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds (Windows)
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any], *, check_finite: bool = True) -> Path:
    """Atomically write ``state`` to ``path``.

    :param path: destination file; its directory is created if needed.
    :param state: a dict of tensors and plain containers. The entries ``"model"``, ``"guide"`` and
        ``"optimizer"`` (when present) are checked for NaN/Inf when ``check_finite`` is true.
    :param check_finite: refuse to write non-finite parameters or optimiser state.
    :raises NonFiniteCheckpointError: when a checked tensor holds NaN or Inf (nothing is written).
    :raises TypeError: when ``state`` is not a dict.
    :returns: the destination path.
    """
    if not isinstance(state, dict):
        raise TypeError(f"checkpoint state must be a dict, got {type(state).__name__}")
    path = Path(path)
    if check_finite:
        bad: list[str] = []
        for key in ("model", "guide", "optimizer"):
            if key in state:
                bad.extend(_non_finite_entries(state[key], key))
        if bad:
            shown = ", ".join(bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
            raise NonFiniteCheckpointError(
                f"refusing to write checkpoint {path}: non-finite values (NaN/Inf) in {shown}"
            )
    payload = {"format": CHECKPOINT_FORMAT, **state}
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    directory = path.parent
    directory.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=_TMP_PREFIX + path.name + ".", dir=directory)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(buffer.getbuffer())
            f.flush()
            os.fsync(f.fileno())
        delay = os.environ.get(_FAULT_SLEEP_ENV)
        if delay and path.exists():
            time.sleep(float(delay))
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(directory)
    return path


def remove_stale_temporaries(directory: str | os.PathLike) -> list[Path]:
    """Delete temporary files left in ``directory`` by writes that were killed mid-way.

    :returns: the removed paths.
    """
    removed = []
    directory = Path(directory)
    if directory.is_dir():
        for p in directory.glob(_TMP_PREFIX + "*"):
            p.unlink(missing_ok=True)
            removed.append(p)
    return removed


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint`, never executing code from the file.

    :param path: the checkpoint file.
    :param map_location: device to load tensors onto.
    :raises CheckpointError: when the file is missing, truncated/corrupt, holds anything other
        than tensors and plain containers (e.g. a pickle crafted to run code) or has an unknown
        format.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        with warnings.catch_warnings():
            # Raised for foreign legacy pickles, which the weights-only unpickler then judges.
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(
            f"refusing to load checkpoint {path}: it contains objects other than tensors and plain "
            f"containers (a pickle that could run code on load); only files written by "
            f"pyro_spvae.training.save_checkpoint are accepted. Details: {str(e).splitlines()[0]}"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError, KeyError) as e:
        raise CheckpointError(f"checkpoint {path} is corrupt or truncated: {e}") from None
    if not isinstance(state, dict) or "format" not in state:
        raise CheckpointError(f"checkpoint {path} is not a pyro-spvae checkpoint (no 'format' entry)")
    if state["format"] != CHECKPOINT_FORMAT:
        raise CheckpointError(
            f"checkpoint {path} has format {state['format']!r}; this version reads format {CHECKPOINT_FORMAT}"
        )
    return state


def capture_rng_state(generator: torch.Generator | None = None) -> dict[str, Any]:
    """Snapshot every random number generator that training touches, as weights-only types.

    Covers torch (CPU and every CUDA device), Python's :mod:`random`, NumPy's global generator
    (these three are what ``pyro.set_rng_seed`` seeds) and optionally a trainer-owned
    :class:`torch.Generator`.
    """
    version, py_state, gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "python": {
            "version": int(version),
            "state": torch.tensor(py_state, dtype=torch.int64),
            "gauss": gauss,
        },
        "numpy": {
            "name": str(np_name),
            "keys": torch.from_numpy(np.asarray(np_keys, dtype=np.int64)),
            "pos": int(np_pos),
            "has_gauss": int(np_has_gauss),
            "gauss": float(np_gauss),
        },
    }
    if generator is not None:
        state["generator"] = generator.get_state()
    return state


def restore_rng_state(state: dict[str, Any], generator: torch.Generator | None = None) -> None:
    """Restore generators from a :func:`capture_rng_state` snapshot."""
    torch.set_rng_state(state["torch"].cpu())
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])
    py = state["python"]
    random.setstate((py["version"], tuple(int(v) for v in py["state"].tolist()), py["gauss"]))
    npst = state["numpy"]
    np.random.set_state(
        (npst["name"], npst["keys"].numpy().astype(np.uint32), npst["pos"], npst["has_gauss"], npst["gauss"])
    )
    if generator is not None and "generator" in state:
        generator.set_state(state["generator"].cpu())
