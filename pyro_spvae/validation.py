"""Argument and data checks used by every layer of the package (one helper per check).

The rule for exception types, applied everywhere:

- :class:`TypeError` when an argument has the wrong Python type (a float where an int is
  expected, ``bool`` for a number, a list where a tensor is expected);
- :class:`ValueError` when the type is right but the value is not (out of range, NaN, wrong
  shape, unknown name, wrong dtype or device of a tensor).

Every message names the argument and what would be accepted, so that bad hyper-parameters and
bad data fail early with a clear error rather than deep inside a matrix multiplication. This
module imports nothing from the rest of the package but :mod:`pyro_spvae.validation_memo` (data
checks run once per batch), so that ``distributions``, ``spn``, ``nn``,
``data``, ``infer`` and ``training`` can all use it.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Sequence
from numbers import Integral, Real
from typing import Any

import torch

from pyro_spvae.validation_memo import passed_once

__all__ = [
    "broadcastable",
    "check_bool",
    "check_instance",
    "check_choice",
    "check_event_shape",
    "check_float_tensor",
    "check_floating_dtype",
    "check_hidden",
    "check_input_like",
    "check_int",
    "check_integer_dtype",
    "check_module_data",
    "check_network_input",
    "check_nonnegative_int",
    "check_positive_float",
    "check_positive_int",
    "check_real",
    "check_tensor",
    "check_unit_interval",
]


def _is_int(value: object) -> bool:
    return isinstance(value, Integral) and not isinstance(value, bool)


def check_int(name: str, value: object, minimum: int | None = None, maximum: int | None = None) -> int:
    """Return ``value`` as an ``int`` after checking ``minimum <= value <= maximum``.

    Python and NumPy integers are accepted; ``bool`` is not.

    :raises TypeError: if ``value`` is not an integer.
    :raises ValueError: if it lies outside ``[minimum, maximum]``.
    """
    if not _is_int(value):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        lo = "-inf" if minimum is None else str(minimum)
        hi = "inf" if maximum is None else str(maximum)
        raise ValueError(f"{name} must be an int in [{lo}, {hi}], got {value}")
    return int(value)


def check_positive_int(name: str, value: object) -> int:
    """:func:`check_int` with ``minimum=1``."""
    return check_int(name, value, 1)


def check_nonnegative_int(name: str, value: object) -> int:
    """:func:`check_int` with ``minimum=0``."""
    return check_int(name, value, 0)


def check_real(name: str, value: object, low: float | None = None, high: float | None = None, *,
               low_open: bool = False, high_open: bool = False) -> float:
    """Return ``value`` as a finite ``float`` in the interval from ``low`` to ``high``.

    :param low_open: exclude ``low`` itself; :param high_open: exclude ``high`` itself.
    :raises TypeError: if ``value`` is not a real number (``bool`` included).
    :raises ValueError: for NaN, infinity or a value outside the interval.
    """
    if not isinstance(value, Real) or isinstance(value, bool):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__} {value!r}")
    v = float(value)
    too_low = low is not None and (v <= low if low_open else v < low)
    too_high = high is not None and (v >= high if high_open else v > high)
    if not math.isfinite(v) or too_low or too_high:
        lo = "(-inf" if low is None else ("(" if low_open else "[") + f"{low:g}"
        hi = "inf)" if high is None else f"{high:g}" + (")" if high_open else "]")
        raise ValueError(f"{name} must be a finite number in {lo}, {hi}, got {value!r}")
    return v


def check_positive_float(name: str, value: object) -> float:
    """:func:`check_real` in ``(0, inf)``, e.g. a learning rate or a scale."""
    return check_real(name, value, 0.0, low_open=True)


def check_unit_interval(name: str, value: object, *, closed_low: bool = False) -> float:
    """:func:`check_real` in ``(0, 1)`` (``[0, 1)`` with ``closed_low``), e.g. a decay factor."""
    return check_real(name, value, 0.0, 1.0, low_open=not closed_low, high_open=True)


def check_bool(name: str, value: object) -> bool:
    """Check that ``value`` is a ``bool`` (``0``/``1`` are refused: they usually mean a typo).

    :raises TypeError: otherwise.
    """
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {type(value).__name__} {value!r}")
    return value


def check_instance(name: str, value: object, cls: type, what: str | None = None) -> Any:
    """Check that ``value`` is an instance of ``cls`` (``what``: how the message names it, default
    the class name).

    :raises TypeError: otherwise.
    """
    if not isinstance(value, cls):
        raise TypeError(f"{name} must be a {what or cls.__name__}, got {type(value).__name__}")
    return value


def check_choice(name: str, value: object, choices: Collection[Any]) -> Any:
    """Check that ``value`` is one of ``choices`` (e.g. a likelihood or architecture name).

    :raises ValueError: naming the accepted values otherwise.
    """
    try:
        ok = value in choices
    except TypeError:  # unhashable value against a set
        ok = False
    if not ok:
        raise ValueError(f"unknown {name} {value!r}; choose one of {sorted(map(str, choices))}")
    return value


def _check_int_sequence(name: str, value: object, what: str) -> tuple[int, ...]:
    if _is_int(value):
        value = (value,)
    if not isinstance(value, Sequence) or isinstance(value, (str, bytes, bytearray)):
        raise TypeError(f"{name} must be {what}, got {value!r}")
    return tuple(check_positive_int(f"{name}[{i}]", h) for i, h in enumerate(value))


def check_hidden(name: str, hidden: object) -> tuple[int, ...]:
    """Return the hidden-layer widths ``hidden`` as a tuple of positive ints (may be empty).

    A single int is accepted as a one-layer network.
    """
    return _check_int_sequence(name, hidden, "a sequence of positive ints")


def check_event_shape(name: str, event_shape: object) -> tuple[int, ...]:
    """Return ``event_shape`` as a non-empty tuple of positive ints, e.g. ``(C, H, W)``."""
    shape = _check_int_sequence(name, event_shape, "a tuple of positive ints such as (1, 28, 28)")
    if len(shape) == 0:
        raise ValueError(f"{name} must have at least one dimension, got ()")
    return shape


def broadcastable(*shapes: Sequence[int]) -> bool:
    """Whether ``shapes`` broadcast together (torch's rule: aligned from the right, each pair of
    sizes equal or one of them 1); a pure-Python test, ~7x cheaper than ``torch.broadcast_shapes``
    for the per-step shape checks of distributions."""
    out: dict[int, int] = {}
    for shape in shapes:
        for i, size in enumerate(reversed(shape)):
            seen = out.setdefault(i, size)
            if size != seen and 1 not in (size, seen):
                return False
            if seen == 1:
                out[i] = size
    return True


def check_tensor(name: str, x: object) -> torch.Tensor:
    """Check that ``x`` is a :class:`torch.Tensor`.

    :raises TypeError: otherwise.
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    return x


def check_floating_dtype(name: str, x: object) -> torch.Tensor:
    """Check that ``x`` is a tensor with a floating-point dtype (any of float16/32/64, bfloat16).

    :raises TypeError: if ``x`` is not a tensor.
    :raises ValueError: for an integer, boolean or complex dtype.
    """
    x = check_tensor(name, x)
    if not x.dtype.is_floating_point:
        raise ValueError(f"{name} must have a floating-point dtype (e.g. torch.float32), got {x.dtype}")
    return x


def check_integer_dtype(name: str, x: object) -> torch.Tensor:
    """Check that ``x`` is a tensor with an integer dtype (e.g. indices or labels; ``bool`` is not
    an integer dtype here).

    :raises TypeError: if ``x`` is not a tensor.
    :raises ValueError: for a floating, complex or boolean dtype.
    """
    x = check_tensor(name, x)
    if x.dtype.is_floating_point or x.dtype.is_complex or x.dtype == torch.bool:
        raise ValueError(f"{name} must have an integer dtype (e.g. torch.long), got {x.dtype}")
    return x


def check_input_like(name: str, x: object, like: torch.Tensor) -> torch.Tensor:
    """Check that ``x`` is a tensor with the dtype and device of ``like`` (a module parameter), so
    that a network input of the wrong dtype (int, float64 for a float32 module, ...) fails with a
    clear message instead of deep inside a matrix multiplication or convolution.

    :raises TypeError: if ``x`` is not a tensor.
    :raises ValueError: for a dtype or device different from ``like``'s.
    """
    x = check_tensor(name, x)
    if x.dtype != like.dtype:
        raise ValueError(
            f"{name} has dtype {x.dtype}, expected {like.dtype} (the dtype of the module's parameters); "
            f"convert the input with .to({like.dtype}) or the module with .to({x.dtype})"
        )
    if x.device != like.device:
        raise ValueError(f"{name} is on device {x.device}, but the module's parameters are on {like.device}")
    return x


def check_network_input(name: str, x: object, like: torch.Tensor,
                        trailing_shape: Sequence[int]) -> torch.Tensor:
    """Check the input ``x`` of a network: :func:`check_input_like` (tensor, ``like``'s dtype and
    device) and trailing dims equal to ``trailing_shape``; the leading (batch) dims are free.

    Cheap (no pass over the values), so networks can call it on every forward.

    :raises TypeError: if ``x`` is not a tensor.
    :raises ValueError: for a wrong dtype, device or trailing shape.
    """
    x = check_input_like(name, x, like)
    n = len(trailing_shape)
    if x.dim() < n or tuple(x.shape[x.dim() - n:]) != tuple(trailing_shape):
        expected = ", ".join(str(s) for s in trailing_shape)
        raise ValueError(f"{name} has shape {tuple(x.shape)}, expected (..., {expected})")
    return x


def check_module_data(name: str, x: object, event_shape: tuple[int, ...], module: torch.nn.Module,
                      batch_dims: int | None = 1) -> torch.Tensor:
    """Check a data batch ``x`` given to ``module`` (a model or a guide): :func:`check_float_tensor`
    (finite floats of shape ``(B, *event_shape)``, ``B >= 1``, with ``batch_dims`` leading dims;
    ``None``: any number) and, when ``module`` has parameters, their dtype and device
    (:func:`check_input_like`).

    :raises TypeError: if ``x`` is not a tensor.
    :raises ValueError: for a non-floating dtype, a wrong shape, an empty batch, NaN or infinite
        entries, or a dtype/device different from the module's parameters.
    """
    x = check_float_tensor(name, x, event_shape, batch_dims=batch_dims)
    param = next(module.parameters(), None)
    if param is not None:
        check_input_like(name, x, param)
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
    # NaN and inf always reach the sum, so one reduction decides the common (finite) case; the
    # elementwise pass runs only when the sum is not finite (which large finite values can cause).
    if not passed_once("finite", x, _all_finite):
        nan = int(torch.isnan(x).sum())
        if nan:
            raise ValueError(f"{name} contains NaN values ({nan} entries)")
        raise ValueError(f"{name} contains infinite values ({int(torch.isinf(x).sum())} entries)")
    return x


def _all_finite(x: torch.Tensor) -> bool:
    return bool(torch.isfinite(x.sum())) or bool(torch.isfinite(x).all())
