"""Tests of the tools that read a trained latent Gaussian mixture (:mod:`pyro_spvae.mixtures`)
against brute force and closed forms; the model-level checks are in ``tests/test_dlgmm.py``."""

from __future__ import annotations

import itertools
import math

import pyro
import pyro.poutine as poutine
import pytest
import torch

from pyro_spvae.distributions import StickBreaking
from pyro_spvae.mixtures import (
    clustering_accuracy,
    components_in_use,
    mixture_weights,
    plot_latent_space,
    responsibilities,
    samples_per_component,
)
from pyro_spvae.zoo import build_dlgmm, build_dlgmm_dp

DT = torch.float64


def _brute_force_accuracy(labels: torch.Tensor, clusters: torch.Tensor) -> float:
    """Best accuracy over every one-to-one map between clusters and labels (all injections from the
    smaller set into the larger)."""
    n_c, n_y = int(clusters.max()) + 1, int(labels.max()) + 1
    best = 0
    if n_c <= n_y:
        for image in itertools.permutations(range(n_y), n_c):  # cluster c -> label image[c]
            best = max(best, int((torch.tensor(image)[clusters] == labels).sum()))
    else:
        for image in itertools.permutations(range(n_c), n_y):  # label y -> cluster image[y]
            best = max(best, int((torch.tensor(image)[labels] == clusters).sum()))
    return best / labels.numel()


@pytest.mark.parametrize("seed, n_labels, n_clusters", [(0, 4, 4), (1, 3, 5), (2, 5, 3), (3, 6, 6)])
def test_clustering_accuracy_equals_brute_force_matching(seed, n_labels, n_clusters):
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(n_labels, (60,), generator=g)
    noisy = torch.rand(60, generator=g) < 0.4
    clusters = torch.where(noisy, torch.randint(n_clusters, (60,), generator=g),
                           torch.randperm(max(n_labels, n_clusters), generator=g)[labels] % n_clusters)
    labels[0], clusters[0] = n_labels - 1, n_clusters - 1  # every index range fully present
    result = clustering_accuracy(labels, clusters)
    assert result.accuracy == pytest.approx(_brute_force_accuracy(labels, clusters), abs=1e-12)
    matched = sum(int(((clusters == c) & (labels == y)).sum()) for c, y in result.mapping.items())
    assert result.accuracy == pytest.approx(matched / 60, abs=1e-12)  # the mapping achieves it
    assert len(set(result.mapping.values())) == len(result.mapping) == min(n_labels, n_clusters)


def _dp_local(T: int = 4, D: int = 3):
    torch.manual_seed(0)
    model, guide = build_dlgmm_dp((5,), z_dim=D, num_components=T, hidden=(7,), likelihood="gaussian")
    return model.to(DT), guide.to(DT)


@torch.no_grad()
def test_responsibilities_with_sticks_are_the_averaged_component_posteriors():
    """r_ik = mean over guide draws (z, v) of softmax_k(log pi_k(v) + log N(z; mu_k, sigma_k)),
    recomputed here from the same draws (same seed, the same vectorised particle plate)."""
    model, guide = _dp_local()
    x = torch.randn(6, 5, dtype=DT)
    pyro.set_rng_seed(3)
    r = responsibilities(model, guide, x, num_samples=5, batch_size=6)
    pyro.set_rng_seed(3)
    with poutine.block(), pyro.plate("num_particles_vectorized", 5, dim=-2):
        trace = poutine.trace(guide).get_trace(x)
    z, v = trace.nodes["z"]["value"], trace.nodes["v"]["value"]  # (5, 6, D), (5, 6, T - 1)
    log_pi = model.stick_logits(v)
    prior_k = torch.distributions.Normal(model.mixture.locs, model.mixture.scales)
    comp = prior_k.log_prob(z.unsqueeze(-2)).sum(-1)
    expected = torch.softmax(log_pi + comp, -1).mean(0)
    assert r.shape == (6, 4) and torch.allclose(r.sum(-1), torch.ones(6, dtype=DT))
    assert torch.allclose(r, expected, atol=1e-12)
    # batching does not change the result
    pyro.set_rng_seed(3)
    assert responsibilities(model, guide, x, num_samples=5, batch_size=4).shape == (6, 4)


@torch.no_grad()
def test_mixture_weights_of_global_sticks_are_the_kumaraswamy_stick_breaking_mean():
    """With global Kumaraswamy sticks q(v), E_q[pi(v)] is the StickBreaking mean
    (E[pi_k] = E[v_k] prod_{j<k} E[1 - v_j] with Kumaraswamy moments): 4 standard errors."""
    torch.manual_seed(0)
    model, guide = build_dlgmm_dp((5,), weights="global", z_dim=2, num_components=5, hidden=(4,),
                                  likelihood="gaussian")
    model, guide = model.to(DT), guide.to(DT)
    guide.stick_a = torch.tensor([0.6, 2.0, 1.5, 0.9], dtype=DT)
    guide.stick_b = torch.tensor([1.5, 0.7, 3.0, 2.0], dtype=DT)
    n = 4000
    pyro.set_rng_seed(0)
    w = mixture_weights(model, guide, torch.randn(3, 5, dtype=DT), num_samples=n)
    exact = StickBreaking(guide.stick_a, guide.stick_b, "kumaraswamy")
    assert w.shape == (5,) and float(w.sum()) == pytest.approx(1.0, abs=1e-12)
    se = exact.variance.sqrt() / math.sqrt(n)  # one stick draw per particle, shared by the 3 examples
    assert ((w - exact.mean).abs() < 4 * se).all(), (w, exact.mean, se)


def test_mixture_weights_without_sticks_and_argument_errors():
    model, guide = build_dlgmm((5,), z_dim=2, num_components=3, hidden=(4,), likelihood="gaussian")
    with torch.no_grad():
        model.mixture.logits.copy_(torch.tensor([0.0, 1.0, -1.0]))
    assert torch.allclose(mixture_weights(model), torch.softmax(torch.tensor([0.0, 1.0, -1.0]), 0))
    dp_model, _ = _dp_local()
    with pytest.raises(ValueError, match="guide and data"):
        mixture_weights(dp_model)
    with pytest.raises(TypeError, match="DLGMM"):
        mixture_weights(guide)
    with pytest.raises(TypeError, match="DLGMM"):
        responsibilities(guide, guide, torch.randn(2, 5))
    with pytest.raises(ValueError):
        responsibilities(model, guide, torch.randn(2, 5), num_samples=0)
    with pytest.raises(ValueError):
        components_in_use(torch.ones(2, 2, 2))
    with pytest.raises(TypeError):
        plot_latent_space([[0.0, 1.0]], None, "unused.png")


def test_plot_latent_space_with_many_classes(tmp_path):
    """More than 10 classes (components of a truncated DP) switch to a 20-colour map."""
    path = plot_latent_space(torch.randn(60, 3), torch.arange(60) % 15, tmp_path / "c.png",
                             title="components", legend_title="component")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@torch.no_grad()
def test_samples_per_component_come_from_each_component_heaviest_first():
    """Identity decoder (Gaussian likelihood, mean = z): row j holds draws of N(mu_k, sigma_k^2) for
    k = order[j], order by decreasing weight; sample moments within 5 standard errors."""
    model, _ = build_dlgmm((2,), z_dim=2, num_components=3, hidden=(), likelihood="gaussian")
    locs = torch.tensor([[4.0, 0.0], [-3.0, 1.0], [0.0, -5.0]])
    scales = torch.tensor([[0.5, 1.0], [2.0, 0.3], [1.0, 1.0]])
    with torch.no_grad():
        model.mixture.locs.copy_(locs)
        model.mixture.scales = scales
        model.decoder.mlp.layers[0].weight.copy_(torch.eye(2))
        model.decoder.mlp.layers[0].bias.zero_()
    torch.manual_seed(0)
    n = 4000
    samples, order = samples_per_component(model, n, weights=torch.tensor([0.3, 0.1, 0.6]))
    assert samples.shape == (3, n, 2) and order.tolist() == [2, 0, 1]
    for j, k in enumerate(order.tolist()):
        assert ((samples[j].mean(0) - locs[k]).abs() < 5 * scales[k] / math.sqrt(n)).all()
        assert torch.allclose(samples[j].std(0), scales[k], rtol=0.05)
    _, unordered = samples_per_component(model, 2)
    assert unordered.tolist() == [0, 1, 2]
    with pytest.raises(ValueError, match="shape"):
        samples_per_component(model, 2, weights=torch.ones(4) / 4)
