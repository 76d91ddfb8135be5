"""Naive per-node reference evaluation of an :class:`~pyro_spvae.spn.network.SPN`.

This is the "one graph node per SPN node" evaluation of the original SPN papers and of the SPVAE
reference code (Poon & Domingos 2011; Tan & Peharz 2019): a Python loop over every product node and
every sum node, vectorised only over the batch.  It shares the parameters of the vectorised
:class:`SPN` and exists to test the einsum layers (Peharz et al. 2020) against, and as the baseline
of ``benchmarks/bench_spn.py``.  Do not use it for anything else: it is slow by design.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch import distributions as tdist

from .leaves import BernoulliLeaves, BinomialLeaves, CategoricalLeaves, NormalLeaves
from .network import SPN

__all__ = ["naive_leaf_log_prob", "naive_log_prob"]


@torch.no_grad()
def naive_leaf_log_prob(spn: SPN, x: Tensor) -> Tensor:
    """Leaf log-densities computed leaf node by leaf node with ``torch.distributions``.

    :param spn: a network with built-in leaves.
    :param x: ``(B, *event_shape)`` values, ``NaN`` = missing (marginalised).
    :returns: ``(B, L, K_leaf)``, equal to ``spn.leaf_log_prob(x)`` up to rounding.
    """
    leaves = spn._require_leaves()
    flat = x.reshape(x.shape[0], -1)
    out = torch.zeros(flat.shape[0], spn.num_leaf_regions, spn.num_leaf_components, dtype=flat.dtype)
    for l in range(spn.num_leaf_regions):
        vars_ = list(spn.graph.regions[l])
        n = len(vars_)
        xr = flat[:, vars_]
        missing = torch.isnan(xr)
        xr = torch.where(missing, torch.zeros_like(xr), xr)
        for k in range(spn.num_leaf_components):  # one leaf node
            if isinstance(leaves, BernoulliLeaves):
                d = tdist.Bernoulli(logits=leaves.logits[l, :n, k])
            elif isinstance(leaves, NormalLeaves):
                d = tdist.Normal(leaves.loc[l, :n, k], leaves.log_scale[l, :n, k].exp())
            elif isinstance(leaves, CategoricalLeaves):
                d = tdist.Categorical(logits=leaves.logits[l, :n, k])
            elif isinstance(leaves, BinomialLeaves):
                d = tdist.Binomial(leaves.total_count, logits=leaves.logits[l, :n, k])
            else:
                raise ValueError(f"no naive reference for {type(leaves).__name__}")
            lp = d.log_prob(xr.long() if isinstance(leaves, CategoricalLeaves) else xr)
            out[:, l, k] = torch.where(missing, torch.zeros_like(lp), lp).sum(-1)
    return out


@torch.no_grad()
def naive_log_prob(spn: SPN, leaf_log_prob: Tensor, mode: str = "sum") -> Tensor:
    """Root log-value computed node by node.

    :param spn: the network whose parameters are used.
    :param leaf_log_prob: ``(B, L, K_leaf)`` leaf log-densities.
    :param mode: ``"sum"`` (sum-product) or ``"max"`` (max-product).
    :returns: ``(B,)`` root log-values, equal to ``spn(leaf_log_prob, mode)`` up to rounding.
    """
    if mode not in ("sum", "max"):
        raise ValueError(f"mode must be 'sum' or 'max', got {mode!r}")
    graph = spn.graph
    node: dict[tuple[int, int], Tensor] = {}
    for l in range(graph.num_leaf_regions):
        for k in range(spn.num_leaf_components):
            node[(l, k)] = leaf_log_prob[:, l, k]
    size = [spn.num_leaf_components if h == 0 else spn.num_sums for h in graph.height]
    root = None
    for layer, prange, rrange in zip(spn.layers, graph.layers, graph.layer_regions):
        logw = layer.einsum.log_weights()  # (P_l, K, K, O)
        mixw = layer.mixing_log_weights()  # (R_l, M, O)
        table = layer.table.tolist()
        for rl, r in enumerate(rrange):
            products: list[Tensor] = []
            weights: list[Tensor] = []  # per product: (O,) log weight
            for m, ql in enumerate(table[rl]):
                if ql < 0:
                    continue
                q = graph.partitions[prange.start + ql]
                for i in range(size[q.left]):
                    for j in range(size[q.right]):
                        products.append(node[(q.left, i)] + node[(q.right, j)])  # one product node
                        weights.append(mixw[rl, m] + logw[ql, i, j])
            stacked = torch.stack(products, dim=-1)  # (B, n)
            w = torch.stack(weights, dim=0)  # (n, O)
            for o in range(w.shape[1]):  # one sum node
                terms = stacked + w[:, o]
                node[(r, o)] = terms.amax(-1) if mode == "max" else torch.logsumexp(terms, -1)
            root = node[(r, 0)]
    assert root is not None
    return root
