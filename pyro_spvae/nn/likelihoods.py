"""Likelihood heads: decoder output -> observation distribution ``p(x | z)``.

Contract (``CONTRIBUTING.md``): ``make_likelihood(name, event_shape) -> Likelihood`` with
``lik.num_params`` decoder output channels per input channel; ``lik(params)`` maps decoder output
of shape ``(..., num_params * C, *rest)`` (``event_shape = (C, *rest)``, e.g. ``(C, H, W)``) to a
:class:`torch.distributions.Distribution` with ``batch_shape == ...`` and
``event_shape == event_shape`` (its ``sample()`` and ``mean`` are how models draw observations);
``lik.validate(x)`` raises :class:`TypeError`/:class:`ValueError` naming the problem, and
``lik.check_support(x)`` checks the support only (any shape). :func:`check_observations` is the
data check shared by models and guides (NaN = missing where allowed).

Channel layout of ``params``: parameter-major, i.e. channels ``[j * C, (j + 1) * C)`` hold
parameter ``j`` (for ``"categorical"``, ``j`` is the level ``0..255``).

=================  ==========  ==============================================================
name               num_params  distribution per element
=================  ==========  ==============================================================
``bernoulli``      1           ``Bernoulli(logits)`` on ``{0, 1}``
``gaussian``       1 or 2      ``Normal(loc, scale)``; ``scale="global"``: learnt per-element
                               log-precision parameter (shared by all inputs);
                               ``scale="predicted"``: ``softplus`` of a second decoder output;
                               ``scale="precision"``: precision ``1 + g^2`` of a second decoder
                               output ``g`` (the SPVAE reference, Tan & Peharz 2019, usually with
                               ``loc="sigmoid"``); ``scale="log_scale"``: ``exp`` of a second
                               input (e.g. a model's own log-scale parameter)
``binomial``       1           :class:`~pyro_spvae.distributions.BinomialGrid` ``(255, logits)``
                               on ``{k / 255}`` (SPVAE paper, discrete MNIST); ``eps > 0``: the
                               reference's squeezed ``p`` (:class:`SqueezedBinomialGrid`)
``logistic``       2           :class:`~pyro_spvae.distributions.DiscretizedLogistic`
                               ``(loc, exp(log_scale))`` (Salimans et al. 2017, eq. 2)
``categorical``    256         :class:`~pyro_spvae.distributions.CategoricalGrid` (256-way
                               softmax, van den Oord et al. 2016)
=================  ==========  ==============================================================

The heads live in :mod:`~pyro_spvae.nn.likelihood_base` (:class:`Likelihood`,
:func:`check_observations`), :mod:`~pyro_spvae.nn.bernoulli_likelihood`,
:mod:`~pyro_spvae.nn.gaussian_likelihood` and :mod:`~pyro_spvae.nn.discrete_likelihoods` (the grid
likelihoods); this module holds the registry :data:`LIKELIHOODS` and :func:`make_likelihood`, and
re-exports them all.
"""

from __future__ import annotations

from collections.abc import Sequence

from pyro_spvae.validation import check_event_shape

from .bernoulli_likelihood import BernoulliLikelihood, CheckedBernoulli, all_binary
from .discrete_likelihoods import BinomialLikelihood, CategoricalLikelihood, LogisticLikelihood
from .gaussian_likelihood import GaussianLikelihood
from .likelihood_base import Likelihood, check_observations
from .reference_likelihoods import SqueezedBinomialGrid, precision_gaussian_log_lik, squeezed_count_log_pmf

__all__ = [
    "Likelihood",
    "BernoulliLikelihood",
    "CheckedBernoulli",
    "GaussianLikelihood",
    "BinomialLikelihood",
    "LogisticLikelihood",
    "CategoricalLikelihood",
    "LIKELIHOODS",
    "SqueezedBinomialGrid",
    "all_binary",
    "check_observations",
    "make_likelihood",
    "precision_gaussian_log_lik",
    "squeezed_count_log_pmf",
]


#: Likelihood name -> class.
LIKELIHOODS: dict[str, type[Likelihood]] = {
    "bernoulli": BernoulliLikelihood,
    "gaussian": GaussianLikelihood,
    "binomial": BinomialLikelihood,
    "logistic": LogisticLikelihood,
    "categorical": CategoricalLikelihood,
}


def make_likelihood(name: str | Likelihood, event_shape: Sequence[int], **kwargs) -> Likelihood:
    """Build the likelihood head ``name`` (see :data:`LIKELIHOODS`) for observations of shape
    ``event_shape``; ``kwargs`` go to its constructor (e.g. ``scale="predicted"`` for
    ``"gaussian"``). A :class:`Likelihood` instance is passed through after checking its
    ``event_shape``.

    :raises ValueError: for an unknown name or invalid options.
    """
    event_shape = check_event_shape("event_shape", event_shape)
    if isinstance(name, Likelihood):
        if kwargs:
            raise ValueError(f"options {sorted(kwargs)} cannot be applied to an already built likelihood")
        if tuple(name.event_shape) != tuple(event_shape):
            raise ValueError(f"likelihood has event_shape {name.event_shape}, expected {tuple(event_shape)}")
        return name
    if not isinstance(name, str):
        raise TypeError(f"likelihood must be a name, got {type(name).__name__}")
    try:
        cls = LIKELIHOODS[name]
    except KeyError:
        raise ValueError(f"unknown likelihood {name!r}; choose one of {sorted(LIKELIHOODS)}") from None
    return cls(event_shape, **kwargs)
