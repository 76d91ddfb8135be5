"""Sum-product network primitives: region graphs, vectorised einsum layers, leaves, the SPN module.

References: Poon & Domingos, "Sum-Product Networks: A New Deep Architecture" (UAI 2011); Peharz et al.,
"Random Sum-Product Networks" (RAT-SPN, UAI 2019); Peharz et al., "Einsum Networks" (ICML 2020);
Tan & Peharz, "Hierarchical Decompositional Mixtures of Variational Autoencoders" (SPVAE, ICML 2019).

API (stable)
------------
Region graphs (:mod:`.region_graph`)::

    g = poon_domingos(shape=(28, 28), steps=7)  # SPVAE: 100 regions (16 leaf regions), 200 partitions
    g = poon_domingos((4, 4), [2, 1])  # coarse-to-fine steps, recursing to pixels
    g = random_binary_trees(num_vars, depth, num_repetitions=1, seed=None, event_shape=None)
    g = RegionGraph(root=range(n), partitions=[(parent_vars, (left_vars, right_vars)), ...], event_shape=None)
    g.regions  # tuple of sorted var tuples; leaves first (g.regions[:g.num_leaf_regions]), root last
    g.num_leaf_regions, g.num_regions, g.partitions (Partition(parent, left, right)), g.layers, g.depth

SPN module (:mod:`.network`, an ``nn.Module``)::

    spn = SPN(g, num_sums=2,
              leaves="bernoulli" | "categorical" | "normal" | "binomial" | FactorizedLeaves | None,
              num_leaf_components=None,  # default num_sums
              init_std=1.0, **leaf_kwargs)  # num_categories= (categorical), total_count= (binomial)
    spn(leaf_log_prob, mode="sum")   # (..., L, K_leaf) -> (...) root log-value; L = g.num_leaf_regions,
                                     # leaf region l has variables g.regions[l] (row-major flat indices)
    spn.log_prob(x)                  # built-in leaves; x (..., *g.event_shape), NaN = missing (marginalised)
    spn.max_log_prob(x)              # max-product value (MPE semantics)
    spn.sample(sample_shape=(), evidence=None), spn.mpe(evidence=None)       # built-in leaves
    spn.select_leaf_components(leaf_log_prob, mode="sample" | "mpe")  # (..., L) long, -1 = unused
    spn.num_sum_nodes, spn.num_product_nodes, spn.num_leaf_nodes  # 167 / 800 / 32 for SPVAE (K=2)

Distribution view (:class:`pyro_spvae.distributions.SumProductNetwork`)::

    d = SumProductNetwork(spn, leaf_log_prob=None | tensor (*batch, L, K) | callable x -> (..., L, K),
                          batch_shape=None, allow_missing=True, validate_args=None)
    pyro.module("spn", spn); pyro.sample("x", d, obs=x)   # event_shape = g.event_shape
    d.log_prob(x), d.sample(sample_shape, evidence=None), d.mpe(evidence=None), d.expand(batch_shape)

External (e.g. VAE) leaves: build ``SPN(g, num_sums, leaves=None, num_leaf_components=K)`` and pass any
``(..., L, K)`` tensor of leaf log-densities (or ELBOs / log importance weights) to ``spn(...)``; it is
differentiable in the leaf values and the sum weights.  For sampling, ``select_leaf_components`` with the
leaf values given the evidence (zeros when unconditional) returns which leaf component of each region to
sample from.  ``spn.upward(flat_leaf_log_prob, mode)`` exposes all region values (region-major
``(R - 1, B, K)``) and per-layer partition values for custom top-down passes.

Leaf scopes (:mod:`.scopes`)::

    scopes = LeafScopes(g)                     # flat variables (..., V)
    scopes = LeafScopes(g, event_shape=(C, H, W))  # images over the H x W pixels of g
    scopes.index, scopes.mask                  # (L, S) padded variable indices and valid slots
    scopes.gather(x)                           # (..., V) -> (..., L, S); (..., C, H, W) -> (..., L, C, S)
    scopes.scatter(values, active)             # back into variables, NaN where no active region

Layers (:mod:`.layers`): ``EinsumLayer`` (product+sum of all partitions of a layer as one einsum with the
log-einsum-exp trick) and ``MixingLayer`` (regions with several partitions).  Leaves (:mod:`.leaves`):
``BernoulliLeaves``, ``CategoricalLeaves``, ``NormalLeaves``, ``BinomialLeaves``.  The Distribution view
is :class:`pyro_spvae.distributions.SumProductNetwork`.  ``naive_log_prob`` (:mod:`.reference`) is the
slow per-node reference used by tests and benchmarks.
"""

# pyro_spvae.distributions (SumProductNetwork) imports this package's network, and the leaves here
# import pyro_spvae.distributions.counts: loading the distributions first makes both import orders
# work (the counts module is then complete before the leaves ask for it).
import pyro_spvae.distributions  # noqa: F401  (import order, see above)

from .layers import EinsumLayer, MixingLayer
from .leaves import (
    BernoulliLeaves,
    BinomialLeaves,
    CategoricalLeaves,
    ExponentialFamilyLeaves,
    FactorizedLeaves,
    NormalLeaves,
)
from .network import LEAF_TYPES, SPN, UpwardPass
from .reference import naive_leaf_log_prob, naive_log_prob
from .region_graph import Partition, RegionGraph, poon_domingos, random_binary_trees, region_graph_from_spec
from .scopes import LeafScopes

__all__ = [
    "BernoulliLeaves",
    "BinomialLeaves",
    "CategoricalLeaves",
    "EinsumLayer",
    "ExponentialFamilyLeaves",
    "FactorizedLeaves",
    "LEAF_TYPES",
    "LeafScopes",
    "MixingLayer",
    "NormalLeaves",
    "Partition",
    "RegionGraph",
    "SPN",
    "UpwardPass",
    "naive_leaf_log_prob",
    "naive_log_prob",
    "poon_domingos",
    "random_binary_trees",
    "region_graph_from_spec",
]
