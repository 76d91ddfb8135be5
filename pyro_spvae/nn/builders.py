"""Encoder/decoder builders by architecture name (``"dense"`` or ``"conv"``), shared by the VAE
model and its guides so that both sides of an autoencoder are configured the same way.

Output heads: a network's output is often several blocks of parameters (an encoder's posterior
mean and scale, a decoder's likelihood mean and precision). ``heads="shared"`` (default) computes
them with one network (a shared trunk whose last linear layer holds every head); with
``heads="separate"`` each block gets its own network (:class:`SeparateHeads`), as the dense VAEs of
the SPVAE reference code do (Tan & Peharz 2019; see ``docs/spvae.md``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from pyro_spvae.validation import check_choice, check_event_shape, check_network_input, check_positive_int

from .conv import ConvDecoder, ConvEncoder
from .mlp import MLP

__all__ = ["ARCHS", "HEADS", "FlatMLPEncoder", "DenseDecoder", "SeparateHeads", "build_encoder",
           "build_decoder"]

#: Supported architecture names.
ARCHS = ("dense", "conv")

#: How the output blocks of a network are computed (see the module docstring).
HEADS = ("shared", "separate")


def _check_arch(arch: object, event_shape: tuple[int, ...]) -> None:
    check_choice("arch", arch, ARCHS)
    if arch == "conv" and len(event_shape) != 3:
        raise ValueError(f"arch='conv' needs event_shape (C, H, W), got {event_shape}")


def _check_heads(heads: object, num_heads: object, size: int, what: str) -> int:
    """``num_heads`` after checking ``heads`` and that ``size`` splits into ``num_heads`` blocks."""
    check_choice("heads", heads, HEADS)
    num_heads = check_positive_int("num_heads", num_heads)
    if size % num_heads:
        raise ValueError(f"{what} {size} does not split into num_heads={num_heads} equal blocks")
    return num_heads


class FlatMLPEncoder(nn.Module):
    """Flatten the trailing ``event_shape`` dims and apply an :class:`~pyro_spvae.nn.MLP`:
    ``(..., *event_shape) -> (..., out_dim)``."""

    def __init__(self, event_shape: Sequence[int], out_dim: int, hidden: Sequence[int],
                 activation: str | nn.Module = "softplus", init: str = "torch") -> None:
        super().__init__()
        self.event_shape = check_event_shape("event_shape", event_shape)
        self.mlp = MLP(math.prod(self.event_shape), hidden, out_dim, activation=activation, init=init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_network_input("encoder input", x, self.mlp.layers[0].weight, self.event_shape)
        n = len(self.event_shape)
        return self.mlp(x.reshape(*x.shape[: x.dim() - n], self.mlp.in_dim))


class DenseDecoder(nn.Module):
    """:class:`~pyro_spvae.nn.MLP` whose output is reshaped: ``(..., in_dim) -> (..., *out_shape)``."""

    def __init__(self, in_dim: int, out_shape: Sequence[int], hidden: Sequence[int],
                 activation: str | nn.Module = "softplus", init: str = "torch") -> None:
        super().__init__()
        self.out_shape = check_event_shape("out_shape", out_shape)
        self.mlp = MLP(in_dim, hidden, math.prod(self.out_shape), activation=activation, init=init)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.mlp(z).reshape(*z.shape[:-1], *self.out_shape)


class SeparateHeads(nn.Module):
    """Separate networks reading the same input, their outputs concatenated along the first of
    their ``event_dims`` trailing dims (head-major): ``(..., *in) -> (..., P * D_0, D_1, ...)``.

    :param nets: the ``P`` networks (same output shapes).
    :param event_dims: number of trailing output dims of one network.
    """

    def __init__(self, nets: Sequence[nn.Module], event_dims: int = 1) -> None:
        super().__init__()
        if len(nets) == 0:
            raise ValueError("SeparateHeads needs at least one network")
        self.nets = nn.ModuleList(nets)
        self.event_dims = check_positive_int("event_dims", event_dims)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([net(x) for net in self.nets], dim=-self.event_dims)


def build_encoder(arch: str, event_shape: Sequence[int], out_dim: int, hidden: Sequence[int] = (),
                  activation: str | nn.Module = "softplus", channels: Sequence[int] = (32, 64), *,
                  heads: str = "shared", num_heads: int = 1, stride: int = 2,
                  init: str = "torch") -> nn.Module:
    """Encoder ``(..., *event_shape) -> (..., out_dim)``.

    ``"dense"``: :class:`FlatMLPEncoder` with hidden widths ``hidden``; ``"conv"``:
    :class:`~pyro_spvae.nn.ConvEncoder` (``channels`` with ``stride``, then an MLP with ``hidden``).

    :param heads: ``"shared"`` (one network) or ``"separate"`` (``num_heads`` networks, each giving
        ``out_dim / num_heads`` outputs, concatenated).
    :param num_heads: number of output blocks (e.g. 2: posterior mean and scale).
    :param init: ``"torch"`` or ``"tf1"`` (see :data:`pyro_spvae.nn.mlp.INITS`).
    """
    event_shape = check_event_shape("event_shape", event_shape)
    _check_arch(arch, event_shape)
    out_dim = check_positive_int("out_dim", out_dim)
    num_heads = _check_heads(heads, num_heads, out_dim, "out_dim")
    if heads == "separate":
        nets = [build_encoder(arch, event_shape, out_dim // num_heads, hidden, activation, channels,
                              stride=stride, init=init) for _ in range(num_heads)]
        return SeparateHeads(nets, event_dims=1)
    if arch == "dense":
        return FlatMLPEncoder(event_shape, out_dim, hidden, activation, init=init)
    return ConvEncoder(event_shape, out_dim, channels=channels, hidden=hidden, activation=activation,
                       stride=stride, init=init)


def build_decoder(arch: str, in_dim: int, param_shape: Sequence[int], hidden: Sequence[int] = (),
                  activation: str | nn.Module = "softplus", channels: Sequence[int] = (32, 64), *,
                  heads: str = "shared", num_heads: int = 1, stride: int = 2, out_layer: str = "conv",
                  init: str = "torch") -> nn.Module:
    """Decoder ``(..., in_dim) -> (..., *param_shape)``, e.g. ``param_shape = likelihood.param_shape``
    ``= (num_params * C, H, W)``.

    ``"dense"``: :class:`DenseDecoder`; ``"conv"``: :class:`~pyro_spvae.nn.ConvDecoder` with
    ``param_shape[0]`` output channels (``stride``, ``out_layer``).

    :param heads: ``"shared"`` (one network; with ``"conv"`` its output layer holds ``num_heads``
        linear heads) or ``"separate"`` (``num_heads`` networks, each giving ``param_shape[0] /
        num_heads`` channels, concatenated).
    :param num_heads: number of parameter blocks, e.g. ``likelihood.num_params``.
    :param init: ``"torch"`` or ``"tf1"``.
    """
    param_shape = check_event_shape("param_shape", param_shape)
    check_positive_int("in_dim", in_dim)
    _check_arch(arch, param_shape)
    num_heads = _check_heads(heads, num_heads, param_shape[0], "param_shape[0]")
    if heads == "separate":
        shape = (param_shape[0] // num_heads, *param_shape[1:])
        nets = [build_decoder(arch, in_dim, shape, hidden, activation, channels, stride=stride,
                              out_layer=out_layer, init=init) for _ in range(num_heads)]
        return SeparateHeads(nets, event_dims=len(param_shape))
    if arch == "dense":
        return DenseDecoder(in_dim, param_shape, hidden, activation, init=init)
    return ConvDecoder(in_dim, param_shape, param_shape[0], channels=channels, hidden=hidden,
                       activation=activation, stride=stride, out_layer=out_layer, init=init, heads=num_heads)
