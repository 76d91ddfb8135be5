"""Tests of the deep latent Gaussian mixture family: :class:`pyro_spvae.models.DLGMM`, its guides
(:mod:`pyro_spvae.guides.dlgmm`), :class:`pyro_spvae.infer.MixtureELBO` and :mod:`pyro_spvae.mixtures`.

Ground truth (see ``docs/ground_truth.md`` for linear-Gaussian models): with
``p(z) = sum_k pi_k N(mu_k, I)`` and ``x = W z + b + N(0, s^2 I)``, the marginal is a Gaussian
mixture in ``x``, ``log p(x) = log sum_k pi_k N(x; W mu_k + b, W W^T + s^2 I)``; with mixture
weights drawn per data point (sticks), ``pi`` enters linearly, so ``E[pi]`` replaces it. When ``W``
has orthogonal columns, the posterior of each component is a diagonal Gaussian,
``N(S (mu_k + W^T (x - b) / s^2), S)`` with ``S = (I + W^T W / s^2)^{-1}``, and ``p(k | x)`` is a
softmax of an affine function of ``x``: a linear encoder represents the exact posterior, at which
every bound equals ``log p(x)``.
"""

from __future__ import annotations

import math
import warnings

import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import pytest
import torch
from pyro.infer import SVI, Trace_ELBO, TraceEnum_ELBO, TraceMeanField_ELBO
from pyro.optim import Adam
from torch.distributions import kl_divergence

from pyro_spvae.distributions import StickBreaking, kl_kumaraswamy_beta
from pyro_spvae.guides import EnumeratedMixtureGuide, MixtureGuide, StickBreakingGuide
from pyro_spvae.infer import MixtureELBO, TraceIWAE_ELBO
from pyro_spvae.mixtures import (
    clustering_accuracy,
    components_in_use,
    mixture_weights,
    plot_latent_space,
    responsibilities,
    samples_per_component,
)
from pyro_spvae.models import DLGMM
from pyro_spvae.zoo import MODELS

DT = torch.float64
K, D, X, SIGMA = 3, 2, 4, 0.5


class Truth:
    """The linear-Gaussian mixture of the module docstring (float64)."""

    def __init__(self) -> None:
        g = torch.Generator().manual_seed(0)
        q, _ = torch.linalg.qr(torch.randn(X, X, generator=g, dtype=DT))
        self.W = q[:, :D] * torch.tensor([2.0, 1.5], dtype=DT)
        self.b = 0.3 * torch.randn(X, generator=g, dtype=DT)
        self.mu = torch.tensor([[2.0, 0.0], [-2.0, 1.0], [0.0, -2.0]], dtype=DT)
        self.pi = torch.tensor([0.5, 0.3, 0.2], dtype=DT)
        self.C = self.W @ self.W.T + SIGMA**2 * torch.eye(X, dtype=DT)
        self.S = torch.linalg.inv(torch.eye(D, dtype=DT) + self.W.T @ self.W / SIGMA**2)
        k = torch.multinomial(self.pi, 6, replacement=True, generator=g)
        z = self.mu[k] + torch.randn(6, D, generator=g, dtype=DT)
        self.x = z @ self.W.T + self.b + SIGMA * torch.randn(6, X, generator=g, dtype=DT)

    def log_px(self, weights: torch.Tensor) -> float:
        """Exact ``sum_i log p(x_i)`` with (expected) mixture weights ``weights (K,)``."""
        comp = dist.MultivariateNormal(self.mu @ self.W.T + self.b, self.C)
        return float(torch.logsumexp(weights.log() + comp.log_prob(self.x.unsqueeze(-2)), -1).sum())

    def log_px_global_sticks(self, model: DLGMM, nodes: int = 20) -> float:
        """Exact ``log p(x_1, ..., x_N) = log int p(v) prod_i sum_k pi_k(v) N(x_i; W mu_k + b, C) dv``
        for one set of sticks ``v`` shared by all data (``K - 1 = 2`` Beta sticks): the integrand is
        a polynomial of degree ``<= N + c`` in each stick times the Beta density, so Gauss-Legendre
        with ``nodes`` points per stick is exact for integer concentrations ``c`` (here ``Beta(1, 2)``)."""
        import numpy as np

        t, w = (torch.tensor(a, dtype=DT) for a in np.polynomial.legendre.leggauss(nodes))
        t, w = (t + 1) / 2, w / 2  # nodes and weights on (0, 1)
        v = torch.stack(torch.meshgrid(t, t, indexing="ij"), -1).reshape(-1, 2)  # (nodes^2, K - 1)
        log_w = (w[:, None].log() + w[None, :].log()).reshape(-1)
        log_prior = model.stick_prior().log_prob(v)
        comp = dist.MultivariateNormal(self.mu @ self.W.T + self.b, self.C).log_prob(self.x.unsqueeze(-2))
        log_pi = model.stick_logits(v)  # (nodes^2, K)
        log_lik = torch.logsumexp(log_pi.unsqueeze(-2) + comp, -1).sum(-1)  # (nodes^2,)
        return float(torch.logsumexp(log_w + log_prior + log_lik, 0))

    def posterior_k(self) -> torch.Tensor:
        """Exact ``p(k | x_i)``, shape ``(N, K)``."""
        comp = dist.MultivariateNormal(self.mu @ self.W.T + self.b, self.C)
        return torch.softmax(self.pi.log() + comp.log_prob(self.x.unsqueeze(-2)), -1)

    def model(self, **kw) -> DLGMM:
        m = DLGMM((X,), D, K, hidden=(), likelihood="gaussian", likelihood_kwargs={"min_scale": 0.0},
                  **kw).to(DT)
        with torch.no_grad():
            m.decoder.mlp.layers[0].weight.copy_(self.W)
            m.decoder.mlp.layers[0].bias.copy_(self.b)
            m.likelihood.log_precision.fill_(-2 * math.log(SIGMA))
            m.mixture.locs.copy_(self.mu)
            m.mixture.scales = torch.ones(K, D, dtype=DT)
            if isinstance(m.mixture.logits, torch.nn.Parameter):
                m.mixture.logits.copy_(self.pi.log())
        return m

    def exact_guide(self, guide, noise: float = 0.0, seed: int = 0):
        """Set a linear-encoder guide to the exact posterior (layout ``[logits | locs | raw scales |
        sticks]``), plus ``N(0, noise^2)`` on every encoder weight."""
        n = self.mu @ self.W.T + self.b
        Ci = torch.linalg.inv(self.C)
        blocks_w, blocks_b = [], []
        if not isinstance(guide, StickBreakingGuide) or guide.sticks == "global":
            blocks_w.append(n @ Ci)
            blocks_b.append(self.pi.log() - 0.5 * (n @ Ci * n).sum(-1))
        blocks_w += [(self.S @ self.W.T / SIGMA**2).repeat(K, 1), torch.zeros(K * D, X, dtype=DT)]
        blocks_b += [(self.mu @ self.S.T - self.S @ self.W.T @ self.b / SIGMA**2).reshape(-1),
                     torch.log(torch.expm1(self.S.diagonal().sqrt())).repeat(K)]
        w, b = torch.cat(blocks_w), torch.cat(blocks_b)
        layer = guide.encoder.mlp.layers[0]
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            layer.weight[: len(w)].copy_(w)
            layer.bias[: len(b)].copy_(b)
            layer.weight.add_(noise * torch.randn(layer.weight.shape, generator=g, dtype=DT))
            layer.bias.add_(noise * torch.randn(layer.bias.shape, generator=g, dtype=DT))
        return guide


@pytest.fixture(scope="module")
def truth() -> Truth:
    return Truth()


def _guide(cls, **kw):
    return cls((X,), D, K, hidden=(), min_scale=0.0, **kw).to(DT)


def _expected_weights(model: DLGMM) -> torch.Tensor:
    if model.stick_site is None:
        return model.z_prior().probs.detach()
    return StickBreaking(model.stick_concentration1, model.stick_concentration0).mean


def _pair(truth: Truth, name: str):
    """``(model, guide, elbo factory(num_particles))`` of every guide of the family."""
    vec = {"vectorize_particles": True}
    enum = lambda n: TraceEnum_ELBO(max_plate_nesting=1, num_particles=n, **vec)  # noqa: E731
    return {
        "a": (truth.model(), _guide(MixtureGuide), lambda n: Trace_ELBO(num_particles=n, **vec)),
        "a-iwae": (truth.model(), _guide(MixtureGuide), lambda n: TraceIWAE_ELBO(num_particles=n)),
        "b": (truth.model(component_site=True), _guide(EnumeratedMixtureGuide), enum),
        "c": (truth.model(), _guide(MixtureGuide), lambda n: MixtureELBO(num_particles=n, **vec)),
        "model-enum": (truth.model(component_site=True, enumerate="parallel"), _guide(MixtureGuide), enum),
        "d": (truth.model(prior="dp", weights="local", alpha=2.0), _guide(StickBreakingGuide),
              lambda n: TraceMeanField_ELBO(num_particles=n, **vec)),
        "d+c": (truth.model(prior="dp", weights="local", alpha=2.0), _guide(StickBreakingGuide),
                lambda n: MixtureELBO(num_particles=n, **vec)),
        "d+b": (truth.model(prior="dp", weights="local", alpha=2.0, component_site=True),
                _guide(StickBreakingGuide, components="enumerated"), enum),
        "dirichlet-d": (truth.model(weights="local", alpha=0.7), _guide(StickBreakingGuide),
                        lambda n: Trace_ELBO(num_particles=n, **vec)),
    }[name]


@pytest.mark.parametrize("name", ["a", "a-iwae", "b", "c", "model-enum"])
def test_exact_posterior_makes_every_bound_tight(truth, name):
    model, guide, elbo = _pair(truth, name)
    truth.exact_guide(guide)
    bound = -elbo(4).loss(model, guide, truth.x)
    assert bound == pytest.approx(truth.log_px(truth.pi), abs=1e-8)


@pytest.mark.parametrize("name", ["a", "b", "c", "model-enum", "d", "d+c", "d+b", "dirichlet-d"])
def test_every_bound_stays_below_the_exact_log_likelihood(truth, name):
    model, guide, elbo = _pair(truth, name)
    truth.exact_guide(guide, noise=0.3)
    estimator = elbo(8)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*max_plate_nesting")
        draws = torch.tensor([-estimator.loss(model, guide, truth.x) for _ in range(24)], dtype=DT)
    exact = truth.log_px(_expected_weights(model))
    mean, se = float(draws.mean()), float(draws.std() / math.sqrt(len(draws)))
    assert math.isfinite(mean)
    assert mean <= exact + 3 * se, (mean, se, exact)


@pytest.mark.parametrize("name", ["d", "d+c"])
def test_global_stick_bounds_stay_below_the_exact_log_likelihood(truth, name):
    """One set of DP sticks for all data (``weights="global"``, global Kumaraswamy posterior, guide (a)
    for ``z``): the bound of the whole data set stays below the exact ``log p(x_1..N)``, computed by
    quadrature over the sticks (checked against a finer rule and a Monte Carlo average over the prior)."""
    model = truth.model(prior="dp", weights="global", alpha=2.0)
    guide = truth.exact_guide(_guide(StickBreakingGuide, sticks="global"), noise=0.05)
    elbo = TraceMeanField_ELBO(num_particles=8) if name == "d" else MixtureELBO(num_particles=8)
    exact = truth.log_px_global_sticks(model)
    assert exact == pytest.approx(truth.log_px_global_sticks(model, nodes=40), abs=1e-9)
    # Jensen: log E_v[prod_i p(x_i | v)] >= E_v[sum_i log p(x_i | v)], checked by Monte Carlo
    v = model.stick_prior().sample((20_000,))
    comp = dist.MultivariateNormal(truth.mu @ truth.W.T + truth.b, truth.C).log_prob(truth.x.unsqueeze(-2))
    per_v = torch.logsumexp(model.stick_logits(v).unsqueeze(-2) + comp, -1).sum(-1)
    assert exact >= float(per_v.mean())
    assert exact == pytest.approx(float(torch.logsumexp(per_v, 0) - math.log(len(v))), abs=0.05)
    pyro.set_rng_seed(0)
    draws = torch.tensor([-elbo.loss(model, guide, truth.x) for _ in range(24)], dtype=DT)
    mean, se = float(draws.mean()), float(draws.std() / math.sqrt(len(draws)))
    assert math.isfinite(mean)
    assert mean <= exact + 3 * se, (mean, se, exact)
    assert mean >= exact - 6.0, (mean, exact)  # near the exact posterior of z the gap is a few nats


@pytest.mark.parametrize("name", ["a", "b", "c", "model-enum"])
def test_bounds_near_the_exact_posterior_are_just_below_the_log_likelihood(truth, name):
    """A sharper form of the test above: with the guide 0.02 away from the exact posterior (noise
    on every encoder weight) each bound is within a nat of ``log p(x)`` and still not above it, so an
    estimator that overshot by a fraction of a nat would fail."""
    model, guide, elbo = _pair(truth, name)
    truth.exact_guide(guide, noise=0.02)
    estimator = elbo(8)
    pyro.set_rng_seed(0)
    draws = torch.tensor([-estimator.loss(model, guide, truth.x) for _ in range(24)], dtype=DT)
    exact = truth.log_px(truth.pi)
    mean, se = float(draws.mean()), float(draws.std() / math.sqrt(len(draws)))
    assert exact - 1.0 <= mean <= exact + 3 * se, (mean, se, exact)
    assert se < 0.1


def _enumerated_draws(guide, x, seed: int) -> poutine.Trace:
    """The guide trace TraceEnum_ELBO(max_plate_nesting=1) draws after ``pyro.set_rng_seed(seed)``."""
    pyro.set_rng_seed(seed)
    return poutine.trace(poutine.enum(guide, first_available_dim=-2)).get_trace(x)


@torch.no_grad()
def test_enumerated_guide_equals_brute_force_sum_over_components(truth):
    model, guide, elbo = _pair(truth, "b")
    truth.exact_guide(guide, noise=0.3)
    pyro.set_rng_seed(3)
    loss = elbo(1).loss(model, guide, truth.x)
    z = _enumerated_draws(guide, truth.x, 3).nodes["z"]["value"]  # (K, N, D): one z per component
    assert z.shape == (K, len(truth.x), D)
    q = guide.posterior(truth.x)  # q(k | x) and q(z | x, k)
    log_qk = q.logits.T  # (K, N)
    locs, scales = q.locs.movedim(-2, 0), q.scales.movedim(-2, 0)  # (K, N, D)
    log_qz = dist.Normal(locs, scales).log_prob(z).sum(-1)
    log_pk = model.z_prior().logits.unsqueeze(-1)  # (K, 1)
    prior_k = dist.Normal(model.mixture.locs.unsqueeze(1), model.mixture.scales.unsqueeze(1))
    log_pz = prior_k.log_prob(z).sum(-1)
    log_px = model.decode(z).log_prob(truth.x)
    brute = (log_qk.exp() * (log_pk + log_pz + log_px - log_qk - log_qz)).sum()
    assert -loss == pytest.approx(float(brute), abs=1e-9)


@torch.no_grad()
def test_mixture_elbo_is_the_weighted_per_component_sum(truth):
    model, guide, _ = _pair(truth, "c")
    truth.exact_guide(guide, noise=0.3)
    pyro.set_rng_seed(5)
    loss = MixtureELBO(max_plate_nesting=1).loss(model, guide, truth.x)
    pyro.set_rng_seed(5)
    q = guide.posterior(truth.x)
    eps = torch.randn(q.locs.shape, dtype=DT)  # the draws of MixtureELBO: (N, K, D)
    z = (q.locs + q.scales * eps).movedim(-2, 0)  # (K, N, D)
    log_joint = model.z_prior().log_prob(z) + model.decode(z).log_prob(truth.x)
    by_hand = (q.logits.T.exp() * (log_joint - q.log_prob(z))).sum()
    assert -loss == pytest.approx(float(by_hand), abs=1e-9)


def test_mixture_elbo_gradients_reach_the_weights_and_match_the_loss(truth):
    model, guide, _ = _pair(truth, "c")
    truth.exact_guide(guide, noise=0.3)
    elbo = MixtureELBO(num_particles=2)
    pyro.set_rng_seed(1)
    loss = elbo.differentiable_loss(model, guide, truth.x)
    pyro.set_rng_seed(1)
    assert loss.item() == pytest.approx(elbo.loss(model, guide, truth.x), abs=1e-9)
    loss.backward()
    grad = guide.encoder.mlp.layers[0].bias.grad
    assert grad is not None and bool(grad[:K].abs().gt(0).all())  # the mixture logits get gradient


def test_model_side_enumeration_equals_the_marginal_model(truth):
    marginal, guide, _ = _pair(truth, "a")
    enumerated = truth.model(component_site=True, enumerate="parallel")
    truth.exact_guide(guide, noise=0.3)
    pyro.set_rng_seed(2)
    kw = {"num_particles": 3, "vectorize_particles": True, "max_plate_nesting": 1}
    a = Trace_ELBO(**kw).loss(marginal, guide, truth.x)
    pyro.set_rng_seed(2)
    b = TraceEnum_ELBO(**kw).loss(enumerated, guide, truth.x)
    assert a == pytest.approx(b, abs=1e-9)


def test_responsibilities_at_the_exact_posterior_are_p_k_given_x(truth):
    model, guide, _ = _pair(truth, "a")
    truth.exact_guide(guide)
    r = responsibilities(model, guide, truth.x, num_samples=4000, batch_size=4)
    assert r.shape == (len(truth.x), K) and torch.allclose(r.sum(-1), torch.ones(len(truth.x), dtype=DT))
    assert torch.allclose(r, truth.posterior_k(), atol=0.02)
    assert torch.allclose(mixture_weights(model), truth.pi)


def test_dp_with_excess_truncation_leaves_the_extra_components_unused():
    """Data from the first two of T = 8 well separated components (linear-Gaussian decoder, guide
    heads at the exact per-component posterior): a short training of every parameter moves the
    expected weights beyond the second stick from the prior's 1/4 to a few percent."""
    pyro.set_rng_seed(0)
    n, T, s_z, s_x = 64, 8, 0.5, 0.3
    angle = 2 * math.pi * torch.arange(T) / T
    locs = 5 * torch.stack([angle.cos(), angle.sin()], -1)  # (T, 2) on a circle
    x = locs[torch.arange(n) % 2] + s_z * torch.randn(n, 2) + s_x * torch.randn(n, 2)
    model, guide = MODELS["dlgmm-dp"]((2,), weights="global", alpha=1.0, z_dim=2, num_components=T,
                                      hidden=(), likelihood="gaussian", min_scale=0.0,
                                      likelihood_kwargs={"min_scale": 0.0})
    S, C = 1 / (1 / s_z**2 + 1 / s_x**2), s_z**2 + s_x**2  # per-component posterior and marginal variances
    with torch.no_grad():
        model.mixture.locs.copy_(locs)
        model.mixture.scales = torch.full((T, 2), s_z)
        model.decoder.mlp.layers[0].weight.copy_(torch.eye(2))
        model.decoder.mlp.layers[0].bias.zero_()
        model.likelihood.log_precision.fill_(-2 * math.log(s_x))
        layer = guide.encoder.mlp.layers[0]  # [logits rho(x) | locs | raw scales]
        heads = [locs / C, (S / s_x**2) * torch.eye(2).repeat(T, 1), torch.zeros(2 * T, 2)]
        layer.weight.copy_(torch.cat(heads))
        layer.bias.copy_(torch.cat([-(locs**2).sum(-1) / (2 * C), (S / s_z**2 * locs).reshape(-1),
                                    torch.full((2 * T,), math.log(math.expm1(math.sqrt(S))))]))
    before = mixture_weights(model, guide, x, num_samples=256)
    assert float(before[2:].sum()) > 0.2  # the guide's sticks start at Kumaraswamy(1, 1) = Beta(1, 1)
    svi = SVI(model, guide, Adam({"lr": 0.1}), TraceMeanField_ELBO())
    for _ in range(60):
        svi.step(x)
    weights = mixture_weights(model, guide, x, num_samples=256)
    assert weights.shape == (T,) and float(weights.sum()) == pytest.approx(1.0, abs=1e-5)
    assert float(weights[2:].sum()) < 0.1, weights
    assert float(StickBreaking.gem(1.0, T).mean[2:].sum()) == pytest.approx(0.25)
    assert components_in_use(weights, threshold=0.05) == 2, weights
    assert components_in_use(responsibilities(model, guide, x), threshold=0.05) == 2


def test_clustering_accuracy_with_hungarian_matching():
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 2, 3])
    perm = torch.tensor([2, 0, 3, 1])  # cluster = perm[label]
    result = clustering_accuracy(labels, perm[labels])
    assert result.accuracy == 1.0 and result.mapping == {2: 0, 0: 1, 3: 2, 1: 3}
    clusters = perm[labels].clone()
    clusters[[0, 4]] = torch.tensor([1, 0])  # two examples in the wrong cluster
    assert clustering_accuracy(labels, clusters).accuracy == pytest.approx(6 / 8)
    # more clusters than labels: the surplus cluster cannot be matched
    assert clustering_accuracy(torch.tensor([0, 0, 1, 1]), torch.tensor([0, 2, 1, 1])).accuracy == 0.75
    with pytest.raises(ValueError, match="integer dtype"):
        clustering_accuracy(labels.float(), labels)
    with pytest.raises(TypeError):
        clustering_accuracy([0, 1], labels)
    with pytest.raises(ValueError, match="equal length"):
        clustering_accuracy(labels, labels[:3])
    with pytest.raises(ValueError, match="non-negative"):
        clustering_accuracy(labels - 1, labels)


def test_components_in_use_and_samples_per_component():
    assert components_in_use(torch.tensor([0.5, 0.45, 0.04, 0.01]), threshold=0.02) == 3
    assert components_in_use(torch.eye(4)[[0, 0, 1, 1]], threshold=0.1) == 2  # (N, K) responsibilities
    with pytest.raises(ValueError):
        components_in_use(torch.ones(4) / 4, threshold=1.0)
    model = DLGMM((1, 4, 4), z_dim=2, num_components=3, hidden=(8,))
    samples, order = samples_per_component(model, 5, weights=torch.tensor([0.2, 0.5, 0.3]))
    assert samples.shape == (3, 5, 1, 4, 4) and order.tolist() == [1, 2, 0]
    assert bool(((samples >= 0) & (samples <= 1)).all())


def test_plot_latent_space_is_written_atomically(tmp_path):
    z, labels = torch.randn(50, 5), torch.arange(50) % 3
    path = plot_latent_space(z, labels, tmp_path / "figs" / "latent.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in path.parent.iterdir()) == ["latent.png"]
    plot_latent_space(torch.randn(10, 1), None, path)  # D = 1, no labels: replaces the file
    with pytest.raises(ValueError):
        plot_latent_space(z, labels[:3], path)


SHAPE_CASES = {
    "finite": ({}, MixtureGuide, {}),
    "finite-b": ({"component_site": True}, EnumeratedMixtureGuide, {"enumerate": None}),
    "dp-local": ({"prior": "dp", "weights": "local"}, StickBreakingGuide, {}),
    "dp-global": ({"prior": "dp", "weights": "global"}, StickBreakingGuide, {"sticks": "global"}),
    "dp-local-b": ({"prior": "dp", "weights": "local", "component_site": True}, StickBreakingGuide,
                   {"components": "enumerated", "enumerate": None}),
}


@pytest.mark.parametrize("arch", ["dense", "conv"])
@pytest.mark.parametrize("case", sorted(SHAPE_CASES))
def test_site_shapes_with_vectorised_particles(case, arch):
    model_kw, guide_cls, guide_kw = SHAPE_CASES[case]
    P, B, T, Z = 5, 3, 4, 2
    net = {"z_dim": Z, "num_components": T, "hidden": (8,), "arch": arch, "channels": (4,)}
    model = DLGMM((1, 4, 4), **net, **model_kw)
    guide = guide_cls((1, 4, 4), **net, **guide_kw)
    x = torch.bernoulli(torch.full((B, 1, 4, 4), 0.5))
    with pyro.plate("particles", P, dim=-2):
        guide_trace = poutine.trace(guide).get_trace(x)
        model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(x)
    model_trace.compute_log_prob()
    nodes = model_trace.nodes
    assert nodes["z"]["value"].shape == (P, B, Z)
    assert nodes["x"]["log_prob"].shape == (P, B)
    if "v" in nodes:
        assert nodes["v"]["value"].shape == ((P, B, T - 1) if model.stick_site == "local" else (P, 1, T - 1))
    if model.component_site:
        assert nodes["c"]["value"].shape == (P, B) and nodes["c"]["log_prob"].shape == (P, B)
    assert model.sample(4).shape == (4, 1, 4, 4)
    assert model.sample_latents(4).shape == (4, Z)


def test_enumerated_component_is_vectorised():
    model = DLGMM((1, 4, 4), z_dim=2, num_components=4, hidden=(8,), component_site=True)
    guide = EnumeratedMixtureGuide((1, 4, 4), z_dim=2, num_components=4, hidden=(8,))
    x = torch.bernoulli(torch.full((3, 1, 4, 4), 0.5))
    with pyro.plate("particles", 5, dim=-2):
        guide_trace = poutine.trace(poutine.enum(guide, first_available_dim=-3)).get_trace(x)
    model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(x)
    assert guide_trace.nodes["c"]["value"].shape == (4, 1, 1)
    assert guide_trace.nodes["z"]["value"].shape == (4, 5, 3, 2)
    assert model_trace.nodes["x"]["fn"].batch_shape == (4, 5, 3)


def test_stick_posterior_kl_is_analytic_and_draws_stay_inside_the_unit_interval():
    T = 5
    model = DLGMM((1, 4, 4), z_dim=2, num_components=T, hidden=(8,), prior="dp", weights="local", alpha=2.0)
    guide = StickBreakingGuide((1, 4, 4), z_dim=2, num_components=T, hidden=(8,))
    x = torch.bernoulli(torch.full((3, 1, 4, 4), 0.5))
    q = guide.stick_posterior(x)
    kl = kl_divergence(q, model.stick_prior().expand(q.batch_shape))  # what TraceMeanField_ELBO uses
    a, b = q.base_dist.concentration1, q.base_dist.concentration0
    expected = kl_kumaraswamy_beta(a, b, torch.tensor(1.0), torch.tensor(2.0)).sum(-1)
    assert kl.shape == (3,) and torch.allclose(kl, expected)
    with torch.no_grad():  # b -> its floor 0.01, where torch's Kumaraswamy sampler rounds most draws to 1
        guide.encoder.mlp.layers[-1].bias[-(T - 1):] = -30.0
    with pyro.plate("particles", 2000, dim=-2):
        site = poutine.trace(guide).get_trace(x).nodes["v"]
    v = site["value"]
    assert v.shape == (2000, 3, T - 1) and bool((v > 0).all()) and bool((v < 1).all())
    assert bool(torch.isfinite(site["fn"].log_prob(v)).all())


def test_argument_checks():
    with pytest.raises(TypeError):
        DLGMM((1, 4, 4), num_components=True)
    with pytest.raises(ValueError):
        DLGMM((1, 4, 4), num_components=1)
    with pytest.raises(ValueError, match="unknown prior"):
        DLGMM((1, 4, 4), prior="pitman-yor")
    with pytest.raises(ValueError, match="component_site"):
        DLGMM((1, 4, 4), enumerate="parallel")
    with pytest.raises(ValueError):
        DLGMM((1, 4, 4), prior="dp", alpha=0.0)
    with pytest.raises(ValueError, match="no sticks"):
        DLGMM((1, 4, 4)).stick_prior()
    with pytest.raises(ValueError, match="z_dim >= 2"):
        MixtureGuide((1, 4, 4), z_dim=1)
    with pytest.raises(ValueError, match="unknown components"):
        StickBreakingGuide((1, 4, 4), components="sampled")
    with pytest.raises(ValueError, match="stick sites"):
        MODELS["dlgmm"]((1, 4, 4), guide="d")
    with pytest.raises(ValueError, match="guide 'd'"):
        MODELS["dlgmm-dp"]((1, 4, 4), guide="a")
    with pytest.raises(ValueError, match="unknown DLGMM guide"):
        MODELS["dlgmm"]((1, 4, 4), guide="e")


def test_mixture_elbo_refuses_what_it_cannot_estimate():
    kw = {"z_dim": 2, "num_components": 3, "hidden": (8,)}
    x = torch.bernoulli(torch.full((3, 1, 4, 4), 0.5))
    model, guide = MODELS["dlgmm"]((1, 4, 4), guide="b", enumerate=None, **kw)
    with pytest.raises(TypeError, match="GaussianMixture or MixtureOfDiagNormals"):
        MixtureELBO().loss(model, guide, x)
    with pytest.raises(ValueError, match="marginal model"):
        MixtureELBO().loss(model, MixtureGuide((1, 4, 4), **kw), x)
    with pytest.raises(TypeError):
        MixtureELBO(num_particles=2.0)
