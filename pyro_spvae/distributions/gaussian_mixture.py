r"""Mixture of diagonal Gaussians with batch-broadcast (per-data-point or global) weights.

The latent-mixture prior of the deep latent Gaussian mixture model (Nalisnick, Hertel & Smyth 2016,
"Approximate inference for deep latent Gaussian mixtures", NIPS workshop on Bayesian deep
learning; the finite-K prior of VaDE, Jiang et al. 2017, IJCAI):

.. math::

    p(z) = \sum_{k=1}^{K} \pi_k\, \mathcal{N}\big(z;\ \mu_k, \mathrm{diag}(\sigma_k^2)\big),
    \qquad \pi = \mathrm{softmax}(\ell),

    \log p(z) = \operatorname{logsumexp}_k \Big[\log \pi_k - \sum_{d=1}^{D} \Big(
    \frac{(z_d - \mu_{kd})^2}{2 \sigma_{kd}^2} + \log \sigma_{kd} + \tfrac12 \log 2\pi \Big)\Big].

The responsibilities ``p(k | z) = softmax_k(log pi_k + log N(z; mu_k, sigma_k^2))`` give the
posterior over the component (VaDE's cluster assignment). Moments: ``E[z] = sum_k pi_k mu_k`` and
``Var[z_d] = sum_k pi_k (sigma_kd^2 + mu_kd^2) - E[z_d]^2``. Parameters broadcast: logits
``(..., K)`` (per data point, e.g. ``(B, K)``, or global ``(K,)``), locs and scales ``(..., K, D)``.

Sampling draws the component then the Gaussian (``has_rsample = False``). For a reparameterised
mixture posterior with ``D >= 2`` use :meth:`GaussianMixture.to_pathwise`, which builds Pyro's
:class:`~pyro.distributions.MixtureOfDiagNormals` (pathwise gradients of Jankowiak & Karaletsos
2019, arXiv:1806.01856) on the broadcast parameters.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from pyro.distributions import MixtureOfDiagNormals, TorchDistribution
from torch.distributions import constraints

from ..validation import check_floating_dtype

__all__ = ["GaussianMixture"]


class GaussianMixture(TorchDistribution):
    r"""Mixture of ``K`` diagonal Gaussians in ``D`` dimensions (see the module docstring).

    :param logits: unnormalised log mixture weights, shape ``(..., K)``; ``log pi`` (e.g. the log of
        stick-breaking weights, ``-inf`` allowed for empty components) works as well.
    :param locs: component means ``mu``, shape ``(..., K, D)``.
    :param scales: component standard deviations ``sigma > 0``, shape ``(..., K, D)``.

    ``batch_shape`` is the broadcast of ``logits.shape[:-1]``, ``locs.shape[:-2]`` and
    ``scales.shape[:-2]``; ``event_shape == (D,)``.
    """

    arg_constraints = {
        "logits": constraints.independent(constraints.real, 1),
        "locs": constraints.independent(constraints.real, 2),
        "scales": constraints.independent(constraints.positive, 2),
    }
    support = constraints.real_vector
    has_rsample = False

    def __init__(self, logits: torch.Tensor, locs: torch.Tensor, scales: torch.Tensor,
                 validate_args: bool | None = None) -> None:
        for name, x, dims in (("logits", logits, 1), ("locs", locs, 2), ("scales", scales, 2)):
            check_floating_dtype(name, x)
            if x.dim() < dims:
                raise ValueError(f"{name} needs at least {dims} dimension(s), got shape {tuple(x.shape)}")
        K, D = locs.shape[-2:]
        if scales.shape[-2:] != locs.shape[-2:] or logits.shape[-1] != K:
            raise ValueError(f"expected logits (..., K), locs and scales (..., K, D) with equal K, D; got "
                             f"{tuple(logits.shape)}, {tuple(locs.shape)}, {tuple(scales.shape)}")
        # numpy's broadcast_shapes: torch's imports torch._refs lazily (seconds) on its first call
        batch_shape = torch.Size(np.broadcast_shapes(logits.shape[:-1], locs.shape[:-2], scales.shape[:-2]))
        self.logits = logits - logits.logsumexp(-1, keepdim=True)
        self.locs, self.scales = locs, scales
        super().__init__(batch_shape, torch.Size((D,)), validate_args=validate_args)

    @property
    def num_components(self) -> int:
        """``K``."""
        return self.logits.shape[-1]

    @property
    def probs(self) -> torch.Tensor:
        """Mixture weights ``pi``, shape ``logits.shape`` (not expanded)."""
        return self.logits.exp()

    def expand(self, batch_shape, _instance=None):
        new = self._get_checked_instance(GaussianMixture, _instance)
        batch_shape = torch.Size(batch_shape)
        new.logits = self.logits.expand(batch_shape + self.logits.shape[-1:])
        new.locs = self.locs.expand(batch_shape + self.locs.shape[-2:])
        new.scales = self.scales.expand(batch_shape + self.scales.shape[-2:])
        super(GaussianMixture, new).__init__(batch_shape, self.event_shape, validate_args=False)
        new._validate_args = self._validate_args
        return new

    def component_log_prob(self, value: torch.Tensor) -> torch.Tensor:
        """``log pi_k + log N(z; mu_k, sigma_k^2)`` for every component, shape ``broadcast(value.shape[:-1],
        batch_shape) + (K,)``: the joint log density of ``z`` and the component index."""
        z = value.unsqueeze(-2)  # (..., 1, D)
        eps = (z - self.locs) / self.scales
        log_normal = -(0.5 * eps.pow(2) + self.scales.log() + 0.5 * math.log(2 * math.pi)).sum(-1)
        return self.logits + log_normal

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        """``logsumexp_k`` of :meth:`component_log_prob`; shape ``broadcast(value.shape[:-1],
        batch_shape)``."""
        if self._validate_args:
            self._validate_sample(value)
        return self.component_log_prob(value).logsumexp(-1)

    def responsibilities(self, value: torch.Tensor) -> torch.Tensor:
        """Posterior component probabilities ``p(k | z)``, shape ``(..., K)``, summing to 1."""
        return torch.softmax(self.component_log_prob(value), dim=-1)

    def _broadcast_params(self, shape: tuple[int, ...] = ()) -> tuple[torch.Tensor, ...]:
        batch = torch.Size(shape) + self.batch_shape
        K, D = self.locs.shape[-2:]
        return (self.logits.expand(batch + (K,)), self.locs.expand(batch + (K, D)),
                self.scales.expand(batch + (K, D)))

    def sample(self, sample_shape: tuple[int, ...] = ()) -> torch.Tensor:
        """Ancestral sample: ``k ~ Categorical(pi)``, then ``z ~ N(mu_k, sigma_k^2)``; shape
        ``sample_shape + batch_shape + (D,)``."""
        logits, locs, scales = self._broadcast_params(torch.Size(sample_shape))
        with torch.no_grad():
            k = torch.distributions.Categorical(logits=logits).sample()
            index = k[..., None, None].expand(*k.shape, 1, locs.shape[-1])
            loc, scale = locs.gather(-2, index).squeeze(-2), scales.gather(-2, index).squeeze(-2)
            return loc + scale * torch.randn_like(loc)

    @property
    def mean(self) -> torch.Tensor:
        """``sum_k pi_k mu_k``, shape ``batch_shape + (D,)``."""
        _, locs, _ = self._broadcast_params()
        return (self.probs.unsqueeze(-1) * locs).sum(-2)

    @property
    def variance(self) -> torch.Tensor:
        """``sum_k pi_k (sigma_k^2 + mu_k^2) - mean^2``, shape ``batch_shape + (D,)``."""
        _, locs, scales = self._broadcast_params()
        second = (self.probs.unsqueeze(-1) * (scales.pow(2) + locs.pow(2))).sum(-2)
        return second - self.mean.pow(2)

    def to_pathwise(self) -> MixtureOfDiagNormals:
        """The same mixture as Pyro's ``MixtureOfDiagNormals`` (``rsample`` with pathwise gradients;
        needs ``D >= 2``), with the parameters expanded to ``batch_shape + (K, D)``."""
        if self.event_shape[0] < 2:
            raise ValueError("MixtureOfDiagNormals does not support dimension D = 1")
        logits, locs, scales = self._broadcast_params()
        return MixtureOfDiagNormals(locs, scales, logits)
