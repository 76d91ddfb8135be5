"""Input validation across the public API (issue 5): property-based tests.

Random bad inputs go to the likelihood heads (``make_likelihood``, ``.validate``, the distributions
they return), the grid distributions, the networks (``MLP``, ``ConvEncoder``, ``ConvDecoder``,
``Stacked*``, the builders) and ``VAE`` / ``GaussianGuide`` / ``build_vae``. Each must fail with
ONLY the documented exception type (``ValueError`` or ``TypeError``) and a message naming the
problem; any other exception (``RuntimeError``, ``AttributeError``, ...) fails the test because
:func:`expect_error` does not catch it. Valid random inputs must work (finite outputs, correct
shapes), so that the checks cannot pass by rejecting everything.
"""

from __future__ import annotations

import math
import re

import numpy as np
import pyro
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from pyro.infer import Trace_ELBO
from torch import nn

from pyro_spvae.distributions.binomial_grid import BinomialGrid
from pyro_spvae.distributions.categorical_grid import CategoricalGrid
from pyro_spvae.distributions.discretized_logistic import DiscretizedLogistic
from pyro_spvae.guides.gaussian import GaussianGuide
from pyro_spvae.models.vae import VAE
from pyro_spvae.nn import (
    ACTIVATIONS,
    ARCHS,
    LIKELIHOODS,
    MLP,
    ConvDecoder,
    ConvEncoder,
    GaussianLikelihood,
    StackedConvDecoder,
    StackedConvEncoder,
    StackedLinear,
    StackedMLP,
    build_decoder,
    build_encoder,
    make_likelihood,
)
from pyro_spvae.zoo import build_vae

# derandomize: the examples are a fixed function of the test (the suite's fixed-seed rule)
SETTINGS = settings(max_examples=40, deadline=None, derandomize=True)
FEW = settings(max_examples=20, deadline=None, derandomize=True)

GRID_LIKELIHOODS = ("binomial", "logistic", "categorical")


def expect_error(fn, exc: type[Exception], pattern: str) -> Exception:
    """Call ``fn()``; it must raise ``exc`` (exactly this documented type, not a subclass of
    another family) with a message matching the regex ``pattern``. Other exceptions propagate."""
    with pytest.raises((ValueError, TypeError)) as info:
        fn()
    assert isinstance(info.value, exc), (
        f"expected {exc.__name__}, got {type(info.value).__name__}: {info.value}"
    )
    assert re.search(pattern, str(info.value)), f"message {str(info.value)!r} does not match {pattern!r}"
    return info.value


# ---------------------------------------------------------------------------------------------
# strategies

small = st.integers(1, 4)

#: Values that are not positive ints, with the exception each must raise.
bad_positive_int = st.one_of(
    st.integers(-(10**6), 0).map(lambda v: (v, ValueError)),
    st.floats(allow_nan=True, allow_infinity=True).map(lambda v: (v, TypeError)),
    st.integers(1, 5).map(lambda v: (float(v), TypeError)),  # 3.0 is not an int
    st.booleans().map(lambda v: (v, TypeError)),
    st.sampled_from([None, "3", b"3", [3], (3,), np.float32(3.0)]).map(lambda v: (v, TypeError)),
)


@st.composite
def bad_width_list(draw):
    """A list of widths with exactly one bad entry; returns ``(widths, bad_index, exc)``."""
    widths = draw(st.lists(small, min_size=1, max_size=3))
    i = draw(st.integers(0, len(widths) - 1))
    value, exc = draw(bad_positive_int)
    widths[i] = value
    return widths, i, exc


@st.composite
def bad_event_shape(draw, rank: int = 3):
    """An invalid event shape; returns ``(event_shape, exc, pattern)``."""
    kind = draw(st.sampled_from(["entry", "empty", "type"]))
    if kind == "empty":
        return (), ValueError, r"event_shape must have at least one dimension"
    if kind == "type":
        value = draw(st.sampled_from([None, "1,4,4", b"\x01\x04\x04", 2.5, {1: 2}, object()]))
        return value, TypeError, r"event_shape"
    shape = [1] + [draw(st.integers(2, 5)) for _ in range(rank - 1)]
    i = draw(st.integers(0, rank - 1))
    value, exc = draw(bad_positive_int)
    shape[i] = value
    return tuple(shape), exc, rf"event_shape\[{i}\]"


def names_not_in(choices):
    return st.text(min_size=0, max_size=8).filter(lambda s: s not in choices)


bad_dtypes = st.sampled_from([torch.int64, torch.int32, torch.uint8, torch.bool, torch.complex64])
other_float_dtypes = st.sampled_from([torch.float64, torch.float16, torch.bfloat16])
not_tensors = st.sampled_from([None, 0.5, [0.0, 1.0], "x", np.zeros((2, 3), dtype=np.float32)])


# ---------------------------------------------------------------------------------------------
# networks: constructor hyper-parameters


def _net_factories():
    """name -> (factory(**overrides), names of its positive-int parameters)."""
    return {
        "MLP": (lambda **kw: MLP(**{"in_dim": 3, "hidden": (4,), "out_dim": 2, **kw}), ("in_dim", "out_dim")),
        "ConvEncoder": (
            lambda **kw: ConvEncoder(**{"event_shape": (1, 5, 5), "out_dim": 2, "channels": (2,), **kw}),
            ("out_dim",),
        ),
        "ConvDecoder": (
            lambda **kw: ConvDecoder(
                **{"in_dim": 2, "event_shape": (1, 5, 5), "out_channels": 2, "channels": (2,), **kw}
            ),
            ("in_dim", "out_channels"),
        ),
        "StackedLinear": (
            lambda **kw: StackedLinear(**{"num_nets": 2, "in_features": 3, "out_features": 2, **kw}),
            ("num_nets", "in_features", "out_features"),
        ),
        "StackedMLP": (
            lambda **kw: StackedMLP(**{"num_nets": 2, "in_dim": 3, "hidden": (4,), "out_dim": 2, **kw}),
            ("num_nets", "in_dim", "out_dim"),
        ),
        "StackedConvEncoder": (
            lambda **kw: StackedConvEncoder(
                **{"num_nets": 2, "event_shape": (1, 5, 5), "out_dim": 2, "channels": (2,), **kw}
            ),
            ("num_nets", "out_dim"),
        ),
        "StackedConvDecoder": (
            lambda **kw: StackedConvDecoder(
                **{
                    "num_nets": 2,
                    "in_dim": 2,
                    "event_shape": (1, 5, 5),
                    "out_channels": 2,
                    "channels": (2,),
                    **kw,
                }
            ),
            ("num_nets", "in_dim", "out_channels"),
        ),
    }


NETS = _net_factories()


@SETTINGS
@given(net=st.sampled_from(sorted(NETS)), data=st.data())
def test_networks_reject_bad_int_hyperparameters(net, data):
    factory, int_params = NETS[net]
    param = data.draw(st.sampled_from(int_params))
    value, exc = data.draw(bad_positive_int)
    expect_error(lambda: factory(**{param: value}), exc, rf"\b{param}\b")


@SETTINGS
@given(
    net=st.sampled_from(
        ["MLP", "StackedMLP", "ConvEncoder", "ConvDecoder", "StackedConvEncoder", "StackedConvDecoder"]
    ),
    bad=bad_width_list(),
    which=st.sampled_from(["hidden", "channels"]),
)
def test_networks_reject_bad_widths(net, bad, which):
    factory, _ = NETS[net]
    if which == "channels" and "Conv" not in net:
        which = "hidden"
    widths, i, exc = bad
    expect_error(lambda: factory(**{which: widths}), exc, rf"{which}\[{i}\]")


@SETTINGS
@given(net=st.sampled_from(sorted(NETS)), value=st.sampled_from(["30", None, 2.5, {"a": 1}, b"12"]))
def test_networks_reject_non_sequence_widths(net, value):
    factory, _ = NETS[net]
    which = "channels" if "Conv" in net else "hidden"
    if net == "StackedLinear":  # has no width list: check a width parameter instead
        expect_error(lambda: factory(in_features=value), TypeError, "in_features")
        return
    expect_error(lambda: factory(**{which: value}), TypeError, which)


@SETTINGS
@given(
    net=st.sampled_from(["ConvEncoder", "ConvDecoder", "StackedConvEncoder", "StackedConvDecoder"]),
    bad=bad_event_shape(),
    rank=st.sampled_from([1, 2, 4]),
)
def test_conv_networks_reject_bad_event_shape(net, bad, rank):
    factory, _ = NETS[net]
    event_shape, exc, pattern = bad
    expect_error(lambda: factory(event_shape=event_shape), exc, pattern)
    # a valid shape of the wrong rank: convolutions need (C, H, W)
    expect_error(lambda: factory(event_shape=(2,) * rank), ValueError, r"event_shape \(C, H, W\)")
    expect_error(lambda: factory(channels=()), ValueError, "channels")


@SETTINGS
@given(
    net=st.sampled_from(["MLP", "StackedMLP", "ConvEncoder", "ConvDecoder"]),
    name=names_not_in(ACTIVATIONS),
    non_str=st.sampled_from([3, None, 1.5, nn.Linear]),
)
def test_networks_reject_bad_activation(net, name, non_str):
    factory, _ = NETS[net]
    expect_error(lambda: factory(activation=name), ValueError, r"unknown activation")
    expect_error(lambda: factory(activation=non_str), TypeError, r"activation")


@SETTINGS
@given(arch=names_not_in(ARCHS), which=st.sampled_from(["encoder", "decoder"]))
def test_builders_reject_unknown_arch(arch, which):
    if which == "encoder":
        expect_error(lambda: build_encoder(arch, (1, 4, 4), 3), ValueError, "unknown arch")
    else:
        expect_error(lambda: build_decoder(arch, 3, (1, 4, 4)), ValueError, "unknown arch")
    expect_error(lambda: build_encoder("conv", (16,), 3), ValueError, r"\(C, H, W\)")


def test_stacked_from_modules_rejects_mismatched_layers():
    expect_error(
        lambda: StackedLinear.from_modules([nn.Linear(2, 3), nn.Linear(3, 3)]),
        ValueError,
        "identical in/out features",
    )
    expect_error(lambda: StackedLinear.from_modules([]), ValueError, "at least one")
    expect_error(
        lambda: StackedMLP.from_modules([MLP(2, (3,), 1), MLP(2, (4,), 1)]), ValueError, "identical widths"
    )


# ---------------------------------------------------------------------------------------------
# networks: inputs


@st.composite
def network_and_input(draw):
    """A small random network, its input feature shape and its expected output feature shape."""
    kind = draw(
        st.sampled_from(
            [
                "MLP",
                "ConvEncoder",
                "ConvDecoder",
                "StackedLinear",
                "StackedMLP",
                "StackedConvEncoder",
                "StackedConvDecoder",
                "dense_encoder",
                "dense_decoder",
            ]
        )
    )
    n, d_in, d_out = draw(small), draw(small), draw(small)
    hidden = tuple(draw(st.lists(small, max_size=2)))
    chans = tuple(draw(st.lists(small, min_size=1, max_size=2)))
    img = (draw(st.integers(1, 2)), draw(st.integers(1, 6)), draw(st.integers(1, 6)))
    if kind == "MLP":
        return MLP(d_in, hidden, d_out), (d_in,), (d_out,)
    if kind == "ConvEncoder":
        return ConvEncoder(img, d_out, chans, hidden), img, (d_out,)
    if kind == "ConvDecoder":
        return ConvDecoder(d_in, img, d_out, chans, hidden), (d_in,), (d_out, *img[1:])
    if kind == "StackedLinear":
        return StackedLinear(n, d_in, d_out), (n, d_in), (n, d_out)
    if kind == "StackedMLP":
        return StackedMLP(n, d_in, hidden, d_out), (n, d_in), (n, d_out)
    if kind == "StackedConvEncoder":
        return StackedConvEncoder(n, img, d_out, chans, hidden), (n, *img), (n, d_out)
    if kind == "StackedConvDecoder":
        return StackedConvDecoder(n, d_in, img, d_out, chans, hidden), (n, d_in), (n, d_out, *img[1:])
    if kind == "dense_encoder":
        return build_encoder("dense", img, d_out, hidden), img, (d_out,)
    return build_decoder("dense", d_in, img, hidden), (d_in,), img


batch_shapes = st.lists(st.integers(0, 3), max_size=2).map(tuple)


@SETTINGS
@given(case=network_and_input(), batch=batch_shapes, seed=st.integers(0, 2**16))
def test_networks_accept_valid_inputs(case, batch, seed):
    net, in_shape, out_shape = case
    torch.manual_seed(seed)
    x = torch.randn(*batch, *in_shape)
    y = net(x)
    assert y.shape == (*batch, *out_shape)
    assert y.dtype == torch.float32
    assert torch.isfinite(y).all()


@st.composite
def wrong_shape(draw, shape: tuple[int, ...]):
    """A shape whose trailing ``len(shape)`` dims differ from ``shape`` (or that is too short)."""
    kind = draw(st.sampled_from(["change", "drop", "scalar"]))
    if kind == "scalar" or (kind == "drop" and len(shape) == 1):
        return ()
    if kind == "drop":
        return shape[1:]
    s = list(shape)
    i = draw(st.integers(0, len(s) - 1))
    s[i] = draw(st.integers(1, 7).filter(lambda v: v != shape[i]))
    return (draw(st.integers(1, 2)), *s)


@SETTINGS
@given(case=network_and_input(), data=st.data())
def test_networks_reject_bad_inputs(case, data):
    net, in_shape, _ = case
    bad = data.draw(wrong_shape(in_shape))
    expect_error(lambda: net(torch.zeros(bad)), ValueError, r"input has shape .*expected \(\.\.\.")
    dtype = data.draw(st.one_of(bad_dtypes, other_float_dtypes))
    x = torch.zeros((2, *in_shape)).to(dtype)
    expect_error(
        lambda: net(x), ValueError, rf"input has dtype {re.escape(str(dtype))}, expected torch.float32"
    )
    obj = data.draw(not_tensors)
    expect_error(lambda: net(obj), TypeError, r"input must be a torch\.Tensor")


def test_network_dtype_follows_parameters():
    """The dtype check follows the module: a float64 module accepts float64 input only."""
    net = MLP(3, (4,), 2).double()
    assert net(torch.zeros(2, 3, dtype=torch.float64)).dtype == torch.float64
    expect_error(lambda: net(torch.zeros(2, 3)), ValueError, r"dtype torch\.float32, expected torch\.float64")


# ---------------------------------------------------------------------------------------------
# likelihood heads


@st.composite
def likelihood_case(draw, names=tuple(LIKELIHOODS)):
    name = draw(st.sampled_from(sorted(names)))
    event_shape = (draw(st.integers(1, 2)), draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    kwargs = {}
    if name == "gaussian":
        kwargs["scale"] = draw(st.sampled_from(["global", "predicted"]))
    if name in ("logistic", "categorical"):
        kwargs["num_levels"] = draw(st.sampled_from([2, 5, 256]))
    if name == "binomial":
        kwargs["total_count"] = draw(st.sampled_from([1, 7, 255]))
    return make_likelihood(name, event_shape, **kwargs)


@SETTINGS
@given(
    lik=likelihood_case(),
    batch=st.lists(st.integers(1, 3), max_size=2).map(tuple),
    scale=st.floats(0.0, 8.0),
    seed=st.integers(0, 2**16),
)
def test_likelihoods_accept_valid_params_and_data(lik, batch, scale, seed):
    torch.manual_seed(seed)
    params = scale * torch.randn(*batch, *lik.param_shape)
    d = lik(params)
    assert d.batch_shape == batch and d.event_shape == lik.event_shape
    x = d.sample()
    assert x.shape == (*batch, *lik.event_shape)
    assert lik.validate(x) is x
    lp = d.log_prob(x)
    assert lp.shape == batch and torch.isfinite(lp).all()


@SETTINGS
@given(lik=likelihood_case(), data=st.data())
def test_likelihood_validate_rejects_bad_x(lik, data):
    name = lik.name
    ok = torch.zeros((2, *lik.event_shape))
    assert lik.validate(ok) is ok
    flat_index = data.draw(st.integers(0, ok.numel() - 1))

    def corrupt(value):
        x = ok.clone()
        x.view(-1)[flat_index] = value
        return x

    expect_error(
        lambda: lik.validate(corrupt(float("nan"))), ValueError, r"x contains NaN values \(1 entries\)"
    )
    inf = data.draw(st.sampled_from([math.inf, -math.inf]))
    expect_error(lambda: lik.validate(corrupt(inf)), ValueError, r"x contains infinite values \(1 entries\)")
    if name != "gaussian":  # every other likelihood has a bounded support
        outside = data.draw(
            st.one_of(
                st.floats(1.01, 1e6),
                st.floats(-1e6, -0.01),
                st.floats(0.01, 0.99).filter(lambda v: not _on_grid(lik, v)),
            )
        )
        expect_error(
            lambda: lik.validate(corrupt(outside)),
            ValueError,
            rf"x has 1 values outside the support of the '{name}' likelihood",
        )
        # log_prob checks the support too (Pyro's validation is on by default)
        d = lik(torch.zeros((2, *lik.param_shape)))
        expect_error(lambda: d.log_prob(corrupt(outside)), ValueError, r"support")
    dtype = data.draw(bad_dtypes)
    expect_error(
        lambda: lik.validate(ok.to(dtype)), ValueError, rf"floating-point dtype.*{re.escape(str(dtype))}"
    )
    bad = data.draw(wrong_shape(lik.event_shape))
    expect_error(lambda: lik.validate(torch.zeros(bad)), ValueError, r"x has shape .*expected")
    obj = data.draw(not_tensors)
    expect_error(lambda: lik.validate(obj), TypeError, r"x must be a torch\.Tensor")


def _on_grid(lik, v: float) -> bool:
    if lik.name == "bernoulli":
        return v in (0.0, 1.0)
    last = lik.total_count if lik.name == "binomial" else lik.num_levels - 1
    return abs(v * last - round(v * last)) < 0.01


@SETTINGS
@given(lik=likelihood_case(), data=st.data())
def test_likelihood_rejects_bad_params(lik, data):
    bad = data.draw(wrong_shape(lik.param_shape))
    expect_error(
        lambda: lik(torch.zeros(bad)),
        ValueError,
        rf"{lik.name} likelihood expects decoder output of shape \(\.\.\., ",
    )
    dtype = data.draw(bad_dtypes)
    params = torch.zeros((2, *lik.param_shape))
    expect_error(
        lambda: lik(params.to(dtype)),
        ValueError,
        rf"{lik.name} likelihood params must have a floating-point dtype",
    )
    obj = data.draw(not_tensors)
    expect_error(lambda: lik(obj), TypeError, rf"{lik.name} likelihood params must be a torch\.Tensor")
    # NaN decoder output: the distribution's own argument validation names the parameter
    params.view(-1)[data.draw(st.integers(0, params.numel() - 1))] = math.nan
    expect_error(lambda: lik(params), ValueError, r"Expected parameter (logits|loc|scale|probs)")


@SETTINGS
@given(
    name=st.sampled_from(sorted(LIKELIHOODS)), bad_name=names_not_in(LIKELIHOODS), bad=bad_event_shape(rank=3)
)
def test_make_likelihood_rejects_bad_name_and_event_shape(name, bad_name, bad):
    expect_error(lambda: make_likelihood(bad_name, (1, 2, 2)), ValueError, "unknown likelihood")
    expect_error(lambda: make_likelihood(3, (1, 2, 2)), TypeError, "likelihood must be a name")
    event_shape, exc, pattern = bad
    expect_error(lambda: make_likelihood(name, event_shape), exc, pattern)
    built = make_likelihood(name, (1, 2, 2))
    expect_error(lambda: make_likelihood(built, event_shape), exc, pattern)
    expect_error(lambda: make_likelihood(built, (1, 2, 3)), ValueError, r"likelihood has event_shape")


bad_nonneg_float = st.one_of(
    st.floats(max_value=-1e-9), st.just(math.nan), st.just(math.inf), st.sampled_from(["0.1", None, [0.1]])
)


@SETTINGS
@given(data=st.data())
def test_likelihood_options_rejected(data):
    es = (1, 2, 2)
    scale = data.draw(names_not_in(GaussianLikelihood.SCALES))
    expect_error(lambda: make_likelihood("gaussian", es, scale=scale), ValueError, "unknown gaussian scale")
    min_scale = data.draw(bad_nonneg_float)
    expect_error(
        lambda: make_likelihood("gaussian", es, min_scale=min_scale),
        ValueError if isinstance(min_scale, float) else TypeError,
        "min_scale",
    )
    init = data.draw(st.one_of(st.floats(max_value=0.0), st.just(math.nan), st.just(math.inf)))
    expect_error(lambda: make_likelihood("gaussian", es, init_scale=init), ValueError, "init_scale")
    value, exc = data.draw(bad_positive_int)
    expect_error(lambda: make_likelihood("binomial", es, total_count=value), exc, "total_count")
    name = data.draw(st.sampled_from(["logistic", "categorical"]))
    value, exc = data.draw(st.one_of(bad_positive_int, st.just((1, ValueError))))
    expect_error(lambda: make_likelihood(name, es, num_levels=value), exc, "num_levels")
    mls = data.draw(st.sampled_from([math.nan, math.inf, -math.inf, "x", None]))
    expect_error(
        lambda: make_likelihood("logistic", es, min_log_scale=mls),
        ValueError if isinstance(mls, float) else TypeError,
        "min_log_scale",
    )
    expect_error(lambda: make_likelihood("bernoulli", es, bogus=1), TypeError, "bogus")
    expect_error(
        lambda: make_likelihood(make_likelihood("bernoulli", es), es, scale="global"),
        ValueError,
        "already built",
    )


# ---------------------------------------------------------------------------------------------
# grid distributions (validate_args=True)


@st.composite
def grid_distribution(draw):
    kind = draw(st.sampled_from(["binomial_logits", "binomial_probs", "logistic", "categorical"]))
    shape = tuple(draw(st.lists(st.integers(1, 3), max_size=2)))
    seed = draw(st.integers(0, 2**16))
    g = torch.Generator().manual_seed(seed)
    if kind.startswith("binomial"):
        n = draw(st.sampled_from([1, 4, 255]))
        if kind == "binomial_probs":
            return BinomialGrid(n, probs=torch.rand(shape, generator=g), validate_args=True), n + 1
        return BinomialGrid(n, logits=4 * torch.randn(shape, generator=g), validate_args=True), n + 1
    levels = draw(st.sampled_from([2, 3, 256]))
    if kind == "logistic":
        loc = 2 * torch.rand(shape, generator=g) - 0.5
        scale = torch.exp(4 * torch.rand(shape, generator=g) - 6)
        return DiscretizedLogistic(loc, scale, levels, validate_args=True), levels
    return CategoricalGrid(3 * torch.randn(*shape, levels, generator=g), validate_args=True), levels


@SETTINGS
@given(case=grid_distribution(), data=st.data())
def test_grid_distributions_log_prob(case, data):
    d, levels = case
    # valid: any grid value, broadcast against batch_shape; probabilities of all levels sum to 1
    k = data.draw(st.integers(0, levels - 1))
    lp = d.log_prob(torch.full(d.batch_shape, k / (levels - 1)))
    assert lp.shape == d.batch_shape and torch.isfinite(lp).all() and (lp <= 1e-6).all()
    all_levels = (
        torch.arange(levels, dtype=torch.float32).div(levels - 1).reshape(-1, *[1] * len(d.batch_shape))
    )
    total = d.log_prob(all_levels).logsumexp(0)
    torch.testing.assert_close(total, torch.zeros(d.batch_shape), atol=1e-4, rtol=0)
    x = d.sample((2,))
    assert torch.isfinite(d.log_prob(x)).all()
    # invalid values
    bad = data.draw(
        st.one_of(
            st.floats(1.001, 1e9),
            st.floats(-1e9, -0.001),
            st.just(math.nan),
            st.floats(0.0, 1.0).filter(lambda v: abs(v * (levels - 1) - round(v * (levels - 1))) > 0.01),
        )
    )
    expect_error(lambda: d.log_prob(torch.full(d.batch_shape, bad)), ValueError, r"within the support")
    expect_error(
        lambda: d.log_prob(data.draw(not_tensors)), ValueError, r"value argument to log_prob must be a Tensor"
    )
    if d.batch_shape and d.batch_shape[-1] > 1:  # a size-1 dim broadcasts against anything
        wrong = (*d.batch_shape[:-1], d.batch_shape[-1] + 1)
        expect_error(lambda: d.log_prob(torch.zeros(wrong)), ValueError, r"not broadcastable")


@SETTINGS
@given(data=st.data())
def test_grid_distribution_constructors_reject_bad_args(data):
    value, exc = data.draw(bad_positive_int)
    expect_error(lambda: BinomialGrid(value, logits=torch.zeros(2)), exc, r"total_count must be an int")
    expect_error(lambda: BinomialGrid(3), ValueError, r"exactly one of probs or logits")
    expect_error(
        lambda: BinomialGrid(3, probs=torch.zeros(2), logits=torch.zeros(2)), ValueError, "exactly one"
    )
    p = data.draw(st.one_of(st.floats(1.0001, 1e9), st.floats(-1e9, -1e-4), st.just(math.nan)))
    expect_error(
        lambda: BinomialGrid(3, probs=torch.full((2,), p), validate_args=True),
        ValueError,
        r"Expected parameter probs",
    )
    dtype = data.draw(st.sampled_from([torch.int64, torch.int32, torch.bool]))
    which = data.draw(st.sampled_from(["probs", "logits"]))
    expect_error(
        lambda: BinomialGrid(3, **{which: torch.zeros(2, dtype=dtype)}),
        ValueError,
        rf"BinomialGrid {which} must have a floating-point dtype",
    )
    # discretised logistic
    s = data.draw(st.one_of(st.floats(max_value=0.0, width=32), st.just(math.nan)))
    expect_error(
        lambda: DiscretizedLogistic(torch.zeros(2), torch.full((2,), s), validate_args=True),
        ValueError,
        r"Expected parameter scale",
    )
    expect_error(
        lambda: DiscretizedLogistic(torch.full((2,), math.nan), torch.ones(2), validate_args=True),
        ValueError,
        r"Expected parameter loc",
    )
    levels = data.draw(st.one_of(st.integers(-5, 1), st.just(256.0), st.just(True), st.just("256")))
    expect_error(
        lambda: DiscretizedLogistic(torch.zeros(2), torch.ones(2), levels),
        ValueError if isinstance(levels, int) and not isinstance(levels, bool) else TypeError,
        r"num_levels must be an int",
    )
    expect_error(
        lambda: DiscretizedLogistic([0.0], torch.ones(1)), ValueError, r"Input arguments must all be"
    )
    # categorical
    expect_error(lambda: CategoricalGrid(torch.zeros(3, data.draw(st.integers(0, 1)))), ValueError, r"L >= 2")
    expect_error(lambda: CategoricalGrid(torch.zeros(())), ValueError, r"L >= 2")
    expect_error(lambda: CategoricalGrid(data.draw(not_tensors)), ValueError, r"logits of shape")
    logits = torch.zeros(2, 3)
    logits[data.draw(st.integers(0, 1)), data.draw(st.integers(0, 2))] = math.nan
    expect_error(
        lambda: CategoricalGrid(logits, validate_args=True), ValueError, r"Expected parameter logits"
    )


# ---------------------------------------------------------------------------------------------
# VAE, GaussianGuide, build_vae

EVENT = (1, 4, 4)


@st.composite
def vae_case(draw):
    lik = draw(st.sampled_from(sorted(LIKELIHOODS)))
    arch = draw(st.sampled_from(ARCHS))
    z_dim = draw(st.integers(1, 3))
    hidden = tuple(draw(st.lists(st.integers(1, 6), max_size=2)))
    channels = tuple(draw(st.lists(st.integers(1, 3), min_size=1, max_size=2)))
    activation = draw(st.sampled_from(sorted(ACTIVATIONS)))
    model, guide = build_vae(
        EVENT, z_dim=z_dim, hidden=hidden, likelihood=lik, arch=arch, activation=activation, channels=channels
    )
    return model, guide


@FEW
@given(case=vae_case(), batch=st.integers(1, 3), seed=st.integers(0, 2**16))
def test_vae_accepts_valid_data(case, batch, seed):
    model, guide = case
    pyro.set_rng_seed(seed)
    pyro.clear_param_store()
    x = model.sample(batch, mean=False)  # in the likelihood's support by construction
    assert x.shape == (batch, *EVENT)
    loss = Trace_ELBO().loss(model, guide, x)
    assert math.isfinite(loss)
    loc, scale = guide.encode(x)
    assert loc.shape == scale.shape == (batch, model.z_dim) and (scale > 0).all()
    assert model.reconstruct(x, guide).shape == x.shape


@FEW
@given(case=vae_case(), data=st.data())
def test_vae_and_guide_reject_bad_x(case, data):
    model, guide = case
    name = model.likelihood.name
    ok = model.sample(2, mean=False)
    i = data.draw(st.integers(0, ok.numel() - 1))

    def corrupt(value):
        x = ok.clone()
        x.view(-1)[i] = value
        return x

    def both(x, exc, pattern):
        expect_error(lambda: model(x), exc, pattern)
        if not (name != "gaussian" and "support" in pattern):  # the guide does not know the support
            expect_error(lambda: guide(x), exc, pattern)

    both(corrupt(math.nan), ValueError, r"x contains NaN")
    both(corrupt(data.draw(st.sampled_from([math.inf, -math.inf]))), ValueError, r"x contains infinite")
    if name != "gaussian":
        both(corrupt(data.draw(st.floats(1.01, 1e3))), ValueError, rf"outside the support of the '{name}'")
    rank = data.draw(st.sampled_from(["unbatched", "extra", "other"]))
    shape = {"unbatched": EVENT, "extra": (1, 2, *EVENT), "other": (2, 1, 4, 5)}[rank]
    both(torch.zeros(shape), ValueError, r"x has shape .*expected \(B, 1, 4, 4\)")
    both(torch.zeros((0, *EVENT)), ValueError, r"x is an empty batch")
    dtype = data.draw(bad_dtypes)
    both(ok.to(dtype), ValueError, r"x must have a floating-point dtype")
    dtype = data.draw(other_float_dtypes)
    both(ok.to(dtype), ValueError, rf"x has dtype {re.escape(str(dtype))}, expected torch\.float32")
    both(data.draw(not_tensors), TypeError, r"x must be a torch\.Tensor")
    # through an ELBO the documented type survives Pyro's re-raising
    expect_error(lambda: Trace_ELBO().loss(model, guide, corrupt(math.nan)), ValueError, "NaN")
    # decode / sample / prior arguments
    expect_error(lambda: model.decode(torch.zeros(3, model.z_dim + 1)), ValueError, r"z has shape .*expected")
    expect_error(
        lambda: model.decode(torch.zeros(3, model.z_dim, dtype=data.draw(bad_dtypes))),
        ValueError,
        r"z has dtype",
    )
    expect_error(lambda: model.decode(data.draw(not_tensors)), TypeError, r"z must be a torch\.Tensor")
    value, exc = data.draw(bad_positive_int)
    expect_error(lambda: model.sample(value), exc, "num_samples")
    expect_error(lambda: model.prior(data.draw(st.integers(-100, -1))), ValueError, "batch_size")
    expect_error(lambda: model.reconstruct(ok, object()), TypeError, "guide must provide encode")


@SETTINGS
@given(data=st.data(), which=st.sampled_from(["VAE", "GaussianGuide", "build_vae"]))
def test_vae_and_guide_reject_bad_hyperparameters(data, which):
    ctor = {"VAE": VAE, "GaussianGuide": GaussianGuide, "build_vae": lambda es, **kw: build_vae(es, **kw)}[
        which
    ]
    small_kw = {"hidden": (4,)}
    value, exc = data.draw(bad_positive_int)
    expect_error(lambda: ctor(EVENT, z_dim=value, **small_kw), exc, r"z_dim")
    widths, i, exc = data.draw(bad_width_list())
    expect_error(lambda: ctor(EVENT, z_dim=2, hidden=widths), exc, rf"hidden\[{i}\]")
    event_shape, exc, pattern = data.draw(bad_event_shape())
    expect_error(lambda: ctor(event_shape, z_dim=2, **small_kw), exc, pattern)
    expect_error(
        lambda: ctor(EVENT, z_dim=2, arch=data.draw(names_not_in(ARCHS)), **small_kw),
        ValueError,
        "unknown arch",
    )
    expect_error(lambda: ctor((16,), z_dim=2, arch="conv", **small_kw), ValueError, r"\(C, H, W\)")
    expect_error(
        lambda: ctor(EVENT, z_dim=2, activation=data.draw(names_not_in(ACTIVATIONS)), **small_kw),
        ValueError,
        "unknown activation",
    )
    widths, i, exc = data.draw(bad_width_list())
    expect_error(
        lambda: ctor(EVENT, z_dim=2, arch="conv", channels=widths, **small_kw), exc, rf"channels\[{i}\]"
    )
    if which != "GaussianGuide":
        expect_error(
            lambda: ctor(EVENT, z_dim=2, likelihood=data.draw(names_not_in(LIKELIHOODS)), **small_kw),
            ValueError,
            "unknown likelihood",
        )
        expect_error(
            lambda: ctor(
                EVENT,
                z_dim=2,
                likelihood="gaussian",
                likelihood_kwargs={"scale": data.draw(names_not_in(GaussianLikelihood.SCALES))},
                **small_kw,
            ),
            ValueError,
            "unknown gaussian scale",
        )
    if which != "VAE":
        min_scale = data.draw(bad_nonneg_float)
        expect_error(
            lambda: ctor(EVENT, z_dim=2, min_scale=min_scale, **small_kw),
            ValueError if isinstance(min_scale, float) else TypeError,
            "min_scale",
        )


def test_check_instance_returns_the_value_and_names_the_expected_type():
    from pyro_spvae.validation import check_instance

    layer = nn.Linear(2, 2)
    assert check_instance("layer", layer, nn.Module) is layer
    with pytest.raises(TypeError, match=r"^layer must be a Module, got str$"):
        check_instance("layer", "linear", nn.Module)
    with pytest.raises(TypeError, match=r"^elbo must be a pyro_spvae.infer.GECO, got Trace_ELBO$"):
        check_instance("elbo", Trace_ELBO(), nn.Module, "pyro_spvae.infer.GECO")
