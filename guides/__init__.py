"""Amortised guide networks (``PyroModule`` whose ``forward(x)`` samples the model's latent sites),
installed as ``pyro_spvae.guides``."""
