"""Convolutional encoder and decoder for images ``(C, H, W)`` with arbitrary leading batch dims.

The encoder halves the spatial size with each ``3x3`` stride-2 convolution (padding 1), so
``28 -> 14 -> 7`` for MNIST and ``7 -> 4 -> 2`` for ``7x7`` patches; the decoder mirrors it with
transposed convolutions whose ``output_padding`` is chosen to land exactly on the input size,
then a final ``3x3`` convolution to the requested number of output channels.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .activations import get_activation
from pyro_spvae.validation import check_event_shape, check_hidden, check_input_like, check_positive_int
from .mlp import MLP

__all__ = ["ConvEncoder", "ConvDecoder", "conv_spatial_sizes"]


def conv_spatial_sizes(size: int, num_layers: int) -> list[int]:
    """Spatial sizes ``[size, s_1, ..., s_L]`` after each stride-2, padding-1, ``3x3`` convolution.

    ``s_{i+1} = floor((s_i - 1) / 2) + 1``.
    """
    sizes = [size]
    for _ in range(num_layers):
        sizes.append((sizes[-1] - 1) // 2 + 1)
    return sizes


def _check_image_args(event_shape, channels) -> tuple[tuple[int, int, int], tuple[int, ...]]:
    event_shape = check_event_shape("event_shape", event_shape)
    if len(event_shape) != 3:
        raise ValueError(f"convolutional networks need event_shape (C, H, W), got {event_shape}")
    channels = check_hidden("channels", channels)
    if len(channels) == 0:
        raise ValueError("channels must list at least one convolutional layer width")
    return event_shape, channels  # type: ignore[return-value]


class ConvEncoder(nn.Module):
    """Convolutional encoder ``(..., C, H, W) -> (..., out_dim)``.

    ``len(channels)`` stride-2 ``3x3`` convolutions (each followed by the activation), flatten,
    then an :class:`~pyro_spvae.nn.MLP` with hidden widths ``hidden`` to ``out_dim``.

    :param event_shape: image shape ``(C, H, W)``.
    :param out_dim: output width.
    :param channels: output channels of the convolutions, e.g. ``(32, 64)``.
    :param hidden: hidden widths of the MLP after the convolutions.
    :param activation: activation name or module.
    """

    def __init__(self, event_shape: Sequence[int], out_dim: int, channels: Sequence[int] = (32, 64),
                 hidden: Sequence[int] = (), activation: str | nn.Module = "relu") -> None:
        super().__init__()
        self.event_shape, self.channels = _check_image_args(event_shape, channels)
        self.out_dim = check_positive_int("out_dim", out_dim)
        c, h, w = self.event_shape
        widths = (c, *self.channels)
        self.convs = nn.ModuleList(
            nn.Conv2d(a, b, 3, stride=2, padding=1) for a, b in zip(widths[:-1], widths[1:])
        )
        self.activation = get_activation(activation)
        hs = conv_spatial_sizes(h, len(self.channels))
        ws = conv_spatial_sizes(w, len(self.channels))
        self.flat_dim = self.channels[-1] * hs[-1] * ws[-1]
        self.mlp = MLP(self.flat_dim, hidden, self.out_dim, activation=self.activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Encode ``x`` of shape ``(..., C, H, W)``; returns ``(..., out_dim)``."""
        check_input_like("ConvEncoder input", x, self.convs[0].weight)
        if x.dim() < 3 or tuple(x.shape[-3:]) != self.event_shape:
            raise ValueError(
                f"ConvEncoder input has shape {tuple(x.shape)}, expected (..., {self.event_shape})"
            )
        batch = x.shape[:-3]
        h = x.reshape(-1, *self.event_shape)
        for conv in self.convs:
            h = self.activation(conv(h))
        return self.mlp(h.reshape(*batch, self.flat_dim))


class ConvDecoder(nn.Module):
    """Convolutional decoder ``(..., in_dim) -> (..., out_channels, H, W)``.

    An MLP (hidden widths ``hidden``) maps to ``channels[-1]`` feature maps at the encoder's
    coarsest resolution; transposed ``3x3`` stride-2 convolutions walk ``channels`` backwards up
    to ``(H, W)`` (each followed by the activation), and a final ``3x3`` convolution produces
    ``out_channels`` maps (no activation: these are likelihood parameters, e.g.
    ``num_params * C``).

    :param in_dim: latent width.
    :param event_shape: image shape ``(C, H, W)`` (only ``H, W`` are used).
    :param out_channels: number of output channels.
    :param channels: the encoder's channel widths, e.g. ``(32, 64)`` (used in reverse).
    :param hidden: hidden widths of the MLP before the transposed convolutions.
    :param activation: activation name or module.
    """

    def __init__(self, in_dim: int, event_shape: Sequence[int], out_channels: int,
                 channels: Sequence[int] = (32, 64), hidden: Sequence[int] = (),
                 activation: str | nn.Module = "relu") -> None:
        super().__init__()
        self.event_shape, self.channels = _check_image_args(event_shape, channels)
        self.in_dim = check_positive_int("in_dim", in_dim)
        self.out_channels = check_positive_int("out_channels", out_channels)
        _, h, w = self.event_shape
        self.hs = conv_spatial_sizes(h, len(self.channels))
        self.ws = conv_spatial_sizes(w, len(self.channels))
        self.activation = get_activation(activation)
        self.mlp = MLP(self.in_dim, hidden, self.channels[-1] * self.hs[-1] * self.ws[-1],
                       activation=self.activation)
        chans = (self.channels[0], *self.channels)  # full-resolution width = channels[0]
        layers = []
        for i in range(len(self.channels), 0, -1):
            # from size s_i to s_{i-1}: out = 2 s_i - 1 + output_padding
            oph = self.hs[i - 1] - (2 * self.hs[i] - 1)
            opw = self.ws[i - 1] - (2 * self.ws[i] - 1)
            layers.append(nn.ConvTranspose2d(chans[i], chans[i - 1], 3, stride=2, padding=1,
                                             output_padding=(oph, opw)))
        self.deconvs = nn.ModuleList(layers)
        self.out_conv = nn.Conv2d(chans[0], self.out_channels, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """Decode ``z`` of shape ``(..., in_dim)``; returns ``(..., out_channels, H, W)``."""
        check_input_like("ConvDecoder input", z, self.out_conv.weight)
        if z.dim() == 0 or z.shape[-1] != self.in_dim:
            raise ValueError(f"ConvDecoder input has shape {tuple(z.shape)}, expected (..., {self.in_dim})")
        batch = z.shape[:-1]
        h = self.activation(self.mlp(z.reshape(-1, self.in_dim)))
        h = h.reshape(-1, self.channels[-1], self.hs[-1], self.ws[-1])
        for deconv in self.deconvs:
            h = self.activation(deconv(h))
        h = self.out_conv(h)
        return h.reshape(*batch, self.out_channels, self.hs[0], self.ws[0])
