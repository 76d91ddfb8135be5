"""pyro_spvae.infer: ELBO estimators, log-likelihood evaluation and ArviZ export.

- :class:`TraceIWAE_ELBO`: per-data-point importance-weighted ELBO (IWAE / DReG / STL).
- :func:`log_marginal_likelihood`: streaming per-example IW estimate of ``log p(x)`` with PSIS k-hat.
- :func:`to_inference_data`: guide samples and log-weights as an ``arviz.InferenceData``.
"""
from .arviz import to_inference_data  # noqa: F401
from .importance import ImportanceTerms, compute_importance_terms  # noqa: F401
from .iwae import IWAEBound, TraceIWAE_ELBO  # noqa: F401
from .log_likelihood import LogLikelihoodResult, log_marginal_likelihood, psis_khat  # noqa: F401
from .spn_bounds import SPNLeafELBO, SPNLeafIWELBO, SPNRootIWELBO, spn_leaf_log_weights, spn_log_likelihood  # noqa: F401
