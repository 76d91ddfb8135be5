r"""GECO: a Lagrange multiplier on a data-fit constraint, as a wrapper of any ``pyro.infer.ELBO``.

References
----------
- [GECO] Rezende & Viola (2018), "Taming VAEs", arXiv:1810.00597, §3 and Algorithm 1.
- [VHP] Klushyn, Chen, Kurle, Cseke & van der Smagt (2019), "Learning Hierarchical Priors in
  VAEs", NeurIPS (the constrained objective of the VHP-VAE and its multiplier update).
- [beta-VAE] Higgins et al. (2017), "beta-VAE", ICLR (a likelihood weight ``lambda = 1/beta``).

Constrained objective
---------------------
Instead of the ELBO, minimise the regularising (KL-like) terms subject to an expected constraint
on the data fit, :math:`\mathbb{E}[C(x, z)] \le \kappa^2` ([GECO] §3), with the Lagrangian

.. math:: \mathcal{L}(\theta, \phi; \lambda) = \mathrm{KL} + \lambda\, (\mathbb{E}[C] - \kappa^2).

The multiplier enters a Pyro ELBO in one of two ways (``coupling``):

- ``"scale"``: the constrained observation sites are scaled by :math:`\lambda` (a site-filtered
  ``poutine.scale``), so the wrapped ELBO computes :math:`\mathrm{KL} + \lambda\,\mathrm{NLL}`
  (for ``Trace_ELBO`` and the other ELBOs linear in the site log-densities; ``RenyiELBO`` gets
  tempered weights :math:`p(x \mid z)^\lambda`). With ``C`` the sites' negative log-likelihood
  this *is* the Lagrangian (up to the constant :math:`\lambda\kappa^2`); with a squared error and a
  Gaussian likelihood of fixed scale it is too (the NLL is affine in the error); otherwise it is
  the likelihood-weighted surrogate of [beta-VAE] with ``beta = 1/lambda``, and ``C`` only drives
  the multiplier. ``C`` is measured, without gradient, on the sites as the wrapped ELBO ran them
  (averaged over its particles), so there is no extra pass.
- ``"penalty"``: the loss is :math:`-\mathrm{ELBO} + (\lambda - 1) \sum_i C_i` with ``C`` from one
  extra reparameterised pass (the guide run once, the model replayed), differentiated along the
  reparameterised path. This works with any ELBO as a black box: the importance-weighted
  :class:`~pyro_spvae.infer.TraceIWAE_ELBO` (which refuses per-site scales inside the data plate)
  and the SPN-aware bounds (which never run the model's observation site). For ``C`` the NLL,
  ``reduction="sum"`` and ``Trace_ELBO`` it equals ``"scale"`` in expectation; with the default
  ``reduction="mean"`` the penalty is :math:`(\lambda - 1)\,\mathrm{NLL}/D` (``D`` values per
  example), i.e. the multiplier acting on the sum is :math:`\lambda D`, which the multiplicative
  update absorbs.

``"auto"`` (default) picks ``"scale"`` for Pyro's ``Trace_ELBO`` (and subclasses such as
``TraceMeanField_ELBO``), ``TraceGraph_ELBO``, ``TraceEnum_ELBO`` and ``RenyiELBO``, and
``"penalty"`` otherwise. In both, :math:`\lambda = 1` is the plain ELBO. ``TraceEnum_ELBO`` with
sites enumerated in the model needs ``"penalty"`` (Pyro requires one common scale there). Pyro's
JIT ELBOs are refused: they compile :math:`\lambda` as a constant.

The constraint ``C``, per data point, is named per site: ``"mse"``, ``"nll"`` or a function of the
site as traced (:mod:`pyro_spvae.infer.geco_constraints`, which also defines ``reduction``).

Multiplier updates
------------------
After each training step ``t`` with batch constraint :math:`C_t`: :math:`C^{ma}_t = \alpha
C^{ma}_{t-1} + (1 - \alpha) C_t` (detached; :math:`C^{ma}_1 = C_1`), :math:`d = C^{ma}_t - \kappa^2`;
after ``warmup`` steps and then every ``update_every`` steps, :math:`\lambda \leftarrow
\mathrm{clamp}(\lambda \cdot \mathrm{clamp}(e^{g}, f_{min}, f_{max}), \lambda_{min}, \lambda_{max})`
with

- ``rule="geco"`` ([GECO] Algorithm 1): :math:`g = \nu d`: :math:`\lambda` grows while the
  constraint is violated (:math:`d > 0`) and shrinks while it holds, without limit but the clamps;
- ``rule="vhp"`` ([VHP]): :math:`g = -\nu f(\lambda, d)\, d`, :math:`f = (1 - H(d))
  \tanh(\tau (1/\lambda - 1)) - H(d)` (``H`` the Heaviside step): :math:`\lambda` grows while the
  constraint is violated and relaxes toward 1 (the plain ELBO) once it holds, from either side.
  The relaxation is monotone for :math:`\nu \tau |d| < 1` and oscillates within a factor
  :math:`e^{\nu |d|}` of 1 otherwise.

Defaults of the per-update factor clamp: ``[0.9, 1.1]`` (``"geco"``) and ``[0.9, 1.05]``
(``"vhp"``). Known pitfalls and their guards: an early blow-up of :math:`\lambda` (``warmup``, the
clamps), updates outside training (``loss`` never updates), a moving average holding a graph (it is
a float), the units of :math:`\kappa` (``reduction``).

Who updates
-----------
With ``auto_update=True`` (default) the multiplier updates at the end of every ``loss_and_grads``
(what :class:`pyro.infer.SVI` calls once per step) and of every ``differentiable_loss`` called with
gradients enabled; ``loss`` never updates. A trainer that splits a step into shards or processes
sets ``auto_update=False``, lets the calls accumulate the constraint, reduces
:meth:`GECO.constraint_stats` across processes (a sum) and calls :meth:`GECO.update` with
:meth:`GECO.constraint_from_stats` once per step (or :meth:`GECO.discard_pending` for a skipped
step). :meth:`GECO.state_dict` / :meth:`GECO.load_state_dict` hold the multiplier, the moving
average and the step count (plain Python numbers, for checkpoints), and :meth:`GECO.metrics` what
to log.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import torch
from pyro import poutine
from pyro.infer import (
    ELBO,
    JitTrace_ELBO,
    JitTraceEnum_ELBO,
    JitTraceGraph_ELBO,
    JitTraceMeanField_ELBO,
    RenyiELBO,
    Trace_ELBO,
    TraceEnum_ELBO,
    TraceGraph_ELBO,
)
from torch import Tensor

from pyro_spvae.infer.geco_constraints import (
    REDUCTIONS,
    SiteConstraint,
    _accumulate,
    _ScaledModel,
    _site_constraints,
    negative_log_likelihood,  # re-exported
    squared_error,  # re-exported
)
from pyro_spvae.validation import (
    check_bool,
    check_choice,
    check_int,
    check_nonnegative_int,
    check_positive_float,
    check_positive_int,
    check_real,
    check_unit_interval,
)

__all__ = ["COUPLINGS", "GECO", "REDUCTIONS", "RULES", "negative_log_likelihood", "squared_error"]

RULES = ("geco", "vhp")
COUPLINGS = ("auto", "scale", "penalty")
_DEFAULT_FACTORS = {"geco": (0.9, 1.1), "vhp": (0.9, 1.05)}
_SCALE_ELBOS = (Trace_ELBO, TraceGraph_ELBO, TraceEnum_ELBO, RenyiELBO)
_JIT_ELBOS = (JitTrace_ELBO, JitTraceEnum_ELBO, JitTraceGraph_ELBO, JitTraceMeanField_ELBO)
_STATE_KEYS = ("lambda", "constraint_ma", "last_constraint", "num_steps")


def _delegated(name: str) -> property:
    def get(self: GECO) -> Any:
        return getattr(self.elbo, name)

    def set_(self: GECO, value: Any) -> None:
        setattr(self.elbo, name, value)

    return property(get, set_, doc=f"The wrapped ELBO's ``{name}``.")


class GECO(ELBO):
    r"""Wrap ``elbo`` with a Lagrange multiplier :math:`\lambda` on a constraint
    :math:`\mathbb{E}[C] \le \kappa^2` (see the module docstring for the maths).

    :param elbo: any :class:`pyro.infer.ELBO` (Pyro's, :class:`~pyro_spvae.infer.TraceIWAE_ELBO`,
        the SPN-aware bounds, ...), except Pyro's JIT ELBOs.
    :param constraint: ``"mse"``, ``"nll"`` or a callable ``(distribution, value) -> Tensor`` for
        the site ``"x"``, or a mapping ``{site name: one of those}``.
    :param kappa: tolerance :math:`\kappa \ge 0` (threshold :math:`\kappa^2`, in the units of
        ``reduction``).
    :param rule: ``"geco"`` or ``"vhp"``.
    :param nu: step size :math:`\nu > 0` of :math:`\log\lambda`.
    :param alpha: moving-average factor in ``[0, 1)`` (0: no averaging).
    :param tau: steepness :math:`\tau > 0` of the ``"vhp"`` relaxation toward 1.
    :param warmup: training steps before the first update (the moving average still runs).
    :param update_every: update every this many steps after the warm-up.
    :param lambda_init: initial :math:`\lambda`; ``lambda_min``, ``lambda_max``: its clamp.
    :param factor_min: lower clamp in ``(0, 1]`` of the per-update factor; ``factor_max`` the upper
        clamp ``>= 1`` (defaults: see the module docstring).
    :param coupling: ``"auto"``, ``"scale"`` or ``"penalty"``.
    :param reduction: ``"mean"`` or ``"sum"`` over the event dims for the built-in constraints.
    :param auto_update: update after each training call (see "Who updates").

    ``loss``, ``loss_and_grads`` and ``differentiable_loss`` return the Lagrangian's loss with the
    current :math:`\lambda` (a sum over the data plate, like the wrapped ELBO); the plain bound is
    ``self.elbo``'s. ``num_particles``, ``max_plate_nesting``, ``vectorize_particles`` and
    ``retain_graph`` are the wrapped ELBO's.
    """

    num_particles = _delegated("num_particles")
    max_plate_nesting = _delegated("max_plate_nesting")
    vectorize_particles = _delegated("vectorize_particles")
    retain_graph = _delegated("retain_graph")

    # ELBO.__init__ is not called on purpose: it would write (and increment) the wrapped ELBO's
    # num_particles/max_plate_nesting/... through the delegating properties above.
    def __init__(self, elbo: ELBO, constraint: str | SiteConstraint | Mapping[str, Any] = "mse",
                 kappa: float = 0.1, *, rule: str = "geco", nu: float = 1.0, alpha: float = 0.99,
                 tau: float = 100.0, warmup: int = 0, update_every: int = 1, lambda_init: float = 1.0,
                 lambda_min: float = 1e-6, lambda_max: float = 1e6, factor_min: float | None = None,
                 factor_max: float | None = None, coupling: str = "auto", reduction: str = "mean",
                 auto_update: bool = True) -> None:
        if not isinstance(elbo, ELBO):
            raise TypeError(f"elbo must be a pyro.infer.ELBO, got {type(elbo).__name__}")
        if isinstance(elbo, _JIT_ELBOS):
            raise ValueError(f"{type(elbo).__name__} compiles the multiplier as a constant; wrap the "
                             "non-JIT ELBO instead")
        self.elbo = elbo
        self.constraints = _site_constraints(constraint, check_choice("reduction", reduction, REDUCTIONS))
        self.kappa = check_real("kappa", kappa, 0.0)
        self.rule = check_choice("rule", rule, RULES)
        self.nu, self.tau = check_positive_float("nu", nu), check_positive_float("tau", tau)
        self.alpha = check_unit_interval("alpha", alpha, closed_low=True)
        self.warmup = check_nonnegative_int("warmup", warmup)
        self.update_every = check_positive_int("update_every", update_every)
        self.lambda_min = check_positive_float("lambda_min", lambda_min)
        self.lambda_max = check_real("lambda_max", lambda_max, self.lambda_min)
        fmin, fmax = _DEFAULT_FACTORS[rule]
        fmin = fmin if factor_min is None else factor_min
        fmax = fmax if factor_max is None else factor_max
        self.factor_min = check_real("factor_min", fmin, 0.0, 1.0, low_open=True)
        self.factor_max = check_real("factor_max", fmax, 1.0)
        check_choice("coupling", coupling, COUPLINGS)
        if coupling == "auto":
            coupling = "scale" if isinstance(elbo, _SCALE_ELBOS) else "penalty"
        self.coupling = coupling
        self.auto_update = check_bool("auto_update", auto_update)
        self.multiplier = check_real("lambda_init", lambda_init, self.lambda_min, self.lambda_max)
        self.constraint_ma: float | None = None
        self.last_constraint: float | None = None
        self.num_steps = 0
        self._pending: dict[str, list] = {}

    @property
    def threshold(self) -> float:
        r""":math:`\kappa^2`."""
        return self.kappa**2

    # ------------------------------------------------------------------ losses
    def _scaled(self, model: Callable, sink: dict | None) -> _ScaledModel:
        return _ScaledModel(model, self.constraints, self.multiplier, sink)

    def _penalty(self, model: Callable, guide: Callable, args: tuple, kwargs: dict, sink: dict | None,
                 grad: bool) -> Tensor:
        r""":math:`\sum_i C_i` (times the sites' scales) from one pass: the guide run, the model
        replayed; differentiable when ``grad``."""
        with torch.set_grad_enabled(grad and torch.is_grad_enabled()):
            guide_trace = poutine.trace(guide).get_trace(*args, **kwargs)
            model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(*args, **kwargs)
            total: Tensor | float = 0.0
            for name, fn in self.constraints.items():
                site = model_trace.nodes.get(name)
                if site is None or site["type"] != "sample":
                    raise ValueError(f"the model has no sample site {name!r} to constrain")
                c = fn(site["fn"], site["value"])
                if sink is not None:
                    _accumulate(sink, name, c)
                total = total + (c * site["scale"]).sum()
        return torch.as_tensor(total)

    def _trained(self, sink: dict[str, list]) -> None:
        """After a training call: check every site was measured, queue the values, maybe update."""
        missing = [n for n in self.constraints if n not in sink]
        if missing:
            raise ValueError(f"{type(self.elbo).__name__} never ran the constrained sites {missing} of the "
                             "model; use GECO(..., coupling='penalty')")
        for name, (total, count) in sink.items():
            pending_total, pending_count = self._pending.get(name, (0.0, 0))
            self._pending[name] = [pending_total + total, pending_count + count]
        if self.auto_update:
            self.step()

    def loss_and_grads(self, model: Callable, guide: Callable, *args: Any, **kwargs: Any) -> float:
        """Back-propagate the Lagrangian's loss with the current multiplier, return it as a float,
        then (``auto_update``) update the multiplier."""
        lam, sink = self.multiplier, {}
        if self.coupling == "scale":
            loss = float(self.elbo.loss_and_grads(self._scaled(model, sink), guide, *args, **kwargs))
        else:
            loss = float(self.elbo.loss_and_grads(model, guide, *args, **kwargs))
            penalty = (lam - 1.0) * self._penalty(model, guide, args, kwargs, sink, grad=lam != 1.0)
            if penalty.requires_grad:
                penalty.backward(retain_graph=self.retain_graph)
            loss += float(penalty.detach())
        self._trained(sink)
        return loss

    def differentiable_loss(self, model: Callable, guide: Callable, *args: Any, **kwargs: Any) -> Tensor:
        """The Lagrangian's loss as a differentiable tensor; with gradients enabled (a training call)
        the constraint is recorded and (``auto_update``) the multiplier updated after the call."""
        lam, training = self.multiplier, torch.is_grad_enabled()
        sink = {} if training else None
        if self.coupling == "scale":
            loss = self.elbo.differentiable_loss(self._scaled(model, sink), guide, *args, **kwargs)
        else:
            loss = self.elbo.differentiable_loss(model, guide, *args, **kwargs)
            loss = loss + (lam - 1.0) * self._penalty(model, guide, args, kwargs, sink, grad=lam != 1.0)
        if sink is not None:
            self._trained(sink)
        return loss

    def loss(self, model: Callable, guide: Callable, *args: Any, **kwargs: Any) -> float:
        """The Lagrangian's loss with the current multiplier (no gradients, no update)."""
        if self.coupling == "scale":
            return float(self.elbo.loss(self._scaled(model, None), guide, *args, **kwargs))
        loss = float(self.elbo.loss(model, guide, *args, **kwargs))
        if self.multiplier != 1.0:
            with torch.no_grad():
                penalty = self._penalty(model, guide, args, kwargs, None, grad=False)
            loss += (self.multiplier - 1.0) * float(penalty)
        return loss

    def _get_trace(self, model: Callable, guide: Callable, args: tuple, kwargs: dict):
        """The wrapped ELBO's trace pair, of the scaled model with ``coupling="scale"``."""
        model = self._scaled(model, None) if self.coupling == "scale" else model
        return self.elbo._get_trace(model, guide, args, kwargs)

    # ------------------------------------------------------------------ multiplier
    def constraint_stats(self) -> Tensor:
        """Constraint values accumulated since the last update: ``(S, 2)`` float64, one row
        ``[sum, count]`` per constrained site (in :attr:`constraints` order), to be summed across
        processes before :meth:`constraint_from_stats`."""
        rows = [[float(self._pending[n][0]), float(self._pending[n][1])] if n in self._pending else [0.0, 0.0]
                for n in self.constraints]
        return torch.tensor(rows, dtype=torch.float64)

    @staticmethod
    def constraint_from_stats(stats: Tensor) -> float:
        """``C``: the sum over sites of their mean value, from :meth:`constraint_stats` rows."""
        if not isinstance(stats, Tensor) or stats.dim() != 2 or stats.shape[1] != 2:
            raise ValueError("stats must be a (S, 2) tensor of [sum, count] rows (GECO.constraint_stats)")
        if bool((stats[:, 1] <= 0).any()):
            raise ValueError("no constraint value was measured for some site since the last update")
        return float((stats[:, 0] / stats[:, 1]).sum())

    def discard_pending(self) -> None:
        """Forget the constraint values accumulated since the last update (e.g. a skipped step)."""
        self._pending = {}

    def step(self) -> float:
        """:meth:`update` with the constraint accumulated by the training calls since the last one."""
        return self.update(self.constraint_from_stats(self.constraint_stats()))

    def update(self, constraint: float) -> float:
        """One training step's update with the batch constraint value ``C`` (module docstring):
        moving average, then, past the warm-up and on the update interval, the rule with its
        clamps. Clears the accumulated values.

        :returns: the new multiplier.
        """
        c = check_real("constraint", constraint)
        self._pending = {}
        self.num_steps += 1
        self.last_constraint = c
        ma = self.constraint_ma
        self.constraint_ma = c if ma is None else self.alpha * ma + (1.0 - self.alpha) * c
        if self.num_steps > self.warmup and (self.num_steps - self.warmup) % self.update_every == 0:
            self.multiplier = self._next_multiplier(self.constraint_ma - self.threshold)
        return self.multiplier

    def _next_multiplier(self, d: float) -> float:
        lam = self.multiplier
        if self.rule == "geco":
            log_factor = self.nu * d
        else:
            h = 1.0 if d > 0 else 0.0
            f = (1.0 - h) * math.tanh(self.tau * (1.0 / lam - 1.0)) - h
            log_factor = -self.nu * f * d
        log_factor = min(max(log_factor, math.log(self.factor_min)), math.log(self.factor_max))
        return min(max(lam * math.exp(log_factor), self.lambda_min), self.lambda_max)

    # ------------------------------------------------------------------ checkpoints and logging
    def state_dict(self) -> dict[str, Any]:
        """``{"lambda", "constraint_ma", "last_constraint", "num_steps"}`` as plain Python numbers
        (``None`` before the first step), for ``torch.save``/``weights_only`` checkpoints."""
        return {"lambda": self.multiplier, "constraint_ma": self.constraint_ma,
                "last_constraint": self.last_constraint, "num_steps": self.num_steps}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`'s values (and drop accumulated values) for an exact resume.

        :raises TypeError: / :raises ValueError: for a missing key or a bad value.
        """
        if not isinstance(state, Mapping):
            raise TypeError(f"state must be a mapping, got {type(state).__name__}")
        missing = [k for k in _STATE_KEYS if k not in state]
        if missing:
            raise ValueError(f"GECO state lacks {missing}")
        lam = check_real("lambda", state["lambda"], self.lambda_min, self.lambda_max)
        ma, last = (None if state[k] is None else check_real(k, state[k])
                    for k in ("constraint_ma", "last_constraint"))
        self.num_steps = check_int("num_steps", state["num_steps"], 0)
        self.multiplier, self.constraint_ma, self.last_constraint = lam, ma, last
        self._pending = {}

    def metrics(self) -> dict[str, float]:
        """``lambda``, the last batch ``constraint``, its moving average ``constraint_ma`` and
        ``violation`` = ``constraint_ma - kappa^2`` (NaN before the first step)."""
        nan = float("nan")
        ma = nan if self.constraint_ma is None else self.constraint_ma
        last = nan if self.last_constraint is None else self.last_constraint
        return {"lambda": self.multiplier, "constraint": last, "constraint_ma": ma,
                "violation": ma - self.threshold}
