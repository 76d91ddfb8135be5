"""Property tests: SPN construction with random (often invalid) hyper-parameters raises only the
documented ``TypeError`` (wrong type) or ``ValueError`` (wrong value); valid ones give normalised
networks."""

import itertools

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pyro_spvae.spn import SPN, poon_domingos, random_binary_trees

SETTINGS = settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
junk = st.one_of(st.integers(-3, 6), st.none(), st.booleans(), st.floats(-2, 5), st.text(max_size=2))
# mostly plausible values, sometimes junk, so that both the valid and the error paths are exercised


def mostly(valid: st.SearchStrategy) -> st.SearchStrategy:
    """``valid`` five times out of six, junk otherwise."""
    return st.integers(0, 5).flatmap(lambda i: junk if i == 0 else valid)


VALID: dict[str, int] = {}


def _check_normalised(spn: SPN) -> None:
    """Sum over all binary states = 1 (only small domains)."""
    V = spn.graph.num_vars
    X = torch.tensor(list(itertools.product([0.0, 1.0], repeat=V))).reshape(-1, *spn.event_shape)
    assert abs(torch.logsumexp(spn.log_prob(X).double(), 0).item()) < 1e-4


@SETTINGS
@given(
    num_vars=mostly(st.integers(2, 7)),
    depth=mostly(st.integers(1, 2)),
    reps=mostly(st.integers(1, 3)),
    seed=mostly(st.one_of(st.none(), st.integers(0, 5))),
    num_sums=mostly(st.integers(1, 4)),
    num_leaf=mostly(st.one_of(st.none(), st.integers(1, 4))),
)
def test_random_spn_construction(num_vars, depth, reps, seed, num_sums, num_leaf):
    try:
        g = random_binary_trees(num_vars, depth, reps, seed=seed)
        spn = SPN(g, num_sums=num_sums, num_leaf_components=num_leaf)
    except (TypeError, ValueError):  # TypeError: wrong type, ValueError: wrong value
        return
    assert isinstance(num_vars, int) and 2 <= num_vars and 2**depth <= num_vars
    assert isinstance(num_sums, int) and num_sums > 0
    _check_normalised(spn)
    VALID["rat"] = VALID.get("rat", 0) + 1


@SETTINGS
@given(
    shape=mostly(st.one_of(st.integers(2, 8), st.lists(st.integers(1, 3), min_size=1, max_size=3))),
    steps=mostly(st.one_of(st.integers(1, 2), st.lists(st.integers(1, 2), min_size=1, max_size=2))),
    num_sums=mostly(st.integers(1, 4)),
)
def test_poon_domingos_spn_construction(shape, steps, num_sums):
    try:
        g = poon_domingos(shape, steps)
        spn = SPN(g, num_sums=num_sums)
    except (TypeError, ValueError):  # TypeError: wrong type, ValueError: wrong value
        return
    assert g.num_partitions >= 1 and all(s > 0 for s in g.event_shape)
    if g.num_vars <= 8:
        _check_normalised(spn)
    VALID["pd"] = VALID.get("pd", 0) + 1


LEAF_ARG = {"categorical": "num_categories", "binomial": "total_count"}


@SETTINGS
@given(data=st.data())
def test_leaf_arguments(data):
    leaves = data.draw(
        st.sampled_from(["bernoulli", "categorical", "normal", "binomial", "poisson", None, 3])
    )
    kwargs = {}
    if leaves in LEAF_ARG:
        kwargs[LEAF_ARG[leaves]] = data.draw(mostly(st.integers(1, 4)))
    if data.draw(st.integers(0, 5)) == 0:
        kwargs[data.draw(st.sampled_from(["num_categories", "total_count", "bogus"]))] = data.draw(junk)
    init_std = data.draw(mostly(st.one_of(st.floats(-1, 3), st.sampled_from([float("nan"), float("inf")]))))
    if init_std is not None:
        kwargs["init_std"] = init_std
    g = random_binary_trees(4, 1, seed=0)
    try:
        spn = SPN(g, 2, leaves=leaves, **kwargs)
    except (TypeError, ValueError):  # TypeError: wrong type, ValueError: wrong value
        return
    if leaves is not None:
        assert torch.isfinite(spn.log_prob(torch.full((4,), float("nan")))).all()
        if leaves != "normal":
            _check_normalised_discrete(spn)
    else:
        assert torch.isfinite(spn(torch.zeros(g.num_leaf_regions, 2)))
    VALID["leaves"] = VALID.get("leaves", 0) + 1


def _check_normalised_discrete(spn: SPN) -> None:
    n = {"categorical": lambda: spn.leaves.num_categories, "binomial": lambda: spn.leaves.total_count + 1}
    nv = n.get(type(spn.leaves).__name__.replace("Leaves", "").lower(), lambda: 2)()
    X = torch.tensor(list(itertools.product(range(nv), repeat=4)), dtype=torch.float32)
    assert abs(torch.logsumexp(spn.log_prob(X).double(), 0).item()) < 1e-4


def test_property_tests_exercised_valid_configurations():
    """Guard against vacuous property tests: each of them built some valid networks (runs after them)."""
    if len(VALID) < 3:
        pytest.skip(f"run together with the property tests above ({VALID})")
    assert min(VALID.values()) >= 3, VALID


def test_bad_graph_type():
    with pytest.raises(TypeError, match="RegionGraph"):
        SPN("graph")
