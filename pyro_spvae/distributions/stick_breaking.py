r"""Truncated stick-breaking (GEM) distribution over mixture weights, with Beta or Kumaraswamy sticks.

Stick-breaking construction (Sethuraman 1994; truncated at ``T`` as in Ishwaran & James 2001):
independent sticks ``v_1, ..., v_{T-1}`` in ``(0, 1)`` and ``v_T = 1`` give weights on the simplex

.. math::

    \pi_k = v_k \prod_{j<k} (1 - v_j) \quad (k < T), \qquad \pi_T = \prod_{j<T} (1 - v_j).

The remainders ``r_k = prod_{j<k} (1 - v_j) = sum_{j>=k} pi_j`` (``r_1 = 1``) invert the map,
``v_k = pi_k / r_k`` and ``1 - v_k = r_{k+1} / r_k``. The Jacobian of ``v -> (pi_1..pi_{T-1})`` is
lower triangular with diagonal ``d pi_k / d v_k = r_k``, so the density of ``pi`` with respect to
Lebesgue measure on its first ``T - 1`` coordinates (the convention of ``torch`` ``Dirichlet``) is

.. math::

    \log p(\pi) = \sum_{k<T} \log p_k(v_k) - \sum_{k=2}^{T-1} \log r_k .

Sticks ``Beta(c1_k, c0_k)`` give the generalised Dirichlet of Connor & Mosimann (1969);
``c0_k = sum_{j>k} c1_j`` (with ``c1_T := c0_{T-1}``) is the ordinary Dirichlet, and
``c1 = 1, c0 = alpha`` is the truncated ``GEM(alpha)`` prior of a Dirichlet process, whose
weights have ``E[pi_k] = (1/(1+alpha)) (alpha/(1+alpha))^(k-1)`` for ``k < T``. Kumaraswamy sticks
``v = (1 - u^(1/b))^(1/a)``, ``u ~ U(0, 1)`` (Kumaraswamy 1980), are the reparameterisable
posterior of the stick-breaking VAE (Nalisnick & Smyth 2017, ICLR). Since sticks are
independent, ``E[pi_k] = E[v_k] prod_{j<k} (1 - E[v_j])`` and
``E[pi_k^2] = E[v_k^2] prod_{j<k} E[(1 - v_j)^2]`` for either family.

All computations run in log space (``log pi`` from cumulative sums of ``log(1 - v)``), so
weights far down the stick (``1e-30`` and below) keep their relative accuracy and no stick
rounds to exactly ``1`` in float32 when ``b < 1``.
"""

from __future__ import annotations

import math

import pyro.distributions as dist
import torch
from pyro.distributions import TorchDistribution
from torch.distributions import constraints
from torch.distributions.utils import broadcast_all

from ..validation import check_choice, check_floating_dtype, check_int, check_positive_float

__all__ = [
    "StickBreaking",
    "kumaraswamy_log_isf",
    "log1mexp",
    "stick_breaking_log_weights",
    "stick_breaking_sticks",
    "stick_breaking_weights",
]

STICKS = ("beta", "kumaraswamy")
_SMALL = 20.0  # above this, u^(1/b) = exp(-d) < 2e-9 and the series branch is used
_LOG2 = math.log(2.0)


def log1mexp(d: torch.Tensor) -> torch.Tensor:
    """``log(1 - exp(-d))`` for ``d >= 0``, accurate for small and large ``d`` (Mächler 2012), with
    each branch evaluated on clamped input so that the unused one never produces NaN gradients."""
    return torch.where(d < _LOG2, torch.log(-torch.expm1(-d.clamp(max=_LOG2))),
                       torch.log1p(-torch.exp(-d.clamp(min=_LOG2))))


def kumaraswamy_log_isf(neg_log_u: torch.Tensor, a: torch.Tensor,
                        b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    r"""``(log v, log(1 - v))`` for ``v = (1 - u^(1/b))^(1/a)``, the Kumaraswamy(a, b) inverse
    survival function at ``u`` (``P(V > v) = (1 - v^a)^b = u``), accurate for every ``u`` in (0, 1).

    With ``d = -log(u) / b`` and ``e = u^(1/b) = exp(-d)``: ``log v = log(1 - e) / a`` and
    ``log(1 - v) = log(1 - exp(log(1 - e) / a))``; when ``e < 2e-9`` (``d > 20``, where ``1 - e``
    rounds to 1) the expansion ``log(1 - v) = log(e / a) + (a - 1) e / (2a) + O(e^2)`` is used, so
    tiny ``b`` never produces ``v = 1`` or NaN gradients.

    :param neg_log_u: ``-log u > 0`` (an ``Exponential(1)`` draw when sampling); broadcast with ``a``, ``b``.
    :returns: two tensors of the broadcast shape.
    """
    d = neg_log_u / b
    small = d > _SMALL
    log_w = log1mexp(d.clamp(max=_SMALL))  # log(1 - e) = a log v, exact branch
    log1m_exact = log1mexp(-log_w / a)
    log1m_series = -d - torch.log(a) + (a - 1) / (2 * a) * torch.exp(-d)
    log_v = torch.where(small, -torch.exp(-d), log_w) / a  # log(1 - e) = -e + O(e^2)
    return log_v, torch.where(small, log1m_series, log1m_exact)


def stick_breaking_log_weights(log_v: torch.Tensor, log1m_v: torch.Tensor) -> torch.Tensor:
    r"""``log pi`` of shape ``(..., T)`` from ``log v`` and ``log(1 - v)`` of shape ``(..., T-1)``:
    ``log pi_k = log v_k + sum_{j<k} log(1 - v_j)`` and ``log pi_T = sum_{j<T} log(1 - v_j)``."""
    log_rem = torch.cumsum(log1m_v, dim=-1)
    log_rem_excl = torch.nn.functional.pad(log_rem[..., :-1], (1, 0))  # log r_k, r_1 = 1
    return torch.cat([log_v + log_rem_excl, log_rem[..., -1:]], dim=-1)


def stick_breaking_weights(v: torch.Tensor) -> torch.Tensor:
    r"""Stick-breaking weights ``pi`` of shape ``(..., T)`` from sticks ``v`` in ``[0, 1]`` of
    shape ``(..., T-1)``: ``pi_k = v_k exp(sum_{j<k} log1p(-v_j))``, ``pi_T = exp(sum_j log1p(-v_j))``.

    ``v_k = 0`` is allowed (zero weight, finite gradients); ``v_k = 1`` ends the stick (later
    weights are exactly 0) but its gradient is not finite: keep sticks below 1 when differentiating.
    """
    check_floating_dtype("v", v)
    log_rem = torch.cumsum(torch.log1p(-v), dim=-1)
    rem_excl = torch.exp(torch.nn.functional.pad(log_rem[..., :-1], (1, 0)))
    return torch.cat([v * rem_excl, torch.exp(log_rem[..., -1:])], dim=-1)


def _log_sticks(pi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(log v, log(1 - v), log r)`` of shapes ``(..., T-1)`` from weights ``pi`` of shape ``(..., T)``.

    ``r_k = sum_{j>=k} pi_j`` is a reverse cumulative sum (accurate for tiny tail weights);
    ``log v`` is ``log pi_k - log r_k`` for ``v <= 1/2`` and ``log1p(-(1 - v))`` above, so both
    ``log v`` and ``log(1 - v)`` keep their relative accuracy near 0 and near 1. Weights that
    underflowed to exactly 0 (far down a long stick in float32) are read as the smallest normal
    number, so that the sticks, and ``log_prob``, stay finite instead of ``0 / 0``.
    """
    pi = pi.clamp(min=torch.finfo(pi.dtype).tiny)
    log_r = torch.log(pi.flip(-1).cumsum(-1).flip(-1))  # (..., T): log r_1 .. log r_T
    log1m_v = log_r[..., 1:] - log_r[..., :-1]
    direct = torch.log(pi[..., :-1]) - log_r[..., :-1]
    near_one = log1m_v < -_LOG2
    log_v = torch.where(near_one, torch.log1p(-torch.exp(log1m_v.clamp(max=-_LOG2))), direct)
    return log_v, log1m_v, log_r[..., :-1]


def stick_breaking_sticks(pi: torch.Tensor) -> torch.Tensor:
    r"""Inverse of :func:`stick_breaking_weights`: sticks ``v_k = pi_k / sum_{j>=k} pi_j`` of shape
    ``(..., T-1)`` from weights ``pi`` on the simplex of shape ``(..., T)``."""
    check_floating_dtype("pi", pi)
    return _log_sticks(pi)[0].exp()


class StickBreaking(TorchDistribution):
    r"""Truncated stick-breaking distribution over ``T`` mixture weights (see the module docstring).

    :param concentration1: first stick parameter, shape ``batch_shape + (T-1,)`` (broadcast with
        ``concentration0``): ``c1`` of ``Beta(c1, c0)`` or ``a`` of ``Kumaraswamy(a, b)``.
    :param concentration0: second stick parameter (``c0`` or ``b``), same convention.
    :param stick: ``"beta"`` or ``"kumaraswamy"``.

    ``event_shape == (T,)``, ``support`` is the simplex. Both families are reparameterised
    (``rsample``): Beta sticks as ``X / (X + Y)`` of ``Gamma`` draws (implicit gradients,
    Figurnov et al. 2018), Kumaraswamy sticks through :func:`kumaraswamy_log_isf`.
    """

    arg_constraints = {
        "concentration1": constraints.independent(constraints.positive, 1),
        "concentration0": constraints.independent(constraints.positive, 1),
    }
    support = constraints.simplex
    has_rsample = True

    def __init__(self, concentration1: torch.Tensor, concentration0: torch.Tensor, stick: str = "beta",
                 validate_args: bool | None = None) -> None:
        check_floating_dtype("concentration1", concentration1)
        check_floating_dtype("concentration0", concentration0)
        self.stick = check_choice("stick", stick, STICKS)
        self.concentration1, self.concentration0 = broadcast_all(concentration1, concentration0)
        if self.concentration1.dim() == 0:
            raise ValueError("stick parameters need a last dimension of size T - 1 (one per stick), "
                             "got scalars")
        shape = self.concentration1.shape
        super().__init__(shape[:-1], torch.Size((shape[-1] + 1,)), validate_args=validate_args)

    @classmethod
    def gem(cls, alpha: torch.Tensor | float, truncation: int,
            validate_args: bool | None = None) -> StickBreaking:
        """Truncated ``GEM(alpha)``: ``Beta(1, alpha)`` sticks, ``T = truncation >= 2`` weights.

        :param alpha: concentration ``> 0``, a float or a tensor of shape ``batch_shape``.
        """
        T = check_int("truncation", truncation, 2)
        if not isinstance(alpha, torch.Tensor):
            alpha = torch.tensor(check_positive_float("alpha", alpha), dtype=torch.get_default_dtype())
        check_floating_dtype("alpha", alpha)
        c0 = alpha.unsqueeze(-1).expand(*alpha.shape, T - 1)
        return cls(torch.ones_like(c0), c0, "beta", validate_args=validate_args)

    @property
    def truncation(self) -> int:
        """Number of weights ``T``."""
        return self.event_shape[0]

    @property
    def sticks(self) -> TorchDistribution:
        """The stick distribution, ``Beta`` or ``Kumaraswamy`` with batch shape ``batch_shape + (T-1,)``."""
        family = dist.Beta if self.stick == "beta" else dist.Kumaraswamy
        return family(self.concentration1, self.concentration0, validate_args=False)

    def expand(self, batch_shape, _instance=None):
        new = self._get_checked_instance(StickBreaking, _instance)
        shape = torch.Size(batch_shape) + (self.truncation - 1,)
        new.concentration1 = self.concentration1.expand(shape)
        new.concentration0 = self.concentration0.expand(shape)
        new.stick = self.stick
        super(StickBreaking, new).__init__(torch.Size(batch_shape), self.event_shape, validate_args=False)
        new._validate_args = self._validate_args
        return new

    def _log_stick_samples(self, sample_shape: torch.Size) -> tuple[torch.Tensor, torch.Tensor]:
        """``(log v, log(1 - v))`` of reparameterised stick draws, shape ``sample_shape + c1.shape``."""
        shape = torch.Size(sample_shape) + self.concentration1.shape
        c1, c0 = self.concentration1.expand(shape), self.concentration0.expand(shape)
        if self.stick == "beta":
            log_x = torch.log(dist.Gamma(c1, torch.ones_like(c1), validate_args=False).rsample())
            log_y = torch.log(dist.Gamma(c0, torch.ones_like(c0), validate_args=False).rsample())
            log_s = torch.logaddexp(log_x, log_y)
            return log_x - log_s, log_y - log_s
        neg_log_u = torch.empty_like(c1).exponential_().clamp(min=torch.finfo(c1.dtype).tiny)
        return kumaraswamy_log_isf(neg_log_u, c1, c0)

    def rsample(self, sample_shape: tuple[int, ...] = ()) -> torch.Tensor:
        """Weights of shape ``sample_shape + batch_shape + (T,)``, differentiable in the parameters.

        ``pi = softmax(log pi)``: equal to ``exp(log pi)`` in exact arithmetic (the log-weights
        already sum to 1), but exactly normalised in floating point.
        """
        return torch.softmax(stick_breaking_log_weights(*self._log_stick_samples(sample_shape)), dim=-1)

    def _stick_log_prob(self, log_v: torch.Tensor, log1m_v: torch.Tensor) -> torch.Tensor:
        c1, c0 = self.concentration1, self.concentration0
        if self.stick == "beta":
            log_beta = torch.lgamma(c1) + torch.lgamma(c0) - torch.lgamma(c1 + c0)
            return (c1 - 1) * log_v + (c0 - 1) * log1m_v - log_beta
        # Kumaraswamy: log a + log b + (a - 1) log v + (b - 1) log(1 - v^a)
        return torch.log(c1) + torch.log(c0) + (c1 - 1) * log_v + (c0 - 1) * log1mexp(-c1 * log_v)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        """``sum_k log p_k(v_k) - sum_{k=2}^{T-1} log r_k``; shape ``value.shape[:-1]`` broadcast with
        ``batch_shape``."""
        if self._validate_args:
            self._validate_sample(value)
        log_v, log1m_v, log_r = _log_sticks(value)
        return self._stick_log_prob(log_v, log1m_v).sum(-1) - log_r[..., 1:].sum(-1)

    def _stick_moments(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """``E[v], E[1 - v], E[v^2], E[(1 - v)^2]``, each of shape ``batch_shape + (T-1,)``."""
        c1, c0 = self.concentration1, self.concentration0
        if self.stick == "beta":
            s = c1 + c0
            return c1 / s, c0 / s, c1 * (c1 + 1) / (s * (s + 1)), c0 * (c0 + 1) / (s * (s + 1))
        # Kumaraswamy raw moments E[v^n] = b B(1 + n/a, b)
        m1, m2 = (torch.exp(torch.log(c0) + torch.lgamma(1 + n / c1) + torch.lgamma(c0)
                            - torch.lgamma(1 + n / c1 + c0)) for n in (1, 2))
        return m1, 1 - m1, m2, 1 - 2 * m1 + m2

    @staticmethod
    def _weights_from_moments(m: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
        """``E[pi_k^p] = m_k prod_{j<k} n_j`` and ``E[pi_T^p] = prod_j n_j`` by independence of the sticks."""
        rem = torch.cumprod(n, dim=-1)
        rem_excl = torch.nn.functional.pad(rem[..., :-1], (1, 0), value=1.0)
        return torch.cat([m * rem_excl, rem[..., -1:]], dim=-1)

    @property
    def mean(self) -> torch.Tensor:
        """``E[pi]``, shape ``batch_shape + (T,)`` (exact for both stick families)."""
        m1, n1, _, _ = self._stick_moments()
        return self._weights_from_moments(m1, n1)

    @property
    def variance(self) -> torch.Tensor:
        """``Var[pi_k] = E[pi_k^2] - E[pi_k]^2``, shape ``batch_shape + (T,)`` (exact)."""
        m1, n1, m2, n2 = self._stick_moments()
        return self._weights_from_moments(m2, n2) - self._weights_from_moments(m1, n1) ** 2

