"""pyro-spvae: a Pyro plugin for variational autoencoders with structured latent spaces and
structured likelihoods.

Subpackages
-----------
- :mod:`pyro_spvae.distributions`: torch ``Distribution`` classes (SPN, likelihoods, mixtures).
- :mod:`pyro_spvae.spn`: region graphs and vectorised einsum layers for sum-product networks.
- :mod:`pyro_spvae.nn`: MLP/conv blocks, stacked networks, likelihood heads.
- :mod:`pyro_spvae.infer`: ELBO estimators (IWAE/DReG/STL, SPN-aware bounds), log-likelihood evaluation.
- :mod:`pyro_spvae.data`: MNIST loading, transforms and the embedded offline dataset.
- :mod:`pyro_spvae.training`: SVI trainer, checkpoints, metrics, distributed training.
- :mod:`pyro_spvae.models` / :mod:`pyro_spvae.guides`: model functions and amortised guides.
"""

__version__ = "0.1.0"
