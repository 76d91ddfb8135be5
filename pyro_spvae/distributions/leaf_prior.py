r"""``LeafPrior``: the standard normal prior :math:`\mathcal{N}(0, I)` of the leaf latents of an SPVAE.

In an SPVAE (Tan & Peharz 2019; see ``docs/spvae.md``) every one of the ``L`` leaf VAEs has its own
latent :math:`z_l \in \mathbb{R}^{d}` with prior :math:`\mathcal{N}(0, I)`; the Pyro model draws
them all as one site of event shape ``(L, d)``. This distribution equals
``Normal(0, 1).expand(batch_shape + event_shape).to_event(len(event_shape))`` but holds no
parameter tensor and evaluates

.. math::  \log p(z) = -\tfrac12 \|z\|^2 - \tfrac{n}{2} \log 2\pi, \qquad n = \prod \text{event\_shape},

with one dot product instead of the half dozen elementwise passes of ``Normal.log_prob``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from pyro.distributions import TorchDistribution
from torch import Tensor
from torch.distributions import constraints

from pyro_spvae.validation import check_event_shape

from .fused_gaussian import LOG_2PI

__all__ = ["LeafPrior"]


class LeafPrior(TorchDistribution):
    r"""Standard normal over ``event_shape`` (e.g. ``(L, z_dim)``), independent over ``batch_shape``.

    :param event_shape: the shape of one draw, e.g. ``(L, z_dim)`` for the leaf latents of one
        data point.
    :param batch_shape: batch shape, e.g. ``(B,)``.
    :param dtype: dtype of the samples and densities (default: torch's default dtype).
    :param device: device of the samples and densities.
    :param validate_args: check values given to :meth:`log_prob` (torch's convention).

    Shapes: ``rsample(sample_shape)`` is ``sample_shape + batch_shape + event_shape``;
    ``log_prob(z)`` maps ``(..., *event_shape)`` to ``(...)``; ``mean``/``variance`` are
    ``batch_shape + event_shape``; ``entropy()`` is ``batch_shape``.
    """

    arg_constraints: dict[str, constraints.Constraint] = {}
    has_rsample = True

    def __init__(self, event_shape: Sequence[int], batch_shape: Sequence[int] = (),
                 dtype: torch.dtype | None = None, device: torch.device | str | None = None,
                 validate_args: bool | None = None) -> None:
        event_shape = torch.Size(check_event_shape("event_shape", event_shape))
        self.dtype = torch.get_default_dtype() if dtype is None else dtype
        self.device = torch.device("cpu") if device is None else torch.device(device)
        super().__init__(torch.Size(batch_shape), event_shape, validate_args=validate_args)

    @constraints.dependent_property(is_discrete=False, event_dim=0)
    def support(self) -> constraints.Constraint:
        return constraints.independent(constraints.real, len(self.event_shape))

    def expand(self, batch_shape: Sequence[int], _instance: LeafPrior | None = None) -> LeafPrior:
        new = self._get_checked_instance(LeafPrior, _instance)
        new.dtype, new.device = self.dtype, self.device
        super(LeafPrior, new).__init__(torch.Size(batch_shape), self.event_shape, validate_args=False)
        new._validate_args = self._validate_args
        return new

    @property
    def mean(self) -> Tensor:
        return torch.zeros(self.batch_shape + self.event_shape, dtype=self.dtype, device=self.device)

    @property
    def variance(self) -> Tensor:
        return torch.ones(self.batch_shape + self.event_shape, dtype=self.dtype, device=self.device)

    def rsample(self, sample_shape: Sequence[int] = ()) -> Tensor:
        shape = self._extended_shape(torch.Size(sample_shape))
        return torch.randn(shape, dtype=self.dtype, device=self.device)

    def log_prob(self, value: Tensor) -> Tensor:
        if self._validate_args:
            self._validate_sample(value)
        n = self.event_shape.numel()
        sq = torch.linalg.vecdot(value, value)  # summed over the last event dim
        sq = sq.sum(tuple(range(-len(self.event_shape) + 1, 0))) if len(self.event_shape) > 1 else sq
        return -0.5 * sq - 0.5 * n * LOG_2PI

    def entropy(self) -> Tensor:
        n = self.event_shape.numel()
        return torch.full(self.batch_shape, 0.5 * n * (1.0 + LOG_2PI), dtype=self.dtype, device=self.device)
