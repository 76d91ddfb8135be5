"""Tests for the truncated stick-breaking (GEM) distribution (pyro_spvae.distributions.stick_breaking)."""

import math

import pyro
import pyro.distributions as pdist
import pytest
import torch
from scipy import special
from torch.distributions import Beta, Dirichlet, Kumaraswamy

from pyro_spvae.distributions.stick_breaking import (
    StickBreaking,
    kumaraswamy_log_isf,
    stick_breaking_log_weights,
    stick_breaking_sticks,
    stick_breaking_weights,
)

DT = torch.float64


def _kuma(a, b, dtype=DT):
    return StickBreaking(torch.tensor(a, dtype=dtype), torch.tensor(b, dtype=dtype), "kumaraswamy")


def _beta(c1, c0, dtype=DT):
    return StickBreaking(torch.tensor(c1, dtype=dtype), torch.tensor(c0, dtype=dtype), "beta")


# ----------------------------------------------------------------------------- deterministic map
def test_weights_sum_to_one_and_invert():
    torch.manual_seed(0)
    v = torch.rand(7, 3, 9, dtype=DT)
    v[0, 0, 2], v[1, 0, 4] = 0.0, 1.0
    pi = stick_breaking_weights(v)
    assert pi.shape == (7, 3, 10) and (pi >= 0).all()
    assert torch.allclose(pi.sum(-1), torch.ones(7, 3, dtype=DT), atol=1e-14)
    assert (pi[1, 0, 5:] == 0).all()  # a stick of 1 ends the stick
    assert torch.allclose(stick_breaking_sticks(pi[2:]), v[2:], atol=1e-12)
    log_pi = stick_breaking_log_weights(torch.log(v[2:]), torch.log1p(-v[2:]))
    assert torch.allclose(log_pi.exp(), pi[2:], atol=1e-15)
    assert torch.isfinite(torch.autograd.functional.jacobian(stick_breaking_weights, v[0, 0])).all()


def test_log_weights_keep_tiny_tail_weights():
    """Far down a stick the weights stay accurate in log space (no 1 - sum cancellation)."""
    v = torch.full((60,), 0.9, dtype=torch.float32)
    log_pi = stick_breaking_log_weights(v.log(), torch.log1p(-v))
    expected = math.log(0.9) + torch.arange(60) * math.log(0.1)
    assert torch.allclose(log_pi[:-1].double(), expected.double(), rtol=1e-6)


def test_kumaraswamy_log_isf_is_accurate_and_has_no_ones():
    """Against the float64 closed form, and b = 0.02 where u^(1/b) underflows: log(1 - v) stays finite."""
    u = torch.tensor([1e-300, 1e-12, 0.3, 0.9, 1 - 1e-12], dtype=DT)
    a, b = torch.tensor(0.7, dtype=DT), torch.tensor(1.5, dtype=DT)
    log_v, log1m_v = kumaraswamy_log_isf(-u.log(), a, b)
    v = (1 - u ** (1 / b)) ** (1 / a)
    assert torch.allclose(log_v.exp(), v, rtol=1e-10)
    assert torch.allclose(log1m_v[1:], torch.log1p(-v[1:]), rtol=1e-8)
    neg_log_u = torch.tensor([0.5, 5.0, 50.0])
    log_v, log1m_v = kumaraswamy_log_isf(neg_log_u, torch.tensor(0.5), torch.tensor(0.02))
    assert torch.isfinite(log1m_v).all() and (log1m_v < -20).all() and (log_v <= 0).all()


# ----------------------------------------------------------------------------- moments
def test_gem_monte_carlo_means_match_gem_moments():
    """E[pi_k] = (1/(1+alpha)) (alpha/(1+alpha))^(k-1), k < T; pi_T takes the rest: 4 standard errors."""
    alpha, T, n = 2.0, 6, 40_000
    d = StickBreaking.gem(torch.tensor(alpha, dtype=DT), T)
    r = alpha / (1 + alpha)
    expected = torch.tensor([r ** k / (1 + alpha) for k in range(T - 1)] + [r ** (T - 1)], dtype=DT)
    assert torch.allclose(d.mean, expected, atol=1e-15)
    pi = d.sample((n,))
    se = pi.std(0) / math.sqrt(n)
    assert ((pi.mean(0) - expected).abs() < 4 * se).all()
    assert ((pi.var(0) - d.variance).abs() < 0.05 * d.variance).all()


@pytest.mark.parametrize("alpha", [0.5, 1.0, 5.0])
def test_gem_samples_lie_on_the_simplex_with_the_gem_moments(alpha):
    """Reparameterised GEM(alpha) draws, T = 7: on the simplex (sum 1, non-negative, in ``support``);
    means and variances against the closed forms from independent Beta(1, alpha) sticks,
    E[pi_k] = (1/(1+alpha)) r^(k-1) with r = alpha/(1+alpha), E[pi_k^2] = E[v^2] E[(1-v)^2]^(k-1)
    with E[v^2] = 2/((1+alpha)(2+alpha)), E[(1-v)^2] = alpha/(2+alpha), and E[pi_T^2] = E[(1-v)^2]^(T-1)."""
    T, n = 7, 50_000
    torch.manual_seed(1)
    d = StickBreaking.gem(torch.tensor(alpha, dtype=DT), T)
    pi = d.rsample((n,))
    assert pi.shape == (n, T) and bool((pi >= 0).all()) and bool(d.support.check(pi).all())
    assert torch.allclose(pi.sum(-1), torch.ones(n, dtype=DT), atol=1e-12)
    r, m2_v, m2_rest = alpha / (1 + alpha), 2 / ((1 + alpha) * (2 + alpha)), alpha / (2 + alpha)
    mean = torch.tensor([r ** k / (1 + alpha) for k in range(T - 1)] + [r ** (T - 1)], dtype=DT)
    second = torch.tensor([m2_v * m2_rest ** k for k in range(T - 1)] + [m2_rest ** (T - 1)], dtype=DT)
    assert torch.allclose(d.mean, mean, atol=1e-14)
    assert torch.allclose(d.variance, second - mean**2, atol=1e-14)
    se = pi.std(0) / math.sqrt(n)
    assert ((pi.mean(0) - mean).abs() < 4 * se).all()
    se_var = (pi - mean).pow(2).std(0) / math.sqrt(n)  # standard error of the sample variance
    assert ((pi.var(0) - (second - mean**2)).abs() < 4 * se_var).all()


def test_kumaraswamy_sticks_moments():
    d = _kuma([0.5, 2.0, 4.0, 0.3], [0.4, 1.5, 3.0, 0.2])
    pi = d.sample((40_000,))
    se = pi.std(0) / math.sqrt(pi.shape[0])
    assert ((pi.mean(0) - d.mean).abs() < 4 * se).all()
    assert ((pi.var(0) - d.variance).abs() < 0.05 * d.variance).all()
    assert torch.allclose(d.mean.sum(-1), torch.ones((), dtype=DT))


# ----------------------------------------------------------------------------- densities
def test_two_weights_reduce_to_the_stick_density():
    v = torch.tensor([1e-6, 0.2, 0.5, 0.99, 1 - 1e-9], dtype=DT)
    pi = torch.stack([v, 1 - v], -1)
    a, b = torch.tensor([0.7], dtype=DT), torch.tensor([2.5], dtype=DT)
    v1 = v.unsqueeze(-1)
    assert torch.allclose(_beta([0.7], [2.5]).log_prob(pi), Beta(a, b).log_prob(v1).squeeze(-1))
    kuma = Kumaraswamy(a, b).log_prob(v1).squeeze(-1)
    assert torch.allclose(_kuma([0.7], [2.5]).log_prob(pi), kuma, rtol=1e-6)


def test_beta_sticks_with_dirichlet_parameters_are_dirichlet():
    """Beta(c_k, sum_{j>k} c_j) sticks give Dirichlet(c) (Connor & Mosimann 1969)."""
    c = torch.tensor([0.6, 2.0, 1.3, 3.5], dtype=DT)
    tail = c.flip(0).cumsum(0).flip(0)[1:]
    d = StickBreaking(c[:-1], tail)
    x = Dirichlet(c).sample((20,))
    assert torch.allclose(d.log_prob(x), Dirichlet(c).log_prob(x), atol=1e-10)


@pytest.mark.parametrize("d", [_beta([2.5, 3.2], [3.0, 2.4]), _kuma([2.5, 3.0], [2.2, 3.5])],
                         ids=["beta", "kumaraswamy"])
def test_three_weights_integrate_to_one_over_the_simplex(d):
    """int_0^1 int_0^{1-p1} exp(log_prob(p1, p2, 1 - p1 - p2)) dp2 dp1 = 1 by nested Gauss-Legendre
    (scipy nodes, 160 x 160, one vectorised log_prob call; the densities vanish smoothly at the edges)."""
    x, w = (torch.from_numpy(t) for t in special.roots_legendre(160))
    x, w = (x + 1) / 2, w / 2  # rule on [0, 1]
    p1 = x.unsqueeze(-1).expand(160, 160)
    p2 = (1 - p1) * x  # inner rule on [0, 1 - p1]
    pi = torch.stack([p1, p2, 1 - p1 - p2], -1)
    total = (d.log_prob(pi).exp() * (1 - p1) * w * w.unsqueeze(-1)).sum()
    assert total.item() == pytest.approx(1.0, abs=1e-7)


def test_log_prob_finite_on_underflowed_samples():
    """GEM(0.3) with T = 50 in float32: tail weights underflow to 0 in a third of the entries."""
    d = StickBreaking.gem(0.3, 50)
    pi = d.sample((500,))
    assert (pi == 0).any() and torch.isfinite(d.log_prob(pi)).all()


# ----------------------------------------------------------------------------- gradients
@pytest.mark.parametrize("stick", ["beta", "kumaraswamy"])
def test_pathwise_gradient_matches_gradient_of_exact_expectation(stick):
    """grad E[f(pi)] for f(pi) = sum_k c_k pi_k + d_k pi_k^2: the mean of pathwise gradients of
    f(rsample) agrees with autograd through the exact mean and variance (4 standard errors)."""
    torch.manual_seed(1)
    c1 = torch.tensor([0.8, 2.0, 1.5], dtype=DT, requires_grad=True)
    c0 = torch.tensor([1.2, 0.6, 3.0], dtype=DT, requires_grad=True)
    cw, dw = torch.tensor([1.0, -2.0, 0.5, 3.0], dtype=DT), torch.tensor([2.0, 1.0, -1.0, 0.5], dtype=DT)
    d = StickBreaking(c1, c0, stick)
    exact = torch.autograd.grad((cw * d.mean + dw * (d.variance + d.mean ** 2)).sum(), (c1, c0))
    chunks = []
    for _ in range(20):
        pi = d.rsample((4000,))
        chunks.append(torch.cat(torch.autograd.grad((cw * pi + dw * pi ** 2).sum(-1).mean(), (c1, c0))))
    chunks = torch.stack(chunks)
    se = chunks.std(0) / math.sqrt(chunks.shape[0])
    assert ((chunks.mean(0) - torch.cat(exact)).abs() < 4 * se + 1e-6).all()


def test_gradients_finite_for_small_b_in_float32():
    a = torch.full((9,), 0.5, requires_grad=True)
    b = torch.full((9,), 0.05, requires_grad=True)
    pi = StickBreaking(a, b, "kumaraswamy").rsample((200,))
    grads = torch.autograd.grad((pi * torch.arange(10.0)).sum(), (a, b))
    assert all(torch.isfinite(g).all() for g in grads)


# ----------------------------------------------------------------------------- shapes and API
def test_shapes_batch_and_expand():
    d = StickBreaking(torch.rand(2, 3, 4) + 0.5, torch.rand(3, 4) + 0.5, "kumaraswamy")
    assert d.batch_shape == (2, 3) and d.event_shape == (5,) and d.truncation == 5
    x = d.rsample((6,))
    assert x.shape == (6, 2, 3, 5) and d.log_prob(x).shape == (6, 2, 3)
    assert d.mean.shape == (2, 3, 5) and d.variance.shape == (2, 3, 5)
    e = d.expand((7, 2, 3))
    assert e.batch_shape == (7, 2, 3) and e.sample().shape == (7, 2, 3, 5) and e.stick == "kumaraswamy"
    assert e.sticks.batch_shape == (7, 2, 3, 4)
    g = StickBreaking.gem(torch.tensor([0.5, 2.0]), 3)
    assert g.batch_shape == (2,) and g.event_shape == (3,) and g.sample((4,)).shape == (4, 2, 3)
    assert d.support is torch.distributions.constraints.simplex


def test_works_as_a_pyro_site_in_a_plate():
    def model():
        with pyro.plate("data", 3):
            return pyro.sample("pi", StickBreaking.gem(2.0, 4))

    tr = pyro.poutine.trace(model).get_trace()
    tr.compute_log_prob()
    assert tr.nodes["pi"]["value"].shape == (3, 4) and tr.nodes["pi"]["log_prob"].shape == (3,)
    assert isinstance(StickBreaking.gem(2.0, 4).sticks, pdist.Beta)


def test_argument_validation():
    with pytest.raises(TypeError):
        StickBreaking([1.0, 2.0], torch.ones(2))
    with pytest.raises(ValueError, match="T - 1"):
        StickBreaking(torch.tensor(1.0), torch.tensor(2.0))
    with pytest.raises(ValueError, match="stick"):
        StickBreaking(torch.ones(2), torch.ones(2), "gamma")
    with pytest.raises(ValueError):
        StickBreaking(-torch.ones(2), torch.ones(2), validate_args=True)
    with pytest.raises(ValueError):
        StickBreaking.gem(2.0, 1)
    with pytest.raises(TypeError):
        StickBreaking.gem(2.0, 2.5)
    with pytest.raises(ValueError):
        StickBreaking.gem(-1.0, 3)
    with pytest.raises(TypeError):
        StickBreaking.gem(True, 3)
    with pytest.raises(ValueError):
        StickBreaking.gem(2.0, 3, validate_args=True).log_prob(torch.tensor([0.5, 0.6, 0.1]))
    with pytest.raises(TypeError):
        stick_breaking_weights([0.5])
