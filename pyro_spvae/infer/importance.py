"""Per-data-point importance log-weights of a (model, guide) pair, with vectorised particles.

This is the shared core of :class:`~pyro_spvae.infer.TraceIWAE_ELBO`,
:func:`~pyro_spvae.infer.log_marginal_likelihood` and :func:`~pyro_spvae.infer.to_inference_data`
(the maths is written out in ``docs/estimators.md``).

For ``K`` particles and a batch of ``N`` data points the guide runs once inside Pyro's particle
plate ``pyro.plate("num_particles_vectorized", K, dim=-(max_plate_nesting + 1))`` (the plate of
:meth:`pyro.infer.ELBO._vectorized_num_particles`, absent for ``K = 1``), or ``K`` times without it
(:mod:`pyro_spvae.infer.particles`); the model is replayed against each guide trace, and every
site's log-density is split into

- a *local* part ``(K, N)``: sites inside ``pyro.plate(data_plate)``, summed over every other dim,
  so that ``local_p - local_q = log p(x_i, z_ik | theta) - log q(z_ik | x_i, theta) = log w_ik``;
- a *global* part ``(K,)``: sites outside the data plate (global latents ``theta`` and any global
  observations), ``log p(theta_k) - log q(theta_k)``.

The data-plate dim of each site is read from its ``cond_indep_stack`` (the frame named
``data_plate``), so nested plates inside the data plate are summed per data point.

``share_globals=True`` draws every global guide site ONCE per call (before the particle plate
broadcasts it) and shares it across the ``K`` particles: this is the nested estimator of
:class:`~pyro_spvae.infer.TraceIWAE_ELBO` (see its docstring for the bound).

Without gradients and with argument validation off (the evaluators' passes), the log-densities of
``Bernoulli(logits=...)`` and ``Normal`` sites (also ``.to_event(n)``) take fused paths that give
torch's numbers with fewer passes over the broadcast ``(K, N, ...)`` tensors (:func:`_site_log_prob`);
every other site, and every site with gradients, calls ``fn.log_prob``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import NamedTuple

import pyro.distributions as dist
import pyro.poutine as poutine
import torch
import torch.nn.functional as F
from pyro.distributions.util import detach as detach_distribution
from pyro.poutine.util import prune_subsample_sites
from torch import Tensor
from torch.distributions import Bernoulli, Independent, Normal
from torch.distributions.utils import broadcast_all

from pyro_spvae.infer.particles import (
    TracePair,
    in_data_plate,
    is_latent,
    particle_plate,
    particle_traces,
    run_pair,
)
from pyro_spvae.nn.likelihoods import CheckedBernoulli
from pyro_spvae.validation import check_positive_int

__all__ = ["ImportanceTerms", "ReducedTrace", "compute_importance_terms", "terms_from_traces"]


class ReducedTrace(NamedTuple):
    """A trace's sample-site log-densities summed per particle and data point (:func:`_reduce_trace`).

    :ivar local: ``(K, N)`` log-densities of the sites in the data plate (without their scale).
    :ivar global_term: ``(K,)`` log-densities of the other sites (with their scales).
    :ivar local_scale: the common scale of the data-plate sites (the subsampling factor).
    :ivar local_sites: latent sites in the data plate. :ivar global_sites: the other latent sites.
    :ivar nonreparam_sites: latent sites without ``rsample`` (they need score-function terms).
    :ivar num_data: ``N``.
    """

    local: Tensor
    global_term: Tensor
    local_scale: float
    local_sites: list[str]
    global_sites: list[str]
    nonreparam_sites: list[str]
    num_data: int


def _compact(t: Tensor) -> Tensor:
    """``t`` with its broadcast (stride-0) dims reduced to size 1: a view with the same values."""
    stride = t.stride()
    if 0 not in stride:
        return t
    return t.as_strided([1 if st == 0 else n for n, st in zip(t.shape, stride)], stride)


def _bernoulli_log_prob(base: Bernoulli, value: Tensor, n: int) -> Tensor:
    # torch negates each element of the cross-entropy, then Independent sums them; negating the sum
    # gives the same numbers (negation is exact, the summation order is unchanged) with one pass fewer
    logits, value = broadcast_all(base.logits, value)
    bce = F.binary_cross_entropy_with_logits(logits, value, reduction="none")
    return -(bce.reshape(bce.shape[: bce.dim() - n] + (-1,)).sum(-1) if n else bce)


def _normal_log_prob(base: Normal, value: Tensor, n: int) -> Tensor:
    # torch's expression, with scale**2 and log(scale) computed before the particle plate's
    # broadcast instead of on the (particles, batch, z) expanded parameters
    loc, scale = _compact(base.loc), _compact(base.scale)
    lp = -((value - loc) ** 2) / (2 * scale**2) - scale.log() - math.log(math.sqrt(2 * math.pi))
    return lp.reshape(lp.shape[: lp.dim() - n] + (-1,)).sum(-1) if n else lp


_FUSED_LOG_PROB = {Bernoulli: _bernoulli_log_prob, dist.Bernoulli: _bernoulli_log_prob,
                   CheckedBernoulli: _bernoulli_log_prob, Normal: _normal_log_prob,
                   dist.Normal: _normal_log_prob}


def _site_log_prob(fn, value: Tensor, args: tuple, kwargs: dict) -> Tensor:
    """``fn.log_prob(value)``. Without gradients (the evaluators) and argument validation,
    ``Bernoulli(logits=...)`` and ``Normal`` (also ``.to_event(n)``) take fused paths that give
    torch's numbers with fewer passes over the broadcast ``(particles, batch, ...)`` tensors."""
    base, n = fn, 0
    if type(fn) in (Independent, dist.Independent):
        base, n = fn.base_dist, fn.reinterpreted_batch_ndims
    fused = _FUSED_LOG_PROB.get(type(base))
    if (fused is None or args or kwargs or torch.is_grad_enabled() or fn._validate_args or base._validate_args
            or (fused is _bernoulli_log_prob and "logits" not in base.__dict__)):
        return fn.log_prob(value, *args, **kwargs)
    return fused(base, value, n)


def _masked_log_prob(site: dict, detach_params: bool) -> Tensor:
    fn = detach_distribution(site["fn"]) if detach_params else site["fn"]
    lp = _site_log_prob(fn, site["value"], site["args"], site["kwargs"])
    mask = site["mask"]
    if mask is not None:
        if isinstance(mask, bool):
            lp = lp if mask else torch.zeros_like(lp)
        else:
            lp = torch.where(mask, lp, torch.zeros_like(lp))
    return lp


def _scale_value(site: dict) -> float:
    scale = site["scale"]
    if isinstance(scale, Tensor) and scale.numel() != 1:
        raise ValueError(
            f"site '{site['name']}' has a non-scalar scale of shape {tuple(scale.shape)}: "
            "importance-weighted bounds need one scale per site (use poutine.mask for masks)"
        )
    return float(scale)


def _padded_log_prob(name: str, site: dict, batch_dims: int, detach_params: bool) -> Tensor:
    """The site's masked log-density with its batch dims left-padded to ``batch_dims``."""
    if site["infer"].get("enumerate"):
        raise ValueError(
            f"site '{name}' is marked for enumeration; importance-weighted estimators sample every "
            "latent site: remove infer={'enumerate': ...} or use TraceEnum_ELBO"
        )
    lp = _masked_log_prob(site, detach_params)
    if lp.dim() > batch_dims:
        raise ValueError(
            f"site '{name}' has log_prob shape {tuple(lp.shape)} with more than max_plate_nesting + 1 = "
            f"{batch_dims} batch dims; increase max_plate_nesting or declare the missing plates"
        )
    return lp.reshape((1,) * (batch_dims - lp.dim()) + lp.shape)


def _per_data_point(lp: Tensor, data_dim: int, max_plate_nesting: int, data_plate: str) -> Tensor:
    """Sum a padded ``(K, ...)`` log-density over every dim but the particle and data-plate dims."""
    if -data_dim > max_plate_nesting:
        raise ValueError(f"plate '{data_plate}' has dim {data_dim} but max_plate_nesting={max_plate_nesting}")
    d = lp.dim() + data_dim
    other = [i for i in range(1, lp.dim()) if i != d]
    if other:
        lp = lp.sum(other, keepdim=True)
    return lp.reshape(lp.shape[0], lp.shape[d])


def _common_scale(local_scales: dict[str, float], data_plate: str) -> float:
    if len(set(local_scales.values())) > 1:
        raise ValueError(
            f"sites in plate '{data_plate}' have different scales {local_scales}: the per-data-point "
            "log-mean-exp needs one common scale (the subsampling factor) for all local sites"
        )
    return next(iter(local_scales.values()), 1.0)


def _reduce_trace(
    trace: poutine.Trace,
    max_plate_nesting: int,
    data_plate: str,
    detach_params: bool = False,
    only_nonreparam: bool = False,
    num_particles: int | None = None,
    num_data: int | None = None,
) -> ReducedTrace:
    """Sum a trace's sample-site log-densities into ``local (K, N)`` and ``global (K,)`` parts.

    :param detach_params: evaluate ``log q`` with stop-gradient distribution parameters.
    :param only_nonreparam: keep only the latent sites without ``rsample``.
    """
    local_parts: list[Tensor] = []
    global_parts: list[Tensor] = []
    local_scales: dict[str, float] = {}
    local_sites, global_sites, nonreparam = [], [], []
    for name, site in trace.nodes.items():
        if site["type"] != "sample" or site["infer"].get("is_auxiliary"):
            continue
        observed = site["is_observed"]
        reparam = bool(getattr(site["fn"], "has_rsample", False))
        if not observed and not reparam:
            nonreparam.append(name)
        if only_nonreparam and (observed or reparam):
            continue
        lp = _padded_log_prob(name, site, max_plate_nesting + 1, detach_params)
        data_dim = in_data_plate(site, data_plate)
        if data_dim is None:
            global_parts.append(lp.reshape(lp.shape[0], -1).sum(-1) * _scale_value(site))
            global_sites += [] if observed else [name]
        else:
            local_parts.append(_per_data_point(lp, data_dim, max_plate_nesting, data_plate))
            local_scales[name] = _scale_value(site)
            local_sites += [] if observed else [name]
    K = num_particles or max([p.shape[0] for p in local_parts + global_parts] + [1])
    N = num_data or max([p.shape[1] for p in local_parts] + [1])
    dtype = next((p.dtype for p in local_parts + global_parts), torch.get_default_dtype())
    local = sum((p.expand(K, N) for p in local_parts), torch.zeros(K, N, dtype=dtype))
    glob = sum((p.expand(K) for p in global_parts), torch.zeros(K, dtype=dtype))
    return ReducedTrace(local, glob, _common_scale(local_scales, data_plate), local_sites,
                        global_sites, nonreparam, N)


def _cat(parts: list[ReducedTrace]) -> tuple[Tensor, Tensor]:
    """Concatenate the ``(local, global)`` parts of sequential particles along the particle dim."""
    if len(parts) == 1:
        return parts[0].local, parts[0].global_term
    return torch.cat([p.local for p in parts], 0), torch.cat([p.global_term for p in parts], 0)


@dataclass
class ImportanceTerms:
    """Log-densities of one draw of ``K`` particles for a batch of ``N`` data points.

    Shapes: ``local_* (K, N)``, ``global_* (K,)`` (identical entries when globals are shared).
    ``local_*`` exclude the sites' ``scale``; ``local_scale`` is the common scale of the local sites
    (the data-subsampling factor), applied outside the per-data-point log-mean-exp. Global terms
    include their sites' scales. ``traces`` holds one pair of ``K`` vectorised particles, or ``K``
    pairs of one particle each.
    """

    traces: list[TracePair]
    local_p: Tensor
    local_q: Tensor
    global_p: Tensor
    global_q: Tensor
    local_scale: float
    local_sites: list[str] = field(default_factory=list)
    global_sites: list[str] = field(default_factory=list)
    nonreparam_sites: list[str] = field(default_factory=list)
    max_plate_nesting: int = 1
    data_plate: str = "data"
    shared_globals: bool = False

    @property
    def log_weights(self) -> Tensor:
        """``log w_ik`` of the local part, ``(K, N)``."""
        return self.local_p - self.local_q

    @property
    def global_log_weights(self) -> Tensor:
        """``log p(theta_k) - log q(theta_k)``, ``(K,)``."""
        return self.global_p - self.global_q

    def _reduce(self, trace: poutine.Trace, **kwargs) -> ReducedTrace:
        k = self.local_p.shape[0] // len(self.traces)
        return _reduce_trace(trace, self.max_plate_nesting, self.data_plate, num_particles=k,
                             num_data=self.local_p.shape[1], **kwargs)

    def guide_terms(self, detach_params: bool = False, sites: str = "all") -> tuple[Tensor, Tensor]:
        """Recompute the guide's ``(local (K, N), global (K,))`` log-densities.

        :param detach_params: evaluate ``log q`` with stop-gradient distribution parameters (the
            value ``z`` keeps its reparameterised path): the STL / DReG surrogate.
        :param sites: ``"all"`` or ``"nonreparam"`` (only sites without ``rsample``: score terms).
        """
        only = sites == "nonreparam"
        parts = [self._reduce(g, detach_params=detach_params, only_nonreparam=only) for _, g in self.traces]
        return _cat(parts)

    def model_terms_detached_locals(self, model, args: tuple, kwargs: dict) -> tuple[Tensor, Tensor]:
        """Re-run the model with the local latent values detached (globals keep their gradient).

        Used by DReG with global latents for the direct ``d log p(x, z | theta) / d theta`` path.
        """
        k = self.local_p.shape[0] // len(self.traces)
        wrapped = particle_plate(model, k, self.max_plate_nesting)
        parts = []
        for _, guide_trace in self.traces:
            tr = poutine.Trace()
            for name, node in guide_trace.nodes.items():
                node = dict(node)
                if name in self.local_sites:
                    node["value"] = node["value"].detach()
                tr.add_node(name, **node)
            model_trace = poutine.trace(poutine.replay(wrapped, trace=tr)).get_trace(*args, **kwargs)
            parts.append(self._reduce(prune_subsample_sites(model_trace)))
        return _cat(parts)


def _check_sites(model_trace: poutine.Trace, guide_trace: poutine.Trace, data_plate: str) -> None:
    model_latent = {n for n, s in model_trace.nodes.items() if is_latent(s)}
    guide_latent = {n for n, s in guide_trace.nodes.items() if is_latent(s)}
    if model_latent != guide_latent:
        raise ValueError(
            "model and guide must have the same latent sites for importance weighting; "
            f"model only: {sorted(model_latent - guide_latent)}, "
            f"guide only: {sorted(guide_latent - model_latent)}"
        )
    sample_sites = [s for s in model_trace.nodes.values() if s["type"] == "sample"]
    if not any(in_data_plate(s, data_plate) is not None for s in sample_sites):
        raise ValueError(
            f"no sample site of the model lies in a plate named '{data_plate}': pass data_plate=<name of "
            "the plate over data points>"
        )


def terms_from_traces(
    traces: list[TracePair], max_plate_nesting: int, data_plate: str = "data", share_globals: bool = True
) -> ImportanceTerms:
    """Reduce the trace pairs of one draw of particles to their :class:`ImportanceTerms`.

    :param traces: one ``(model_trace, guide_trace)`` pair of ``K`` vectorised particles or ``K``
        pairs of one particle (:func:`particle_traces`).
    :param int max_plate_nesting: plates of the model, without the particle plate.
    :raises ValueError: when model and guide latent sites differ, no site is in ``data_plate``, or
        plates/scales are inconsistent.
    """
    _check_sites(*traces[0], data_plate)
    parts_p, parts_q = [], []
    for m_tr, g_tr in traces:
        p = _reduce_trace(m_tr, max_plate_nesting, data_plate)
        q = _reduce_trace(g_tr, max_plate_nesting, data_plate, num_particles=p.local.shape[0],
                          num_data=p.num_data)
        if q.local_sites and not math.isclose(q.local_scale, p.local_scale):
            raise ValueError(f"guide sites in plate '{data_plate}' have scale {q.local_scale} but model "
                             f"sites {p.local_scale}")
        parts_p.append(p)
        parts_q.append(q)
    local_p, global_p = _cat(parts_p)
    local_q, global_q = _cat(parts_q)
    q = parts_q[-1]
    return ImportanceTerms(
        traces=traces, local_p=local_p, local_q=local_q, global_p=global_p, global_q=global_q,
        local_scale=parts_p[-1].local_scale, local_sites=q.local_sites, global_sites=q.global_sites,
        nonreparam_sites=q.nonreparam_sites, max_plate_nesting=max_plate_nesting, data_plate=data_plate,
        shared_globals=share_globals,
    )


def compute_importance_terms(
    model,
    guide,
    args: tuple,
    kwargs: dict,
    num_particles: int,
    max_plate_nesting: int,
    data_plate: str = "data",
    share_globals: bool = True,
    vectorize: bool = True,
) -> ImportanceTerms:
    """Draw ``num_particles`` particles and return their :class:`ImportanceTerms`.

    :param int num_particles: ``K``.
    :param int max_plate_nesting: plates of the model (the particle plate goes at dim
        ``-(max_plate_nesting + 1)``).
    :param str data_plate: name of the plate over data points.
    :param bool share_globals: one draw of each global latent shared by all particles (nested
        estimator) instead of one per particle.
    :param bool vectorize: one vectorised run (``True``) or ``K`` sequential runs of one particle.
    :raises ValueError: see :func:`terms_from_traces`.
    """
    num_particles = check_positive_int("num_particles", num_particles)

    def vectorized(m, g, a: tuple, kw: dict) -> TracePair:
        return run_pair(particle_plate(m, num_particles, max_plate_nesting),
                        particle_plate(g, num_particles, max_plate_nesting), a, kw)

    traces = list(particle_traces(run_pair, vectorized, model, guide, args, kwargs,
                                  num_particles=num_particles, vectorize=vectorize, data_plate=data_plate,
                                  share_globals=share_globals))
    return terms_from_traces(traces, max_plate_nesting, data_plate, share_globals)
