"""Amortised diagonal-Gaussian guide ``q(z | x) = N(loc(x), diag scale(x)^2)`` (Kingma & Welling 2014).

Pairs with :class:`pyro_spvae.models.VAE` (and any model with a single latent site ``"z"`` of
shape ``(B, z_dim)`` inside ``pyro.plate("data", B, dim=-1)``).
"""

from __future__ import annotations

from collections.abc import Sequence

import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F
from pyro.nn import PyroModule
from torch import nn

from pyro_spvae.nn.builders import build_encoder
from pyro_spvae.validation import (
    check_choice,
    check_event_shape,
    check_hidden,
    check_module_data,
    check_positive_int,
    check_real,
)

__all__ = ["GaussianGuide", "POSTERIOR_SCALES"]

#: How the encoder's second output gives the posterior scale (see :class:`GaussianGuide`).
POSTERIOR_SCALES: tuple[str, ...] = ("softplus", "precision")


class GaussianGuide(PyroModule):
    r"""Amortised guide ``z ~ N(loc(x), diag scale(x)^2)`` for the site ``"z"``.

    The encoder outputs ``2 * z_dim`` numbers per input: ``loc`` and ``raw``, with
    ``scale = softplus(raw) + min_scale`` (``posterior_scale="softplus"``, default) or a precision
    ``1 / scale^2 = 1 + raw^2`` (``"precision"``, the SPVAE reference code, Tan & Peharz 2019; see
    ``docs/spvae.md``; ``min_scale`` is not added). With ``encoder_heads="separate"`` ``loc`` and
    ``raw`` come from two separate networks (the reference's dense encoders), else from one (a
    shared trunk with two linear heads, the reference's conv encoders).

    :param event_shape: shape of one observation, e.g. ``(1, 28, 28)``.
    :param z_dim: latent dimension.
    :param hidden: hidden widths of the encoder MLP.
    :param arch: ``"dense"`` or ``"conv"``.
    :param activation: activation name or module.
    :param channels: convolution widths (``arch="conv"`` only).
    :param min_scale: lower bound on the posterior scale, ``>= 0``.
    :param posterior_scale: ``"softplus"`` or ``"precision"`` (see above).
    :param encoder_heads: ``"shared"`` or ``"separate"`` (see :mod:`pyro_spvae.nn.builders`).
    :param stride: stride of the convolutions (``arch="conv"``).
    :param init: weight initialisation, ``"torch"`` or ``"tf1"``.

    ``forward(x)`` with ``x`` of shape ``(B, *event_shape)`` samples ``"z"`` of shape
    ``(B, z_dim)`` (plus any leading particle dims) inside ``pyro.plate("data", B, dim=-1)``.
    """

    def __init__(self, event_shape: Sequence[int] = (1, 28, 28), z_dim: int = 50,
                 hidden: Sequence[int] = (200, 200), arch: str = "dense",
                 activation: str | nn.Module = "softplus", channels: Sequence[int] = (32, 64),
                 min_scale: float = 1e-4, posterior_scale: str = "softplus", encoder_heads: str = "shared",
                 stride: int = 2, init: str = "torch") -> None:
        super().__init__()
        self.event_shape = check_event_shape("event_shape", event_shape)
        self.z_dim = check_positive_int("z_dim", z_dim)
        hidden = check_hidden("hidden", hidden)
        self.min_scale = check_real("min_scale", min_scale, 0.0)
        self.posterior_scale = check_choice("posterior_scale", posterior_scale, POSTERIOR_SCALES)
        self.arch = arch
        self.encoder = build_encoder(arch, self.event_shape, 2 * self.z_dim, hidden, activation, channels,
                                     heads=encoder_heads, num_heads=2, stride=stride, init=init)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior parameters for ``x`` of shape ``(..., *event_shape)``: ``(loc, scale)``, each
        of shape ``(..., z_dim)``."""
        self._validate(x, None)
        return self._encode(x)

    def _validate(self, x: object, batch_dims: int | None) -> None:
        check_module_data("x", x, self.event_shape, self, batch_dims=batch_dims)

    def _encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.encoder(x)
        loc, raw = out[..., : self.z_dim], out[..., self.z_dim:]
        if self.posterior_scale == "precision":
            return loc, torch.rsqrt(1.0 + raw * raw)
        return loc, F.softplus(raw) + self.min_scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Sample ``"z"`` for a batch ``x`` of shape ``(B, *event_shape)``; returns ``z``."""
        self._validate(x, batch_dims=1)
        loc, scale = self._encode(x)
        with pyro.plate("data", x.shape[0], dim=-1):
            return pyro.sample("z", dist.Normal(loc, scale).to_event(1))
