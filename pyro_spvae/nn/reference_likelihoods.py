"""The likelihood parameterisations of the SPVAE reference code (Tan & Peharz 2019, the authors'
TensorFlow implementation; see ``docs/spvae.md``), as functions and a distribution that every
model can use:

- :func:`precision_gaussian_log_lik`: a Gaussian whose precision ``1 + g^2`` is predicted per
  example and element (so ``sigma <= 1``), the continuous likelihood
  (:class:`~pyro_spvae.nn.GaussianLikelihood` ``scale="precision"``);
- :func:`squeezed_count_log_pmf` and :class:`SqueezedBinomialGrid`: the Binomial(255) with the
  success probability squeezed affinely into ``[eps, 1 - eps]`` and ``eps`` added again inside
  the logs, the discrete likelihood (:class:`~pyro_spvae.nn.BinomialLikelihood` ``eps=1e-7``).
"""

from __future__ import annotations

import math

import torch

from pyro_spvae.validation import check_floating_dtype, check_real

from ..distributions.binomial_grid import BinomialGrid
from ..distributions.counts import log_binomial_coefficient
from ..distributions.grid import grid_index

__all__ = ["SqueezedBinomialGrid", "precision_gaussian_log_lik", "squeezed_count_log_pmf"]

_LOG_2PI = math.log(2 * math.pi)


def precision_gaussian_log_lik(x: torch.Tensor, loc: torch.Tensor, g: torch.Tensor,
                               observed: torch.Tensor | None = None, dim: int = -1) -> torch.Tensor:
    r"""Gaussian log-density with precision :math:`\tau = 1 + g^2`, summed over ``dim``:
    :math:`\sum_d \tfrac12 \log(\tau_d / 2\pi) - \tfrac12 \tau_d (x_d - \mu_d)^2`, the
    continuous likelihood of the SPVAE reference code (Tan & Peharz 2019; ``sigma <= 1``, no clamp;
    see ``docs/spvae.md``).

    :param x: observations; missing entries must hold a finite value and have ``observed`` false.
    :param loc: means :math:`\mu`, broadcasting with ``x``.
    :param g: the raw precision output, broadcasting with both.
    :param observed: optional mask multiplied into every term (exact marginalisation).
    :param dim: the dim summed over.
    """
    g2 = g * g
    r = x - loc
    t = torch.log1p(g2) - (1.0 + g2) * (r * r)
    if observed is not None:
        return 0.5 * ((t - _LOG_2PI) * observed).sum(dim)
    # The constant once per sum instead of once per element of the broadcast tensor.
    return 0.5 * t.sum(dim) - (0.5 * _LOG_2PI) * t.shape[dim]


def squeezed_count_log_pmf(k: torch.Tensor, logits: torch.Tensor, total_count: int, eps: float = 1e-7, *,
                           observed: torch.Tensor | None = None, dim: int | None = None) -> torch.Tensor:
    r"""The Binomial log-pmf of the SPVAE reference code (Tan & Peharz 2019; see ``docs/spvae.md``):
    with :math:`p = \sigma(\ell)(1 - 2\epsilon) + \epsilon` (an affine squeeze into
    :math:`[\epsilon, 1 - \epsilon]`),
    :math:`k \log(\epsilon + p) + (n - k) \log(\epsilon + 1 - p) + \log\binom{n}{k}`.

    ``k`` may be non-integer (the coefficient uses ``lgamma``), as the reference accepts.

    :param k: counts in ``[0, n]`` (float tensor).
    :param logits: the decoder outputs :math:`\ell`, broadcasting with ``k``.
    :param total_count: ``n``.
    :param eps: :math:`\epsilon` (``1e-7`` in the reference).
    :param observed: optional mask multiplied into every term.
    :param dim: ``None`` (elementwise) or the dim(s) summed over (the coefficient on ``k``'s shape).
    """
    n = float(total_count)
    p = torch.sigmoid(logits) * (1.0 - 2.0 * eps) + eps
    t = k * torch.log(p + eps) + (n - k) * torch.log1p(eps - p)
    const = log_binomial_coefficient(total_count, k)
    if observed is not None:
        t, const = t * observed, const * observed
    if dim is None:
        return t + const
    return t.sum(dim) + const.sum(dim)


class SqueezedBinomialGrid(BinomialGrid):
    r""":class:`~pyro_spvae.distributions.BinomialGrid` with the SPVAE reference's squeezed success
    probability :math:`p = \sigma(\ell)(1 - 2\epsilon) + \epsilon` and log-pmf
    (:func:`squeezed_count_log_pmf`; it sums to :math:`1 + O(n \epsilon)`, not exactly 1).
    ``mean``, ``variance`` and ``sample`` are those of ``Binomial(n, p) / n``.

    :param total_count: ``n``.
    :param logits: :math:`\ell`, any shape.
    :param eps: :math:`\epsilon \in [0, 1/2)`.
    """

    def __init__(self, total_count: int = 255, logits: torch.Tensor | None = None, eps: float = 1e-7,
                 validate_args: bool | None = None) -> None:
        self.eps = check_real("eps", eps, 0.0, 0.5, high_open=True)
        logits = check_floating_dtype("logits", logits)
        super().__init__(total_count, probs=torch.sigmoid(logits) * (1.0 - 2.0 * self.eps) + self.eps,
                         validate_args=validate_args)

    def expand(self, batch_shape, _instance=None):
        new = self._get_checked_instance(SqueezedBinomialGrid, _instance)
        new.eps = self.eps
        return super().expand(batch_shape, _instance=new)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        if self._validate_args:
            self._validate_sample(value)
        n = self.total_count
        k = grid_index(value, n + 1).to(torch.float64)
        p = self.probs.to(torch.float64)
        lp = k * torch.log(p + self.eps) + (n - k) * torch.log1p(self.eps - p)
        return (lp + log_binomial_coefficient(n, k)).to(self.probs.dtype)
