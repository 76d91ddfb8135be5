r"""A variational lower bound on the mutual information between latent codes and data: a
regulariser for any ELBO, and an estimator for trained models.

The bound
---------
For a latent component ``c`` of a generative model ``p(x, c, ...)`` (a categorical code, or
dimensions of a Gaussian latent) and any conditional density ``Q(c | x)``,

.. math:: I(c; x) = H(c) - H(c \mid x) = H(c) + \mathbb{E}_{p(c, x)} \log p(c \mid x)
          \;\ge\; H(c) + \mathbb{E}_{c \sim p(c),\, x \sim p(x \mid c, \dots)} \log Q(c \mid x),

because the gap is ``E_{p(x)} KL(p(c | x) || Q(c | x)) >= 0``; it is tight at ``Q(c | x) = p(c | x)``
(Barber & Agakov 2003, "The IM algorithm"; Chen et al. 2016, "InfoGAN", §5, where it is ``L_I``;
Serdega & Kim 2020, "Variational Mutual Information Maximization Framework for VAE Latent Codes
with Continuous and Discrete Priors", arXiv:2006.02227, who add it to the VAE objective and use it
to measure the MI of a trained VAE). ``H(c)`` is analytic for the priors used here: ``log n`` for a
uniform ``n``-way code (in general ``-sum_k p_k log p_k``, so the bound of a categorical code never
exceeds ``H(c)``: ``log Q <= 0``), and ``(1/2) log(2 pi e sigma^2)`` per dimension of a
``N(0, sigma^2)`` latent (``(1/2) log det(2 pi e Sigma_SS)`` for dims ``S`` of a multivariate normal).

The expectation runs over the *generative* model: the model is run forward with every latent site
drawn from its prior and the observation resampled (:func:`pyro.poutine.uncondition`), giving pairs
``(c, x~)``; ``x~`` is the mean of ``p(x | ...)`` (``x="mean"``, differentiable for every
likelihood; for likelihoods fixed by their mean (Bernoulli, Binomial, Gaussian of fixed scale)
``c -> mean -> x`` is a Markov chain, so ``I(c; mean) >= I(c; x)`` by data processing; when the
decoder also predicts a scale this ordering does not hold, and use ``x="sample"``)
or a draw (``x="sample"``, the MI with the data themselves; reparameterised when the likelihood has
``rsample``).

Codes are named ``"c"`` or ``"z[0]"``, and ``Q`` is a network or the guide: see
:mod:`pyro_spvae.infer.mi_codes`. The regulariser :class:`MIRegularizedELBO` is here; the
estimator :func:`mutual_information_bound` for trained models is in :mod:`pyro_spvae.infer.mi_estimate`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from pyro.infer.elbo import ELBO
from pyro.util import warn_if_nan
from torch import Tensor

from pyro_spvae.infer.mi_codes import (
    X_MODES,
    CodeSite,
    _entropy,
    _generate,
    _log_q,
    _parse,
    code_posterior_for,
    resolve_codes,
)
from pyro_spvae.infer.mi_estimate import MIBound, mutual_information_bound  # re-exported
from pyro_spvae.nn.code_posterior import CodePosteriorNet
from pyro_spvae.validation import check_choice, check_real

__all__ = [
    "CodeSite",
    "MIBound",
    "MIRegularizedELBO",
    "X_MODES",
    "code_posterior_for",
    "mutual_information_bound",
    "resolve_codes",
]


def _delegate(name: str) -> property:
    """An attribute of :class:`pyro.infer.ELBO` read from and written to the wrapped ELBO."""
    return property(lambda self: getattr(self.elbo, name), lambda self, v: setattr(self.elbo, name, v),
                    doc=f"The wrapped ELBO's ``{name}`` (one source of truth).")


class MIRegularizedELBO(ELBO):
    r"""Any ELBO plus the mutual-information bound of named codes (Serdega & Kim 2020):

    .. math:: \text{loss} = \text{loss}_{\text{ELBO}} - w \sum_{\text{codes}} \sum_{i=1}^{B}
              \big[H(c) + \log Q(c_i \mid \tilde x_i)\big]

    with one pair ``(c_i, x~_i)`` drawn from the generative model per data point of the batch (the
    model run forward on the same arguments, every site from its prior, see the module docstring),
    so that ``w`` is a weight per data point, as the ELBO's sum over the data plate. The gradient
    of the bound reaches the decoder through ``x~`` (keep ``x="mean"`` for likelihoods without
    ``rsample``, e.g. Bernoulli) and trains ``Q``; prior parameters are not trained by it.

    :param elbo: the wrapped :class:`pyro.infer.ELBO` (Pyro's ``Trace_ELBO``, ``TraceEnum_ELBO``,
        ..., or :class:`~pyro_spvae.infer.TraceIWAE_ELBO`); ``num_particles``,
        ``max_plate_nesting``, ``vectorize_particles`` and ``retain_graph`` are its own.
    :param sites: codes, e.g. ``["c", "z[0]", "z[1]"]`` (see the module docstring).
    :param q: ``"guide"`` (the guide's distributions of the named sites) or a
        :class:`~pyro_spvae.nn.code_posterior.CodePosteriorNet` (see :func:`code_posterior_for`),
        whose parameters enter Pyro's parameter store when it runs, so :class:`~pyro.infer.SVI`
        trains them with the model and guide. With ``"guide"`` a categorical code that the decoder
        ignores can stall: the ELBO's KL keeps ``q(c|x)`` flat and a flat ``Q`` gives the decoder no
        gradient; an own :class:`~pyro_spvae.nn.code_posterior.CodePosteriorNet` avoids this.
    :param weight: ``w >= 0``, one weight for all ``sites``. A continuous dim read through the decoder
        mean (``x="mean"``) has an unbounded bound that can swamp a code's (at most ``ln K``
        nats) under the same weight: regularise codes and dims in separate wrappers, or the code alone.
    :param x: ``"mean"`` or ``"sample"`` (:data:`X_MODES`), what ``Q`` reads.
    :param x_site: the observation site (default: the model's only observed site).
    """

    num_particles = _delegate("num_particles")
    max_plate_nesting = _delegate("max_plate_nesting")
    vectorize_particles = _delegate("vectorize_particles")
    retain_graph = _delegate("retain_graph")
    strict_enumeration_warning = _delegate("strict_enumeration_warning")
    ignore_jit_warnings = _delegate("ignore_jit_warnings")
    jit_options = _delegate("jit_options")

    def __init__(self, elbo: ELBO, sites: Sequence[str], q: str | CodePosteriorNet = "guide",
                 weight: float = 1.0, x: str = "mean", x_site: str | None = None) -> None:
        # ELBO.__init__ is not called: the settings it would store are the wrapped ELBO's
        if not isinstance(elbo, ELBO):
            raise TypeError(f"elbo must be a pyro.infer.ELBO, got {type(elbo).__name__}")
        self.elbo = elbo
        if isinstance(sites, str) or not isinstance(sites, Sequence) or not sites:
            raise TypeError(f"sites must be a non-empty list of codes such as ['c', 'z[0]'], got {sites!r}")
        for spec in sites:
            _parse(spec)
        self.sites = tuple(sites)
        if not (q == "guide" or isinstance(q, CodePosteriorNet)):
            raise TypeError(f"q must be 'guide' or a CodePosteriorNet, got {q!r}")
        self.q = q
        self.weight = check_real("weight", weight, 0.0)
        self.x_mode = check_choice("x", x, X_MODES)
        if x_site is not None and not isinstance(x_site, str):
            raise TypeError(f"x_site must be a site name (str) or None, got {x_site!r}")
        self.x_site = x_site
        self.last_bounds: dict[str, float] = {}

    def _get_trace(self, model, guide, args: tuple, kwargs: dict):
        """The wrapped ELBO's trace pair (:meth:`pyro.infer.ELBO._get_trace`)."""
        return self.elbo._get_trace(model, guide, args, kwargs)

    def _bounds(self, model, guide, args: tuple, kwargs: dict) -> dict[str, Tensor]:
        """``{label: H(c) + log Q(c_i | x~_i)}``, each ``(B,)``."""
        trace, x = _generate(model, args, kwargs, self.x_site, self.x_mode)
        codes = resolve_codes(trace, self.sites)
        log_q = _log_q(guide if self.q == "guide" else self.q, codes, trace, x)
        return {c.label: _entropy(trace, c) + log_q[c.label] for c in codes}

    def _mi_sum(self, model, guide, args: tuple, kwargs: dict) -> Tensor:
        return sum(b.sum() for b in self._bounds(model, guide, args, kwargs).values())

    def mutual_information(self, model, guide, *args, **kwargs) -> dict[str, float]:
        """The current bound of each code in nats (one batch of generated pairs, no gradients;
        for a tight estimate use :func:`mutual_information_bound`)."""
        with torch.no_grad():
            return {k: float(v.mean()) for k, v in self._bounds(model, guide, args, kwargs).items()}

    def loss(self, model, guide, *args, **kwargs) -> float:
        """:returns: the regularised loss (float, no gradients)."""
        loss = self.elbo.loss(model, guide, *args, **kwargs)
        if self.weight:
            with torch.no_grad():
                loss = loss - self.weight * float(self._mi_sum(model, guide, args, kwargs))
        warn_if_nan(loss, "loss")
        return loss

    def differentiable_loss(self, model, guide, *args, **kwargs) -> Tensor:
        """The regularised loss, differentiable.

        :returns: the regularised loss as a differentiable tensor (needs the wrapped ELBO's
            ``differentiable_loss``).
        """
        loss = self.elbo.differentiable_loss(model, guide, *args, **kwargs)
        if self.weight:
            loss = loss - self.weight * self._mi_sum(model, guide, args, kwargs)
        warn_if_nan(loss, "loss")
        return loss

    def loss_and_grads(self, model, guide, *args, **kwargs) -> float:
        """The wrapped ELBO's ``loss_and_grads``, then the gradient of ``-w * bound`` accumulated into
        the same ``.grad`` (``retain_graph=self.retain_graph``); returns the regularised loss. The
        batch's bound of each code (nats, mean over the generated pairs) is kept in
        :attr:`last_bounds` (for logging)."""
        loss = self.elbo.loss_and_grads(model, guide, *args, **kwargs)
        if self.weight:
            bounds = self._bounds(model, guide, args, kwargs)
            self.last_bounds = {k: float(v.detach().mean()) for k, v in bounds.items()}
            mi = sum(b.sum() for b in bounds.values())
            if mi.requires_grad:
                (-self.weight * mi).backward(retain_graph=self.retain_graph)
            loss = loss - self.weight * float(mi.detach())
        warn_if_nan(loss, "loss")
        return loss
