"""Binomial likelihood on the 8-bit grid: ``x = k / n`` with ``k ~ Binomial(n, p)``.

The SPVAE paper (Tan & Peharz 2019, §4; see ``docs/spvae.md``) models "discrete" MNIST,
``round(255 x) / 255``, with a Binomial(255) likelihood per pixel; the distribution here lives
directly on the grid values so that data in ``[0, 1]`` need no rescaling. Its log-pmf is
:func:`~pyro_spvae.distributions.counts.count_log_pmf`.
"""

from __future__ import annotations

import torch
from pyro.distributions import TorchDistribution
from torch.distributions import Binomial, constraints
from torch.distributions.utils import broadcast_all, lazy_property, logits_to_probs, probs_to_logits

from pyro_spvae.validation import check_positive_int

from .counts import count_log_pmf
from .grid import GridConstraint, grid_index

__all__ = ["BinomialGrid"]


class BinomialGrid(TorchDistribution):
    r"""``X = K / n`` with ``K ~ Binomial(n, p)``, elementwise (``event_shape == ()``).

    ``log p(X = k/n) = log C(n, k) + k log p + (n - k) log(1 - p)``; ``E[X] = p``,
    ``Var[X] = p (1 - p) / n``.

    :param total_count: number of trials ``n`` (a Python int, default 255 for 8-bit images).
    :param probs: success probabilities, any shape (exactly one of ``probs``/``logits``).
    :param logits: success log-odds, any shape.
    """

    arg_constraints = {"probs": constraints.unit_interval, "logits": constraints.real}
    has_rsample = False

    def __init__(self, total_count: int = 255, probs: torch.Tensor | None = None,
                 logits: torch.Tensor | None = None, validate_args: bool | None = None) -> None:
        total_count = check_positive_int("total_count", total_count)
        if (probs is None) == (logits is None):
            raise ValueError("BinomialGrid needs exactly one of probs or logits")
        for name, param in (("probs", probs), ("logits", logits)):
            if isinstance(param, torch.Tensor) and not param.dtype.is_floating_point:
                raise ValueError(f"BinomialGrid {name} must have a floating-point dtype, got {param.dtype}")
        self.total_count = total_count
        if probs is not None:
            (self.probs,) = broadcast_all(probs)
            self._param = self.probs
        else:
            (self.logits,) = broadcast_all(logits)
            self._param = self.logits
        super().__init__(self._param.shape, torch.Size(), validate_args=validate_args)

    @lazy_property
    def logits(self) -> torch.Tensor:
        return probs_to_logits(self.probs, is_binary=True)

    @lazy_property
    def probs(self) -> torch.Tensor:
        return logits_to_probs(self.logits, is_binary=True)

    @constraints.dependent_property(is_discrete=True, event_dim=0)
    def support(self) -> constraints.Constraint:
        return GridConstraint(self.total_count + 1)

    def expand(self, batch_shape, _instance=None):
        new = self._get_checked_instance(BinomialGrid, _instance)
        batch_shape = torch.Size(batch_shape)
        new.total_count = self.total_count
        if "probs" in self.__dict__:
            new.probs = self.probs.expand(batch_shape)
            new._param = new.probs
        if "logits" in self.__dict__:
            new.logits = self.logits.expand(batch_shape)
            new._param = new.logits
        super(BinomialGrid, new).__init__(batch_shape, torch.Size(), validate_args=False)
        new._validate_args = self._validate_args
        return new

    def _binomial(self) -> Binomial:
        if "logits" in self.__dict__:
            return Binomial(self.total_count, logits=self.logits, validate_args=False)
        return Binomial(self.total_count, probs=self.probs, validate_args=False)

    @property
    def mean(self) -> torch.Tensor:
        return self.probs

    @property
    def mode(self) -> torch.Tensor:
        return ((self.total_count + 1) * self.probs).floor().clamp(max=self.total_count) / self.total_count

    @property
    def variance(self) -> torch.Tensor:
        return self.probs * (1 - self.probs) / self.total_count

    def sample(self, sample_shape: tuple[int, ...] = ()) -> torch.Tensor:
        with torch.no_grad():
            return self._binomial().sample(torch.Size(sample_shape)) / self.total_count

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        if self._validate_args:
            self._validate_sample(value)
        # Evaluated in float64: in float32, log C(n, k) (lgamma(256) ~ 1167) and the logits terms
        # cancel to ~1e-4 of probability mass at n = 255.
        n = self.total_count
        k = grid_index(value, n + 1).to(torch.float64)
        return count_log_pmf(k, self.logits.to(torch.float64), n).to(self._param.dtype)
