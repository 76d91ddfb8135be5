"""Argument checks shared by the network builders, likelihood heads, models and guides.

Every check raises a :class:`TypeError` (wrong Python type) or :class:`ValueError` (invalid value)
whose message names the offending argument, so that bad hyper-parameters and bad data fail early
with a clear error rather than deep inside a matrix multiplication.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = [
    "check_positive_int",
    "check_nonnegative_int",
    "check_hidden",
    "check_event_shape",
    "check_float_tensor",
    "check_floating_dtype",
    "check_input_like",
]


def check_positive_int(name: str, value: object) -> int:
    """Return ``value`` as an ``int`` after checking that it is a positive integer.

    :raises TypeError: if ``value`` is not an integer (``bool`` is rejected too).
    :raises ValueError: if ``value < 1``.
    """
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be a positive int, got {type(value).__name__} {value!r}")
    if value < 1:
        raise ValueError(f"{name} must be a positive int, got {value}")
    return int(value)


def check_hidden(name: str, hidden: object) -> tuple[int, ...]:
    """Return the hidden-layer widths ``hidden`` as a tuple of positive ints (may be empty).

    A single int is accepted as a one-layer network.
    """
    if isinstance(hidden, int) and not isinstance(hidden, bool):
        hidden = (hidden,)
    if not isinstance(hidden, Sequence) or isinstance(hidden, (str, bytes, bytearray)):
        raise TypeError(f"{name} must be a sequence of positive ints, got {hidden!r}")
    return tuple(check_positive_int(f"{name}[{i}]", h) for i, h in enumerate(hidden))


def check_event_shape(name: str, event_shape: object) -> tuple[int, ...]:
    """Return ``event_shape`` as a non-empty tuple of positive ints, e.g. ``(C, H, W)``."""
    if isinstance(event_shape, int) and not isinstance(event_shape, bool):
        event_shape = (event_shape,)
    if not isinstance(event_shape, Sequence) or isinstance(event_shape, (str, bytes, bytearray)):
        raise TypeError(f"{name} must be a tuple of positive ints such as (1, 28, 28), got {event_shape!r}")
    if len(event_shape) == 0:
        raise ValueError(f"{name} must have at least one dimension, got {tuple(event_shape)}")
    return tuple(check_positive_int(f"{name}[{i}]", s) for i, s in enumerate(event_shape))


def check_nonnegative_int(name: str, value: object) -> int:
    """Return ``value`` as an ``int`` after checking that it is an integer ``>= 0``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be a non-negative int, got {type(value).__name__} {value!r}")
    if value < 0:
        raise ValueError(f"{name} must be a non-negative int, got {value}")
    return int(value)


def check_unit_interval(name: str, value: object, *, closed_low: bool = False) -> float:
    """A real number in ``(0, 1)`` (``[0, 1)`` with ``closed_low``), e.g. a decay factor.

    :raises ValueError: naming ``name`` and the interval otherwise (bools included).
    """
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not ok or not (0 <= value < 1 if closed_low else 0 < value < 1):
        raise ValueError(f"{name} must be a number in {'[0' if closed_low else '(0'}, 1), got {value!r}")
    return float(value)


def _check_is_tensor(name: str, x: object) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    return x


def check_floating_dtype(name: str, x: object) -> torch.Tensor:
    """Check that ``x`` is a tensor with a floating-point dtype (any of float16/32/64, bfloat16).

    :raises TypeError: if ``x`` is not a tensor.
    :raises ValueError: for an integer, boolean or complex dtype.
    """
    x = _check_is_tensor(name, x)
    if not x.dtype.is_floating_point:
        raise ValueError(f"{name} must have a floating-point dtype (e.g. torch.float32), got {x.dtype}")
    return x


def check_input_like(name: str, x: object, like: torch.Tensor) -> torch.Tensor:
    """Check that ``x`` is a tensor with the dtype and device of ``like`` (a module parameter), so
    that a network input of the wrong dtype (int, float64 for a float32 module, ...) fails with a
    clear message instead of deep inside a matrix multiplication or convolution.

    :raises TypeError: if ``x`` is not a tensor.
    :raises ValueError: for a dtype or device different from ``like``'s.
    """
    x = _check_is_tensor(name, x)
    if x.dtype != like.dtype:
        raise ValueError(
            f"{name} has dtype {x.dtype}, expected {like.dtype} (the dtype of the module's parameters); "
            f"convert the input with .to({like.dtype}) or the module with .to({x.dtype})"
        )
    if x.device != like.device:
        raise ValueError(f"{name} is on device {x.device}, but the module's parameters are on {like.device}")
    return x


def check_float_tensor(name: str, x: object, event_shape: tuple[int, ...] | None = None,
                       batch_dims: int | None = None) -> torch.Tensor:
    """Check that ``x`` is a finite floating-point tensor with trailing shape ``event_shape``.

    :param name: the argument name used in error messages.
    :param x: the tensor to check.
    :param event_shape: required trailing shape, or ``None`` to skip the shape check.
    :param batch_dims: exact number of leading batch dims required (``None``: any number).
    :raises TypeError: if ``x`` is not a tensor.
    :raises ValueError: for a non-floating dtype, a wrong shape, NaN or infinite entries.
    """
    x = check_floating_dtype(name, x)
    if event_shape is not None:
        n = len(event_shape)
        ok = x.dim() >= n and tuple(x.shape[x.dim() - n:]) == tuple(event_shape)
        if batch_dims is not None:
            ok = ok and x.dim() == n + batch_dims
        if not ok:
            lead = "B, " * batch_dims if batch_dims is not None else "..., "
            expected = "(" + lead + ", ".join(str(s) for s in event_shape) + ")"
            raise ValueError(f"{name} has shape {tuple(x.shape)}, expected {expected}")
    if batch_dims is not None and 0 in x.shape[:batch_dims]:
        raise ValueError(f"{name} is an empty batch (shape {tuple(x.shape)}); need at least one data point")
    if torch.isnan(x).any():
        raise ValueError(f"{name} contains NaN values ({int(torch.isnan(x).sum())} entries)")
    if torch.isinf(x).any():
        raise ValueError(f"{name} contains infinite values ({int(torch.isinf(x).sum())} entries)")
    return x
