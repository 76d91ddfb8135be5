"""The base class of the likelihood heads, :class:`Likelihood`, and :func:`check_observations`.

A head maps decoder output ``params`` of shape ``(..., num_params * C, *rest)`` to a distribution
over observations of shape ``event_shape = (C, *rest)`` (the contract and the table of heads are in
:mod:`pyro_spvae.nn.likelihoods`).  The channel layout is parameter-major: :meth:`Likelihood._split`
reshapes ``params`` to ``(..., num_params, C, *rest)``, so that channels ``[j * C, (j + 1) * C)``
hold parameter ``j``, and the distribution is made ``Independent`` over all ``len(event_shape)``
trailing dims.  :meth:`Likelihood.validate` checks observations by :func:`check_observations` (the
data check shared by models and guides; ``NaN`` = missing where allowed), then the support.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.distributions import Distribution, constraints

from pyro_spvae.validation import (
    check_event_shape,
    check_float_tensor,
    check_floating_dtype,
    check_input_like,
)

__all__ = ["Likelihood", "check_observations"]


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
