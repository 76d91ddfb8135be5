"""Pyro model functions (``PyroModule`` whose ``forward(x)`` is the model), installed as
``pyro_spvae.models``.

:data:`MODELS` maps a CLI/config name to a factory; adding a model family is a file here, one in
``guides/`` and one entry in this registry.
"""

from collections.abc import Callable

from .linear_gaussian import GlobalOffsetPPCA, LinearGaussianVAE, MixtureOfPPCA, build_linear_gaussian
from .spvae import SPVAE, build_spvae
from .vae import VAE, build_vae

__all__ = [
    "GlobalOffsetPPCA",
    "LinearGaussianVAE",
    "MixtureOfPPCA",
    "build_linear_gaussian",
    "MODELS",
    "SPVAE",
    "build_spvae",
    "VAE",
    "build_vae",
]

#: Model-family name -> builder ``(event_shape, **hyper_parameters) -> (model, guide)``.
MODELS: dict[str, Callable[..., tuple]] = {
    "vae": build_vae,
    "spvae": build_spvae,
    "linear_gaussian": build_linear_gaussian,
}
