"""The likelihood heads on the ``L``-level grid ``{k / (L - 1)}`` of ``[0, 1]`` (8-bit data).

- :class:`BinomialLikelihood`: ``x = k / n``, ``k ~ Binomial(n, sigmoid(logits))`` (``n = 255``,
  the SPVAE paper's discrete likelihood, Tan & Peharz 2019), on
  :class:`~pyro_spvae.distributions.BinomialGrid`; ``eps > 0``: the reference code's squeezed
  success probability ``eps + (1 - 2 eps) p`` (:class:`SqueezedBinomialGrid`);
- :class:`LogisticLikelihood`: the discretised logistic (Salimans et al. 2017, eq. 2) of
  :class:`~pyro_spvae.distributions.DiscretizedLogistic`, with ``mu = loc``, ``s = exp(log_scale)``
  (``log_scale`` clamped below at ``min_log_scale``) and half-bin ``delta = 1 / (2 (L - 1))``,
  ``P(x_k) = sigma((x_k + delta - mu) / s) - sigma((x_k - delta - mu) / s)``, the edge bins
  absorbing the tails;
- :class:`CategoricalLikelihood`: an ``L``-way softmax per element
  (:class:`~pyro_spvae.distributions.CategoricalGrid`, van den Oord et al. 2016).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.distributions import Distribution

from pyro_spvae.validation import check_int, check_positive_int, check_real

from ..distributions.binomial_grid import BinomialGrid
from ..distributions.categorical_grid import CategoricalGrid
from ..distributions.discretized_logistic import DiscretizedLogistic
from ..distributions.grid import GridConstraint
from .likelihood_base import Likelihood
from .reference_likelihoods import SqueezedBinomialGrid

__all__ = ["BinomialLikelihood", "CategoricalLikelihood", "LogisticLikelihood"]


class BinomialLikelihood(Likelihood):
    """``x = k / n``, ``k ~ Binomial(n, sigmoid(logits))`` per element (``n = 255`` for 8-bit data,
    the SPVAE paper's discrete likelihood). ``num_params = 1``.

    :param total_count: number of trials ``n``.
    :param eps: ``0`` (default): the exact Binomial of ``sigmoid(logits)``; ``eps > 0``: the SPVAE
        reference's squeezed success probability and log-pmf (:class:`SqueezedBinomialGrid`, the
        reference uses ``1e-7``).
    """

    name = "binomial"

    def __init__(self, event_shape: Sequence[int], total_count: int = 255, eps: float = 0.0) -> None:
        super().__init__(event_shape)
        self.total_count = check_positive_int("total_count", total_count)
        self.eps = check_real("eps", eps, 0.0, 0.5, high_open=True)
        self.support = GridConstraint(self.total_count + 1)
        self.support_description = f"the grid k/{self.total_count}, k = 0..{self.total_count}"

    support_hint = "; use the 'spvae-discrete' transform"

    @property
    def label(self) -> str:
        return f"Binomial({self.total_count})"

    @property
    def num_params(self) -> int:
        return 1

    def forward(self, params: torch.Tensor) -> Distribution:
        logits = self._param(self._split(params), 0)
        if self.eps > 0:
            return self._independent(SqueezedBinomialGrid(self.total_count, logits=logits, eps=self.eps))
        return self._independent(BinomialGrid(self.total_count, logits=logits))


class LogisticLikelihood(Likelihood):
    """Discretised logistic on the ``num_levels``-point grid of ``[0, 1]`` with edge bins absorbing
    the tails (Salimans et al. 2017). ``num_params = 2``: ``loc`` and ``log_scale``.

    :param num_levels: number of grid levels (256 for 8-bit data).
    :param min_log_scale: ``log_scale`` is clamped from below at this value (PixelCNN++ uses -7).
    """

    name = "logistic"

    def __init__(self, event_shape: Sequence[int], num_levels: int = 256,
                 min_log_scale: float = -7.0) -> None:
        super().__init__(event_shape)
        self.num_levels = check_int("num_levels", num_levels, 2)
        self.min_log_scale = check_real("min_log_scale", min_log_scale)
        self.support = GridConstraint(self.num_levels)
        self.support_description = f"the grid k/{self.num_levels - 1}, k = 0..{self.num_levels - 1}"

    @property
    def num_params(self) -> int:
        return 2

    def forward(self, params: torch.Tensor) -> Distribution:
        split = self._split(params)
        loc = self._param(split, 0)
        scale = self._param(split, 1).clamp(min=self.min_log_scale).exp()
        return self._independent(DiscretizedLogistic(loc, scale, self.num_levels))


class CategoricalLikelihood(Likelihood):
    """``num_levels``-way softmax per element over the grid ``{k / (num_levels - 1)}``.
    ``num_params = num_levels`` (256 logits per element for 8-bit data).

    :param num_levels: number of grid levels.
    """

    name = "categorical"

    def __init__(self, event_shape: Sequence[int], num_levels: int = 256) -> None:
        super().__init__(event_shape)
        self.num_levels = check_int("num_levels", num_levels, 2)
        self.support = GridConstraint(self.num_levels)
        self.support_description = f"the grid k/{self.num_levels - 1}, k = 0..{self.num_levels - 1}"

    @property
    def num_params(self) -> int:
        return self.num_levels

    def forward(self, params: torch.Tensor) -> Distribution:
        split = self._split(params)  # (..., L, C, *rest)
        logits = split.movedim(split.dim() - len(self.event_shape) - 1, -1)
        return self._independent(CategoricalGrid(logits))
