"""Tests for KL(Kumaraswamy || Beta) and the stick-breaking KL (pyro_spvae.distributions.kl)."""

import itertools
import math

import pyro
import pyro.distributions as pdist
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from pyro.infer import TraceMeanField_ELBO
from scipy import integrate, special
from torch.distributions import Beta, Kumaraswamy, kl_divergence

from pyro_spvae.distributions.kl import (
    _kl_kumaraswamy_beta_unclamped,
    kl_kumaraswamy_beta,
    kumaraswamy_expected_log,
    kumaraswamy_expected_log1m,
)
from pyro_spvae.distributions.stick_breaking import StickBreaking, kumaraswamy_log_isf

DT = torch.float64
GRID_AB = [0.3, 0.7, 1.0, 2.0, 5.0, 8.0]
GRID_PRIOR = [0.5, 1.0, 5.0]


def _t(*xs):
    return [torch.tensor(x, dtype=DT) for x in xs]


def _expect_quad(a, b, f):
    """``E_q[f(log v, log(1 - v))]`` for ``q = Kumaraswamy(a, b)`` by scipy quad, split at v = 1/2
    and substituted ``v = exp(-x)`` (left half), ``1 - v = exp(-x)`` (right half), so that the
    endpoint singularities become exponentially decaying tails in log densities (no mass is lost
    to float64 rounding near v = 1, which matters when b < 1)."""

    def integrand(x, side):
        log_v, log1m_v = (-x, math.log1p(-math.exp(-x))) if side == 0 else (math.log1p(-math.exp(-x)), -x)
        if side == 1 and x > 30:  # 1 - v^a = a (1 - v) (1 + (a - 1)(1 - v) / 2 + O((1 - v)^2))
            log1m_va = math.log(a) - x + (a - 1) / 2 * math.exp(-x)
        else:
            log1m_va = math.log(-math.expm1(a * log_v))
        log_q = math.log(a * b) + (a - 1) * log_v + (b - 1) * log1m_va
        return math.exp(log_q - x) * f(log_v, log1m_v, log_q)

    opts = dict(epsabs=1e-13, epsrel=1e-11, limit=400)
    return sum(integrate.quad(integrand, math.log(2.0), math.inf, args=(side,), **opts)[0] for side in (0, 1))


def _kl_quad(a, b, alpha, beta):
    """Reference KL = int q log(q / p) dv (exact up to quadrature precision)."""

    def log_ratio(log_v, log1m_v, log_q):
        return log_q - (alpha - 1) * log_v - (beta - 1) * log1m_v + special.betaln(alpha, beta)

    return _expect_quad(a, b, log_ratio)


def test_kl_matches_quadrature_on_grid():
    """Over a, b in {0.3, .., 8} (b < 1 included) and alpha, beta in {0.5, 1, 5}: relative error
    below 1e-6 (the requirement is 1e-3); points with KL = 0 exactly (q = p) to 1e-9 absolute."""
    points = list(itertools.product(GRID_AB, GRID_AB, GRID_PRIOR, GRID_PRIOR))
    a, b, alpha, beta = (torch.tensor(col, dtype=DT) for col in zip(*points))
    kl = _kl_kumaraswamy_beta_unclamped(a, b, alpha, beta)
    ref = torch.tensor([_kl_quad(*p) for p in points], dtype=DT)
    assert (ref > -1e-10).all()
    err = (kl - ref).abs()
    assert (err <= 1e-6 * ref.abs() + 1e-9).all(), [points[i] for i in torch.nonzero(err > 1e-6 * ref + 1e-9)]
    assert (kl >= 0).all()  # no clamp involved


@pytest.mark.parametrize("a, b, alpha, beta", [(0.05, 0.05, 1.0, 5.0), (50.0, 0.1, 0.5, 0.5),
                                               (0.2, 50.0, 5.0, 1.0), (20.0, 20.0, 1.0, 5.0)])
def test_kl_matches_quadrature_at_extremes(a, b, alpha, beta):
    kl = _kl_kumaraswamy_beta_unclamped(*_t(a, b, alpha, beta)).item()
    assert kl == pytest.approx(_kl_quad(a, b, alpha, beta), rel=1e-6)


@pytest.mark.parametrize("a, b, alpha, beta", [(0.7, 0.5, 1.0, 5.0), (5.0, 8.0, 0.5, 0.5)])
def test_kl_matches_monte_carlo(a, b, alpha, beta):
    """E_q[log q(v) - log p(v)] from 1e5 draws, within 4 standard errors."""
    torch.manual_seed(0)
    q, p = Kumaraswamy(*_t(a, b)), Beta(*_t(alpha, beta))
    v = q.sample((100_000,))
    r = q.log_prob(v) - p.log_prob(v)
    se = r.std() / math.sqrt(r.numel())
    assert abs(kl_kumaraswamy_beta(*_t(a, b, alpha, beta)) - r.mean()) < 4 * se


def test_kl_matches_monte_carlo_on_grid():
    """Over a, b in {0.3, 0.7, 2, 8} (below 1 and above 5) and alpha, beta in {0.5, 1, 5}, the
    registered KL agrees with E_q[log q(v) - log p(v)] from 20,000 draws per point within 5 standard
    errors (144 points at once: 5 rather than 4 keeps the family-wise false-alarm rate below 1e-4).

    The draws are made in log space, ``v = (1 - u^(1/b))^(1/a)`` through ``kumaraswamy_log_isf``, where
    ``log(1 - v^a) = log(u) / b`` exactly, so neither density meets ``v = 1`` in floating point (with
    b = 0.3 torch's sampler rounds 1 in 10^5 float64 draws to 1)."""
    points = list(itertools.product([0.3, 0.7, 2.0, 8.0], [0.3, 0.7, 2.0, 8.0], GRID_PRIOR, GRID_PRIOR))
    a, b, alpha, beta = (torch.tensor(col, dtype=DT).unsqueeze(-1) for col in zip(*points))
    g = torch.Generator().manual_seed(0)
    neg_log_u = torch.empty(len(points), 20_000, dtype=DT).exponential_(generator=g)
    log_v, log1m_v = kumaraswamy_log_isf(neg_log_u, a, b)
    log_q = a.log() + b.log() + (a - 1) * log_v - (b - 1) * neg_log_u / b
    log_p = (alpha - 1) * log_v + (beta - 1) * log1m_v - torch.lgamma(alpha) - torch.lgamma(beta) \
        + torch.lgamma(alpha + beta)
    r = log_q - log_p
    se = r.std(-1) / math.sqrt(r.shape[-1])
    kl = kl_divergence(Kumaraswamy(a.squeeze(-1), b.squeeze(-1)), Beta(alpha.squeeze(-1), beta.squeeze(-1)))
    z = (kl - r.mean(-1)).abs() / se
    assert (z < 5).all(), [(points[i], float(z[i])) for i in torch.nonzero(z >= 5).flatten()]
    assert float(z.mean()) < 1.2  # |N(0, 1)| has mean 0.8: the errors look like Monte Carlo noise


def test_ten_term_series_is_off_for_small_b():
    """Why a convergent evaluation is needed: the paper's series cut at 10 terms is > 10% off."""
    a, b, alpha, beta = 1.0, 0.3, 1.0, 5.0
    series = sum(math.exp(special.betaln(m / a, b)) / (m + a * b) for m in range(1, 11))
    closed = (math.log(a * b) + (a - alpha) / a * (-0.5772156649015329 - special.digamma(b) - 1 / b)
              + special.betaln(alpha, beta) - (b - 1) / b)
    ten_terms = closed + (beta - 1) * b * series
    exact = _kl_quad(a, b, alpha, beta)
    assert abs(ten_terms - exact) > 0.1 * exact
    assert kl_kumaraswamy_beta(*_t(a, b, alpha, beta)).item() == pytest.approx(exact, rel=1e-6)


def test_expected_logs_match_quadrature():
    for a, b in [(0.3, 0.2), (2.0, 0.7), (8.0, 5.0)]:
        ref_log = _expect_quad(a, b, lambda lv, l1m, lq: lv)
        ref_log1m = _expect_quad(a, b, lambda lv, l1m, lq: l1m)
        assert kumaraswamy_expected_log(*_t(a, b)).item() == pytest.approx(ref_log, rel=1e-7)
        assert kumaraswamy_expected_log1m(*_t(a, b)).item() == pytest.approx(ref_log1m, rel=1e-7)


def test_kl_is_zero_when_kumaraswamy_is_beta():
    """Kumaraswamy(1, b) is Beta(1, b)."""
    b = torch.tensor([0.1, 0.7, 1.0, 5.0, 30.0], dtype=DT)
    kl = _kl_kumaraswamy_beta_unclamped(torch.ones_like(b), b, torch.ones_like(b), b)
    assert kl.abs().max() < 1e-12


@settings(max_examples=60, deadline=None)
@given(*(st.floats(0.1, 20.0) for _ in range(4)))
def test_kl_nonnegative_property(a, b, alpha, beta):
    """KL >= 0 without the clamp (up to float64 rounding when q = p), and >= 0 exactly with it."""
    args = _t(a, b, alpha, beta)
    assert _kl_kumaraswamy_beta_unclamped(*args).item() >= -1e-12
    assert kl_kumaraswamy_beta(*args).item() >= 0.0


def test_gradients_match_finite_differences():
    a = torch.tensor([0.05, 0.3, 1.0, 5.0, 20.0, 0.7], dtype=DT, requires_grad=True)
    b = torch.tensor([0.02, 0.7, 3.0, 0.1, 20.0, 8.0], dtype=DT, requires_grad=True)
    alpha = torch.tensor([1.0, 0.5, 5.0, 1.0, 1.0, 2.0], dtype=DT, requires_grad=True)
    beta = torch.tensor([5.0, 0.5, 1.0, 5.0, 3.0, 2.0], dtype=DT, requires_grad=True)
    assert torch.autograd.gradcheck(_kl_kumaraswamy_beta_unclamped, (a, b, alpha, beta))
    kl = kl_kumaraswamy_beta(a.float(), b.float(), alpha.float(), beta.float())
    grads = torch.autograd.grad(kl.sum(), (a, b))
    assert all(torch.isfinite(g).all() for g in grads)


def test_registered_for_torch_and_pyro_classes_with_broadcasting():
    a, b = torch.rand(3, 1) * 3 + 0.2, torch.rand(3, 1) * 3 + 0.2
    alpha, beta = torch.rand(4) + 0.5, torch.rand(4) * 5 + 0.5
    expected = kl_kumaraswamy_beta(a, b, alpha, beta)
    assert expected.shape == (3, 4) and expected.dtype == torch.float32
    for kuma, beta_cls in [(Kumaraswamy, Beta), (pdist.Kumaraswamy, pdist.Beta)]:
        q, p = kuma(a.expand(3, 4), b.expand(3, 4)), beta_cls(alpha.expand(3, 4), beta.expand(3, 4))
        assert torch.equal(kl_divergence(q, p), expected)


def test_stick_breaking_kl_is_sum_of_stick_kls_and_matches_monte_carlo():
    """KL(q(pi) || p(pi)) = sum_k KL(q(v_k) || p(v_k)); E_q[log q(pi) - log p(pi)] agrees, which
    also checks that the Jacobian terms of StickBreaking.log_prob cancel between q and p."""
    torch.manual_seed(0)
    a = torch.tensor([[0.8, 2.0, 1.5], [3.0, 0.6, 1.0]], dtype=DT)
    b = torch.tensor([[2.0, 4.0, 0.9], [1.5, 3.0, 6.0]], dtype=DT)
    q = StickBreaking(a, b, "kumaraswamy")
    p = StickBreaking.gem(torch.tensor([2.0, 5.0], dtype=DT), 4)
    kl = kl_divergence(q, p)
    assert kl.shape == (2,)
    assert torch.allclose(kl, kl_kumaraswamy_beta(a, b, torch.ones_like(a), p.concentration0).sum(-1))
    pi = q.sample((100_000,))
    r = q.log_prob(pi) - p.log_prob(pi)
    se = r.std(0) / math.sqrt(pi.shape[0])
    assert ((r.mean(0) - kl).abs() < 4 * se).all()
    with pytest.raises(ValueError, match="truncations"):
        kl_divergence(q, StickBreaking.gem(2.0, 5))


def test_trace_mean_field_elbo_uses_the_registered_kl():
    """A stick-breaking site with a Kumaraswamy guide gets its analytic KL in TraceMeanField_ELBO."""
    a = torch.rand(4, 5, dtype=DT) + 0.5
    b = torch.rand(4, 5, dtype=DT) * 3 + 0.2

    def model():
        with pyro.plate("data", 4):
            pyro.sample("pi", StickBreaking.gem(torch.tensor(5.0, dtype=DT), 6))

    def guide():
        with pyro.plate("data", 4):
            pyro.sample("pi", StickBreaking(a, b, "kumaraswamy"))

    loss = TraceMeanField_ELBO().loss(model, guide)
    assert loss == pytest.approx(kl_kumaraswamy_beta(a, b, 1.0, 5.0).sum().item(), rel=1e-6)
