"""Pyro models (``PyroModule`` whose ``forward(x)`` is the model), installed as
``pyro_spvae.models``.

Models build on the primitives of :mod:`pyro_spvae.distributions`, :mod:`pyro_spvae.spn`,
:mod:`pyro_spvae.nn` and :mod:`pyro_spvae.infer`, and never import :mod:`pyro_spvae.guides`: the
``(model, guide)`` builders and the family registry live in :mod:`pyro_spvae.zoo`.
"""

from .dlgmm import DLGMM
from .linear_gaussian import GlobalOffsetPPCA, LinearGaussianVAE, MixtureOfPPCA
from .mivae import MIVAE, RelaxedOneHotCode
from .spvae import SPVAE
from .vae import VAE
from .vhp_vae import VHPVAE

__all__ = [
    "DLGMM",
    "GlobalOffsetPPCA",
    "LinearGaussianVAE",
    "MIVAE",
    "MixtureOfPPCA",
    "RelaxedOneHotCode",
    "SPVAE",
    "VAE",
    "VHPVAE",
]
