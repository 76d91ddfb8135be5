"""The likelihood of an SPVAE leaf VAE on flat patches: its options, its decoder outputs and its
log-likelihood through the fused primitives (the hot path of :class:`~pyro_spvae.models.SPVAE`).

Leaf likelihoods (Tan & Peharz 2019; see ``docs/spvae.md``) and their options (``likelihood_kwargs``):

- ``"gaussian"``: ``scale="log_scale"`` (default: a learnt log-scale per leaf and pixel, held by
  the model; one decoder output, the mean) or ``"precision"`` (the reference code's precision
  ``1 + g^2`` predicted per example and pixel: two decoder outputs), and ``loc="identity"`` or
  ``"sigmoid"`` (the reference's mean);
- ``"binomial"``: Binomial(255) on the grid ``k/255``; ``eps > 0`` is the reference's squeezed
  success probability (:func:`~pyro_spvae.nn.reference_likelihoods.squeezed_count_log_pmf`);
- ``"bernoulli"``: no options.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from pyro_spvae.validation import check_choice, check_real

from ..distributions.counts import count_log_pmf
from ..distributions.fused_gaussian import gaussian_log_lik
from .reference_likelihoods import precision_gaussian_log_lik, squeezed_count_log_pmf

__all__ = ["LEAF_LIKELIHOODS", "LEAF_LIKELIHOOD_OPTIONS", "LeafLikelihood"]

#: Leaf likelihood names.
LEAF_LIKELIHOODS: tuple[str, ...] = ("gaussian", "binomial", "bernoulli")
#: The options of each leaf likelihood and their defaults.
LEAF_LIKELIHOOD_OPTIONS: dict[str, dict[str, Any]] = {
    "gaussian": {"scale": "log_scale", "loc": "identity"},
    "binomial": {"eps": 0.0},
    "bernoulli": {},
}


class LeafLikelihood:
    """A leaf likelihood with its options checked and defaults filled in (see the module docstring).

    :param name: one of :data:`LEAF_LIKELIHOODS`.
    :param options: its options (``None``: the defaults).
    :raises ValueError: for an unknown name, unknown options or invalid values.

    :ivar num_params: decoder outputs per pixel value (2 with a predicted precision, else 1).
    :ivar total_count: trials per pixel (255 for ``"binomial"``, 1 for ``"bernoulli"``).
    :ivar learnt_scale: whether the model holds a learnt log-scale per leaf and pixel.
    """

    def __init__(self, name: str, options: dict[str, Any] | None = None) -> None:
        self.name = check_choice("leaf likelihood", name, LEAF_LIKELIHOODS)
        defaults = LEAF_LIKELIHOOD_OPTIONS[name]
        options = dict(options or {})
        unknown = sorted(set(options) - set(defaults))
        if unknown:
            raise ValueError(f"{name!r} leaves take likelihood options {sorted(defaults)}, got {unknown}")
        self.options = {**defaults, **options}
        if name == "gaussian":
            check_choice("gaussian leaf scale", self.options["scale"], ("log_scale", "precision"))
            check_choice("gaussian leaf loc", self.options["loc"], ("identity", "sigmoid"))
        elif name == "binomial":
            self.options["eps"] = check_real("eps", self.options["eps"], 0.0, 0.5, high_open=True)
        self.num_params = 2 if self.options.get("scale") == "precision" else 1
        self.learnt_scale = name == "gaussian" and self.num_params == 1
        self.total_count = {"binomial": 255, "bernoulli": 1}.get(name, 0)

    def head_kwargs(self) -> dict[str, Any]:
        """Options of the whole-image :func:`~pyro_spvae.nn.make_likelihood` head matching the
        leaves (its parameters are the decoder outputs, plus the learnt log-scale when there is one)."""
        if self.learnt_scale:
            return {"scale": "log_scale", "min_scale": 0.0, "loc": self.options["loc"]}
        if self.name == "binomial":
            return {"total_count": self.total_count, **self.options}
        return dict(self.options)

    def log_lik(self, patches: torch.Tensor, params: Sequence[torch.Tensor], observed: torch.Tensor | None,
                log_scale: torch.Tensor | None = None) -> torch.Tensor:
        """Log-likelihood summed over the last dim of flat patches.

        :param patches: pixel values ``(..., D)`` (missing ones 0 with ``observed`` false).
        :param params: the :attr:`num_params` decoder outputs, each broadcasting with ``patches``.
        :param observed: optional mask (exact marginalisation of the masked-out pixels).
        :param log_scale: the learnt log-scales (with :attr:`learnt_scale`), broadcasting.
        """
        kw = self.options
        if self.name == "gaussian":
            loc = torch.sigmoid(params[0]) if kw["loc"] == "sigmoid" else params[0]
            if self.num_params == 2:
                return precision_gaussian_log_lik(patches, loc, params[1], observed)
            return gaussian_log_lik(patches, loc, log_scale, observed)
        n = self.total_count
        k = patches if n == 1 else torch.round(patches * n)
        if kw.get("eps", 0.0) > 0:
            return squeezed_count_log_pmf(k, params[0], n, kw["eps"], observed=observed, dim=-1)
        return count_log_pmf(k, params[0], n, observed=observed, dim=-1)
