"""Particles of a (model, guide) pair drawn the way Pyro's :class:`~pyro.infer.ELBO` draws them.

Pyro's ELBO contract (``pyro/infer/elbo.py``): :meth:`~pyro.infer.ELBO._get_trace` returns one
``(model_trace, guide_trace)`` pair; :meth:`~pyro.infer.ELBO._get_traces` yields either one pair of
``K`` vectorised particles (the model and guide wrapped in the plate
``pyro.plate("num_particles_vectorized", K, dim=-max_plate_nesting)``, where ``max_plate_nesting``
counts that plate) or ``K`` pairs of one particle. The helpers below implement the same scheme for
:class:`~pyro_spvae.infer.TraceIWAE_ELBO` (through its hooks) and for the evaluators, which draw
their particles in chunks of varying size (:func:`~pyro_spvae.infer.log_marginal_likelihood`), plus
one extension: a *shared* draw of the global latents for the nested importance-weighted bound
(see ``docs/estimators.md``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pyro
import pyro.poutine as poutine
import torch
from pyro.poutine.messenger import Messenger
from pyro.poutine.util import prune_subsample_sites

__all__ = [
    "PARTICLE_PLATE",
    "TracePair",
    "guess_max_plate_nesting",
    "in_data_plate",
    "is_latent",
    "particle_plate",
    "particle_traces",
    "run_pair",
]

#: The name Pyro's :meth:`~pyro.infer.ELBO._vectorized_num_particles` gives its particle plate.
PARTICLE_PLATE = "num_particles_vectorized"

TracePair = tuple[poutine.Trace, poutine.Trace]
TraceFn = Callable[..., TracePair]


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


def in_data_plate(site: dict, data_plate: str) -> int | None:
    """The dim of the plate named ``data_plate`` in the site's ``cond_indep_stack``, or ``None``.

    :raises ValueError: if that plate is not vectorised.
    """
    for frame in site["cond_indep_stack"]:
        if frame.name == data_plate:
            if frame.dim is None:
                raise ValueError(f"plate '{data_plate}' must be vectorised (use pyro.plate with a dim)")
            return frame.dim
    return None


def is_latent(site: dict) -> bool:
    """Whether a trace node is a latent (unobserved, non-auxiliary) sample site."""
    return site["type"] == "sample" and not site["is_observed"] and not site["infer"].get("is_auxiliary")


def guess_max_plate_nesting(model, guide, args: tuple, kwargs: dict) -> int:
    """Run the pair once (no particles) and return the deepest vectorised plate dim (at least 1).

    The global torch RNG state is restored afterwards, so guessing does not shift later draws.
    """
    with torch.random.fork_rng(devices=[]), poutine.block():
        model_trace, guide_trace = run_pair(model, guide, args, kwargs)
    dims = [
        -frame.dim
        for tr in (model_trace, guide_trace)
        for site in tr.nodes.values()
        if site["type"] == "sample"
        for frame in site["cond_indep_stack"]
        if frame.vectorized and frame.dim is not None
    ]
    return max(dims + [1])


def run_pair(model, guide, args: tuple, kwargs: dict) -> TracePair:
    """Run ``guide`` once, replay ``model`` against it and return ``(model_trace, guide_trace)``
    with subsample sites pruned (the traces of Pyro's ``get_importance_trace``, without computing
    log-densities). Given particle-plate-wrapped callables, the traces hold every particle."""
    guide_trace = poutine.trace(guide).get_trace(*args, **kwargs)
    model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(*args, **kwargs)
    return prune_subsample_sites(model_trace), prune_subsample_sites(guide_trace)


def particle_plate(fn, num_particles: int, max_plate_nesting: int):
    """``fn`` inside the particle plate at dim ``-(max_plate_nesting + 1)``, as Pyro's
    :meth:`~pyro.infer.ELBO._vectorized_num_particles` (``fn`` itself for one particle)."""
    if num_particles == 1:
        return fn
    return pyro.plate(PARTICLE_PLATE, num_particles, dim=-(max_plate_nesting + 1))(fn)


def _global_only_trace(guide_trace: poutine.Trace, data_plate: str) -> poutine.Trace:
    tr = poutine.Trace()
    for name, site in guide_trace.nodes.items():
        if is_latent(site) and in_data_plate(site, data_plate) is None:
            tr.add_node(name, **site)
    return tr


def particle_traces(
    get_trace: TraceFn,
    get_vectorized_trace: TraceFn,
    model,
    guide,
    args: tuple,
    kwargs: dict,
    *,
    num_particles: int,
    vectorize: bool,
    data_plate: str,
    share_globals: bool,
) -> Iterator[TracePair]:
    """Yield the trace pairs of one draw of ``num_particles`` particles, as Pyro's
    :meth:`~pyro.infer.ELBO._get_traces`: ``get_vectorized_trace(model, guide, args, kwargs)`` once
    when vectorising, else ``get_trace`` once per particle.

    With ``share_globals`` each global latent guide site is drawn once: inside the particle plate
    before it broadcasts the site when vectorising, and replayed from the first particle's trace
    for the later sequential particles.
    """
    shared = _ShareGlobalsMessenger(data_plate)(guide) if share_globals else guide
    if vectorize:
        yield get_vectorized_trace(model, shared, args, kwargs)
        return
    global_trace = None
    for _ in range(num_particles):
        g = shared if global_trace is None else poutine.replay(guide, trace=global_trace)
        pair = get_trace(model, g, args, kwargs)
        if share_globals and global_trace is None:
            global_trace = _global_only_trace(pair[1], data_plate)
        yield pair
