"""Importance-weighted ELBO formed per data point, with IWAE, DReG and STL gradient estimators.

References
----------
- [IWAE] Burda, Grosse & Salakhutdinov (2016), "Importance Weighted Autoencoders", ICLR, eq. (8).
- [DReG] Tucker, Lawson, Gu & Maddison (2019), "Doubly Reparameterized Gradient Estimators for Monte
  Carlo Objectives", ICLR, eq. (6)-(7).
- [STL] Roeder, Wu & Duvenaud (2017), "Sticking the Landing: Simple, Lower-Variance Gradient
  Estimators for Variational Inference", NeurIPS.
- [SNR] Rainforth et al. (2018), "Tighter Variational Bounds are Not Necessarily Better", ICML.

The derivations (the nested bound with global latents, the surrogates of each estimator, the
comparison with Pyro's ``RenyiELBO``) are in ``docs/estimators.md``.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from pyro.infer.elbo import ELBO
from pyro.util import warn_if_nan
from torch import Tensor

from pyro_spvae.infer.importance import ImportanceTerms, terms_from_traces
from pyro_spvae.infer.particles import TracePair, guess_max_plate_nesting, particle_traces, run_pair
from pyro_spvae.validation import check_bool, check_choice, check_positive_int

__all__ = ["TraceIWAE_ELBO", "IWAEBound"]

_ESTIMATORS = ("iwae", "dreg")
_GLOBAL_MODES = ("nested", "joint")


class IWAEBound(NamedTuple):
    """One stochastic evaluation of the bound.

    :ivar total: the bound (scalar tensor; ``-loss``).
    :ivar local: ``log (1/K) sum_k w_ik`` per data point, shape ``(N,)`` (unscaled).
    :ivar global_term: ``log p(theta) - log q(theta)`` (scalar; 0 without global latents; in
        ``"joint"`` mode with global latents, the whole bound and ``local`` is NaN).
    :ivar terms: the underlying :class:`~pyro_spvae.infer.importance.ImportanceTerms` (traces,
        log-densities).
    """

    total: Tensor
    local: Tensor
    global_term: Tensor
    terms: ImportanceTerms


def _trace_params(traces, kind: int) -> list[Tensor]:
    seen: dict[int, Tensor] = {}
    for pair in traces:
        for site in pair[kind].nodes.values():
            if site["type"] != "param":
                continue
            value = site["value"]
            # PyroModule parameters are recorded as themselves (leaves); constrained pyro.param
            # values are transforms of their unconstrained leaf.
            leaf = value if value.is_leaf or not hasattr(value, "unconstrained") else value.unconstrained()
            if isinstance(leaf, Tensor) and leaf.requires_grad:
                seen[id(leaf)] = leaf
    return list(seen.values())


def _module_params(fn) -> list[Tensor]:
    """Trainable parameters of ``fn`` when it is an ``nn.Module`` (a ``PyroModule``), else ``[]``.

    (A ``PyroModule`` records its parameters in the trace under their names, which resolve to the
    global param store: with two instances of one class the trace may name the other instance's
    tensors, so the module's own ``parameters()`` come first.)
    """
    if isinstance(fn, torch.nn.Module):
        return [p for p in fn.parameters() if p.requires_grad]
    return []


def _unique(params: list[Tensor]) -> list[Tensor]:
    return list({id(p): p for p in params}.values())


class TraceIWAE_ELBO(ELBO):
    r"""Importance-weighted ELBO (IWAE bound) formed **per data point** of the data plate.

    For a batch ``x_1..x_N`` (the plate named ``data_plate``) and ``K`` particles
    ``z_ik ~ q(z | x_i)``, ``w_ik = p(x_i, z_ik) / q(z_ik | x_i)`` and the bound is

    .. math:: \mathcal{L}_K = \sum_i \log \frac{1}{K} \sum_k w_{ik} \le \sum_i \log p(x_i)

    ([IWAE] eq. 8, applied to each data point; the loss is ``-L_K``, a sum over the data plate like
    :class:`~pyro.infer.Trace_ELBO`). Particles are vectorised with a ``pyro.plate`` at dim
    ``-(max_plate_nesting + 1)`` (every model/guide op must accept a leading particle dim), or run
    one at a time with ``vectorize_particles=False``. Sites nested inside the data plate (pixel
    plates, ...) are summed into their data point's weight. With data subsampling the common
    ``scale`` of the data-plate sites multiplies the sum of per-point bounds.

    **Global latents** (latent sites outside the data plate, ``theta``). ``global_latents="nested"``
    (default) draws ONE ``theta ~ q(theta)`` per evaluation, shared by the ``K`` particles of every
    data point, and estimates

    .. math:: \mathcal{L} = \mathbb{E}_{q(\theta)}\Big[\log\frac{p(\theta)}{q(\theta)}
              + \sum_i \mathbb{E}\log\frac{1}{K}\sum_k \frac{p(x_i, z_{ik}\mid\theta)}
              {q(z_{ik}\mid x_i, \theta)}\Big] \le \log p(x_{1..N}).

    Proof: for fixed ``theta`` each inner term is an IWAE bound on ``log p(x_i | theta)``, and
    ``E_q[log p(theta)/q(theta) + sum_i log p(x_i | theta)]`` is the ELBO of
    ``log p(x) = log int p(theta) prod_i p(x_i | theta)``. With ``q(theta) = p(theta | x)`` and exact
    local posteriors the bound equals ``log p(x)`` for every ``K``. (Mixing per-particle
    ``theta_k`` inside each data point's log-mean-exp, i.e. ``sum_i log mean_k w_ik(theta_k)``, is
    NOT a bound: it ignores the coupling of the data points through ``theta``.)
    ``global_latents="joint"`` instead uses one weight per particle for the whole batch,
    ``log mean_k [p(theta_k)/q(theta_k) prod_i w_ik(theta_k)]`` (a valid bound, the behaviour of
    Pyro's ``RenyiELBO(alpha=0)``, pyro issue #3104), which degenerates to a single-sample ELBO as
    ``N`` grows; without global sites both modes are the per-data-point bound.

    **Gradient estimators.**

    - ``estimator="iwae"``: the gradient of the bound ``sum_k w~_ik grad log w_ik`` with normalised
      weights ``w~`` ([IWAE] eq. 14); non-reparameterisable guide sites (``has_rsample`` False, e.g.
      a discrete component) get the score-function term ``L_i grad sum_k log q(c_ik)`` with the
      data point's own bound ``L_i`` as learning signal (no baseline; VIMCO would reduce variance).
      For inference networks its signal-to-noise ratio decays like ``1/sqrt(K)`` [SNR].
    - ``stl=True``: "sticking the landing" [STL]: ``log q`` in the surrogate is evaluated with
      stop-gradient distribution parameters, dropping the score term (zero-variance at the exact
      posterior; slightly biased for ``K > 1``, [DReG] §3).
    - ``estimator="dreg"``: doubly reparameterised gradient [DReG eq. 7]: guide parameters get
      ``sum_k w~_ik^2 d log w_ik / d z_ik * d z_ik / d phi`` (surrogate with stop-gradient ``q``
      parameters and weights ``sg(w~^2)``), model parameters the plain IWAE gradient. Its SNR for
      inference networks grows with ``K``. With nested global latents ``theta(phi)`` the direct path
      ``d log p(x_i, z | theta) / d theta`` keeps its IWAE weight ``w~`` (one extra model pass), and
      the global term uses STL, which is DReG for ``K = 1``. ``loss_and_grads`` routes the two
      surrogates to the model's and the guide's parameters separately (``nn.Module.parameters()``
      of a ``PyroModule`` plus the ``param`` sites of the traces); ``differentiable_loss``
      returns a tensor whose first-order gradient w.r.t. those parameters equals this estimate
      (it is not differentiable twice).

    DReG and STL need every guide site to be reparameterisable and raise ``ValueError`` otherwise
    (no silent fallback). They are exact for guides whose local sites are conditionally independent
    given ``x`` and the globals (the usual amortised guide); for hierarchical local guides the
    stop-gradient also cuts ``d log q(z_2 | z_1) / d z_1`` in the surrogate.

    Compared with Pyro (see ``docs/estimators.md``): ``RenyiELBO(alpha=0)`` has no
    ``differentiable_loss``, forms one weight per batch with global latents (#3104), has no DReG
    (#2598) and no way to switch STL (#2854); this class has all of those.

    **Pyro's ELBO contract.** ``num_particles``, ``vectorize_particles``, ``max_plate_nesting`` and
    ``retain_graph`` are the attributes of :class:`pyro.infer.ELBO` with Pyro's meaning: when ``K > 1``
    particles are vectorised, ``max_plate_nesting`` counts the particle plate
    ``"num_particles_vectorized"`` at dim ``-max_plate_nesting``, and a guessed value is written back
    the same way (:meth:`_guess_max_plate_nesting`). :meth:`_get_trace` returns one trace pair of the
    (model, guide) it is given, and the vectorised pair goes through
    :meth:`~pyro.infer.ELBO._get_vectorized_trace`; :meth:`_get_traces` is overridden (see there)
    only to share the global latents and to guess the plate nesting for sequential particles too.
    ``loss_and_grads`` back-propagates with ``retain_graph=self.retain_graph`` as
    :class:`~pyro.infer.Trace_ELBO` does, and every loss goes through :func:`pyro.util.warn_if_nan`.

    :param int num_particles: ``K``.
    :param str estimator: ``"iwae"`` or ``"dreg"``.
    :param bool stl: sticking-the-landing surrogate (only with ``estimator="iwae"``).
    :param max_plate_nesting: plates of the model; ``None`` guesses it by running the pair once.
    :param str data_plate: name of the plate over data points.
    :param str global_latents: ``"nested"`` or ``"joint"`` (see above).
    :param bool vectorize_particles: one vectorised pass (default) or ``K`` sequential passes.
    :param retain_graph: keep the autograd graph after ``loss_and_grads`` (Pyro's ``retain_graph``).
    """

    def __init__(
        self,
        num_particles: int = 2,
        estimator: str = "iwae",
        stl: bool = False,
        max_plate_nesting: int | None = None,
        data_plate: str = "data",
        global_latents: str = "nested",
        vectorize_particles: bool = True,
        retain_graph: bool | None = None,
    ) -> None:
        num_particles = check_positive_int("num_particles", num_particles)
        check_choice("estimator", estimator, _ESTIMATORS)
        check_bool("stl", stl)
        if stl and estimator == "dreg":
            raise ValueError("estimator='dreg' already stops the gradient of q's parameters; use stl=False")
        check_choice("global_latents", global_latents, _GLOBAL_MODES)
        if max_plate_nesting is not None:
            check_positive_int("max_plate_nesting", max_plate_nesting)
        if not isinstance(data_plate, str):
            raise TypeError(f"data_plate must be a plate name (str), got {type(data_plate).__name__}")
        if not data_plate:
            raise ValueError("data_plate must be a non-empty plate name")
        super().__init__(
            num_particles=num_particles,
            max_plate_nesting=float("inf") if max_plate_nesting is None else max_plate_nesting,
            vectorize_particles=check_bool("vectorize_particles", vectorize_particles),
            retain_graph=None if retain_graph is None else check_bool("retain_graph", retain_graph),
        )
        self.estimator = estimator
        self.stl = stl
        self.data_plate = data_plate
        self.global_latents = global_latents

    # ------------------------------------------------------------------ Pyro's trace hooks
    def _particle_plates(self) -> int:
        """1 when ``max_plate_nesting`` counts Pyro's particle plate (``K > 1`` vectorised), else 0."""
        return int(self.vectorize_particles and self.num_particles > 1)

    def _guess_max_plate_nesting(self, model, guide, args: tuple, kwargs: dict) -> None:
        """Guess ``max_plate_nesting`` and write it back as :class:`pyro.infer.ELBO` does: the deepest
        plate of the (model, guide) pair run once, plus the particle plate when vectorising.

        Unlike Pyro's guess, the pair runs without shifting the torch RNG stream, and the nesting is
        at least 1 (the data plate).
        """
        self.max_plate_nesting = guess_max_plate_nesting(model, guide, args, kwargs) + self._particle_plates()

    def _get_trace(self, model, guide, args: tuple, kwargs: dict) -> TracePair:
        """One ``(model_trace, guide_trace)`` pair (:meth:`pyro.infer.ELBO._get_trace`): the guide run
        once and the model replayed against it, subsample sites pruned. For one particle, or for all
        ``K`` when :meth:`~pyro.infer.ELBO._get_vectorized_trace` passes the plate-wrapped pair."""
        return run_pair(model, guide, args, kwargs)

    def _get_traces(self, model, guide, args: tuple, kwargs: dict):
        """:meth:`pyro.infer.ELBO._get_traces` (one vectorised pair of ``K`` particles through
        :meth:`~pyro.infer.ELBO._get_vectorized_trace`, or ``K`` pairs of one from :meth:`_get_trace`),
        overridden for two reasons:

        - ``max_plate_nesting`` is guessed for sequential particles too (the per-data-point
          reduction needs the plate dims);
        - with ``global_latents="nested"`` every global latent guide site is drawn once and shared
          by the ``K`` particles (drawn before the particle plate broadcasts it, or replayed from
          the first sequential particle).
        """
        if self.max_plate_nesting == float("inf"):
            self._guess_max_plate_nesting(model, guide, args, kwargs)
        yield from particle_traces(
            self._get_trace, self._get_vectorized_trace, model, guide, args, kwargs,
            num_particles=self.num_particles, vectorize=self.vectorize_particles,
            data_plate=self.data_plate, share_globals=self.global_latents == "nested",
        )

    # ------------------------------------------------------------------ core
    def _terms(self, model, guide, args: tuple, kwargs: dict) -> ImportanceTerms:
        traces = list(self._get_traces(model, guide, args, kwargs))
        terms = terms_from_traces(
            traces,
            int(self.max_plate_nesting) - self._particle_plates(),
            self.data_plate,
            share_globals=self.global_latents == "nested",
        )
        if (self.estimator == "dreg" or self.stl) and terms.nonreparam_sites:
            name = "DReG" if self.estimator == "dreg" else "STL"
            raise ValueError(
                f"{name} needs a reparameterisable guide, but guide sites {terms.nonreparam_sites} have no "
                "rsample (has_rsample=False); use estimator='iwae', stl=False for them"
            )
        return terms

    def _joint(self, terms: ImportanceTerms) -> bool:
        return self.global_latents == "joint" and bool(terms.global_sites)

    def _bound(self, terms: ImportanceTerms) -> IWAEBound:
        K = terms.local_p.shape[0]
        lw = terms.log_weights
        if self._joint(terms):
            v = terms.global_log_weights + terms.local_scale * lw.sum(-1)
            total = torch.logsumexp(v, 0) - math.log(K)
            return IWAEBound(total, torch.full_like(lw[0], float("nan")), total, terms)
        glob = terms.global_log_weights.mean(0)
        local = torch.logsumexp(lw, 0) - math.log(K)
        total = glob + terms.local_scale * local.sum()
        return IWAEBound(total, local, glob, terms)

    def compute_bounds(self, model, guide, *args, **kwargs) -> IWAEBound:
        """Draw particles once and return the bound with its per-data-point parts (no gradients)."""
        with torch.no_grad():
            return self._bound(self._terms(model, guide, args, kwargs))

    def _surrogates(self, model, terms: ImportanceTerms, bound: IWAEBound, args, kwargs):
        """Return ``(S_model, S_guide)`` ascent surrogates (``S_guide`` is ``None`` unless DReG)."""
        stop = score = None
        if self.stl or self.estimator == "dreg":
            stop_local_q, stop_glob_q = terms.guide_terms(detach_params=True)
            stop = (terms.local_p - stop_local_q, terms.global_p - stop_glob_q)
        if terms.nonreparam_sites:
            score = terms.guide_terms(sites="nonreparam")
        if self._joint(terms):
            return self._joint_surrogates(terms, bound, stop, score)
        return self._nested_surrogates(model, terms, bound, stop, score, args, kwargs)

    def _joint_surrogates(self, terms: ImportanceTerms, bound: IWAEBound, stop, score):
        """Surrogates of the ``"joint"`` bound: one weight per particle for the whole batch."""
        s = terms.local_scale
        v = terms.global_log_weights + s * terms.log_weights.sum(-1)
        wt = torch.softmax(v.detach(), 0)
        if self.estimator == "dreg":
            v_stop = stop[1] + s * stop[0].sum(-1)
            return (wt * v).sum(), (wt**2 * v_stop).sum()
        v_sur = stop[1] + s * stop[0].sum(-1) if self.stl else v
        S = (wt * v_sur).sum()
        if score is not None:
            S = S + bound.total.detach() * (score[0].sum(-1) + score[1]).sum()
        return S, None

    def _nested_surrogates(self, model, terms: ImportanceTerms, bound: IWAEBound, stop, score, args, kwargs):
        """Surrogates of the per-data-point bound (globals shared by the particles)."""
        s = terms.local_scale
        lw = terms.log_weights
        wt = torch.softmax(lw.detach(), 0)  # (K, N)
        glob = terms.global_log_weights.mean(0)
        if self.estimator == "dreg":
            S_guide = stop[1].mean(0) + s * (wt**2 * stop[0]).sum()
            if terms.global_sites:
                local_p_detz, _ = terms.model_terms_detached_locals(model, args, kwargs)
                S_guide = S_guide + s * ((wt - wt**2) * local_p_detz).sum()
            return glob + s * (wt * lw).sum(), S_guide
        if self.stl:
            S = stop[1].mean(0) + s * (wt * stop[0]).sum()
        else:
            S = glob + s * (wt * lw).sum()
        if score is not None:
            S = S + s * (bound.local.detach() * score[0].sum(0)).sum()
            S = S + bound.total.detach() * score[1].mean(0)
        return S, None

    def _param_groups(self, model, guide, terms: ImportanceTerms) -> tuple[list[Tensor], list[Tensor]]:
        """DReG's two parameter groups: the model's, and the guide's that are not the model's."""
        model_params = _unique(_module_params(model) + _trace_params(terms.traces, 0))
        model_ids = {id(p) for p in model_params}
        guide_all = _unique(_module_params(guide) + _trace_params(terms.traces, 1))
        return model_params, [p for p in guide_all if id(p) not in model_ids]

    def _dreg_grads(self, model, guide, terms, S_model, S_guide) -> tuple[list[Tensor], list[Tensor | None]]:
        model_params, guide_params = self._param_groups(model, guide, terms)
        params, grads = [], []
        if model_params and S_model.requires_grad:
            params += model_params
            grads += list(torch.autograd.grad(S_model, model_params, retain_graph=True, allow_unused=True))
        if guide_params and S_guide.requires_grad:
            params += guide_params
            grads += list(
                torch.autograd.grad(S_guide, guide_params, retain_graph=self.retain_graph, allow_unused=True)
            )
        return params, grads

    def _dreg_backward(self, model, guide, terms, S_model: Tensor, S_guide: Tensor) -> None:
        """Accumulate ``-dS_model`` into the model's and ``-dS_guide`` into the guide's ``.grad``."""
        model_params, guide_params = self._param_groups(model, guide, terms)
        guide_live = bool(guide_params) and S_guide.requires_grad
        if model_params and S_model.requires_grad:
            # the guide surrogate shares this graph: keep it for the second pass
            (-S_model).backward(inputs=model_params, retain_graph=guide_live or self.retain_graph)
        if guide_live:
            (-S_guide).backward(inputs=guide_params, retain_graph=self.retain_graph)

    # ------------------------------------------------------------------ ELBO API
    def loss(self, model, guide, *args, **kwargs) -> float:
        """:returns: ``-L_K`` (a float estimate of the negative bound; no gradients)."""
        loss = -float(self.compute_bounds(model, guide, *args, **kwargs).total)
        warn_if_nan(loss, "loss")
        return loss

    def differentiable_loss(self, model, guide, *args, **kwargs) -> Tensor:
        """:returns: ``-L_K`` as a tensor whose gradient is the chosen estimator's (see class doc)."""
        terms = self._terms(model, guide, args, kwargs)
        bound = self._bound(terms)
        S_model, S_guide = self._surrogates(model, terms, bound, args, kwargs)
        if S_guide is None:
            loss = -(bound.total.detach() + S_model - S_model.detach())
        else:
            params, grads = self._dreg_grads(model, guide, terms, S_model, S_guide)
            lin = sum(
                ((p * g.detach()).sum() for p, g in zip(params, grads) if g is not None),
                torch.zeros((), dtype=bound.total.dtype),
            )
            loss = -(bound.total.detach() + lin - lin.detach())
        warn_if_nan(loss, "loss")
        return loss

    def loss_and_grads(self, model, guide, *args, **kwargs) -> float:
        """Accumulate the estimator's gradients of ``-L_K`` into ``.grad`` (back-propagating with
        ``retain_graph=self.retain_graph``) and return ``-L_K``."""
        terms = self._terms(model, guide, args, kwargs)
        bound = self._bound(terms)
        S_model, S_guide = self._surrogates(model, terms, bound, args, kwargs)
        if S_guide is None:
            if S_model.requires_grad:
                (-S_model).backward(retain_graph=self.retain_graph)
        else:
            self._dreg_backward(model, guide, terms, S_model, S_guide)
        loss = -float(bound.total.detach())
        warn_if_nan(loss, "loss")
        return loss
