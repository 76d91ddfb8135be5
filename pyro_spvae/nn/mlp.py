"""Multi-layer perceptron with arbitrary leading batch dimensions."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .activations import get_activation
from pyro_spvae.validation import check_hidden, check_input_like, check_positive_int

__all__ = ["MLP"]


class MLP(nn.Module):
    """Fully connected network ``in_dim -> hidden[0] -> ... -> hidden[-1] -> out_dim``.

    An activation follows every hidden layer; the output layer is affine (optionally followed by
    ``output_activation``). Layers are :class:`torch.nn.Linear` with PyTorch's default
    initialisation, kept in :attr:`layers` (so ``len(hidden) + 1`` linear maps).

    :param in_dim: input width ``D_in``.
    :param hidden: widths of the hidden layers (may be empty: a single affine map).
    :param out_dim: output width ``D_out``.
    :param activation: name (``"softplus"``, ``"relu"``, ``"tanh"``, ...) or module.
    :param output_activation: optional activation applied to the output.

    Shapes: input ``(..., D_in)`` -> output ``(..., D_out)`` for any number of leading dims.
    """

    def __init__(self, in_dim: int, hidden: Sequence[int] | int, out_dim: int,
                 activation: str | nn.Module = "softplus",
                 output_activation: str | nn.Module | None = None) -> None:
        super().__init__()
        self.in_dim = check_positive_int("in_dim", in_dim)
        self.out_dim = check_positive_int("out_dim", out_dim)
        self.hidden = check_hidden("hidden", hidden)
        widths = (self.in_dim, *self.hidden, self.out_dim)
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:]))
        self.activation = get_activation(activation)
        self.output_activation = None if output_activation is None else get_activation(output_activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the network to ``x`` of shape ``(..., in_dim)``; returns ``(..., out_dim)``."""
        check_input_like("MLP input", x, self.layers[0].weight)
        if x.dim() == 0 or x.shape[-1] != self.in_dim:
            raise ValueError(f"MLP input has shape {tuple(x.shape)}, expected (..., {self.in_dim})")
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = self.activation(x)
        if self.output_activation is not None:
            x = self.output_activation(x)
        return x
