"""Likelihood heads: decoder output -> observation distribution ``p(x | z)``.

Contract (``CONTRIBUTING.md``): ``make_likelihood(name, event_shape) -> Likelihood`` with
``lik.num_params`` decoder output channels per input channel; ``lik(params)`` maps decoder output
of shape ``(..., num_params * C, *rest)`` (``event_shape = (C, *rest)``, e.g. ``(C, H, W)``) to a
:class:`torch.distributions.Distribution` with ``batch_shape == ...`` and
``event_shape == event_shape`` (its ``sample()`` and ``mean`` are how models draw observations);
``lik.validate(x)`` raises :class:`TypeError`/:class:`ValueError` naming the problem, and
``lik.check_support(x)`` checks the support only (any shape). :func:`check_observations` is the
data check shared by models and guides (NaN = missing where allowed).

Channel layout of ``params``: parameter-major, i.e. channels ``[j * C, (j + 1) * C)`` hold
parameter ``j`` (for ``"categorical"``, ``j`` is the level ``0..255``).

=================  ==========  ==============================================================
name               num_params  distribution per element
=================  ==========  ==============================================================
``bernoulli``      1           ``Bernoulli(logits)`` on ``{0, 1}``
``gaussian``       1 or 2      ``Normal(loc, scale)``; ``scale="global"``: learnt per-element
                               log-precision parameter (shared by all inputs);
                               ``scale="predicted"``: ``softplus`` of a second decoder output;
                               ``scale="precision"``: precision ``1 + g^2`` of a second decoder
                               output ``g`` (the SPVAE reference, Tan & Peharz 2019, usually with
                               ``loc="sigmoid"``); ``scale="log_scale"``: ``exp`` of a second
                               input (e.g. a model's own log-scale parameter)
``binomial``       1           :class:`~pyro_spvae.distributions.BinomialGrid` ``(255, logits)``
                               on ``{k / 255}`` (SPVAE paper, discrete MNIST); ``eps > 0``: the
                               reference's squeezed ``p`` (:class:`SqueezedBinomialGrid`)
``logistic``       2           :class:`~pyro_spvae.distributions.DiscretizedLogistic`
                               ``(loc, exp(log_scale))`` (Salimans et al. 2017, eq. 2)
``categorical``    256         :class:`~pyro_spvae.distributions.CategoricalGrid` (256-way
                               softmax, van den Oord et al. 2016)
=================  ==========  ==============================================================
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import pyro.distributions as dist
import torch
import torch.nn.functional as F
from torch import nn
from torch.distributions import Distribution, constraints

from pyro_spvae.validation import (
    broadcastable,
    check_choice,
    check_event_shape,
    check_float_tensor,
    check_floating_dtype,
    check_input_like,
    check_int,
    check_positive_float,
    check_positive_int,
    check_real,
)
from pyro_spvae.validation_memo import passed_once

from ..distributions.binomial_grid import BinomialGrid
from ..distributions.categorical_grid import CategoricalGrid
from ..distributions.discretized_logistic import DiscretizedLogistic
from ..distributions.grid import GridConstraint
from .reference_likelihoods import SqueezedBinomialGrid, precision_gaussian_log_lik, squeezed_count_log_pmf

__all__ = [
    "Likelihood",
    "BernoulliLikelihood",
    "CheckedBernoulli",
    "GaussianLikelihood",
    "BinomialLikelihood",
    "LogisticLikelihood",
    "CategoricalLikelihood",
    "LIKELIHOODS",
    "SqueezedBinomialGrid",
    "all_binary",
    "check_observations",
    "make_likelihood",
    "precision_gaussian_log_lik",
    "squeezed_count_log_pmf",
]

def check_observations(x: object, event_shape: Sequence[int], *, batch_dims: int | None = None,
                       allow_missing: bool = False, like: torch.Tensor | None = None,
                       name: str = "x") -> tuple[torch.Tensor, torch.Tensor]:
    """Check a batch of observations given to a model or a guide, with ``NaN`` = missing if allowed.

    In order: a floating-point tensor (:func:`~pyro_spvae.validation.check_floating_dtype`); the
    dtype and device of ``like`` (a module parameter or buffer,
    :func:`~pyro_spvae.validation.check_input_like`); then, with the missing entries set to 0
    (which lies in the support of every likelihood here), shape ``(B_1..B_n, *event_shape)`` with
    ``batch_dims`` leading dims and no empty batch, and no NaN (unless ``allow_missing``) or
    infinite entries (:func:`~pyro_spvae.validation.check_float_tensor`).

    :param x: the observations.
    :param event_shape: the shape of one observation.
    :param batch_dims: exact number of leading batch dims (``None``: any).
    :param allow_missing: accept ``NaN`` entries as missing values.
    :param like: fixes the dtype and device ``x`` must have, or ``None``.
    :param name: the name used in error messages.
    :returns: ``x`` itself and ``x`` with its missing entries set to 0 (``x`` again when none is).
    :raises TypeError: if ``x`` is not a tensor.
    :raises ValueError: naming the problem otherwise.
    """
    x = check_floating_dtype(name, x)
    if like is not None:
        check_input_like(name, x, like)
    observed = x
    if allow_missing:
        missing = torch.isnan(x)
        if bool(missing.any()):
            observed = torch.where(missing, torch.zeros_like(x), x)
    check_float_tensor(name, observed, tuple(event_shape), batch_dims=batch_dims)
    return x, observed


class Likelihood(nn.Module):
    """Base class of the likelihood heads.

    :param event_shape: shape of one observation, ``(C, H, W)`` for images (any non-empty shape
        whose first entry is the channel axis is accepted).

    Attributes: :attr:`name`, :attr:`num_params`, :attr:`event_shape`, :attr:`support` (an
    elementwise constraint), :attr:`support_description` and :attr:`support_hint` (for error
    messages) and :attr:`label` (a display name such as ``"Binomial(255)"``).
    """

    name: str = ""
    support: constraints.Constraint = constraints.real
    support_description: str = "real numbers"
    support_hint: str = ""

    def __init__(self, event_shape: Sequence[int]) -> None:
        super().__init__()
        self.event_shape = check_event_shape("event_shape", event_shape)

    @property
    def num_params(self) -> int:
        """Decoder output channels per input channel."""
        raise NotImplementedError

    @property
    def param_shape(self) -> tuple[int, ...]:
        """Trailing shape of the decoder output: ``(num_params * C, *event_shape[1:])``."""
        return (self.num_params * self.event_shape[0], *self.event_shape[1:])

    def _split(self, params: torch.Tensor) -> torch.Tensor:
        """``(..., num_params * C, *rest) -> (..., num_params, C, *rest)``."""
        check_floating_dtype(f"{self.name} likelihood params", params)
        n = len(self.event_shape)
        if params.dim() < n or tuple(params.shape[params.dim() - n:]) != self.param_shape:
            expected = ", ".join(str(s) for s in self.param_shape)
            raise ValueError(
                f"{self.name} likelihood expects decoder output of shape (..., {expected}) "
                f"(num_params={self.num_params} x event_shape={self.event_shape}), got {tuple(params.shape)}"
            )
        batch = params.shape[: params.dim() - n]
        return params.reshape(*batch, self.num_params, *self.event_shape)

    def _param(self, split: torch.Tensor, j: int) -> torch.Tensor:
        return split.select(split.dim() - len(self.event_shape) - 1, j)

    @property
    def label(self) -> str:
        """Display name of the distribution, e.g. ``"Bernoulli"``."""
        return self.name.capitalize()

    def check_support(self, x: torch.Tensor, name: str = "x", what: str | None = None) -> torch.Tensor:
        """Check that every entry of ``x`` (any shape, no NaN) lies in :attr:`support`; return ``x``.

        :param name: the name used in error messages.
        :param what: how the message names this likelihood (default ``"'<name>' likelihood"``).
        :raises ValueError: naming the number of bad values and a few of them.
        """
        if self.support is constraints.real or self._in_support(x):
            return x
        ok = self.support.check(x)
        if not bool(ok.all()):
            bad = x[~ok]
            what = f"{self.name!r} likelihood" if what is None else what
            raise ValueError(
                f"{name} has {bad.numel()} values outside the support of the {what} "
                f"({self.support_description}), e.g. {bad.flatten()[:3].tolist()}" + self.support_hint
            )
        return x

    def _in_support(self, x: torch.Tensor) -> bool:
        """A cheap sufficient test that every entry of ``x`` lies in :attr:`support` (``False``: run
        the elementwise check, which also finds the bad values for the message)."""
        return False

    def validate(self, x: object, *, batch_dims: int | None = None, allow_missing: bool = False,
                 like: torch.Tensor | None = None, what: str | None = None) -> torch.Tensor:
        """Check observations ``x`` of shape ``(..., *event_shape)`` and return them.

        :func:`check_observations` (tensor, floating dtype, ``like``'s dtype and device, shape,
        ``NaN``/inf), then :meth:`check_support` on the observed entries.

        :param batch_dims: exact number of leading batch dims (``None``: any).
        :param allow_missing: accept ``NaN`` entries as missing values.
        :param like: fixes the dtype and device ``x`` must have, or ``None``.
        :param what: how error messages name this likelihood (see :meth:`check_support`).
        :raises TypeError: if ``x`` is not a tensor.
        :raises ValueError: for a non-floating dtype, a wrong shape, NaN (unless ``allow_missing``)
            or inf entries or values outside the support of this likelihood.
        """
        x, observed = check_observations(x, self.event_shape, batch_dims=batch_dims,
                                         allow_missing=allow_missing, like=like)
        self.check_support(observed, what=what)
        return x

    def forward(self, params: torch.Tensor) -> Distribution:
        """Distribution with ``batch_shape = params.shape[:-len(event_shape)]`` and
        ``event_shape = event_shape``."""
        raise NotImplementedError

    def _independent(self, base: Distribution) -> Distribution:
        return base.to_event(len(self.event_shape))

    def extra_repr(self) -> str:
        return f"event_shape={self.event_shape}, num_params={self.num_params}"


def all_binary(x: torch.Tensor) -> bool:
    """Whether every entry of ``x`` is 0 or 1, by one fused elementwise op and one ``aminmax``:
    ``x - x^2 == 0`` everywhere (exact in floating point: ``x^2`` never rounds to ``x`` elsewhere,
    infinities give ``-inf`` and NaN stays NaN), ~5x faster than torch's two comparisons, ``or`` and
    ``all`` on boolean tensors for a batch of MNIST images. ``False`` for an empty or non-floating
    tensor (the caller then runs the elementwise check). Run once per tensor inside
    :func:`~pyro_spvae.validation_memo.checks_once` (a step's model check and ``log_prob`` check)."""
    return passed_once("binary", x, _all_binary)


def _all_binary(x: torch.Tensor) -> bool:
    if x.numel() == 0 or not x.is_floating_point():
        return False
    lo, hi = torch.aminmax(torch.addcmul(x, x, x, value=-1))
    return bool(lo == 0) and bool(hi == 0)


class CheckedBernoulli(dist.Bernoulli):
    """``pyro.distributions.Bernoulli(logits=...)`` whose argument and sample checks (when validation
    is on, as for any distribution) decide the common case by one reduction each: the logits by
    their sum (NaN only when an entry is NaN, or for ``+inf`` with ``-inf``) and a sample by
    :func:`all_binary`; otherwise torch's elementwise checks run and raise their usual messages.
    The head of :class:`BernoulliLikelihood`: its checks run on every trace of a training step.

    :param logits: log-odds, any shape (the batch shape).
    :param validate_args: as for any torch distribution (``None``: the global setting).
    """

    def __init__(self, logits: torch.Tensor, validate_args: bool | None = None) -> None:
        check = torch.distributions.Distribution._validate_args if validate_args is None else validate_args
        super().__init__(logits=logits, validate_args=False)
        if check and bool(torch.isnan(logits.detach().sum())):
            dist.Bernoulli(logits=logits, validate_args=True)  # torch's check: raises on NaN
        self._validate_args = check

    def expand(self, batch_shape, _instance=None) -> CheckedBernoulli:
        new = self._get_checked_instance(CheckedBernoulli, _instance)
        return super().expand(batch_shape, _instance=new)

    def _validate_sample(self, value: torch.Tensor) -> None:
        if not (isinstance(value, torch.Tensor) and all_binary(value)):
            return super()._validate_sample(value)  # torch's checks and messages
        if not broadcastable(value.shape, self.batch_shape):  # torch's shape rule (event shape ())
            super()._validate_sample(value)  # raises torch's message


class BernoulliLikelihood(Likelihood):
    """``x ~ Bernoulli(sigmoid(logits))`` per element; for binarised images. ``num_params = 1``.

    The distribution is a :class:`CheckedBernoulli` (Pyro's ``Bernoulli``, cheaper checks)."""

    name = "bernoulli"
    support = constraints.boolean
    support_description = "binary values in {0, 1}"

    @property
    def num_params(self) -> int:
        return 1

    def _in_support(self, x: torch.Tensor) -> bool:
        return all_binary(x)

    def forward(self, params: torch.Tensor) -> Distribution:
        logits = self._param(self._split(params), 0)
        return self._independent(CheckedBernoulli(logits))


class GaussianLikelihood(Likelihood):
    r"""``x ~ Normal(loc, scale)`` per element with a learnt scale.

    :param event_shape: observation shape.
    :param scale: ``"global"`` (default): a learnt per-element log-precision parameter
        ``log_precision`` of shape ``event_shape`` shared by all inputs, ``scale =
        exp(-log_precision / 2)``;
        ``"predicted"``: the decoder also outputs ``raw`` and ``scale = softplus(raw)``;
        ``"precision"``: the decoder also outputs ``g`` and the precision is ``1 + g^2`` per input
        and element (``scale <= 1``; the SPVAE reference code, Tan & Peharz 2019; ``min_scale`` is
        not added);
        ``"log_scale"``: the second input is the log standard deviation, ``scale = exp(log_scale)``
        (for a model that holds its own scale parameters, e.g. the per-leaf scales of SPVAE).
    :param min_scale: lower bound added to the scale (numerical safety), ``>= 0``.
    :param init_scale: initial scale of the ``"global"`` parameter, ``> 0``.
    :param loc: ``"identity"`` (default): the first output is the mean; ``"sigmoid"``: the mean is
        its sigmoid (data in ``[0, 1]``, as in the SPVAE reference).
    """

    name = "gaussian"

    #: The ``scale`` modes.
    SCALES: tuple[str, ...] = ("global", "predicted", "precision", "log_scale")
    #: The ``loc`` modes.
    LOCS: tuple[str, ...] = ("identity", "sigmoid")

    def __init__(self, event_shape: Sequence[int], scale: str = "global", min_scale: float = 1e-4,
                 init_scale: float = 1.0, loc: str = "identity") -> None:
        super().__init__(event_shape)
        self.scale_mode = check_choice("gaussian scale", scale, self.SCALES)
        self.loc_mode = check_choice("gaussian loc", loc, self.LOCS)
        self.min_scale = check_real("min_scale", min_scale, 0.0)
        init_scale = check_positive_float("init_scale", init_scale)
        if scale == "global":
            self.log_precision = nn.Parameter(torch.full(self.event_shape, -2.0 * math.log(init_scale)))

    @property
    def num_params(self) -> int:
        return 1 if self.scale_mode == "global" else 2

    @property
    def precision(self) -> torch.Tensor:
        """The learnt precision ``1 / scale^2`` (``"global"`` mode only), shape ``event_shape``."""
        if self.scale_mode != "global":
            raise AttributeError("precision is a parameter only with scale='global'")
        return self.log_precision.exp()

    def forward(self, params: torch.Tensor) -> Distribution:
        split = self._split(params)
        loc = self._param(split, 0)
        if self.loc_mode == "sigmoid":
            loc = torch.sigmoid(loc)
        if self.scale_mode == "global":
            scale = torch.exp(-0.5 * self.log_precision) + self.min_scale
        elif self.scale_mode == "predicted":
            scale = F.softplus(self._param(split, 1)) + self.min_scale
        elif self.scale_mode == "precision":
            g = self._param(split, 1)
            scale = torch.rsqrt(1.0 + g * g)
        else:
            scale = torch.exp(self._param(split, 1)) + self.min_scale
        loc, scale = torch.broadcast_tensors(loc, scale)
        return self._independent(dist.Normal(loc, scale))


class BinomialLikelihood(Likelihood):
    """``x = k / n``, ``k ~ Binomial(n, sigmoid(logits))`` per element (``n = 255`` for 8-bit data,
    the SPVAE paper's discrete likelihood). ``num_params = 1``.

    :param total_count: number of trials ``n``.
    :param eps: ``0`` (default): the exact Binomial of ``sigmoid(logits)``; ``eps > 0``: the SPVAE
        reference's squeezed success probability and log-pmf (:class:`SqueezedBinomialGrid`, the
        reference uses ``1e-7``).
    """

    name = "binomial"

    def __init__(self, event_shape: Sequence[int], total_count: int = 255, eps: float = 0.0) -> None:
        super().__init__(event_shape)
        self.total_count = check_positive_int("total_count", total_count)
        self.eps = check_real("eps", eps, 0.0, 0.5, high_open=True)
        self.support = GridConstraint(self.total_count + 1)
        self.support_description = f"the grid k/{self.total_count}, k = 0..{self.total_count}"

    support_hint = "; use the 'spvae-discrete' transform"

    @property
    def label(self) -> str:
        return f"Binomial({self.total_count})"

    @property
    def num_params(self) -> int:
        return 1

    def forward(self, params: torch.Tensor) -> Distribution:
        logits = self._param(self._split(params), 0)
        if self.eps > 0:
            return self._independent(SqueezedBinomialGrid(self.total_count, logits=logits, eps=self.eps))
        return self._independent(BinomialGrid(self.total_count, logits=logits))


class LogisticLikelihood(Likelihood):
    """Discretised logistic on the ``num_levels``-point grid of ``[0, 1]`` with edge bins absorbing
    the tails (Salimans et al. 2017). ``num_params = 2``: ``loc`` and ``log_scale``.

    :param num_levels: number of grid levels (256 for 8-bit data).
    :param min_log_scale: ``log_scale`` is clamped from below at this value (PixelCNN++ uses -7).
    """

    name = "logistic"

    def __init__(self, event_shape: Sequence[int], num_levels: int = 256,
                 min_log_scale: float = -7.0) -> None:
        super().__init__(event_shape)
        self.num_levels = check_int("num_levels", num_levels, 2)
        self.min_log_scale = check_real("min_log_scale", min_log_scale)
        self.support = GridConstraint(self.num_levels)
        self.support_description = f"the grid k/{self.num_levels - 1}, k = 0..{self.num_levels - 1}"

    @property
    def num_params(self) -> int:
        return 2

    def forward(self, params: torch.Tensor) -> Distribution:
        split = self._split(params)
        loc = self._param(split, 0)
        scale = self._param(split, 1).clamp(min=self.min_log_scale).exp()
        return self._independent(DiscretizedLogistic(loc, scale, self.num_levels))


class CategoricalLikelihood(Likelihood):
    """``num_levels``-way softmax per element over the grid ``{k / (num_levels - 1)}``.
    ``num_params = num_levels`` (256 logits per element for 8-bit data).

    :param num_levels: number of grid levels.
    """

    name = "categorical"

    def __init__(self, event_shape: Sequence[int], num_levels: int = 256) -> None:
        super().__init__(event_shape)
        self.num_levels = check_int("num_levels", num_levels, 2)
        self.support = GridConstraint(self.num_levels)
        self.support_description = f"the grid k/{self.num_levels - 1}, k = 0..{self.num_levels - 1}"

    @property
    def num_params(self) -> int:
        return self.num_levels

    def forward(self, params: torch.Tensor) -> Distribution:
        split = self._split(params)  # (..., L, C, *rest)
        logits = split.movedim(split.dim() - len(self.event_shape) - 1, -1)
        return self._independent(CategoricalGrid(logits))


#: Likelihood name -> class.
LIKELIHOODS: dict[str, type[Likelihood]] = {
    "bernoulli": BernoulliLikelihood,
    "gaussian": GaussianLikelihood,
    "binomial": BinomialLikelihood,
    "logistic": LogisticLikelihood,
    "categorical": CategoricalLikelihood,
}


def make_likelihood(name: str | Likelihood, event_shape: Sequence[int], **kwargs) -> Likelihood:
    """Build the likelihood head ``name`` (see :data:`LIKELIHOODS`) for observations of shape
    ``event_shape``; ``kwargs`` go to its constructor (e.g. ``scale="predicted"`` for
    ``"gaussian"``). A :class:`Likelihood` instance is passed through after checking its
    ``event_shape``.

    :raises ValueError: for an unknown name or invalid options.
    """
    event_shape = check_event_shape("event_shape", event_shape)
    if isinstance(name, Likelihood):
        if kwargs:
            raise ValueError(f"options {sorted(kwargs)} cannot be applied to an already built likelihood")
        if tuple(name.event_shape) != tuple(event_shape):
            raise ValueError(f"likelihood has event_shape {name.event_shape}, expected {tuple(event_shape)}")
        return name
    if not isinstance(name, str):
        raise TypeError(f"likelihood must be a name, got {type(name).__name__}")
    try:
        cls = LIKELIHOODS[name]
    except KeyError:
        raise ValueError(f"unknown likelihood {name!r}; choose one of {sorted(LIKELIHOODS)}") from None
    return cls(event_shape, **kwargs)
