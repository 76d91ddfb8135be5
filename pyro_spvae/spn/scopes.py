"""Leaf scopes of a region graph: gather the variables of every leaf region, scatter values back.

The leaf regions ``R_1, ..., R_R`` of a :class:`~pyro_spvae.spn.region_graph.RegionGraph`
(``graph.regions[:graph.num_leaf_regions]``) partition the variables into scopes of possibly
unequal sizes. :class:`LeafScopes` stores them as one padded index table, so that the values of all
leaf regions are read by one ``index_select`` and written back by one ``scatter``:

- ``index`` ``(R, S)``: the variable indices of region ``r`` in slots ``0 .. |R_r| - 1``, with
  ``S = max_r |R_r|``; padding slots point at variable 0;
- ``mask`` ``(R, S)``: ``True`` for the slots that hold a variable of the region.

Two layouts of the variables are supported. Flat variables ``(..., V)`` with ``V = graph.num_vars``
(the factorised leaves of :mod:`pyro_spvae.spn.leaves`), and images ``(..., C, H, W)`` whose
``H x W`` pixels are the variables (row-major) and whose ``C`` channels all belong to the scope of
their pixel (the leaf VAEs of SPVAE, Tan & Peharz 2019; see ``docs/spvae.md``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from pyro_spvae.validation import check_event_shape

from .region_graph import RegionGraph

__all__ = ["LeafScopes"]


class LeafScopes(nn.Module):
    """Padded index and mask of the leaf regions of a region graph, with gather and scatter.

    :param region_graph: the region graph; its leaf regions define the scopes.
    :param event_shape: ``None`` for flat variables ``(V,)``, or an image shape ``(C, H, W)`` with
        ``H * W == region_graph.num_vars``.
    :raises TypeError: if ``region_graph`` is not a :class:`~pyro_spvae.spn.RegionGraph`.
    :raises ValueError: if the graph's variables do not match the image grid.

    Attributes: ``index`` ``(R, S)`` variable indices, ``mask`` ``(R, S)`` valid slots (both
    non-persistent buffers), ``num_regions`` ``R``, ``max_size`` ``S``, ``num_vars`` ``V``,
    ``event_shape`` (``(V,)`` or ``(C, H, W)``) and, for images, ``patch_shape`` ``(h, w)`` when
    every leaf region is a full ``h x w`` rectangle (else ``None``).
    """

    def __init__(self, region_graph: RegionGraph, event_shape: Sequence[int] | None = None) -> None:
        super().__init__()
        if not isinstance(region_graph, RegionGraph):
            raise TypeError(
                f"region_graph must be a pyro_spvae.spn.RegionGraph, got {type(region_graph).__name__}"
            )
        self.num_vars = region_graph.num_vars
        self.is_image = event_shape is not None
        self.event_shape = self._check_event_shape(event_shape)
        leaves = region_graph.regions[: region_graph.num_leaf_regions]
        self.num_regions = len(leaves)
        self.max_size = max(len(r) for r in leaves)
        index = torch.zeros(self.num_regions, self.max_size, dtype=torch.long)
        mask = torch.zeros(self.num_regions, self.max_size, dtype=torch.bool)
        for i, r in enumerate(leaves):  # construction only
            index[i, : len(r)] = torch.tensor(r)
            mask[i, : len(r)] = True
        self.patch_shape = self._patch_shape(leaves) if self.is_image else None
        self.register_buffer("index", index, persistent=False)
        self.register_buffer("mask", mask, persistent=False)
        self._all_valid = bool(mask.all())  # no padding slots

    def _check_event_shape(self, event_shape: Sequence[int] | None) -> tuple[int, ...]:
        if event_shape is None:
            return (self.num_vars,)
        shape = check_event_shape("event_shape", event_shape)
        if len(shape) != 3:
            raise ValueError(f"event_shape must be (C, H, W), got {shape}")
        if self.num_vars != shape[1] * shape[2]:
            raise ValueError(
                f"the region graph has {self.num_vars} variables but images of shape {shape} have "
                f"{shape[1] * shape[2]} pixels (H * W): the region graph is incompatible with event_shape"
            )
        return shape

    def _patch_shape(self, leaves: Sequence[tuple[int, ...]]) -> tuple[int, int] | None:
        """``(h, w)`` if every leaf region is a full ``h x w`` rectangle of pixels, else ``None``."""
        w = self.event_shape[2]
        shapes = set()
        for r in leaves:
            rows, cols = [v // w for v in r], [v % w for v in r]
            ph, pw = max(rows) - min(rows) + 1, max(cols) - min(cols) + 1
            shapes.add((ph, pw) if ph * pw == len(r) else None)
        return shapes.pop() if len(shapes) == 1 else None

    @property
    def channels(self) -> int:
        """``C`` for images, 1 for flat variables."""
        return self.event_shape[0] if self.is_image else 1

    @property
    def patch_numel(self) -> int:
        """``C * S``, the length of a flattened (padded) patch."""
        return self.channels * self.max_size

    def gather(self, x: Tensor) -> Tensor:
        """The values of every leaf region; padding slots hold the value of variable 0.

        :param x: flat variables ``(..., V)``, or images ``(..., C, H, W)``.
        :returns: ``(..., R, S)``, or ``(..., R, C, S)`` for images.
        """
        if not self.is_image:
            return x.index_select(-1, self.index.flatten()).view(*x.shape[:-1], *self.index.shape)
        c, h, w = self.event_shape
        xf = x.reshape(*x.shape[:-3], c, h * w).index_select(-1, self.index.flatten())
        return xf.view(*x.shape[:-3], c, *self.index.shape).movedim(-3, -2)  # (..., R, C, S)

    def observed(self, values: Tensor) -> Tensor:
        """Gathered ``values`` ``(..., R, S)`` (images: ``(..., R, C', S)``) -> bool mask, same
        shape, of the slots that hold a variable of their region and are not missing (NaN)."""
        return ~torch.isnan(values) & (self.mask.unsqueeze(-2) if self.is_image else self.mask)

    def gather_observed(self, x: Tensor) -> tuple[Tensor, Tensor | None]:
        """:meth:`gather` with missing (NaN) and padding entries set to 0, and the :meth:`observed`
        mask (``None`` when every entry is observed, the fast case of complete data).

        :param x: flat variables ``(..., V)``, or images ``(..., C, H, W)``.
        :returns: values ``(..., R, S)`` (images: ``(..., R, C, S)``) and the mask or ``None``.
        """
        values = self.gather(x)
        if self._all_valid and not bool(torch.isnan(x).any()):
            return values, None
        obs = self.observed(values)
        return torch.where(obs, values, torch.zeros_like(values)), obs

    def per_component(self, values: Tensor, num_components: int, leaf_major: bool = False) -> Tensor:
        """Repeat the gathered image patches for the ``K`` leaf components of every region, flattened:
        component ``l`` of the ``R * K`` reads the patch of region ``l // K``.

        :param values: ``(B, R, C, S)``.
        :param num_components: ``K``.
        :param leaf_major: put the component axis first (the layout of stacked networks run
            net-major, :meth:`~pyro_spvae.nn.StackedMLP.forward_net_major`).
        :returns: ``(B, R * K, C * S)``, or ``(R * K, B, C * S)`` when ``leaf_major``.
        """
        b, r, c, s = values.shape
        if leaf_major:
            values = values.movedim(0, 1).unsqueeze(1).expand(r, num_components, b, c, s)
            return values.reshape(r * num_components, b, c * s)
        return values.unsqueeze(2).expand(b, r, num_components, c, s).reshape(b, r * num_components, c * s)

    def scatter(self, values: Tensor, active: Tensor) -> Tensor:
        """Write the values of the ``active`` regions into variables; uncovered variables are NaN.

        :param values: ``(N, R, S)`` for flat variables, or ``(N, R, C', S)`` for images (any
            number of channels ``C'``, e.g. stacked likelihood parameters).
        :param active: ``(N, R)`` bool, the regions to write (disjoint scopes, e.g. the leaf regions
            of one induced tree).
        :returns: ``(N, V)``, or ``(N, C', H, W)`` for images.
        """
        n = values.shape[0]
        flat = values.unsqueeze(-2) if not self.is_image else values  # (N, R, C', S)
        c = flat.shape[-2]
        dummy = torch.full_like(self.index, self.num_vars)
        idx = torch.where(active.unsqueeze(-1) & self.mask, self.index, dummy)  # (N, R, S)
        idx = idx.reshape(n, 1, -1).expand(n, c, -1)
        out = flat.new_full((n, c, self.num_vars + 1), math.nan)
        out.scatter_(2, idx, flat.movedim(-2, -3).reshape(n, c, -1))
        out = out[..., : self.num_vars]
        if not self.is_image:
            return out.squeeze(1)
        return out.reshape(n, c, *self.event_shape[1:])

    def extra_repr(self) -> str:
        return f"regions={self.num_regions}, max_size={self.max_size}, event_shape={self.event_shape}"
