"""Model-family registry (placeholder being filled in: the builders move here from ``models/``)."""

from pyro_spvae.models import MODELS

__all__ = ["MODELS"]
