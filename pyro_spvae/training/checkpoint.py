"""Atomic, integrity-checked, safe-to-load training checkpoints.

A checkpoint is a ``dict`` of tensors and plain Python containers (``dict``, ``list``,
``tuple``, ``str``, ``int``, ``float``, ``bool``, ``None``) so that it loads with
``torch.load(..., weights_only=True)``: loading never runs code stored in the file, and a file
crafted to do so is refused with :class:`UnsafeCheckpointError`.

Integrity (format 2): the file holds a SHA-256 digest of its content
(:func:`~pyro_spvae.training.integrity.content_digest`), and :func:`load_checkpoint` verifies the
zip records' CRC-32s before unpickling and the digest after, so that bit-rot anywhere in the file
is refused as corruption instead of resuming with altered parameters. Format-1 files (written
before the digest) are still read, with the CRC check only.

Writes are atomic (:func:`~pyro_spvae.training.files.atomic_write`): a process killed at any
moment (``SIGKILL`` included) or a write failing on a full disk leaves the previous complete
checkpoint. With ``keep_previous`` the file being replaced is kept as ``<name>.prev.pt``, and
:func:`load_checkpoint_or_previous` falls back to it when the latest file is corrupt or missing.
"""

from __future__ import annotations

import io
import os
import pickle
import random
import warnings
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from pyro_spvae.training.files import atomic_write, remove_stale_temporaries
from pyro_spvae.training.integrity import (
    DIGEST_ALGORITHM,
    content_digest,
    pickle_globals,
    pickle_record,
    verify_zip,
)

__all__ = [
    "CHECKPOINT_FORMAT",
    "CheckpointError",
    "LoadedCheckpoint",
    "NonFiniteCheckpointError",
    "UnsafeCheckpointError",
    "capture_rng_state",
    "load_checkpoint",
    "load_checkpoint_or_previous",
    "previous_checkpoint_path",
    "remove_stale_temporaries",
    "require_entries",
    "restore_rng_state",
    "save_checkpoint",
]

#: Version of the checkpoint layout written by :func:`save_checkpoint` (2: with a content digest).
CHECKPOINT_FORMAT = 2
#: Versions :func:`load_checkpoint` reads.
READABLE_FORMATS = (1, 2)
_DIGEST_KEY = "digest"


class CheckpointError(RuntimeError):
    """A checkpoint file is missing, corrupt, of an unknown format or unsafe to load."""


class UnsafeCheckpointError(CheckpointError):
    """A checkpoint holds objects other than tensors and plain containers (e.g. a pickle crafted to
    run code on load). Never loaded, and never skipped silently by a fallback."""


class NonFiniteCheckpointError(CheckpointError):
    """Refusal to write a checkpoint whose parameters or optimiser state contain NaN/Inf."""


class LoadedCheckpoint(NamedTuple):
    """What :func:`load_checkpoint_or_previous` read: the ``state``, the file it came from and the
    ``problems`` of the files it passed over (empty when the latest file was good)."""

    state: dict[str, Any]
    path: Path
    problems: list[str]


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


def previous_checkpoint_path(path: str | os.PathLike) -> Path:
    """Where :func:`save_checkpoint` keeps the file it replaces: ``checkpoint.pt`` ->
    ``checkpoint.prev.pt``."""
    path = Path(path)
    return path.with_name(f"{path.stem}.prev{path.suffix}")


def _keep_previous(path: Path) -> None:
    """Make ``<name>.prev.pt`` a copy of ``path`` (a hard link where the file system has them, so
    that ``path`` exists at every moment; else a rename, after which the loader falls back to the
    previous file until the new one is in place)."""
    if not path.exists():
        return
    prev = previous_checkpoint_path(path)
    link = path.with_name(f".tmp-{prev.name}.{os.getpid()}")
    try:
        link.unlink(missing_ok=True)
        os.link(path, link)
        os.replace(link, prev)
    except OSError:
        link.unlink(missing_ok=True)
        os.replace(path, prev)


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any], *, check_finite: bool = True,
                    keep_previous: bool = False) -> Path:
    """Atomically write ``state`` to ``path`` with a content digest (format :data:`CHECKPOINT_FORMAT`).

    :param path: destination file; its directory is created if needed.
    :param state: a dict of tensors and plain containers. The entries ``"model"``, ``"guide"`` and
        ``"optimizer"`` (when present) are checked for NaN/Inf when ``check_finite`` is true.
    :param check_finite: refuse to write non-finite parameters or optimiser state.
    :param keep_previous: keep the file being replaced as :func:`previous_checkpoint_path`.
    :raises NonFiniteCheckpointError: when a checked tensor holds NaN or Inf (nothing is written).
    :raises TypeError: when ``state`` is not a dict or holds entries of other types.
    :raises OSError: when the file cannot be written (the previous files are left as they were).
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
    payload = {"format": CHECKPOINT_FORMAT, **{k: v for k, v in state.items() if k != _DIGEST_KEY}}
    payload[_DIGEST_KEY] = f"{DIGEST_ALGORITHM}:{content_digest(payload)}"
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    path.parent.mkdir(parents=True, exist_ok=True)
    hook = (lambda: _keep_previous(path)) if keep_previous else None
    return atomic_write(path, buffer.getvalue(), before_replace=hook)


def _unpickling_failure(path: Path, data: bytes, err: BaseException) -> CheckpointError:
    """The error for a file ``torch.load`` could not read: unsafe when it is a well-formed pickle
    that the weights-only unpickler refused, corrupt otherwise."""
    imported = pickle_globals(pickle_record(data))
    if isinstance(err, pickle.UnpicklingError) and imported is not None:
        lines = [s.strip() for s in str(err).splitlines() if "GLOBAL" in s or "Unsupported" in s]
        detail = lines[0] if lines else str(err).splitlines()[0]
        return UnsafeCheckpointError(
            f"refusing to load checkpoint {path}: it contains objects other than tensors and plain "
            f"containers (a pickle that could run code on load); only files written by "
            f"pyro_spvae.training.save_checkpoint are accepted. Details: {detail}"
        )
    detail = type(err).__name__
    first = str(err).strip().splitlines()[0] if str(err).strip() else ""
    if first and not isinstance(err, pickle.UnpicklingError):  # torch's unpickling text is generic
        detail += f": {first[:200]}"
    return CheckpointError(f"checkpoint {path} is corrupt or truncated: not a readable checkpoint ({detail})")


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint`, never executing code from the file, and
    verify its integrity (zip CRC-32s, then the content digest; see the module docstring).

    :param path: the checkpoint file.
    :param map_location: device to load tensors onto.
    :raises UnsafeCheckpointError: when it holds anything other than tensors and plain containers
        (e.g. a pickle crafted to run code).
    :raises CheckpointError: when the file is missing, unreadable, truncated or corrupt (including
        altered tensor data), or has an unknown format.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist" + (" (it is a directory)" * path.is_dir()))
    try:
        data = path.read_bytes()
    except OSError as e:
        raise CheckpointError(f"cannot read checkpoint {path}: {e.strerror}") from None
    if data[:2] == b"PK":
        problem = verify_zip(data)
        if problem is not None:
            raise CheckpointError(f"checkpoint {path} is corrupt or truncated: {problem}")
    try:
        with warnings.catch_warnings():
            # Raised for foreign legacy pickles, which the weights-only unpickler then judges.
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            state = torch.load(io.BytesIO(data), map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001 - every failure to parse the file is reported as such
        raise _unpickling_failure(path, data, e) from None
    if not isinstance(state, dict) or "format" not in state:
        raise CheckpointError(f"checkpoint {path} is not a pyro-spvae checkpoint (no 'format' entry)")
    if state["format"] not in READABLE_FORMATS:
        raise CheckpointError(
            f"checkpoint {path} has format {state['format']!r}; this version reads formats "
            f"{', '.join(map(str, READABLE_FORMATS))}"
        )
    if state["format"] >= 2:
        _verify_digest(path, state)
    return state


def _verify_digest(path: Path, state: dict[str, Any]) -> None:
    stored = state.get(_DIGEST_KEY)
    if not isinstance(stored, str) or not stored.startswith(f"{DIGEST_ALGORITHM}:"):
        raise CheckpointError(f"checkpoint {path} is corrupt: its integrity digest is missing or unreadable")
    try:
        actual = content_digest({k: v for k, v in state.items() if k != _DIGEST_KEY})
    except TypeError as e:
        raise CheckpointError(f"checkpoint {path} is corrupt: {e}") from None
    if stored != f"{DIGEST_ALGORITHM}:{actual}":
        raise CheckpointError(
            f"checkpoint {path} is corrupt: its content does not match its {DIGEST_ALGORITHM.upper()} "
            "digest (the file was altered after it was written)"
        )


def load_checkpoint_or_previous(path: str | os.PathLike,
                                map_location: str | torch.device = "cpu") -> LoadedCheckpoint:
    """:func:`load_checkpoint` of ``path``, or of its previous version
    (:func:`previous_checkpoint_path`) when ``path`` is missing or corrupt.

    :returns: the state, the file it was read from and the problems of the files passed over.
    :raises UnsafeCheckpointError: when a file is unsafe to load (never skipped).
    :raises CheckpointError: when neither file can be loaded (the message lists both problems).
    """
    path = Path(path)
    problems: list[str] = []
    for candidate in (path, previous_checkpoint_path(path)):
        if not candidate.exists() and candidate != path:
            continue
        try:
            return LoadedCheckpoint(load_checkpoint(candidate, map_location), candidate, problems)
        except UnsafeCheckpointError:
            raise
        except CheckpointError as e:
            problems.append(str(e))
    raise CheckpointError("; ".join(problems))


def require_entries(state: dict[str, Any], keys: tuple[str, ...], source: str) -> None:
    """:raises CheckpointError: naming the entries of ``keys`` that ``state`` lacks (``source``
    names the state in the message, e.g. ``"checkpoint run/checkpoint.pt"``)."""
    missing = [k for k in keys if k not in state]
    if missing:
        raise CheckpointError(
            f"{source} lacks the entries {missing}: it was not written by this trainer (or by an "
            "incompatible version)"
        )


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
