r"""The per-component ELBO estimator for mixture posteriors (Nalisnick, Hertel & Smyth 2016, §3).

For a guide whose site ``z`` (default ``"z"``) is a mixture of ``K`` diagonal Gaussians,
``q(z | x) = sum_k pi_k(x) q_k(z | x)``, the ELBO is an expectation over the mixture, which splits
into the ``K`` components:

.. math::

    \mathcal{L}(x) = \mathbb{E}_{q(z|x)}\big[\log p(x, z) - \log q(z | x)\big]
    = \sum_{k=1}^{K} \pi_k(x)\, \mathbb{E}_{q_k(z|x)}\big[\log p(x, z) - \log q(z | x)\big].

The estimator draws ONE reparameterised sample per component, ``z_k = mu_k(x) + s_k(x) eps_k``,
and weights the ``K`` terms by ``pi_k(x)``: unbiased for ``L`` and for its gradient, which flows
exactly through the weights ``pi_k(x)`` and pathwise through ``z_k`` (no score function and no
sampled component index). ``log q(z_k | x)`` is the full mixture density, so the mixture's entropy
is estimated by Monte Carlo with the same samples, as in the paper. It costs ``K`` passes of the
decoder per particle (one vectorised pass over a leading dim of size ``K``), like enumerating the
component of guide (b) with ``TraceEnum_ELBO``; its bound is that of the marginal posterior
``q(z | x)``, which is at least the joint bound of (b) over ``(c, z)`` with the same ``q``: the
joint bound is ``L - E_{q(z|x)}[KL(q(c | z, x) || p(c | z))]``.

Other guide sites (e.g. the Kumaraswamy sticks of a Dirichlet-process mixture, drawn before ``z``)
are drawn once per particle; their terms do not depend on ``k`` and count once
(``sum_k pi_k = 1``); sites after ``z`` in the guide, and every model site that depends on ``z``,
get the component dim and are weighted per component. The loss is a sum over the data plate,
like :class:`~pyro.infer.Trace_ELBO`'s.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch
from pyro.distributions import MixtureOfDiagNormals
from pyro.infer.elbo import ELBO
from pyro.infer.util import is_validation_enabled
from pyro.poutine.messenger import Messenger
from pyro.util import check_model_guide_match, check_site_shape, warn_if_nan
from torch import Tensor

from pyro_spvae.distributions.gaussian_mixture import GaussianMixture
from pyro_spvae.infer.particles import TracePair, guess_max_plate_nesting, is_latent, run_pair
from pyro_spvae.validation import check_bool, check_positive_int

__all__ = ["MixtureELBO", "MixturePosteriorGuide", "mixture_parameters"]

#: ``infer`` key under which the guide's mixture site records its ``log pi_k`` per component.
_LOG_WEIGHTS = "mixture_log_weights"


@runtime_checkable
class MixturePosteriorGuide(Protocol):
    """A guide that samples a mixture posterior :class:`MixtureELBO` can split into components:
    ``mixture_site`` names the site (``None`` when the guide draws none)."""

    mixture_site: str | None


def mixture_parameters(fn: object) -> tuple[Tensor, Tensor, Tensor]:
    """``(log pi (*batch, K), locs (*batch, K, D), scales (*batch, K, D))`` of a
    :class:`~pyro_spvae.distributions.GaussianMixture` or a Pyro
    :class:`~pyro.distributions.MixtureOfDiagNormals`, broadcast to its ``batch_shape``.

    :raises TypeError: for any other distribution.
    """
    if isinstance(fn, GaussianMixture):
        logits, locs, scales = fn.logits, fn.locs, fn.scales
    elif isinstance(fn, MixtureOfDiagNormals):
        logits, locs, scales = fn.component_logits, fn.locs, fn.coord_scale
    else:
        raise TypeError(f"MixtureELBO needs a GaussianMixture or MixtureOfDiagNormals at the mixture site, "
                        f"got {type(fn).__name__}")
    batch, (K, D) = fn.batch_shape, locs.shape[-2:]
    return (torch.broadcast_to(logits.log_softmax(-1), batch + (K,)),
            torch.broadcast_to(locs, batch + (K, D)), torch.broadcast_to(scales, batch + (K, D)))


class _PerComponentDraws(Messenger):
    """At the site ``site``, draw one reparameterised sample from each mixture component, with the
    components on batch dim ``dim`` (left of every plate), and record ``log pi_k`` in the site's
    ``infer[mixture_log_weights]``, shaped like the value without its event dim."""

    def __init__(self, site: str, dim: int) -> None:
        super().__init__()
        self.site, self.dim = site, dim

    def _pyro_sample(self, msg) -> None:
        if msg["name"] != self.site or msg["is_observed"]:
            return
        log_w, locs, scales = mixture_parameters(msg["fn"])
        batch = tuple(log_w.shape[:-1])
        pad = -self.dim - 1 - len(batch)
        if pad < 0:
            raise ValueError(f"site '{self.site}' has batch shape {batch}: more dims than max_plate_nesting")
        K, D = locs.shape[-2:]
        z = (locs + scales * torch.randn_like(locs)).movedim(-2, 0)  # (K, *batch, D)
        msg["value"] = z.reshape(K, *(1,) * pad, *batch, D)
        msg["infer"] = {**msg["infer"], _LOG_WEIGHTS: log_w.movedim(-1, 0).reshape(K, *(1,) * pad, *batch)}


def _weighted_sum(name: str, log_prob: Tensor, weights: Tensor) -> Tensor:
    """``sum`` of a site's log-density: weighted by ``pi_k`` when it carries the component dim."""
    n = weights.dim()
    if log_prob.dim() > n:
        raise ValueError(f"site '{name}' has log_prob shape {tuple(log_prob.shape)} with dims left of the "
                         "mixture components: MixtureELBO does not support enumerated sites")
    lp = log_prob.reshape((1,) * (n - log_prob.dim()) + log_prob.shape)
    if lp.shape[0] == 1:
        return lp.sum()
    uncovered = [d for d in range(1, n) if weights.shape[d] > 1 and lp.shape[d] != weights.shape[d]]
    if uncovered:
        raise ValueError(f"site '{name}' depends on the mixture sample but its log_prob {tuple(lp.shape)} "
                         f"lacks the batch dims of the mixture weights {tuple(weights.shape)}")
    return (weights * lp).sum()


class MixtureELBO(ELBO):
    r"""Per-component ELBO of a mixture posterior (see the module docstring), a
    :class:`pyro.infer.ELBO` with ``loss``, ``loss_and_grads`` and ``differentiable_loss``.

    Works with guides whose site ``site`` is a :class:`~pyro_spvae.distributions.GaussianMixture`
    or :class:`~pyro.distributions.MixtureOfDiagNormals` (:class:`~pyro_spvae.guides.MixtureGuide`,
    a pathwise :class:`~pyro_spvae.guides.StickBreakingGuide`) and every other guide site
    reparameterisable; the model must have no latent site the guide lacks (use the marginal
    :class:`~pyro_spvae.models.DLGMM`, ``component_site=False``).

    :param num_particles: independent draws of the ``K`` per-component samples.
    :param max_plate_nesting: plates of the model; ``None`` guesses it by running the pair once. The
        components occupy batch dim ``-(max_plate_nesting + 1)``, left of every plate (and of
        Pyro's particle plate, which ``max_plate_nesting`` counts when ``vectorize_particles``).
    :param vectorize_particles: draw the particles in one vectorised pass.
    :param retain_graph: Pyro's ``retain_graph`` for ``loss_and_grads``.
    :param site: name of the mixture site of the guide.
    """

    def __init__(self, num_particles: int = 1, max_plate_nesting: int | None = None,
                 vectorize_particles: bool = False, retain_graph: bool | None = None,
                 site: str = "z") -> None:
        if max_plate_nesting is not None:
            check_positive_int("max_plate_nesting", max_plate_nesting)
        if not isinstance(site, str):
            raise TypeError(f"site must be a site name (str), got {type(site).__name__}")
        super().__init__(
            num_particles=check_positive_int("num_particles", num_particles),
            max_plate_nesting=float("inf") if max_plate_nesting is None else max_plate_nesting,
            vectorize_particles=check_bool("vectorize_particles", vectorize_particles),
            retain_graph=None if retain_graph is None else check_bool("retain_graph", retain_graph),
        )
        self.site = site

    def _guess_max_plate_nesting(self, model, guide, args: tuple, kwargs: dict) -> None:
        """Guess ``max_plate_nesting`` and write it back as :class:`pyro.infer.ELBO` does (plus the
        particle plate when vectorising), without shifting the torch RNG stream."""
        vectorized = int(self.vectorize_particles and self.num_particles > 1)
        self.max_plate_nesting = guess_max_plate_nesting(model, guide, args, kwargs) + vectorized

    def _get_traces(self, model, guide, args: tuple, kwargs: dict):
        """:meth:`pyro.infer.ELBO._get_traces`, with ``max_plate_nesting`` guessed for sequential
        particles too (the component dim is placed left of it)."""
        if self.max_plate_nesting == float("inf"):
            self._guess_max_plate_nesting(model, guide, args, kwargs)
        yield from super()._get_traces(model, guide, args, kwargs)

    def _get_trace(self, model, guide, args: tuple, kwargs: dict) -> TracePair:
        """One ``(model_trace, guide_trace)`` pair with the ``K`` per-component draws of the mixture
        site on batch dim ``-(max_plate_nesting + 1)`` and log-densities computed."""
        mpn = int(self.max_plate_nesting)
        draws = _PerComponentDraws(self.site, -(mpn + 1))
        model_trace, guide_trace = run_pair(model, draws(guide), args, kwargs)
        if self.site not in guide_trace.nodes or _LOG_WEIGHTS not in guide_trace.nodes[self.site]["infer"]:
            raise ValueError(f"the guide has no latent site '{self.site}' to split into mixture components")
        guide_latents = {n for n, s in guide_trace.nodes.items() if is_latent(s)}
        missing = sorted(n for n, s in model_trace.nodes.items() if is_latent(s) and n not in guide_latents)
        if missing:
            raise ValueError(f"model latent sites {missing} are not in the guide: MixtureELBO needs the "
                             "marginal model (e.g. DLGMM(component_site=False))")
        nonreparam = sorted(n for n, s in guide_trace.nodes.items()
                            if is_latent(s) and n != self.site and not s["fn"].has_rsample)
        if nonreparam:
            raise ValueError(f"guide sites {nonreparam} are not reparameterisable: MixtureELBO has no "
                             "score-function terms")
        model_trace.compute_log_prob()
        guide_trace.compute_log_prob()
        if is_validation_enabled():  # as pyro.infer.enum.get_importance_trace
            check_model_guide_match(model_trace, guide_trace, mpn)
            for trace in (model_trace, guide_trace):
                for site in trace.nodes.values():
                    if site["type"] == "sample":
                        check_site_shape(site, mpn)
        return model_trace, guide_trace

    def _particle_elbo(self, model_trace, guide_trace) -> Tensor:
        weights = guide_trace.nodes[self.site]["infer"][_LOG_WEIGHTS].exp()
        elbo = weights.new_zeros(())
        for trace, sign in ((model_trace, 1.0), (guide_trace, -1.0)):
            for name, site in trace.nodes.items():
                if site["type"] == "sample":
                    elbo = elbo + sign * _weighted_sum(name, site["log_prob"], weights)
        return elbo

    def differentiable_loss(self, model, guide, *args, **kwargs) -> Tensor:
        """The negative bound as a differentiable tensor (mean over particles)."""
        loss = 0.0
        for model_trace, guide_trace in self._get_traces(model, guide, args, kwargs):
            loss = loss - self._particle_elbo(model_trace, guide_trace) / self.num_particles
        warn_if_nan(loss, "loss")
        return loss

    def loss(self, model, guide, *args, **kwargs) -> float:
        """The negative bound, as a float."""
        with torch.no_grad():
            return float(self.differentiable_loss(model, guide, *args, **kwargs))

    def loss_and_grads(self, model, guide, *args, **kwargs) -> float:
        """The negative bound; back-propagates its gradient (``retain_graph=self.retain_graph``)
        into the parameters of the traces, one particle at a time as :class:`~pyro.infer.Trace_ELBO`."""
        loss = 0.0
        for model_trace, guide_trace in self._get_traces(model, guide, args, kwargs):
            particle = -self._particle_elbo(model_trace, guide_trace) / self.num_particles
            loss += float(particle.detach())
            trainable = any(site["type"] == "param" for trace in (model_trace, guide_trace)
                            for site in trace.nodes.values())
            if trainable and particle.requires_grad:
                particle.backward(retain_graph=self.retain_graph)
        warn_if_nan(loss, "loss")
        return loss
