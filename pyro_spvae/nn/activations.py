"""Activation functions by name, for network builders configured from strings (CLI, presets)."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from pyro_spvae.validation import check_choice

__all__ = ["ACTIVATIONS", "get_activation"]

#: Name -> factory of the activation module.
ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "softplus": nn.Softplus,
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "elu": nn.ELU,
    "leaky_relu": nn.LeakyReLU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "sigmoid": nn.Sigmoid,
    "identity": nn.Identity,
}


def get_activation(activation: str | nn.Module) -> nn.Module:
    """Return an activation module from its name (see :data:`ACTIVATIONS`) or pass a module through.

    :raises ValueError: for an unknown name.
    :raises TypeError: for anything that is neither a string nor an ``nn.Module``.
    """
    if isinstance(activation, nn.Module):
        return activation
    if not isinstance(activation, str):
        raise TypeError(f"activation must be a name or an nn.Module, got {type(activation).__name__}")
    return ACTIVATIONS[check_choice("activation", activation, ACTIVATIONS)]()
