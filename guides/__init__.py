"""Guides (``PyroModule`` whose ``forward(x)`` samples the model's latent sites), installed as
``pyro_spvae.guides``.

A guide may import its model's public classes (e.g. to read an exact posterior) but nothing
private of :mod:`pyro_spvae.models`; the ``(model, guide)`` builders live in :mod:`pyro_spvae.zoo`.
"""

from .dlgmm import EnumeratedMixtureGuide, MixtureGuide, StickBreakingGuide
from .gaussian import GaussianGuide
from .linear_gaussian import (
    GlobalOffsetPPCAGuide,
    GlobalOffsetPPCAPosteriorGuide,
    LinearGaussianGuide,
    LinearGaussianPosteriorGuide,
    MixtureOfPPCAGuide,
    MixtureOfPPCAPosteriorGuide,
)
from .mivae import MIVAEGuide
from .spvae import SPVAEGuide
from .vhp_vae import VHPVAEGuide

__all__ = [
    "EnumeratedMixtureGuide",
    "MixtureGuide",
    "StickBreakingGuide",
    "GaussianGuide",
    "SPVAEGuide",
    "MIVAEGuide",
    "VHPVAEGuide",
    "LinearGaussianGuide",
    "LinearGaussianPosteriorGuide",
    "MixtureOfPPCAGuide",
    "MixtureOfPPCAPosteriorGuide",
    "GlobalOffsetPPCAGuide",
    "GlobalOffsetPPCAPosteriorGuide",
]
