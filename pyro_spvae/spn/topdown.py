"""Top-down choice of an induced tree of an :class:`~pyro_spvae.spn.network.SPN` (sampling and MPE).

After an upward pass (:class:`~pyro_spvae.spn.network_layer.UpwardPass`) the tree is chosen from the
root down, one layer of the schedule at a time, for all batch elements and all regions of a layer at
once.  A selected sum node ``o`` of region ``r`` first picks one of the region's partitions
``p in P(r)`` (when it has several) and then one pair ``(i, j)`` of the partition's left and right
child nodes, by the scores

.. math::  \\log w_{r,p,o} + S_{p,o}, \\qquad \\log W_{p,i,j,o} + L_{p,i} + R_{p,j}

(the weighted child values of the pass, notation of :mod:`pyro_spvae.spn.layers`).  For sampling the
child is drawn with probability proportional to ``exp(score)``, the posterior of the tree given the
evidence when the pass is sum-product, by the Gumbel-max trick (``argmax(score + G)`` with standard
Gumbel noise ``G = -log(-log U)``, Gumbel 1954); for max-product MPE the argmax child is followed
(Poon & Domingos 2011).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from .network_layer import UpwardPass, _Layer
from .region_graph import RegionGraph

__all__ = ["backtrack"]


def _choose(score: Tensor, choose_max: bool) -> Tensor:
    """Index along the last dim of ``score``: the argmax, or a draw proportional to ``exp(score)``."""
    if not choose_max:
        u = torch.rand_like(score).clamp(1e-20, 1.0 - 1e-7)
        score = score - torch.log(-torch.log(u))
    return score.argmax(-1)


def backtrack(layers: Sequence[_Layer], graph: RegionGraph, num_in: int, up: UpwardPass,
              choose_max: bool) -> Tensor:
    """Choose one induced tree per batch element, top-down from the root.

    :param layers: the SPN's layers (:attr:`SPN.layers`), bottom-up.
    :param graph: the SPN's region graph.
    :param num_in: ``K = max(K_leaf, K_sum)``, the stored value size per region.
    :param up: the upward pass on a flat batch ``B`` (sum-product for sampling, max-product for MPE).
    :param choose_max: follow the argmax children (MPE) instead of sampling them.
    :returns: ``(B, L)`` long tensor: the selected component of each leaf region, ``-1`` for leaf
        regions not in the tree.
    :raises ValueError: if the root value of some batch element is ``-inf`` or ``NaN`` (evidence of
        probability zero).
    """
    values = up.values  # (R - 1, B, K)
    B = values.shape[1]
    K = num_in
    R = graph.num_regions
    if not bool(torch.isfinite(up.root).all()):
        raise ValueError(
            "the evidence has probability zero (root log-value -inf or NaN) for some batch element; "
            "cannot condition on it"
        )

    sel = torch.full((B, R + 1), -1, dtype=torch.long, device=values.device)
    sel[:, graph.root] = 0
    for layer, pv in zip(reversed(layers), reversed(up.partitions)):
        s = layer.first_region
        k = sel[:, s : s + layer.num_regions]  # (B, R_l)
        active = k >= 0
        kc = k.clamp(min=0)
        Rl = layer.num_regions
        table = layer.table  # (R_l, M)
        M = table.shape[1]
        if M == 1:
            q = table[:, 0].expand(B, Rl)
        else:
            P = pv.shape[0]
            tbl = torch.where(table >= 0, table, torch.full_like(table, P))
            padded = torch.cat([pv, pv.new_full((1, B, pv.shape[2]), float("-inf"))], dim=0)
            score = padded[tbl].permute(2, 0, 1, 3) + layer.mixing_log_weights()  # (B, R_l, M, O)
            score = score.gather(3, kc.view(B, Rl, 1, 1).expand(B, Rl, M, 1)).squeeze(3)
            c = _choose(score, choose_max)
            q = tbl.expand(B, Rl, M).gather(2, c.unsqueeze(-1)).squeeze(-1)
        ein = layer.einsum
        logw = ein.log_weights().permute(0, 3, 1, 2).reshape(ein.num_partitions, ein.num_out, K * K)
        lw = logw[q, kc]  # (B, R_l, K*K)
        lc, rc = ein.left[q], ein.right[q]  # (B, R_l)
        bidx = torch.arange(B, device=values.device).unsqueeze(-1)
        lv = values[lc, bidx]  # (B, R_l, K)
        rvv = values[rc, bidx]
        score = lw + (lv.unsqueeze(-1) + rvv.unsqueeze(-2)).reshape(B, Rl, K * K)
        ij = _choose(score, choose_max)
        dummy = torch.full_like(lc, R)
        sel.scatter_(1, torch.where(active, lc, dummy), ij // K)
        sel.scatter_(1, torch.where(active, rc, dummy), ij % K)
    return sel[:, : graph.num_leaf_regions]
