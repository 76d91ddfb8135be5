"""pyro-spvae: a Pyro plugin for sum-product networks of variational autoencoders (SPVAE,
Tan & Peharz, ICML 2019), with importance-weighted estimators and a trainer.

Subpackages and modules, from the bottom layer up (imports point one way, see ``CONTRIBUTING.md``):

- :mod:`pyro_spvae.validation`: argument and data checks (``TypeError`` for a wrong type,
  ``ValueError`` for a wrong value).
- :mod:`pyro_spvae.distributions`: torch ``Distribution`` classes (the sum-product network,
  likelihoods on the 8-bit grid, the SPVAE leaf prior and posterior, stick-breaking weights,
  KL(Kumaraswamy || Beta), a Gaussian-mixture prior).
- :mod:`pyro_spvae.spn`: region graphs, vectorised einsum layers, leaves and leaf scopes of
  sum-product networks.
- :mod:`pyro_spvae.nn`: MLP/conv blocks, stacked networks (many small networks as one), likelihood
  heads.
- :mod:`pyro_spvae.data`: MNIST loading, transforms and the embedded offline dataset.
- :mod:`pyro_spvae.infer`: the importance-weighted ELBO (IWAE/DReG/STL), SPN-aware bounds,
  log-likelihood evaluation with PSIS diagnostics.
- :mod:`pyro_spvae.models` / :mod:`pyro_spvae.guides`: SPVAE, the baseline VAE and linear-Gaussian
  ground-truth models (pPCA, mixture of pPCA, pPCA with a global offset), and their guides.
- :mod:`pyro_spvae.zoo`: the family registry and the ``(model, guide)`` builders.
- :mod:`pyro_spvae.training`, :mod:`pyro_spvae.evaluation`, :mod:`pyro_spvae.cli`,
  :mod:`pyro_spvae.plots`: SVI trainer, checkpoints and distributed training; evaluation of
  trained models; the ``pyro-spvae`` command line; figures.

The maths (with the papers and equations) is in the repository's ``docs/`` pages.
"""

__version__ = "0.1.0"

# Registers the package's KL divergences with torch.distributions.kl on `import pyro_spvae`.
from . import distributions as distributions  # noqa: E402
