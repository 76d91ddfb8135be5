"""Tests of the distribution primitives: the count log-pmf, the fused Gaussian log-density and the
SPVAE leaf prior and posterior (stateless torch Distributions)."""

from __future__ import annotations

import math

import numpy as np
import pyro.distributions as dist
import pytest
import torch
from scipy import special, stats

from pyro_spvae.distributions import (
    BinomialGrid,
    LeafPosterior,
    LeafPrior,
    count_log_normalizer,
    count_log_pmf,
    gaussian_log_lik,
    gaussian_quad_form,
    log_binomial_coefficient,
)
from pyro_spvae.spn import BinomialLeaves, poon_domingos

DT = torch.float64


# ---------------------------------------------------------------- counts
@pytest.mark.parametrize("n", [1, 7, 255])
def test_count_log_pmf_matches_scipy(n):
    torch.manual_seed(0)
    logits = 3 * torch.randn(4, 5, dtype=DT)
    k = torch.randint(0, n + 1, (4, 5)).to(DT)
    ref = stats.binom.logpmf(k.numpy(), n, special.expit(logits.numpy()))
    np.testing.assert_allclose(count_log_pmf(k, logits, n).numpy(), ref, rtol=1e-10)
    # summed and masked: unobserved entries contribute 0, the base measure summed on k's shape
    obs = torch.rand(4, 5) > 0.3
    got = count_log_pmf(k, logits.unsqueeze(0).expand(2, 4, 5), n, observed=obs, dim=-1)
    np.testing.assert_allclose(got.numpy(), np.broadcast_to((ref * obs.numpy()).sum(-1), (2, 4)), rtol=1e-10)
    torch.testing.assert_close(count_log_normalizer(logits, n), n * torch.nn.functional.softplus(logits))
    assert float(log_binomial_coefficient(n, torch.tensor(1.0, dtype=DT))) == pytest.approx(math.log(n))


def test_count_log_pmf_is_the_one_used_by_grid_and_leaves():
    """BinomialGrid's log-pmf and BinomialLeaves' einsum evaluation both equal count_log_pmf."""
    torch.manual_seed(1)
    logits = torch.randn(6, dtype=DT)
    k = torch.randint(0, 256, (6,)).to(DT)
    grid = BinomialGrid(255, logits=logits)
    torch.testing.assert_close(grid.log_prob(k / 255), count_log_pmf(k, logits, 255))
    g = poon_domingos((2, 2), 1)
    leaves = BinomialLeaves(g, 3, total_count=4).double()
    x = torch.randint(0, 5, (5, 4)).to(DT)
    lp = leaves(x)  # (B, L, K)
    want = count_log_pmf(leaves.scopes.gather(x).unsqueeze(-1), leaves.logits, 4, dim=-2)
    torch.testing.assert_close(lp, want)
    with pytest.raises(TypeError, match="total_count"):
        count_log_pmf(k, logits, 2.0)


# ---------------------------------------------------------------- fused Gaussian
def test_gaussian_log_lik_matches_normal_with_and_without_mask():
    torch.manual_seed(2)
    x = torch.randn(3, 1, 6, dtype=DT)
    mu = torch.randn(2, 3, 4, 6, dtype=DT)
    s = 0.3 * torch.randn(4, 6, dtype=DT)
    ref = dist.Normal(mu, s.exp()).log_prob(x)  # (2, 3, 4, 6)
    torch.testing.assert_close(gaussian_log_lik(x, mu, s), ref.sum(-1))
    # the fused backward for every broadcasting pattern (value full-size: its gradient is written
    # in place; mean full-size too: it is not)
    xg = torch.randn(2, 3, 4, 6, dtype=DT, requires_grad=True)
    for m in (torch.randn(3, 4, 6, dtype=DT), torch.randn(2, 3, 4, 6, dtype=DT)):
        args = (xg, m.requires_grad_(), (0.3 * torch.randn(4, 6, dtype=DT)).requires_grad_())
        assert torch.autograd.gradcheck(gaussian_quad_form, args)
    obs = torch.rand(3, 1, 6) > 0.5
    x0 = torch.where(obs, x, torch.zeros_like(x))
    torch.testing.assert_close(gaussian_log_lik(x0, mu, s, obs), (ref * obs).sum(-1))


# ---------------------------------------------------------------- leaf prior and posterior
def test_leaf_prior_contract():
    p = LeafPrior((3, 2), (4,), dtype=DT)
    assert p.batch_shape == (4,) and p.event_shape == (3, 2) and p.support.event_dim == 2
    z = p.rsample((5,))
    assert z.shape == (5, 4, 3, 2) and z.dtype == DT
    ref = dist.Normal(torch.zeros((), dtype=DT), 1.0).expand((4, 3, 2)).to_event(2)
    torch.testing.assert_close(p.log_prob(z), ref.log_prob(z))
    torch.testing.assert_close(p.entropy(), ref.entropy())
    e = p.expand((2, 4))
    assert e.batch_shape == (2, 4) and e.mean.shape == (2, 4, 3, 2) and e.variance.shape == (2, 4, 3, 2)
    assert LeafPrior((5,)).log_prob(torch.zeros(5)).shape == ()
    with pytest.raises(ValueError, match="support"):
        LeafPrior((3, 2), validate_args=True).log_prob(torch.full((3, 2), math.nan))
    with pytest.raises(TypeError, match="event_shape"):
        LeafPrior((3, 2.0))


def test_leaf_posterior_is_stateless_and_matches_normal():
    torch.manual_seed(3)
    loc = torch.randn(4, 3, 2, dtype=DT, requires_grad=True)
    raw = torch.randn(4, 3, 2, dtype=DT, requires_grad=True)
    q = LeafPosterior(loc, torch.nn.functional.softplus(raw) + 1e-3)
    ref = dist.Normal(q.loc, q.scale).to_event(2)
    assert q.batch_shape == (4,) and q.event_shape == (3, 2)
    z = q.rsample((5,))
    before = dict(vars(q))
    lp = q.log_prob(z)
    assert vars(q).keys() == before.keys()  # sampling and scoring store nothing
    torch.testing.assert_close(lp, ref.log_prob(z))
    g = torch.autograd.grad(lp.sum(), (loc, raw), retain_graph=True)
    g_ref = torch.autograd.grad(ref.log_prob(z).sum(), (loc, raw))
    for a, b in zip(g, g_ref):
        torch.testing.assert_close(a, b)
    torch.testing.assert_close(q.entropy(), ref.entropy())
    p = LeafPrior((3, 2), (4,), dtype=DT)
    kl = torch.distributions.kl_divergence(q, p)
    ref_p = dist.Normal(torch.zeros(4, 3, 2, dtype=DT), 1.0).to_event(2)
    torch.testing.assert_close(kl, torch.distributions.kl_divergence(ref, ref_p))
    e = q.expand((2, 4))
    assert e.batch_shape == (2, 4) and e.rsample().shape == (2, 4, 3, 2) and e.loc.shape == (2, 4, 3, 2)
    torch.testing.assert_close(e.log_prob(z[0]), lp[0].expand(2, 4))
    torch.testing.assert_close(e.entropy(), ref.entropy().expand(2, 4))
    with pytest.raises(ValueError, match="scale"):
        LeafPosterior(torch.zeros(2, 3), -torch.ones(2, 3), validate_args=True)
    with pytest.raises(ValueError, match="L, z_dim"):
        LeafPosterior(torch.zeros(3), torch.ones(3))
