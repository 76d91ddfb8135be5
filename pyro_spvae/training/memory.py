"""Up-front memory estimates, so that settings that cannot fit are refused before any work.

The estimates count the bytes of the largest tensors a command creates (float32), not every
allocation: they are meant to catch settings off by orders of magnitude (a latent dimension of
``10**8``, ``100000`` particles, ``chunk_size * batch_size`` of ten million), not to predict the
peak to the megabyte.

- training: parameters, their gradients and Adam's two moments (``4 x`` the parameter count), and
  the per-particle activations of a batch, ``batch_size * num_particles * (D + 2 sum(hidden) +
  3 z_dim)`` values kept for the backward pass (``x 2``);
- evaluation: three ``(chunk_size, batch_size, D)`` tensors (decoder output, per-pixel terms and
  their sum) and the ``(batch_size, num_samples)`` buffer of PSIS, for the pass the evaluator runs
  (with ``chunk_size=None``, the default, the one it picks from its per-pass budget);
- sampling: the ``(num, D)`` images and decoder outputs.

:func:`memory_budget` is the default limit: 80% of the physical memory (or of the cgroup limit
when smaller), overridable with ``PYRO_SPVAE_MEMORY_BUDGET`` or the commands' ``--memory-budget``.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from pyro_spvae.infer.log_likelihood import pass_budget, pass_shape
from pyro_spvae.training.factory import RunError, build_model

__all__ = [
    "BUDGET_ENV",
    "MemoryBudgetError",
    "NOTE_BYTES",
    "check_memory",
    "estimate_eval_bytes",
    "estimate_sample_bytes",
    "estimate_train_bytes",
    "format_bytes",
    "memory_budget",
    "parse_size",
]

#: Environment variable overriding :func:`memory_budget` (a size such as ``"16G"``, or ``"off"``).
BUDGET_ENV = "PYRO_SPVAE_MEMORY_BUDGET"
#: Estimates above this many bytes are worth a note to the user even when they fit.
NOTE_BYTES = 2 * 1024**3
_FLOAT = 4
_UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}


class MemoryBudgetError(RunError):
    """A command's estimated memory exceeds the budget (the message gives both)."""


def parse_size(text: str) -> int | None:
    """``"16G"``, ``"512M"``, ``"1.5T"``, ``"1e9"`` (bytes) -> bytes; ``"off"``/``"none"`` -> ``None``.

    :raises ValueError: for anything else, or a size that is not positive.
    """
    t = str(text).strip().upper().removesuffix("B").removesuffix("I")
    if t in ("OFF", "NONE", "NO"):
        return None
    m = re.fullmatch(r"([0-9]*\.?[0-9]+(?:E[0-9]+)?)\s*([KMGT]?)", t)
    if not m:
        raise ValueError(f"expected a size such as 16G, 512M or 'off', got {text!r}")
    size = float(m.group(1)) * _UNITS[m.group(2)]
    if not math.isfinite(size) or size < 1:
        raise ValueError(f"expected a positive size, got {text!r}")
    return int(size)


def format_bytes(n: float) -> str:
    """``1536`` -> ``"1.5 KiB"``."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(n) < 1024 or unit == "PiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} PiB"  # pragma: no cover


def _physical_memory() -> int | None:
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):  # pragma: no cover - not POSIX
        return None
    limit = Path("/sys/fs/cgroup/memory.max")
    try:
        text = limit.read_text().strip()
        if text.isdigit():
            total = min(total, int(text))
    except OSError:
        pass
    return total


def memory_budget(device: str | torch.device = "cpu") -> int | None:
    """The default memory budget: ``$PYRO_SPVAE_MEMORY_BUDGET`` when set, else 80% of the
    physical memory (of the GPU for a CUDA ``device``); ``None`` when unknown or turned off.

    :raises ValueError: for an unreadable ``$PYRO_SPVAE_MEMORY_BUDGET``.
    """
    env = os.environ.get(BUDGET_ENV, "").strip()
    if env:
        try:
            return parse_size(env)
        except ValueError as e:
            raise ValueError(f"${BUDGET_ENV}: {e}") from None
    if torch.device(device).type == "cuda" and torch.cuda.is_available():
        return int(0.8 * torch.cuda.get_device_properties(torch.device(device)).total_memory)
    total = _physical_memory()
    return None if total is None else int(0.8 * total)


def check_memory(estimate: int, what: str, budget: int | None) -> str | None:
    """Refuse ``estimate`` bytes above ``budget``; a note for a large estimate that fits.

    :param what: the estimate's breakdown, quoted in the messages.
    :returns: a note to show the user when ``estimate`` exceeds :data:`NOTE_BYTES`, else ``None``.
    :raises MemoryBudgetError: when ``estimate > budget``.
    """
    if budget is not None and estimate > budget:
        raise MemoryBudgetError(
            f"these settings need about {format_bytes(estimate)} of memory ({what}), more than the "
            f"budget of {format_bytes(budget)}: reduce them, or raise the budget with --memory-budget "
            f"(or ${BUDGET_ENV})"
        )
    if estimate > NOTE_BYTES:
        return f"these settings need about {format_bytes(estimate)} of memory ({what})"
    return None


def _int_kwarg(kwargs: dict[str, Any], name: str, default: int) -> int:
    v = kwargs.get(name, default)
    return v if isinstance(v, int) and not isinstance(v, bool) and v > 0 else default


def _widths(kwargs: dict[str, Any]) -> tuple[int, list[int]]:
    hidden = kwargs.get("hidden", ())
    if isinstance(hidden, int):
        hidden = [hidden]
    hidden = list(hidden) if isinstance(hidden, (list, tuple)) else []
    return _int_kwarg(kwargs, "z_dim", 50), [h for h in hidden if isinstance(h, int) and h > 0]


def _parameter_count(config: Any, dataset: Any) -> int:
    """Parameters of the (model, guide) of ``config``: built on the ``meta`` device (no memory),
    or, for a family whose builder needs real tensors, from the widths ``D, hidden, z_dim``."""
    try:
        with torch.device("meta"):
            model, guide = build_model(config, dataset)
        return sum(p.numel() for m in (model, guide) for p in m.parameters())
    except Exception:  # noqa: BLE001 - any failure on meta tensors: use the width estimate
        z, hidden = _widths(config.model_kwargs)
        sizes = [math.prod(dataset.event_shape), *hidden, 2 * z]
        return 2 * sum(a * b for a, b in zip(sizes, sizes[1:]))


def estimate_train_bytes(config: Any, dataset: Any) -> tuple[int, str]:
    """Bytes of the largest tensors of training ``config`` on ``dataset`` (see the module docstring).

    :returns: the estimate and its breakdown in words.
    """
    params = _parameter_count(config, dataset)
    z, hidden = _widths(config.model_kwargs)
    d = math.prod(dataset.event_shape)
    per_particle = d + 2 * sum(hidden) + 3 * z
    activations = 2 * config.batch_size * config.num_particles * per_particle * _FLOAT
    total = 4 * params * _FLOAT + activations
    what = (f"{params:,} parameters with gradients and Adam moments, and activations of batch_size "
            f"{config.batch_size} x num_particles {config.num_particles} x {per_particle:,} values")
    return total, what


def estimate_eval_bytes(event_shape: Sequence[int], *, batch_size: int, chunk_size: int | None,
                        num_samples: int, psis: bool = True,
                        device: str | torch.device = "cpu") -> tuple[int, str]:
    """Bytes of the largest tensors of an evaluation (see the module docstring); ``chunk_size=None``
    counts the pass the evaluator picks from its memory budget on ``device``
    (:func:`~pyro_spvae.infer.log_likelihood.pass_shape`)."""
    d = math.prod(event_shape)
    if chunk_size is None:
        chunk_size, batch_size = pass_shape(batch_size, num_samples, d * _FLOAT,
                                            max_examples=batch_size, budget=pass_budget(device))
    chunk = min(chunk_size, num_samples)
    total = 3 * chunk * batch_size * d * _FLOAT + (batch_size * num_samples * _FLOAT if psis else 0)
    return total, f"3 x chunk_size {chunk} x batch_size {batch_size} x {d} values per example"


def estimate_sample_bytes(event_shape: Sequence[int], num: int) -> tuple[int, str]:
    """Bytes of the largest tensors of drawing ``num`` images (see the module docstring)."""
    d = math.prod(event_shape)
    return 3 * num * d * _FLOAT, f"3 x {num} images x {d} values"
