"""The hierarchical prior (:class:`pyro_spvae.distributions.HierarchicalPrior`), its networks and the
VHP-VAE (Klushyn et al. 2019), checked against a tractable hierarchical prior.

Ground truth: with a linear-Gaussian ``p(z | zeta) = N(W zeta + b, s^2 I)`` and ``p(zeta) = N(0, I)``
the prior is the pPCA marginal ``p(z) = N(b, W W^T + s^2 I)`` with the exact posterior
``p(zeta | z)`` of :class:`~pyro_spvae.models.LinearGaussianVAE` (``docs/ground_truth.md``), so the
importance-weighted bound can be compared with the exact ``log p(z)``.
"""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.infer import SVI, Trace_ELBO
from pyro.optim import Adam

from pyro_spvae.distributions import HierarchicalPrior
from pyro_spvae.guides import VHPVAEGuide
from pyro_spvae.infer import TraceIWAE_ELBO
from pyro_spvae.models import VHPVAE, LinearGaussianVAE
from pyro_spvae.nn.hierarchical_prior_net import HierarchicalPriorNet
from pyro_spvae.zoo import MODELS

D, d = 3, 2  # dimensions of z and zeta
F64 = torch.float64


class Linear:
    """The tractable hierarchical prior: ``p(z | zeta)``, the exact ``p(zeta | z)``, a poor proposal
    (``p(zeta)`` itself) and the exact marginal ``p(z)``."""

    def __init__(self, seed: int = 0) -> None:
        torch.manual_seed(seed)
        self.lg = LinearGaussianVAE(D, d, noise_scale=0.7, dtype=F64)
        self.W, self.b, self.s = self.lg.W.detach(), self.lg.b.detach(), self.lg.noise_scale.detach()

    def conditional(self, zeta: torch.Tensor) -> dist.Distribution:
        return dist.Normal(zeta @ self.W.T + self.b, self.s).to_event(1)

    def exact_posterior(self, z: torch.Tensor) -> dist.Distribution:
        # Tipping & Bishop (1999): p(zeta | z) = N(M^-1 W^T (z - b) / s^2, M^-1), M = I + W^T W / s^2
        cov = torch.linalg.inv(torch.eye(d, dtype=F64) + self.W.T @ self.W / self.s**2)
        loc = (z - self.b) @ self.W @ cov / self.s**2
        return dist.MultivariateNormal(loc, covariance_matrix=cov)

    @staticmethod
    def poor_posterior(z: torch.Tensor) -> dist.Distribution:
        return dist.Normal(torch.zeros(*z.shape[:-1], d, dtype=z.dtype), 1.0).to_event(1)

    def prior(self, posterior, num_samples: int) -> HierarchicalPrior:
        zeta_prior = dist.Normal(torch.zeros(d, dtype=F64), 1.0).to_event(1)
        return HierarchicalPrior(self.conditional, posterior, zeta_prior, D, num_samples)

    def marginal(self) -> dist.MultivariateNormal:
        cov = self.W @ self.W.T + self.s**2 * torch.eye(D, dtype=F64)
        return dist.MultivariateNormal(self.b, covariance_matrix=cov)


@pytest.fixture(scope="module")
def linear() -> Linear:
    return Linear()


# ---------------------------------------------------------------------------- the bound
def test_bound_below_exact_and_tightens_with_k(linear):
    """E[log_prob] <= log p(z) for every K, and the gap shrinks as K grows (expectations over R
    repeats, 3 standard errors)."""
    torch.manual_seed(1)
    z = linear.marginal().sample((20,))
    exact = float(linear.marginal().log_prob(z).mean())
    R = 200
    gaps, ses = [], []
    with torch.no_grad():
        for K in (1, 4, 16, 64):
            per_repeat = linear.prior(linear.poor_posterior, K).log_prob(z.expand(R, 20, D)).mean(1)
            gaps.append(exact - float(per_repeat.mean()))
            ses.append(float(per_repeat.std()) / math.sqrt(R))
    for K, gap, se in zip((1, 4, 16, 64), gaps, ses):
        assert gap > -3 * se, f"K={K}: bound above log p(z) by {-gap:.3f} (SE {se:.3f})"
    for i in range(3):
        assert gaps[i + 1] < gaps[i] - 3 * math.hypot(ses[i], ses[i + 1]), gaps
    assert gaps[-1] < 0.05 * gaps[0]


@pytest.mark.parametrize("K", [1, 7])
def test_bound_exact_with_exact_posterior(linear, K):
    """With q(zeta | z) = p(zeta | z) every weight equals p(z): the bound is exact for every K."""
    torch.manual_seed(2)
    z = linear.marginal().sample((10,))
    lp = linear.prior(linear.exact_posterior, K).log_prob(z)
    torch.testing.assert_close(lp, linear.marginal().log_prob(z), atol=1e-10, rtol=0)


def test_sample_moments(linear):
    """Ancestral samples have the exact marginal's mean and covariance."""
    torch.manual_seed(3)
    x = linear.prior(linear.poor_posterior, 1).sample((40000,))
    marg = linear.marginal()
    assert x.shape == (40000, D)
    se = marg.covariance_matrix.diagonal().sqrt() / math.sqrt(40000)
    assert bool(((x.mean(0) - marg.mean).abs() < 4 * se).all())
    torch.testing.assert_close(torch.cov(x.T), marg.covariance_matrix, atol=0.05, rtol=0.03)


def test_shapes_expand_and_rsample(linear):
    prior = linear.prior(linear.poor_posterior, 3)
    assert prior.batch_shape == () and prior.event_shape == (D,) and prior.zeta_dim == d
    big = prior.expand([5])
    assert big.batch_shape == (5,) and big.num_samples == 3 and big.conditional == prior.conditional
    assert big.sample((4,)).shape == (4, 5, D)
    assert big.log_prob(torch.zeros(2, 5, D, dtype=F64)).shape == (2, 5)
    assert big.log_prob(torch.zeros(D, dtype=F64)).shape == (5,)  # broadcast to the batch shape
    assert prior.log_weights(torch.zeros(6, D, dtype=F64)).shape == (3, 6)
    assert prior.with_num_samples(11).num_samples == 11 and prior.num_samples == 3
    W = linear.W.clone().requires_grad_(True)
    p = HierarchicalPrior(lambda zeta: dist.Normal(zeta @ W.T, 1.0).to_event(1), linear.poor_posterior,
                          prior.zeta_prior, D)
    p.rsample((8,)).sum().backward()
    assert W.grad is not None and bool(W.grad.abs().sum() > 0)


def test_prior_site_in_plate(linear):
    """An ordinary prior site: the plate expands the batch shape and the trace's log-density is
    the bound, one value per data point."""
    prior = linear.prior(linear.exact_posterior, 2)

    def model():
        with pyro.plate("data", 4):
            return pyro.sample("z", prior)

    tr = poutine.trace(model).get_trace()
    tr.compute_log_prob()
    site = tr.nodes["z"]
    assert site["value"].shape == (4, D) and site["fn"].batch_shape == (4,)
    exact = linear.marginal().log_prob(site["value"])
    torch.testing.assert_close(site["log_prob"], exact, atol=1e-10, rtol=0)


def test_validation(linear):
    zp = dist.Normal(torch.zeros(d, dtype=F64), 1.0).to_event(1)
    with pytest.raises(TypeError, match="conditional"):
        HierarchicalPrior(3, linear.poor_posterior, zp, D)
    with pytest.raises(TypeError, match="zeta_prior"):
        HierarchicalPrior(linear.conditional, linear.poor_posterior, dist.Normal(0.0, 1.0), D)
    with pytest.raises(ValueError, match="num_samples"):
        HierarchicalPrior(linear.conditional, linear.poor_posterior, zp, D, 0)
    with pytest.raises(TypeError, match="num_samples"):
        HierarchicalPrior(linear.conditional, linear.poor_posterior, zp, D, True)
    wrong = HierarchicalPrior(lambda zeta: dist.Normal(zeta, 1.0), linear.poor_posterior, zp, D)
    with pytest.raises(ValueError, match="event shape"):
        wrong.log_prob(torch.zeros(2, D, dtype=F64))
    counts = HierarchicalPrior(lambda zeta: dist.Poisson(zeta.exp() @ linear.W.T.abs()).to_event(1),
                               linear.poor_posterior, zp, D)
    with pytest.raises(NotImplementedError, match="rsample"):
        counts.rsample()
    assert counts.sample((2,)).shape == (2, D)


# ---------------------------------------------------------------------------- ELBOs stay bounds
def _pipeline(linear: Linear, exact: bool, num_samples: int):
    """x | z ~ N(C z, sigma^2 I) under the hierarchical prior; exact p(x) is Gaussian, and with
    exact q(z | x) and q(zeta | z) every importance weight equals p(x)."""
    C = torch.tensor([[1.0, 0.5, -0.3], [0.2, -1.0, 0.4]], dtype=F64)
    sigma = 0.5
    marg = linear.marginal()
    Sz, mz = marg.covariance_matrix, marg.mean
    px = dist.MultivariateNormal(C @ mz, covariance_matrix=C @ Sz @ C.T + sigma**2 * torch.eye(2, dtype=F64))
    post_cov = torch.linalg.inv(torch.linalg.inv(Sz) + C.T @ C / sigma**2)
    prior = linear.prior(linear.exact_posterior if exact else linear.poor_posterior, num_samples)

    def model(x):
        with pyro.plate("data", x.shape[0], dim=-1):
            z = pyro.sample("z", prior)
            pyro.sample("x", dist.Normal(z @ C.T, sigma).to_event(1), obs=x)

    def guide(x):
        loc = (post_cov @ (torch.linalg.solve(Sz, mz) + (x @ C / sigma**2)).unsqueeze(-1)).squeeze(-1)
        with pyro.plate("data", x.shape[0], dim=-1):
            if exact:
                pyro.sample("z", dist.MultivariateNormal(loc, covariance_matrix=post_cov))
            else:
                pyro.sample("z", dist.Normal(loc, 1.0).to_event(1))

    return model, guide, px


@pytest.mark.parametrize("exact", [True, False])
def test_elbos_on_the_prior_bound_log_px(linear, exact):
    """Trace_ELBO and TraceIWAE_ELBO with the bound as log p(z) stay below the exact log p(x), and
    equal it with exact q(z | x) and q(zeta | z)."""
    torch.manual_seed(4)
    model, guide, px = _pipeline(linear, exact, num_samples=3)
    x = px.sample((8,))
    exact_lp = float(px.log_prob(x).sum())
    for elbo, R in ((Trace_ELBO(), 60), (TraceIWAE_ELBO(num_particles=4), 60)):
        values = torch.tensor([-elbo.loss(model, guide, x) for _ in range(R)], dtype=F64)
        if exact:
            torch.testing.assert_close(values, torch.full_like(values, exact_lp), atol=1e-8, rtol=0)
        else:
            se = float(values.std()) / math.sqrt(R)
            assert float(values.mean()) < exact_lp + 3 * se, (type(elbo).__name__, values.mean(), exact_lp)


# ---------------------------------------------------------------------------- networks and model
def test_prior_net_gradients():
    torch.manual_seed(5)
    net = HierarchicalPriorNet(z_dim=3, zeta_dim=2, hidden=(8,), num_samples=4)
    prior = net()
    assert isinstance(prior, HierarchicalPrior) and prior.num_samples == 4
    assert net(num_samples=9).num_samples == 9
    prior.log_prob(torch.randn(5, 3)).sum().backward()
    for name, p in net.named_parameters():
        assert p.grad is not None and bool(p.grad.abs().sum() > 0), name
    assert net.zeta_prior(torch.zeros(1, dtype=F64)).sample().dtype == F64
    with pytest.raises(ValueError, match="num_samples"):
        HierarchicalPriorNet(3, 2, num_samples=0)


@pytest.mark.parametrize("arch, event_shape, extra", [
    ("dense", (1, 4, 4), {}),
    ("conv", (1, 8, 8), {"channels": (4,)}),
])
def test_vhp_vae_trains_and_samples(arch, event_shape, extra):
    pyro.clear_param_store()
    pyro.set_rng_seed(6)
    model, guide = MODELS["vhp-vae"](event_shape, z_dim=2, zeta_dim=3, num_prior_samples=2, hidden=(8,),
                                     prior_hidden=(6,), arch=arch, **extra)
    assert isinstance(model, VHPVAE) and isinstance(guide, VHPVAEGuide)
    assert model.zeta_dim == 3 and model.num_prior_samples == 2
    x = torch.bernoulli(torch.full((5, *event_shape), 0.5))
    before = {n: p.detach().clone() for n, p in model.prior_net.named_parameters()}
    svi = SVI(model, guide, Adam({"lr": 1e-2}), TraceIWAE_ELBO(num_particles=2))
    assert all(math.isfinite(svi.step(x)) for _ in range(2))
    changed = [n for n, p in model.prior_net.named_parameters() if not torch.equal(p.detach(), before[n])]
    assert any(n.startswith("posterior_net") for n in changed)
    assert any(n.startswith("conditional_net") for n in changed)
    assert model.sample(3).shape == (3, *event_shape)
    assert model.reconstruct(x, guide).shape == x.shape
    assert model.prior(4).batch_shape == (4,)
    zeta, z = model.embed_prior(6)
    assert zeta.shape == (6, 3) and z.shape == (6, 2)
    model.num_prior_samples = 5
    assert model.prior_net().num_samples == 5
    with pytest.raises(TypeError, match="num_prior_samples"):
        model.num_prior_samples = 2.0


# ---------------------------------------------------------------------------- proposals between the extremes
def _gap_and_se(prior: HierarchicalPrior, z: torch.Tensor, exact: float, R: int = 200) -> tuple[float, float]:
    """``log p(z) - E[bound]`` averaged over the points ``z`` and its standard error over ``R`` repeats."""
    with torch.no_grad():
        per_repeat = prior.log_prob(z.expand(R, *z.shape)).mean(1)
    return exact - float(per_repeat.mean()), float(per_repeat.std()) / math.sqrt(R)


def test_bound_with_a_perturbed_proposal(linear):
    """A proposal near p(zeta | z) (shifted mean, inflated diagonal scale): the bound stays below the
    exact log p(z), tightens with K, and is tighter than with the prior as proposal."""
    torch.manual_seed(7)
    z = linear.marginal().sample((20,))
    exact = float(linear.marginal().log_prob(z).mean())

    def perturbed(v: torch.Tensor) -> dist.Distribution:
        post = linear.exact_posterior(v)
        sd = post.covariance_matrix.diagonal(dim1=-2, dim2=-1).sqrt()
        return dist.Normal(post.mean + 0.3, 1.5 * sd).to_event(1)

    Ks = (1, 8, 64)
    results = [_gap_and_se(linear.prior(perturbed, K), z, exact) for K in Ks]
    for K, (gap, se) in zip(Ks, results):
        assert gap > -3 * se, f"K={K}: bound above log p(z) by {-gap:.4f} (SE {se:.4f})"
    for (g0, s0), (g1, s1) in zip(results, results[1:]):
        assert g1 < g0 - 3 * math.hypot(s0, s1), results
    poor_gap, poor_se = _gap_and_se(linear.prior(linear.poor_posterior, 1), z, exact)
    assert results[0][0] < poor_gap - 3 * math.hypot(results[0][1], poor_se)


def test_learnt_mean_field_proposal_reaches_the_closed_form_gap():
    """Maximising the K = 1 bound over an amortised diagonal Gaussian q(zeta | z) (gradients through
    the reparameterised zeta) drives its gap to KL(q* || p(zeta | z)) of the best mean-field q*, known
    in closed form for a linear-Gaussian prior: with the posterior precision M = I + W^T W / s^2,
    q* has the exact mean and variances 1 / M_ii, and the gap is (sum_i log M_ii - log det M) / 2 at
    every z. A larger K then tightens it further, and no K goes above log p(z)."""
    torch.manual_seed(8)
    W = torch.tensor([[1.0, 0.9], [0.8, 1.0], [0.5, 0.7]], dtype=F64)  # correlated columns
    b, s = torch.tensor([0.5, -1.0, 0.2], dtype=F64), 0.5
    marginal = dist.MultivariateNormal(b, covariance_matrix=W @ W.T + s**2 * torch.eye(D, dtype=F64))
    M = torch.eye(d, dtype=F64) + W.T @ W / s**2
    mean_field_gap = 0.5 * float(M.diagonal().log().sum() - torch.logdet(M))
    assert mean_field_gap > 0.5  # a posterior far from factorised
    A = torch.zeros(D, d, dtype=F64, requires_grad=True)
    log_scale = torch.zeros(d, dtype=F64, requires_grad=True)

    def amortised(v: torch.Tensor) -> dist.Distribution:
        return dist.Normal((v - b) @ A, log_scale.exp()).to_event(1)

    zeta_prior = dist.Normal(torch.zeros(d, dtype=F64), 1.0).to_event(1)
    def conditional(zeta: torch.Tensor) -> dist.Distribution:
        return dist.Normal(zeta @ W.T + b, s).to_event(1)

    prior = HierarchicalPrior(conditional, amortised, zeta_prior, D)
    opt = torch.optim.Adam([A, log_scale], lr=0.05)
    decay = torch.optim.lr_scheduler.StepLR(opt, step_size=300, gamma=0.1)
    for _ in range(600):
        loss = -prior.log_prob(marginal.sample((256,))).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        decay.step()
    torch.testing.assert_close(A.detach(), W @ torch.linalg.inv(M) / s**2, atol=0.03, rtol=0)
    torch.testing.assert_close(log_scale.detach().exp(), M.diagonal().rsqrt(), atol=0, rtol=0.05)
    z = marginal.sample((20,))
    exact = float(marginal.log_prob(z).mean())
    gap1, se1 = _gap_and_se(prior, z, exact, R=400)
    assert abs(gap1 - mean_field_gap) < 3 * se1 + 0.01, (gap1, mean_field_gap, se1)
    gap16, se16 = _gap_and_se(prior.with_num_samples(16), z, exact, R=400)
    assert -3 * se16 < gap16 < gap1 - 3 * math.hypot(se1, se16), (gap1, gap16)
