r"""KL(Kumaraswamy(a, b) || Beta(alpha, beta)), accurate over the whole parameter range, and the KL
between two stick-breaking distributions; both registered with :func:`torch.distributions.kl.register_kl`.

Derivation (the closed-form part is Nalisnick & Smyth 2017, "Stick-breaking variational
autoencoders", ICLR, appendix). With ``log q(v) = log(ab) + (a-1) log v + (b-1) log(1 - v^a)`` and
``log p(v) = (alpha-1) log v + (beta-1) log(1 - v) - log B(alpha, beta)``, and since ``w = v^a`` is
``Beta(1, b)`` under ``q`` (so ``E[log w] = psi(1) - psi(1 + b)`` and ``E[log(1 - w)] = -1/b``),

.. math::

    \mathrm{KL} = \log(ab) + \frac{a - \alpha}{a}\big(\psi(1) - \psi(1 + b)\big) - \frac{b - 1}{b}
    + \log B(\alpha, \beta) + (\beta - 1)\, S(a, b), \qquad S(a, b) = -E_q[\log(1 - v)],

which is the paper's formula, as ``psi(1) - psi(1 + b) = -gamma - psi(b) - 1/b`` and, expanding
``-log(1 - v) = sum_m v^m / m`` with ``E[v^m] = b B(1 + m/a, b)``,
``S = b sum_{m>=1} B(m/a, b) / (m + ab)``. That series converges like ``m^(-b)``, so the usual
10-term truncation (SB-VAE code, NumPyro) is far off for ``b < 1``: with ``a = 1`` and a
``Beta(1, 5)`` prior the 10-term KL is 23% low at ``b = 0.7`` and 46% low at ``b = 0.3``. Here instead

.. math::

    S(a, b) = \frac{1}{b} + R(a, b), \qquad
    R(a, b) = E_q\Big[\log\frac{1 - v^a}{1 - v}\Big]
            = \int_0^1 \Big(\frac{\log u}{b} - \log\big(1 - v(u)\big)\Big)\, du,

using ``E_q[-log(1 - v^a)] = 1/b`` and the inverse survival map ``v(u) = (1 - u^(1/b))^(1/a)``
(``u ~ U(0, 1)``). The integrand is bounded (between ``log min(1, a)`` and ``log max(1, a)``)
and analytic inside ``(0, 1)``, with only algebraic behaviour at the end points, so tanh-sinh
quadrature (Takahasi & Mori 1974) converges exponentially: nodes ``u_i = sigmoid(pi sinh(ih))``,
weights ``h pi cosh(ih) u_i (1 - u_i)``, ``h = 1/16``, ``|ih| <= 3.2`` (103 nodes, vectorised over
the batch, evaluated in float64 with :func:`~pyro_spvae.distributions.stick_breaking.kumaraswamy_log_isf`).
Against 30-digit ``mpmath`` quadrature the absolute error of ``R`` is below ``2e-7`` for all
``a, b`` in ``[0.01, 1000]`` (below ``1e-9`` for ``a, b >= 0.1``); over the grid ``a, b`` in
``{0.3, 0.7, 1, 2, 5, 8}``, ``alpha, beta`` in ``{0.5, 1, 5}`` the KL agrees with direct quadrature of
``q log(q/p)`` to ``1e-14`` relative (``tests/test_kl_kumaraswamy.py``). Digamma and log-Beta come from
:func:`torch.digamma` / :func:`torch.lgamma` (no asymptotic digamma). The result is clamped at 0
only to absorb float64 rounding when ``q = p``.
"""

from __future__ import annotations

import math

import torch
from torch.distributions import Beta, Kumaraswamy
from torch.distributions.kl import kl_divergence, register_kl
from torch.distributions.utils import broadcast_all, euler_constant

from .stick_breaking import StickBreaking, kumaraswamy_log_isf

__all__ = ["kl_kumaraswamy_beta", "kumaraswamy_expected_log", "kumaraswamy_expected_log1m"]

_STEP = 1.0 / 16.0
_HALF_WIDTH = 3.2


def _work_dtype(x: torch.Tensor) -> torch.dtype:
    """float64 wherever the device supports it (MPS does not)."""
    return torch.float32 if x.device.type == "mps" else torch.float64


def _tanh_sinh_nodes(dtype: torch.dtype, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """``(-log u_i, w_i)`` of the tanh-sinh rule on ``(0, 1)``, each of shape ``(N,)``, N = 103."""
    n = round(_HALF_WIDTH / _STEP)
    t = torch.arange(-n, n + 1, dtype=torch.float64) * _STEP
    s = math.pi * torch.sinh(t)
    weights = _STEP * math.pi * torch.cosh(t) * torch.sigmoid(s) * torch.sigmoid(-s)
    neg_log_u = torch.nn.functional.softplus(-s)  # -log sigmoid(s), exact for u near 0 and near 1
    return neg_log_u.to(dtype=dtype, device=device), weights.to(dtype=dtype, device=device)


def _log_ratio_mean(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``R(a, b) = E_q[log((1 - v^a) / (1 - v))]`` by tanh-sinh quadrature; ``a``, ``b`` same shape."""
    neg_log_u, weights = _tanh_sinh_nodes(a.dtype, a.device)
    a, b = a.unsqueeze(-1), b.unsqueeze(-1)
    _, log1m_v = kumaraswamy_log_isf(neg_log_u, a, b)  # (..., N)
    return ((-neg_log_u / b - log1m_v) * weights).sum(-1)


def kumaraswamy_expected_log(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``E[log v] = (psi(1) - psi(1 + b)) / a`` for ``v ~ Kumaraswamy(a, b)`` (exact), broadcast shape."""
    a, b = broadcast_all(a, b)
    return -(euler_constant + torch.digamma(b + 1)) / a


def kumaraswamy_expected_log1m(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``E[log(1 - v)] = -(1/b + R(a, b))`` for ``v ~ Kumaraswamy(a, b)`` (see the module
    docstring), broadcast shape, in the dtype of the inputs; differentiable in ``a`` and ``b``."""
    a, b = broadcast_all(a, b)
    work = _work_dtype(a)
    a64, b64 = a.to(work), b.to(work)
    return (-(b64.reciprocal() + _log_ratio_mean(a64, b64))).to(a.dtype)


def _kl_kumaraswamy_beta_unclamped(a: torch.Tensor, b: torch.Tensor, alpha: torch.Tensor,
                                   beta: torch.Tensor) -> torch.Tensor:
    """The KL formula of the module docstring in float64, without the final clamp (for tests)."""
    a, b, alpha, beta = (x.to(_work_dtype(x)) for x in broadcast_all(a, b, alpha, beta))
    log_beta_fn = torch.lgamma(alpha) + torch.lgamma(beta) - torch.lgamma(alpha + beta)
    e_log_w = -(euler_constant + torch.digamma(b + 1))  # psi(1) - psi(1 + b)
    s = b.reciprocal() + _log_ratio_mean(a, b)  # -E_q[log(1 - v)]
    return (torch.log(a) + torch.log(b) + (1 - alpha / a) * e_log_w - (b - 1) / b + log_beta_fn
            + (beta - 1) * s)


def kl_kumaraswamy_beta(a: torch.Tensor, b: torch.Tensor, alpha: torch.Tensor,
                        beta: torch.Tensor) -> torch.Tensor:
    r"""``KL(Kumaraswamy(a, b) || Beta(alpha, beta))``, elementwise over the broadcast shape.

    :param a: Kumaraswamy ``concentration1 > 0``; :param b: ``concentration0 > 0``.
    :param alpha: Beta ``concentration1 > 0``; :param beta: ``concentration0 > 0``.
    :returns: a tensor ``>= 0`` of the broadcast shape and the inputs' dtype (computed in float64).
    """
    dtype = torch.result_type(a, b)
    return _kl_kumaraswamy_beta_unclamped(a, b, alpha, beta).clamp(min=0.0).to(dtype)


@register_kl(Kumaraswamy, Beta)
def _kl_kumaraswamy_beta_dist(q: Kumaraswamy, p: Beta) -> torch.Tensor:
    return kl_kumaraswamy_beta(q.concentration1, q.concentration0, p.concentration1, p.concentration0)


@register_kl(StickBreaking, StickBreaking)
def _kl_stick_breaking(q: StickBreaking, p: StickBreaking) -> torch.Tensor:
    """``KL(q(pi) || p(pi)) = sum_k KL(q(v_k) || p(v_k))``: the stick-breaking map is a bijection
    shared by both, and the sticks are independent."""
    if q.truncation != p.truncation:
        raise ValueError(f"KL between stick-breaking distributions needs equal truncations, "
                         f"got {q.truncation} and {p.truncation}")
    return kl_divergence(q.sticks, p.sticks).sum(-1)
