"""log_marginal_likelihood and to_inference_data against exact linear-Gaussian log-likelihoods."""

import math

import numpy as np
import pytest
import torch

from pyro_spvae.guides import (
    GlobalOffsetPPCAPosteriorGuide,
    LinearGaussianGuide,
    LinearGaussianPosteriorGuide,
    MixtureOfPPCAGuide,
    MixtureOfPPCAPosteriorGuide,
)
from pyro_spvae.infer import log_marginal_likelihood, psis_khat, to_inference_data
from pyro_spvae.models import GlobalOffsetPPCA, LinearGaussianVAE, MixtureOfPPCA

F64 = torch.float64


def _lml(model, guide, x, **kw):
    kw.setdefault("progress", False)
    return log_marginal_likelihood(model, guide, x, **kw)


def test_exact_posterior_gives_exact_log_likelihood():
    model = LinearGaussianVAE(4, 2)
    x = torch.randn(7, 4)
    res = _lml(model, LinearGaussianPosteriorGuide(model), x, num_samples=230, chunk_size=64, batch_size=3)
    truth = model.exact_log_prob(x).detach().double()
    torch.testing.assert_close(res.log_px, truth, rtol=0, atol=1e-4)
    torch.testing.assert_close(res.ess, torch.full((7,), 230.0, dtype=F64), rtol=1e-4, atol=0)
    assert res.nats == pytest.approx(-truth.mean().item(), abs=1e-4)
    assert res.bits_per_dim == pytest.approx(res.nats / (4 * math.log(2)))
    assert res.event_dim == 4 and res.num_samples == 230
    assert (res.khat < 0.5).all() and not res.unreliable.any()


def test_exact_posterior_mixture():
    model = MixtureOfPPCA(3, 4, 2, dtype=F64)
    x = 2 * torch.randn(5, 4, dtype=F64)
    res = _lml(model, MixtureOfPPCAPosteriorGuide(model), x, num_samples=100, chunk_size=40)
    torch.testing.assert_close(res.log_px, model.exact_log_prob(x).detach(), rtol=0, atol=1e-8)


def test_poor_guide_below_truth_and_converges():
    model = LinearGaussianVAE(4, 2, dtype=F64)
    guide = LinearGaussianGuide(4, 2, dtype=F64)
    x = 1.5 * torch.randn(8, 4, dtype=F64)
    truth = model.exact_log_prob(x).detach()
    small = torch.stack([_lml(model, guide, x, num_samples=5, psis=False).log_px for _ in range(20)])
    big = torch.stack([_lml(model, guide, x, num_samples=2000, chunk_size=500).log_px for _ in range(3)])
    gap_small = (truth - small).mean(0)
    gap_big = (truth - big).mean(0)
    se_small = (truth - small).std(0) / math.sqrt(20)
    # E log (1/S) sum w <= log p(x): a clear gap with S = 5 ...
    assert (gap_small.mean() > 3 * se_small.pow(2).mean().sqrt() / math.sqrt(8)).item()
    # ... which shrinks with S = 2000
    assert gap_big.mean() < gap_small.mean() / 3
    assert gap_big.mean() > -0.05


def test_mixture_poor_guide_below_truth():
    model = MixtureOfPPCA(3, 4, 2, dtype=F64)
    x = 2 * torch.randn(6, 4, dtype=F64)
    guide = MixtureOfPPCAGuide(3, 4, 2, dtype=F64)
    truth = model.exact_log_prob(x).detach()
    vals = torch.stack([_lml(model, guide, x, num_samples=20, psis=False).log_px for _ in range(15)])
    gap = (truth - vals).mean(0)
    se = (truth - vals).std(0) / math.sqrt(15)
    assert (gap > -3 * se).all()
    assert gap.sum() > 3 * se.pow(2).sum().sqrt()


def test_chunking_is_exact_given_the_weights():
    """Running log-sum-exp over chunks equals the one-shot value over the kept log-weights, for
    several chunk and batch sizes; ESS matches its definition."""
    model = LinearGaussianVAE(4, 2, dtype=F64)
    guide = LinearGaussianGuide(4, 2, dtype=F64)
    x = torch.randn(5, 4, dtype=F64)
    for chunk, batch in [(1, 5), (7, 2), (64, 3), (300, 5)]:
        res = _lml(
            model, guide, x, num_samples=300, chunk_size=chunk, batch_size=batch, keep_log_weights=True
        )
        lw = res.log_weights.double()
        assert lw.shape == (5, 300)
        torch.testing.assert_close(res.log_px, torch.logsumexp(lw, -1) - math.log(300), rtol=0, atol=1e-5)
        ess = torch.exp(2 * torch.logsumexp(lw, -1) - torch.logsumexp(2 * lw, -1))
        torch.testing.assert_close(res.ess, ess, rtol=1e-4, atol=0)
        np.testing.assert_allclose(res.khat.numpy(), psis_khat(lw.numpy()), atol=1e-3)


def test_same_draws_same_result_across_chunk_sizes():
    """With the exact posterior the weights are the same for every draw; with a poor guide and the
    same seed, different chunkings agree within Monte-Carlo error."""
    model = LinearGaussianVAE(3, 1, dtype=F64)
    x = torch.randn(4, 3, dtype=F64)
    exact = LinearGaussianPosteriorGuide(model)
    a = _lml(model, exact, x, num_samples=256, chunk_size=256).log_px
    b = _lml(model, exact, x, num_samples=256, chunk_size=16).log_px
    torch.testing.assert_close(a, b, rtol=0, atol=1e-10)
    guide = LinearGaussianGuide(3, 1, init_scale=2.0, dtype=F64)
    runs = {
        c: torch.stack([_lml(model, guide, x, num_samples=400, chunk_size=c).log_px for _ in range(4)])
        for c in (400, 25)
    }
    diff = runs[400].mean(0) - runs[25].mean(0)
    se = torch.sqrt(runs[400].var(0) / 4 + runs[25].var(0) / 4)
    assert (diff.abs() < 5 * se + 1e-3).all()


def test_khat_flags_bad_guides():
    model = LinearGaussianVAE(4, 2)
    x = torch.randn(6, 4)
    good = _lml(model, LinearGaussianPosteriorGuide(model, scale_factor=1.3), x, num_samples=2000)
    assert (good.khat < 0.5).all(), good.khat
    assert (good.ess > 1000).all()
    narrow = _lml(model, LinearGaussianPosteriorGuide(model, scale_factor=0.3), x, num_samples=2000)
    assert (narrow.khat > 0.7).all(), narrow.khat
    assert narrow.unreliable.all()
    assert (narrow.ess < good.ess).all()


def test_global_latent_per_example_marginal():
    """Globals drawn per particle: the estimate is of the per-example marginal
    log int p(theta) p(x_i | theta) d theta = log N(x_i; b, C + tau^2 I)."""
    model = GlobalOffsetPPCA(3, 2, prior_scale=0.5, dtype=F64)
    guide = GlobalOffsetPPCAPosteriorGuide(model, exact_theta=False, theta_scale=0.5)  # q(theta) = prior
    x = torch.randn(4, 3, dtype=F64)
    res = _lml(model, guide, x, num_samples=4000, chunk_size=1000)
    cov = model._local_cov() + 0.25 * torch.eye(3, dtype=F64)
    truth = torch.distributions.MultivariateNormal(model.b, covariance_matrix=cov).log_prob(x).detach()
    # relative standard error of the mean weight ~ 1/sqrt(ESS)
    tol = 4 / res.ess.sqrt()
    assert ((res.log_px - truth).abs() < tol).all(), (res.log_px, truth, tol)


def test_bad_arguments():
    model = LinearGaussianVAE(4, 2)
    guide = LinearGaussianGuide(4, 2)
    x = torch.randn(3, 4)
    with pytest.raises(ValueError, match="num_samples"):
        _lml(model, guide, x, num_samples=0)
    with pytest.raises(ValueError, match="chunk_size"):
        _lml(model, guide, x, chunk_size=-1)
    with pytest.raises(ValueError, match="batch_size"):
        _lml(model, guide, x, batch_size=1.5)
    with pytest.raises(ValueError, match="x must be"):
        _lml(model, guide, torch.zeros(0, 4))
    with pytest.raises(ValueError, match="shape"):
        _lml(model, guide, torch.randn(3, 5))
    with pytest.raises(ValueError, match=r"\(N, S\)"):
        psis_khat(np.zeros(5))


def test_progress_bar_runs(capsys):
    model = LinearGaussianVAE(4, 2)
    _lml(model, LinearGaussianGuide(4, 2), torch.randn(3, 4), num_samples=20, chunk_size=10, progress=True)
    assert "log p(x)" in capsys.readouterr().err


def test_to_inference_data():
    from pyro_spvae.infer.log_likelihood import _import_arviz

    az = _import_arviz()
    model = GlobalOffsetPPCA(3, 2)
    guide = GlobalOffsetPPCAPosteriorGuide(model)
    x = torch.randn(4, 3)
    idata = to_inference_data(model, guide, x, num_samples=150, chunk_size=64)
    assert idata.posterior["theta"].shape == (1, 150, 3)
    assert idata.posterior["z"].shape == (1, 150, 4, 2)
    assert idata.sample_stats["log_weight"].shape == (1, 150, 4)
    assert idata.log_likelihood["x"].shape == (1, 150, 4)
    assert idata.observed_data["x"].shape == (4, 3)
    np.testing.assert_allclose(idata.sample_stats["weight"].sum("draw").values, 1.0, rtol=1e-6)
    summary = az.summary(idata, var_names=["theta"], kind="stats")
    assert list(summary.index) == ["theta[0]", "theta[1]", "theta[2]"]
    # posterior mean of theta matches the exact posterior (the guide is exact)
    loc, cov = model.exact_theta_posterior(x)
    se = cov.diagonal().sqrt() / math.sqrt(150)
    assert (torch.tensor(summary["mean"].values) - loc.detach()).abs().lt(5 * se + 0.01).all()
    # log p(x_i) from the weights: per-example marginal of a model whose theta proposal is p(theta|x)
    assert np.isfinite(idata.attrs["log_px"]).all() and len(idata.attrs["khat"]) == 4

    lg = LinearGaussianVAE(4, 2)
    xs = torch.randn(3, 4)
    idata = to_inference_data(lg, LinearGaussianPosteriorGuide(lg), xs, num_samples=50)
    np.testing.assert_allclose(idata.attrs["log_px"], lg.exact_log_prob(xs).detach().numpy(), atol=1e-4)
    with pytest.raises(ValueError, match="num_samples"):
        to_inference_data(lg, LinearGaussianGuide(4, 2), xs, num_samples=0)
