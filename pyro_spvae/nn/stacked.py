"""Many small networks evaluated as ONE stacked network.

SPVAE (Tan & Peharz, ICML 2019; ``DESIGN.md`` §3) has one small VAE per leaf of the
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
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .activations import get_activation
from pyro_spvae.validation import check_hidden, check_input_like, check_positive_int
from .conv import ConvDecoder, ConvEncoder, _check_image_args, conv_spatial_sizes
from .mlp import MLP

__all__ = [
    "StackedLinear",
    "StackedMLP",
    "StackedConvEncoder",
    "StackedConvDecoder",
    "conv_taps",
    "conv_matrix",
]

#: ``impl="auto"`` uses the matrix form when every layer's per-net matrix has at most this many entries.
MATMUL_MAX_ENTRIES = 1 << 17


def _check_net_axis(name: str, x: torch.Tensor, num_nets: int, feature_shape: tuple[int, ...],
                    like: torch.Tensor) -> None:
    check_input_like(f"{name} input", x, like)
    n = len(feature_shape) + 1
    if x.dim() < n or tuple(x.shape[x.dim() - n:]) != (num_nets, *feature_shape):
        expected = ", ".join(str(s) for s in (num_nets, *feature_shape))
        raise ValueError(f"{name} input has shape {tuple(x.shape)}, expected (..., {expected})")


class StackedLinear(nn.Module):
    """``num_nets`` independent affine maps ``y_n = W_n x_n + b_n`` as one batched matmul.

    :param num_nets: number of networks ``N``.
    :param in_features: input width ``D_in`` of every net.
    :param out_features: output width ``D_out`` of every net.

    Parameters: ``weight`` of shape ``(N, D_out, D_in)`` (``weight[n]`` is laid out like
    ``nn.Linear.weight``) and ``bias`` of shape ``(N, D_out)``. Each net is initialised like
    :class:`torch.nn.Linear`: entries ``~ U(-1/sqrt(D_in), 1/sqrt(D_in))``.

    Shapes: ``(..., N, D_in) -> (..., N, D_out)``.
    """

    def __init__(self, num_nets: int, in_features: int, out_features: int) -> None:
        super().__init__()
        self.num_nets = check_positive_int("num_nets", num_nets)
        self.in_features = check_positive_int("in_features", in_features)
        self.out_features = check_positive_int("out_features", out_features)
        self.weight = nn.Parameter(torch.empty(self.num_nets, self.out_features, self.in_features))
        self.bias = nn.Parameter(torch.empty(self.num_nets, self.out_features))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Per-net ``nn.Linear`` initialisation (Kaiming-uniform with ``a = sqrt(5)``, i.e.
        ``U(-1/sqrt(D_in), 1/sqrt(D_in))`` for weights and biases)."""
        bound = 1.0 / math.sqrt(self.in_features)
        with torch.no_grad():
            self.weight.uniform_(-bound, bound)
            self.bias.uniform_(-bound, bound)

    @classmethod
    def from_modules(cls, linears: Sequence[nn.Linear]) -> StackedLinear:
        """Stack copies of the weights of separate :class:`torch.nn.Linear` layers (same shapes)."""
        if len(linears) == 0:
            raise ValueError("from_modules needs at least one nn.Linear")
        first = linears[0]
        if any(not isinstance(m, nn.Linear) or m.weight.shape != first.weight.shape for m in linears):
            raise ValueError("from_modules needs nn.Linear layers with identical in/out features")
        out = cls(len(linears), first.in_features, first.out_features).to(first.weight)
        with torch.no_grad():
            out.weight.copy_(torch.stack([m.weight for m in linears]))
            if any(m.bias is None for m in linears):
                raise ValueError("from_modules needs nn.Linear layers with a bias")
            out.bias.copy_(torch.stack([m.bias for m in linears]))
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply net ``n`` to ``x[..., n, :]``; ``(..., N, D_in) -> (..., N, D_out)``."""
        _check_net_axis("StackedLinear", x, self.num_nets, (self.in_features,), self.weight)
        batch = x.shape[:-2]
        xt = x.reshape(-1, self.num_nets, self.in_features).transpose(0, 1)  # (N, B, D_in)
        y = self.forward_net_major(xt)  # (N, B, D_out)
        return y.transpose(0, 1).reshape(*batch, self.num_nets, self.out_features)

    def forward_net_major(self, x: torch.Tensor) -> torch.Tensor:
        """Net-major fast path without checks: ``(N, M, D_in) -> (N, M, D_out)``, one ``baddbmm``."""
        return torch.baddbmm(self.bias.unsqueeze(1), x, self.weight.transpose(1, 2))

    def extra_repr(self) -> str:
        return f"num_nets={self.num_nets}, in_features={self.in_features}, out_features={self.out_features}"


class StackedMLP(nn.Module):
    """``num_nets`` independent :class:`~pyro_spvae.nn.MLP` s with identical architecture.

    :param num_nets: number of networks ``N``.
    :param in_dim: input width of every net.
    :param hidden: hidden widths (may be empty).
    :param out_dim: output width of every net.
    :param activation: activation name or module (after every hidden layer).
    :param output_activation: optional activation on the output.

    Shapes: ``(..., N, in_dim) -> (..., N, out_dim)``.
    """

    def __init__(self, num_nets: int, in_dim: int, hidden: Sequence[int] | int, out_dim: int,
                 activation: str | nn.Module = "softplus",
                 output_activation: str | nn.Module | None = None) -> None:
        super().__init__()
        self.num_nets = check_positive_int("num_nets", num_nets)
        self.in_dim = check_positive_int("in_dim", in_dim)
        self.out_dim = check_positive_int("out_dim", out_dim)
        self.hidden = check_hidden("hidden", hidden)
        widths = (self.in_dim, *self.hidden, self.out_dim)
        self.layers = nn.ModuleList(
            StackedLinear(self.num_nets, a, b) for a, b in zip(widths[:-1], widths[1:])
        )
        self.activation = get_activation(activation)
        self.output_activation = None if output_activation is None else get_activation(output_activation)

    @classmethod
    def from_modules(cls, mlps: Sequence[MLP]) -> StackedMLP:
        """Stack copies of separate :class:`~pyro_spvae.nn.MLP` s (same widths and activations)."""
        if len(mlps) == 0:
            raise ValueError("from_modules needs at least one MLP")
        first = mlps[0]
        if any(m.hidden != first.hidden or m.in_dim != first.in_dim or m.out_dim != first.out_dim
               for m in mlps):
            raise ValueError("from_modules needs MLPs with identical widths")
        out = cls(len(mlps), first.in_dim, first.hidden, first.out_dim, activation=first.activation,
                  output_activation=first.output_activation).to(first.layers[0].weight)
        for i, layer in enumerate(out.layers):
            stacked = StackedLinear.from_modules([m.layers[i] for m in mlps])
            with torch.no_grad():
                layer.weight.copy_(stacked.weight)
                layer.bias.copy_(stacked.bias)
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply net ``n`` to ``x[..., n, :]``; ``(..., N, in_dim) -> (..., N, out_dim)``."""
        _check_net_axis("StackedMLP", x, self.num_nets, (self.in_dim,), self.layers[0].weight)
        batch = x.shape[:-2]
        # one transpose in and one out: the layers run net-major, one baddbmm each, no copies between
        y = self.forward_net_major(x.reshape(-1, self.num_nets, self.in_dim).transpose(0, 1))
        return y.transpose(0, 1).reshape(*batch, self.num_nets, self.out_dim)

    def forward_net_major(self, x: torch.Tensor) -> torch.Tensor:
        """Net-major fast path without input checks: ``(N, M, in_dim) -> (N, M, out_dim)``.

        Each layer is one ``baddbmm`` on ``(N, M, .)`` tensors; callers that keep their data net-major
        (e.g. SPVAE's leaf likelihoods) avoid every layout copy.
        """
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            x = layer.forward_net_major(x)
            if i < last:
                x = self.activation(x)
        if self.output_activation is not None:
            x = self.output_activation(x)
        return x


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


def _check_impl(impl: str) -> str:
    if impl not in ("auto", "matmul", "conv"):
        raise ValueError(f"impl must be 'auto', 'matmul' or 'conv', got {impl!r}")
    return impl


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
                 activation: str | nn.Module = "relu", impl: str = "auto") -> None:
        super().__init__()
        self.num_nets = check_positive_int("num_nets", num_nets)
        self.event_shape, self.channels = _check_image_args(event_shape, channels)
        self.out_dim = check_positive_int("out_dim", out_dim)
        n = self.num_nets
        c, h, w = self.event_shape
        widths = (c, *self.channels)
        self.convs = nn.ModuleList(
            nn.Conv2d(n * a, n * b, 3, stride=2, padding=1, groups=n) for a, b in zip(widths[:-1], widths[1:])
        )
        self.activation = get_activation(activation)
        hs = conv_spatial_sizes(h, len(self.channels))
        ws = conv_spatial_sizes(w, len(self.channels))
        self.flat_dim = self.channels[-1] * hs[-1] * ws[-1]
        self.mlp = StackedMLP(n, self.flat_dim, hidden, self.out_dim, activation=self.activation)
        self.matrices = _ConvMatrices(self.convs, list(zip(hs[:-1], ws[:-1])), n)
        self.impl = _check_impl(impl)
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
                  activation=first.activation, impl=impl).to(first.convs[0].weight)
        for i, conv in enumerate(out.convs):
            _copy_grouped(conv, [e.convs[i] for e in encoders])
        out.mlp = StackedMLP.from_modules([e.mlp for e in encoders])
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Encode ``x`` of shape ``(..., N, C, h, w)``; returns ``(..., N, out_dim)``."""
        _check_net_axis("StackedConvEncoder", x, self.num_nets, self.event_shape, self.convs[0].weight)
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
    :param impl: ``"conv"``, ``"matmul"`` or ``"auto"``, as for :class:`StackedConvEncoder`.

    Shapes: ``(..., N, in_dim) -> (..., N, out_channels, h, w)``; :meth:`forward_net_major`
    ``(N, M, in_dim) -> (N, M, out_channels h w)``.
    """

    def __init__(self, num_nets: int, in_dim: int, event_shape: Sequence[int], out_channels: int,
                 channels: Sequence[int] = (32, 64), hidden: Sequence[int] = (),
                 activation: str | nn.Module = "relu", impl: str = "auto") -> None:
        super().__init__()
        self.num_nets = check_positive_int("num_nets", num_nets)
        self.event_shape, self.channels = _check_image_args(event_shape, channels)
        self.in_dim = check_positive_int("in_dim", in_dim)
        self.out_channels = check_positive_int("out_channels", out_channels)
        n = self.num_nets
        _, h, w = self.event_shape
        self.hs = conv_spatial_sizes(h, len(self.channels))
        self.ws = conv_spatial_sizes(w, len(self.channels))
        self.activation = get_activation(activation)
        self.mlp = StackedMLP(n, self.in_dim, hidden, self.channels[-1] * self.hs[-1] * self.ws[-1],
                              activation=self.activation)
        chans = (self.channels[0], *self.channels)
        layers = []
        for i in range(len(self.channels), 0, -1):
            oph = self.hs[i - 1] - (2 * self.hs[i] - 1)
            opw = self.ws[i - 1] - (2 * self.ws[i] - 1)
            layers.append(nn.ConvTranspose2d(n * chans[i], n * chans[i - 1], 3, stride=2, padding=1,
                                             output_padding=(oph, opw), groups=n))
        self.deconvs = nn.ModuleList(layers)
        self.out_conv = nn.Conv2d(n * chans[0], n * self.out_channels, 3, padding=1, groups=n)
        in_sizes = [(self.hs[i], self.ws[i]) for i in range(len(self.channels), -1, -1)]
        self.matrices = _ConvMatrices([*self.deconvs, self.out_conv], in_sizes, n)
        self.impl = _check_impl(impl)
        self.use_matmul = impl == "matmul" or (
            impl == "auto" and self.matrices.entries([*self.deconvs, self.out_conv]) <= MATMUL_MAX_ENTRIES
        )

    @classmethod
    def from_modules(cls, decoders: Sequence[ConvDecoder], impl: str = "auto") -> StackedConvDecoder:
        """Stack copies of separate :class:`~pyro_spvae.nn.ConvDecoder` s with identical architecture."""
        if len(decoders) == 0:
            raise ValueError("from_modules needs at least one ConvDecoder")
        first = decoders[0]
        out = cls(len(decoders), first.in_dim, first.event_shape, first.out_channels, first.channels,
                  first.mlp.hidden, activation=first.activation, impl=impl).to(first.out_conv.weight)
        out.mlp = StackedMLP.from_modules([d.mlp for d in decoders])
        for i, deconv in enumerate(out.deconvs):
            _copy_grouped(deconv, [d.deconvs[i] for d in decoders])
        _copy_grouped(out.out_conv, [d.out_conv for d in decoders])
        return out

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """Decode ``z`` of shape ``(..., N, in_dim)``; returns ``(..., N, out_channels, h, w)``."""
        _check_net_axis("StackedConvDecoder", z, self.num_nets, (self.in_dim,), self.out_conv.weight)
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
        for deconv in self.deconvs:
            y = self.activation(deconv(y))
        y = _ChannelsLastGrad.apply(self.out_conv(y))
        return y.reshape(*batch, n, self.out_channels, self.hs[0], self.ws[0])

    def forward_net_major(self, z: torch.Tensor) -> torch.Tensor:
        """Net-major path without input checks: ``(N, M, in_dim) -> (N, M, out_channels h w)``
        (images flattened channel-major)."""
        if not self.use_matmul:
            y = self.forward(z.transpose(0, 1))
            return y.flatten(-3).transpose(0, 1)
        y = self.activation(self.mlp.forward_net_major(z))
        return self.matrices(y, [*self.deconvs, self.out_conv], self.activation, last_activation=False)
