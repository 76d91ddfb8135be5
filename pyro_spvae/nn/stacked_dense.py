"""Stacked dense networks: ``N`` small MLPs evaluated as one, one batched matmul per layer, and
:class:`StackedHeads` (separate stacked networks per output head).

Part of :mod:`pyro_spvae.nn.stacked` (see its docstring for the layout conventions): inputs carry the
net axis just before the feature axis, ``(..., N, D)``, and the net-major fast paths take ``(N, M, D)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from pyro_spvae.validation import check_network_input, check_positive_int

from .activations import get_activation
from .builders import SeparateHeads
from .mlp import MLP, check_init, init_dense_, mlp_widths

__all__ = ["StackedLinear", "StackedMLP", "StackedHeads"]


class StackedLinear(nn.Module):
    """``num_nets`` independent affine maps ``y_n = W_n x_n + b_n`` as one batched matmul.

    :param num_nets: number of networks ``N``.
    :param in_features: input width ``D_in`` of every net.
    :param out_features: output width ``D_out`` of every net.

    Parameters: ``weight`` of shape ``(N, D_out, D_in)`` (``weight[n]`` is laid out like
    ``nn.Linear.weight``) and ``bias`` of shape ``(N, D_out)``. Each net is initialised like
    :class:`torch.nn.Linear`: entries ``~ U(-1/sqrt(D_in), 1/sqrt(D_in))`` (``init="torch"``), or
    like a dense layer of the SPVAE reference (``init="tf1"``, see :mod:`pyro_spvae.nn.mlp`).

    Shapes: ``(..., N, D_in) -> (..., N, D_out)``.
    """

    def __init__(self, num_nets: int, in_features: int, out_features: int, init: str = "torch") -> None:
        super().__init__()
        self.num_nets = check_positive_int("num_nets", num_nets)
        self.in_features = check_positive_int("in_features", in_features)
        self.out_features = check_positive_int("out_features", out_features)
        self.init = check_init(init)
        self.weight = nn.Parameter(torch.empty(self.num_nets, self.out_features, self.in_features))
        self.bias = nn.Parameter(torch.empty(self.num_nets, self.out_features))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Per-net ``nn.Linear`` initialisation (Kaiming-uniform with ``a = sqrt(5)``, i.e.
        ``U(-1/sqrt(D_in), 1/sqrt(D_in))`` for weights and biases), or with ``init="tf1"``
        He-truncated-normal weights and zero biases."""
        if self.init == "tf1":
            init_dense_(self.weight, self.bias, self.in_features)
            return
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
        check_network_input("StackedLinear input", x, self.weight, (self.num_nets, self.in_features))
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
    :param init: ``"torch"`` or ``"tf1"`` (see :mod:`pyro_spvae.nn.mlp`).

    Shapes: ``(..., N, in_dim) -> (..., N, out_dim)``.
    """

    def __init__(self, num_nets: int, in_dim: int, hidden: Sequence[int] | int, out_dim: int,
                 activation: str | nn.Module = "softplus",
                 output_activation: str | nn.Module | None = None, init: str = "torch") -> None:
        super().__init__()
        self.num_nets = check_positive_int("num_nets", num_nets)
        widths = mlp_widths(in_dim, hidden, out_dim)
        self.in_dim, self.hidden, self.out_dim = widths[0], widths[1:-1], widths[-1]
        self.layers = nn.ModuleList(
            StackedLinear(self.num_nets, a, b, init=init) for a, b in zip(widths[:-1], widths[1:])
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
        check_network_input("StackedMLP input", x, self.layers[0].weight, (self.num_nets, self.in_dim))
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


class StackedHeads(SeparateHeads):
    """Separate stacked networks, one per head (e.g. the mean and the precision of a Gaussian),
    reading the same input; their outputs are concatenated head-major (:class:`SeparateHeads`).

    Each head is one stacked network over all ``N`` nets (never a loop over nets); the SPVAE
    reference's dense leaf VAEs have such separate MLPs for the encoder's mean and precision and
    the decoder's mean and precision (Tan & Peharz 2019; see ``docs/spvae.md``).

    :param nets: the stacked networks (same ``num_nets``, same input and output shapes).
    :param event_dims: number of trailing output dims of one net (1 for a :class:`StackedMLP`, 3
        for a :class:`~pyro_spvae.nn.StackedConvDecoder`); the heads are concatenated along the
        first of them.

    Shapes: as the heads', with the first output feature dim multiplied by the number of heads
    ``P``; :meth:`forward_net_major` ``(N, M, .) -> (N, M, P * D)``, and
    :meth:`forward_net_major_heads` the ``P`` outputs ``(N, M, D)`` without the concatenation.
    """

    def __init__(self, nets: Sequence[nn.Module], event_dims: int = 1) -> None:
        super().__init__(nets, event_dims)
        self.num_nets = check_positive_int("num_nets", getattr(nets[0], "num_nets", None))
        if any(getattr(h, "num_nets", None) != self.num_nets for h in nets):
            raise ValueError("the heads of StackedHeads must stack the same number of nets")

    def forward_net_major_heads(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Each head's net-major output ``(N, M, D)`` for net-major input ``x``."""
        return [net.forward_net_major(x) for net in self.nets]

    def forward_net_major(self, x: torch.Tensor) -> torch.Tensor:
        """Net-major: ``(N, M, .) -> (N, M, P * D)`` (head-major features)."""
        return torch.cat(self.forward_net_major_heads(x), dim=-1)
