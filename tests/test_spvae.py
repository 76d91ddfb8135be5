"""Tests of the SPVAE model and guide (Tan & Peharz, ICML 2019).

Ground truth: an SPVAE with linear decoders and the Gaussian likelihood has pPCA leaves, whose
marginals ``p(x_R) = N(b_l, W_l W_l^T + diag s_l^2)`` and posteriors are exact, so the SPN's exact
``log p(x)`` is the SPN pushed through the exact leaf log-densities.
"""

from __future__ import annotations

import ast
import math
from pathlib import Path

import pyro
import pyro.distributions as dist
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pyro.infer import SVI, Trace_ELBO, TraceMeanField_ELBO
from torch import nn

from pyro_spvae.distributions import LeafPosterior, LeafPrior, SumProductNetwork, gaussian_quad_form
from pyro_spvae.guides import SPVAEGuide
from pyro_spvae.infer import (
    SPNLeafELBO,
    SPNLeafIWELBO,
    SPNRootIWELBO,
    TraceIWAE_ELBO,
    log_marginal_likelihood,
    spn_log_likelihood,
)
from pyro_spvae.models import SPVAE
from pyro_spvae.nn.conv import ConvDecoder, ConvEncoder
from pyro_spvae.nn.mlp import MLP
from pyro_spvae.nn.stacked import StackedConvDecoder, StackedConvEncoder, StackedMLP
from pyro_spvae.spn import poon_domingos, random_binary_trees
from pyro_spvae.zoo import MODELS, build_spvae

SMALL = (1, 4, 4)


def _small_linear(seed: int = 0) -> SPVAE:
    """4 leaf regions of 2x2 pixels, 2 pPCA leaves each (L = 8), z_dim = 2."""
    torch.manual_seed(seed)
    graph = poon_domingos((4, 4), 2)
    model = SPVAE(SMALL, graph, sum_k=2, leaf_k=2, z_dim=2, hidden=(), likelihood="gaussian")
    with torch.no_grad():
        model.decoder.layers[0].weight.mul_(2.0)
        model.log_scale.uniform_(-1.0, -0.3)
    return model


def _pca_params(model: SPVAE, x: torch.Tensor):
    """Per-leaf W (L, P, d), b (L, P), noise variances (L, P) and patches (B, L, P)."""
    lin = model.decoder.layers[0]
    W, b = lin.weight, lin.bias
    s2 = torch.exp(2 * model.log_scale).reshape(model.num_leaves, -1)
    patches = model.scopes.gather(x).repeat_interleave(model.leaf_k, 1).flatten(-2)  # (B, L, P)
    return W, b, s2, patches


@torch.no_grad()
def exact_leaf_log_prob(model: SPVAE, x: torch.Tensor) -> torch.Tensor:
    """Exact pPCA leaf marginals ``(B, L)`` with the observed pixels only (test-side loop)."""
    W, b, s2, patches = _pca_params(model, x)
    out = torch.zeros(x.shape[0], model.num_leaves)
    for n in range(x.shape[0]):
        for l in range(model.num_leaves):
            o = ~torch.isnan(patches[n, l])
            if o.any():
                cov = W[l][o] @ W[l][o].T + torch.diag(s2[l][o])
                out[n, l] = dist.MultivariateNormal(b[l][o], cov).log_prob(patches[n, l][o])
    return out


@torch.no_grad()
def exact_log_prob(model: SPVAE, x: torch.Tensor) -> torch.Tensor:
    return model.spn_log_value(exact_leaf_log_prob(model, x))


class ExactLeafGuide(nn.Module):
    """The exact pPCA leaf posteriors given the observed pixels (missing pixels drop out)."""

    def __init__(self, model: SPVAE):
        super().__init__()
        self.model = model

    def leaf_posterior(self, x):
        W, b, s2, patches = _pca_params(self.model, x)
        obs = ~torch.isnan(patches)
        sinv = torch.where(obs, 1.0 / s2, torch.zeros_like(patches))  # (B, L, P)
        resid = torch.where(obs, patches - b, torch.zeros_like(patches))
        d = W.shape[-1]
        prec = torch.eye(d) + torch.einsum("lpi,blp,lpj->blij", W, sinv, W)
        cov = torch.linalg.inv(prec)
        cov = 0.5 * (cov + cov.transpose(-1, -2))
        loc = torch.einsum("blij,lpj,blp->bli", cov, W, sinv * resid)
        return dist.MultivariateNormal(loc, cov)

    def forward(self, x):
        with pyro.plate("data", x.shape[0], dim=-1):
            pyro.sample("z", self.leaf_posterior(x).to_event(1))


def _small_data(n=3, seed=1):
    return torch.rand(n, *SMALL, generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------- structure and shapes
def test_default_structure_matches_paper():
    model = SPVAE()
    assert model.num_leaves == 32
    assert model.spn.num_sum_nodes == 167 and model.spn.num_product_nodes == 800
    assert model.scopes.patch_shape == (7, 7) and model.scopes.max_size == 49


def test_forward_sites_and_shapes():
    model, guide = build_spvae(SMALL, region_graph=poon_domingos((4, 4), 2), z_dim=3, hidden=(5,))
    x = _small_data(5)
    tr = pyro.poutine.trace(model).get_trace(x)
    tr.compute_log_prob()
    assert tr.nodes["z"]["value"].shape == (5, model.num_leaves, 3)
    assert tr.nodes["x"]["log_prob"].shape == (5,)
    gtr = pyro.poutine.trace(guide).get_trace(x)
    assert gtr.nodes["z"]["value"].shape == (5, model.num_leaves, 3)
    assert gtr.nodes["z"]["fn"].event_shape == (model.num_leaves, 3)


# ---------------------------------------------------------------- ground truth (pPCA leaves)
@pytest.mark.parametrize("bound", [SPNLeafELBO, SPNLeafIWELBO, SPNRootIWELBO])
def test_exact_posterior_bounds_equal_exact(bound):
    model = _small_linear()
    x = _small_data()
    exact = exact_log_prob(model, x)
    for k in (1, 4):
        est = bound(num_particles=k).per_example_bound(model, ExactLeafGuide(model), x)
        assert torch.allclose(est, exact, atol=2e-3, rtol=0), (k, est, exact)


def test_exact_posterior_with_missing_pixels():
    model = _small_linear()
    x = _small_data()
    x[:, :, 0, :] = math.nan  # the top row is missing
    x[0, :, 2:, 2:] = math.nan  # and a whole leaf region of the first image
    exact = exact_log_prob(model, x)
    est = spn_log_likelihood(model, ExactLeafGuide(model), x, num_samples=8, chunk_size=3)
    assert torch.allclose(est, exact, atol=2e-3, rtol=0)
    # marginalisation lowers the number of observed pixels, so the density is larger than any full one
    full = exact_log_prob(model, _small_data())
    assert torch.isfinite(est).all() and (exact > full).all()


def test_pyro_model_has_the_spn_marginal():
    """``docs/spvae.md``: the plain Pyro model (all leaf latents from the prior, x from the SPN of decoders)
    has the same marginal. Importance sampling on the Pyro model's traces with a defensive proposal
    (per leaf: half prior, half exact leaf posterior, so every weight is at most 2^L p(x)) converges
    to the exact log p(x); the plain Trace_ELBO with the exact leaf posteriors stays below it."""
    model = _small_linear()
    exact_guide = ExactLeafGuide(model)
    x = _small_data()
    exact = exact_log_prob(model, x)

    def defensive_guide(x):
        post = exact_guide.leaf_posterior(x)
        loc = torch.stack([torch.zeros_like(post.loc), post.loc], -2)  # (B, L, 2, d)
        cov = torch.stack([torch.eye(2).expand_as(post.covariance_matrix), post.covariance_matrix], -3)
        half = dist.Categorical(torch.ones(loc.shape[:-1]))
        mix = dist.MixtureSameFamily(half, dist.MultivariateNormal(loc, cov))
        with pyro.plate("data", x.shape[0], dim=-1):
            pyro.sample("z", mix.to_event(1))

    with torch.no_grad():
        res = log_marginal_likelihood(model, defensive_guide, x, num_samples=10000, chunk_size=2500,
                                      progress=False, psis=False, max_plate_nesting=1)
        trace = -Trace_ELBO(num_particles=200, vectorize_particles=True, max_plate_nesting=1).loss(
            model, exact_guide, x)
    est = res.log_px.float()
    assert ((est - exact).abs() < 0.1).all(), (est, exact)
    assert trace < float(exact.sum())  # pays the KL of leaves outside the selected trees


def test_bounds_with_learnt_guide_are_below_exact_and_tighten():
    model = _small_linear()
    guide = SPVAEGuide.from_model(model, hidden=(8,))
    x = _small_data(2)
    exact = exact_log_prob(model, x)
    reps = 100
    xr = x.repeat(reps, 1, 1, 1)
    means = []
    with torch.no_grad():
        for k in (1, 30):
            est = SPNLeafIWELBO(k).per_example_bound(model, guide, xr).reshape(reps, -1)
            mean, se = est.mean(0), est.std(0) / math.sqrt(reps)
            assert (mean <= exact + 4 * se).all()
            means.append((mean, se))
        root = SPNRootIWELBO(30).per_example_bound(model, guide, xr).reshape(reps, -1)
        leaf_elbo = SPNLeafELBO(1).per_example_bound(model, guide, xr).reshape(reps, -1)
    (m1, s1), (m2, s2) = means
    assert (m2 > m1 + 3 * (s1 + s2)).all()
    assert (root.mean(0) <= exact + 4 * root.std(0) / math.sqrt(reps)).all()
    assert (leaf_elbo.mean(0) <= exact).all()
    # The streamed K=1000 evaluator: below the truth and at least as tight as K=30, in expectation
    # over repetitions (a single estimate with an untrained guide is heavy-tailed, so no single
    # draw is compared with the truth).
    reps_big = 20
    with torch.no_grad():
        big = spn_log_likelihood(model, guide, x.repeat(reps_big, 1, 1, 1), num_samples=1000, chunk_size=500)
    big = big.reshape(reps_big, -1)
    mb, sb = big.mean(0), big.std(0) / math.sqrt(reps_big)
    assert (mb <= exact + 4 * sb).all(), (mb, sb, exact)
    assert (mb >= m2 - 3 * (s2 + sb)).all(), (mb, m2)
    assert (exact - mb < exact - m1).all()


# ---------------------------------------------------------------- stacked vs per-leaf evaluation
def _per_leaf_patch(x, model, l):
    r = l // model.leaf_k
    idx = list(model.region_graph.regions[r])
    return x.reshape(x.shape[0], x.shape[1], -1)[:, :, idx].reshape(x.shape[0], -1)


@pytest.mark.parametrize("arch", ["dense", "conv"])
def test_stacked_leaf_networks_match_separate_leaves(arch):
    torch.manual_seed(0)
    ev = (1, 6, 6)
    graph = poon_domingos((6, 6), 3)  # 4 patches of 3x3
    model = SPVAE(ev, graph, leaf_k=2, z_dim=3, hidden=(7,), arch=arch, channels=(4,), likelihood="gaussian")
    guide = SPVAEGuide.from_model(model)
    L = model.num_leaves
    if arch == "dense":
        decs = [MLP(3, (7,), 9, activation="softplus") for _ in range(L)]
        encs = [MLP(9, (7,), 6, activation="softplus") for _ in range(L)]
        model.decoder = StackedMLP.from_modules(decs)
        guide.encoder = StackedMLP.from_modules(encs)
    else:
        decs = [ConvDecoder(3, (1, 3, 3), 1, (4,), (7,), activation="softplus") for _ in range(L)]
        encs = [ConvEncoder((1, 3, 3), 6, (4,), (7,), activation="softplus") for _ in range(L)]
        model.decoder = StackedConvDecoder.from_modules(decs)
        guide.encoder = StackedConvEncoder.from_modules(encs)
    with torch.no_grad():
        model.log_scale.uniform_(-1, 0)
    x = torch.rand(4, *ev)
    z = torch.randn(2, 4, L, 3)  # extra particle dim
    got = model.leaf_log_lik(x, z)
    q = guide.leaf_posterior(x)
    for l in range(L):
        patch = _per_leaf_patch(x, model, l)  # (B, 9)
        mean = decs[l](z[:, :, l]).reshape(2, 4, 9)
        sd = model.log_scale[l].reshape(9).exp()
        want = dist.Normal(mean, sd).log_prob(patch).sum(-1)
        assert torch.allclose(got[..., l], want, atol=1e-4), l
        enc_in = patch if arch == "dense" else patch.reshape(4, 1, 3, 3)
        h = encs[l](enc_in)
        assert torch.allclose(q.base_dist.loc[:, l], h[:, :3], atol=1e-5)
        assert torch.allclose(q.base_dist.scale[:, l], nn.functional.softplus(h[:, 3:]) + 1e-4, atol=1e-5)


def test_guide_fast_path_matches_distribution():
    """``leaf_rsample`` returns log q(z) equal in value AND gradient to leaf_posterior(x).log_prob(z)."""
    model, guide = build_spvae(SMALL, region_graph=poon_domingos((4, 4), 2), z_dim=3, hidden=(5,))
    x = _small_data(4)
    torch.manual_seed(3)
    z, log_q = guide.leaf_rsample(x, 6)
    params = list(guide.parameters())
    w = torch.linspace(0, 1, log_q.numel()).view_as(log_q)  # a generic linear functional
    g_fast = torch.autograd.grad((log_q * w).sum(), params, retain_graph=True)
    # the same noise through the distribution's reparameterisation (rsample's z = loc + scale * eps)
    q = guide.leaf_posterior(x)
    loc, scale = q.base_dist.loc, q.base_dist.scale
    eps = ((z - loc) / scale).detach()
    z2 = loc + scale * eps
    log_q2 = q.log_prob(z2)
    g_slow = torch.autograd.grad((log_q2 * w).sum(), params)
    assert torch.allclose(z, z2, atol=1e-6) and torch.allclose(log_q, log_q2, atol=1e-4)
    for a, b in zip(g_fast, g_slow):
        assert torch.allclose(a, b, atol=1e-4)
    # the fast path's noise is standard normal (fixed seed; 5 standard errors)
    torch.manual_seed(4)
    z, _ = guide.leaf_rsample(x, 4000)
    loc, scale = guide.leaf_posterior(x).base_dist.loc, guide.leaf_posterior(x).base_dist.scale
    eps = ((z - loc) / scale).detach()
    n = eps.numel()
    assert abs(float(eps.mean())) < 5 / n**0.5 and abs(float(eps.var()) - 1) < 5 * (2 / n) ** 0.5


def test_random_binary_tree_leaves_with_padding():
    graph = random_binary_trees(36, depth=3, num_repetitions=2, seed=0, event_shape=(6, 6))
    model, guide = build_spvae((1, 6, 6), region_graph=graph, z_dim=2, hidden=(4,))
    sizes = {len(r) for r in graph.regions[: graph.num_leaf_regions]}
    assert len(sizes) > 1  # unequal leaf regions: padding is exercised
    x = torch.rand(3, 1, 6, 6)
    z = torch.randn(3, model.num_leaves, 2)
    got = model.leaf_log_lik(x, z)
    params = model.decode(z)  # (B, L, 1, S)
    for l in range(model.num_leaves):
        patch = _per_leaf_patch(x, model, l)
        n = patch.shape[1]
        sd = model.log_scale[l, 0, :n].exp()
        want = dist.Normal(params[:, l, 0, :n], sd).log_prob(patch).sum(-1)
        assert torch.allclose(got[:, l], want, atol=1e-4)
    assert math.isfinite(SPNLeafIWELBO(2).loss(model, guide, x))
    s = model.sample(5)
    assert s.shape == (5, 1, 6, 6) and torch.isfinite(s).all()
    with pytest.raises(ValueError, match="rectangles"):
        SPVAE((1, 6, 6), graph, arch="conv")


# ---------------------------------------------------------------- training
ESTIMATORS = {
    "trace": lambda: Trace_ELBO(num_particles=2, vectorize_particles=True, max_plate_nesting=1),
    "iwae": lambda: TraceIWAE_ELBO(num_particles=3, max_plate_nesting=1),
    "spn-leaf": lambda: SPNLeafELBO(1),
    "spn-leaf-iw": lambda: SPNLeafIWELBO(5),
    "spn-root-iw": lambda: SPNRootIWELBO(5),
}


@pytest.mark.parametrize(
    "arch, elbo",
    [("dense", name) for name in sorted(ESTIMATORS)] + [("conv", "trace"), ("conv", "spn-leaf-iw")],
)
def test_trains_a_few_steps(arch, elbo):
    torch.manual_seed(0)
    ev = (1, 8, 8)
    model, guide = build_spvae(ev, region_graph=poon_domingos((8, 8), 4), z_dim=3, hidden=(16,), arch=arch,
                               channels=(4,), likelihood="gaussian")
    base = torch.rand(2, *ev)
    x = (base.repeat(4, 1, 1, 1) + 0.05 * torch.randn(8, *ev)).clamp(0, 1)
    optim = pyro.optim.Adam(lambda name: {"lr": 3e-2 if name.startswith("spn.") else 1e-2})
    svi = SVI(model, guide, optim, ESTIMATORS[elbo]())
    losses = [svi.step(x) for _ in range(15)]
    assert all(math.isfinite(v) for v in losses)
    assert sum(losses[-3:]) < sum(losses[:3])
    spn_params = [p for n, p in pyro.get_param_store().named_parameters() if n.startswith("spn")]
    assert spn_params, "the SPN sum weights must be trained parameters"


@pytest.mark.parametrize("likelihood", ["bernoulli", "binomial"])
def test_discrete_likelihoods(likelihood):
    model, guide = build_spvae(SMALL, region_graph=poon_domingos((4, 4), 2), z_dim=2, hidden=(4,),
                               likelihood=likelihood)
    g = torch.Generator().manual_seed(0)
    if likelihood == "bernoulli":
        x = torch.bernoulli(torch.full((3, *SMALL), 0.5), generator=g)
        bad = torch.full((3, *SMALL), 0.5)
    else:
        x = torch.randint(0, 256, (3, *SMALL), generator=g).float() / 255
        bad = x + 0.5 / 255
    loss = SPNLeafIWELBO(3).loss(model, guide, x)
    assert math.isfinite(loss)
    assert math.isfinite(Trace_ELBO().loss(model, guide, x))
    s = model.sample(7)
    if likelihood == "bernoulli":
        assert ((s == 0) | (s == 1)).all()
    else:
        k = s * 255
        assert torch.allclose(k, k.round(), atol=1e-3) and (s >= 0).all() and (s <= 1).all()
    with pytest.raises(ValueError, match="Bernoulli|Binomial"):
        model(bad)


# ---------------------------------------------------------------- sampling, MPE, inpainting
def test_sampling_and_inpainting():
    torch.manual_seed(0)
    model, guide = build_spvae((1, 8, 8), region_graph=poon_domingos((8, 8), 4), z_dim=3, hidden=(8,))
    s = model.sample(6)
    assert s.shape == (6, 1, 8, 8) and torch.isfinite(s).all()
    means = model.sample(6, mode="mean")
    assert torch.isfinite(means).all()
    x = torch.rand(4, 1, 8, 8)
    xm = x.clone()
    xm[:, :, :4, :] = math.nan  # top half missing: two leaf regions with no evidence
    xm[1, :, 5, 5] = math.nan
    for mode in ("mpe", "sample"):
        out = model.inpaint(xm, guide, num_samples=16, mode=mode)
        observed = ~torch.isnan(xm)
        assert torch.isfinite(out).all()
        assert torch.equal(out[observed], x[observed])
    rec = model.reconstruct(x, guide, num_samples=8)
    assert rec.shape == x.shape and torch.isfinite(rec).all()
    # the Pyro model marginalises missing pixels: its log-density is finite
    tr = pyro.poutine.trace(pyro.poutine.replay(model, pyro.poutine.trace(guide).get_trace(xm))).get_trace(xm)
    assert torch.isfinite(tr.log_prob_sum())


def test_inpainting_selects_the_matching_leaf():
    """With one sum over two leaf VAEs of very different means, the observed half of a patch decides
    which leaf the SPN selects, and the missing half is filled from that leaf's decoder."""
    torch.manual_seed(0)
    graph = poon_domingos((2, 4), 2)  # two leaf regions of 2x2 pixels, one product at the root
    model = SPVAE((1, 2, 4), graph, sum_k=1, leaf_k=2, z_dim=1, hidden=(), likelihood="gaussian")
    with torch.no_grad():
        model.decoder.layers[0].weight.zero_()
        model.decoder.layers[0].bias.copy_(torch.tensor([0.1, 0.9, 0.1, 0.9])[:, None].expand(4, 4))
        model.log_scale.fill_(math.log(0.05))
    guide = SPVAEGuide.from_model(model, hidden=(2,))
    x = torch.full((2, 1, 2, 4), math.nan)
    x[0, 0, 0, :] = 0.9  # top row bright -> leaf 1 in both regions
    x[1, 0, 0, :] = 0.1
    out = model.inpaint(x, guide, num_samples=4, mode="mpe")
    assert torch.allclose(out[0, 0, 1], torch.full((4,), 0.9), atol=1e-5)
    assert torch.allclose(out[1, 0, 1], torch.full((4,), 0.1), atol=1e-5)


# ---------------------------------------------------------------- errors
def test_bad_arguments_raise_clear_errors():
    graph = poon_domingos((4, 4), 2)
    for kw, match in [({"z_dim": 0}, "z_dim"), ({"sum_k": 0}, "sum_k"), ({"leaf_k": -1}, "leaf_k"),
                      ({"likelihood": "poisson"}, "likelihood"), ({"arch": "rnn"}, "arch")]:
        with pytest.raises(ValueError, match=match):
            SPVAE(SMALL, graph, **kw)
    with pytest.raises(ValueError, match="incompatible"):
        SPVAE((1, 5, 5), graph)
    with pytest.raises(TypeError, match="RegionGraph"):
        SPVAE(SMALL, "poon-domingos")
    with pytest.raises(ValueError, match="cannot split"):
        SPVAE((1, 6, 6))
    model, guide = build_spvae(SMALL, region_graph=graph, z_dim=2, hidden=(3,))
    with pytest.raises(ValueError, match="shape"):
        model(torch.rand(3, 16))
    with pytest.raises(ValueError, match="shape"):
        guide(torch.rand(3, 1, 4, 5))
    with pytest.raises(ValueError, match="floating"):
        model(torch.ones(3, *SMALL, dtype=torch.long))
    with pytest.raises(ValueError, match="infinite"):
        model(torch.full((3, *SMALL), math.inf))
    strict = SPVAE(SMALL, graph, z_dim=2, hidden=(3,), allow_missing=False)
    with pytest.raises(ValueError, match="NaN"):
        strict(torch.full((3, *SMALL), math.nan))
    with pytest.raises(ValueError, match="leaf_log_values"):
        model.spn_log_value(torch.zeros(3, 5))
    with pytest.raises(TypeError, match="leaf_posterior"):
        model.inpaint(torch.rand(2, *SMALL), object())
    with pytest.raises(ValueError, match="region_graph type"):
        build_spvae(SMALL, region_graph={"type": "quadtree"})


def test_registry_and_region_graph_specs():
    model, guide = MODELS["spvae"]((1, 8, 8), region_graph={"type": "poon_domingos", "steps": [4]}, z_dim=2,
                                   hidden=[4], mask_input=True)
    assert isinstance(model, SPVAE) and isinstance(guide, SPVAEGuide) and guide.mask_input
    x = torch.rand(2, 1, 8, 8)
    x[0, 0, 0, 0] = math.nan
    assert math.isfinite(SPNLeafIWELBO(2).loss(model, guide, x))
    rbt, _ = MODELS["spvae"]((1, 8, 8), region_graph={"type": "random_binary_trees", "depth": 3, "seed": 1},
                             z_dim=2, hidden=[4])
    assert rbt.num_regions == 8


# ---------------------------------------------------------------- bad x: model and guide (issue 5)
_BAD_X = [
    (lambda: torch.rand(0, *SMALL), ValueError, "x is an empty batch"),
    (lambda: torch.rand(3, *SMALL, dtype=torch.float64), ValueError, "x has dtype torch.float64"),
    (lambda: torch.rand(3, *SMALL).half(), ValueError, "x has dtype torch.float16"),
    (lambda: torch.rand(3, *SMALL).tolist(), TypeError, "x must be a torch.Tensor"),
    (lambda: "images", TypeError, "x must be a torch.Tensor"),
    (lambda: torch.ones(3, *SMALL, dtype=torch.int64), ValueError, "x must have a floating-point dtype"),
    (lambda: torch.rand(3, 1, 4, 5), ValueError, r"x has shape \(3, 1, 4, 5\)"),
    (lambda: torch.rand(1, 3, *SMALL), ValueError, "x has shape"),
    (lambda: torch.rand(3, *SMALL).index_fill_(0, torch.tensor([1]), math.inf), ValueError,
     "x contains infinite values"),
    (lambda: torch.rand(3, *SMALL).index_fill_(0, torch.tensor([2]), -math.inf), ValueError,
     "x contains infinite values"),
]


@pytest.mark.parametrize("make_x, error, match", _BAD_X)
@pytest.mark.parametrize("part", ["model", "guide"])
def test_bad_x_raises_clear_errors(part, make_x, error, match):
    model, guide = build_spvae(SMALL, region_graph=poon_domingos((4, 4), 2), z_dim=2, hidden=(3,))
    with pytest.raises(error, match=match):
        (model if part == "model" else guide)(make_x())


def test_bad_x_in_the_estimators_and_inpainting():
    model, guide = build_spvae(SMALL, region_graph=poon_domingos((4, 4), 2), z_dim=2, hidden=(3,))
    for elbo in (Trace_ELBO(), SPNLeafIWELBO(2)):
        with pytest.raises(ValueError, match="x is an empty batch"):
            elbo.loss(model, guide, torch.rand(0, *SMALL))
        with pytest.raises(ValueError, match="x contains infinite values"):
            elbo.loss(model, guide, torch.full((2, *SMALL), math.inf))
    with pytest.raises(ValueError, match="x has dtype torch.float64"):
        model.inpaint(torch.rand(2, *SMALL, dtype=torch.float64), guide)
    # a float64 model accepts float64 x and rejects float32 x, naming x
    model64, guide64 = model.double(), guide.double()
    assert math.isfinite(Trace_ELBO().loss(model64, guide64, torch.rand(2, *SMALL, dtype=torch.float64)))
    with pytest.raises(ValueError, match="x has dtype torch.float32, expected torch.float64"):
        model64(torch.rand(2, *SMALL))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    batch=st.integers(0, 3),
    likelihood=st.sampled_from(["gaussian", "binomial", "bernoulli"]),
    allow_missing=st.booleans(),
    fill=st.sampled_from([math.nan, math.inf, -math.inf, -0.5, 1.5, 0.3, 7 / 255, 1.0]),
    where=st.integers(0, 15),
    part=st.sampled_from(["model", "guide"]),
)
def test_random_bad_x_gets_only_documented_errors(batch, likelihood, allow_missing, fill, where, part):
    """Random (possibly bad) images give either a result or a ValueError naming x and the problem."""
    torch.manual_seed(0)
    model = SPVAE(SMALL, poon_domingos((4, 4), 2), z_dim=2, hidden=(3,), likelihood=likelihood,
                  allow_missing=allow_missing)
    guide = SPVAEGuide.from_model(model)
    x = torch.randint(0, 2, (batch, *SMALL)).float()  # in every leaf support
    if batch:
        x.view(batch, -1)[:, where] = fill
    if likelihood == "binomial":
        in_support = fill in (7 / 255, 1.0) or math.isnan(fill)
    elif likelihood == "bernoulli":
        in_support = fill == 1.0 or math.isnan(fill)
    else:
        in_support = not math.isinf(fill)
    nan_ok = allow_missing or part == "guide"
    should_pass = batch > 0 and (math.isnan(fill) and nan_ok or not math.isnan(fill) and
                                 (in_support if part == "model" else not math.isinf(fill)))
    if should_pass:
        (model if part == "model" else guide)(x)
        return
    documented = (r"^x (is an empty batch|contains (NaN|infinite) values|has \d+ values "
                  r"outside the support of the (Bernoulli|Binomial\(255\)) leaf)")
    with pytest.raises(ValueError, match=documented):
        (model if part == "model" else guide)(x)


# ---------------------------------------------------------------- fast paths equal the plain formulas
def test_fused_gaussian_quadratic_form_gradcheck():
    torch.manual_seed(0)
    x = torch.randn(3, 1, 4, 6, dtype=torch.float64, requires_grad=True)
    mu = torch.randn(3, 2, 4, 6, dtype=torch.float64, requires_grad=True)
    s = torch.randn(3, 1, 1, 6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(gaussian_quad_form, (x, mu, s))
    ref = -0.5 * (((x - mu) * torch.exp(-s)) ** 2).sum(-1)
    assert torch.allclose(gaussian_quad_form(x, mu, s), ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("likelihood", ["gaussian", "bernoulli", "binomial"])
@pytest.mark.parametrize("missing", [False, True])
def test_leaf_major_leaf_log_lik_matches_generic_path(likelihood, missing):
    """The dense leaf-major path (fused Gaussian, no layout copies) equals the generic path in value
    and gradient, with and without missing pixels and on a graph with padded leaf regions."""
    torch.manual_seed(0)
    for graph in (poon_domingos((4, 4), 2), random_binary_trees(16, depth=3, seed=1, event_shape=(4, 4))):
        model = SPVAE(SMALL, graph, z_dim=2, hidden=(3,), likelihood=likelihood).double()
        x = torch.randint(0, 2, (3, *SMALL)).double()
        if missing:
            x[0, 0, 1, :] = math.nan
        z = torch.randn(2, 1, model.num_leaves, 2, dtype=torch.float64)
        # z with the batch of x takes the leaf-major path; z broadcasting against it the generic one
        fast = model.leaf_log_lik(x, z.expand(2, 3, -1, -1))
        slow = model.leaf_log_lik(x, z)
        assert fast.shape == slow.shape == (2, 3, model.num_leaves)
        w = torch.linspace(0.5, 1.5, fast.numel(), dtype=torch.float64).view_as(fast)
        params = list(model.parameters())
        g_fast = torch.autograd.grad((fast * w).sum(), params, allow_unused=True)
        g_slow = torch.autograd.grad((slow * w).sum(), params, allow_unused=True)
        assert torch.allclose(fast, slow, rtol=1e-10, atol=1e-10)
        for a, b in zip(g_fast, g_slow):
            assert (a is None and b is None) or torch.allclose(a, b, rtol=1e-10, atol=1e-10)


def test_site_distributions_match_normal():
    """The model's prior and the guide's site distribution equal Normal(...).to_event(2) in log_prob
    (value and gradient), and their KL is the analytic one (TraceMeanField_ELBO)."""
    model, guide = build_spvae(SMALL, region_graph=poon_domingos((4, 4), 2), z_dim=3, hidden=(5,))
    x = _small_data(4)
    torch.manual_seed(1)
    gtr = pyro.poutine.trace(guide).get_trace(x)
    mtr = pyro.poutine.trace(pyro.poutine.replay(model, gtr)).get_trace(x)
    q, p, z = gtr.nodes["z"]["fn"], mtr.nodes["z"]["fn"], gtr.nodes["z"]["value"]
    ref_q = dist.Normal(q.loc, q.scale).to_event(2)
    ref_p = dist.Normal(0.0, 1.0).expand(z.shape).to_event(2)
    params = list(guide.parameters())
    lq = q.log_prob(z)  # the fused quadratic form, differentiated through z
    for a, b in zip(torch.autograd.grad(lq.sum(), params, retain_graph=True),
                    torch.autograd.grad(ref_q.log_prob(z).sum(), params, retain_graph=True)):
        assert torch.allclose(a, b, atol=1e-5)
    assert torch.allclose(lq, ref_q.log_prob(z), atol=1e-4)
    assert torch.allclose(q.log_prob(z.detach().clone()), ref_q.log_prob(z), atol=1e-4)  # general formula
    assert torch.allclose(p.log_prob(z), ref_p.log_prob(z), atol=1e-4)
    kl = torch.distributions.kl_divergence(q, p)
    assert torch.allclose(kl, torch.distributions.kl_divergence(ref_q, ref_p), atol=1e-4)
    assert torch.allclose(q.entropy(), ref_q.entropy(), atol=1e-4)
    assert math.isfinite(TraceMeanField_ELBO().loss(model, guide, x))


# ---------------------------------------------------------------- sites and layering
def test_sites_use_the_public_distributions_and_sample_through_the_model():
    """Site ``z`` is a LeafPrior (model) / LeafPosterior (guide); site ``x`` is the package's one SPN
    distribution with the leaf VAEs as callable leaves, and drawing from it decodes the given z."""
    torch.manual_seed(4)
    model, guide = build_spvae(SMALL, region_graph=poon_domingos((4, 4), 2), z_dim=2, hidden=(3,),
                               likelihood="bernoulli")
    x = torch.bernoulli(torch.full((3, *SMALL), 0.5))
    x[0, 0, 0, 0] = math.nan
    gtr = pyro.poutine.trace(guide).get_trace(x)
    mtr = pyro.poutine.trace(pyro.poutine.replay(model, gtr)).get_trace(x)
    assert isinstance(gtr.nodes["z"]["fn"], LeafPosterior) and isinstance(mtr.nodes["z"]["fn"], LeafPrior)
    d = mtr.nodes["x"]["fn"]
    assert isinstance(d, SumProductNetwork) and d.batch_shape == (3,) and d.event_shape == SMALL
    z = gtr.nodes["z"]["value"]
    want = model.spn_log_value(model.leaf_log_lik(x, z))
    assert torch.allclose(d.log_prob(x), want) and torch.isfinite(want).all()
    s = d.sample((2,))
    assert s.shape == (2, 3, *SMALL) and ((s == 0) | (s == 1)).all()
    free = pyro.poutine.trace(pyro.poutine.uncondition(model)).get_trace(x)
    assert free.nodes["x"]["value"].shape == (3, *SMALL)


def test_guide_imports_nothing_from_models():
    tree = ast.parse((Path(__file__).parents[1] / "guides" / "spvae.py").read_text())
    modules = [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    modules += [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    assert modules and not [m for m in modules if "models" in m], modules


# ----------------------------------------------------------------------------- reference leaves
# (the SPVAE reference code's leaf VAEs, Tan & Peharz 2019: predicted precision 1 + g^2 with a sigmoid
# mean, squeezed Binomial, separate heads for dense leaves; see docs/spvae.md and the paper-* presets)
REFERENCE_LEAVES = {
    "dense": dict(arch="dense", hidden=(4,), decoder_heads="separate", encoder_heads="separate"),
    "conv": dict(arch="conv", hidden=(), guide_hidden=(5,), channels=(2, 3), stride=1, out_layer="deconv"),
}
REFERENCE_LIKELIHOODS = {
    "gaussian": {"scale": "precision", "loc": "sigmoid"},
    "binomial": {"eps": 1e-7},
}


def _reference_spvae(arch, likelihood):
    torch.manual_seed(0)
    model, guide = build_spvae((1, 6, 6), region_graph=poon_domingos((6, 6), 3), z_dim=2, init="tf1",
                               posterior_scale="precision", likelihood=likelihood,
                               likelihood_kwargs=REFERENCE_LIKELIHOODS[likelihood], **REFERENCE_LEAVES[arch])
    return model.double(), guide.double()


def _reference_data(likelihood, n=3):
    k = torch.randint(0, 256, (n, 1, 6, 6), generator=torch.Generator().manual_seed(3)).double()
    return k / 255 if likelihood == "binomial" else (k + 0.5) / 256


@pytest.mark.parametrize("arch", ["dense", "conv"])
@pytest.mark.parametrize("likelihood", ["gaussian", "binomial"])
def test_reference_leaves_are_the_reference_densities(arch, likelihood):
    """Every leaf's log-likelihood equals the reference formula on its patch, on the leaf-major
    path and the generic one (values and gradients), and the guide's scale is 1 / sqrt(1 + f^2)."""
    model, guide = _reference_spvae(arch, likelihood)
    assert model.num_params == (2 if likelihood == "gaussian" else 1) and not hasattr(model, "log_scale")
    x = _reference_data(likelihood)
    z, log_q = guide.leaf_rsample(x, 4)  # (4, B, L, z)
    torch.testing.assert_close(log_q, guide.leaf_posterior(x).log_prob(z), rtol=1e-10, atol=1e-10)
    assert bool((guide.leaf_posterior(x).base_dist.scale <= 1).all())
    z = z[:, :1]  # (4, 1, L, z): broadcast against the batch (generic path) or expanded (leaf-major)
    fast, slow = model.leaf_log_lik(x, z.expand(4, 3, -1, -1)), model.leaf_log_lik(x, z)
    p = model.scopes.per_component(model.scopes.gather(x), model.leaf_k)  # (B, L, 9)
    params = model.decode(z).flatten(-2).chunk(model.num_params, -1)
    if likelihood == "gaussian":
        prec = 1 + params[1] ** 2
        dens = 0.5 * torch.log(prec / (2 * math.pi)) - 0.5 * prec * (p - torch.sigmoid(params[0])) ** 2
        want = dens.sum(-1)
    else:
        k, q, e = (p * 255).round(), torch.sigmoid(params[0]) * (1 - 2e-7) + 1e-7, 1e-7
        log_c = math.lgamma(256) - torch.lgamma(k + 1) - torch.lgamma(256 - k)
        want = (k * torch.log(e + q) + (255 - k) * torch.log(e + 1 - q) + log_c).sum(-1)
    assert fast.shape == slow.shape == want.shape == (4, 3, model.num_leaves)
    torch.testing.assert_close(fast, want, rtol=1e-9, atol=1e-6)
    torch.testing.assert_close(slow, want, rtol=1e-9, atol=1e-6)
    grads = [torch.autograd.grad(out.sum(), list(model.decoder.parameters())) for out in (fast, slow)]
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-8)


@pytest.mark.parametrize("arch", ["dense", "conv"])
def test_reference_leaves_train_sample_and_inpaint(arch):
    model, guide = _reference_spvae(arch, "gaussian")
    x = _reference_data("gaussian", n=4)
    loss = SPNLeafIWELBO(5).differentiable_loss(model, guide, x)
    loss.backward()
    assert math.isfinite(float(loss.detach()))
    assert all(p.grad is not None for p in model.decoder.parameters())
    images = model.sample(3)
    assert images.shape == (3, 1, 6, 6) and torch.isfinite(images).all()
    holed = x.clone()
    holed[:, :, :3] = math.nan
    filled = model.inpaint(holed, guide, num_samples=4)
    assert torch.isfinite(filled).all() and torch.equal(filled[:, :, 3:], x[:, :, 3:])


def test_reference_leaf_options_are_checked():
    with pytest.raises(ValueError, match="likelihood options"):
        SPVAE(SMALL, poon_domingos((4, 4), 2), likelihood="bernoulli", likelihood_kwargs={"eps": 1e-7})
    with pytest.raises(ValueError, match="gaussian leaf scale"):
        SPVAE(SMALL, poon_domingos((4, 4), 2), likelihood_kwargs={"scale": "global"})
    with pytest.raises(ValueError, match="decoder_heads"):
        SPVAE(SMALL, poon_domingos((4, 4), 2), decoder_heads="both")
    model = SPVAE(SMALL, poon_domingos((4, 4), 2))
    with pytest.raises(ValueError, match="encoder_heads"):
        SPVAEGuide.from_model(model, encoder_heads="both")
