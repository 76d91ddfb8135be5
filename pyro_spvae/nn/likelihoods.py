"""Likelihood heads: decoder output -> observation distribution ``p(x | z)``.

Contract (``CONTRIBUTING.md``): ``make_likelihood(name, event_shape) -> Likelihood`` with
``lik.num_params`` decoder output channels per input channel; ``lik(params)`` maps decoder output
of shape ``(..., num_params * C, *rest)`` (``event_shape = (C, *rest)``, e.g. ``(C, H, W)``) to a
:class:`torch.distributions.Distribution` with ``batch_shape == ...`` and
``event_shape == event_shape``; ``lik.validate(x)`` raises :class:`ValueError` naming the problem.

Channel layout of ``params``: parameter-major, i.e. channels ``[j * C, (j + 1) * C)`` hold
parameter ``j`` (for ``"categorical"``, ``j`` is the level ``0..255``).

=================  ==========  ==============================================================
name               num_params  distribution per element
=================  ==========  ==============================================================
``bernoulli``      1           ``Bernoulli(logits)`` on ``{0, 1}``
``gaussian``       1 or 2      ``Normal(loc, scale)``; ``scale="global"``: learnt per-element
                               log-precision parameter (the SPVAE paper's learnt precision,
                               Tan & Peharz 2019); ``scale="predicted"``: ``softplus`` of a
                               second decoder output
``binomial``       1           :class:`~pyro_spvae.distributions.BinomialGrid` ``(255, logits)``
                               on ``{k / 255}`` (SPVAE paper, discrete MNIST)
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

from ..distributions.binomial_grid import BinomialGrid
from ..distributions.categorical_grid import CategoricalGrid
from ..distributions.discretized_logistic import DiscretizedLogistic
from ..distributions.grid import GridConstraint
from pyro_spvae.validation import check_event_shape, check_float_tensor, check_floating_dtype, check_positive_int

__all__ = [
    "Likelihood",
    "BernoulliLikelihood",
    "GaussianLikelihood",
    "BinomialLikelihood",
    "LogisticLikelihood",
    "CategoricalLikelihood",
    "LIKELIHOODS",
    "make_likelihood",
]


class Likelihood(nn.Module):
    """Base class of the likelihood heads.

    :param event_shape: shape of one observation, ``(C, H, W)`` for images (any non-empty shape
        whose first entry is the channel axis is accepted).

    Attributes: :attr:`name`, :attr:`num_params`, :attr:`event_shape`, :attr:`support` (an
    elementwise constraint) and :attr:`support_description` (for error messages).
    """

    name: str = ""
    support: constraints.Constraint = constraints.real
    support_description: str = "real numbers"

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

    def validate(self, x: object) -> torch.Tensor:
        """Check observations ``x`` of shape ``(..., *event_shape)`` and return them.

        :raises TypeError: if ``x`` is not a tensor.
        :raises ValueError: for a non-floating dtype, a wrong trailing shape, NaN/inf entries or
            values outside the support of this likelihood.
        """
        x = check_float_tensor("x", x, self.event_shape)
        ok = self.support.check(x)
        if not bool(ok.all()):
            bad = x[~ok]
            raise ValueError(
                f"x has {bad.numel()} values outside the support of the {self.name!r} likelihood "
                f"({self.support_description}), e.g. {bad.flatten()[:3].tolist()}"
            )
        return x

    def forward(self, params: torch.Tensor) -> Distribution:
        """Distribution with ``batch_shape = params.shape[:-len(event_shape)]`` and
        ``event_shape = event_shape``."""
        raise NotImplementedError

    def _independent(self, base: Distribution) -> Distribution:
        return base.to_event(len(self.event_shape))

    def extra_repr(self) -> str:
        return f"event_shape={self.event_shape}, num_params={self.num_params}"


class BernoulliLikelihood(Likelihood):
    """``x ~ Bernoulli(sigmoid(logits))`` per element; for binarised images. ``num_params = 1``."""

    name = "bernoulli"
    support = constraints.boolean
    support_description = "binary values in {0, 1}"

    @property
    def num_params(self) -> int:
        return 1

    def forward(self, params: torch.Tensor) -> Distribution:
        logits = self._param(self._split(params), 0)
        return self._independent(dist.Bernoulli(logits=logits))


class GaussianLikelihood(Likelihood):
    r"""``x ~ Normal(loc, scale)`` per element with a learnt scale.

    :param event_shape: observation shape.
    :param scale: ``"global"`` (default): a learnt per-element log-precision parameter
        ``log_precision`` of shape ``event_shape`` shared by all inputs, ``scale =
        exp(-log_precision / 2)``, as in the SPVAE paper's continuous MNIST model (Tan & Peharz 2019);
        ``"predicted"``: the decoder also outputs ``raw`` and ``scale = softplus(raw)``.
    :param min_scale: lower bound added to the scale (numerical safety), ``>= 0``.
    :param init_scale: initial scale of the ``"global"`` parameter, ``> 0``.
    """

    name = "gaussian"

    def __init__(self, event_shape: Sequence[int], scale: str = "global", min_scale: float = 1e-4,
                 init_scale: float = 1.0) -> None:
        super().__init__(event_shape)
        if scale not in ("global", "predicted"):
            raise ValueError(f"gaussian scale must be 'global' or 'predicted', got {scale!r}")
        if not isinstance(min_scale, (int, float)) or not math.isfinite(min_scale) or min_scale < 0:
            raise ValueError(f"min_scale must be a finite float >= 0, got {min_scale!r}")
        if not isinstance(init_scale, (int, float)) or not math.isfinite(init_scale) or init_scale <= 0:
            raise ValueError(f"init_scale must be a finite float > 0, got {init_scale!r}")
        self.scale_mode = scale
        self.min_scale = float(min_scale)
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
        if self.scale_mode == "global":
            scale = torch.exp(-0.5 * self.log_precision) + self.min_scale
        else:
            scale = F.softplus(self._param(split, 1)) + self.min_scale
        loc, scale = torch.broadcast_tensors(loc, scale)
        return self._independent(dist.Normal(loc, scale))


class BinomialLikelihood(Likelihood):
    """``x = k / n``, ``k ~ Binomial(n, sigmoid(logits))`` per element (``n = 255`` for 8-bit data,
    the SPVAE paper's discrete likelihood). ``num_params = 1``.

    :param total_count: number of trials ``n``.
    """

    name = "binomial"

    def __init__(self, event_shape: Sequence[int], total_count: int = 255) -> None:
        super().__init__(event_shape)
        self.total_count = check_positive_int("total_count", total_count)
        self.support = GridConstraint(self.total_count + 1)
        self.support_description = f"the grid k/{self.total_count}, k = 0..{self.total_count}"

    @property
    def num_params(self) -> int:
        return 1

    def forward(self, params: torch.Tensor) -> Distribution:
        logits = self._param(self._split(params), 0)
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
        self.num_levels = check_positive_int("num_levels", num_levels)
        if self.num_levels < 2:
            raise ValueError(f"num_levels must be >= 2, got {num_levels}")
        if not isinstance(min_log_scale, (int, float)) or not math.isfinite(min_log_scale):
            raise ValueError(f"min_log_scale must be a finite float, got {min_log_scale!r}")
        self.min_log_scale = float(min_log_scale)
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
        self.num_levels = check_positive_int("num_levels", num_levels)
        if self.num_levels < 2:
            raise ValueError(f"num_levels must be >= 2, got {num_levels}")
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
