r"""The controlled-capacity objective of JointVAE (Dupont 2018) as a Pyro ELBO, and the annealing
schedules of capacities and Gumbel-softmax temperatures.

JointVAE (Dupont 2018, "Learning Disentangled Joint Continuous and Discrete Representations",
NeurIPS, building on the capacity of Burgess et al. 2018, "Understanding disentangling in
beta-VAE") replaces the KL terms of the ELBO by their distances to capacities raised during training:

.. math:: \mathcal{J}(t) = -\mathbb{E}_q \log p(x \mid z, c)
          + \gamma \,\big|\mathrm{KL}(q(z|x) \,\|\, p(z)) - C_z(t)\big|
          + \gamma \,\big|\mathrm{KL}(q(c|x) \,\|\, p(c)) - C_c(t)\big|

with each KL the mean over the batch (the absolute value is taken of the batch-mean KL, as in
JointVAE, not of each data point's KL), ``C(t)`` raised linearly (:class:`LinearSchedule`) and
the discrete capacity capped at the largest KL a categorical code can reach,
``-log min_k p_k`` (``log n`` for a uniform ``n``-way code). The paper's MNIST setting:
capacities from 0 to 5 nats over 25 000 iterations, ``gamma = 30``, Gumbel-softmax temperature 0.67.

:class:`CapacityELBO` works for any model and reparameterised guide: each latent site named in
``capacities`` gets the capacity term, every other latent site its plain KL. KLs are analytic
where ``torch.distributions.kl_divergence`` knows the pair (``Normal``/``Normal``, and the
relaxed code of :class:`~pyro_spvae.models.MIVAE`, whose registered KL is the categorical one, as in
JointVAE), Monte Carlo ``log q - log p`` otherwise. As Pyro's ELBOs, the loss is a sum over the
data plate: per site ``gamma * N * |KL_bar - C(t)|`` with ``KL_bar`` the mean KL per data point
and ``N`` the plate's full size.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import NamedTuple

import torch
from pyro.infer.elbo import ELBO
from pyro.infer.enum import get_importance_trace
from pyro.util import warn_if_nan
from torch import Tensor
from torch.distributions import Categorical, OneHotCategorical, RelaxedOneHotCategorical, kl_divergence

from pyro_spvae.infer.particles import is_latent
from pyro_spvae.validation import check_bool, check_nonnegative_int, check_positive_int, check_real

__all__ = ["CapacityELBO", "CapacityTerms", "ExponentialSchedule", "LinearSchedule"]


@dataclass(frozen=True)
class LinearSchedule:
    """``value(t) = start + (end - start) * min(t / num_steps, 1)``: a linear ramp, then constant
    (JointVAE's capacities, Dupont 2018).

    :param start: value at step 0. :param end: value from ``num_steps`` on.
    :param num_steps: length of the ramp (``0``: ``end`` from the start).
    """

    start: float = 0.0
    end: float = 5.0
    num_steps: int = 25000

    def __post_init__(self) -> None:
        check_real("start", self.start)
        check_real("end", self.end)
        check_nonnegative_int("num_steps", self.num_steps)

    def __call__(self, step: int) -> float:
        step = check_nonnegative_int("step", step)
        frac = 1.0 if self.num_steps == 0 else min(step / self.num_steps, 1.0)
        return self.start + (self.end - self.start) * frac


@dataclass(frozen=True)
class ExponentialSchedule:
    """``value(t) = max(end, start * exp(-rate * t))``: the Gumbel-softmax temperature annealing of
    Jang, Gu & Poole (2017), e.g. from 1 down to 0.3 (Serdega & Kim 2020's final temperature).

    :param start: value at step 0 (``> 0``). :param end: floor (``> 0``).
    :param rate: decay per step (``>= 0``).
    """

    start: float = 1.0
    end: float = 0.3
    rate: float = 1e-4

    def __post_init__(self) -> None:
        check_real("start", self.start, 0.0, low_open=True)
        check_real("end", self.end, 0.0, low_open=True)
        check_real("rate", self.rate, 0.0)

    def __call__(self, step: int) -> float:
        step = check_nonnegative_int("step", step)
        return max(self.end, self.start * math.exp(-self.rate * step))


class CapacityTerms(NamedTuple):
    """One evaluation of the capacity objective (tensors carry gradients unless computed by
    :meth:`CapacityELBO.compute_terms`).

    :ivar loss: the objective (scalar, sum over the data plate).
    :ivar log_likelihood: ``E_q log p(x | latents)`` summed over the data (scalar).
    :ivar kl: site -> mean KL per data point (scalar, nats).
    :ivar capacity: site -> capacity ``C(t)`` used (capped sites included); absent for plain KLs.
    """

    loss: Tensor
    log_likelihood: Tensor
    kl: dict[str, Tensor]
    capacity: dict[str, float]


def _num_points(site: dict, data_plate: str) -> int:
    """The full size of the site's data plate (1 for a site outside it)."""
    for frame in site["cond_indep_stack"]:
        if frame.name == data_plate:
            return int(frame.full_size if frame.full_size is not None else frame.size)
    return 1


def _max_categorical_kl(fn) -> float | None:
    """``-log min_k p_k``, the largest ``KL(q || p)`` for a categorical prior ``p``, else ``None``."""
    if isinstance(fn, (Categorical, OneHotCategorical, RelaxedOneHotCategorical)):
        return float(-fn.logits.detach().min(-1).values.max())
    return None


def _site_kl(guide_site: dict, model_site: dict) -> Tensor:
    """``KL(q || p)`` per batch element: analytic when registered, else ``log q(v) - log p(v)``."""
    try:
        return kl_divergence(guide_site["fn"], model_site["fn"])
    except NotImplementedError:
        return guide_site["log_prob"] - model_site["log_prob"]


class CapacityELBO(ELBO):
    r"""JointVAE's capacity objective (see the module docstring) for the latent sites named in
    ``capacities``.

    :param capacities: site name -> schedule ``step -> C`` (e.g. :class:`LinearSchedule`); the
        capacity of a categorical site is capped at ``-log min_k p_k``.
    :param gamma: weight of the capacity terms (JointVAE: 30).
    :param num_particles: samples of the guide per step.
    :param max_plate_nesting: plates of the model (``inf``: guessed, as Pyro's ELBOs).
    :param vectorize_particles: draw the particles in one vectorised pass.
    :param data_plate: the name of the plate over data points.
    :param auto_step: advance :attr:`num_steps` by one in each :meth:`loss_and_grads` (one SVI
        step); with ``False`` set it by hand.
    :param retain_graph: Pyro's ``retain_graph``.

    :attr:`num_steps` is the step ``t`` of the schedules. Every latent guide site must be
    reparameterised (use the relaxed code of :class:`~pyro_spvae.models.MIVAE`); ``ValueError``
    otherwise.
    """

    def __init__(self, capacities: Mapping[str, Callable[[int], float]], gamma: float = 30.0,
                 num_particles: int = 1, max_plate_nesting: float = float("inf"),
                 vectorize_particles: bool = False, data_plate: str = "data", auto_step: bool = True,
                 retain_graph: bool | None = None) -> None:
        if not isinstance(capacities, Mapping) or not all(callable(s) for s in capacities.values()):
            raise TypeError("capacities must map site names to schedules step -> capacity")
        if not isinstance(data_plate, str):
            raise TypeError(f"data_plate must be a plate name (str), got {type(data_plate).__name__}")
        super().__init__(num_particles=check_positive_int("num_particles", num_particles),
                         max_plate_nesting=max_plate_nesting,
                         vectorize_particles=check_bool("vectorize_particles", vectorize_particles),
                         retain_graph=retain_graph)
        self.capacities = dict(capacities)
        self.gamma = check_real("gamma", gamma, 0.0)
        self.data_plate = data_plate
        self.auto_step = check_bool("auto_step", auto_step)
        self.num_steps = 0

    def _get_trace(self, model, guide, args: tuple, kwargs: dict):
        """One ``(model_trace, guide_trace)`` pair with log-probabilities (Pyro's ``"flat"`` importance
        trace, as :class:`~pyro.infer.Trace_ELBO`)."""
        model_trace, guide_trace = get_importance_trace("flat", self.max_plate_nesting, model, guide, args,
                                                        kwargs)
        for name, site in guide_trace.nodes.items():
            if is_latent(site) and not site["fn"].has_rsample:
                raise ValueError(f"CapacityELBO needs reparameterised guide sites; '{name}' has no rsample "
                                 "(for a categorical code use MIVAE's relaxed code)")
        return model_trace, guide_trace

    def _terms(self, model, guide, args: tuple, kwargs: dict) -> CapacityTerms:
        log_lik: Tensor | float = 0.0
        kl_sums: dict[str, Tensor] = {}
        sizes: dict[str, int] = {}
        caps: dict[str, float | None] = {}
        for model_trace, guide_trace in self._get_traces(model, guide, args, kwargs):
            for site in model_trace.nodes.values():
                if site["type"] == "sample" and site["is_observed"]:
                    log_lik = log_lik + (site["log_prob"] * site["scale"]).sum()
            for name, site in guide_trace.nodes.items():
                if not is_latent(site):
                    continue
                kl = (_site_kl(site, model_trace.nodes[name]) * site["scale"]).sum()
                kl_sums[name] = kl_sums.get(name, 0.0) + kl
                sizes[name] = _num_points(site, self.data_plate)
                caps[name] = _max_categorical_kl(model_trace.nodes[name]["fn"])
        K = self.num_particles
        log_lik = torch.as_tensor(log_lik) / K
        loss = -log_lik
        kl, capacity = {}, {}
        for name, total in kl_sums.items():
            kl[name] = total / (K * sizes[name])
            if name in self.capacities:
                c = float(self.capacities[name](self.num_steps))
                capacity[name] = c if caps[name] is None else min(c, caps[name])
                loss = loss + self.gamma * sizes[name] * (kl[name] - capacity[name]).abs()
            else:
                loss = loss + sizes[name] * kl[name]
        return CapacityTerms(loss, log_lik, kl, capacity)

    def compute_terms(self, model, guide, *args, **kwargs) -> CapacityTerms:
        """The objective and its parts at the current step, without gradients (for monitoring)."""
        with torch.no_grad():
            return self._terms(model, guide, args, kwargs)

    def loss(self, model, guide, *args, **kwargs) -> float:
        """:returns: the objective at step :attr:`num_steps` (float, no gradients)."""
        loss = float(self.compute_terms(model, guide, *args, **kwargs).loss)
        warn_if_nan(loss, "loss")
        return loss

    def differentiable_loss(self, model, guide, *args, **kwargs) -> Tensor:
        """:returns: the objective at step :attr:`num_steps` as a differentiable tensor."""
        loss = self._terms(model, guide, args, kwargs).loss
        warn_if_nan(loss, "loss")
        return loss

    def loss_and_grads(self, model, guide, *args, **kwargs) -> float:
        """Back-propagate the objective (``retain_graph=self.retain_graph``), advance the step when
        ``auto_step`` and return the loss."""
        loss = self.differentiable_loss(model, guide, *args, **kwargs)
        if loss.requires_grad:
            loss.backward(retain_graph=self.retain_graph)
        if self.auto_step:
            self.num_steps += 1
        return float(loss.detach())
