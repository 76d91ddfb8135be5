r"""A learnable Gaussian-mixture prior ``p(z) = sum_k pi_k N(z; mu_k, diag sigma_k^2)`` as a ``PyroModule``.

The means, scales and (optionally) weights are parameters of the module, so that a model holding
it as an attribute learns them by SVI like any other network weight (the learnt mixture prior of
VaDE, Jiang et al. 2017, and of the deep latent Gaussian mixture model, Nalisnick, Hertel & Smyth
2016). Calling the module returns a stateless
:class:`~pyro_spvae.distributions.gaussian_mixture.GaussianMixture`, used as an ordinary prior site::

    prior = GaussianMixturePrior(num_components=10, dim=32)
    with pyro.plate("data", x.shape[0]):
        z = pyro.sample("z", prior())                      # global weights pi
        z = pyro.sample("z", prior(logits=log_pi))         # per-data-point weights, log_pi (B, K)
"""

from __future__ import annotations

import torch
from pyro.nn import PyroModule, PyroParam
from torch import nn
from torch.distributions import constraints

from ..distributions.gaussian_mixture import GaussianMixture
from ..validation import check_bool, check_floating_dtype, check_positive_float, check_positive_int

__all__ = ["GaussianMixturePrior"]


class GaussianMixturePrior(PyroModule):
    r"""Learnable mixture of ``K`` diagonal Gaussians in ``D`` dimensions.

    :param num_components: ``K >= 1``.
    :param dim: latent dimension ``D >= 1``.
    :param learn_weights: learn the mixture logits (``True``) or keep uniform weights ``1/K``.
    :param init_spread: the means start at ``init_spread * N(0, I)`` (distinct, to break the
        symmetry between components); the scales start at 1.

    Parameters: ``locs`` ``(K, D)`` (``nn.Parameter``), ``scales`` ``(K, D)`` (``PyroParam``
    constrained positive), ``logits`` ``(K,)`` (``nn.Parameter``, or a buffer of zeros when the
    weights are not learnt).
    """

    def __init__(self, num_components: int, dim: int, learn_weights: bool = True,
                 init_spread: float = 1.0) -> None:
        super().__init__()
        K = check_positive_int("num_components", num_components)
        D = check_positive_int("dim", dim)
        self.learn_weights = check_bool("learn_weights", learn_weights)
        spread = check_positive_float("init_spread", init_spread)
        self.locs = nn.Parameter(spread * torch.randn(K, D))
        self.scales = PyroParam(torch.ones(K, D), constraint=constraints.positive)
        if self.learn_weights:
            self.logits = nn.Parameter(torch.zeros(K))
        else:
            self.register_buffer("logits", torch.zeros(K))

    @property
    def num_components(self) -> int:
        """``K``."""
        return self.locs.shape[0]

    @property
    def dim(self) -> int:
        """``D``."""
        return self.locs.shape[1]

    def forward(self, logits: torch.Tensor | None = None) -> GaussianMixture:
        """The prior as a distribution with ``event_shape (D,)``.

        :param logits: optional per-data-point log weights of shape ``(..., K)`` (for instance
            ``log pi`` of stick-breaking weights) replacing the module's own; the batch shape of
            the result is then ``logits.shape[:-1]``, otherwise ``()``.
        """
        if logits is None:
            logits = self.logits
        else:
            check_floating_dtype("logits", logits)
            if logits.dim() < 1 or logits.shape[-1] != self.num_components:
                raise ValueError(f"logits must have shape (..., {self.num_components}), "
                                 f"got {tuple(logits.shape)}")
        return GaussianMixture(logits, self.locs, self.scales)
