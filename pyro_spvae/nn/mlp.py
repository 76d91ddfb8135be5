"""Multi-layer perceptron with arbitrary leading batch dimensions, and the weight initialisations
shared by every network of :mod:`pyro_spvae.nn`.

Initialisations (:data:`INITS`):

- ``"torch"``: PyTorch's defaults (``nn.Linear``/``nn.Conv2d``: Kaiming-uniform with ``a = sqrt(5)``,
  i.e. ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))`` for weights and biases);
- ``"tf1"``: the TensorFlow-1 defaults of the SPVAE reference code (Tan & Peharz 2019; see
  ``docs/spvae.md``): dense kernels from ``tf.contrib.layers.variance_scaling_initializer()`` (He
  initialisation: a normal truncated at two standard deviations with standard deviation
  ``sqrt(1.3 * 2 / fan_in)``, :func:`he_truncated_normal_`), (transposed) convolution kernels
  Glorot-uniform (:func:`glorot_uniform_`), all biases zero.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from pyro_spvae.validation import check_choice, check_hidden, check_network_input, check_positive_int

from .activations import get_activation

__all__ = ["INITS", "MLP", "check_init", "glorot_uniform_", "he_truncated_normal_", "init_dense_",
           "mlp_widths"]

#: Weight initialisations accepted by the networks (see the module docstring).
INITS: tuple[str, ...] = ("torch", "tf1")


def check_init(init: object) -> str:
    """``init`` if it is one of :data:`INITS`.

    :raises ValueError: otherwise.
    """
    return check_choice("init", init, INITS)


@torch.no_grad()
def he_truncated_normal_(weight: torch.Tensor, fan_in: int) -> torch.Tensor:
    """In place: ``N(0, s^2)`` truncated to ``[-2 s, 2 s]`` with ``s = sqrt(1.3 * 2 / fan_in)``
    (TF1's ``variance_scaling_initializer()`` defaults: factor 2, fan-in, truncated normal; the
    factor 1.3 makes up for the truncation)."""
    std = math.sqrt(1.3 * 2.0 / fan_in)
    return nn.init.trunc_normal_(weight, 0.0, std, -2.0 * std, 2.0 * std)


@torch.no_grad()
def glorot_uniform_(weight: torch.Tensor, fan_in: int, fan_out: int) -> torch.Tensor:
    """In place: ``U(-b, b)`` with ``b = sqrt(6 / (fan_in + fan_out))`` (Glorot & Bengio 2010; TF's
    default kernel initialiser)."""
    bound = math.sqrt(6.0 / (fan_in + fan_out))
    return weight.uniform_(-bound, bound)


@torch.no_grad()
def init_dense_(weight: torch.Tensor, bias: torch.Tensor | None, fan_in: int) -> None:
    """``"tf1"`` initialisation of a dense layer: He-truncated-normal ``weight``, zero ``bias``."""
    he_truncated_normal_(weight, fan_in)
    if bias is not None:
        bias.zero_()


def mlp_widths(in_dim: int, hidden: Sequence[int] | int, out_dim: int) -> tuple[int, ...]:
    """The validated layer widths ``(in_dim, *hidden, out_dim)`` of an MLP (plain or stacked).

    :raises TypeError: for widths that are not ints (or a sequence of ints for ``hidden``).
    :raises ValueError: for widths below 1.
    """
    return (check_positive_int("in_dim", in_dim), *check_hidden("hidden", hidden),
            check_positive_int("out_dim", out_dim))


class MLP(nn.Module):
    """Fully connected network ``in_dim -> hidden[0] -> ... -> hidden[-1] -> out_dim``.

    An activation follows every hidden layer; the output layer is affine (optionally followed by
    ``output_activation``). Layers are :class:`torch.nn.Linear` with PyTorch's default
    initialisation (or ``init="tf1"``, see the module docstring), kept in :attr:`layers` (so
    ``len(hidden) + 1`` linear maps).

    :param in_dim: input width ``D_in``.
    :param hidden: widths of the hidden layers (may be empty: a single affine map).
    :param out_dim: output width ``D_out``.
    :param activation: name (``"softplus"``, ``"relu"``, ``"tanh"``, ...) or module.
    :param output_activation: optional activation applied to the output.
    :param init: ``"torch"`` or ``"tf1"`` (see :data:`INITS`).

    Shapes: input ``(..., D_in)`` -> output ``(..., D_out)`` for any number of leading dims.
    """

    def __init__(self, in_dim: int, hidden: Sequence[int] | int, out_dim: int,
                 activation: str | nn.Module = "softplus",
                 output_activation: str | nn.Module | None = None, init: str = "torch") -> None:
        super().__init__()
        widths = mlp_widths(in_dim, hidden, out_dim)
        self.in_dim, self.hidden, self.out_dim = widths[0], widths[1:-1], widths[-1]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:]))
        if check_init(init) == "tf1":
            for layer in self.layers:
                init_dense_(layer.weight, layer.bias, layer.in_features)
        self.activation = get_activation(activation)
        self.output_activation = None if output_activation is None else get_activation(output_activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the network to ``x`` of shape ``(..., in_dim)``; returns ``(..., out_dim)``."""
        check_network_input("MLP input", x, self.layers[0].weight, (self.in_dim,))
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = self.activation(x)
        if self.output_activation is not None:
            x = self.output_activation(x)
        return x
