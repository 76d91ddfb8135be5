"""Torch/Pyro ``Distribution`` classes and the log-density primitives they share.

- Likelihoods on the 8-bit grid (:mod:`pyro_spvae.nn.likelihoods` builds on these):
  :class:`BinomialGrid`, :class:`CategoricalGrid`, :class:`DiscretizedLogistic`.
- Leaf latents of an SPVAE: :class:`LeafPrior` (standard normal) and :class:`LeafPosterior`
  (mean-field Gaussian), with an analytic KL between them.
- Sum-product networks: :class:`SumProductNetwork` (the parameter-holding module lives in
  :mod:`pyro_spvae.spn`).
- Shared log-densities: :func:`count_log_pmf` (the one Binomial/Bernoulli log-pmf) and the fused
  Gaussian :func:`gaussian_log_lik` / :class:`GaussianQuadForm`.
- Latent mixtures (Nalisnick, Hertel & Smyth 2016; Nalisnick & Smyth 2017): truncated
  stick-breaking weights :class:`StickBreaking` (Beta or Kumaraswamy sticks), the
  KL(Kumaraswamy || Beta) registered with :func:`torch.distributions.kl.register_kl`, and the
  Gaussian-mixture prior :class:`GaussianMixture` (its learnable module:
  :class:`pyro_spvae.nn.GaussianMixturePrior`).
- Hierarchical priors (Klushyn et al. 2019): :class:`HierarchicalPrior`, ``p(z) = int p(z | zeta)
  p(zeta) dzeta`` whose ``log_prob`` is a K-sample importance-weighted lower bound (its networks:
  :class:`pyro_spvae.nn.hierarchical_prior_net.HierarchicalPriorNet`).
"""

# Functional primitives first: pyro_spvae.spn imports counts back (see pyro_spvae/spn/__init__.py).
# Latent mixtures: stick-breaking weights, KL(Kumaraswamy || Beta), Gaussian-mixture prior.
from . import kl as kl  # registers KL(Kumaraswamy || Beta) and KL(StickBreaking || StickBreaking)
from .binomial_grid import BinomialGrid as BinomialGrid
from .categorical_grid import CategoricalGrid as CategoricalGrid
from .counts import count_log_normalizer as count_log_normalizer
from .counts import count_log_pmf as count_log_pmf
from .counts import log_binomial_coefficient as log_binomial_coefficient
from .discretized_logistic import DiscretizedLogistic as DiscretizedLogistic
from .fused_gaussian import GaussianQuadForm as GaussianQuadForm
from .fused_gaussian import gaussian_log_lik as gaussian_log_lik
from .fused_gaussian import gaussian_quad_form as gaussian_quad_form
from .gaussian_mixture import GaussianMixture as GaussianMixture
from .grid import GridConstraint as GridConstraint
from .grid import grid_values as grid_values
from .hierarchical_prior import HierarchicalPrior as HierarchicalPrior
from .kl import kl_kumaraswamy_beta as kl_kumaraswamy_beta
from .kl import kumaraswamy_expected_log as kumaraswamy_expected_log
from .kl import kumaraswamy_expected_log1m as kumaraswamy_expected_log1m
from .leaf_posterior import LeafPosterior as LeafPosterior
from .leaf_prior import LeafPrior as LeafPrior
from .spn import SumProductNetwork as SumProductNetwork
from .stick_breaking import StickBreaking as StickBreaking
from .stick_breaking import kumaraswamy_log_isf as kumaraswamy_log_isf
from .stick_breaking import stick_breaking_log_weights as stick_breaking_log_weights
from .stick_breaking import stick_breaking_sticks as stick_breaking_sticks
from .stick_breaking import stick_breaking_weights as stick_breaking_weights
