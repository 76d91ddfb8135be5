r"""``LeafPosterior``: the mean-field Gaussian posterior over the leaf latents of an SPVAE.

The leaf-wise guide of an SPVAE (Tan & Peharz 2019; see ``docs/spvae.md``) proposes
:math:`q(z \mid x) = \prod_l \mathcal{N}(z_l; \mu_l, \mathrm{diag}\,\sigma_l^2)` over the ``L``
leaf latents of a data point, one site of event shape ``(L, d)``. This distribution equals
``Normal(loc, scale).to_event(2)``; its ``log_prob`` evaluates the quadratic form with the fused
:class:`~pyro_spvae.distributions.fused_gaussian.GaussianQuadForm`, and its KL divergence to
:class:`~pyro_spvae.distributions.LeafPrior` is analytic (for
:class:`~pyro.infer.TraceMeanField_ELBO`):

.. math::

    \mathrm{KL}(q \,\|\, \mathcal{N}(0, I)) = \tfrac12 \sum (\sigma^2 + \mu^2 - 1) - \sum \log \sigma.

It holds no state besides its parameters: a guide that wants :math:`\log q` of its own
reparameterised draws more cheaply computes it from the standard-normal noise it drew (see
:meth:`SPVAEGuide.leaf_rsample <pyro_spvae.guides.SPVAEGuide.leaf_rsample>`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from pyro.distributions import TorchDistribution
from torch import Tensor
from torch.distributions import constraints, register_kl

from .fused_gaussian import LOG_2PI, gaussian_quad_form
from .leaf_prior import LeafPrior

__all__ = ["LeafPosterior"]


class LeafPosterior(TorchDistribution):
    r""":math:`\prod_l \mathcal{N}(z_l; \mu_l, \mathrm{diag}\,\sigma_l^2)` over ``(L, z_dim)`` per data point.

    :param loc: means :math:`\mu`, shape ``batch_shape + (L, z_dim)``.
    :param scale: standard deviations :math:`\sigma > 0`, broadcasting with ``loc``.
    :param validate_args: check the parameters and the values given to :meth:`log_prob`.

    Shapes: ``batch_shape = loc.shape[:-2]``, ``event_shape = (L, z_dim)``;
    ``rsample(sample_shape)`` is ``sample_shape + batch_shape + event_shape``; ``log_prob(z)`` maps
    ``(..., L, z_dim)`` to ``(...)``; ``entropy()`` is ``batch_shape``.
    """

    arg_constraints = {"loc": constraints.real, "scale": constraints.positive}
    support = constraints.independent(constraints.real, 2)
    has_rsample = True

    def __init__(self, loc: Tensor, scale: Tensor, validate_args: bool | None = None) -> None:
        # stored as given (broadcast only against each other); ``expand`` grows the batch shape
        # without copying them, so log_prob and entropy work on the small tensors
        self._loc, self._scale = torch.broadcast_tensors(loc, scale)
        if self._loc.dim() < 2:
            raise ValueError(f"loc and scale must have shape (..., L, z_dim), got {tuple(self._loc.shape)}")
        super().__init__(self._loc.shape[:-2], self._loc.shape[-2:], validate_args=validate_args)

    @property
    def loc(self) -> Tensor:
        """Means, ``batch_shape + event_shape``."""
        return self._loc.expand(self.batch_shape + self.event_shape)

    @property
    def scale(self) -> Tensor:
        """Standard deviations, ``batch_shape + event_shape``."""
        return self._scale.expand(self.batch_shape + self.event_shape)

    def expand(self, batch_shape: Sequence[int], _instance: LeafPosterior | None = None) -> LeafPosterior:
        new = self._get_checked_instance(LeafPosterior, _instance)
        batch_shape = torch.Size(batch_shape)
        torch.broadcast_shapes(self._loc.shape, batch_shape + self.event_shape)  # raises if not expandable
        new._loc, new._scale = self._loc, self._scale
        super(LeafPosterior, new).__init__(batch_shape, self.event_shape, validate_args=False)
        new._validate_args = self._validate_args
        return new

    @property
    def mean(self) -> Tensor:
        return self.loc

    @property
    def variance(self) -> Tensor:
        return self.scale.pow(2)

    def rsample(self, sample_shape: Sequence[int] = ()) -> Tensor:
        shape = self._extended_shape(torch.Size(sample_shape))
        eps = torch.randn(shape, dtype=self._loc.dtype, device=self._loc.device)
        return torch.addcmul(self._loc, self._scale, eps)

    def log_prob(self, value: Tensor) -> Tensor:
        if self._validate_args:
            self._validate_sample(value)
        log_scale = torch.log(self._scale)
        quad = gaussian_quad_form(value, self._loc, log_scale).sum(-1)
        out = quad - log_scale.sum((-2, -1)) - 0.5 * self.event_shape.numel() * LOG_2PI
        return out.expand(torch.broadcast_shapes(out.shape, self.batch_shape))

    def entropy(self) -> Tensor:
        n = self.event_shape.numel()
        return (torch.log(self._scale).sum((-2, -1)) + 0.5 * n * (1.0 + LOG_2PI)).expand(self.batch_shape)


@register_kl(LeafPosterior, LeafPrior)
def kl_leaf_posterior_prior(q: LeafPosterior, p: LeafPrior) -> Tensor:
    """Analytic KL: ``0.5 * sum(scale^2 + loc^2 - 1) - sum(log scale)``, shape ``batch_shape``."""
    if q.event_shape != p.event_shape:
        raise ValueError(f"event shapes differ: {tuple(q.event_shape)} vs {tuple(p.event_shape)}")
    sq = q.scale * q.scale + q.loc * q.loc - 1.0
    return 0.5 * sq.sum((-2, -1)) - torch.log(q.scale).sum((-2, -1))
