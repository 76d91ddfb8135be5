"""Input checks shared by the :class:`~pyro_spvae.spn.network.SPN` module and its distribution view
:class:`~pyro_spvae.distributions.SumProductNetwork`.

- :func:`check_spn_value`: a value ``(..., *event_shape)`` (``NaN`` = missing) whose leading dims
  broadcast with a batch shape and whose observed entries lie in the leaves' support;
- :func:`check_sample_shape`: a ``sample_shape`` as a ``torch.Size`` of non-negative ints.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torch.distributions import constraints

from pyro_spvae.validation import check_int, check_tensor

__all__ = ["check_sample_shape", "check_spn_value"]


def check_spn_value(value: object, event_shape: Sequence[int], support: constraints.Constraint, *,
                    batch_shape: Sequence[int] = (), allow_missing: bool = True,
                    name: str = "SumProductNetwork value") -> Tensor:
    """Check a value ``(..., *event_shape)`` given to an SPN (the checks of ``log_prob``, shared by
    :meth:`SPN.log_prob` and the distribution view :class:`~pyro_spvae.distributions.SumProductNetwork`).

    :param support: the leaves' support (observed entries must lie in it).
    :param batch_shape: the leading dims must broadcast with it.
    :param allow_missing: whether ``NaN`` (missing) entries are accepted.
    :raises TypeError: if ``value`` is not a tensor.
    :raises ValueError: for a non-floating dtype, a wrong trailing shape, leading dims that do not
        broadcast, ``NaN`` without ``allow_missing``, infinite entries or observed entries outside
        ``support`` (e.g. ``0.5`` for Bernoulli leaves, ``2.99`` or ``300`` for 3 categories).
    """
    value = check_tensor(name, value)
    if not value.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor (NaN = missing), got {value.dtype}")
    ev, n = tuple(event_shape), len(event_shape)
    if value.dim() < n or tuple(value.shape[value.dim() - n :]) != ev:
        raise ValueError(f"{name} must have shape (..., {', '.join(map(str, ev))}); got {tuple(value.shape)}")
    lead = value.shape[: value.dim() - n]
    try:
        torch.broadcast_shapes(lead, torch.Size(batch_shape))
    except RuntimeError as err:
        raise ValueError(f"value batch shape {tuple(lead)} does not broadcast with the distribution's "
                         f"batch shape {tuple(batch_shape)}") from err
    missing = torch.isnan(value)
    if not allow_missing and bool(missing.any()):
        raise ValueError(f"{name} contains NaN but allow_missing=False")
    if bool(torch.isinf(value).any()):
        raise ValueError(f"{name} contains infinite entries")
    observed = value[~missing]
    if observed.numel() and not bool(support.check(observed).all()):
        raise ValueError(f"{name} has entries outside the leaves' support {support}")
    return value


def check_sample_shape(sample_shape: object) -> torch.Size:
    """``sample_shape`` as a ``torch.Size`` of non-negative ints (``0`` gives an empty sample).

    :raises TypeError: for a non-sequence or non-integer entries; :raises ValueError: for negative ones.
    """
    if isinstance(sample_shape, (str, bytes)) or not isinstance(sample_shape, Sequence):
        raise TypeError(f"sample_shape must be a sequence of ints, got {type(sample_shape).__name__}")
    return torch.Size(check_int(f"sample_shape[{i}]", d, 0) for i, d in enumerate(sample_shape))
