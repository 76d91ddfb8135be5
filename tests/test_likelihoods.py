"""Tests for the likelihood heads (pyro_spvae.nn.likelihoods) and grid distributions."""

import itertools
import math

import numpy as np
import pytest
import torch
from scipy import integrate, special, stats

from pyro_spvae.distributions import BinomialGrid, CategoricalGrid, DiscretizedLogistic, grid_values
from pyro_spvae.nn import LIKELIHOODS, make_likelihood
from pyro_spvae.nn.likelihoods import check_observations

DT = torch.float64


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Small elementwise work: intra-op threads only add overhead on shared CI cores."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


GRID_LIKS = ["binomial", "logistic", "categorical"]


def _params(lik, batch, scale=3.0, dtype=DT):
    return scale * torch.randn(*batch, *lik.param_shape, dtype=dtype)


# ----------------------------------------------------------------------------- normalisation
@pytest.mark.parametrize("name", GRID_LIKS)
def test_grid_likelihood_sums_to_one_over_all_joint_states(name):
    """Sum over all 256^2 joint values of a 2-pixel image equals 1 (checks the Independent wrapper too)."""
    torch.manual_seed(0)
    lik = make_likelihood(name, (1, 1, 2))
    d = lik(_params(lik, (3,)))
    g = grid_values(256, dtype=DT)
    xs = torch.cartesian_prod(g, g).reshape(-1, 1, 1, 1, 2)  # (65536, 1, 1, 1, 2) vs batch (3,)
    lp = d.log_prob(xs)
    assert lp.shape == (65536, 3)
    torch.testing.assert_close(lp.logsumexp(0), torch.zeros(3, dtype=DT), rtol=0, atol=1e-5)


@pytest.mark.parametrize("name", GRID_LIKS)
def test_grid_likelihood_sums_to_one_float32_single_pixel(name):
    torch.manual_seed(1)
    lik = make_likelihood(name, (1, 1, 1))
    d = lik(_params(lik, (50,), dtype=torch.float32))
    xs = grid_values(256).reshape(-1, 1, 1, 1, 1)
    total = d.log_prob(xs).exp().sum(0)
    torch.testing.assert_close(total, torch.ones(50), rtol=0, atol=1e-5)


def test_bernoulli_sums_to_one():
    torch.manual_seed(0)
    lik = make_likelihood("bernoulli", (1, 2, 2))
    d = lik(_params(lik, (4,)))
    xs = torch.tensor(list(itertools.product([0.0, 1.0], repeat=4)), dtype=DT).reshape(-1, 1, 1, 2, 2)
    torch.testing.assert_close(d.log_prob(xs).logsumexp(0), torch.zeros(4, dtype=DT), rtol=0, atol=1e-10)


@pytest.mark.parametrize("scale", ["global", "predicted"])
def test_gaussian_integrates_to_one(scale):
    torch.manual_seed(0)
    lik = make_likelihood("gaussian", (1,), scale=scale).to(DT)
    if scale == "global":
        with torch.no_grad():
            lik.log_precision.fill_(3.0)
    params = _params(lik, (), scale=1.0)
    d = lik(params)

    def density(t):
        return math.exp(d.log_prob(torch.tensor([t], dtype=DT)).item())

    loc = params[0].item()
    total, err = integrate.quad(density, loc - 50, loc + 50, points=[loc], limit=200)
    assert abs(total - 1) < 1e-6


# ----------------------------------------------------------------------------- reference values
def test_bernoulli_matches_scipy():
    torch.manual_seed(0)
    lik = make_likelihood("bernoulli", (1, 3, 3))
    logits = _params(lik, (2,))
    x = torch.bernoulli(torch.full((2, 1, 3, 3), 0.5, dtype=DT))
    p = special.expit(logits.numpy())
    ref = stats.bernoulli.logpmf(x.numpy(), p).reshape(2, -1).sum(-1)
    np.testing.assert_allclose(lik(logits).log_prob(x).numpy(), ref, rtol=1e-10)
    np.testing.assert_allclose(lik(logits).mean.numpy(), p, rtol=1e-10)


@pytest.mark.parametrize("scale", ["global", "predicted"])
def test_gaussian_matches_scipy(scale):
    torch.manual_seed(0)
    lik = make_likelihood("gaussian", (2, 2, 2), scale=scale, min_scale=1e-3).to(DT)
    params = _params(lik, (3,), scale=1.0)
    x = torch.rand(3, 2, 2, 2, dtype=DT)
    if scale == "global":
        with torch.no_grad():
            lik.log_precision.copy_(torch.randn(2, 2, 2, dtype=DT))
        sd = torch.exp(-0.5 * lik.log_precision.detach()).numpy() + 1e-3
        loc = params.numpy()
    else:
        loc = params[:, :2].numpy()
        sd = np.logaddexp(0, params[:, 2:].numpy()) + 1e-3
    ref = stats.norm.logpdf(x.numpy(), loc, sd).reshape(3, -1).sum(-1)
    d = lik(params)
    np.testing.assert_allclose(d.log_prob(x).detach().numpy(), ref, rtol=1e-10)
    np.testing.assert_allclose(d.mean.detach().numpy(), np.broadcast_to(loc, (3, 2, 2, 2)), rtol=1e-12)


def test_binomial_matches_scipy():
    torch.manual_seed(0)
    lik = make_likelihood("binomial", (1, 4, 4))
    logits = _params(lik, (2,))
    k = torch.randint(0, 256, (2, 1, 4, 4))
    x = k.to(torch.float32) / 255  # float32 data on the grid, float64 params
    ref = stats.binom.logpmf(k.numpy(), 255, special.expit(logits.numpy())).reshape(2, -1).sum(-1)
    d = lik(logits)
    np.testing.assert_allclose(d.log_prob(x).numpy(), ref, rtol=1e-9)
    np.testing.assert_allclose(d.mean.numpy(), special.expit(logits.numpy()), rtol=1e-12)


def test_discretized_logistic_matches_high_precision_reference():
    """Against 50-digit mpmath evaluation of the CDF differences (also far in the tails)."""
    mpmath = pytest.importorskip("mpmath")
    mpmath.mp.dps = 50
    torch.manual_seed(0)
    loc = torch.rand(200, dtype=DT) * 1.4 - 0.2
    scale = torch.exp(torch.rand(200, dtype=DT) * 6 - 7)  # 0.0009 .. 0.37
    k = torch.randint(0, 256, (200,))
    k[:20], k[20:40] = 0, 255  # edge bins
    d = DiscretizedLogistic(loc, scale)
    lp = d.log_prob(k.to(DT) / 255).numpy()

    def sigmoid(t):
        return 1 / (1 + mpmath.exp(-t))

    ref = []
    for kk, mu, s in zip(k.tolist(), loc.tolist(), scale.tolist()):
        mu, s = mpmath.mpf(mu), mpmath.mpf(s)
        a = (mpmath.mpf(kk + 0.5) / 255 - mu) / s
        b = (mpmath.mpf(kk - 0.5) / 255 - mu) / s
        if kk == 0:
            p = sigmoid(a)
        elif kk == 255:
            p = sigmoid(-b)  # = 1 - sigmoid(b), without cancellation
        else:  # difference of CDFs taken in the tail where both terms are small
            p = sigmoid(a) - sigmoid(b) if a + b < 0 else sigmoid(-b) - sigmoid(-a)
        ref.append(float(mpmath.log(p)))
    # the stable formula is accurate even where the probability underflows double precision
    assert np.isfinite(lp).all()
    np.testing.assert_allclose(lp, np.array(ref), rtol=1e-9)


def test_logistic_likelihood_parameterisation_and_extremes():
    lik = make_likelihood("logistic", (1, 1, 3))
    params = torch.tensor([[[-50.0, 0.5, 60.0]], [[-20.0, -20.0, -3.0]]])  # (2 * C, H, W): loc, log_scale
    d = lik(params)
    assert d.batch_shape == () and d.event_shape == (1, 1, 3)
    base = d.base_dist
    torch.testing.assert_close(base.loc, params[:1])
    torch.testing.assert_close(base.scale, params[1:].clamp(min=-7).exp())
    all_lp = base.log_probs_all()
    assert torch.isfinite(all_lp).all()
    torch.testing.assert_close(all_lp.logsumexp(-1), torch.zeros(1, 1, 3), rtol=0, atol=1e-5)
    # far-left location puts all mass in the first bin, far-right in the last
    torch.testing.assert_close(base.mean, torch.tensor([[[0.0, 0.5, 1.0]]]), rtol=0, atol=1e-3)
    tiny = DiscretizedLogistic(torch.tensor([0.5, 0.3]), torch.tensor([1e-6, 3e-7]))
    torch.testing.assert_close(tiny.log_probs_all().exp().sum(-1), torch.ones(2), rtol=0, atol=1e-5)


def test_categorical_matches_log_softmax():
    torch.manual_seed(0)
    lik = make_likelihood("categorical", (2, 1, 3))
    params = _params(lik, (4,))  # (4, 512, 1, 3): parameter-major channel layout
    k = torch.randint(0, 256, (4, 2, 1, 3))
    logits = params.reshape(4, 256, 2, 1, 3).numpy()
    logp = special.log_softmax(logits, axis=1)
    ref = np.take_along_axis(logp, k.numpy()[:, None], axis=1)[:, 0].reshape(4, -1).sum(-1)
    d = lik(params)
    np.testing.assert_allclose(d.log_prob(k.to(DT) / 255).numpy(), ref, rtol=1e-10)
    ref_mean = (special.softmax(logits, axis=1) * (np.arange(256) / 255)[None, :, None, None, None]).sum(1)
    np.testing.assert_allclose(d.mean.numpy(), ref_mean, rtol=1e-10)


# ----------------------------------------------------------------------------- sampling
@pytest.mark.parametrize("name", GRID_LIKS)
def test_grid_sample_frequencies_match_probabilities(name):
    torch.manual_seed(0)
    lik = make_likelihood(name, (1, 1, 1))
    params = torch.randn(lik.param_shape)
    if name == "binomial":
        params = torch.full_like(params, -2.0)
    elif name == "logistic":
        params = torch.tensor([0.4, -3.5]).reshape(lik.param_shape)
    d = lik(params)
    n = 20000
    samples = d.sample((n,))
    assert samples.shape == (n, 1, 1, 1)
    assert d.support.check(samples).all()
    k = (samples.flatten() * 255).round().long()
    freq = torch.bincount(k, minlength=256).double() / n
    probs = d.log_prob(grid_values(256).reshape(-1, 1, 1, 1)).exp().double()
    torch.testing.assert_close(probs.sum(), torch.tensor(1.0, dtype=DT), rtol=0, atol=1e-5)
    tv = 0.5 * (freq - probs).abs().sum()
    assert tv < 0.05, tv
    se = d.variance.sqrt().item() / n**0.5
    torch.testing.assert_close(samples.mean(), d.mean.squeeze(), rtol=0, atol=4 * se)


def test_expand_and_shapes():
    torch.manual_seed(0)
    for name in LIKELIHOODS:
        lik = make_likelihood(name, (1, 2, 2))
        d = lik(_params(lik, (3,), dtype=torch.float32))
        assert d.batch_shape == (3,) and d.event_shape == (1, 2, 2)
        e = d.expand((5, 3))
        assert e.batch_shape == (5, 3) and e.event_shape == (1, 2, 2)
        x = e.sample()
        assert x.shape == (5, 3, 1, 2, 2)
        assert e.log_prob(x).shape == (5, 3)
        torch.testing.assert_close(e.log_prob(x)[2], d.log_prob(x[2]))
        assert d.mean.shape == (3, 1, 2, 2)


@pytest.mark.parametrize("cls_args", [
    (BinomialGrid, dict(total_count=255, logits=torch.zeros(3))),
    (DiscretizedLogistic, dict(loc=torch.zeros(3), scale=torch.ones(3))),
    (CategoricalGrid, dict(logits=torch.zeros(3, 256))),
])
def test_distribution_validate_args_rejects_off_grid(cls_args):
    cls, kwargs = cls_args
    d = cls(**kwargs, validate_args=True)
    with pytest.raises(ValueError, match="support"):
        d.log_prob(torch.tensor([0.5, 0.1, 1.2]))
    d.log_prob(torch.tensor([0.0, 128 / 255, 1.0]))


# ----------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("name", list(LIKELIHOODS))
def test_validate_rejects_bad_x(name):
    lik = make_likelihood(name, (1, 2, 2))
    good = torch.tensor([0.0, 1.0, 0.0, 1.0]).reshape(1, 1, 2, 2)
    assert lik.validate(good) is good
    with pytest.raises(ValueError, match="dtype"):
        lik.validate(good.long())
    with pytest.raises(ValueError, match="NaN"):
        lik.validate(torch.where(good > 0, torch.nan, good))
    with pytest.raises(ValueError, match="shape"):
        lik.validate(torch.zeros(1, 1, 3, 3))
    with pytest.raises(TypeError, match="torch.Tensor"):
        lik.validate(good.numpy())
    if name != "gaussian":
        with pytest.raises(ValueError, match=f"outside the support of the '{name}' likelihood"):
            lik.validate(good + 0.5 / 255 if name != "bernoulli" else good * 0.5)
        with pytest.raises(ValueError, match="outside the support"):
            lik.validate(good - 1)
    else:
        with pytest.raises(ValueError, match="infinite"):
            lik.validate((good + 1) / 0)


def test_make_likelihood_errors():
    with pytest.raises(ValueError, match="unknown likelihood 'poisson'"):
        make_likelihood("poisson", (1, 2, 2))
    with pytest.raises(ValueError, match="scale"):
        make_likelihood("gaussian", (1, 2, 2), scale="fixed")
    with pytest.raises(ValueError, match="min_scale"):
        make_likelihood("gaussian", (1, 2, 2), min_scale=-1.0)
    with pytest.raises(ValueError, match="total_count"):
        make_likelihood("binomial", (1, 2, 2), total_count=0)
    with pytest.raises(ValueError, match="event_shape"):
        make_likelihood("bernoulli", ())
    with pytest.raises(TypeError):
        make_likelihood("bernoulli", (1, 2, 2), bogus=1)
    lik = make_likelihood("logistic", (1, 2, 2))
    assert make_likelihood(lik, (1, 2, 2)) is lik
    with pytest.raises(ValueError, match="event_shape"):
        make_likelihood(lik, (1, 3, 3))
    with pytest.raises(ValueError, match="already built"):
        make_likelihood(lik, (1, 2, 2), num_levels=16)
    with pytest.raises(ValueError, match=r"decoder output of shape \(\.\.\., 2, 2, 2\)"):
        lik(torch.zeros(3, 1, 2, 2))


def test_num_params():
    expected = {"bernoulli": 1, "gaussian": 1, "binomial": 1, "logistic": 2, "categorical": 256}
    for name, n in expected.items():
        assert make_likelihood(name, (3, 2, 2)).num_params == n
        assert make_likelihood(name, (3, 2, 2)).param_shape == (3 * n, 2, 2)
    assert make_likelihood("gaussian", (1,), scale="predicted").num_params == 2


# ----------------------------------------------------------------------------- gradients
def test_grid_log_prob_gradients_match_finite_differences():
    torch.manual_seed(0)
    k = torch.tensor([0, 3, 128, 254, 255, 40])
    x = k.to(DT) / 255
    loc = (torch.rand(6, dtype=DT) * 1.2 - 0.1).requires_grad_()
    log_scale = (torch.rand(6, dtype=DT) * 3 - 5).requires_grad_()
    logits = (torch.randn(6, dtype=DT) * 2).requires_grad_()
    cat_logits = torch.randn(6, 8, dtype=DT, requires_grad=True)  # 8 levels keep gradcheck cheap
    def logistic(m, s):
        return DiscretizedLogistic(m, s.exp()).log_prob(x)

    assert torch.autograd.gradcheck(logistic, (loc, log_scale))
    assert torch.autograd.gradcheck(lambda lg: BinomialGrid(255, logits=lg).log_prob(x), (logits,))
    x8 = torch.tensor([0, 1, 3, 7, 6, 2], dtype=DT) / 7
    assert torch.autograd.gradcheck(lambda lg: CategoricalGrid(lg).log_prob(x8), (cat_logits,))


def test_discretized_logistic_gradients_finite_at_extremes():
    loc = torch.tensor([-80.0, 0.5, 80.0, 0.3], requires_grad=True)
    log_scale = torch.tensor([-7.0, -7.0, -7.0, 4.0], requires_grad=True)
    x = torch.tensor([1.0, 0.0, 0.0, 100 / 255])
    lp = DiscretizedLogistic(loc, log_scale.exp()).log_prob(x)
    lp.sum().backward()
    assert torch.isfinite(lp).all()
    assert torch.isfinite(loc.grad).all() and torch.isfinite(log_scale.grad).all()


# ----------------------------------------------------------------------------- model-side use
def test_gaussian_log_scale_mode():
    """``scale="log_scale"``: the second input is the log standard deviation (SPVAE's leaf scales)."""
    torch.manual_seed(0)
    lik = make_likelihood("gaussian", (2, 3), scale="log_scale", min_scale=0.0)
    assert lik.num_params == 2 and not list(lik.parameters())
    loc, log_scale = torch.randn(4, 2, 3, dtype=DT), 0.3 * torch.randn(4, 2, 3, dtype=DT)
    d = lik(torch.cat([loc, log_scale], -2))
    x = torch.randn(4, 2, 3, dtype=DT)
    ref = stats.norm.logpdf(x.numpy(), loc.numpy(), np.exp(log_scale.numpy())).reshape(4, -1).sum(-1)
    np.testing.assert_allclose(d.log_prob(x).numpy(), ref, rtol=1e-10)
    assert torch.equal(d.mean, loc)


def test_validate_with_missing_values_batch_dims_and_dtype():
    lik = make_likelihood("binomial", (1, 2, 2))
    x = torch.tensor([0.0, 1.0, math.nan, 3 / 255]).reshape(1, 1, 2, 2)
    assert lik.validate(x, batch_dims=1, allow_missing=True) is x
    with pytest.raises(ValueError, match="NaN"):
        lik.validate(x, batch_dims=1)
    with pytest.raises(ValueError, match="empty batch"):
        lik.validate(torch.zeros(0, 1, 2, 2), batch_dims=1)
    with pytest.raises(ValueError, match=r"x has shape \(1, 1, 1, 2, 2\), expected \(B, 1, 2, 2\)"):
        lik.validate(x.unsqueeze(0), batch_dims=1, allow_missing=True)
    with pytest.raises(ValueError, match="x has dtype torch.float32, expected torch.float64"):
        lik.validate(x, allow_missing=True, like=torch.zeros((), dtype=DT))
    bad = torch.where(torch.isnan(x), x, x + 0.5 / 255)
    with pytest.raises(ValueError, match=r"outside the support of the Binomial\(255\) leaf likelihood.*"
                                         r"'spvae-discrete' transform"):
        lik.validate(bad, allow_missing=True, what=f"{lik.label} leaf likelihood")
    assert make_likelihood("bernoulli", (1,)).label == "Bernoulli" and lik.label == "Binomial(255)"


def test_check_observations_fills_missing_entries():
    x = torch.tensor([[0.5, math.nan], [math.nan, -2.0]])
    same, observed = check_observations(x, (2,), batch_dims=1, allow_missing=True)
    assert same is x and torch.equal(observed, torch.tensor([[0.5, 0.0], [0.0, -2.0]]))
    full = torch.ones(2, 2)
    assert check_observations(full, (2,))[1] is full
    with pytest.raises(TypeError, match="y must be a torch.Tensor"):
        check_observations([1.0], (1,), name="y")
    with pytest.raises(ValueError, match="infinite"):
        check_observations(torch.tensor([[math.inf, math.nan]]), (2,), allow_missing=True)


# ----------------------------------------------------------------------------- reference heads
# (the SPVAE reference code's likelihoods, Tan & Peharz 2019; see docs/spvae.md)
def test_gaussian_precision_head_is_the_reference_density():
    """mean = sigmoid(a), precision = 1 + g^2 per example and element:
    log p = sum 0.5 log(prec / 2 pi) - 0.5 prec (x - mean)^2, with no epsilon and no clamp."""
    from pyro_spvae.nn.likelihoods import precision_gaussian_log_lik

    torch.manual_seed(0)
    lik = make_likelihood("gaussian", (1, 3, 2), scale="precision", loc="sigmoid")
    assert lik.num_params == 2 and lik.param_shape == (2, 3, 2) and not list(lik.parameters())
    params = 4 * torch.randn(5, 2, 3, 2, dtype=DT)
    x = torch.rand(5, 1, 3, 2, dtype=DT)
    a, g = params[:, :1], params[:, 1:]
    prec = 1 + g**2
    dens = 0.5 * torch.log(prec / (2 * math.pi)) - 0.5 * prec * (x - torch.sigmoid(a)) ** 2
    want = dens.flatten(1).sum(-1)
    d = lik(params)
    torch.testing.assert_close(d.log_prob(x), want, rtol=0, atol=1e-12)
    assert bool((d.base_dist.scale <= 1).all()) and bool(((d.mean > 0) & (d.mean < 1)).all())
    got = precision_gaussian_log_lik(x.flatten(1), torch.sigmoid(a).flatten(1), g.flatten(1))
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)
    mask = torch.rand(5, 6) > 0.5  # masked-out entries contribute nothing
    masked = precision_gaussian_log_lik(x.flatten(1), torch.sigmoid(a).flatten(1), g.flatten(1), mask)
    torch.testing.assert_close(masked, (dens.flatten(1) * mask).sum(-1), rtol=0, atol=1e-12)
    # "predicted" and identity means stay as they were
    plain = make_likelihood("gaussian", (1, 3, 2), scale="predicted")(params)
    torch.testing.assert_close(plain.mean, a)


def test_squeezed_binomial_is_the_reference_log_pmf():
    """p' = sigmoid(l)(1 - 2e) + e, log p = k log(e + p') + (n - k) log(e + 1 - p') + log C(n, k)."""
    from pyro_spvae.nn.likelihoods import SqueezedBinomialGrid, squeezed_count_log_pmf

    torch.manual_seed(0)
    eps, n = 1e-7, 255
    lik = make_likelihood("binomial", (1, 2, 2), eps=eps)
    logits = 30 * torch.randn(4, 1, 2, 2, dtype=DT)  # saturated sigmoids: the squeeze matters
    k = torch.randint(0, n + 1, (4, 1, 2, 2)).to(DT)
    p = torch.sigmoid(logits) * (1 - 2 * eps) + eps
    log_c = math.lgamma(n + 1) - torch.lgamma(k + 1) - torch.lgamma(n - k + 1)
    want = k * torch.log(eps + p) + (n - k) * torch.log(eps + 1 - p) + log_c
    d = lik(logits)
    assert isinstance(d.base_dist, SqueezedBinomialGrid)
    torch.testing.assert_close(d.log_prob(k / n), want.flatten(1).sum(-1), rtol=1e-12, atol=1e-6)
    torch.testing.assert_close(squeezed_count_log_pmf(k, logits, n, eps), want, rtol=1e-12, atol=1e-6)
    torch.testing.assert_close(d.mean, p)
    assert d.sample().shape == (4, 1, 2, 2) and d.base_dist.expand((3, 4, 1, 2, 2)).eps == eps
    # sums to 1 up to the squeeze (O(n eps)) over the 256 grid values
    single = SqueezedBinomialGrid(n, logits=torch.tensor([-3.0, 0.0, 2.0], dtype=DT), eps=eps)
    total = single.log_prob(grid_values(256, dtype=DT).reshape(-1, 1)).exp().sum(0)
    torch.testing.assert_close(total, torch.ones(3, dtype=DT), rtol=0, atol=1e-4)
    assert not isinstance(make_likelihood("binomial", (1, 2, 2))(logits).base_dist, SqueezedBinomialGrid)


@pytest.mark.parametrize("name, kwargs, match", [
    ("gaussian", {"scale": "exp"}, "gaussian scale"),
    ("gaussian", {"loc": "tanh"}, "gaussian loc"),
    ("binomial", {"eps": 0.5}, "eps"),
    ("binomial", {"eps": -1e-7}, "eps"),
])
def test_reference_head_options_are_checked(name, kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_likelihood(name, (1, 2, 2), **kwargs)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_bernoulli_support_fast_path_agrees_with_elementwise_check(dtype):
    """The one-reduction support test accepts exactly the tensors the elementwise {0, 1} check
    accepts (edge values next to 0 and 1, signed zero, subnormals, infinities, NaN), and a tensor it
    refuses still gets the elementwise message naming the bad values."""
    lik = make_likelihood("bernoulli", (1, 2, 2))
    info = torch.finfo(dtype)
    edge = [0.0, -0.0, 1.0, 0.5, 2.0, -1.0, info.eps, 1 - info.eps / 2, 1 + info.eps, info.tiny,
            info.tiny * 2**-3, info.max, -info.max, math.inf, -math.inf, math.nan]
    for v in edge:
        x = torch.tensor([[0.0, 1.0, 1.0, v]], dtype=dtype).reshape(1, 1, 2, 2)
        ok = bool(((x == 0) | (x == 1)).all())
        assert lik._in_support(x) == ok, (v, dtype)
        if not ok and not math.isnan(v):
            with pytest.raises(ValueError, match=r"1 values outside the support .*e\.g\."):
                lik.check_support(x)
    g = torch.Generator().manual_seed(0)
    x = torch.bernoulli(torch.full((64, 1, 2, 2), 0.3), generator=g).to(dtype)
    assert lik._in_support(x) and lik.check_support(x) is x
    assert not lik._in_support(torch.empty(0, 1, 2, 2, dtype=dtype))  # nothing to decide: the plain check
    lik.check_support(torch.empty(0, 1, 2, 2, dtype=dtype))


def test_checked_bernoulli_equals_pyro_bernoulli():
    """The Bernoulli head's distribution gives Pyro's Bernoulli log-probabilities and gradients
    (validation on), expands, and refuses what Pyro's refuses with torch's messages."""
    import pyro
    import pyro.distributions as dist

    from pyro_spvae.nn.likelihoods import CheckedBernoulli

    g = torch.Generator().manual_seed(0)
    x = torch.bernoulli(torch.full((4, 1, 3, 3), 0.4), generator=g)
    with pyro.validation_enabled(True):
        logits = torch.randn(4, 1, 3, 3, generator=g, requires_grad=True)
        lik = make_likelihood("bernoulli", (1, 3, 3))
        mine = lik(logits)
        assert isinstance(mine.base_dist, CheckedBernoulli) and mine.base_dist._validate_args
        (grad,) = torch.autograd.grad(mine.log_prob(x).sum(), logits)
        ref = dist.Bernoulli(logits=logits).to_event(3)
        (ref_grad,) = torch.autograd.grad(ref.log_prob(x).sum(), logits)
        torch.testing.assert_close(mine.log_prob(x), ref.log_prob(x), rtol=0, atol=0)
        torch.testing.assert_close(grad, ref_grad, rtol=0, atol=0)
        wide = mine.expand((2, 4))
        assert isinstance(wide.base_dist, CheckedBernoulli) and wide.log_prob(x).shape == (2, 4)
        for bad, match in ((x * 0.5, "support"), (torch.zeros(3, 1, 3, 3), "broadcastable")):
            with pytest.raises(ValueError, match=match):
                mine.log_prob(bad)
        with pytest.raises(ValueError, match="logits"):
            CheckedBernoulli(torch.tensor([0.0, math.nan]))
        CheckedBernoulli(torch.tensor([math.inf, -math.inf]))  # no NaN: accepted, as by torch
    with pyro.validation_enabled(False):
        assert not CheckedBernoulli(torch.tensor([math.nan]))._validate_args
