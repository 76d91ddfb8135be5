"""Many small networks evaluated as ONE stacked network.

SPVAE (Tan & Peharz, ICML 2019; see ``docs/spvae.md``) has one small VAE per leaf of the
sum-product network (32 leaf VAEs with softplus MLPs ``(30, 30)`` and ``nz = 25`` on MNIST).
Running them one by one costs a kernel launch per layer and per leaf, which is what makes the
paper's reference code 5-70x slower than a plain VAE. Here the ``N = num_nets`` networks share
one batched weight tensor per layer: a dense layer is one ``baddbmm`` over the net axis and a
convolution is one grouped convolution (``groups = N``) or, on small images such as SPVAE's 7x7
patches, one ``baddbmm`` with the dense matrix of the convolution (:func:`conv_matrix`).

Every stacked module takes inputs with the net axis just before the feature axes:
``(..., N, D)`` for dense layers and ``(..., N, C, h, w)`` for images, with arbitrary leading
batch dims. Net ``n`` of a stacked module computes exactly what a separate
:class:`~torch.nn.Linear` / :class:`~pyro_spvae.nn.MLP` / :class:`~pyro_spvae.nn.ConvEncoder` /
:class:`~pyro_spvae.nn.ConvDecoder` with the same weights computes (see ``from_modules``), and
is initialised from the same distribution as that module.

The dense stacked networks (:class:`StackedLinear`, :class:`StackedMLP` and :class:`StackedHeads`,
separate stacked networks per output head) live in :mod:`pyro_spvae.nn.stacked_dense` and are
re-exported here; this module holds the convolutional ones.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from pyro_spvae.validation import check_choice, check_network_input, check_positive_int

from .activations import get_activation
from .conv import (
    OUT_LAYERS,
    ConvDecoder,
    ConvEncoder,
    check_conv_args,
    check_stride,
    conv_spatial_sizes,
    deconv_output_padding,
    init_conv_,
)
from .mlp import check_init
from .stacked_dense import StackedHeads, StackedLinear, StackedMLP

__all__ = [
    "StackedLinear",
    "StackedMLP",
    "StackedConvEncoder",
    "StackedConvDecoder",
    "StackedHeads",
    "conv_taps",
    "conv_matrix",
]


def _stacked_conv_args(num_nets: object, event_shape: object, channels: object
                       ) -> tuple[int, tuple[int, int, int], tuple[int, ...]]:
    """Validated ``(num_nets, event_shape, channels)`` of a stacked convolutional network."""
    return (check_positive_int("num_nets", num_nets), *check_conv_args(event_shape, channels))


#: Implementations of the stacked convolutions (see :class:`StackedConvEncoder`).
IMPLS = ("auto", "matmul", "conv")

#: ``impl="auto"`` uses the matrix form when every layer's per-net matrix has at most this many entries.
MATMUL_MAX_ENTRIES = 1 << 17


def conv_taps(in_hw: tuple[int, int], conv: nn.Conv2d | nn.ConvTranspose2d) -> torch.Tensor:
    """Which kernel tap links which input pixel to which output pixel in ``conv``.

    :param in_hw: input height and width.
    :param conv: a (transposed) convolution with a square kernel; its stride, padding and output
        padding are used, not its weights.
    :returns: a 0/1 tensor ``T`` of shape ``(P, Q, k * k)`` (``P = h_in w_in``, ``Q = h_out w_out``)
        with ``T[p, q, t] = 1`` when tap ``t`` of the kernel carries input pixel ``p`` to output
        pixel ``q``, obtained by running the convolution itself on one-hot images and kernels.
    """
    h, w = in_hw
    k = conv.kernel_size[0]
    basis = torch.eye(h * w, dtype=torch.float64).reshape(h * w, 1, h, w)
    taps = torch.eye(k * k, dtype=torch.float64)
    if isinstance(conv, nn.ConvTranspose2d):
        out = F.conv_transpose2d(basis, taps.reshape(1, k * k, k, k), stride=conv.stride,
                                 padding=conv.padding, output_padding=conv.output_padding)
    else:
        out = F.conv2d(basis, taps.reshape(k * k, 1, k, k), stride=conv.stride, padding=conv.padding)
    return out.flatten(2).transpose(1, 2).to(torch.get_default_dtype()).contiguous()


def conv_matrix(conv: nn.Conv2d | nn.ConvTranspose2d, taps: torch.Tensor,
                num_nets: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The grouped convolution ``conv`` (``groups = num_nets``) as one dense matrix per net.

    :param conv: the grouped (transposed) convolution holding the weights.
    :param taps: its :func:`conv_taps`, ``(P, Q, k * k)``.
    :param num_nets: the number of groups ``N``.
    :returns: ``matrix`` ``(N, C_in P, C_out Q)`` and ``bias`` ``(N, 1, C_out Q)`` such that for
        net-major inputs ``x`` ``(N, M, C_in P)`` (channel-major flattened images),
        ``baddbmm(bias, x, matrix)`` equals the convolution's output flattened the same way.
        Differentiable in the weights: gradients reach ``conv.weight`` and ``conv.bias``.
    """
    n = num_nets
    kk = taps.shape[-1]
    if isinstance(conv, nn.ConvTranspose2d):  # weight (N C_in, C_out, k, k)
        c_in, c_out = conv.weight.shape[0] // n, conv.weight.shape[1]
        m = torch.einsum("ncot,pqt->ncpoq", conv.weight.reshape(n, c_in, c_out, kk), taps)
    else:  # weight (N C_out, C_in, k, k)
        c_out, c_in = conv.weight.shape[0] // n, conv.weight.shape[1]
        m = torch.einsum("noct,pqt->ncpoq", conv.weight.reshape(n, c_out, c_in, kk), taps)
    q = taps.shape[1]
    bias = conv.bias.reshape(n, 1, c_out, 1).expand(n, 1, c_out, q).reshape(n, 1, c_out * q)
    return m.reshape(n, c_in * taps.shape[0], c_out * q), bias


class _ConvMatrices(nn.Module):
    """The taps of a stack of convolutions (non-persistent buffers) and their matrix-form forward."""

    def __init__(self, convs: Sequence[nn.Module], in_sizes: Sequence[tuple[int, int]],
                 num_nets: int) -> None:
        super().__init__()
        self.num_nets = num_nets
        for i, (conv, hw) in enumerate(zip(convs, in_sizes)):
            self.register_buffer(f"taps{i}", conv_taps(hw, conv), persistent=False)

    def entries(self, convs: Sequence[nn.Module]) -> int:
        """The largest per-net matrix size of the stack."""
        out = 0
        for i, conv in enumerate(convs):
            t = getattr(self, f"taps{i}")
            c_in = conv.in_channels // self.num_nets
            c_out = conv.out_channels // self.num_nets
            out = max(out, c_in * t.shape[0] * c_out * t.shape[1])
        return out

    def forward(self, x: torch.Tensor, convs: Sequence[nn.Module], activation: nn.Module,
                last_activation: bool) -> torch.Tensor:
        """``(N, M, C_in P) -> (N, M, C_out Q)``: one ``baddbmm`` per convolution."""
        for i, conv in enumerate(convs):
            matrix, bias = conv_matrix(conv, getattr(self, f"taps{i}"), self.num_nets)
            x = torch.baddbmm(bias, x, matrix)
            if last_activation or i < len(convs) - 1:
                x = activation(x)
        return x


def _copy_grouped(dst: nn.Module, srcs: Sequence[nn.Module]) -> None:
    """Copy per-net conv weights into a grouped conv: both ``Conv2d`` (``(N*C_out, C_in, k, k)``)
    and ``ConvTranspose2d`` (``(N*C_in, C_out, k, k)``) stack the nets along dim 0."""
    with torch.no_grad():
        dst.weight.copy_(torch.cat([s.weight for s in srcs], dim=0))
        dst.bias.copy_(torch.cat([s.bias for s in srcs], dim=0))


class _ChannelsLastGrad(torch.autograd.Function):
    """Identity whose backward hands the gradient on in channels-last layout.

    Gradients arriving from a consumer that reshaped the output to NCHW order would otherwise make
    the grouped convolution's backward fall back to its slow NCHW path.
    """

    @staticmethod
    def forward(ctx: object, y: torch.Tensor) -> torch.Tensor:
        return y.view_as(y)

    @staticmethod
    def backward(ctx: object, grad: torch.Tensor) -> torch.Tensor:
        return grad.contiguous(memory_format=torch.channels_last)


class StackedConvEncoder(nn.Module):
    """``num_nets`` independent :class:`~pyro_spvae.nn.ConvEncoder` s as grouped convolutions.

    Net ``n`` reads ``x[..., n, :, :, :]``. Grouped convolutions with ``groups = N`` are
    initialised per group exactly like a separate ``nn.Conv2d`` (the fan-in is per group).

    :param num_nets: number of networks ``N``.
    :param event_shape: per-net image shape ``(C, h, w)`` (e.g. a ``(1, 7, 7)`` patch).
    :param out_dim: output width of every net.
    :param channels: per-net convolution widths.
    :param hidden: per-net hidden widths of the MLP after the convolutions.
    :param activation: activation name or module.
    :param stride: stride of every convolution (see :class:`~pyro_spvae.nn.ConvEncoder`).
    :param init: ``"torch"`` or ``"tf1"``.
    :param impl: ``"conv"``: grouped convolutions; ``"matmul"``: each convolution as one ``baddbmm``
        with its dense per-net matrix (:func:`conv_matrix`; faster on CPU for small images such as
        SPVAE's 7x7 patches although it does more FLOPs, see ``benchmarks/bench_spvae.py``);
        ``"auto"`` (default): ``"matmul"`` when every per-net matrix has at most
        :data:`MATMUL_MAX_ENTRIES` entries. Both compute the same function
        of the same parameters.

    Shapes: ``(..., N, C, h, w) -> (..., N, out_dim)``; :meth:`forward_net_major`
    ``(N, M, C h w) -> (N, M, out_dim)``.
    """

    def __init__(self, num_nets: int, event_shape: Sequence[int], out_dim: int,
                 channels: Sequence[int] = (32, 64), hidden: Sequence[int] = (),
                 activation: str | nn.Module = "relu", stride: int = 2, init: str = "torch",
                 impl: str = "auto") -> None:
        super().__init__()
        self.num_nets, self.event_shape, self.channels = _stacked_conv_args(num_nets, event_shape, channels)
        self.out_dim = check_positive_int("out_dim", out_dim)
        self.stride, self.init = check_stride(stride), check_init(init)
        n = self.num_nets
        c, h, w = self.event_shape
        widths = (c, *self.channels)
        self.convs = nn.ModuleList(
            nn.Conv2d(n * a, n * b, 3, stride=self.stride, padding=1, groups=n)
            for a, b in zip(widths[:-1], widths[1:])
        )
        if self.init == "tf1":
            for conv in self.convs:
                init_conv_(conv, out_blocks=n)
        self.activation = get_activation(activation)
        hs = conv_spatial_sizes(h, len(self.channels), self.stride)
        ws = conv_spatial_sizes(w, len(self.channels), self.stride)
        self.flat_dim = self.channels[-1] * hs[-1] * ws[-1]
        self.mlp = StackedMLP(n, self.flat_dim, hidden, self.out_dim, activation=self.activation,
                              init=self.init)
        self.matrices = _ConvMatrices(self.convs, list(zip(hs[:-1], ws[:-1])), n)
        self.impl = check_choice("impl", impl, IMPLS)
        self.use_matmul = impl == "matmul" or (
            impl == "auto" and self.matrices.entries(self.convs) <= MATMUL_MAX_ENTRIES
        )

    @classmethod
    def from_modules(cls, encoders: Sequence[ConvEncoder], impl: str = "auto") -> StackedConvEncoder:
        """Stack copies of separate :class:`~pyro_spvae.nn.ConvEncoder` s with identical architecture."""
        if len(encoders) == 0:
            raise ValueError("from_modules needs at least one ConvEncoder")
        first = encoders[0]
        out = cls(len(encoders), first.event_shape, first.out_dim, first.channels, first.mlp.hidden,
                  activation=first.activation, stride=first.stride, impl=impl).to(first.convs[0].weight)
        for i, conv in enumerate(out.convs):
            _copy_grouped(conv, [e.convs[i] for e in encoders])
        out.mlp = StackedMLP.from_modules([e.mlp for e in encoders])
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Encode ``x`` of shape ``(..., N, C, h, w)``; returns ``(..., N, out_dim)``."""
        check_network_input("StackedConvEncoder input", x, self.convs[0].weight,
                            (self.num_nets, *self.event_shape))
        batch = x.shape[:-4]
        c, h, w = self.event_shape
        if self.use_matmul:
            y = self.forward_net_major(x.reshape(-1, self.num_nets, c * h * w).transpose(0, 1))
            return y.transpose(0, 1).reshape(*batch, self.num_nets, self.out_dim)
        y = x.reshape(-1, self.num_nets * c, h, w).contiguous(memory_format=torch.channels_last)
        for conv in self.convs:
            y = self.activation(conv(y))
        y = y.reshape(*batch, self.num_nets, self.flat_dim)
        return self.mlp(y)

    def forward_net_major(self, x: torch.Tensor) -> torch.Tensor:
        """Net-major path without input checks: ``(N, M, C h w)`` (images flattened channel-major)
        ``-> (N, M, out_dim)``."""
        if not self.use_matmul:
            c, h, w = self.event_shape
            y = self.forward(x.transpose(0, 1).reshape(-1, self.num_nets, c, h, w))
            return y.transpose(0, 1)
        y = self.matrices(x, self.convs, self.activation, last_activation=True)
        return self.mlp.forward_net_major(y)


class StackedConvDecoder(nn.Module):
    """``num_nets`` independent :class:`~pyro_spvae.nn.ConvDecoder` s as grouped convolutions.

    :param num_nets: number of networks ``N``.
    :param in_dim: per-net latent width.
    :param event_shape: per-net image shape ``(C, h, w)`` (only ``h, w`` are used).
    :param out_channels: per-net output channels (e.g. ``num_params * C``).
    :param channels: per-net encoder channel widths (used in reverse).
    :param hidden: per-net hidden widths of the MLP before the transposed convolutions.
    :param activation: activation name or module.
    :param stride: stride of the transposed convolutions.
    :param out_layer: ``"conv"`` or ``"deconv"`` (see :class:`~pyro_spvae.nn.ConvDecoder`).
    :param init: ``"torch"`` or ``"tf1"``.
    :param heads: separate linear heads per net in the output channels (``"tf1"`` fan-out only).
    :param impl: ``"conv"``, ``"matmul"`` or ``"auto"``, as for :class:`StackedConvEncoder`.

    Shapes: ``(..., N, in_dim) -> (..., N, out_channels, h, w)``; :meth:`forward_net_major`
    ``(N, M, in_dim) -> (N, M, out_channels h w)``.
    """

    def __init__(self, num_nets: int, in_dim: int, event_shape: Sequence[int], out_channels: int,
                 channels: Sequence[int] = (32, 64), hidden: Sequence[int] = (),
                 activation: str | nn.Module = "relu", stride: int = 2, out_layer: str = "conv",
                 init: str = "torch", heads: int = 1, impl: str = "auto") -> None:
        super().__init__()
        self.num_nets, self.event_shape, self.channels = _stacked_conv_args(num_nets, event_shape, channels)
        self.in_dim = check_positive_int("in_dim", in_dim)
        self.out_channels = check_positive_int("out_channels", out_channels)
        self.stride, self.init = check_stride(stride), check_init(init)
        self.out_layer = check_choice("out_layer", out_layer, OUT_LAYERS)
        n, heads = self.num_nets, check_positive_int("heads", heads)
        _, h, w = self.event_shape
        self.hs = conv_spatial_sizes(h, len(self.channels), self.stride)
        self.ws = conv_spatial_sizes(w, len(self.channels), self.stride)
        self.activation = get_activation(activation)
        self.mlp = StackedMLP(n, self.in_dim, hidden, self.channels[-1] * self.hs[-1] * self.ws[-1],
                              activation=self.activation, init=self.init)
        chans = (self.out_channels if out_layer == "deconv" else self.channels[0], *self.channels)
        layers = []
        for i in range(len(self.channels), 0, -1):
            op = (deconv_output_padding(self.hs[i], self.hs[i - 1], self.stride),
                  deconv_output_padding(self.ws[i], self.ws[i - 1], self.stride))
            layers.append(nn.ConvTranspose2d(n * chans[i], n * chans[i - 1], 3, stride=self.stride, padding=1,
                                             output_padding=op, groups=n))
        self.deconvs = nn.ModuleList(layers)
        self.out_conv = (nn.Conv2d(n * chans[0], n * self.out_channels, 3, padding=1, groups=n)
                         if out_layer == "conv" else None)
        if self.init == "tf1":
            for layer in self.layers[:-1]:
                init_conv_(layer, out_blocks=n)
            init_conv_(self.layers[-1], out_blocks=n * heads)
        in_sizes = [(self.hs[i], self.ws[i]) for i in range(len(self.channels), -1, -1)]
        self.matrices = _ConvMatrices(self.layers, in_sizes, n)
        self.impl = check_choice("impl", impl, IMPLS)
        self.use_matmul = impl == "matmul" or (
            impl == "auto" and self.matrices.entries(self.layers) <= MATMUL_MAX_ENTRIES
        )

    @property
    def layers(self) -> list[nn.Module]:
        """The (transposed) convolutions in order, the output layer last."""
        return [*self.deconvs] + ([self.out_conv] if self.out_conv is not None else [])

    @classmethod
    def from_modules(cls, decoders: Sequence[ConvDecoder], impl: str = "auto") -> StackedConvDecoder:
        """Stack copies of separate :class:`~pyro_spvae.nn.ConvDecoder` s with identical architecture."""
        if len(decoders) == 0:
            raise ValueError("from_modules needs at least one ConvDecoder")
        first = decoders[0]
        out = cls(len(decoders), first.in_dim, first.event_shape, first.out_channels, first.channels,
                  first.mlp.hidden, activation=first.activation, stride=first.stride,
                  out_layer=first.out_layer, impl=impl).to(first.output_layer.weight)
        out.mlp = StackedMLP.from_modules([d.mlp for d in decoders])
        for i, deconv in enumerate(out.deconvs):
            _copy_grouped(deconv, [d.deconvs[i] for d in decoders])
        if out.out_conv is not None:
            _copy_grouped(out.out_conv, [d.out_conv for d in decoders])
        return out

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """Decode ``z`` of shape ``(..., N, in_dim)``; returns ``(..., N, out_channels, h, w)``."""
        layers = self.layers
        check_network_input("StackedConvDecoder input", z, layers[-1].weight, (self.num_nets, self.in_dim))
        batch = z.shape[:-2]
        n = self.num_nets
        if self.use_matmul:
            y = self.forward_net_major(z.reshape(-1, n, self.in_dim).transpose(0, 1))
            return y.transpose(0, 1).reshape(*batch, n, self.out_channels, self.hs[0], self.ws[0])
        y = self.activation(self.mlp(z))
        y = y.reshape(-1, n * self.channels[-1], self.hs[-1], self.ws[-1])
        # channels-last: oneDNN's grouped (de)convolutions, forward and backward, are several times
        # faster on NHWC than on NCHW tensors on CPU (~5x for the 32-group decoder of the SPVAE)
        y = y.contiguous(memory_format=torch.channels_last)
        for layer in layers[:-1]:
            y = self.activation(layer(y))
        y = _ChannelsLastGrad.apply(layers[-1](y))
        return y.reshape(*batch, n, self.out_channels, self.hs[0], self.ws[0])

    def forward_net_major(self, z: torch.Tensor) -> torch.Tensor:
        """Net-major path without input checks: ``(N, M, in_dim) -> (N, M, out_channels h w)``
        (images flattened channel-major)."""
        if not self.use_matmul:
            y = self.forward(z.transpose(0, 1))
            return y.flatten(-3).transpose(0, 1)
        y = self.activation(self.mlp.forward_net_major(z))
        return self.matrices(y, self.layers, self.activation, last_activation=False)
