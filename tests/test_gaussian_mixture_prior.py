"""Tests for the Gaussian-mixture prior (pyro_spvae.distributions.gaussian_mixture and
pyro_spvae.nn.gaussian_mixture_prior)."""

import math

import pyro
import pyro.distributions as pdist
import pytest
import torch
from pyro.infer import Trace_ELBO
from pyro.nn import PyroModule, PyroParam
from scipy import integrate
from torch.distributions import Normal, constraints

from pyro_spvae.distributions.gaussian_mixture import GaussianMixture
from pyro_spvae.nn.gaussian_mixture_prior import GaussianMixturePrior

DT = torch.float64


def _mixture(batch=(), K=3, D=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(*batch, K, generator=g, dtype=DT)
    locs = 3 * torch.randn(K, D, generator=g, dtype=DT)
    scales = 0.5 + torch.rand(K, D, generator=g, dtype=DT)
    return GaussianMixture(logits, locs, scales)


def _brute_force(d, z):
    """log sum_k pi_k prod_d N(z_d; mu_kd, s_kd), one component at a time with torch Normal."""
    pi = torch.softmax(d.logits, -1)
    total = sum(pi[..., k] * Normal(d.locs[k], d.scales[k]).log_prob(z).sum(-1).exp()
                for k in range(d.num_components))
    return total.log()


def test_log_prob_equals_brute_force_sum_over_components():
    d = _mixture(batch=(4,))
    z = 2 * torch.randn(5, 4, 2, dtype=DT)
    assert torch.allclose(d.log_prob(z), _brute_force(d, z), atol=1e-12)
    comp = d.component_log_prob(z)
    assert comp.shape == (5, 4, 3)
    resp = d.responsibilities(z)
    assert torch.allclose(resp.sum(-1), torch.ones(5, 4, dtype=DT))
    assert torch.allclose(resp, (comp - d.log_prob(z).unsqueeze(-1)).exp())


def test_log_prob_stable_far_from_every_component():
    d = _mixture()
    z = torch.full((2,), 1e3, dtype=DT)
    assert torch.isfinite(d.log_prob(z)) and torch.isfinite(d.responsibilities(z)).all()


def test_normalisation_1d_quad_and_2d_grid():
    d1 = _mixture(D=1)
    total, _ = integrate.quad(lambda x: d1.log_prob(torch.tensor([x], dtype=DT)).exp().item(),
                              -math.inf, math.inf, epsabs=1e-11, limit=200)
    assert total == pytest.approx(1.0, abs=1e-8)
    d2 = _mixture(D=2)
    x = torch.linspace(-20, 20, 801, dtype=DT)
    grid = torch.stack(torch.meshgrid(x, x, indexing="ij"), -1)
    mass = d2.log_prob(grid).exp().sum() * (x[1] - x[0]) ** 2  # trapezoid = sum for vanishing edges
    assert mass.item() == pytest.approx(1.0, abs=1e-8)


def test_sample_moments_match_mean_and_variance():
    torch.manual_seed(0)
    d = _mixture(K=4, D=3)
    z = d.sample((100_000,))
    assert z.shape == (100_000, 3)
    se_mean = z.std(0) / math.sqrt(z.shape[0])
    assert ((z.mean(0) - d.mean).abs() < 4 * se_mean).all()
    se_var = ((z - z.mean(0)).pow(2).std(0)) / math.sqrt(z.shape[0])
    assert ((z.var(0) - d.variance).abs() < 4 * se_var).all()


def test_per_data_point_weights_broadcast_and_expand():
    """(B, K) logits with global (K, D) locs and scales: each row is its own mixture."""
    d = _mixture(batch=(6,))
    assert d.batch_shape == (6,) and d.event_shape == (2,)
    z = torch.randn(6, 2, dtype=DT)
    for i in range(6):
        row = GaussianMixture(d.logits[i], d.locs, d.scales)
        assert torch.allclose(d.log_prob(z)[i], row.log_prob(z[i]))
        assert torch.allclose(d.mean[i], row.mean) and torch.allclose(d.variance[i], row.variance)
    assert d.sample((3,)).shape == (3, 6, 2) and d.log_prob(torch.randn(3, 1, 2, dtype=DT)).shape == (3, 6)
    e = _mixture().expand((2, 5))
    assert e.batch_shape == (2, 5) and e.sample().shape == (2, 5, 2) and e.mean.shape == (2, 5, 2)
    assert e.log_prob(torch.zeros(2, 5, 2, dtype=DT)).shape == (2, 5)
    assert e.support is constraints.real_vector and not e.has_rsample


def test_to_pathwise_is_the_same_mixture():
    d = _mixture(batch=(4,))
    z = torch.randn(4, 2, dtype=DT)
    p = d.to_pathwise()
    assert isinstance(p, pdist.MixtureOfDiagNormals) and p.has_rsample
    assert torch.allclose(p.log_prob(z), d.log_prob(z))
    with pytest.raises(ValueError, match="D = 1"):
        _mixture(D=1).to_pathwise()


def test_argument_validation():
    with pytest.raises(TypeError):
        GaussianMixture([0.0, 0.0], torch.zeros(2, 3), torch.ones(2, 3))
    with pytest.raises(ValueError, match="equal K"):
        GaussianMixture(torch.zeros(3), torch.zeros(2, 3), torch.ones(2, 3))
    with pytest.raises(ValueError):
        GaussianMixture(torch.zeros(2), torch.zeros(2, 3), -torch.ones(2, 3), validate_args=True)
    with pytest.raises(ValueError):
        GaussianMixture(torch.zeros(2), torch.zeros(3), torch.ones(3))
    with pytest.raises(TypeError):
        GaussianMixturePrior(2.0, 3)
    with pytest.raises(ValueError):
        GaussianMixturePrior(0, 3)
    with pytest.raises(TypeError):
        GaussianMixturePrior(2, 3, learn_weights=1)
    with pytest.raises(ValueError, match=r"\(\.\.\., 2\)"):
        GaussianMixturePrior(2, 3)(torch.zeros(4, 3))


class _TinyModel(PyroModule):
    """z ~ GaussianMixturePrior, x ~ N(W z, 0.1)."""

    def __init__(self, K, D, X):
        super().__init__()
        self.prior = GaussianMixturePrior(K, D)
        self.decoder = torch.nn.Linear(D, X)

    def forward(self, x, log_pi=None):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", self.prior(log_pi))
            pyro.sample("x", pdist.Normal(self.decoder(z), 0.1).to_event(1), obs=x)


class _Guide(PyroModule):
    def __init__(self, B, D):
        super().__init__()
        self.loc = PyroParam(torch.zeros(B, D))
        self.scale = PyroParam(torch.ones(B, D), constraint=constraints.positive)

    def forward(self, x, log_pi=None):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", pdist.Normal(self.loc, self.scale).to_event(1))


def _svi_sgd_step(model, guide, *args, lr=0.1):
    """What ``SVI(model, guide, SGD(lr), Trace_ELBO()).step(*args)`` does, with the SGD update
    written out: a torch optimizer would import torch._dynamo (seconds) in this test file."""
    with pyro.poutine.trace(param_only=True) as param_capture:
        loss = Trace_ELBO().loss_and_grads(model, guide, *args)
    params = {site["value"].unconstrained() for site in param_capture.trace.nodes.values()}
    with torch.no_grad():
        for p in params:
            p -= lr * p.grad
            p.grad = None
    return loss


@pytest.mark.parametrize("per_point", [False, True])
def test_prior_site_in_svi_step(per_point):
    """One Trace_ELBO SVI step updates the prior's locs, scales and logits (global weights) and
    runs with per-data-point weights (B, K) passed in."""
    torch.manual_seed(0)
    B, K, D, X = 8, 3, 2, 4
    model, guide = _TinyModel(K, D, X), _Guide(B, D)
    x = torch.randn(B, X)
    log_pi = torch.log_softmax(torch.randn(B, K), -1) if per_point else None
    before = {n: p.detach().clone() for n, p in model.prior.named_parameters()}
    loss = _svi_sgd_step(model, guide, x, log_pi)
    assert math.isfinite(loss)
    changed = {n for n, p in model.prior.named_parameters() if not torch.equal(before[n], p.detach())}
    expected = {"locs", "scales_unconstrained"} | (set() if per_point else {"logits"})
    assert changed == expected
    assert isinstance(model.prior(), GaussianMixture) and model.prior().batch_shape == ()


def test_prior_without_learnt_weights_is_uniform():
    prior = GaussianMixturePrior(4, 2, learn_weights=False)
    assert "logits" not in dict(prior.named_parameters())
    assert torch.allclose(prior().probs, torch.full((4,), 0.25))
    assert prior.num_components == 4 and prior.dim == 2
