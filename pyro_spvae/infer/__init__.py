"""pyro_spvae.infer: ELBO estimators, log-likelihood evaluation and ArviZ export.

- :class:`TraceIWAE_ELBO`: per-data-point importance-weighted ELBO (IWAE / DReG / STL).
- :class:`SPNLeafELBO`, :class:`SPNLeafIWELBO`, :class:`SPNRootIWELBO`: SPN-aware bounds for
  sum-product networks of VAEs whose model and guide follow :class:`SPNLeafModel` and
  :class:`SPNLeafGuide`; :func:`spn_log_likelihood` streams bound (b) for evaluation.
- :class:`MixtureELBO`: the per-component ELBO of mixture posteriors (Nalisnick, Hertel & Smyth
  2016), one reparameterised sample per component weighted by its mixture weight.
- :class:`MIRegularizedELBO`: any ELBO plus a variational lower bound on the mutual information
  of named latent codes (Serdega & Kim 2020); :func:`mutual_information_bound` estimates that
  bound for a trained model, with :class:`CodePosteriorNet` as ``Q(c | x)``.
- :class:`CapacityELBO`: the controlled-capacity objective of JointVAE (Dupont 2018), with the
  schedules :class:`LinearSchedule` (capacities) and :class:`ExponentialSchedule` (temperatures).
- :class:`GECO`: any ELBO under a data-fit constraint with a Lagrange multiplier updated by the
  GECO rule (Rezende & Viola 2018) or the VHP rule (Klushyn et al. 2019).
- :func:`log_marginal_likelihood`: streaming per-example IW estimate of ``log p(x)`` with PSIS k-hat.
- :func:`to_inference_data`: guide samples and log-weights as an ``arviz.InferenceData``.

The estimators follow Pyro's :class:`pyro.infer.ELBO` contract; the maths is in
``docs/estimators.md`` and ``docs/spvae.md``.
"""

from ..nn.code_posterior import CodePosteriorNet
from .arviz import to_inference_data
from .capacity import CapacityELBO, CapacityTerms, ExponentialSchedule, LinearSchedule
from .geco import GECO
from .importance import ImportanceTerms, compute_importance_terms
from .iwae import IWAEBound, TraceIWAE_ELBO
from .log_likelihood import LogLikelihoodResult, log_marginal_likelihood, psis_khat
from .mi_codes import CodeSite, code_posterior_for, resolve_codes
from .mi_estimate import MIBound, mutual_information_bound
from .mixture_elbo import MixtureELBO, MixturePosteriorGuide, mixture_parameters
from .mutual_information import MIRegularizedELBO
from .spn_bounds import SPNLeafELBO, SPNLeafIWELBO, SPNRootIWELBO
from .spn_leaves import SPNLeafGuide, SPNLeafModel, spn_leaf_log_weights
from .spn_likelihood import spn_log_likelihood

__all__ = [
    "CapacityELBO",
    "GECO",
    "CapacityTerms",
    "CodePosteriorNet",
    "CodeSite",
    "ExponentialSchedule",
    "LinearSchedule",
    "MIBound",
    "MIRegularizedELBO",
    "code_posterior_for",
    "mutual_information_bound",
    "resolve_codes",
    "IWAEBound",
    "ImportanceTerms",
    "LogLikelihoodResult",
    "MixtureELBO",
    "MixturePosteriorGuide",
    "SPNLeafELBO",
    "SPNLeafGuide",
    "SPNLeafIWELBO",
    "SPNLeafModel",
    "SPNRootIWELBO",
    "TraceIWAE_ELBO",
    "compute_importance_terms",
    "log_marginal_likelihood",
    "mixture_parameters",
    "psis_khat",
    "spn_leaf_log_weights",
    "spn_log_likelihood",
    "to_inference_data",
]
