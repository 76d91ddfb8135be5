"""Tests for pyro_spvae.models.VAE, pyro_spvae.guides.GaussianGuide and the model registry."""

import math

import pyro
import pytest
import torch
from pyro.infer import SVI, RenyiELBO, Trace_ELBO, TraceMeanField_ELBO
from pyro.optim import Adam

from pyro_spvae.guides import GaussianGuide
from pyro_spvae.models import VAE
from pyro_spvae.zoo import MODELS, build_vae

DT = torch.float64


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """These networks are tiny: intra-op threads only add synchronisation cost (and thrash badly
    when the 2 CI cores are shared), so run this module single-threaded."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _binary_data(n=32, shape=(1, 7, 7), seed=0):
    """Noisy copies of two binary prototypes: learnable structure for a few SVI steps."""
    g = torch.Generator().manual_seed(seed)
    protos = torch.bernoulli(torch.full((2, *shape), 0.5), generator=g)
    idx = torch.randint(0, 2, (n,), generator=g)
    flips = torch.bernoulli(torch.full((n, *shape), 0.05), generator=g)
    return (protos[idx] - flips).abs()


ELBOS = {
    "trace": lambda: Trace_ELBO(),
    "meanfield": lambda: TraceMeanField_ELBO(),
    "renyi0": lambda: RenyiELBO(alpha=0, num_particles=3),
    "vectorized": lambda: Trace_ELBO(num_particles=4, vectorize_particles=True, max_plate_nesting=1),
}


@pytest.mark.parametrize("arch", ["dense", "conv"])
@pytest.mark.parametrize("elbo", list(ELBOS))
def test_svi_trains(arch, elbo):
    pyro.set_rng_seed(0)
    x = _binary_data()
    model, guide = build_vae((1, 7, 7), z_dim=4, hidden=(32,), arch=arch, channels=(8, 16))
    svi = SVI(model, guide, Adam({"lr": 1e-2}), ELBOS[elbo]())
    losses = [svi.step(x) for _ in range(40)]
    assert all(math.isfinite(v) for v in losses)
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < first - 0.1 * abs(first), (first, last)


def test_svi_conv_mnist_size():
    pyro.set_rng_seed(0)
    x = _binary_data(n=8, shape=(1, 28, 28))
    model, guide = build_vae((1, 28, 28), z_dim=4, hidden=(), arch="conv", channels=(4, 8))
    svi = SVI(model, guide, Adam({"lr": 1e-2}), Trace_ELBO(num_particles=2, vectorize_particles=True,
                                                           max_plate_nesting=1))
    losses = [svi.step(x) for _ in range(10)]
    assert all(math.isfinite(v) for v in losses) and losses[-1] < losses[0]


@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian", "binomial", "logistic", "categorical"])
def test_every_likelihood_trains(likelihood):
    pyro.set_rng_seed(0)
    x = _binary_data(n=16, shape=(1, 4, 4))
    if likelihood in ("binomial", "logistic", "categorical"):
        x = (x * 200 + torch.randint(0, 50, x.shape)).round() / 255  # 8-bit grid values
    kwargs = {"scale": "predicted"} if likelihood == "gaussian" else None
    model, guide = build_vae((1, 4, 4), z_dim=2, hidden=(16,), likelihood=likelihood,
                             likelihood_kwargs=kwargs)
    svi = SVI(model, guide, Adam({"lr": 1e-2}), Trace_ELBO(num_particles=2, vectorize_particles=True,
                                                           max_plate_nesting=1))
    losses = [svi.step(x) for _ in range(25)]
    assert all(math.isfinite(v) for v in losses)
    assert sum(losses[-5:]) < sum(losses[:5])
    samples = model.sample(3, mean=False)
    assert samples.shape == (3, 1, 4, 4)
    model.likelihood.validate(samples)  # samples lie in the likelihood's support


def test_gaussian_global_precision_is_learnt():
    pyro.set_rng_seed(0)
    x = torch.rand(16, 1, 3, 3) * 0.1 + 0.45
    model, guide = build_vae((1, 3, 3), z_dim=2, hidden=(8,), likelihood="gaussian")
    before = model.likelihood.log_precision.detach().clone()
    svi = SVI(model, guide, Adam({"lr": 5e-2}), Trace_ELBO())
    for _ in range(30):
        svi.step(x)
    assert "likelihood$$$log_precision" in pyro.get_param_store()
    # data with small spread: the learnt precision must grow
    assert (model.likelihood.log_precision.detach() > before + 0.5).all()


# ----------------------------------------------------------------------------- exact ELBO
def _ppca_vae(D=4, d=2, s=0.7, seed=0):
    """A dense VAE with a linear decoder (pPCA, docs/ground_truth.md) and a guide set to the exact posterior.

    With orthogonal columns of W the posterior N(Sigma W^T (x - b) / s^2, Sigma),
    Sigma = (I + W^T W / s^2)^{-1}, is diagonal with a linear mean: the linear Gaussian guide
    represents it exactly, so log p(x, z) - log q(z | x) = log p(x) for every z.
    """
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(D, d, dtype=DT, generator=g))
    W = q * torch.tensor([1.5, 0.6], dtype=DT)
    b = torch.randn(D, dtype=DT, generator=g)
    model = VAE((D,), z_dim=d, hidden=(), likelihood="gaussian", likelihood_kwargs={"min_scale": 0.0}).to(DT)
    guide = GaussianGuide((D,), z_dim=d, hidden=(), min_scale=0.0).to(DT)
    Sigma_diag = 1 / (1 + (W * W).sum(0) / s**2)
    A = Sigma_diag[:, None] * W.T / s**2
    with torch.no_grad():
        lin = model.decoder.mlp.layers[0]
        lin.weight.copy_(W)
        lin.bias.copy_(b)
        model.likelihood.log_precision.fill_(-2 * math.log(s))
        enc = guide.encoder.mlp.layers[0]
        enc.weight.zero_()
        enc.weight[:d] = A
        enc.bias[:d] = -A @ b
        enc.bias[d:] = torch.log(torch.expm1(Sigma_diag.sqrt()))  # softplus^{-1}(posterior sd)
    cov = W @ W.T + s**2 * torch.eye(D, dtype=DT)
    marginal = torch.distributions.MultivariateNormal(b, cov)
    return model, guide, W, b, s, marginal


@pytest.mark.parametrize("elbo", ["trace", "renyi0", "vectorized"])
def test_elbo_at_exact_posterior_equals_log_marginal(elbo):
    pyro.set_rng_seed(0)
    model, guide, W, b, s, marginal = _ppca_vae()
    x = marginal.sample((5,))
    exact = marginal.log_prob(x).sum().item()
    loss = ELBOS[elbo]().loss(model, guide, x)
    assert loss == pytest.approx(-exact, rel=1e-10, abs=1e-9)


def test_meanfield_elbo_matches_analytic_value():
    """TraceMeanField_ELBO (analytic KL) against the closed-form ELBO of a linear-Gaussian VAE
    with an arbitrary (not optimal) linear guide."""
    pyro.set_rng_seed(0)
    model, guide, W, b, s, marginal = _ppca_vae()
    with torch.no_grad():
        guide.encoder.mlp.layers[0].weight.add_(0.3)
        guide.encoder.mlp.layers[0].bias.add_(-0.2)
    x = marginal.sample((3,))
    loc, scale = guide.encode(x)
    resid = x - loc @ W.T - b
    D = x.shape[-1]
    exp_loglik = (-0.5 * D * math.log(2 * math.pi * s**2)
                  - ((resid**2).sum(-1) + (scale**2 @ (W**2).T).sum(-1)) / (2 * s**2))
    kl = 0.5 * (scale**2 + loc**2 - 1 - torch.log(scale**2)).sum(-1)
    analytic = (exp_loglik - kl).sum().item()
    exact = marginal.log_prob(x).sum().item()
    assert exact - analytic > 0.5  # the guide is far enough from the posterior to matter
    estimate = -TraceMeanField_ELBO(num_particles=20000, vectorize_particles=True,
                                    max_plate_nesting=1).loss(model, guide, x)
    assert estimate == pytest.approx(analytic, abs=0.05)


# ----------------------------------------------------------------------------- helpers
def test_sample_reconstruct_decode_shapes():
    model, guide = build_vae((1, 7, 7), z_dim=3, hidden=(8,))
    imgs = model.sample(6)
    assert imgs.shape == (6, 1, 7, 7) and ((imgs >= 0) & (imgs <= 1)).all()
    hard = model.sample(6, mean=False)
    assert set(hard.unique().tolist()) <= {0.0, 1.0}
    x = _binary_data(n=5)
    rec = model.reconstruct(x, guide)
    assert rec.shape == x.shape
    px = model.decode(torch.zeros(2, 5, 3))
    assert px.batch_shape == (2, 5) and px.event_shape == (1, 7, 7)
    loc, scale = guide.encode(x)
    assert loc.shape == scale.shape == (5, 3) and (scale > 0).all()


def test_vectorized_particles_shapes():
    """Model and guide accept an extra leading particle dim (what vectorize_particles adds)."""
    model, guide = build_vae((1, 7, 7), z_dim=3, hidden=(8,), arch="conv", channels=(4,))
    x = _binary_data(n=5)
    with pyro.plate("particles", 3, dim=-2):
        guide_tr = pyro.poutine.trace(guide).get_trace(x)
        model_tr = pyro.poutine.trace(pyro.poutine.replay(model, trace=guide_tr)).get_trace(x)
    assert guide_tr.nodes["z"]["value"].shape == (3, 5, 3)
    model_tr.compute_log_prob()
    assert model_tr.nodes["x"]["log_prob"].shape == (3, 5)
    assert model_tr.nodes["z"]["log_prob"].shape == (3, 5)
    # each particle's likelihood equals the un-vectorised computation
    z = guide_tr.nodes["z"]["value"]
    torch.testing.assert_close(model_tr.nodes["x"]["log_prob"][1], model.decode(z[1]).log_prob(x))


def test_registry():
    assert MODELS["vae"] is build_vae
    model, guide = MODELS["vae"]((1, 7, 7), z_dim=2, hidden=(4,), likelihood="binomial")
    assert isinstance(model, VAE) and isinstance(guide, GaussianGuide)
    assert model.likelihood.name == "binomial"
    with pytest.raises(TypeError):
        MODELS["vae"]((1, 7, 7), zdim=2)


# ----------------------------------------------------------------------------- bad input
@pytest.fixture
def small_vae():
    return build_vae((1, 4, 4), z_dim=2, hidden=(4,), likelihood="bernoulli")


def test_bad_data_rejected(small_vae):
    model, guide = small_vae
    x = torch.bernoulli(torch.full((3, 1, 4, 4), 0.5))
    model(x)  # fine
    with pytest.raises(ValueError, match=r"shape \(3, 1, 5, 4\), expected \(B, 1, 4, 4\)"):
        model(torch.zeros(3, 1, 5, 4))
    with pytest.raises(ValueError, match=r"expected \(B, 1, 4, 4\)"):
        model(torch.zeros(1, 4, 4))
    with pytest.raises(ValueError, match="floating-point dtype"):
        model(x.long())
    with pytest.raises(ValueError, match="NaN"):
        model(torch.where(x > 0, torch.nan, x))
    with pytest.raises(ValueError, match="outside the support of the 'bernoulli' likelihood"):
        model(x * 0.5)
    with pytest.raises(TypeError, match="torch.Tensor"):
        model(x.numpy())
    with pytest.raises(ValueError, match="shape"):
        guide(torch.zeros(3, 16))
    with pytest.raises(ValueError, match="NaN"):
        guide(torch.full((3, 1, 4, 4), torch.nan))
    with pytest.raises(ValueError, match=r"z has shape \(3, 5\), expected \(\.\.\., 2\)"):
        model.decode(torch.zeros(3, 5))
    with pytest.raises(ValueError, match="outside the support"):
        model.reconstruct(x + 0.2, guide)


def test_bad_data_rejected_inside_svi(small_vae):
    model, guide = small_vae
    svi = SVI(model, guide, Adam({"lr": 1e-2}), Trace_ELBO())
    with pytest.raises(ValueError, match="outside the support"):
        svi.step(torch.full((3, 1, 4, 4), 0.3))


def test_discrete_support_enforced():
    model, _ = build_vae((1, 2, 2), z_dim=2, hidden=(), likelihood="binomial")
    model(torch.full((2, 1, 2, 2), 17 / 255))
    with pytest.raises(ValueError, match="grid k/255"):
        model(torch.full((2, 1, 2, 2), 0.3337))
    with pytest.raises(ValueError, match="grid k/255"):
        model(torch.full((2, 1, 2, 2), 1.5))


@pytest.mark.parametrize(
    "kwargs, err, match",
    [
        (dict(z_dim=0), ValueError, "z_dim"),
        (dict(z_dim=2.0), TypeError, "z_dim"),
        (dict(hidden=(8, 0)), ValueError, r"hidden\[1\]"),
        (dict(likelihood="poisson"), ValueError, "unknown likelihood 'poisson'"),
        (dict(arch="resnet"), ValueError, "unknown arch 'resnet'"),
        (dict(activation="swishy"), ValueError, "unknown activation"),
        (dict(channels=()), ValueError, "channels"),
        (dict(likelihood="gaussian", likelihood_kwargs={"scale": "bad"}), ValueError, "scale"),
        (dict(min_scale=-1.0), ValueError, "min_scale"),
    ],
)
def test_bad_hyperparameters(kwargs, err, match):
    if "channels" in kwargs:
        kwargs = dict(kwargs, arch="conv")
    with pytest.raises(err, match=match):
        build_vae((1, 4, 4), **kwargs)


def test_bad_event_shape():
    with pytest.raises(ValueError, match="event_shape"):
        VAE((1, 0, 4))
    with pytest.raises(ValueError, match=r"\(C, H, W\)"):
        VAE((16,), arch="conv")
    with pytest.raises(ValueError, match=r"\(C, H, W\)"):
        GaussianGuide((16,), arch="conv")


def test_dense_vae_on_vectors_and_float64():
    """Non-image event shapes work with arch='dense', and float64 models accept float64 data."""
    model, guide = build_vae((6,), z_dim=2, hidden=(5,), likelihood="gaussian")
    model, guide = model.to(DT), guide.to(DT)
    x = torch.randn(4, 6, dtype=DT)
    loss = Trace_ELBO().differentiable_loss(model, guide, x)
    assert loss.dtype == DT and torch.isfinite(loss)
    loss.backward()
    assert model.decoder.mlp.layers[0].weight.grad is not None


# ----------------------------------------------------------------------------- reference options
# (the SPVAE reference code's VAEs, Tan & Peharz 2019; see docs/spvae.md and the paper-* presets)
REFERENCE_GAUSSIAN = {"likelihood": "gaussian", "likelihood_kwargs": {"scale": "precision", "loc": "sigmoid"}}


def test_reference_dense_vae_has_separate_heads_and_precision_parameterisations():
    torch.manual_seed(0)
    model, guide = build_vae((1, 4, 4), z_dim=3, hidden=(5,), encoder_heads="separate",
                             decoder_heads="separate", posterior_scale="precision", init="tf1",
                             **REFERENCE_GAUSSIAN)
    mean_net, prec_net = model.decoder.nets  # one decoder per likelihood parameter
    loc_net, f_net = guide.encoder.nets  # one encoder for the mean, one for f
    # counts: two MLPs 16-5-3 (encoder) and two 3-5-16 (decoder)
    assert sum(p.numel() for p in guide.parameters()) == 2 * (16 * 5 + 5 + 5 * 3 + 3)
    assert sum(p.numel() for p in model.parameters()) == 2 * (3 * 5 + 5 + 5 * 16 + 16)
    x = torch.rand(6, 1, 4, 4)
    loc, scale = guide.encode(x)
    torch.testing.assert_close(loc, loc_net(x))
    torch.testing.assert_close(scale, torch.rsqrt(1 + f_net(x) ** 2))  # precision 1 + f^2
    z = torch.randn(2, 6, 3)
    px = model.decode(z)
    torch.testing.assert_close(px.mean, torch.sigmoid(mean_net(z)))
    torch.testing.assert_close(px.base_dist.scale, torch.rsqrt(1 + prec_net(z) ** 2))
    svi = SVI(model, guide, Adam({"lr": 1e-3}), Trace_ELBO())
    assert math.isfinite(svi.step(x))


def test_reference_conv_vae_shares_the_encoder_trunk():
    torch.manual_seed(0)
    model, guide = build_vae((1, 8, 8), z_dim=3, hidden=(6,), decoder_hidden=(), arch="conv", channels=(2, 4),
                             out_layer="deconv", posterior_scale="precision", likelihood="binomial",
                             likelihood_kwargs={"eps": 1e-7}, activation="softplus")
    assert model.decoder.mlp.hidden == () and guide.encoder.mlp.hidden == (6,)
    assert model.decoder.out_conv is None and model.decoder.output_layer.out_channels == 1
    x = torch.randint(0, 256, (5, 1, 8, 8)).float() / 255
    loc, scale = guide.encode(x)
    assert loc.shape == scale.shape == (5, 3) and bool((scale <= 1).all())
    assert torch.isfinite(model.decode(loc).log_prob(x)).all()
    with pytest.raises(ValueError, match="posterior_scale"):
        GaussianGuide((1, 8, 8), z_dim=3, posterior_scale="exp")
