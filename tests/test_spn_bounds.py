"""Ground-truth tests of the SPN-aware bounds (pyro_spvae.infer.spn_bounds).

The test model is an SPN whose leaves are linear-Gaussian VAEs (pPCA), written out by hand so that
the check does not depend on the SPN layers: two leaf regions ``A = {0, 1}``, ``B = {2, 3}`` of a
4-d ``x``, two pPCA leaves per region and a root sum over all four products
``p(x) = sum_ij W_ij p_Ai(x_A) p_Bj(x_B)``. Each leaf ``p_l(x_R) = N(x_R; b_l, W_l W_l^T + diag s_l^2)``
and its posterior are exact, so the exact ``log p(x)`` is known.
"""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.distributions import TorchDistribution
from pyro.infer import SVI, Trace_ELBO
from torch.distributions import constraints

from pyro_spvae.infer import (
    SPNLeafELBO,
    SPNLeafGuide,
    SPNLeafIWELBO,
    SPNLeafModel,
    SPNRootIWELBO,
    spn_leaf_log_weights,
    spn_log_likelihood,
)

D, ZD = 4, 2
REGIONS = [[0, 1], [0, 1], [2, 3], [2, 3]]  # leaf l -> scope; leaves A0, A1, B0, B1
L = len(REGIONS)


class PPCASPN:
    """Hand-written SPN of pPCA leaves implementing the leaf protocol and a Pyro model."""

    def __init__(self, seed: int = 0, requires_grad: bool = False):
        g = torch.Generator().manual_seed(seed)
        self.W = (torch.randn(L, 2, ZD, generator=g) * 1.2).requires_grad_(requires_grad)
        self.b = torch.randn(L, 2, generator=g).requires_grad_(requires_grad)
        self.log_s = (torch.rand(L, 2, generator=g) * 0.5 - 0.7).requires_grad_(requires_grad)
        self.logits = torch.randn(2, 2, generator=g).requires_grad_(requires_grad)
        self.index = torch.tensor(REGIONS)

    def patches(self, x):  # (B, D) -> (B, L, 2)
        return x[:, self.index]

    def log_w(self):
        return torch.log_softmax(self.logits.reshape(-1), 0).reshape(2, 2)

    def leaf_log_lik(self, x, z):  # z (..., B, L, ZD) -> (..., B, L)
        mean = torch.einsum("lij,...lj->...li", self.W, z) + self.b
        return dist.Normal(mean, self.log_s.exp()).log_prob(self.patches(x)).sum(-1)

    def leaf_log_joint(self, x, z):
        return self.leaf_log_lik(x, z) + dist.Normal(0.0, 1.0).log_prob(z).sum(-1)

    def spn_log_value(self, lv):  # (..., L) -> (...)
        a, b = lv[..., 0:2], lv[..., 2:4]
        t = self.log_w() + a[..., :, None] + b[..., None, :]
        return torch.logsumexp(t.flatten(-2), -1)

    def exact_leaf_log_prob(self, x):  # (B, L)
        cov = self.W @ self.W.transpose(-1, -2) + torch.diag_embed(self.log_s.exp() ** 2)
        return dist.MultivariateNormal(self.b, cov).log_prob(self.patches(x))

    def exact_log_prob(self, x):
        return self.spn_log_value(self.exact_leaf_log_prob(x))

    def exact_posterior(self, x):  # loc (B, L, ZD), cov (L, ZD, ZD)
        sinv = torch.exp(-2 * self.log_s)  # (L, 2)
        prec = torch.eye(ZD) + self.W.transpose(-1, -2) @ (sinv[..., None] * self.W)
        cov = torch.linalg.inv(prec)
        cov = 0.5 * (cov + cov.transpose(-1, -2))
        r = (self.patches(x) - self.b) * sinv  # (B, L, 2)
        loc = torch.einsum("lij,blj->bli", cov @ self.W.transpose(-1, -2), r)
        return loc, cov

    def __call__(self, x):  # the equivalent plain Pyro model
        with pyro.plate("data", x.shape[0], dim=-1):
            z = pyro.sample("z", dist.Normal(torch.zeros(x.shape[0], L, ZD), 1.0).to_event(2))
            pyro.sample("x", _ObsSPN(self, z), obs=x)


class _ObsSPN(TorchDistribution):
    arg_constraints: dict = {}
    support = constraints.independent(constraints.real, 1)

    def __init__(self, spn, z):
        self.spn, self.z = spn, z
        super().__init__(z.shape[:-2], torch.Size([D]), validate_args=False)

    def log_prob(self, value):
        return self.spn.spn_log_value(self.spn.leaf_log_lik(value, self.z))


class Guide:
    """Leaf-wise Gaussian guide: the exact leaf posteriors, or a deliberately perturbed version."""

    def __init__(self, spn: PPCASPN, exact: bool = True):
        self.spn, self.exact = spn, exact

    def leaf_posterior(self, x):
        loc, cov = self.spn.exact_posterior(x)
        if self.exact:
            return dist.MultivariateNormal(loc, cov.expand(x.shape[0], L, ZD, ZD))
        sd = torch.diagonal(cov, dim1=-2, dim2=-1).sqrt()
        return dist.Normal(loc + 0.8 * sd, 1.4 * sd.expand(loc.shape)).to_event(1)

    def __call__(self, x):
        with pyro.plate("data", x.shape[0], dim=-1):
            pyro.sample("z", self.leaf_posterior(x).to_event(1))


def _data(n=3, seed=1):
    return torch.randn(n, D, generator=torch.Generator().manual_seed(seed)) * 1.5


BOUNDS = [SPNLeafELBO, SPNLeafIWELBO, SPNRootIWELBO]


@pytest.mark.parametrize("bound", BOUNDS)
@pytest.mark.parametrize("k", [1, 3, 17])
def test_exact_posterior_gives_exact_log_likelihood(bound, k):
    spn = PPCASPN()
    x = _data()
    est = bound(num_particles=k).per_example_bound(spn, Guide(spn, exact=True), x)
    assert torch.allclose(est, spn.exact_log_prob(x), atol=1e-4, rtol=0)


def test_spn_log_likelihood_exact_posterior():
    spn = PPCASPN()
    x = _data()
    for method in ("leaf", "root"):
        est = spn_log_likelihood(spn, Guide(spn), x, num_samples=50, chunk_size=7, method=method)
        assert torch.allclose(est, spn.exact_log_prob(x), atol=1e-4, rtol=0)


def _repeated(bound, k, reps=400, seed=0):
    """``reps`` independent evaluations of the bound on each of 3 points: mean and s.e. per point."""
    spn = PPCASPN()
    x = _data()
    pyro.set_rng_seed(seed)
    with torch.no_grad():
        est = bound(num_particles=k).per_example_bound(spn, Guide(spn, exact=False), x.repeat(reps, 1))
    est = est.reshape(reps, -1)
    return est.mean(0), est.std(0) / math.sqrt(reps), spn.exact_log_prob(x)


@pytest.mark.parametrize("bound", BOUNDS)
def test_bounds_below_exact_and_monotone_in_k(bound):
    means = []
    for k in (1, 10, 100):
        mean, se, exact = _repeated(bound, k)
        # a lower bound in expectation: the mean may not exceed exact by more than 4 s.e.
        assert (mean <= exact + 4 * se + 1e-6).all(), (bound.__name__, k, mean, exact, se)
        means.append((mean, se))
    gap_1 = exact - means[0][0]
    gap_100 = exact - means[-1][0]
    assert (gap_1 > 0.05).all(), "the perturbed guide should leave a visible gap at K=1"
    for (m1, s1), (m2, s2) in zip(means[:-1], means[1:]):
        if bound is SPNLeafELBO:
            # averaging leaf ELBO samples only removes noise that the convex log SPN(exp .) turned
            # into a gain: (a) moves DOWN towards log SPN(exp ELBO_l) as K grows
            assert (m2 < m1 + 3 * (s1 + s2)).all()
        else:  # importance-weighted bounds tighten with K and converge to log p(x)
            assert (m2 > m1 + 3 * (s1 + s2)).all()
    if bound is not SPNLeafELBO:
        assert (gap_100 < 0.2 * gap_1).all()


def test_orderings_for_same_samples_and_in_expectation():
    spn = PPCASPN()
    guide = Guide(spn, exact=False)
    x = _data().repeat(200, 1)
    # (a) <= (b) pointwise for the same samples (AM-GM per leaf, monotone SPN)
    pyro.set_rng_seed(3)
    a = SPNLeafELBO(8).per_example_bound(spn, guide, x)
    pyro.set_rng_seed(3)
    b = SPNLeafIWELBO(8).per_example_bound(spn, guide, x)
    assert (a <= b + 1e-5).all()
    assert (a < b - 1e-3).any()
    # (c) <= (b) in expectation (b is (c) averaged over per-leaf permutations of the samples)
    pyro.set_rng_seed(4)
    c = SPNRootIWELBO(8).per_example_bound(spn, guide, x).reshape(200, -1)
    b = b.reshape(200, -1)
    se = (c.std(0) + b.std(0)) / math.sqrt(200)
    assert (c.mean(0) <= b.mean(0) + 3 * se).all()
    # K = 1: all three bounds coincide for the same samples
    outs = []
    for bound in BOUNDS:
        pyro.set_rng_seed(5)
        outs.append(bound(1).per_example_bound(spn, guide, x))
    assert torch.allclose(outs[0], outs[1], atol=1e-5) and torch.allclose(outs[1], outs[2], atol=1e-5)


def test_plain_trace_elbo_is_looser_with_exact_leaf_posteriors():
    """With exact leaf posteriors the SPN-aware bounds are exact; the plain Pyro-model ELBO is
    strictly below (it pays the KL of leaves outside the selected induced tree)."""
    spn = PPCASPN()
    guide = Guide(spn, exact=True)
    x = _data()
    exact = spn.exact_log_prob(x).sum()
    with torch.no_grad():
        elbo = Trace_ELBO(num_particles=2000, vectorize_particles=True, max_plate_nesting=1)
        trace = -elbo.loss(spn, guide, x)
        leaf_elbo = -SPNLeafELBO(1).loss(spn, guide, x)
        leaf_iw = -SPNLeafIWELBO(5).loss(spn, guide, x)
    assert leaf_elbo == pytest.approx(float(exact), abs=1e-3)
    assert leaf_iw == pytest.approx(float(exact), abs=1e-3)
    assert trace < leaf_elbo - 0.1


def test_plain_trace_elbo_below_exact_with_approximate_guide():
    spn = PPCASPN()
    guide = Guide(spn, exact=False)
    x = _data()
    with torch.no_grad():
        elbo = Trace_ELBO(num_particles=4000, vectorize_particles=True, max_plate_nesting=1)
        est = -elbo.loss(spn, guide, x)
    assert est < float(spn.exact_log_prob(x).sum())


def test_streaming_log_likelihood_approaches_exact():
    spn = PPCASPN()
    x = _data()
    exact = spn.exact_log_prob(x)
    est = spn_log_likelihood(spn, Guide(spn, exact=False), x, num_samples=3000, chunk_size=256)
    assert est.shape == exact.shape
    assert ((exact - est).abs() < 0.08).all(), (est, exact)
    one = spn_log_likelihood(spn, Guide(spn, exact=False), x, num_samples=1)
    assert (exact - one > (exact - est)).all()


# Produced by spn_log_likelihood before issue 11 (default chunk_size=250; torch 2.13) with
# torch.manual_seed(0), num_samples=3000, PPCASPN(), Guide(spn, exact=False) and _data(4, seed=2).
_BEFORE = {
    "leaf": [-8.295748710632, -7.145931243896, -6.388237476349, -7.878952980042],
    "root": [-8.293108940125, -7.118622303009, -6.394598007202, -7.876428127289],
}


@pytest.mark.parametrize("method", ["leaf", "root"])
def test_streaming_log_likelihood_same_as_before(method, monkeypatch):
    """The previous chunk size draws the same samples and gives the same numbers; the automatic
    pass shape, on other draws and with the examples split over passes, agrees within Monte Carlo
    error (estimated from repeated runs)."""
    from pyro_spvae.infer import log_likelihood

    spn = PPCASPN()
    x = _data(4, seed=2)
    ref = torch.tensor(_BEFORE[method])
    torch.manual_seed(0)
    guide = Guide(spn, exact=False)
    same = spn_log_likelihood(spn, guide, x, num_samples=3000, chunk_size=250, method=method)
    torch.testing.assert_close(same, ref, rtol=0, atol=1e-5)
    runs = []
    for seed, budget in ((1, None), (2, 500 * 4 * 4), (3, 700 * 4 * 4), (4, None)):
        if budget is not None:  # 500 or 700 rows of 4 float32 values: 1 or 2 examples per pass
            monkeypatch.setitem(log_likelihood.PASS_BUDGET_BYTES, "cpu", budget)
        torch.manual_seed(seed)
        runs.append(spn_log_likelihood(spn, Guide(spn, exact=False), x, num_samples=3000, method=method))
        monkeypatch.undo()
    runs = torch.stack(runs)
    sd = runs.std(0)
    assert ((runs.mean(0) - ref).abs() < 5 * sd * math.sqrt(1 / 4 + 1) + 1e-3).all(), (runs, ref)
    assert ((runs - ref).abs() > 0).any(1).all()  # other draws


@pytest.mark.parametrize("bound", BOUNDS)
def test_gradient_matches_exact_with_exact_posterior(bound):
    """With the exact guide the bound equals log p(x) as a function of the model parameters, so
    its gradient must equal the exact gradient (reparameterised through the guide)."""
    spn = PPCASPN(requires_grad=True)
    x = _data()
    loss = bound(num_particles=3).differentiable_loss(spn, Guide(spn), x)
    params = [spn.W, spn.b, spn.log_s, spn.logits]
    got = torch.autograd.grad(loss, params)
    want = torch.autograd.grad(-spn.exact_log_prob(x).sum(), params)
    for g1, g2 in zip(got, want):
        assert torch.allclose(g1, g2, atol=1e-4, rtol=1e-4)


def test_loss_api_and_svi_step():
    spn = PPCASPN()
    x = _data()

    class Trainable(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.shift = torch.nn.Parameter(torch.full((L, ZD), 0.5))

        def leaf_posterior(self, x):
            pyro.module("trainable_guide", self)
            loc, cov = spn.exact_posterior(x)
            sd = torch.diagonal(cov, dim1=-2, dim2=-1).sqrt()
            return dist.Normal(loc + self.shift, sd.expand(loc.shape)).to_event(1)

        def forward(self, x):
            with pyro.plate("data", x.shape[0], dim=-1):
                pyro.sample("z", self.leaf_posterior(x).to_event(1))

    guide = Trainable()
    elbo = SPNLeafIWELBO(5)
    pyro.set_rng_seed(0)
    loss = elbo.loss(spn, guide, x)
    assert isinstance(loss, float) and math.isfinite(loss)
    pyro.set_rng_seed(0)
    dl = elbo.differentiable_loss(spn, guide, x)
    assert dl.item() == pytest.approx(loss, rel=1e-6)
    pyro.set_rng_seed(0)
    assert float(-elbo.per_example_bound(spn, guide, x).sum().detach()) == pytest.approx(loss, rel=1e-6)
    svi = SVI(spn, guide, pyro.optim.Adam({"lr": 0.05}), elbo)
    for _ in range(60):
        svi.step(x)
    assert guide.shift.abs().max() < 0.3  # moved towards the exact posterior (shift 0)


def test_leaf_log_weights_shape():
    spn = PPCASPN()
    x = _data(5)
    assert spn_leaf_log_weights(spn, Guide(spn), x, 7).shape == (7, 5, L)


def test_protocol_and_argument_errors():
    spn = PPCASPN()
    x = _data()
    with pytest.raises(TypeError, match="leaf_log_joint"):
        SPNLeafIWELBO(2).loss(lambda x: None, Guide(spn), x)
    with pytest.raises(TypeError, match="leaf_posterior"):
        SPNLeafIWELBO(2).loss(spn, lambda x: None, x)
    for bad in (0, -1):
        with pytest.raises(ValueError, match="num_particles"):
            SPNLeafIWELBO(bad)
    for bad in (2.5, True):  # a wrong type is a TypeError (pyro_spvae.validation)
        with pytest.raises(TypeError, match="num_particles"):
            SPNLeafIWELBO(bad)
    with pytest.raises(ValueError, match="num_samples"):
        spn_log_likelihood(spn, Guide(spn), x, num_samples=0)
    with pytest.raises(ValueError, match="method"):
        spn_log_likelihood(spn, Guide(spn), x, num_samples=2, method="middle")
    with pytest.raises(TypeError, match="one data argument"):
        SPNLeafIWELBO(2).loss(spn, Guide(spn), x, x)


def test_protocols_are_exported_and_checked():
    spn = PPCASPN()
    assert isinstance(spn, SPNLeafModel) and isinstance(Guide(spn), SPNLeafGuide)
    assert not isinstance(Guide(spn), SPNLeafModel) and not isinstance(spn, SPNLeafGuide)


@pytest.mark.parametrize("bound", BOUNDS)
@pytest.mark.parametrize("vectorize", [True, False])
def test_follows_pyro_elbo_contract(bound, vectorize):
    """The base class's _get_traces yields one pair of K leaf particles (vectorised) or K pairs of
    one (_get_trace); the traces' log-densities are the leaf log-weights; loss, differentiable_loss
    and loss_and_grads agree on one draw."""
    spn = PPCASPN(requires_grad=True)
    guide = Guide(spn, exact=False)
    x = _data()
    k = 3
    elbo = bound(num_particles=k, vectorize_particles=vectorize)
    assert (elbo.num_particles, elbo.vectorize_particles) == (k, vectorize)
    pyro.set_rng_seed(0)
    traces = list(elbo._get_traces(spn, guide, (x,), {}))
    assert len(traces) == (1 if vectorize else k)
    for model_trace, guide_trace in traces:
        z = guide_trace.nodes["spn_leaf_z"]["value"]
        assert z.shape == ((k if vectorize else 1), 3, L, ZD)
        log_w = spn.leaf_log_joint(x, z) - guide.leaf_posterior(x).log_prob(z)
        diff = model_trace.log_prob_sum() - guide_trace.log_prob_sum()
        torch.testing.assert_close(diff, log_w.sum(), rtol=1e-5, atol=1e-4)
    losses = []
    for f in (elbo.loss, lambda *a: elbo.differentiable_loss(*a).item(), elbo.loss_and_grads):
        pyro.set_rng_seed(1)
        losses.append(f(spn, guide, x))
    assert losses == pytest.approx([losses[0]] * 3, rel=1e-6)
    exact = bound(num_particles=k, vectorize_particles=vectorize).per_example_bound(spn, Guide(spn), x)
    assert torch.allclose(exact, spn.exact_log_prob(x), atol=1e-4, rtol=0)


def test_nan_loss_warns():
    spn = PPCASPN()
    x = _data()
    x[0, 0] = math.nan
    with pyro.validation_enabled(False):
        elbo = SPNLeafIWELBO(2)
        for method in (elbo.loss, elbo.loss_and_grads, elbo.differentiable_loss):
            with pytest.warns(UserWarning, match="Encountered NaN: loss"):
                method(spn, Guide(spn, exact=False), x)


def test_explicit_chunk_size_bounds_the_examples_per_pass(monkeypatch):
    """An explicit ``chunk_size`` fixes the samples per pass; the budget still splits the examples
    (``leaf_pass_shape``), so a fixed chunk never draws for all examples at once. Split or not, the
    estimate agrees with the exact log-likelihood within Monte Carlo error, and the one-pass shape
    still draws the same samples as before (``_BEFORE``)."""
    from pyro_spvae.infer import log_likelihood
    from pyro_spvae.infer.spn_bounds import LEAF_PASS_BUDGET_FRACTION, leaf_pass_shape

    spn = PPCASPN()
    x = _data(4, seed=2)
    # 1000 rows of one example in the leaf share of the budget: 4 examples per pass at chunk 250
    budget = int(1000 * x[0].numel() * x.element_size() / LEAF_PASS_BUDGET_FRACTION)
    monkeypatch.setitem(log_likelihood.PASS_BUDGET_BYTES, "cpu", budget)
    assert leaf_pass_shape(x, 3000, 250) == (250, 4)
    assert leaf_pass_shape(x, 3000, 5000) == (3000, 1)  # the chunk is capped by num_samples
    assert leaf_pass_shape(x, 3000, 400) == (400, 2)  # 2 examples per pass
    assert leaf_pass_shape(x, 3000, 2000) == (2000, 1)  # at least one example per pass
    assert leaf_pass_shape(x[:3], 3000, 500) == (500, 2)  # 3 examples: batches of 2 and 1
    assert leaf_pass_shape(torch.zeros(100, 1, 28, 28), 5000, 100) == (100, 1)  # 1000 rows: 10 at 3 MiB
    monkeypatch.undo()
    assert leaf_pass_shape(torch.zeros(100, 1, 28, 28), 5000, 100) == (100, 10)
    torch.manual_seed(0)
    same = spn_log_likelihood(spn, Guide(spn, exact=False), x, num_samples=3000, chunk_size=250)
    torch.testing.assert_close(same, torch.tensor(_BEFORE["leaf"]), rtol=0, atol=1e-5)
    monkeypatch.setitem(log_likelihood.PASS_BUDGET_BYTES, "cpu", budget // 4)  # 250 rows: 1 example
    calls = []
    guide = Guide(spn, exact=False)
    draw = guide.leaf_posterior
    monkeypatch.setattr(guide, "leaf_posterior", lambda xb: calls.append(xb.shape[0]) or draw(xb))
    torch.manual_seed(1)
    split = spn_log_likelihood(spn, guide, x, num_samples=3000, chunk_size=250)
    assert calls == [1] * 48  # 4 examples x 12 chunks of 250
    exact = spn.exact_log_prob(x)
    assert ((exact - split).abs() < 0.08).all(), (split, exact)
    assert ((split - same).abs() > 0).all()  # other draws
