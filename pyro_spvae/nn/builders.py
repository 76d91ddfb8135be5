"""Encoder/decoder builders by architecture name (``"dense"`` or ``"conv"``), shared by the VAE
model and its guides so that both sides of an autoencoder are configured the same way."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from pyro_spvae.validation import check_event_shape, check_input_like, check_positive_int
from .conv import ConvDecoder, ConvEncoder
from .mlp import MLP

__all__ = ["ARCHS", "FlatMLPEncoder", "DenseDecoder", "build_encoder", "build_decoder"]

#: Supported architecture names.
ARCHS = ("dense", "conv")


def _check_arch(arch: object, event_shape: tuple[int, ...]) -> None:
    if arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r}; choose one of {ARCHS}")
    if arch == "conv" and len(event_shape) != 3:
        raise ValueError(f"arch='conv' needs event_shape (C, H, W), got {event_shape}")


class FlatMLPEncoder(nn.Module):
    """Flatten the trailing ``event_shape`` dims and apply an :class:`~pyro_spvae.nn.MLP`:
    ``(..., *event_shape) -> (..., out_dim)``."""

    def __init__(self, event_shape: Sequence[int], out_dim: int, hidden: Sequence[int],
                 activation: str | nn.Module = "softplus") -> None:
        super().__init__()
        self.event_shape = check_event_shape("event_shape", event_shape)
        self.mlp = MLP(math.prod(self.event_shape), hidden, out_dim, activation=activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input_like("encoder input", x, self.mlp.layers[0].weight)
        n = len(self.event_shape)
        if x.dim() < n or tuple(x.shape[x.dim() - n:]) != self.event_shape:
            raise ValueError(f"encoder input has shape {tuple(x.shape)}, expected (..., {self.event_shape})")
        return self.mlp(x.reshape(*x.shape[: x.dim() - n], self.mlp.in_dim))


class DenseDecoder(nn.Module):
    """:class:`~pyro_spvae.nn.MLP` whose output is reshaped: ``(..., in_dim) -> (..., *out_shape)``."""

    def __init__(self, in_dim: int, out_shape: Sequence[int], hidden: Sequence[int],
                 activation: str | nn.Module = "softplus") -> None:
        super().__init__()
        self.out_shape = check_event_shape("out_shape", out_shape)
        self.mlp = MLP(in_dim, hidden, math.prod(self.out_shape), activation=activation)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.mlp(z).reshape(*z.shape[:-1], *self.out_shape)


def build_encoder(arch: str, event_shape: Sequence[int], out_dim: int, hidden: Sequence[int] = (),
                  activation: str | nn.Module = "softplus", channels: Sequence[int] = (32, 64)) -> nn.Module:
    """Encoder ``(..., *event_shape) -> (..., out_dim)``.

    ``"dense"``: :class:`FlatMLPEncoder` with hidden widths ``hidden``; ``"conv"``:
    :class:`~pyro_spvae.nn.ConvEncoder` (``channels``, then an MLP with ``hidden``).
    """
    event_shape = check_event_shape("event_shape", event_shape)
    _check_arch(arch, event_shape)
    if arch == "dense":
        return FlatMLPEncoder(event_shape, out_dim, hidden, activation)
    return ConvEncoder(event_shape, out_dim, channels=channels, hidden=hidden, activation=activation)


def build_decoder(arch: str, in_dim: int, param_shape: Sequence[int], hidden: Sequence[int] = (),
                  activation: str | nn.Module = "softplus", channels: Sequence[int] = (32, 64)) -> nn.Module:
    """Decoder ``(..., in_dim) -> (..., *param_shape)``, e.g. ``param_shape = likelihood.param_shape``
    ``= (num_params * C, H, W)``.

    ``"dense"``: :class:`DenseDecoder`; ``"conv"``: :class:`~pyro_spvae.nn.ConvDecoder` with
    ``param_shape[0]`` output channels.
    """
    param_shape = check_event_shape("param_shape", param_shape)
    check_positive_int("in_dim", in_dim)
    _check_arch(arch, param_shape)
    if arch == "dense":
        return DenseDecoder(in_dim, param_shape, hidden, activation)
    return ConvDecoder(in_dim, param_shape, param_shape[0], channels=channels, hidden=hidden,
                       activation=activation)
