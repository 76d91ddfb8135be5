"""Vectorised factorised leaf layers of a sum-product network.

Every leaf region ``l`` of a :class:`~pyro_spvae.spn.region_graph.RegionGraph` carries ``K`` leaf
distributions that factorise over the variables of the region, as in RAT-SPN (Peharz et al. 2019)
and Einsum Networks (Peharz et al. 2020).  Parameters are stored per *(leaf region, variable slot,
component)*, shape ``(L, S, K, ...)`` with ``S`` the largest leaf region size (shorter regions are
padded and masked), so that all leaves are evaluated by one gather and one elementwise log-density.
Exponential-family leaves (Bernoulli, Normal, Binomial) go further, as in Einsum Networks: with
``log p(x_s | k) = T(x_s) . eta_{s,k} + log h(x_s) - A(eta_{s,k})`` the region log-density is one
einsum ``(B, L, S, T) x (L, S, K, T) -> (B, L, K)`` over the sufficient statistics, so that no
``(B, L, S, K)`` tensor is ever materialised.

A missing variable (``NaN``) contributes log-density 0, which marginalises it exactly (Poon &
Domingos 2011).  In ``mode="max"`` (the max-product semantics used for MPE), a missing variable
contributes instead the maximum of its log-density over its domain.

The scopes (gather and scatter of the leaf regions' variables) are a
:class:`~pyro_spvae.spn.scopes.LeafScopes`; the Bernoulli and Binomial log-pmf terms come from
:mod:`pyro_spvae.distributions.counts`.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.distributions import constraints

from pyro_spvae.distributions.counts import count_log_normalizer, count_log_pmf, log_binomial_coefficient
from pyro_spvae.validation import check_int, check_positive_int

from .region_graph import RegionGraph
from .scopes import LeafScopes

__all__ = [
    "FactorizedLeaves",
    "ExponentialFamilyLeaves",
    "BernoulliLeaves",
    "CategoricalLeaves",
    "NormalLeaves",
    "BinomialLeaves",
]


def _select(param: Tensor, k: Tensor) -> Tensor:
    """Pick component ``k`` per (batch, leaf region).

    ``param (L, S, K, *e)``, ``k (B, L)`` -> ``(B, L, S, *e)``."""
    L, S, K = param.shape[:3]
    extra = param.shape[3:]
    B = k.shape[0]
    p = param.unsqueeze(0).expand(B, L, S, K, *extra)
    idx = k.clamp(min=0).view(B, L, 1, 1, *([1] * len(extra))).expand(B, L, S, 1, *extra)
    return p.gather(3, idx).squeeze(3)


class FactorizedLeaves(nn.Module):
    """Base class: ``K`` fully factorised distributions per leaf region.

    Subclasses implement :meth:`_log_prob` (``(B, L, S)`` values without NaN -> ``(B, L, S, K)``),
    :meth:`_max_log_prob` (``(L, S, K)``), :meth:`_sample` and :meth:`_mode` (``k (B, L)`` ->
    ``(B, L, S)``) and the :attr:`support` constraint.

    :param graph: the region graph; its leaf regions (``graph.regions[:graph.num_leaf_regions]``)
        define the scopes.
    :param num_components: ``K``, the number of leaf distributions per leaf region.
    """

    support: constraints.Constraint = constraints.real

    def __init__(self, graph: RegionGraph, num_components: int) -> None:
        super().__init__()
        self.num_components = check_positive_int("num_components", num_components)
        #: padded variable indices and masks of the leaf regions, ``(L, S)``
        self.scopes = LeafScopes(graph)
        self.num_vars = graph.num_vars
        self.num_leaf_regions = self.scopes.num_regions
        self.max_region_size = self.scopes.max_size

    @property
    def index(self) -> Tensor:
        """``(L, S)`` variable indices of the leaf regions (padding slots: variable 0)."""
        return self.scopes.index

    @property
    def mask(self) -> Tensor:
        """``(L, S)`` bool, the slots holding a variable of their region."""
        return self.scopes.mask

    # --- to implement -------------------------------------------------------------------------
    def _log_prob(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def _max_log_prob(self) -> Tensor:
        raise NotImplementedError

    def _sample(self, k: Tensor) -> Tensor:
        raise NotImplementedError

    def _mode(self, k: Tensor) -> Tensor:
        raise NotImplementedError

    def _fill_value(self) -> float:
        """A value inside the support, substituted for NaN before evaluating log-densities."""
        return 0.0

    # --- public -------------------------------------------------------------------------------
    def forward(self, x: Tensor, mode: str = "sum") -> Tensor:
        """Leaf log-densities.

        :param x: ``(B, V)`` float values, ``NaN`` = missing.
        :param mode: ``"sum"`` (missing -> 0, exact marginalisation) or ``"max"`` (missing -> max
            log-density over the domain, for max-product/MPE).
        :returns: ``(B, L, K)`` log-densities of every leaf component.
        """
        xg = self.scopes.gather(x)  # (B, L, S)
        missing = torch.isnan(xg)
        lp = self._log_prob(torch.where(missing, torch.full_like(xg, self._fill_value()), xg))
        if mode == "sum":
            fill = torch.zeros((), dtype=lp.dtype, device=lp.device)
        elif mode == "max":
            fill = self._max_log_prob()
        else:
            raise ValueError(f"mode must be 'sum' or 'max', got {mode!r}")
        lp = torch.where(missing.unsqueeze(-1), fill, lp)
        lp = lp.masked_fill(~self.mask.unsqueeze(-1), 0.0)
        return lp.sum(-2)

    def sample(self, k: Tensor, mode: str = "sample") -> Tensor:
        """Values of the selected leaf components scattered into variables.

        :param k: ``(B, L)`` selected component per leaf region, ``-1`` for leaf regions outside the
            selected induced tree.  Every variable must be covered by exactly one selected region.
        :param mode: ``"sample"`` draws from the components, ``"mpe"`` takes their modes.
        :returns: ``(B, V)`` values.
        """
        vals = self._sample(k) if mode == "sample" else self._mode(k)  # (B, L, S)
        return self.scopes.scatter(vals, k >= 0)

    def extra_repr(self) -> str:
        return (
            f"leaf_regions={self.num_leaf_regions}, max_region_size={self.max_region_size}, "
            f"components={self.num_components}"
        )


class ExponentialFamilyLeaves(FactorizedLeaves):
    """Factorised exponential-family leaves evaluated by einsums over sufficient statistics.

    Subclasses implement :meth:`_suff_stats` (``(B, L, S)`` -> ``(B, L, S, T)``, with ``T(0) = 0``:
    masked entries are zeroed before computing the statistics),
    :meth:`_natural_params` (``(L, S, K, T)``), :meth:`_log_normalizer` (``(L, S, K)``) and
    :meth:`_log_base_measure` (``(B, L, S)`` -> ``(B, L, S)``), besides sampling and modes.
    """

    def _suff_stats(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def _natural_params(self) -> Tensor:
        raise NotImplementedError

    def _log_normalizer(self) -> Tensor:
        raise NotImplementedError

    #: whether :meth:`_log_base_measure` is non-zero (skipped otherwise)
    _has_base_measure: bool = False

    def _log_base_measure(self, x: Tensor) -> Tensor:
        return torch.zeros_like(x)

    def _log_prob(self, x: Tensor) -> Tensor:
        t = self._suff_stats(x)  # (B, L, S, T)
        lp = torch.einsum("blst,lskt->blsk", t, self._natural_params()) - self._log_normalizer()
        return lp + self._log_base_measure(x).unsqueeze(-1)

    def forward(self, x: Tensor, mode: str = "sum") -> Tensor:
        if mode not in ("sum", "max"):
            raise ValueError(f"mode must be 'sum' or 'max', got {mode!r}")
        xg = self.scopes.gather(x)  # (B, L, S)
        missing = torch.isnan(xg)
        observed = (~missing & self.mask).to(x.dtype)
        xg = xg.nan_to_num(self._fill_value(), posinf=math.inf, neginf=-math.inf)
        # sum_s m_s (T(x_s) . eta_sk - A_sk) as two batched matmuls
        t = self._suff_stats(xg * observed)  # T(0) = 0 for the built-in families' statistics
        out = torch.einsum("blst,lskt->blk", t, self._natural_params())
        out = out - torch.einsum("bls,lsk->blk", observed, self._log_normalizer())
        if self._has_base_measure:
            out = out + (self._log_base_measure(xg) * observed).sum(-1, keepdim=True)
        if mode == "max":
            out = out + torch.einsum("bls,lsk->blk", (missing & self.mask).to(x.dtype), self._max_log_prob())
        return out


class BernoulliLeaves(ExponentialFamilyLeaves):
    """Bernoulli leaves with ``logits`` of shape ``(L, S, K)``; support ``{0, 1}``."""

    support = constraints.boolean

    def __init__(self, graph: RegionGraph, num_components: int, init_std: float = 1.0) -> None:
        super().__init__(graph, num_components)
        self.logits = nn.Parameter(
            init_std * torch.randn(self.num_leaf_regions, self.max_region_size, num_components)
        )

    def _suff_stats(self, x: Tensor) -> Tensor:
        return x.unsqueeze(-1)

    def _natural_params(self) -> Tensor:
        return self.logits.unsqueeze(-1)

    def _log_normalizer(self) -> Tensor:
        return count_log_normalizer(self.logits, 1)

    def _max_log_prob(self) -> Tensor:
        return -nn.functional.softplus(-self.logits.abs())  # the larger of log p(0), log p(1)

    def _sample(self, k: Tensor) -> Tensor:
        return torch.bernoulli(torch.sigmoid(_select(self.logits, k)))

    def _mode(self, k: Tensor) -> Tensor:
        return (_select(self.logits, k) > 0).to(self.logits.dtype)


class CategoricalLeaves(FactorizedLeaves):
    """Categorical leaves over ``{0, ..., C-1}`` with ``logits`` of shape ``(L, S, K, C)``."""

    def __init__(
        self, graph: RegionGraph, num_components: int, num_categories: int, init_std: float = 1.0
    ) -> None:
        super().__init__(graph, num_components)
        self.num_categories = check_int("num_categories", num_categories, 2)
        self.logits = nn.Parameter(
            init_std
            * torch.randn(self.num_leaf_regions, self.max_region_size, num_components, num_categories)
        )

    @property
    def support(self) -> constraints.Constraint:  # type: ignore[override]
        return constraints.integer_interval(0, self.num_categories - 1)

    def _log_prob(self, x: Tensor) -> Tensor:
        logp = torch.log_softmax(self.logits, -1)  # (L, S, K, C)
        idx = x.long().unsqueeze(-1).unsqueeze(-1).expand(*x.shape, self.num_components, 1)
        return logp.expand(*x.shape, *logp.shape[-2:]).gather(-1, idx).squeeze(-1)

    def _max_log_prob(self) -> Tensor:
        return torch.log_softmax(self.logits, -1).amax(-1)

    def _sample(self, k: Tensor) -> Tensor:
        logits = _select(self.logits, k)
        g = -torch.log(-torch.log(torch.rand_like(logits).clamp(1e-20, 1.0 - 1e-7)))
        return (logits + g).argmax(-1).to(self.logits.dtype)

    def _mode(self, k: Tensor) -> Tensor:
        return _select(self.logits, k).argmax(-1).to(self.logits.dtype)


class NormalLeaves(ExponentialFamilyLeaves):
    """Normal leaves with ``loc`` and ``log_scale`` of shape ``(L, S, K)``; support the real line.

    Sufficient statistics ``(x, x^2)``; region log-densities are einsums (float32 cancellation in
    ``x^2/s^2 - 2 x mu/s^2 + mu^2/s^2`` is negligible for standardised data).
    """

    support = constraints.real

    def __init__(self, graph: RegionGraph, num_components: int, init_std: float = 1.0) -> None:
        super().__init__(graph, num_components)
        L, S = self.num_leaf_regions, self.max_region_size
        self.loc = nn.Parameter(init_std * torch.randn(L, S, num_components))
        self.log_scale = nn.Parameter(torch.zeros(L, S, num_components))

    def _suff_stats(self, x: Tensor) -> Tensor:
        return torch.stack([x, x * x], dim=-1)

    def _natural_params(self) -> Tensor:
        prec = torch.exp(-2 * self.log_scale)
        return torch.stack([self.loc * prec, -0.5 * prec], dim=-1)

    def _log_normalizer(self) -> Tensor:
        prec = torch.exp(-2 * self.log_scale)
        return 0.5 * self.loc * self.loc * prec + self.log_scale + 0.5 * math.log(2 * math.pi)

    def _max_log_prob(self) -> Tensor:
        return -self.log_scale - 0.5 * math.log(2 * math.pi)

    def _sample(self, k: Tensor) -> Tensor:
        loc = _select(self.loc, k)
        return loc + torch.exp(_select(self.log_scale, k)) * torch.randn_like(loc)

    def _mode(self, k: Tensor) -> Tensor:
        return _select(self.loc, k)


class BinomialLeaves(ExponentialFamilyLeaves):
    """Binomial leaves over counts ``{0, ..., total_count}`` with ``logits`` of shape ``(L, S, K)``."""

    def __init__(
        self, graph: RegionGraph, num_components: int, total_count: int, init_std: float = 1.0
    ) -> None:
        super().__init__(graph, num_components)
        self.total_count = check_positive_int("total_count", total_count)
        self.logits = nn.Parameter(
            init_std * torch.randn(self.num_leaf_regions, self.max_region_size, num_components)
        )

    @property
    def support(self) -> constraints.Constraint:  # type: ignore[override]
        return constraints.integer_interval(0, self.total_count)

    def _suff_stats(self, x: Tensor) -> Tensor:
        return x.unsqueeze(-1)

    def _natural_params(self) -> Tensor:
        return self.logits.unsqueeze(-1)

    def _log_normalizer(self) -> Tensor:
        return count_log_normalizer(self.logits, self.total_count)

    _has_base_measure = True

    def _log_base_measure(self, x: Tensor) -> Tensor:
        return log_binomial_coefficient(self.total_count, x)

    def _max_log_prob(self) -> Tensor:
        return count_log_pmf(self._mode_of(self.logits).detach(), self.logits, self.total_count)

    def _mode_of(self, logits: Tensor) -> Tensor:
        n = self.total_count
        return torch.floor((n + 1) * torch.sigmoid(logits)).clamp(max=n)

    def _sample(self, k: Tensor) -> Tensor:
        probs = torch.sigmoid(_select(self.logits, k))
        return torch.binomial(torch.full_like(probs, float(self.total_count)), probs)

    def _mode(self, k: Tensor) -> Tensor:
        return self._mode_of(_select(self.logits, k))
