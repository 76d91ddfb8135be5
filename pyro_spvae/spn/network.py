"""The :class:`SPN` module: region graph + vectorised layers + (optional) leaf parameters.

A sum-product network (Poon & Domingos 2011) built from a region graph as in RAT-SPN (Peharz et al.
2019) and Einsum Networks (Peharz et al. 2020): every leaf region carries ``K_leaf`` leaf
distributions, every internal region ``K_sum`` sum nodes (1 at the root), and every partition the
products of all pairs of its children's nodes.  Evaluation is bottom-up, one
:class:`~pyro_spvae.spn.layers.EinsumLayer` (+ :class:`~pyro_spvae.spn.layers.MixingLayer`) per
layer of the schedule; there is no Python loop over nodes or leaves.

Leaves are either a built-in :class:`~pyro_spvae.spn.leaves.FactorizedLeaves` layer or external: any
tensor of per-leaf-region log-densities ``(..., L, K_leaf)`` (e.g. leaf VAEs, Tan & Peharz 2019) can be
pushed through :meth:`SPN.forward`.

Inference semantics
-------------------
- ``log_prob``: sum-product value; ``NaN`` entries are marginalised exactly (leaf log-density 0).
- ``sample(evidence)``: exact sample of the missing entries from ``p(x_missing | x_observed)``: the
  upward sum-product pass is run on the evidence, then one induced tree is drawn top-down with child
  probabilities proportional to ``weight x child value given the evidence`` (all in log space), and
  the selected leaves are sampled.
- ``mpe(evidence)``: *max-product* MPE: the network with every sum replaced by a weighted max (and
  missing leaf variables by the max of their density) is evaluated upward and the argmax children
  are followed down.  The result maximises ``max_log_prob`` (``max`` over induced trees of the tree's
  weighted product of leaf densities) over completions of the evidence; for a general SPN this is
  the standard tractable approximation of the true MAP of the sum-product distribution (Poon &
  Domingos 2011; exact MAP is NP-hard).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import Tensor, nn
from torch.distributions import Distribution, constraints

from pyro_spvae.validation import check_choice, check_int, check_positive_int, check_real, check_tensor

from .layers import EinsumLayer, MixingLayer
from .leaves import BernoulliLeaves, BinomialLeaves, CategoricalLeaves, FactorizedLeaves, NormalLeaves
from .region_graph import RegionGraph

__all__ = ["SPN", "UpwardPass", "LEAF_TYPES", "check_sample_shape", "check_spn_value"]

LEAF_TYPES: dict[str, type[FactorizedLeaves]] = {
    "bernoulli": BernoulliLeaves,
    "categorical": CategoricalLeaves,
    "normal": NormalLeaves,
    "binomial": BinomialLeaves,
}


def check_spn_value(value: object, event_shape: Sequence[int], support: constraints.Constraint, *,
                    batch_shape: Sequence[int] = (), allow_missing: bool = True,
                    name: str = "SumProductNetwork value") -> Tensor:
    """Check a value ``(..., *event_shape)`` given to an SPN (the checks of ``log_prob``, shared by
    :meth:`SPN.log_prob` and the distribution view :class:`~pyro_spvae.distributions.SumProductNetwork`).

    :param support: the leaves' support (observed entries must lie in it).
    :param batch_shape: the leading dims must broadcast with it.
    :param allow_missing: whether ``NaN`` (missing) entries are accepted.
    :raises TypeError: if ``value`` is not a tensor.
    :raises ValueError: for a non-floating dtype, a wrong trailing shape, leading dims that do not
        broadcast, ``NaN`` without ``allow_missing``, infinite entries or observed entries outside
        ``support`` (e.g. ``0.5`` for Bernoulli leaves, ``2.99`` or ``300`` for 3 categories).
    """
    value = check_tensor(name, value)
    if not value.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor (NaN = missing), got {value.dtype}")
    ev, n = tuple(event_shape), len(event_shape)
    if value.dim() < n or tuple(value.shape[value.dim() - n :]) != ev:
        raise ValueError(f"{name} must have shape (..., {', '.join(map(str, ev))}); got {tuple(value.shape)}")
    lead = value.shape[: value.dim() - n]
    try:
        torch.broadcast_shapes(lead, torch.Size(batch_shape))
    except RuntimeError as err:
        raise ValueError(f"value batch shape {tuple(lead)} does not broadcast with the distribution's "
                         f"batch shape {tuple(batch_shape)}") from err
    missing = torch.isnan(value)
    if not allow_missing and bool(missing.any()):
        raise ValueError(f"{name} contains NaN but allow_missing=False")
    if bool(torch.isinf(value).any()):
        raise ValueError(f"{name} contains infinite entries")
    observed = value[~missing]
    if observed.numel() and not bool(support.check(observed).all()):
        raise ValueError(f"{name} has entries outside the leaves' support {support}")
    return value


def check_sample_shape(sample_shape: object) -> torch.Size:
    """``sample_shape`` as a ``torch.Size`` of non-negative ints (``0`` gives an empty sample).

    :raises TypeError: for a non-sequence or non-integer entries; :raises ValueError: for negative ones.
    """
    if isinstance(sample_shape, (str, bytes)) or not isinstance(sample_shape, Sequence):
        raise TypeError(f"sample_shape must be a sequence of ints, got {type(sample_shape).__name__}")
    return torch.Size(check_int(f"sample_shape[{i}]", d, 0) for i, d in enumerate(sample_shape))


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


def _make_leaves(name: object, graph: RegionGraph, num_components: int, init_std: float,
                 leaf_kwargs: dict[str, object]) -> FactorizedLeaves:
    """The built-in leaf layer called ``name`` (a key of :data:`LEAF_TYPES`)."""
    if not isinstance(name, str):
        raise TypeError(f"leaves must be a name, a FactorizedLeaves or None; got {type(name).__name__}")
    cls = LEAF_TYPES[check_choice("leaves", name, LEAF_TYPES)]
    try:  # unknown or missing leaf arguments (the values are checked by the leaf class)
        inspect.signature(cls).bind(graph, num_components, init_std=init_std, **leaf_kwargs)
    except TypeError as err:
        raise ValueError(f"invalid arguments for {name!r} leaves: {err}") from None
    return cls(graph, num_components, init_std=init_std, **leaf_kwargs)


class SPN(nn.Module):
    """A sum-product network over a :class:`RegionGraph` with vectorised einsum layers.

    :param graph: the validated region graph.
    :param num_sums: ``K_sum``, sum nodes per internal non-root region (the root has one).
    :param leaves: ``"bernoulli"``, ``"categorical"``, ``"normal"``, ``"binomial"``, a
        :class:`~pyro_spvae.spn.leaves.FactorizedLeaves` instance, or ``None`` for external leaves
        (then only :meth:`forward`/:meth:`upward`/:meth:`select_leaf_components` are available).
    :param num_leaf_components: ``K_leaf``, leaf components per leaf region (default ``num_sums``;
        taken from ``leaves`` when an instance is given).
    :param init_std: std of the normal initialisation of all weight logits (and leaf parameters).
    :param leaf_kwargs: extra arguments of the leaf class (``num_categories`` for categorical,
        ``total_count`` for binomial).
    :raises TypeError: for a ``graph`` that is not a :class:`RegionGraph`, or hyper-parameters of the
        wrong type (e.g. a float ``num_sums``).
    :raises ValueError: for non-positive ``num_sums``/``num_leaf_components``, unknown leaf types or
        missing/unknown leaf arguments.

    Shapes: ``x`` is ``(..., *graph.event_shape)`` (``NaN`` = missing); leaf log-densities are
    ``(..., L, K_leaf)`` with ``L = graph.num_leaf_regions`` in the order of
    ``graph.regions[:L]``; results keep the leading dims ``...``.
    """

    def __init__(
        self,
        graph: RegionGraph,
        num_sums: int = 2,
        leaves: str | FactorizedLeaves | None = "bernoulli",
        num_leaf_components: int | None = None,
        init_std: float = 1.0,
        **leaf_kwargs: object,
    ) -> None:
        super().__init__()
        if not isinstance(graph, RegionGraph):
            raise TypeError(f"graph must be a RegionGraph, got {type(graph).__name__}")
        num_sums = check_positive_int("num_sums", num_sums)
        init_std = check_real("init_std", init_std, 0.0)
        if isinstance(leaves, FactorizedLeaves):
            if leaves.num_leaf_regions != graph.num_leaf_regions or leaves.num_vars != graph.num_vars:
                raise ValueError("the leaves were built for a different region graph")
            if num_leaf_components is not None and num_leaf_components != leaves.num_components:
                raise ValueError("num_leaf_components disagrees with leaves.num_components")
            if leaf_kwargs:
                raise ValueError(f"leaf arguments {sorted(leaf_kwargs)} given with a leaf instance")
            num_leaf_components = leaves.num_components
        else:
            num_leaf_components = check_positive_int(
                "num_leaf_components", num_sums if num_leaf_components is None else num_leaf_components
            )
            if leaves is None:
                if leaf_kwargs:
                    raise ValueError(f"leaf arguments {sorted(leaf_kwargs)} given with leaves=None")
            else:
                leaves = _make_leaves(leaves, graph, num_leaf_components, init_std, leaf_kwargs)
        self.graph = graph
        self.leaves: FactorizedLeaves | None = leaves
        self.num_sums = num_sums
        self.num_leaf_components = num_leaf_components
        self.num_in = max(num_sums, num_leaf_components)
        sizes = torch.tensor([num_leaf_components if h == 0 else num_sums for h in graph.height])
        self.layers = nn.ModuleList(
            _Layer(graph, l, self.num_in, 1 if l == graph.depth - 1 else num_sums, sizes, init_std)
            for l in range(graph.depth)
        )

    # ------------------------------------------------------------------ shapes and counts
    @property
    def event_shape(self) -> torch.Size:
        return torch.Size(self.graph.event_shape)

    @property
    def num_leaf_regions(self) -> int:
        return self.graph.num_leaf_regions

    @property
    def num_sum_nodes(self) -> int:
        """Sum nodes: ``K_sum`` per internal non-root region plus the root."""
        internal = self.graph.num_regions - self.graph.num_leaf_regions
        return (internal - 1) * self.num_sums + 1

    @property
    def num_product_nodes(self) -> int:
        """Product nodes: ``K_left x K_right`` per partition."""
        h = self.graph.height
        k = [self.num_leaf_components if hh == 0 else self.num_sums for hh in h]
        return sum(k[q.left] * k[q.right] for q in self.graph.partitions)

    @property
    def num_leaf_nodes(self) -> int:
        return self.num_leaf_regions * self.num_leaf_components

    # ------------------------------------------------------------------ evaluation
    def _check_leaf_lp(self, leaf_log_prob: Tensor) -> Tensor:
        check_tensor("leaf_log_prob", leaf_log_prob)
        want = (self.num_leaf_regions, self.num_leaf_components)
        if leaf_log_prob.dim() < 2 or tuple(leaf_log_prob.shape[-2:]) != want:
            raise ValueError("leaf_log_prob must have shape (..., num_leaf_regions, K_leaf) = "
                             f"(..., {want[0]}, {want[1]}); got {tuple(leaf_log_prob.shape)}")
        return leaf_log_prob

    def upward(self, leaf_log_prob: Tensor, mode: str = "sum") -> UpwardPass:
        """Bottom-up pass on a flat batch.

        :param leaf_log_prob: ``(B, L, K_leaf)`` leaf log-densities.
        :param mode: ``"sum"`` (sum-product) or ``"max"`` (max-product).
        """
        check_choice("mode", mode, ("sum", "max"))
        values = leaf_log_prob.transpose(0, 1)  # region-major (L, B, K_leaf)
        if self.num_leaf_components < self.num_in:
            values = nn.functional.pad(
                values, (0, self.num_in - self.num_leaf_components), value=float("-inf")
            )
        parts = []
        rv = values
        last = len(self.layers) - 1
        for l, layer in enumerate(self.layers):
            pv, rv = layer(values, mode)
            parts.append(pv)
            if l < last:
                if self.num_sums < self.num_in:
                    rv = nn.functional.pad(rv, (0, self.num_in - self.num_sums), value=float("-inf"))
                values = torch.cat([values, rv], dim=0)
        return UpwardPass(rv[0, :, 0], values, parts)

    def forward(self, leaf_log_prob: Tensor, mode: str = "sum") -> Tensor:
        """Root log-value from leaf log-densities ``(..., L, K_leaf)`` -> ``(...)``.

        With ``mode="sum"`` this is the SPN's log-density when the leaves are normalised densities;
        it is differentiable in the leaf values and all weights.
        """
        leaf_log_prob = self._check_leaf_lp(leaf_log_prob)
        batch = leaf_log_prob.shape[:-2]
        flat = leaf_log_prob.reshape(-1, *leaf_log_prob.shape[-2:])
        if mode == "sum":
            return self._root_sum(flat).reshape(batch)
        return self.upward(flat, mode).root.reshape(batch)

    def _root_sum(self, flat: Tensor) -> Tensor:
        """Root log-value of a flat batch ``(B, L, K_leaf)`` by the sum-product pass, batch-last.

        Equal to ``upward(flat, "sum").root`` but with the values stored ``(R, K, B)``: the batch is
        the innermost, contiguous axis of every elementwise op of the layers (see
        :meth:`EinsumLayer.forward_batch_last`), which is several times faster for small ``K``.
        """
        values = flat.permute(1, 2, 0)  # (L, K_leaf, B)
        if self.num_leaf_components < self.num_in:
            values = nn.functional.pad(values, (0, 0, 0, self.num_in - self.num_leaf_components),
                                       value=float("-inf"))
        values = values.contiguous()
        last = len(self.layers) - 1
        for l, layer in enumerate(self.layers):
            rv = layer.forward_batch_last(values)  # (R_l, O, B)
            if l < last:
                if self.num_sums < self.num_in:
                    rv = nn.functional.pad(rv, (0, 0, 0, self.num_in - self.num_sums), value=float("-inf"))
                values = torch.cat([values, rv], dim=0)
        return rv[0, 0]

    def _flatten_x(self, x: Tensor) -> tuple[Tensor, torch.Size]:
        check_tensor("x", x)
        ev = self.event_shape
        if x.dim() < len(ev) or tuple(x.shape[x.dim() - len(ev) :]) != tuple(ev):
            raise ValueError(f"x must have shape (..., {', '.join(map(str, ev))}); got {tuple(x.shape)}")
        batch = x.shape[: x.dim() - len(ev)]
        dtype = x.dtype if x.is_floating_point() else torch.get_default_dtype()
        return x.reshape(-1, self.graph.num_vars).to(dtype), batch

    def _require_leaves(self) -> FactorizedLeaves:
        if self.leaves is None:
            raise ValueError(
                "this SPN has external leaves (leaves=None): pass leaf log-densities to forward()/upward() "
                "and use select_leaf_components() for sampling/MPE"
            )
        return self.leaves

    def leaf_log_prob(self, x: Tensor, mode: str = "sum") -> Tensor:
        """Built-in leaf log-densities ``(..., *event_shape)`` -> ``(..., L, K_leaf)`` (NaN = missing)."""
        leaves = self._require_leaves()
        flat, batch = self._flatten_x(x)
        return leaves(flat, mode).reshape(*batch, self.num_leaf_regions, self.num_leaf_components)

    def log_prob(self, x: Tensor, validate_args: bool | None = None) -> Tensor:
        """Log-density of ``x`` ``(..., *event_shape)`` -> ``(...)``, marginalising ``NaN`` entries.

        :param validate_args: check ``x`` with :func:`check_spn_value` (dtype, shape, no infinite
            entries, observed entries in the leaves' support); ``None``: when torch distributions
            validate their arguments (``pyro.enable_validation``), as the distribution view does.
        :raises ValueError: for an invalid ``x`` (see :func:`check_spn_value`).
        """
        if Distribution._validate_args if validate_args is None else validate_args:
            check_spn_value(x, self.event_shape, self._require_leaves().support, name="x")
        return self.forward(self.leaf_log_prob(x))

    def max_log_prob(self, x: Tensor) -> Tensor:
        """Max-product log-value: ``max`` over induced trees (and over the missing entries of ``x``)."""
        return self.forward(self.leaf_log_prob(x, "max"), "max")

    # ------------------------------------------------------------------ top-down
    def _backtrack(self, up: UpwardPass, choose_max: bool) -> Tensor:
        values = up.values  # (R - 1, B, K)
        B = values.shape[1]
        K = self.num_in
        R = self.graph.num_regions
        if not bool(torch.isfinite(up.root).all()):
            raise ValueError(
                "the evidence has probability zero (root log-value -inf or NaN) for some batch element; "
                "cannot condition on it"
            )

        def choose(score: Tensor) -> Tensor:
            if not choose_max:
                u = torch.rand_like(score).clamp(1e-20, 1.0 - 1e-7)
                score = score - torch.log(-torch.log(u))
            return score.argmax(-1)

        sel = torch.full((B, R + 1), -1, dtype=torch.long, device=values.device)
        sel[:, self.graph.root] = 0
        for layer, pv in zip(reversed(self.layers), reversed(up.partitions)):
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
                c = choose(score)
                q = tbl.expand(B, Rl, M).gather(2, c.unsqueeze(-1)).squeeze(-1)
            ein = layer.einsum
            logw = ein.log_weights().permute(0, 3, 1, 2).reshape(ein.num_partitions, ein.num_out, K * K)
            lw = logw[q, kc]  # (B, R_l, K*K)
            lc, rc = ein.left[q], ein.right[q]  # (B, R_l)
            bidx = torch.arange(B, device=values.device).unsqueeze(-1)
            lv = values[lc, bidx]  # (B, R_l, K)
            rvv = values[rc, bidx]
            score = lw + (lv.unsqueeze(-1) + rvv.unsqueeze(-2)).reshape(B, Rl, K * K)
            ij = choose(score)
            dummy = torch.full_like(lc, R)
            sel.scatter_(1, torch.where(active, lc, dummy), ij // K)
            sel.scatter_(1, torch.where(active, rc, dummy), ij % K)
        return sel[:, : self.num_leaf_regions]

    @torch.no_grad()
    def select_leaf_components(self, leaf_log_prob: Tensor, mode: str = "sample") -> Tensor:
        """Top-down choice of an induced tree, returning the selected component per leaf region.

        :param leaf_log_prob: ``(..., L, K_leaf)`` leaf log-values given the evidence: for
            ``mode="sample"`` the (marginal) leaf log-densities of the observed part (0 for a leaf
            region without evidence), for ``mode="mpe"`` the max-product leaf values.
        :param mode: ``"sample"`` draws the tree from its posterior given the evidence (child choice
            proportional to weight x child value, normalised in log space); ``"mpe"`` follows the
            argmax children of the max-product network.
        :returns: ``(..., L)`` long tensor: selected leaf component, or ``-1`` for leaf regions not
            in the selected tree.
        """
        check_choice("mode", mode, ("sample", "mpe"))
        leaf_log_prob = self._check_leaf_lp(leaf_log_prob)
        batch = leaf_log_prob.shape[:-2]
        flat = leaf_log_prob.reshape(-1, *leaf_log_prob.shape[-2:])
        up = self.upward(flat, "sum" if mode == "sample" else "max")
        return self._backtrack(up, mode == "mpe").reshape(*batch, self.num_leaf_regions)

    def _complete(self, evidence: Tensor | None, sample_shape: Sequence[int], mode: str) -> Tensor:
        leaves = self._require_leaves()
        sample_shape = check_sample_shape(sample_shape)
        if evidence is None:
            ref = next(self.parameters())
            evidence = torch.full(self.event_shape, math.nan, dtype=ref.dtype, device=ref.device)
        else:
            check_spn_value(evidence, self.event_shape, leaves.support, name="evidence")
        if sample_shape.numel() == 0:  # an empty sample, as torch distributions return for 0 in the shape
            return evidence.new_empty(*sample_shape, *evidence.shape)
        flat, batch = self._flatten_x(evidence)
        flat = flat.expand(sample_shape.numel(), *flat.shape).reshape(-1, flat.shape[-1])
        up = self.upward(
            leaves(flat, "sum" if mode == "sample" else "max"), "sum" if mode == "sample" else "max"
        )
        k = self._backtrack(up, mode == "mpe")
        x = leaves.sample(k, mode)
        x = torch.where(torch.isnan(flat), x, flat)
        return x.reshape(*sample_shape, *batch, *self.event_shape)

    @torch.no_grad()
    def sample(self, sample_shape: Sequence[int] = (), evidence: Tensor | None = None) -> Tensor:
        """Exact samples, optionally conditioned on ``evidence`` (``(..., *event_shape)``, NaN = missing).

        :returns: ``sample_shape + evidence batch + event_shape``; observed entries are copied.
        """
        return self._complete(evidence, sample_shape, "sample")

    @torch.no_grad()
    def mpe(self, evidence: Tensor | None = None) -> Tensor:
        """Max-product MPE completion of ``evidence`` (``(..., *event_shape)``, NaN = missing)."""
        return self._complete(evidence, (), "mpe")

    def extra_repr(self) -> str:
        return (
            f"graph={self.graph!r}, num_sums={self.num_sums}, num_leaf_components={self.num_leaf_components}"
        )
