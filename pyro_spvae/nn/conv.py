"""Convolutional encoder and decoder for images ``(C, H, W)`` with arbitrary leading batch dims.

The encoder applies ``3x3`` convolutions with padding 1 and stride ``s`` (default 2, which halves the
spatial size: ``28 -> 14 -> 7`` for MNIST and ``7 -> 4 -> 2`` for ``7x7`` patches; stride 1 keeps
it, as in the SPVAE reference's conv leaves); the decoder mirrors it with transposed convolutions
whose ``output_padding`` is chosen to land exactly on the input size. Its output layer is either a
final ``3x3`` convolution to the requested number of output channels (``out_layer="conv"``, the
default) or the last transposed convolution itself (``out_layer="deconv"``: the decoder of the SPVAE
reference code, Tan & Peharz 2019, whose mean and precision heads are transposed convolutions from
the last hidden feature maps; see ``docs/spvae.md``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from pyro_spvae.validation import (
    check_choice,
    check_event_shape,
    check_hidden,
    check_network_input,
    check_positive_int,
)

from .activations import get_activation
from .mlp import MLP, check_init, glorot_uniform_

__all__ = ["OUT_LAYERS", "ConvEncoder", "ConvDecoder", "check_conv_args", "check_stride",
           "conv_spatial_sizes", "deconv_output_padding", "init_conv_"]

#: Output layers of :class:`ConvDecoder` (see the module docstring).
OUT_LAYERS: tuple[str, ...] = ("conv", "deconv")


def conv_spatial_sizes(size: int, num_layers: int, stride: int = 2) -> list[int]:
    """Spatial sizes ``[size, s_1, ..., s_L]`` after each padding-1 ``3x3`` convolution of stride
    ``stride``: ``s_{i+1} = floor((s_i - 1) / stride) + 1``."""
    sizes = [size]
    for _ in range(num_layers):
        sizes.append((sizes[-1] - 1) // stride + 1)
    return sizes


def deconv_output_padding(size_in: int, size_out: int, stride: int) -> int:
    """``output_padding`` of a padding-1 ``3x3`` transposed convolution of stride ``stride`` from
    ``size_in`` to ``size_out`` (its output is ``(size_in - 1) * stride + 1 + output_padding``)."""
    return size_out - ((size_in - 1) * stride + 1)


def check_conv_args(event_shape: object, channels: object) -> tuple[tuple[int, int, int], tuple[int, ...]]:
    """The validated image shape ``(C, H, W)`` and (non-empty) channel widths of a convolutional
    network (plain or stacked).

    :raises TypeError: for shapes or widths that are not ints.
    :raises ValueError: for a shape that is not ``(C, H, W)``, widths below 1 or no width at all.
    """
    event_shape = check_event_shape("event_shape", event_shape)
    if len(event_shape) != 3:
        raise ValueError(f"convolutional networks need event_shape (C, H, W), got {event_shape}")
    channels = check_hidden("channels", channels)
    if len(channels) == 0:
        raise ValueError("channels must list at least one convolutional layer width")
    return event_shape, channels  # type: ignore[return-value]


@torch.no_grad()
def init_conv_(conv: nn.Conv2d | nn.ConvTranspose2d, out_blocks: int = 1) -> None:
    """``"tf1"`` initialisation of a (grouped, transposed) convolution: Glorot-uniform kernels, zero
    biases. The fans are those of one block, ``fan = channels x k x k``: the input channels of one
    group, and the output channels split into ``out_blocks`` blocks (the groups of a grouped
    convolution times the separate linear heads its outputs stand for), so that each block is
    initialised as the separate layer it replaces."""
    k = conv.kernel_size[0] * conv.kernel_size[1]
    fan_in, fan_out = conv.in_channels // conv.groups * k, conv.out_channels // out_blocks * k
    glorot_uniform_(conv.weight, fan_in, fan_out)
    if conv.bias is not None:
        conv.bias.zero_()


def check_stride(stride: object) -> int:
    """The stride of the ``3x3`` (transposed) convolutions: 1, 2 or 3."""
    stride = check_positive_int("stride", stride)
    if stride > 3:
        raise ValueError(f"stride must be 1, 2 or 3 for 3x3 kernels, got {stride}")
    return stride


class ConvEncoder(nn.Module):
    """Convolutional encoder ``(..., C, H, W) -> (..., out_dim)``.

    ``len(channels)`` ``3x3`` convolutions of stride ``stride`` (each followed by the activation),
    flatten, then an :class:`~pyro_spvae.nn.MLP` with hidden widths ``hidden`` to ``out_dim`` (a
    shared trunk: linear heads, e.g. the mean and the precision of a Gaussian encoder, are blocks of
    that output).

    :param event_shape: image shape ``(C, H, W)``.
    :param out_dim: output width.
    :param channels: output channels of the convolutions, e.g. ``(32, 64)``.
    :param hidden: hidden widths of the MLP after the convolutions.
    :param activation: activation name or module.
    :param stride: stride of every convolution (1, 2 or 3).
    :param init: ``"torch"`` or ``"tf1"`` (see :data:`pyro_spvae.nn.mlp.INITS`).
    """

    def __init__(self, event_shape: Sequence[int], out_dim: int, channels: Sequence[int] = (32, 64),
                 hidden: Sequence[int] = (), activation: str | nn.Module = "relu", stride: int = 2,
                 init: str = "torch") -> None:
        super().__init__()
        self.event_shape, self.channels = check_conv_args(event_shape, channels)
        self.out_dim = check_positive_int("out_dim", out_dim)
        self.stride, self.init = check_stride(stride), check_init(init)
        c, h, w = self.event_shape
        widths = (c, *self.channels)
        self.convs = nn.ModuleList(
            nn.Conv2d(a, b, 3, stride=self.stride, padding=1) for a, b in zip(widths[:-1], widths[1:])
        )
        if self.init == "tf1":
            for conv in self.convs:
                init_conv_(conv)
        self.activation = get_activation(activation)
        hs = conv_spatial_sizes(h, len(self.channels), self.stride)
        ws = conv_spatial_sizes(w, len(self.channels), self.stride)
        self.flat_dim = self.channels[-1] * hs[-1] * ws[-1]
        self.mlp = MLP(self.flat_dim, hidden, self.out_dim, activation=self.activation, init=self.init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Encode ``x`` of shape ``(..., C, H, W)``; returns ``(..., out_dim)``."""
        check_network_input("ConvEncoder input", x, self.convs[0].weight, self.event_shape)
        batch = x.shape[:-3]
        h = x.reshape(-1, *self.event_shape)
        for conv in self.convs:
            h = self.activation(conv(h))
        return self.mlp(h.reshape(*batch, self.flat_dim))


class ConvDecoder(nn.Module):
    """Convolutional decoder ``(..., in_dim) -> (..., out_channels, H, W)``.

    An MLP (hidden widths ``hidden``, followed by the activation) maps to ``channels[-1]`` feature
    maps at the encoder's coarsest resolution; transposed ``3x3`` convolutions of stride ``stride``
    walk ``channels`` backwards up to ``(H, W)`` (each followed by the activation). With
    ``out_layer="conv"`` a final ``3x3`` convolution produces the ``out_channels`` maps; with
    ``"deconv"`` the last transposed convolution does (``channels[0] -> out_channels``, as in the
    SPVAE reference). The output has no activation: these are likelihood parameters, e.g.
    ``num_params * C`` channels, which are separate linear heads on the last hidden maps.

    :param in_dim: latent width.
    :param event_shape: image shape ``(C, H, W)`` (only ``H, W`` are used).
    :param out_channels: number of output channels.
    :param channels: the encoder's channel widths, e.g. ``(32, 64)`` (used in reverse).
    :param hidden: hidden widths of the MLP before the transposed convolutions.
    :param activation: activation name or module.
    :param stride: stride of every transposed convolution (1, 2 or 3).
    :param out_layer: ``"conv"`` or ``"deconv"`` (see :data:`OUT_LAYERS`).
    :param init: ``"torch"`` or ``"tf1"``.
    :param heads: the number of separate linear heads the output channels stand for (only the
        ``"tf1"`` initialisation's fan-out depends on it: each head is initialised as its own layer).
    """

    def __init__(self, in_dim: int, event_shape: Sequence[int], out_channels: int,
                 channels: Sequence[int] = (32, 64), hidden: Sequence[int] = (),
                 activation: str | nn.Module = "relu", stride: int = 2, out_layer: str = "conv",
                 init: str = "torch", heads: int = 1) -> None:
        super().__init__()
        self.event_shape, self.channels = check_conv_args(event_shape, channels)
        self.in_dim = check_positive_int("in_dim", in_dim)
        self.out_channels = check_positive_int("out_channels", out_channels)
        self.stride, self.init = check_stride(stride), check_init(init)
        self.out_layer = check_choice("out_layer", out_layer, OUT_LAYERS)
        heads = check_positive_int("heads", heads)
        _, h, w = self.event_shape
        self.hs = conv_spatial_sizes(h, len(self.channels), self.stride)
        self.ws = conv_spatial_sizes(w, len(self.channels), self.stride)
        self.activation = get_activation(activation)
        self.mlp = MLP(self.in_dim, hidden, self.channels[-1] * self.hs[-1] * self.ws[-1],
                       activation=self.activation, init=self.init)
        chans = (self.channels[0], *self.channels)  # full-resolution width = channels[0]
        if self.out_layer == "deconv":  # the last transposed convolution is the output layer
            chans = (self.out_channels, *self.channels)
        layers = []
        for i in range(len(self.channels), 0, -1):
            op = (deconv_output_padding(self.hs[i], self.hs[i - 1], self.stride),
                  deconv_output_padding(self.ws[i], self.ws[i - 1], self.stride))
            layers.append(nn.ConvTranspose2d(chans[i], chans[i - 1], 3, stride=self.stride, padding=1,
                                             output_padding=op))
        self.deconvs = nn.ModuleList(layers)
        self.out_conv = nn.Conv2d(chans[0], self.out_channels, 3, padding=1) if out_layer == "conv" else None
        if self.init == "tf1":
            for layer in self.deconvs[:-1]:
                init_conv_(layer)
            init_conv_(self.output_layer, out_blocks=heads)
            if self.out_conv is not None:
                init_conv_(self.deconvs[-1])

    @property
    def output_layer(self) -> nn.Module:
        """The layer that produces the output channels."""
        return self.out_conv if self.out_conv is not None else self.deconvs[-1]

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """Decode ``z`` of shape ``(..., in_dim)``; returns ``(..., out_channels, H, W)``."""
        check_network_input("ConvDecoder input", z, self.output_layer.weight, (self.in_dim,))
        batch = z.shape[:-1]
        h = self.activation(self.mlp(z.reshape(-1, self.in_dim)))
        h = h.reshape(-1, self.channels[-1], self.hs[-1], self.ws[-1])
        last = len(self.deconvs) - 1
        for i, deconv in enumerate(self.deconvs):
            h = deconv(h)
            if self.out_conv is not None or i < last:
                h = self.activation(h)
        if self.out_conv is not None:
            h = self.out_conv(h)
        return h.reshape(*batch, self.out_channels, self.hs[0], self.ws[0])
