"""log_marginal_likelihood and to_inference_data against exact linear-Gaussian log-likelihoods."""

import math
import warnings

import numpy as np
import pyro
import pyro.distributions as dist
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
from pyro_spvae.infer.arviz import _import_arviz
from pyro_spvae.infer.importance import _site_log_prob
from pyro_spvae.infer.log_likelihood import PASS_BUDGET_BYTES, pass_budget, pass_shape
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
    with pytest.raises(TypeError, match="batch_size"):  # a wrong type (pyro_spvae.validation)
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


# --- the evaluator of issue 11: same numbers as before, automatic pass shape, vectorised PSIS ----------
# Self-contained models (plain Pyro functions, fixed parameters) so that the reference numbers below
# do not depend on the package's model classes.
_W = torch.tensor([[1.0, -0.5], [0.3, 0.8], [-0.7, 0.2], [0.5, 0.5]], dtype=F64)
_B0 = torch.tensor([0.1, -0.2, 0.3, 0.0], dtype=F64)


def _bernoulli_model(x):
    with pyro.plate("data", x.shape[0]):
        z = pyro.sample("z", dist.Normal(torch.zeros(2, dtype=F64), 1.0).to_event(1))
        pyro.sample("x", dist.Bernoulli(logits=z @ _W.T + _B0).to_event(1), obs=x)


def _gaussian_model(x):
    with pyro.plate("data", x.shape[0]):
        z = pyro.sample("z", dist.Normal(torch.zeros(2, dtype=F64), 1.0).to_event(1))
        pyro.sample("x", dist.Normal(z @ _W.T + _B0, 0.7).to_event(1), obs=x)


def _proposal(x):
    with pyro.plate("data", x.shape[0]):
        pyro.sample("z", dist.Normal(0.5 * (x - 0.5) @ _W, 0.9).to_event(1))


def _reference_data():
    g = torch.Generator().manual_seed(5)
    xb = torch.bernoulli(torch.full((6, 4), 0.5, dtype=F64), generator=g)
    xg = 1.5 * torch.randn(6, 4, generator=g, dtype=F64)
    return {"bernoulli": (_bernoulli_model, xb), "gaussian": (_gaussian_model, xg)}


# Produced by the evaluator before issue 11 (defaults chunk_size=500, batch_size=100, PSIS through
# arviz.psislw; torch 2.13, pyro 1.9.2) with torch.manual_seed(0) and num_samples=3000.
_BEFORE = {
    "bernoulli": {
        "log_px": [-2.612814409108, -2.631794045719, -2.62208565453, -2.616380963557, -3.055440894388,
                   -2.609090091149],
        "ess": [2652.094598944, 2697.814532213, 2627.00969596, 2639.161778869, 2862.139561357,
                2619.336058863],
        "khat": [0.052275571, -0.13576591, -0.107157561, 0.153523495, 0.255124144, 0.205285996],
    },
    "gaussian": {
        "log_px": [-5.343500805771, -12.9125338429, -8.759648166206, -5.909964559207, -4.565538636377,
                   -5.387818796699],
        "ess": [1281.660464664, 1360.797181855, 1365.874781477, 1202.923830297, 1398.758127164,
                1439.532161778],
        "khat": [-0.975820595, -0.794155951, -0.831141417, -0.87188572, -0.759268656, -0.740142805],
    },
}


@pytest.mark.parametrize("name", ["bernoulli", "gaussian"])
def test_same_estimates_as_before(name):
    """The previous pass shape draws the same weights and gives the same numbers (the fused
    log-densities and the vectorised PSIS change no digit that matters); the automatic pass shape,
    on other draws, agrees within Monte Carlo error."""
    model, x = _reference_data()[name]
    ref = {k: torch.tensor(v, dtype=F64) for k, v in _BEFORE[name].items()}
    torch.manual_seed(0)
    res = _lml(model, _proposal, x, num_samples=3000, chunk_size=500, batch_size=100)
    torch.testing.assert_close(res.log_px, ref["log_px"], rtol=0, atol=1e-10)
    torch.testing.assert_close(res.ess, ref["ess"], rtol=1e-10, atol=0)
    torch.testing.assert_close(res.khat, ref["khat"], rtol=0, atol=1e-6)
    torch.manual_seed(1)  # other draws
    auto = _lml(model, _proposal, x, num_samples=3000)
    # the standard error of log mean_s w_s is about 1 / sqrt(ESS)
    tol = 5 * torch.sqrt(1 / auto.ess + 1 / ref["ess"])
    assert ((auto.log_px - ref["log_px"]).abs() < tol).all(), (auto.log_px, ref["log_px"], tol)
    assert (auto.log_px != ref["log_px"]).all()
    if name == "gaussian":
        cov = _W @ _W.T + 0.49 * torch.eye(4, dtype=F64)
        truth = torch.distributions.MultivariateNormal(_B0, cov).log_prob(x)
        assert ((auto.log_px - truth).abs() < 5 / auto.ess.sqrt()).all()


def test_automatic_pass_shape_splits_examples_and_keeps_estimates(monkeypatch):
    """With a budget of a few rows per pass the examples are split into several passes; every
    example still gets its own S particles (ESS in [1, S]) and the estimates agree with one big pass
    within Monte Carlo error."""
    model, x = _reference_data()["gaussian"]
    torch.manual_seed(2)
    one = _lml(model, _proposal, x, num_samples=600)
    monkeypatch.setitem(PASS_BUDGET_BYTES, "cpu", 150 * 4 * 8)  # 150 rows of 4 float64 values
    assert pass_shape(6, 600, 4 * 8, max_examples=100, budget=pass_budget("cpu")) == (150, 1)
    split = _lml(model, _proposal, x, num_samples=600, keep_log_weights=True)
    assert split.log_weights.shape == (6, 600) and (split.ess <= 600).all()
    torch.testing.assert_close(split.log_px, torch.logsumexp(split.log_weights.double(), -1) - math.log(600),
                               rtol=0, atol=1e-5)
    assert ((split.log_px - one.log_px).abs() < 5 * torch.sqrt(1 / split.ess + 1 / one.ess)).all()


def test_pass_shape_rule():
    mib = 2**20
    # the documented example: 200 MNIST images, 5000 samples, float32, 12 MiB
    assert pass_shape(200, 5000, 784 * 4, max_examples=100, budget=12 * mib) == (1000, 4)
    assert pass_budget("cpu") == 12 * mib and pass_budget(torch.device("cpu")) == 12 * mib
    assert pass_shape(6, 50, 8, max_examples=100, budget=12 * mib) == (50, 6)  # everything in one pass
    assert pass_shape(3, 10, 10**9, max_examples=4, budget=mib) == (1, 1)  # one row is over budget
    # against brute force: fewest passes within the budget, ties to the larger chunk, chunks evened out
    for n, s, rows, most in [(7, 13, 5, 3), (10, 40, 12, 10), (5, 9, 100, 2), (12, 30, 7, 12)]:
        chunk, per_pass = pass_shape(n, s, 16, max_examples=most, budget=16 * rows)
        assert chunk * per_pass <= rows and per_pass <= min(n, most) and chunk <= s
        passes = math.ceil(n / per_pass) * math.ceil(s / chunk)
        best = min(math.ceil(n / b) * math.ceil(s / k) for k in range(1, s + 1)
                   for b in range(1, min(n, most) + 1) if k * b <= rows)
        assert passes == best
        assert chunk == math.ceil(s / math.ceil(s / chunk))


def _arviz_khat(lw: np.ndarray) -> np.ndarray:
    az = _import_arviz()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _, k = az.psislw(lw - lw.max(-1, keepdims=True))
    return np.asarray(k, dtype=np.float64).reshape(-1)


def test_psis_khat_matches_arviz():
    """The vectorised k-hat equals arviz.psislw's on random weights (light and heavy tails, ties,
    -inf weights, tails of 4 values or fewer)."""
    rng = np.random.default_rng(0)
    cases = [
        rng.normal(size=(20, 5000)) * 2,
        np.log(np.abs(rng.standard_t(1.5, size=(20, 3000)))),
        rng.exponential(size=(10, 2000)) * 5,
        np.round(rng.normal(size=(10, 1000)), 1),
        np.where(rng.random((10, 500)) < 0.3, -np.inf, rng.normal(size=(10, 500))),
        rng.normal(size=(10, 30)) * 3,
        rng.normal(size=(5, 10)),  # tail of 2 values: k-hat = inf
    ]
    for lw in cases:
        ours = psis_khat(lw)
        ref = _arviz_khat(lw)
        np.testing.assert_array_equal(np.isinf(ours), np.isinf(ref))
        np.testing.assert_allclose(ours[np.isfinite(ref)], ref[np.isfinite(ref)], rtol=0, atol=1e-6)
    np.testing.assert_array_equal(psis_khat(np.zeros((3, 100))), 0.0)  # constant weights


def test_fused_log_probs_equal_torch():
    """The evaluator's fused Bernoulli and Normal log-densities give torch's numbers exactly, on
    parameters broadcast by a particle plate; with gradients or validation torch's own path runs."""
    g = torch.Generator().manual_seed(0)
    for dtype in (torch.float32, F64):
        logits = torch.randn(4, 1, 3, 5, generator=g, dtype=dtype).expand(7, 4, 1, 3, 5)
        x = torch.bernoulli(torch.full((4, 1, 3, 5), 0.5, dtype=dtype), generator=g)
        loc = torch.randn(4, 6, generator=g, dtype=dtype)
        scale = torch.rand(4, 6, generator=g, dtype=dtype) + 0.1
        z = torch.randn(7, 4, 6, generator=g, dtype=dtype)
        zero = torch.zeros((), dtype=dtype)
        cases = [
            (dist.Bernoulli(logits=logits, validate_args=False).to_event(3), x),
            (dist.Bernoulli(logits=logits, validate_args=False), x),
            (dist.Normal(loc, scale, validate_args=False).to_event(1).expand([7, 4]), z),
            (dist.Normal(zero, zero + 1, validate_args=False).expand([6]).to_event(1).expand([7, 4]), z),
            (dist.Normal(loc, scale, validate_args=False).expand([7, 4, 6]), z),
        ]
        with torch.no_grad():
            for fn, value in cases:
                assert torch.equal(_site_log_prob(fn, value, (), {}), fn.log_prob(value))
    with pytest.raises(ValueError):  # validation on: torch's path checks the support
        checked = dist.Bernoulli(logits=torch.zeros(3), validate_args=True)
        _site_log_prob(checked, torch.full((3,), 0.5), (), {})


def test_data_validated_once_and_user_setting_restored():
    """The draws run with Pyro's validation off, but every example is validated first: data outside
    the likelihood's support still raise, and the user's validation setting is restored."""
    model, x = _reference_data()["bernoulli"]
    bad = x.clone()
    bad[5, 2] = 0.5
    with pytest.raises(ValueError):
        _lml(model, _proposal, bad, num_samples=20, batch_size=4)
    assert pyro.distributions.is_validation_enabled() and pyro.poutine.is_validation_enabled()
    with pyro.validation_enabled(False):
        _lml(model, _proposal, x, num_samples=20)
        assert not pyro.distributions.is_validation_enabled()
    assert pyro.distributions.is_validation_enabled()
