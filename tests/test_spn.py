"""SumProductNetwork distribution: normalisation, marginals, sampling, MPE, inpainting, validation.

MPE semantics tested here (and documented in :mod:`pyro_spvae.spn.network`): ``mpe`` maximises the
max-product value ``max_log_prob`` (max over induced trees of the weighted product of leaf densities)
over all completions of the evidence.
"""

import itertools
import math

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from scipy import stats

from pyro_spvae.distributions import SumProductNetwork
from pyro_spvae.spn import SPN, LeafScopes, poon_domingos, random_binary_trees

NAN = float("nan")


def _states(num_vars: int, num_values: int) -> torch.Tensor:
    return torch.tensor(list(itertools.product(range(num_values), repeat=num_vars)), dtype=torch.float32)


def _bernoulli_grid_spn(**kw) -> SPN:
    return SPN(poon_domingos((2, 3), 1), num_sums=3, leaves="bernoulli", **kw)


def _bernoulli_rat_spn() -> SPN:
    return SPN(random_binary_trees(6, depth=2, num_repetitions=3, seed=0), num_sums=2, num_leaf_components=3)


CASES = {
    "bernoulli-grid": (_bernoulli_grid_spn, 2),
    "bernoulli-rat": (_bernoulli_rat_spn, 2),
    "categorical-rat": (
        lambda: SPN(random_binary_trees(4, 1, 2, seed=3), 3, "categorical", num_categories=3),
        3,
    ),
    "binomial-grid": (lambda: SPN(poon_domingos((2, 2), 1), 2, "binomial", total_count=2), 3),
    # more sums than leaf components: leaf value vectors are -inf padded inside the layers
    "bernoulli-grid-k4l2": (lambda: SPN(poon_domingos((3, 2), 1), num_sums=4, num_leaf_components=2), 2),
}


def _chi2_pvalue(samples_idx: np.ndarray, probs: np.ndarray) -> float:
    """Chi-square goodness of fit; cells with expected count < 5 are merged into one."""
    n = len(samples_idx)
    counts = np.bincount(samples_idx, minlength=len(probs)).astype(float)
    exp = probs * n
    small = exp < 5
    obs_c = np.append(counts[~small], counts[small].sum())
    exp_c = np.append(exp[~small], exp[small].sum())
    if exp_c[-1] == 0:
        obs_c, exp_c = obs_c[:-1], exp_c[:-1]
    exp_c *= obs_c.sum() / exp_c.sum()
    return float(stats.chisquare(obs_c, exp_c).pvalue)


def _index(x: torch.Tensor, num_values: int) -> np.ndarray:
    w = num_values ** torch.arange(x.shape[-1] - 1, -1, -1)
    return (x.long() * w).sum(-1).numpy()


@pytest.mark.parametrize("case", sorted(CASES))
def test_sums_to_one_over_all_states(case):
    torch.manual_seed(0)
    make, nv = CASES[case]
    spn = make()
    X = _states(spn.graph.num_vars, nv).reshape(-1, *spn.event_shape)
    lp = SumProductNetwork(spn, validate_args=True).log_prob(X)
    assert lp.shape == (nv**spn.graph.num_vars,)
    assert abs(torch.logsumexp(lp, 0).item()) < 1e-5
    # all missing -> log 1
    assert abs(spn.log_prob(torch.full(spn.event_shape, NAN)).item()) < 1e-5


@pytest.mark.parametrize("case", sorted(CASES))
def test_marginalisation_equals_explicit_sum(case):
    torch.manual_seed(1)
    make, nv = CASES[case]
    spn = make()
    V = spn.graph.num_vars
    X = _states(V, nv)
    lp = spn.log_prob(X.reshape(-1, *spn.event_shape)).double()
    x0 = X[torch.randint(len(X), ())]
    for mask in itertools.product([False, True], repeat=V):
        mask_t = torch.tensor(mask)
        ev = torch.where(mask_t, torch.tensor(NAN), x0)
        consistent = (X[:, ~mask_t] == x0[~mask_t]).all(-1)
        explicit = torch.logsumexp(lp[consistent], 0)
        got = spn.log_prob(ev.reshape(spn.event_shape)).double()
        assert abs(got - explicit) < 1e-5, mask


@pytest.mark.parametrize(
    "case", ["bernoulli-grid", "bernoulli-rat", "categorical-rat", "bernoulli-grid-k4l2"]
)
def test_sample_frequencies(case):
    torch.manual_seed(2)
    make, nv = CASES[case]
    spn = make()
    V = spn.graph.num_vars
    X = _states(V, nv)
    probs = spn.log_prob(X.reshape(-1, *spn.event_shape)).double().exp().detach().numpy()
    d = SumProductNetwork(spn)
    s = d.sample((20000,))
    assert s.shape == (20000, *spn.event_shape)
    assert _chi2_pvalue(_index(s.reshape(-1, V), nv), probs / probs.sum()) > 1e-3


def test_sample_frequencies_detect_wrong_distribution():
    """The chi-square check has power: samples of a different SPN are rejected."""
    torch.manual_seed(3)
    spn, other = _bernoulli_grid_spn(), _bernoulli_grid_spn()
    probs = spn.log_prob(_states(6, 2).reshape(-1, 2, 3)).double().exp().detach().numpy()
    s = other.sample((20000,)).reshape(-1, 6)
    assert _chi2_pvalue(_index(s, 2), probs / probs.sum()) < 1e-3


@pytest.mark.parametrize("case", ["bernoulli-grid", "categorical-rat"])
def test_conditional_sampling_matches_brute_force(case):
    torch.manual_seed(4)
    make, nv = CASES[case]
    spn = make()
    V = spn.graph.num_vars
    X = _states(V, nv)
    lp = spn.log_prob(X.reshape(-1, *spn.event_shape)).double()
    observed = torch.zeros(V, dtype=torch.bool)
    observed[[0, V - 1]] = True
    x0 = X[5]
    ev = torch.where(observed, x0, torch.tensor(NAN))
    consistent = (X[:, observed] == x0[observed]).all(-1)
    cond = torch.where(consistent, lp, torch.tensor(-math.inf, dtype=lp.dtype))
    cond = (cond - torch.logsumexp(cond, 0)).exp().detach().numpy()
    s = SumProductNetwork(spn).sample((20000,), evidence=ev.reshape(spn.event_shape)).reshape(-1, V)
    assert (s[:, observed] == x0[observed]).all()
    assert not torch.isnan(s).any()
    assert _chi2_pvalue(_index(s, nv), cond) > 1e-3


@pytest.mark.parametrize("case", sorted(CASES))
def test_mpe_equals_brute_force(case):
    torch.manual_seed(5)
    make, nv = CASES[case]
    spn = make()
    V = spn.graph.num_vars
    X = _states(V, nv).reshape(-1, *spn.event_shape)
    maxval = spn.max_log_prob(X)
    # the max-product value lower-bounds the sum-product value
    assert (maxval <= spn.log_prob(X) + 1e-5).all()
    x_mpe = SumProductNetwork(spn).mpe()
    assert x_mpe.shape == spn.event_shape
    torch.testing.assert_close(spn.max_log_prob(x_mpe), maxval.max())
    torch.testing.assert_close(spn.max_log_prob(torch.full(spn.event_shape, NAN)), maxval.max())
    # conditional MPE (batch of evidence): maximum over completions only
    flat = X.reshape(len(X), V)
    evid = flat[[3, 10, 17]].clone()
    evid[:, [1, 2]] = NAN
    got = spn.mpe(evid.reshape(3, *spn.event_shape)).reshape(3, V)
    for e, g in zip(evid, got):
        obs = ~torch.isnan(e)
        assert (g[obs] == e[obs]).all()
        consistent = (flat[:, obs] == e[obs]).all(-1)
        torch.testing.assert_close(spn.max_log_prob(g.reshape(spn.event_shape)), maxval[consistent].max())


def test_normal_leaves_integrate_to_one():
    torch.manual_seed(6)
    spn = SPN(random_binary_trees(2, depth=1, num_repetitions=1, seed=0), num_sums=3, leaves="normal")
    spn = spn.double()
    grid = torch.linspace(-12, 12, 801, dtype=torch.float64)
    xx, yy = torch.meshgrid(grid, grid, indexing="ij")
    dens = spn.log_prob(torch.stack([xx, yy], -1)).exp()
    total = torch.trapezoid(torch.trapezoid(dens, grid, dim=1), grid, dim=0)
    assert abs(total.item() - 1) < 1e-4
    # marginal of x0 by NaN equals numerical integration over x1
    x0 = torch.tensor([-0.7, 0.3, 1.9], dtype=torch.float64)
    pts = torch.stack([x0[:, None].expand(3, len(grid)), grid.expand(3, len(grid))], -1)
    numeric = torch.trapezoid(spn.log_prob(pts).exp(), grid, dim=1).log()
    marg = spn.log_prob(torch.stack([x0, torch.full_like(x0, NAN)], -1))
    torch.testing.assert_close(marg, numeric, atol=1e-6, rtol=1e-6)


def test_linear_gaussian_leaves_give_exact_mixture():
    """External leaves: pPCA leaf marginals N(b, W W^T + s^2 I); the SPN is the exact mixture."""
    torch.manual_seed(7)
    g = random_binary_trees(4, depth=1, num_repetitions=2, seed=1)
    K = 2
    spn = SPN(g, num_sums=K, leaves=None).double()
    L = g.num_leaf_regions
    regions = [list(g.regions[l]) for l in range(L)]
    W = torch.randn(L, K, 2, 1, dtype=torch.float64)
    b = torch.randn(L, K, 2, dtype=torch.float64)
    cov = W @ W.transpose(-1, -2) + 0.3 * torch.eye(2, dtype=torch.float64)
    leaf_dist = dist.MultivariateNormal(b, cov)  # batch (L, K), event 2 (all regions have 2 vars)

    def leaf_log_prob(x):
        xr = torch.stack([x[..., r] for r in regions], -2)  # (..., L, 2)
        return leaf_dist.log_prob(xr.unsqueeze(-2))  # (..., L, K)

    x = torch.randn(5, 4, dtype=torch.float64)
    d = SumProductNetwork(spn, leaf_log_prob=leaf_log_prob)
    got = d.log_prob(x)
    # explicit mixture: root partitions p (mixing weight) x child pairs (i, j) (einsum weight)
    layer = spn.layers[-1]
    mixw, logw = layer.mixing_log_weights()[0, :, 0], layer.einsum.log_weights()[..., 0]
    lp = leaf_log_prob(x)
    terms = []
    for m, q in enumerate(layer.table[0].tolist()):
        part = g.partitions[g.layers[0].start + q]
        for i in range(K):
            for j in range(K):
                terms.append(mixw[m] + logw[q, i, j] + lp[:, part.left, i] + lp[:, part.right, j])
    torch.testing.assert_close(got, torch.logsumexp(torch.stack(terms, -1), -1))
    # and the mixture is a Gaussian mixture over R^4: check against a MultivariateNormal mixture
    mix_lp = []
    for m, q in enumerate(layer.table[0].tolist()):
        part = g.partitions[g.layers[0].start + q]
        for i in range(K):
            for j in range(K):
                idx = regions[part.left] + regions[part.right]
                mean = torch.cat([b[part.left, i], b[part.right, j]])
                c = torch.block_diag(cov[part.left, i], cov[part.right, j])
                xi = x[:, idx]
                mix_lp.append(mixw[m] + logw[q, i, j] + dist.MultivariateNormal(mean, c).log_prob(xi))
    torch.testing.assert_close(got, torch.logsumexp(torch.stack(mix_lp, -1), -1))
    # leaf tensor form: batch shape from the tensor
    d2 = SumProductNetwork(spn, leaf_log_prob=lp)
    assert d2.batch_shape == (5,)
    torch.testing.assert_close(d2.log_prob(x), got)


def test_external_leaf_component_selection_matches_builtin():
    torch.manual_seed(8)
    spn = _bernoulli_grid_spn()
    ext = SPN(spn.graph, num_sums=3, leaves=None)
    ext.load_state_dict({k: v for k, v in spn.state_dict().items() if not k.startswith("leaves.")})
    x = torch.bernoulli(torch.full((4, 2, 3), 0.5))
    x[:, 0, 1] = NAN
    torch.testing.assert_close(ext(spn.leaf_log_prob(x)), spn.log_prob(x))
    k = ext.select_leaf_components(spn.leaf_log_prob(x, "max"), mode="mpe")
    assert k.shape == (4, spn.num_leaf_regions)
    mpe = spn.mpe(x)
    chosen = spn.leaves.sample(k, "mpe")
    torch.testing.assert_close(
        torch.where(torch.isnan(x.reshape(4, 6)), chosen, x.reshape(4, 6)), mpe.reshape(4, 6)
    )
    with pytest.raises(ValueError, match="probability zero"):
        ext.select_leaf_components(torch.full((ext.num_leaf_regions, 3), -math.inf))
    with pytest.raises(NotImplementedError, match="built-in leaves"):
        SumProductNetwork(ext, leaf_log_prob=spn.leaf_log_prob(x)).sample()


def test_selected_leaf_regions_form_an_induced_tree():
    """Every selection covers each variable by exactly one selected leaf region (RAT, 3 repetitions)."""
    torch.manual_seed(10)
    g = random_binary_trees(7, depth=2, num_repetitions=3, seed=4)
    spn = SPN(g, 3, leaves=None)
    for mode in ("sample", "mpe"):
        k = spn.select_leaf_components(torch.randn(200, g.num_leaf_regions, 3), mode=mode)
        assert k.shape == (200, g.num_leaf_regions) and int(k.max()) < 3
        cover = torch.zeros(200, 7, dtype=torch.long)
        for l, region in enumerate(g.regions[: g.num_leaf_regions]):
            cover[:, list(region)] += (k[:, l] >= 0).long().unsqueeze(-1)
        assert (cover == 1).all()
    # sampling uses different repetitions / sub-trees
    k = spn.select_leaf_components(torch.zeros(500, g.num_leaf_regions, 3))
    assert len({tuple((row >= 0).tolist()) for row in k}) > 1


def test_shapes_expand_and_pyro_integration():
    torch.manual_seed(9)
    spn = _bernoulli_grid_spn()
    d = SumProductNetwork(spn)
    assert d.batch_shape == () and d.event_shape == (2, 3)
    e = d.expand((4,))
    assert e.batch_shape == (4,) and e.sample((2,)).shape == (2, 4, 2, 3)
    assert e.mpe().shape == (4, 2, 3)
    x = torch.bernoulli(torch.full((4, 2, 3), 0.3))
    torch.testing.assert_close(e.log_prob(x), spn.log_prob(x))
    assert e.log_prob(x[0]).shape == (4,)
    ev = x.clone()
    ev[:, 1] = NAN
    s = e.sample((3,), evidence=ev)
    assert s.shape == (3, 4, 2, 3) and (s[:, :, 0] == x[:, 0]).all()

    def model(data):
        pyro.module("spn", spn)
        with pyro.plate("data", data.shape[0]):
            pyro.sample("x", SumProductNetwork(spn), obs=data)

    tr = pyro.poutine.trace(model).get_trace(x)
    torch.testing.assert_close(tr.log_prob_sum(), spn.log_prob(x).sum())
    assert "spn$$$layers.0.einsum.logits" in pyro.get_param_store()


def test_validation_errors():
    spn = _bernoulli_grid_spn()
    d = SumProductNetwork(spn, validate_args=True)
    with pytest.raises(ValueError, match="must have shape"):
        d.log_prob(torch.zeros(3, 3))
    with pytest.raises(ValueError, match="outside the leaves' support"):
        d.log_prob(torch.full((2, 3), 0.5))
    with pytest.raises(ValueError, match="floating-point"):
        d.log_prob(torch.zeros(2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="does not broadcast"):
        d.expand((4,)).log_prob(torch.zeros(3, 2, 3))
    with pytest.raises(ValueError, match="allow_missing=False"):
        SumProductNetwork(spn, allow_missing=False, validate_args=True).log_prob(torch.full((2, 3), NAN))
    assert torch.isfinite(d.log_prob(torch.full((2, 3), NAN)))
    cat = CASES["categorical-rat"][0]()
    with pytest.raises(ValueError, match="support"):
        SumProductNetwork(cat, validate_args=True).log_prob(torch.tensor([0.0, 1.0, 3.0, 2.0]))
    binom = CASES["binomial-grid"][0]()
    with pytest.raises(ValueError, match="support"):
        SumProductNetwork(binom, validate_args=True).log_prob(torch.tensor([[0.0, 1.0], [3.0, 2.0]]))
    normal = SPN(random_binary_trees(2, 1), 2, "normal")
    with pytest.raises(ValueError, match="infinite"):
        SumProductNetwork(normal, validate_args=True).log_prob(torch.tensor([0.0, math.inf]))
    with pytest.raises(TypeError, match="must be a pyro_spvae.spn.SPN"):
        SumProductNetwork("spn")
    with pytest.raises(ValueError, match="leaf_log_prob must have shape"):
        SumProductNetwork(spn, leaf_log_prob=torch.zeros(2, 7, 3))
    with pytest.raises(ValueError, match="outside the leaves' support"):
        d.sample(evidence=torch.full((2, 3), 2.0))


# ---------------------------------------------------------------- leaf scopes
def test_leaf_scopes_gather_scatter_flat_and_images():
    """One index/mask implementation: flat variables (factorised leaves) and images (SPVAE)."""
    g = random_binary_trees(6, depth=2, seed=1, event_shape=(2, 3))  # unequal leaf regions: padding
    flat = LeafScopes(g)
    regions = g.regions[: g.num_leaf_regions]
    assert flat.index.shape == flat.mask.shape == (len(regions), max(map(len, regions)))
    assert flat.event_shape == (6,) and flat.patch_shape is None
    x = torch.arange(12.0).reshape(2, 6)
    values = flat.gather(x)  # (B, R, S)
    for r, region in enumerate(regions):
        torch.testing.assert_close(values[:, r, : len(region)], x[:, list(region)])
    active = torch.ones(2, len(regions), dtype=torch.bool)
    torch.testing.assert_close(flat.scatter(values, active), x)
    x_nan = x.clone()
    x_nan[0, 0] = NAN
    got, obs = flat.gather_observed(x_nan)
    assert obs is not None and obs.sum() == 11 and (got[~obs] == 0).all()
    # images: every channel of a pixel belongs to the pixel's region; rectangles give patch_shape
    img = LeafScopes(poon_domingos((4, 4), 2), (3, 4, 4))
    assert img.patch_shape == (2, 2) and img.patch_numel == 12
    xi = torch.randn(5, 3, 4, 4)
    p = img.gather(xi)  # (B, R, C, S)
    assert p.shape == (5, 4, 3, 4) and img.gather_observed(xi)[1] is None
    torch.testing.assert_close(img.scatter(p, torch.ones(5, 4, dtype=torch.bool)), xi)
    half = img.scatter(p, torch.tensor([[True, False, True, False]]).expand(5, 4))
    assert torch.isnan(half).sum() == 5 * 3 * 8
    two = img.per_component(p, 2)  # component l reads region l // 2
    assert two.shape == (5, 8, 12) and torch.equal(two[:, 3], p[:, 1].flatten(-2))
    torch.testing.assert_close(img.per_component(p, 2, leaf_major=True), two.transpose(0, 1))
    with pytest.raises(ValueError, match="incompatible"):
        LeafScopes(poon_domingos((4, 4), 2), (1, 5, 5))
    with pytest.raises(TypeError, match="RegionGraph"):
        LeafScopes("graph")


def test_factorised_leaves_use_leaf_scopes():
    spn = _bernoulli_rat_spn()
    scopes = LeafScopes(spn.graph)
    assert torch.equal(spn.leaves.index, scopes.index) and torch.equal(spn.leaves.mask, scopes.mask)


# ---------------------------------------------------------------- callable leaves with a sampler
def test_callable_leaves_event_shape_and_leaf_sampler():
    """External leaves as a callable over images, with a sampler of the selected leaf components."""
    torch.manual_seed(11)
    g = poon_domingos((2, 2), 1)
    ext = SPN(g, num_sums=2, leaves=None, num_leaf_components=2)
    builtin = SPN(g, num_sums=2, leaves="bernoulli")
    ext.load_state_dict({k: v for k, v in builtin.state_dict().items() if not k.startswith("leaves.")})

    def leaf_lp(x):  # images (..., 1, 2, 2) -> (..., L, K)
        return builtin.leaf_log_prob(x.reshape(*x.shape[:-3], 2, 2))

    def sampler(k):  # (..., L) selected components -> images (..., 1, 2, 2)
        flat = builtin.leaves.sample(k.reshape(-1, k.shape[-1]))
        return flat.reshape(*k.shape[:-1], 1, 2, 2)

    d = SumProductNetwork(ext, leaf_lp, batch_shape=(3,), event_shape=(1, 2, 2), leaf_sampler=sampler)
    assert d.batch_shape == (3,) and d.event_shape == (1, 2, 2)
    x = torch.bernoulli(torch.full((3, 1, 2, 2), 0.5))
    x[0, 0, 0, 0] = NAN
    torch.testing.assert_close(d.log_prob(x), builtin.log_prob(x.reshape(3, 2, 2)))
    s = d.expand((2, 3)).sample((4,))
    assert s.shape == (4, 2, 3, 1, 2, 2) and ((s == 0) | (s == 1)).all()
    with pytest.raises(NotImplementedError, match="built-in leaves"):
        d.sample(evidence=x)
    with pytest.raises(ValueError, match="event_shape"):
        SumProductNetwork(builtin, event_shape=(1, 2, 2))
    with pytest.raises(TypeError, match="leaf_sampler"):
        SumProductNetwork(ext, leaf_lp, leaf_sampler="sampler")


# ---------------------------------------------------------------------------- issue 10: SPN.log_prob
@pytest.mark.parametrize(
    "leaves, kw, bad",
    [
        ("bernoulli", {}, [0.5, 2.99, -1.0, 300.0]),
        ("categorical", {"num_categories": 3}, [0.5, 2.99, -1.0, 3.0, 300.0]),
        ("binomial", {"total_count": 4}, [0.5, 5.0, -1.0]),
    ],
)
def test_module_log_prob_validates_like_the_distribution(leaves, kw, bad):
    """``SPN.log_prob`` gave a finite value for Bernoulli 0.5, read categorical 2.99 as 2, gave NaN
    for Inf and an internal RuntimeError for a category of 300; it now refuses them with the
    distribution view's checks (``check_spn_value``)."""
    spn = SPN(random_binary_trees(4, 1, 2, seed=3), 2, leaves, **kw)
    d = SumProductNetwork(spn)
    good = torch.tensor([0.0, 1.0, NAN, 1.0])
    torch.testing.assert_close(spn.log_prob(good), d.log_prob(good))
    for value in [*bad, float("inf"), -float("inf")]:
        x = good.clone()
        x[1] = value
        with pytest.raises(ValueError) as from_module:
            spn.log_prob(x)
        with pytest.raises(ValueError) as from_view:
            d.log_prob(x)
        assert str(from_module.value).removeprefix("x ") == str(from_view.value).removeprefix(
            "SumProductNetwork value "), value
    with pytest.raises(ValueError, match="floating-point"):
        spn.log_prob(good.long())
    with pytest.raises(TypeError, match="x must be a torch.Tensor"):
        spn.log_prob([0.0, 1.0, 0.0, 1.0])
    with pytest.raises(ValueError, match=r"x must have shape \(\.\.\., 4\)"):
        spn.log_prob(torch.zeros(3))


def test_module_log_prob_follows_the_validation_switch():
    spn = SPN(random_binary_trees(4, 1, 2, seed=3), 2, "bernoulli")
    x = torch.full((4,), 0.5)
    pyro.enable_validation(False)
    try:
        assert torch.isfinite(spn.log_prob(x))  # unchecked, as distributions with validation off
    finally:
        pyro.enable_validation(True)
    with pytest.raises(ValueError, match="outside the leaves' support"):
        spn.log_prob(x)


@pytest.mark.parametrize("leaves, kw", [("bernoulli", {}), ("categorical", {"num_categories": 3})])
def test_sample_shapes_are_checked(leaves, kw):
    spn = SPN(random_binary_trees(4, 1, 2, seed=3), 2, leaves, **kw)
    d = SumProductNetwork(spn)
    for shape, expected in (((0,), (0, 4)), ((2, 0), (2, 0, 4)), ((3,), (3, 4))):
        assert d.sample(shape).shape == expected and spn.sample(shape).shape == expected
    assert d.expand((5,)).sample((0,)).shape == (0, 5, 4)
    with pytest.raises(ValueError, match=r"sample_shape\[0\] must be an int in \[0, inf\], got -1"):
        d.sample((-1,))
    with pytest.raises(TypeError, match="sample_shape"):
        spn.sample((1.5,))
    evidence = torch.tensor([NAN, 1.0, NAN, 300.0])
    with pytest.raises(ValueError, match="evidence has entries outside the leaves' support"):
        spn.sample((2,), evidence=evidence)
    with pytest.raises(ValueError, match="evidence has entries outside the leaves' support"):
        spn.mpe(evidence)
