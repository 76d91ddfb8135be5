"""Region graphs: Poon-Domingos and RAT-SPN constructors, validation, layered schedule."""

import itertools

import pytest

from pyro_spvae.spn import RegionGraph, poon_domingos, random_binary_trees, region_graph_from_spec


def _check_structure(g: RegionGraph) -> None:
    """Independent re-check of smoothness, decomposability and the schedule."""
    assert g.regions[g.root] == tuple(range(g.num_vars))
    for q in g.partitions:
        p, l, r = (set(g.regions[i]) for i in q)
        assert not (l & r) and (l | r) == p
        assert g.height[q.left] < g.height[q.parent] and g.height[q.right] < g.height[q.parent]
    for h, (prange, rrange) in enumerate(zip(g.layers, g.layer_regions), start=1):
        assert {g.partitions[n].parent for n in prange} == set(rrange)
        assert all(g.height[r] == h for r in rrange)
    leaves = set(range(g.num_leaf_regions))
    assert leaves == {r for r in range(g.num_regions) if not g.partitions_of(r)}
    assert all(g.height[r] == 0 for r in leaves)


def _rect_counts(n: int, m: int) -> tuple[int, int]:
    """Regions and binary partitions of all rectangles of an n x m grid of cells (brute force)."""
    intervals = lambda k: [(a, b) for a in range(k) for b in range(a + 1, k + 1)]  # noqa: E731
    rects = list(itertools.product(intervals(n), intervals(m)))
    parts = sum((b - a - 1) + (d - c - 1) for (a, b), (c, d) in rects)
    return len(rects), parts


def test_poon_domingos_spvae_counts():
    g = poon_domingos((28, 28), 7)
    assert (g.num_regions, g.num_leaf_regions, g.num_partitions) == (100, 16, 200)
    assert (g.num_regions, g.num_partitions) == _rect_counts(4, 4)
    assert g.event_shape == (28, 28) and g.num_vars == 784
    # leaf regions are the 7x7 patches
    patch = {
        tuple(sorted(r * 28 + c for r in range(7 * i, 7 * i + 7) for c in range(7 * j, 7 * j + 7)))
        for i in range(4)
        for j in range(4)
    }
    assert set(g.regions[: g.num_leaf_regions]) == patch
    _check_structure(g)


@pytest.mark.parametrize("shape", [(3, 4), (2, 3), (5,)])
def test_poon_domingos_pixel_level(shape):
    g = poon_domingos(shape, 1)
    n, m = (shape + (1,))[:2]
    assert (g.num_regions, g.num_partitions) == _rect_counts(n, m)
    assert g.num_leaf_regions == g.num_vars and all(len(r) == 1 for r in g.regions[: g.num_leaf_regions])
    _check_structure(g)


def test_poon_domingos_coarse_to_fine_and_per_axis_steps():
    g = poon_domingos((4, 4), [2, 1])
    coarse_r, coarse_p = _rect_counts(2, 2)
    fine_r, fine_p = _rect_counts(2, 2)
    # 2x2 coarse cells; each coarse cell (a 2x2 pixel patch) refined to pixel level
    assert g.num_regions == coarse_r + 4 * (fine_r - 1)
    assert g.num_partitions == coarse_p + 4 * fine_p
    assert g.num_leaf_regions == 16
    _check_structure(g)
    g2 = poon_domingos((4, 6), [(2, 3)])
    assert g2.num_regions == 9 and g2.num_leaf_regions == 4
    assert all(len(r) == 6 for r in g2.regions[:4])
    _check_structure(g2)
    g3 = poon_domingos((2, 2, 2), 1)
    assert g3.num_vars == 8 and g3.num_leaf_regions == 8
    _check_structure(g3)


def test_random_binary_trees():
    g = random_binary_trees(13, depth=3, num_repetitions=4, seed=1)
    _check_structure(g)
    assert len(g.partitions_of(g.root)) == 4
    assert max(len(r) for r in g.regions[: g.num_leaf_regions]) == 2  # 13 / 2**3 rounded up
    same = random_binary_trees(13, depth=3, num_repetitions=4, seed=1)
    assert same.regions == g.regions and same.partitions == g.partitions
    other = random_binary_trees(13, depth=3, num_repetitions=4, seed=2)
    assert other.regions != g.regions
    # every repetition is a complete binary tree of the given depth
    assert g.depth == 3
    # duplicates across repetitions are merged: 2 variables have a single possible split
    g2 = random_binary_trees(2, depth=1, num_repetitions=5, seed=0)
    assert g2.num_partitions == 1


@pytest.mark.parametrize(
    "root, partitions, match",
    [
        (range(4), [((0, 1, 2, 3), ((0, 1), (1, 2, 3)))], "not decomposable"),
        (range(4), [((0, 1, 2, 3), ((0,), (1, 2)))], "not smooth"),
        (range(4), [((0, 1, 2, 3), ((0, 1), (2, 3, 4)))], "not smooth"),
        (range(3), [((0, 1, 2), ((0,), (1,), (2,)))], "only binary"),
        (range(2), [((0, 1), ((), (0, 1)))], "empty"),
        (range(2), [((0, 1), ((0,), (1,))), ((0, 1), ((1,), (0,)))], "duplicates"),
        (range(4), [((0, 1, 2, 3), ((0, 1), (2, 3))), ((2, 3, 0), ((2,), (3, 0)))], "not reachable"),
        ((0, 2), [((0, 2), ((0,), (2,)))], "root region must be exactly"),
        (range(2), [], "at least one partition"),
        (range(2), [((0, 1), ((0, 0), (1,)))], "more than once"),
        (range(2), [((0, 1), ((-1,), (1,)))], r"variable index .* must be an int in \[0, inf\], got -1"),
        (range(2), [((0, 1),)], "must be a pair"),
    ],
)
def test_region_graph_validation(root, partitions, match):
    with pytest.raises(ValueError, match=match):
        RegionGraph(root, partitions)


@pytest.mark.parametrize("index", [0.5, True, "0"])
def test_region_graph_non_integer_index(index):
    # a wrong Python type is a TypeError (pyro_spvae.validation's rule)
    with pytest.raises(TypeError, match="variable index of the left child of partition #0 must be an int"):
        RegionGraph(range(2), [((0, 1), ((index,), (1,)))])


def test_region_graph_event_shape_validation():
    with pytest.raises(ValueError, match="event_shape"):
        RegionGraph(range(4), [((0, 1, 2, 3), ((0, 1), (2, 3)))], event_shape=(3, 2))
    g = RegionGraph(range(4), [((0, 1, 2, 3), ((0, 1), (2, 3)))], event_shape=(2, 2))
    assert g.event_shape == (2, 2) and g.num_leaf_regions == 2 and g.depth == 1


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(shape=(4, 4), steps=0), "step"),
        (dict(shape=(4, 0), steps=1), r"shape\[1\] must be an int in \[1, inf\]"),
        (dict(shape=(4, 4), steps=[]), "at least one step"),
        (dict(shape=(4, 4), steps=[(2, 2, 2)]), "entries"),
        (dict(shape=(4, 4), steps=4), "no step"),
        (dict(shape=(), steps=1), "at least one dimension"),
    ],
)
def test_poon_domingos_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        poon_domingos(**kwargs)


@pytest.mark.parametrize(
    "args, match",
    [((1, 1), "at least 2"), ((4, 3), "depth 3"), ((4, 0), "depth"), ((4, 1, 0), "num_repetitions")],
)
def test_random_binary_trees_validation(args, match):
    with pytest.raises(ValueError, match=match):
        random_binary_trees(*args)


@pytest.mark.parametrize(
    "fn, kwargs, match",
    [
        (poon_domingos, dict(shape=(4, 4.0), steps=1), r"shape\[1\] must be an int"),
        (poon_domingos, dict(shape=(4, 4), steps=True), r"steps\[0\] must be an int"),
        (poon_domingos, dict(shape=(4, 4), steps=[(2, "2")]), r"steps\[0\]\[1\] must be an int"),
        (random_binary_trees, dict(num_vars=4.0, depth=1), "num_vars must be an int"),
        (random_binary_trees, dict(num_vars=4, depth=True), "depth must be an int"),
        (random_binary_trees, dict(num_vars=4, depth=1, seed=1.5), "seed must be an int"),
    ],
)
def test_region_graph_builders_type_errors(fn, kwargs, match):
    with pytest.raises(TypeError, match=match):
        fn(**kwargs)


def test_region_graph_from_spec():
    g = region_graph_from_spec({"type": "poon_domingos", "steps": [4]}, (1, 8, 8))
    assert g.event_shape == (8, 8) and g.num_leaf_regions == 4
    r = region_graph_from_spec({"type": "random_binary_trees", "depth": 3, "seed": 1}, (1, 8, 8))
    assert r.event_shape == (8, 8) and r.num_vars == 64
    assert r.regions == random_binary_trees(64, 3, seed=1, event_shape=(8, 8)).regions
    assert region_graph_from_spec({"type": "poon_domingos"}, (1, 28, 28)).num_leaf_regions == 16
    with pytest.raises(ValueError, match="region_graph type"):
        region_graph_from_spec({"type": "quadtree"}, (1, 8, 8))
    with pytest.raises(ValueError, match="bad region graph arguments"):
        region_graph_from_spec({"type": "poon_domingos", "bogus": 1}, (1, 8, 8))
    with pytest.raises(ValueError, match=r"\(C, H, W\)"):
        region_graph_from_spec({"type": "poon_domingos"}, (8, 8))
    with pytest.raises(TypeError, match="spec must be a dict"):
        region_graph_from_spec("poon_domingos", (1, 8, 8))
    with pytest.raises(TypeError, match="depth must be an int"):
        region_graph_from_spec({"type": "random_binary_trees", "depth": 2.5}, (1, 8, 8))
