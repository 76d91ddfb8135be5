"""Per-data-point importance log-weights of a (model, guide) pair, with vectorised particles.

This is the shared core of :class:`~pyro_spvae.infer.TraceIWAE_ELBO`,
:func:`~pyro_spvae.infer.log_marginal_likelihood` and :func:`~pyro_spvae.infer.to_inference_data`.

For ``K`` particles and a batch of ``N`` data points it runs the guide once inside a particle plate
``pyro.plate("_iwae_particles", K, dim=-(max_plate_nesting + 1))`` (as Pyro's
``vectorize_particles``), replays the model against it, and splits every site's log-density into

- a *local* part ``(K, N)``: sites inside ``pyro.plate(data_plate)``, summed over every other dim,
  so that ``local_p - local_q = log p(x_i, z_ik | theta) - log q(z_ik | x_i, theta) = log w_ik``;
- a *global* part ``(K,)``: sites outside the data plate (global latents ``theta`` and any global
  observations), ``log p(theta_k) - log q(theta_k)``.

The data-plate dim of each site is read from its ``cond_indep_stack`` (the frame named
``data_plate``), so nested plates inside the data plate are summed per data point.

``share_globals=True`` draws every global guide site ONCE per call (before the particle plate
broadcasts it) and shares it across the ``K`` particles: this is the nested estimator of
:class:`~pyro_spvae.infer.TraceIWAE_ELBO` (see its docstring for the bound).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import pyro
import pyro.poutine as poutine
import torch
from pyro.distributions.util import detach as detach_distribution
from pyro.poutine.messenger import Messenger
from pyro.poutine.util import prune_subsample_sites
from torch import Tensor

__all__ = ["ImportanceTerms", "compute_importance_terms", "guess_max_plate_nesting", "PARTICLE_PLATE"]

PARTICLE_PLATE = "_iwae_particles"



def check_int(name: str, value: object, minimum: int = 1) -> int:
    """Return ``value`` after checking that it is an ``int`` (not ``bool``) ``>= minimum``.

    The one integer-argument check of :mod:`pyro_spvae.infer` (particle counts, chunk and batch
    sizes, plate nesting).

    :raises ValueError: naming ``name`` otherwise.
    """
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        what = "a positive int" if minimum == 1 else f"an int >= {minimum}"
        raise ValueError(f"{name} must be {what}, got {value!r}")
    return int(value)

class _ShareGlobalsMessenger(Messenger):
    """Draws each global (outside ``data_plate``) latent guide site before the particle plate
    broadcasts it, so that one value is shared by all particles."""

    def __init__(self, data_plate: str) -> None:
        super().__init__()
        self.data_plate = data_plate

    def _pyro_sample(self, msg) -> None:
        if msg["done"] or msg["is_observed"] or msg["value"] is not None:
            return
        if any(f.name == self.data_plate for f in msg["cond_indep_stack"]):
            return
        msg["value"] = msg["fn"](*msg["args"], **msg["kwargs"])


def _in_data_plate(site: dict, data_plate: str) -> int | None:
    for frame in site["cond_indep_stack"]:
        if frame.name == data_plate:
            if frame.dim is None:
                raise ValueError(f"plate '{data_plate}' must be vectorised (use pyro.plate with a dim)")
            return frame.dim
    return None


def _is_latent(site: dict) -> bool:
    return site["type"] == "sample" and not site["is_observed"] and not site["infer"].get("is_auxiliary")


def guess_max_plate_nesting(model, guide, args: tuple, kwargs: dict) -> int:
    """Run the pair once (no particles) and return the deepest vectorised plate dim (at least 1).

    The global torch RNG state is restored afterwards, so guessing does not shift later draws.
    """
    with torch.random.fork_rng(devices=[]), poutine.block():
        guide_trace = poutine.trace(guide).get_trace(*args, **kwargs)
        model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(*args, **kwargs)
    dims = [
        -frame.dim
        for tr in (model_trace, guide_trace)
        for site in tr.nodes.values()
        if site["type"] == "sample"
        for frame in site["cond_indep_stack"]
        if frame.vectorized and frame.dim is not None
    ]
    return max(dims + [1])


@dataclass
class ImportanceTerms:
    """Log-densities of one vectorised draw of ``K`` particles for a batch of ``N`` data points.

    Shapes: ``local_* (K, N)``, ``global_* (K,)`` (identical entries when globals are shared).
    ``local_*`` exclude the sites' ``scale``; ``local_scale`` is the common scale of the local sites
    (the data-subsampling factor), applied outside the per-data-point log-mean-exp. Global terms
    include their sites' scales.
    """

    traces: list[tuple[poutine.Trace, poutine.Trace]]
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

    def guide_terms(self, detach_params: bool = False, sites: str = "all") -> tuple[Tensor, Tensor]:
        """Recompute the guide's ``(local (K, N), global (K,))`` log-densities.

        :param detach_params: evaluate ``log q`` with stop-gradient distribution parameters (the
            value ``z`` keeps its reparameterised path): the STL / DReG surrogate.
        :param sites: ``"all"`` or ``"nonreparam"`` (only sites without ``rsample``: score terms).
        """
        parts = []
        for _, guide_trace in self.traces:
            loc, glob = _reduce_trace(
                guide_trace,
                self.max_plate_nesting,
                self.data_plate,
                detach_params=detach_params,
                only_nonreparam=(sites == "nonreparam"),
                num_particles=self.local_p.shape[0] // len(self.traces),
                num_data=self.local_p.shape[1],
            )[:2]
            parts.append((loc, glob))
        return _cat(parts, self.shared_globals)

    def model_terms_detached_locals(self, model, args: tuple, kwargs: dict) -> tuple[Tensor, Tensor]:
        """Re-run the model with the local latent values detached (globals keep their gradient).

        Used by DReG with global latents for the direct ``d log p(x, z | theta) / d theta`` path.
        """
        parts = []
        for _, guide_trace in self.traces:
            tr = poutine.Trace()
            for name, node in guide_trace.nodes.items():
                node = dict(node)
                if name in self.local_sites:
                    node["value"] = node["value"].detach()
                tr.add_node(name, **node)
            k = self.local_p.shape[0] // len(self.traces)
            wrapped = _particle_plate(model, k, self.max_plate_nesting)
            model_trace = poutine.trace(poutine.replay(wrapped, trace=tr)).get_trace(*args, **kwargs)
            loc, glob = _reduce_trace(
                prune_subsample_sites(model_trace),
                self.max_plate_nesting,
                self.data_plate,
                num_particles=k,
                num_data=self.local_p.shape[1],
            )[:2]
            parts.append((loc, glob))
        return _cat(parts, self.shared_globals)


def _cat(parts: list[tuple[Tensor, Tensor]], shared: bool) -> tuple[Tensor, Tensor]:
    local = torch.cat([p[0] for p in parts], 0)
    glob = torch.cat([p[1] for p in parts], 0)
    return local, glob


def _masked_log_prob(site: dict, detach_params: bool) -> Tensor:
    fn = detach_distribution(site["fn"]) if detach_params else site["fn"]
    lp = fn.log_prob(site["value"], *site["args"], **site["kwargs"])
    mask = site["mask"]
    if mask is not None:
        if isinstance(mask, bool):
            lp = lp if mask else torch.zeros_like(lp)
        else:
            lp = torch.where(mask, lp, torch.zeros_like(lp))
    return lp


def _scale_value(site: dict) -> float:
    scale = site["scale"]
    if isinstance(scale, Tensor):
        if scale.numel() != 1:
            raise ValueError(
                f"site '{site['name']}' has a non-scalar scale of shape {tuple(scale.shape)}: "
                "importance-weighted bounds need one scale per site (use poutine.mask for masks)"
            )
        return float(scale)
    return float(scale)


def _reduce_trace(
    trace: poutine.Trace,
    max_plate_nesting: int,
    data_plate: str,
    detach_params: bool = False,
    only_nonreparam: bool = False,
    num_particles: int | None = None,
    num_data: int | None = None,
):
    """Sum a trace's sample-site log-densities into ``local (K, N)`` and ``global (K,)`` parts.

    :returns: ``(local, global, local_scale, local_sites, global_sites, nonreparam_sites, N)``.
    """
    L = max_plate_nesting + 1
    local_parts: list[Tensor] = []
    global_parts: list[Tensor] = []
    local_scales: dict[str, float] = {}
    local_sites, global_sites, nonreparam = [], [], []
    for name, site in trace.nodes.items():
        if site["type"] != "sample" or site["infer"].get("is_auxiliary"):
            continue
        if site["infer"].get("enumerate"):
            raise ValueError(
                f"site '{name}' is marked for enumeration; importance-weighted estimators sample every "
                "latent site: remove infer={'enumerate': ...} or use TraceEnum_ELBO"
            )
        reparam = bool(getattr(site["fn"], "has_rsample", False))
        if not site["is_observed"] and not reparam:
            nonreparam.append(name)
        if only_nonreparam and (site["is_observed"] or reparam):
            continue
        lp = _masked_log_prob(site, detach_params)
        if lp.dim() > L:
            raise ValueError(
                f"site '{name}' has log_prob shape {tuple(lp.shape)} with more than max_plate_nesting + 1 = "
                f"{L} batch dims; increase max_plate_nesting or declare the missing plates"
            )
        lp = lp.reshape((1,) * (L - lp.dim()) + lp.shape)
        data_dim = _in_data_plate(site, data_plate)
        if data_dim is not None:
            if -data_dim > max_plate_nesting:
                raise ValueError(
                    f"plate '{data_plate}' has dim {data_dim} but max_plate_nesting={max_plate_nesting}"
                )
            d = L + data_dim
            other = [i for i in range(1, L) if i != d]
            if other:
                lp = lp.sum(other, keepdim=True)
            lp = lp.reshape(lp.shape[0], lp.shape[d])
            local_parts.append(lp)
            local_scales[name] = _scale_value(site)
            if not site["is_observed"]:
                local_sites.append(name)
        else:
            lp = lp.reshape(lp.shape[0], -1).sum(-1) * _scale_value(site)
            global_parts.append(lp)
            if not site["is_observed"]:
                global_sites.append(name)
    if len(set(local_scales.values())) > 1:
        raise ValueError(
            f"sites in plate '{data_plate}' have different scales {local_scales}: the per-data-point "
            "log-mean-exp needs one common scale (the subsampling factor) for all local sites"
        )
    local_scale = next(iter(local_scales.values()), 1.0)
    K = num_particles or max([p.shape[0] for p in local_parts + global_parts] + [1])
    N = num_data or max([p.shape[1] for p in local_parts] + [1])
    dtype = next((p.dtype for p in local_parts + global_parts), torch.get_default_dtype())
    local = sum((p.expand(K, N) for p in local_parts), torch.zeros(K, N, dtype=dtype))
    glob = sum((p.expand(K) for p in global_parts), torch.zeros(K, dtype=dtype))
    return local, glob, local_scale, local_sites, global_sites, nonreparam, N


def _particle_plate(fn, num_particles: int, max_plate_nesting: int):
    def wrapped(*args, **kwargs):
        with pyro.plate(PARTICLE_PLATE, num_particles, dim=-(max_plate_nesting + 1)):
            return fn(*args, **kwargs)

    return wrapped


def _global_only_trace(guide_trace: poutine.Trace, names: list[str]) -> poutine.Trace:
    tr = poutine.Trace()
    for name in names:
        tr.add_node(name, **guide_trace.nodes[name])
    return tr


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
    :raises ValueError: when model and guide latent sites differ, no site is in ``data_plate``, or
        plates/scales are inconsistent.
    """
    num_particles = check_int("num_particles", num_particles)
    runs = [num_particles] if vectorize else [1] * num_particles
    traces = []
    global_trace = None
    for k in runs:
        g = _ShareGlobalsMessenger(data_plate)(guide) if share_globals else guide
        if global_trace is not None:
            g = poutine.replay(g, trace=global_trace)
        guide_trace = poutine.trace(_particle_plate(g, k, max_plate_nesting)).get_trace(*args, **kwargs)
        model_trace = poutine.trace(
            poutine.replay(_particle_plate(model, k, max_plate_nesting), trace=guide_trace)
        ).get_trace(*args, **kwargs)
        guide_trace = prune_subsample_sites(guide_trace)
        model_trace = prune_subsample_sites(model_trace)
        traces.append((model_trace, guide_trace))
        if share_globals and not vectorize and global_trace is None:
            names = [
                n
                for n, s in guide_trace.nodes.items()
                if _is_latent(s) and _in_data_plate(s, data_plate) is None
            ]
            global_trace = _global_only_trace(guide_trace, names)

    model_trace, guide_trace = traces[0]
    model_latent = {n for n, s in model_trace.nodes.items() if _is_latent(s)}
    guide_latent = {n for n, s in guide_trace.nodes.items() if _is_latent(s)}
    if model_latent != guide_latent:
        raise ValueError(
            "model and guide must have the same latent sites for importance weighting; "
            f"model only: {sorted(model_latent - guide_latent)}, "
            f"guide only: {sorted(guide_latent - model_latent)}"
        )
    sample_sites = [s for s in model_trace.nodes.values() if s["type"] == "sample"]
    if not any(_in_data_plate(s, data_plate) is not None for s in sample_sites):
        raise ValueError(
            f"no sample site of the model lies in a plate named '{data_plate}': pass data_plate=<name of "
            "the plate over data points>"
        )

    parts_p, parts_q = [], []
    for m_tr, g_tr in traces:
        lp, gp, local_scale, _, _, _, N = _reduce_trace(m_tr, max_plate_nesting, data_plate)
        lq, gq, q_scale, local_sites, global_sites, nonreparam, _ = _reduce_trace(
            g_tr, max_plate_nesting, data_plate, num_data=N, num_particles=lp.shape[0]
        )
        if local_sites and not math.isclose(q_scale, local_scale):
            raise ValueError(
                f"guide sites in plate '{data_plate}' have scale {q_scale} but model sites {local_scale}"
            )
        parts_p.append((lp, gp))
        parts_q.append((lq, gq))
    local_p, global_p = _cat(parts_p, share_globals)
    local_q, global_q = _cat(parts_q, share_globals)
    return ImportanceTerms(
        traces=traces,
        local_p=local_p,
        local_q=local_q,
        global_p=global_p,
        global_q=global_q,
        local_scale=local_scale,
        local_sites=local_sites,
        global_sites=global_sites,
        nonreparam_sites=nonreparam,
        max_plate_nesting=max_plate_nesting,
        data_plate=data_plate,
        shared_globals=share_globals,
    )
