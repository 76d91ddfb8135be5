"""Amortised guide networks (``PyroModule`` whose ``forward(x)`` samples the model's latent sites),
installed as ``pyro_spvae.guides``."""

from .gaussian import GaussianGuide
from .linear_gaussian import (
    GlobalOffsetPPCAGuide,
    GlobalOffsetPPCAPosteriorGuide,
    LinearGaussianGuide,
    LinearGaussianPosteriorGuide,
    MixtureOfPPCAGuide,
    MixtureOfPPCAPosteriorGuide,
)
from .spvae import SPVAEGuide

__all__ = [
    "GaussianGuide",
    "SPVAEGuide",
    "LinearGaussianGuide",
    "LinearGaussianPosteriorGuide",
    "MixtureOfPPCAGuide",
    "MixtureOfPPCAPosteriorGuide",
    "GlobalOffsetPPCAGuide",
    "GlobalOffsetPPCAPosteriorGuide",
]
