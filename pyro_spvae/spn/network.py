"""The :class:`SPN` module: region graph + vectorised layers + (optional) leaf parameters.

A sum-product network (Poon & Domingos 2011) built from a region graph as in RAT-SPN (Peharz et al.
2019) and Einsum Networks (Peharz et al. 2020): every leaf region carries ``K_leaf`` leaf
distributions, every internal region ``K_sum`` sum nodes (1 at the root), and every partition the
products of all pairs of its children's nodes.  Evaluation is bottom-up, one
:class:`~pyro_spvae.spn.layers.EinsumLayer` (+ :class:`~pyro_spvae.spn.layers.MixingLayer`) per
layer of the schedule; there is no Python loop over nodes or leaves.  The layers are in
:mod:`.network_layer`, the top-down choice of ``sample``/``mpe`` in :mod:`.topdown` and the input
checks in :mod:`.checks`.

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

import torch
from torch import Tensor, nn
from torch.distributions import Distribution

from pyro_spvae.validation import check_choice, check_positive_int, check_real, check_tensor

from .checks import check_sample_shape, check_spn_value
from .leaves import BernoulliLeaves, BinomialLeaves, CategoricalLeaves, FactorizedLeaves, NormalLeaves
from .network_layer import UpwardPass, _Layer
from .region_graph import RegionGraph
from .topdown import backtrack

__all__ = ["SPN", "UpwardPass", "LEAF_TYPES", "check_sample_shape", "check_spn_value"]

LEAF_TYPES: dict[str, type[FactorizedLeaves]] = {
    "bernoulli": BernoulliLeaves,
    "categorical": CategoricalLeaves,
    "normal": NormalLeaves,
    "binomial": BinomialLeaves,
}



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
        return backtrack(self.layers, self.graph, self.num_in, up, choose_max)

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
