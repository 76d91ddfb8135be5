r"""The Binomial (and Bernoulli) log-pmf in logits form, shared by every count likelihood.

For ``k`` successes out of ``n`` trials with success log-odds :math:`\ell`:

.. math::

    \log p(k \mid n, \ell) = k\,\ell - n \log(1 + e^{\ell}) + \log \binom{n}{k},

an exponential family with sufficient statistic ``k``, natural parameter :math:`\ell`, log
normaliser :math:`A(\ell) = n\,\mathrm{softplus}(\ell)` (:func:`count_log_normalizer`) and base
measure :math:`\log\binom{n}{k}` (:func:`log_binomial_coefficient`, zero for Bernoulli, ``n = 1``).
:func:`count_log_pmf` is the one implementation of the log-pmf: the grid likelihood
:class:`~pyro_spvae.distributions.BinomialGrid`, the Bernoulli/Binomial leaves of SPVAE (Tan &
Peharz 2019, "discrete" MNIST; see ``docs/spvae.md``) and, through its two terms, the einsum
evaluation of the factorised SPN leaves (:class:`~pyro_spvae.spn.BinomialLeaves`) all use it.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from pyro_spvae.validation import check_positive_int

__all__ = ["count_log_normalizer", "count_log_pmf", "log_binomial_coefficient"]


def log_binomial_coefficient(total_count: int, k: Tensor) -> Tensor:
    r""":math:`\log\binom{n}{k}` elementwise, for counts ``k`` (a float tensor) in ``[0, n]``."""
    n = float(total_count)
    return math.lgamma(n + 1) - torch.lgamma(k + 1) - torch.lgamma(n - k + 1)


def count_log_normalizer(logits: Tensor, total_count: int = 1) -> Tensor:
    r"""The log normaliser :math:`n\,\mathrm{softplus}(\ell)`, elementwise (same shape as ``logits``)."""
    lz = F.softplus(logits)
    return lz if total_count == 1 else total_count * lz


def count_log_pmf(k: Tensor, logits: Tensor, total_count: int = 1, *, observed: Tensor | None = None,
                  dim: int | tuple[int, ...] | None = None) -> Tensor:
    r"""Binomial log-pmf :math:`k\ell - n\,\mathrm{softplus}(\ell) + \log\binom{n}{k}` (``n = 1``: Bernoulli).

    :param k: counts in ``{0, ..., n}`` as a float tensor (a missing entry must hold a count in
        range, e.g. 0, and have ``observed`` false).
    :param logits: success log-odds :math:`\ell`, broadcasting with ``k``.
    :param total_count: number of trials ``n`` (a positive int).
    :param observed: optional mask (bool or float) broadcasting with both, multiplied into every
        term so that unobserved entries contribute 0 (exact marginalisation).
    :param dim: ``None`` for the elementwise log-pmf (broadcast shape of ``k`` and ``logits``), or
        the dim(s) to sum over. When summing, the base measure, which depends on ``k`` only, is
        summed on ``k``'s own (often much smaller) broadcast shape.
    :returns: the log-pmf, elementwise or summed over ``dim``.
    """
    n = check_positive_int("total_count", total_count)
    t = k * logits - count_log_normalizer(logits, n)
    const = None if n == 1 else log_binomial_coefficient(n, k)  # log C(1, k) = 0 for k in {0, 1}
    if observed is not None:
        t = t * observed
        const = None if const is None else const * observed
    if dim is None:
        return t if const is None else t + const
    out = t.sum(dim)
    return out if const is None else out + const.sum(dim)
