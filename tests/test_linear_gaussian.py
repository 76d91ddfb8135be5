"""Ground-truth linear-Gaussian models: exact marginals and posteriors checked by Bayes' rule."""

import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import pytest
import torch

from pyro_spvae.guides import (
    GlobalOffsetPPCAGuide,
    GlobalOffsetPPCAPosteriorGuide,
    LinearGaussianGuide,
    LinearGaussianPosteriorGuide,
    MixtureOfPPCAGuide,
    MixtureOfPPCAPosteriorGuide,
)
from pyro_spvae.models import GlobalOffsetPPCA, LinearGaussianVAE, MixtureOfPPCA
from pyro_spvae.zoo import MODELS

F64 = torch.float64


def _mvn(loc, cov):
    return dist.MultivariateNormal(loc, covariance_matrix=cov)


def test_ppca_bayes_identity():
    """log p(x) = log p(z) + log p(x|z) - log p(z|x) for arbitrary z checks marginal and posterior."""
    m = LinearGaussianVAE(5, 3, dtype=F64)
    x = torch.randn(6, 5, dtype=F64)
    loc, cov = m.exact_posterior(x)
    for _ in range(3):
        z = torch.randn(6, 3, dtype=F64)
        lik = dist.Normal(z @ m.W.T + m.b, m.noise_scale).log_prob(x).sum(-1)
        prior = dist.Normal(0.0, 1.0).log_prob(z).sum(-1)
        rhs = prior + lik - _mvn(loc, cov).log_prob(z)
        torch.testing.assert_close(rhs, m.exact_log_prob(x), rtol=0, atol=1e-10)


def test_mixture_bayes_identity():
    m = MixtureOfPPCA(3, 4, 2, dtype=F64)
    x = torch.randn(5, 4, dtype=F64)
    probs, loc, cov = m.exact_posterior(x)
    log_pi = torch.log_softmax(m.logits, -1)
    for c in range(3):
        z = torch.randn(5, 2, dtype=F64)
        lik = dist.Normal(z @ m.W[c].T + m.b[c], m.log_s[c].exp()).log_prob(x).sum(-1)
        joint = log_pi[c] + dist.Normal(0.0, 1.0).log_prob(z).sum(-1) + lik
        post = probs[:, c].log() + _mvn(loc[:, c], cov[c]).log_prob(z)
        torch.testing.assert_close(joint - post, m.exact_log_prob(x), rtol=0, atol=1e-10)


def test_global_model_identities():
    m = GlobalOffsetPPCA(3, 2, prior_scale=0.8, dtype=F64)
    x = torch.randn(4, 3, dtype=F64)
    t_loc, t_cov = m.exact_theta_posterior(x)
    theta = torch.randn(3, dtype=F64)
    prior = dist.Normal(torch.zeros(3, dtype=F64), 0.8).log_prob(theta).sum()
    local = m.exact_local_log_prob(x, theta)
    assert local.shape == (4,)
    lhs = prior + local.sum() - _mvn(t_loc, t_cov).log_prob(theta)
    torch.testing.assert_close(lhs, m.exact_log_prob(x), rtol=0, atol=1e-10)
    # local posterior given theta
    z_loc, z_cov = m.exact_local_posterior(x, theta)
    z = torch.randn(4, 2, dtype=F64)
    lik = dist.Normal(z @ m.W.T + m.b + theta, m.log_s.exp()).log_prob(x).sum(-1)
    rhs = dist.Normal(0.0, 1.0).log_prob(z).sum(-1) + lik - _mvn(z_loc, z_cov).log_prob(z)
    torch.testing.assert_close(rhs, local, rtol=0, atol=1e-10)
    # theta with a particle dim (S, 1, D) broadcasts against x (N, D)
    thetas = torch.randn(7, 1, 3, dtype=F64)
    assert m.exact_local_log_prob(x, thetas).shape == (7, 4)


@pytest.mark.parametrize(
    "make",
    [
        lambda: (LinearGaussianVAE(4, 2), LinearGaussianGuide(4, 2)),
        lambda: (MixtureOfPPCA(3, 4, 2), MixtureOfPPCAGuide(3, 4, 2)),
        lambda: (GlobalOffsetPPCA(4, 2), GlobalOffsetPPCAGuide(4, 2)),
    ],
)
def test_models_accept_particle_dims(make):
    model, guide = make()
    x = torch.randn(5, 4)

    def vec(fn):
        def wrapped(x):
            with pyro.plate("particles", 6, dim=-2):
                return fn(x)

        return wrapped

    guide_trace = poutine.trace(vec(guide)).get_trace(x)
    model_trace = poutine.trace(poutine.replay(vec(model), trace=guide_trace)).get_trace(x)
    model_trace.compute_log_prob()
    assert model_trace.nodes["x"]["log_prob"].shape == (6, 5)
    assert model_trace.nodes["z"]["value"].shape == (6, 5, 2)


def test_posterior_guides_sample_exact_posterior_moments():
    m = LinearGaussianVAE(3, 2, dtype=F64)
    x = torch.randn(2, 3, dtype=F64)
    g = LinearGaussianPosteriorGuide(m)
    with pyro.plate("particles", 20000, dim=-2):
        z = poutine.trace(g).get_trace(x).nodes["z"]["value"]
    loc, cov = m.exact_posterior(x)
    se = cov.diagonal().sqrt() / 20000**0.5
    assert ((z.mean(0) - loc).abs() < 5 * se).all()
    emp = torch.cov(z[:, 0].T)
    torch.testing.assert_close(emp, cov, atol=0.05 * cov.abs().max().item(), rtol=0)


def test_mixture_model_enumerates():
    """The mixture model works with TraceEnum_ELBO (c enumerated) and the ELBO is below log p(x)."""
    m = MixtureOfPPCA(2, 3, 1, dtype=F64)
    x = torch.randn(4, 3, dtype=F64)
    guide = LinearGaussianGuide(3, 1, dtype=F64)
    elbo = pyro.infer.TraceEnum_ELBO(max_plate_nesting=1, num_particles=200, vectorize_particles=True)
    with torch.no_grad():
        est = -elbo.loss(pyro.infer.config_enumerate(m), guide, x)
    assert est < m.exact_log_prob(x).sum().item()


def test_validation_errors():
    m = LinearGaussianVAE(4, 2)
    with pytest.raises(ValueError, match="shape"):
        m(torch.randn(3, 5))
    with pytest.raises(ValueError, match="NaN"):
        m(torch.full((3, 4), float("nan")))
    with pytest.raises(ValueError, match="floating"):
        m(torch.ones(3, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="z_dim"):
        LinearGaussianVAE(4, 0)
    with pytest.raises(ValueError, match="noise_scale"):
        LinearGaussianVAE(4, 2, noise_scale=-1.0)
    with pytest.raises(ValueError, match="num_components"):
        MixtureOfPPCA(0, 4, 2)
    with pytest.raises(ValueError, match="prior_scale"):
        GlobalOffsetPPCA(4, 2, prior_scale=0.0)
    with pytest.raises(TypeError, match="LinearGaussianVAE"):
        LinearGaussianPosteriorGuide(MixtureOfPPCA(2, 4, 2))
    with pytest.raises(ValueError, match="scale_factor"):
        LinearGaussianPosteriorGuide(m, scale_factor=0.0)
    with pytest.raises(ValueError, match="theta_scale"):
        GlobalOffsetPPCAPosteriorGuide(GlobalOffsetPPCA(4, 2), theta_scale=-1.0)
    with pytest.raises(TypeError):
        MixtureOfPPCAPosteriorGuide(m)


@pytest.mark.parametrize(
    "bad, exc, match",
    [
        ([[0.0] * 4], TypeError, "torch.Tensor"),
        (torch.full((3, 4), float("inf")), ValueError, "infinite"),
        (torch.zeros(0, 4), ValueError, "empty batch"),
        (torch.zeros(3, 4, dtype=torch.float64), ValueError, "dtype"),
        (torch.zeros(2, 3, 4), ValueError, "shape"),
    ],
)
def test_bad_x_is_rejected_by_models_and_guides(bad, exc, match):
    model = GlobalOffsetPPCA(4, 2)
    fns = (LinearGaussianVAE(4, 2), LinearGaussianGuide(4, 2), model, GlobalOffsetPPCAPosteriorGuide(model))
    for fn in fns:
        with pytest.raises(exc, match=match):
            fn(bad)


def test_bad_hyperparameter_types_name_the_argument():
    with pytest.raises(TypeError, match="z_dim"):
        LinearGaussianVAE(4, 2.0)
    with pytest.raises(TypeError, match="noise_scale"):
        LinearGaussianVAE(4, 2, noise_scale=None)
    with pytest.raises(TypeError, match="event_shape"):
        MODELS["linear_gaussian"](None)


def test_registry_builder():
    model, guide = MODELS["linear_gaussian"]((6,), z_dim=3)
    assert isinstance(model, LinearGaussianVAE) and isinstance(guide, LinearGaussianGuide)
    x = torch.randn(2, 6)
    elbo = pyro.infer.Trace_ELBO()
    assert torch.isfinite(torch.tensor(elbo.loss(model, guide, x)))
    with pytest.raises(ValueError, match="flat vectors"):
        MODELS["linear_gaussian"]((1, 28, 28))
