"""Region graphs: the structure of a sum-product network.

A *region* is a non-empty set of variable indices (the scope of the sum nodes attached to it); a
*partition* splits a region into two disjoint child regions whose union is the parent (the scope of
the product nodes attached to it).  Region graphs were introduced with the Poon-Domingos architecture
(Poon & Domingos, "Sum-Product Networks: A New Deep Architecture", UAI 2011), random binary trees with
RAT-SPN (Peharz et al., "Random Sum-Product Networks: A Simple and Effective Approach to
Probabilistic Deep Learning", UAI 2019), and their vectorised evaluation layer by layer with Einsum
Networks (Peharz et al., "Einsum Networks: Fast and Scalable Learning of Tractable Probabilistic
Circuits", ICML 2020).  SPVAE (Tan & Peharz, "Hierarchical Decompositional Mixtures of Variational
Autoencoders", ICML 2019) uses the Poon-Domingos graph over 28x28 images with one coarse step of 7.

:class:`RegionGraph` validates smoothness (the children of every partition cover exactly the parent's
scope) and decomposability (the children are disjoint) at construction and computes a layered
schedule: the regions are stored *leaves first, then by height*, so that every layer of the schedule
is a contiguous block of regions and all its partitions can be evaluated by one einsum.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple

import numpy as np

from pyro_spvae.validation import check_event_shape, check_hidden, check_nonnegative_int, check_positive_int

__all__ = ["Partition", "RegionGraph", "poon_domingos", "random_binary_trees", "region_graph_from_spec"]


class Partition(NamedTuple):
    """A binary partition ``parent -> (left, right)``, as indices into :attr:`RegionGraph.regions`."""

    parent: int
    left: int
    right: int


def _as_region(vars_: Iterable[int], what: str) -> frozenset[int]:
    try:
        items = list(vars_)
    except TypeError as err:
        raise TypeError(f"{what} must be an iterable of variable indices, got {vars_!r}") from err
    if {type(v) for v in items} <= {int} and (not items or min(items) >= 0):
        out = items  # fast path: plain non-negative ints, what the graph builders pass
    else:
        out = [check_nonnegative_int(f"every variable index of the {what}", v) for v in items]
    if not out:
        raise ValueError(f"{what} is empty: regions must contain at least one variable")
    region = frozenset(out)
    if len(region) != len(out):
        raise ValueError(f"{what} lists a variable more than once: {sorted(out)}")
    return region


def _as_partition(n: int, item: object, root: frozenset[int]) -> tuple[frozenset[int], ...]:
    """Partition #``n`` as ``(parent, left, right)`` variable sets, checked for binarity,
    decomposability and smoothness."""
    try:
        parent_vars, children = item  # type: ignore[misc]
        children = list(children)
    except (TypeError, ValueError) as err:
        raise ValueError(f"partition #{n} must be a pair (parent, (left, right)); got {item!r}") from err
    parent = _as_region(parent_vars, f"parent region of partition #{n}")
    if len(children) != 2:
        raise ValueError(
            f"partition #{n} of region {sorted(parent)} has {len(children)} children; only binary "
            "partitions are supported (split n-ary partitions into a chain of binary ones)"
        )
    left = _as_region(children[0], f"left child of partition #{n}")
    right = _as_region(children[1], f"right child of partition #{n}")
    if left & right:
        raise ValueError(
            f"partition #{n} is not decomposable: its children share variables {sorted(left & right)}"
        )
    if left | right != parent:
        missing = sorted(parent - (left | right))
        extra = sorted((left | right) - parent)
        raise ValueError(
            f"partition #{n} is not smooth: its children do not cover exactly the parent region "
            f"(missing {missing}, outside the parent {extra})"
        )
    if left == root or right == root:
        raise ValueError(f"partition #{n} uses the root region as a child")
    return parent, left, right


def _collect_partitions(partitions: Iterable[object], root: frozenset[int]
                        ) -> tuple[list[frozenset[int]], list[tuple[int, int, int]]]:
    """The distinct regions (root first, then in discovery order) and the partitions as
    ``(parent, left, right)`` region ids."""
    ids: dict[frozenset[int], int] = {root: 0}
    sets: list[frozenset[int]] = [root]

    def rid(region: frozenset[int]) -> int:
        if region not in ids:
            ids[region] = len(sets)
            sets.append(region)
        return ids[region]

    raw: list[tuple[int, int, int]] = []
    seen: set[tuple[int, frozenset[frozenset[int]]]] = set()
    for n, item in enumerate(partitions):
        parent, left, right = _as_partition(n, item, root)
        key = (rid(parent), frozenset((left, right)))
        if key in seen:
            raise ValueError(f"partition #{n} duplicates an earlier partition of region {sorted(parent)}")
        seen.add(key)
        raw.append((rid(parent), rid(left), rid(right)))
    if not raw:
        raise ValueError("a region graph needs at least one partition (of the root region)")
    return sets, raw


def _check_reachable(sets: list[frozenset[int]], raw: list[tuple[int, int, int]],
                     parts_of: list[list[int]]) -> None:
    """Every region is reachable from the root (region 0)."""
    reach = [False] * len(sets)
    stack = [0]
    reach[0] = True
    while stack:
        r = stack.pop()
        for n in parts_of[r]:
            for c in raw[n][1:]:
                if not reach[c]:
                    reach[c] = True
                    stack.append(c)
    if not all(reach):
        bad = [sorted(sets[r]) for r in range(len(sets)) if not reach[r]]
        raise ValueError(f"{len(bad)} region(s) are not reachable from the root, e.g. {bad[0]}")


class RegionGraph:
    """A validated region graph with a layered evaluation schedule.

    :param root: the variables of the root region; must be exactly ``range(num_vars)``.
    :param partitions: binary partitions ``(parent, (left, right))``, each region given as an iterable
        of variable indices.  Regions are identified by their variable sets.
    :param event_shape: optional shape of the variables (e.g. ``(28, 28)``); variables are then the
        row-major flattened indices and ``prod(event_shape)`` must equal the number of variables.
    :raises TypeError: if a region is not an iterable of ints or ``event_shape`` not a tuple of ints.
    :raises ValueError: if a region is empty, has duplicate or negative indices, a partition does not
        have exactly two children, its children overlap (not decomposable) or do not cover the parent
        (not smooth), a partition is listed twice, a region is unreachable from the root, the root is
        used as a child, the root does not cover ``0..num_vars-1`` or there is no partition at all.

    Attributes (all read-only):

    - ``regions``: tuple of sorted variable tuples, in storage order (leaves first, then by height;
      the root is last).
    - ``partitions``: tuple of :class:`Partition`, grouped by layer.
    - ``leaf_regions``: ``range(num_leaf_regions)``; the leaf regions are the regions without
      partitions and occupy the first storage slots.
    - ``layers``: tuple of ``range`` objects of partition indices, one per layer; all partitions of
      layer ``l`` have parents of height ``l + 1`` and children of smaller height.
    - ``layer_regions``: tuple of ``range`` objects of region indices per layer (parents of the layer).
    - ``height``: per-region height (0 for leaves).
    """

    def __init__(
        self,
        root: Iterable[int],
        partitions: Iterable[tuple[Iterable[int], Sequence[Iterable[int]]]],
        event_shape: Sequence[int] | None = None,
    ) -> None:
        root_set = _as_region(root, "root region")
        num_vars = len(root_set)
        if root_set != frozenset(range(num_vars)):
            raise ValueError(
                f"the root region must be exactly the variables 0..{num_vars - 1}; got {sorted(root_set)}"
            )
        if event_shape is not None:
            event_shape = check_event_shape("event_shape", event_shape)
            if math.prod(event_shape) != num_vars:
                raise ValueError(
                    f"event_shape {event_shape} does not match the {num_vars} variables of the root region"
                )
        else:
            event_shape = (num_vars,)
        self.num_vars: int = num_vars
        self.event_shape: tuple[int, ...] = event_shape

        sets, raw = _collect_partitions(partitions, root_set)
        parts_of: list[list[int]] = [[] for _ in sets]
        for n, (p, _, _) in enumerate(raw):
            parts_of[p].append(n)
        _check_reachable(sets, raw, parts_of)

        # heights (children are strict subsets, so sorting by size is a topological order)
        height = [0] * len(sets)
        for r in sorted(range(len(sets)), key=lambda r: len(sets[r])):
            if parts_of[r]:
                height[r] = 1 + max(max(height[raw[n][1]], height[raw[n][2]]) for n in parts_of[r])
        # storage order: leaves, then by height (stable by discovery order); root last
        order = sorted(range(len(sets)), key=lambda r: (height[r], r))
        assert order[-1] == 0  # the root is the unique highest region
        new_id = {r: i for i, r in enumerate(order)}
        self.regions: tuple[tuple[int, ...], ...] = tuple(tuple(sorted(sets[r])) for r in order)
        self.height: tuple[int, ...] = tuple(height[r] for r in order)
        self.num_leaf_regions: int = sum(1 for h in self.height if h == 0)
        self.root: int = len(order) - 1

        parts = sorted(
            (Partition(new_id[p], new_id[lft], new_id[rgt]) for p, lft, rgt in raw),
            key=lambda q: (self.height[q.parent], q.parent),
        )
        self.partitions: tuple[Partition, ...] = tuple(parts)
        self.depth: int = self.height[self.root]
        layers, layer_regions = [], []
        for h in range(1, self.depth + 1):
            ps = [n for n, q in enumerate(parts) if self.height[q.parent] == h]
            rs = [r for r, hr in enumerate(self.height) if hr == h]
            layers.append(range(ps[0], ps[-1] + 1))
            layer_regions.append(range(rs[0], rs[-1] + 1))
        self.layers: tuple[range, ...] = tuple(layers)
        self.layer_regions: tuple[range, ...] = tuple(layer_regions)
        self.leaf_regions: range = range(self.num_leaf_regions)

    @property
    def num_regions(self) -> int:
        return len(self.regions)

    @property
    def num_partitions(self) -> int:
        return len(self.partitions)

    def partitions_of(self, region: int) -> list[int]:
        """Indices of the partitions of ``region`` (empty for leaf regions)."""
        return [n for n, q in enumerate(self.partitions) if q.parent == region]

    def __repr__(self) -> str:
        return (
            f"RegionGraph(num_vars={self.num_vars}, event_shape={self.event_shape}, "
            f"regions={self.num_regions}, leaf_regions={self.num_leaf_regions}, "
            f"partitions={self.num_partitions}, depth={self.depth})"
        )


def _parse_steps(steps: object, ndim: int) -> list[tuple[int, ...]]:
    """``steps`` of :func:`poon_domingos` as a list of per-axis cell sizes, each of length ``ndim``."""
    if not isinstance(steps, Sequence) or isinstance(steps, str):
        steps = [steps]
    if len(steps) == 0:
        raise ValueError("steps must contain at least one step size")
    out = []
    for i, s in enumerate(steps):
        if not isinstance(s, Sequence):
            out.append((check_positive_int(f"steps[{i}]", s),) * ndim)
            continue
        st = check_hidden(f"steps[{i}]", s)
        if len(st) != ndim:
            raise ValueError(f"step {st} has {len(st)} entries for a {ndim}-d grid")
        out.append(st)
    return out


def poon_domingos(shape: Sequence[int] | int, steps: Sequence[int | Sequence[int]] | int) -> RegionGraph:
    """Poon-Domingos region graph over an n-d grid (Poon & Domingos 2011; Tan & Peharz 2019).

    The grid is cut into cells of size ``steps[0]`` (per axis, or one size for all axes); every
    axis-aligned hyper-rectangle of cells is a region and its partitions are all binary splits along
    cell boundaries.  A region that cannot be split at the current step (it is a single cell) is split
    with the next, finer step, recursively; regions that no step can split are leaves.  E.g.
    ``poon_domingos((28, 28), 7)`` is the SPVAE graph: a 4x4 grid of 7x7 patches, 100 regions (16 of
    them leaves) and 200 partitions; ``poon_domingos((4, 4), [2, 1])`` recurses to pixel level.

    Split positions are multiples of the step counted from the grid origin, so a last cell may be
    smaller when a step does not divide the axis length.

    :param shape: grid shape, e.g. ``(28, 28)``; variables are row-major flattened pixel indices.
    :param steps: coarse-to-fine cell sizes; each an int or a per-axis sequence of ints.
    :raises TypeError: for shapes or steps that are not (sequences of) ints.
    :raises ValueError: for non-positive shapes or steps, or when no step splits the grid.
    """
    shape_t = check_event_shape("shape", shape)
    step_t = _parse_steps(steps, len(shape_t))

    Box = tuple[tuple[int, int], ...]

    def box_vars(box: Box) -> list[int]:
        ranges = [range(lo, hi) for lo, hi in box]
        return [int(np.ravel_multi_index(ix, shape_t)) for ix in itertools.product(*ranges)]

    def splits(box: Box) -> list[tuple[Box, Box]]:
        for st in step_t:
            out = []
            for ax, (lo, hi) in enumerate(box):
                first = (lo // st[ax] + 1) * st[ax]
                for pos in range(first, hi, st[ax]):
                    left = box[:ax] + ((lo, pos),) + box[ax + 1 :]
                    right = box[:ax] + ((pos, hi),) + box[ax + 1 :]
                    out.append((left, right))
            if out:
                return out
        return []

    root: Box = tuple((0, s) for s in shape_t)
    if not splits(root):
        raise ValueError(f"no step in {step_t} splits the grid {shape_t}: the graph would have no partition")
    var_cache: dict[Box, list[int]] = {}

    def vars_of(box: Box) -> list[int]:
        if box not in var_cache:
            var_cache[box] = box_vars(box)
        return var_cache[box]

    partitions = []
    seen = {root}
    queue = [root]
    while queue:
        box = queue.pop()
        for left, right in splits(box):
            partitions.append((vars_of(box), (vars_of(left), vars_of(right))))
            for c in (left, right):
                if c not in seen:
                    seen.add(c)
                    queue.append(c)
    return RegionGraph(range(math.prod(shape_t)), partitions, event_shape=shape_t)


def random_binary_trees(
    num_vars: int,
    depth: int,
    num_repetitions: int = 1,
    seed: int | None = None,
    event_shape: Sequence[int] | None = None,
) -> RegionGraph:
    """RAT-SPN region graph: ``num_repetitions`` random balanced binary trees (Peharz et al. 2019).

    Each repetition permutes the variables at random and splits every region into two halves (sizes
    differing by at most one) down to ``depth`` levels; all trees share the root region.  Identical
    regions and partitions of different repetitions are merged.

    :param num_vars: number of variables (>= 2).
    :param depth: number of split levels, ``1 <= depth`` and ``2**depth <= num_vars``.
    :param num_repetitions: number of random trees (>= 1).
    :param seed: seed of the numpy generator, ``>= 0`` (``None``: fresh entropy).
    :param event_shape: optional shape of the variables with ``prod(event_shape) == num_vars``.
    :raises TypeError: for hyper-parameters that are not ints.
    :raises ValueError: for invalid values.
    """
    num_vars = check_positive_int("num_vars", num_vars)
    depth = check_positive_int("depth", depth)
    num_repetitions = check_positive_int("num_repetitions", num_repetitions)
    if num_vars < 2:
        raise ValueError("random_binary_trees needs at least 2 variables")
    if 2**depth > num_vars:
        raise ValueError(f"depth {depth} needs at least 2**depth = {2**depth} variables, got {num_vars}")
    rng = np.random.default_rng(None if seed is None else check_nonnegative_int("seed", seed))
    partitions: list[tuple[list[int], tuple[list[int], list[int]]]] = []
    seen: set[tuple[frozenset[int], frozenset[frozenset[int]]]] = set()
    for _ in range(num_repetitions):
        level = [rng.permutation(num_vars)]
        for _ in range(depth):
            nxt = []
            for region in level:
                left, right = np.array_split(region, 2)
                key = (
                    frozenset(region.tolist()),
                    frozenset((frozenset(left.tolist()), frozenset(right.tolist()))),
                )
                if key not in seen:
                    seen.add(key)
                    partitions.append((region.tolist(), (left.tolist(), right.tolist())))
                nxt += [left, right]
            level = nxt
    return RegionGraph(range(num_vars), partitions, event_shape=event_shape)


def region_graph_from_spec(spec: dict[str, Any], event_shape: Sequence[int]) -> RegionGraph:
    """Build a region graph over the ``H x W`` pixels of images of shape ``event_shape`` from a plain
    dict (for JSON configs).

    :param spec: ``{"type": "poon_domingos", "steps": [7]}`` (``steps`` defaults to 7, the SPVAE
        graph) or ``{"type": "random_binary_trees", "depth": 4, "num_repetitions": 2, "seed": 0}``;
        the other keys are the keyword arguments of :func:`poon_domingos` or
        :func:`random_binary_trees`.
    :param event_shape: image shape ``(C, H, W)``.
    :raises TypeError: if ``spec`` is not a dict.
    :raises ValueError: for an unknown ``type``, unknown keys or bad arguments.
    """
    if not isinstance(spec, dict):
        raise TypeError(f"spec must be a dict, got {type(spec).__name__}")
    shape = check_event_shape("event_shape", event_shape)
    if len(shape) != 3:
        raise ValueError(f"event_shape must be (C, H, W), got {shape}")
    spec = dict(spec)
    kind = spec.pop("type", None)
    _, h, w = shape
    try:
        if kind == "poon_domingos":
            return poon_domingos((h, w), spec.pop("steps", 7), **spec)
        if kind == "random_binary_trees":
            return random_binary_trees(h * w, event_shape=(h, w), **spec)
    except TypeError as err:
        if "unexpected keyword argument" not in str(err):
            raise
        raise ValueError(f"bad region graph arguments {spec}: {err}") from None
    raise ValueError(f"region_graph type must be 'poon_domingos' or 'random_binary_trees', got {kind!r}")
