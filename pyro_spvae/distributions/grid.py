"""The regular grid ``{0, 1/(L-1), ..., 1}`` of ``L`` levels on which 8-bit image data live.

8-bit data (``L = 256``) take the values ``k / 255``; :class:`GridConstraint` is the support of
the grid-valued likelihoods (:class:`~pyro_spvae.distributions.BinomialGrid`,
:class:`~pyro_spvae.distributions.DiscretizedLogistic`,
:class:`~pyro_spvae.distributions.CategoricalGrid`).
"""

from __future__ import annotations

import torch
from torch.distributions import constraints

from pyro_spvae.validation import check_int

__all__ = ["GridConstraint", "grid", "grid_values", "grid_index"]

#: Tolerance, in units of the grid spacing, for a float to count as a grid value (float32 rounding
#: of ``k / 255`` is ~1e-5 of a spacing).
GRID_TOL = 1e-3


class GridConstraint(constraints.Constraint):
    """Constrain to the grid ``{k / (num_levels - 1) : k = 0, ..., num_levels - 1}`` (elementwise)."""

    is_discrete = True
    event_dim = 0

    def __init__(self, num_levels: int = 256) -> None:
        self.num_levels = check_int("num_levels", num_levels, 2)
        super().__init__()

    def check(self, value: torch.Tensor) -> torch.Tensor:
        scaled = value * (self.num_levels - 1)
        return (value >= 0) & (value <= 1) & ((scaled - scaled.round()).abs() <= GRID_TOL)

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}(num_levels={self.num_levels})"


#: The 8-bit grid ``{k / 255}``.
grid = GridConstraint(256)


def grid_values(num_levels: int = 256, dtype: torch.dtype | None = None,
                device: torch.device | str | None = None) -> torch.Tensor:
    """All grid values ``k / (num_levels - 1)``, shape ``(num_levels,)``."""
    return torch.arange(num_levels, dtype=dtype, device=device) / (num_levels - 1)


def grid_index(value: torch.Tensor, num_levels: int = 256) -> torch.Tensor:
    """Level index ``k = round(value * (num_levels - 1))`` (same shape, int64), clamped to range."""
    return (value * (num_levels - 1)).round().clamp(0, num_levels - 1).long()
