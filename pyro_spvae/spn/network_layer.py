"""One layer of the :class:`~pyro_spvae.spn.network.SPN` schedule, and the values of an upward pass.

Layer ``l`` of the region-graph schedule (``graph.layers[l]``) holds ``P_l`` partitions whose parent
regions are ``graph.layer_regions[l]`` (``R_l`` regions).  :class:`_Layer` evaluates it as one
:class:`~pyro_spvae.spn.layers.EinsumLayer` (partition values ``S_{p,o}``) followed, for the regions
with several partitions, by one :class:`~pyro_spvae.spn.layers.MixingLayer`; the value of region ``r``
with the partitions ``P(r)`` is

.. math::  \\log V_{r,o} = S_{p,o} \\text{ if } P(r) = \\{p\\}, \\qquad
           \\log V_{r,o} = \\log \\sum_{p \\in P(r)} w_{r,p,o} \\exp(S_{p,o}) \\text{ otherwise}

(Peharz et al. 2020; with ``max`` for the sum in max-product mode).  The index tables (``table``:
the partitions of each region, ``src``: where each region's value is read from) serve both the
upward pass and the top-down choice of :mod:`pyro_spvae.spn.topdown`.

:class:`UpwardPass` holds the values an upward pass leaves: the root, every non-root region and the
partitions of every layer.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn

from .layers import EinsumLayer, MixingLayer
from .region_graph import RegionGraph

__all__ = ["UpwardPass"]


class UpwardPass(NamedTuple):
    """Result of :meth:`SPN.upward` on a flattened batch ``B``.

    - ``root``: ``(B,)`` root log-value.
    - ``values``: ``(R - 1, B, K)`` log-values of all non-root regions in storage order, region-major
      (``-inf`` padding where a region has fewer than ``K = max(K_leaf, K_sum)`` nodes).
    - ``partitions``: per layer, ``(P_l, B, O_l)`` log-values of the partition sums.
    """

    root: Tensor
    values: Tensor
    partitions: list[Tensor]


class _Layer(nn.Module):
    """Einsum + optional mixing for one layer of the schedule, with the index tables it needs."""

    def __init__(self, graph: RegionGraph, l: int, num_in: int, num_out: int, sizes: Tensor, init_std: float):
        super().__init__()
        prange, rrange = graph.layers[l], graph.layer_regions[l]
        parts = graph.partitions[prange.start : prange.stop]
        left = torch.tensor([q.left for q in parts])
        right = torch.tensor([q.right for q in parts])
        uniform = bool((sizes == num_in).all())
        self.einsum = EinsumLayer(left, right, num_in, num_out, None if uniform else sizes[left],
                                  None if uniform else sizes[right], init_std=init_std)
        local: list[list[int]] = [[] for _ in rrange]
        for n, q in enumerate(parts):
            local[q.parent - rrange.start].append(n)
        M = max(len(v) for v in local)
        table = torch.full((len(rrange), M), -1, dtype=torch.long)
        for r, v in enumerate(local):
            table[r, : len(v)] = torch.tensor(v)
        mixed = [r for r, v in enumerate(local) if len(v) > 1]
        P = len(parts)
        src = table[:, 0].clone()  # single-partition regions copy their partition
        row_src = torch.zeros(len(rrange), dtype=torch.long)
        for j, r in enumerate(mixed):
            src[r] = P + j
            row_src[r] = 1 + j
        mixing = MixingLayer(table[mixed], num_out, init_std=init_std, num_partitions=P) if mixed else None
        self.mixing = mixing
        self.first_region, self.num_regions, self.num_partitions = rrange.start, len(rrange), P
        self.register_buffer("src", src, persistent=False)
        self.register_buffer("table", table, persistent=False)
        self.register_buffer("row_src", row_src, persistent=False)
        self.identity = (src == torch.arange(len(rrange))).all().item() and P == len(rrange)

    def forward(self, values: Tensor, mode: str) -> tuple[Tensor, Tensor]:
        pv = self.einsum(values, mode)
        if self.mixing is not None:
            rv = torch.cat([pv, self.mixing(pv, mode)], dim=0).index_select(0, self.src)
        elif self.identity:
            rv = pv
        else:
            rv = pv.index_select(0, self.src)
        return pv, rv

    def forward_batch_last(self, values: Tensor) -> Tensor:
        """Sum mode, batch-last: region values ``(R, K, B)`` -> this layer's region values ``(R_l, O, B)``."""
        pv = self.einsum.forward_batch_last(values)
        if self.mixing is not None:
            return torch.cat([pv, self.mixing.forward_batch_last(pv)], dim=0).index_select(0, self.src)
        return pv if self.identity else pv.index_select(0, self.src)

    def mixing_log_weights(self) -> Tensor:
        """``(R_l, M, O)`` log mixing weights of every region of the layer (0 for the single partition)."""
        M, O = self.table.shape[1], self.einsum.num_out
        single = self.einsum.logits.new_full((1, M, O), float("-inf"))
        single[:, 0] = 0.0
        if self.mixing is None:
            return single.expand(self.num_regions, M, O)
        return torch.cat([single, self.mixing.log_weights()], dim=0)[self.row_src]

