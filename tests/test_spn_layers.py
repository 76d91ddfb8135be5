"""Vectorised einsum/mixing layers against a naive per-node reference and explicit formulas."""

import pytest
import torch

from pyro_spvae.spn import (
    SPN,
    EinsumLayer,
    MixingLayer,
    naive_leaf_log_prob,
    naive_log_prob,
    poon_domingos,
    random_binary_trees,
)

GRAPHS = {
    "pd28": lambda: poon_domingos((28, 28), 7),
    "pd4x4-fine": lambda: poon_domingos((4, 4), [2, 1]),
    "rat": lambda: random_binary_trees(20, depth=3, num_repetitions=3, seed=0),
}


@pytest.mark.parametrize("graph", sorted(GRAPHS))
@pytest.mark.parametrize("ks", [(3, 3), (2, 4), (4, 2)])
@pytest.mark.parametrize("mode", ["sum", "max"])
def test_layers_match_naive_reference(graph, ks, mode):
    torch.manual_seed(0)
    g = GRAPHS[graph]()
    spn = SPN(g, num_sums=ks[0], num_leaf_components=ks[1], leaves=None).double()
    leaf = torch.randn(5, g.num_leaf_regions, ks[1], dtype=torch.float64) * 3
    fast = spn(leaf, mode)
    slow = naive_log_prob(spn, leaf, mode)
    assert fast.shape == (5,)
    torch.testing.assert_close(fast, slow, atol=1e-6, rtol=1e-6)


def test_einsum_layer_explicit_formula_and_padding():
    torch.manual_seed(1)
    values = torch.randn(4, 5, 3, dtype=torch.float64)
    values[:, 1, 2] = -float("inf")  # region 1 has only 2 valid entries
    left, right = torch.tensor([0, 1, 3]), torch.tensor([1, 2, 4])
    layer = EinsumLayer(
        left, right, 3, 2, left_sizes=torch.tensor([3, 2, 3]), right_sizes=torch.tensor([2, 3, 3])
    )
    layer = layer.double()
    w = layer.log_weights().exp()
    torch.testing.assert_close(w.sum((1, 2)), torch.ones(3, 2, dtype=torch.float64))
    assert (w[0, :, 2] == 0).all() and (w[1, 2, :] == 0).all()
    # layers are region-major: (R, B, K) -> (P, B, O); the references below are batch-major
    out = layer(values.transpose(0, 1)).transpose(0, 1)
    ref = torch.zeros(4, 3, 2, dtype=torch.float64)
    for p in range(3):
        lv, rv = values[:, left[p]].exp(), values[:, right[p]].exp()
        ref[:, p] = torch.einsum("bi,bj,ijo->bo", lv, rv, w[p]).log()
    torch.testing.assert_close(out, ref)
    mx = layer(values.transpose(0, 1), "max").transpose(0, 1)
    ref_max = (values[:, left, :, None, None] + values[:, right, None, :, None] + layer.log_weights()).amax(
        (2, 3)
    )
    torch.testing.assert_close(mx, ref_max)


def test_einsum_layer_is_stable_for_tiny_values():
    """Log-einsum-exp: values around -1e4 would underflow without the max trick."""
    torch.manual_seed(2)
    layer = EinsumLayer(torch.tensor([0]), torch.tensor([1]), 4, 3)
    values = torch.randn(2, 2, 4)  # (regions, batch, K)
    out = layer(values)
    shifted = layer(values - 1e4)
    assert torch.isfinite(shifted).all()
    torch.testing.assert_close(shifted, out - 2e4, rtol=1e-6, atol=1e-2)
    # all -inf child (probability-zero evidence) gives -inf, not NaN
    values[0, 0] = -float("inf")  # region 0, batch element 0
    res = layer(values)[0]  # (B, O) of the single partition
    assert torch.isneginf(res[0]).all() and torch.isfinite(res[1]).all()


def test_mixing_layer():
    torch.manual_seed(3)
    table = torch.tensor([[0, 2, -1], [1, 3, 4]])
    mix = MixingLayer(table, 2).double()
    pv = torch.randn(3, 5, 2, dtype=torch.float64)
    lw = mix.log_weights()
    torch.testing.assert_close(lw.exp().sum(1), torch.ones(2, 2, dtype=torch.float64))
    assert torch.isneginf(lw[0, 2]).all()
    out = mix(pv.transpose(0, 1)).transpose(0, 1)  # layers are partition/region-major
    ref0 = torch.logsumexp(pv[:, [0, 2]] + lw[0, :2], dim=1)
    ref1 = torch.logsumexp(pv[:, [1, 3, 4]] + lw[1], dim=1)
    torch.testing.assert_close(out, torch.stack([ref0, ref1], 1))
    torch.testing.assert_close(mix(pv.transpose(0, 1), "max")[1], (pv[:, [1, 3, 4]] + lw[1]).amax(1))


def test_log_space_shift_and_batch_dims_and_gradients():
    torch.manual_seed(4)
    g = poon_domingos((28, 28), 7)
    spn = SPN(g, num_sums=4, leaves=None)
    leaf = torch.randn(2, 3, g.num_leaf_regions, 4)
    out = spn(leaf)
    assert out.shape == (2, 3)
    torch.testing.assert_close(out.reshape(-1), spn(leaf.reshape(6, g.num_leaf_regions, 4)))
    # every induced tree of this graph contains all 16 leaf regions: shifting leaves by c shifts by 16 c
    shifted = spn(leaf - 1000.0)
    torch.testing.assert_close(shifted, out - 16000.0, rtol=1e-6, atol=5e-3)
    leaf.requires_grad_(True)
    spn(leaf).sum().backward()
    assert torch.isfinite(leaf.grad).all() and leaf.grad.abs().sum() > 0
    for name, p in spn.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    # d log S / d leaf sums to 1 per leaf region over components (multilinearity: one leaf per tree)
    torch.testing.assert_close(leaf.grad.sum(-1), torch.ones(2, 3, g.num_leaf_regions))


def test_bad_inputs():
    g = random_binary_trees(6, 2, seed=0)
    spn = SPN(g, 2, leaves=None)
    with pytest.raises(ValueError, match="leaf_log_prob must have shape"):
        spn(torch.zeros(3, g.num_leaf_regions, 3))
    with pytest.raises(ValueError, match="mode"):
        spn(torch.zeros(g.num_leaf_regions, 2), mode="avg")
    with pytest.raises(ValueError, match="external leaves"):
        spn.log_prob(torch.zeros(6))
    with pytest.raises(ValueError, match=r"num_in must be an int in \[1, inf\]"):
        EinsumLayer(torch.tensor([0]), torch.tensor([1]), 0, 2)
    with pytest.raises(TypeError, match="num_out must be an int"):
        EinsumLayer(torch.tensor([0]), torch.tensor([1]), 2, 2.0)
    with pytest.raises(ValueError, match=r"num_out must be an int in \[1, inf\]"):
        MixingLayer(torch.tensor([[0, 1]]), 0)
    with pytest.raises(TypeError, match="RegionGraph"):
        SPN("graph")
    with pytest.raises(TypeError, match="num_sums must be an int"):
        SPN(g, 2.0)
    with pytest.raises(TypeError, match="init_std must be a real number"):
        SPN(g, 2, init_std=True)
    with pytest.raises(ValueError, match="init_std must be a finite number"):
        SPN(g, 2, init_std=float("nan"))
    with pytest.raises(ValueError, match="unknown leaves 'poisson'"):
        SPN(g, 2, leaves="poisson")
    with pytest.raises(TypeError, match="leaves must be a name"):
        SPN(g, 2, leaves=3)
    with pytest.raises(ValueError, match="invalid arguments for 'categorical' leaves"):
        SPN(g, 2, leaves="categorical")
    with pytest.raises(ValueError, match="invalid arguments for 'bernoulli' leaves"):
        SPN(g, 2, leaves="bernoulli", bogus=1)
    with pytest.raises(TypeError, match="leaf_log_prob must be a torch.Tensor"):
        spn([[0.0]])


LEAF_CASES = {
    "bernoulli": ({}, lambda n: torch.bernoulli(torch.full((n, 10), 0.4))),
    "normal": ({}, lambda n: 2 * torch.randn(n, 10)),
    "categorical": ({"num_categories": 4}, lambda n: torch.randint(0, 4, (n, 10)).float()),
    "binomial": ({"total_count": 5}, lambda n: torch.randint(0, 6, (n, 10)).float()),
}


@pytest.mark.parametrize("leaves", sorted(LEAF_CASES))
def test_leaf_layer_matches_per_node_torch_distributions(leaves):
    """Vectorised (einsum over sufficient statistics / gather) leaves vs one torch distribution per leaf."""
    torch.manual_seed(5)
    kwargs, gen = LEAF_CASES[leaves]
    g = random_binary_trees(10, depth=2, num_repetitions=3, seed=2)  # leaf regions of sizes 2 and 3: padding
    spn = SPN(g, 3, leaves, num_leaf_components=4, **kwargs).double()
    x = gen(6).double()
    x[0, 3] = x[2, :5] = float("nan")
    got = spn.leaf_log_prob(x)
    torch.testing.assert_close(got, naive_leaf_log_prob(spn, x))
    torch.testing.assert_close(spn.log_prob(x), naive_log_prob(spn, naive_leaf_log_prob(spn, x)))
    # max mode: a missing variable contributes the maximum of its log-density over the domain
    x1 = x[:1].clone()
    x1[0, 3] = float("nan")
    mx = spn.leaf_log_prob(x1, "max")
    obs = x1.clone()
    cands = {
        "bernoulli": [0.0, 1.0],
        "categorical": [0.0, 1.0, 2.0, 3.0],
        "binomial": [float(v) for v in range(6)],
    }
    if leaves == "normal":
        obs[0, 3] = 0.0
        ref = spn.leaf_log_prob(obs)  # at any point; then fix the region of variable 3 below
        l3 = [l for l in range(g.num_leaf_regions) if 3 in g.regions[l]]
        for l in l3:
            s = g.regions[l].index(3)
            loc = spn.leaves.loc[l, s]
            at_mode = obs.clone().expand(4, 10).clone()
            at_mode[:, 3] = loc
            ref[0, l] = torch.stack([spn.leaf_log_prob(at_mode[k : k + 1])[0, l, k] for k in range(4)])
    else:
        stacked = []
        for v in cands[leaves]:
            obs[0, 3] = v
            stacked.append(spn.leaf_log_prob(obs))
        ref = torch.stack(stacked).amax(0)
    torch.testing.assert_close(mx, ref)
