"""SPN-aware variational bounds for sum-product networks of VAEs (SPVAE).

Tan & Peharz, "Hierarchical Decompositional Mixtures of Variational Autoencoders", ICML 2019, §3
(the SPN-aware bounds are derived in ``docs/spvae.md``). A sum-product network (SPN) is a
multilinear polynomial with non-negative coefficients in its leaf values, and the leaves under one
product have disjoint scopes, so every monomial (induced tree) uses each leaf at most once:

.. math::

    \\mathrm{SPN}(v) = \\sum_t c_t \\prod_{l \\in t} v_l, \\qquad c_t \\ge 0.        \\qquad (1)

With VAE leaves, :math:`v_l = p_l(x_{R_l}) = \\int p(x_{R_l} | z_l) p(z_l) dz_l` is intractable.
With a leaf-wise guide :math:`q(z_l | x_{R_l})` and importance weights
:math:`w_{lk} = p(x_{R_l}, z_{lk}) / q(z_{lk} | x_{R_l})`, :math:`z_{lk} \\sim q` independent
over leaves ``l`` and samples ``k``, this module offers three lower bounds on
:math:`\\log p(x) = \\log \\mathrm{SPN}(p_l(x_{R_l}))`:

(a) :class:`SPNLeafELBO` -- leaf ELBOs in place of the leaf log-densities,
    :math:`\\log \\mathrm{SPN}(\\exp \\hat{\\mathcal{L}}_l)` with
    :math:`\\hat{\\mathcal{L}}_l = \\frac1K \\sum_k \\log w_{lk}`.  With the exact expectation it is
    a deterministic lower bound (Jensen per leaf, and (1) is monotone); its Monte-Carlo version is
    never above (b) for the same samples (AM-GM per leaf + monotonicity), hence a lower bound in
    expectation. Unlike (b) and (c) it does NOT tighten with ``K``: ``a -> log SPN(exp a)`` is
    convex (a log-sum-exp of sums of leaf values), so averaging more samples per leaf moves its
    expectation DOWN towards the exact-expectation version; at ``K = 1`` (a), (b), (c) coincide.
(b) :class:`SPNLeafIWELBO` -- leaf-averaged importance weights (what the paper trains with,
    ``K = 5``, and evaluates with, ``K = 5000``):
    :math:`\\log \\mathrm{SPN}(\\bar w_l)`, :math:`\\bar w_l = \\frac1K \\sum_k w_{lk}`.
    Independence across leaves and (1) make :math:`\\mathrm{SPN}(\\bar w)` unbiased for
    :math:`p(x)`, so by Jensen the bound is below :math:`\\log p(x)` in expectation; it is
    non-decreasing in ``K`` in expectation (each :math:`\\bar w_l` over ``K + 1`` samples is the
    average of its leave-one-out means, and (1) is multilinear).
(c) :class:`SPNRootIWELBO` -- root-averaged weights:
    :math:`\\log \\frac1K \\sum_k \\mathrm{SPN}(w_{\\cdot k})`, an IWAE bound whose ``K``
    estimators are each unbiased.  (b) is the conditional expectation of (c) given the unordered
    per-leaf sample sets (average (c) over independent per-leaf permutations of ``k``), so in
    expectation (c) <= (b) <= log p(x).

When the guide is the exact leaf posterior, every :math:`w_{lk} = p_l(x_{R_l})` and all three
bounds equal :math:`\\log p(x)` for every ``K``. The plain :class:`pyro.infer.Trace_ELBO` of the
equivalent Pyro model (all leaf latents drawn from the prior, ``x`` from the SPN of decoders)
subtracts the KL of *every* leaf, including leaves outside the selected induced tree; it is below
(b) in the exact-posterior case (strictly, as soon as the SPN has a sum node with two live
children), but there is no ordering between it and (a) or (b) in general.

Protocol
--------
The estimators know no particular model.  Any SPN-of-VAEs model/guide pair works that follows the
leaf protocol of :mod:`pyro_spvae.infer.spn_leaves` (``model.leaf_log_joint``,
``model.spn_log_value``, ``guide.leaf_posterior`` and optionally ``guide.leaf_rsample``), which
:class:`SPNLeafModel` and :class:`SPNLeafGuide` declare.  All losses are sums over the batch, like
:class:`pyro.infer.Trace_ELBO`. :func:`spn_log_likelihood` (:mod:`pyro_spvae.infer.spn_likelihood`)
streams bounds (b) and (c) over thousands of samples for evaluation.

Pyro's ELBO contract
--------------------
The bounds are :class:`pyro.infer.ELBO` s whose traces record the leaf-level quantities: the guide
trace holds the site ``"spn_leaf_z"``, a :class:`~pyro.distributions.Delta` at the leaf latents
``z`` ``(K, B, L, z_dim)`` whose ``log_density`` is :math:`\\log q(z_l | x_{R_l})` ``(K, B, L)``;
the model trace holds the auxiliary factor ``"spn_leaf_log_joint"``, a
:class:`~pyro.distributions.Unit` with ``log_factor`` :math:`\\log p(x_{R_l}, z_l)`. So
``model_trace.log_prob_sum() - guide_trace.log_prob_sum()`` is the sum of the leaf log-weights.
:meth:`_SPNBound._get_trace` returns the pair of one particle (``K = 1``); with
``vectorize_particles=True`` (default) :meth:`_SPNBound._get_vectorized_trace` asks the guide for
all ``K`` draws in one call (``leaf_rsample(x, K)`` or ``leaf_posterior(x).rsample((K,))``) instead
of wrapping the pair in Pyro's particle plate, which the leaf methods do not see. The base class's
:meth:`~pyro.infer.ELBO._get_traces` then yields one pair of ``K`` particles, or ``K`` pairs of one.
"""

from __future__ import annotations

import math
from abc import abstractmethod
from typing import Any

import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import torch
from pyro.infer import ELBO
from pyro.util import warn_if_nan

from pyro_spvae.infer.spn_leaves import (
    SPNLeafGuide,
    SPNLeafModel,
    _check_protocol,
    _draw_leaves,
    _leaf_log_joint,
    spn_leaf_log_weights,
)
from pyro_spvae.infer.spn_likelihood import (  # re-exported
    LEAF_PASS_BUDGET_FRACTION,  # noqa: F401
    leaf_pass_shape,
    spn_log_likelihood,
)
from pyro_spvae.validation import check_bool, check_positive_int

__all__ = [
    "SPNLeafELBO",
    "SPNLeafIWELBO",
    "SPNRootIWELBO",
    "leaf_pass_shape",
    "spn_leaf_log_weights",
    "spn_log_likelihood",
    "SPNLeafModel",
    "SPNLeafGuide",
]

#: Guide-trace site of the leaf latents (a ``Delta`` whose ``log_density`` is ``log q``).
LEAF_LATENT_SITE = "spn_leaf_z"
#: Model-trace factor of the leaf log-joints ``log p(x_{R_l}, z_l)``.
LEAF_JOINT_SITE = "spn_leaf_log_joint"


def _x_from_args(args: tuple, kwargs: dict) -> torch.Tensor:
    if args:
        if len(args) != 1 or kwargs:
            raise TypeError("SPN-aware bounds take exactly one data argument x (model(x), guide(x))")
        return args[0]
    if set(kwargs) == {"x"}:
        return kwargs["x"]
    raise TypeError("SPN-aware bounds take exactly one data argument x (model(x), guide(x))")


def _leaf_guide(guide: Any, x: torch.Tensor, num_samples: int) -> torch.Tensor:
    z, log_q = _draw_leaves(guide, x, num_samples)
    # validate_args=False: a NaN log q must reach warn_if_nan (and the trainer's guard), not raise here
    leaf = dist.Delta(z, log_density=log_q, event_dim=1, validate_args=False)
    return pyro.sample(LEAF_LATENT_SITE, leaf)


def _leaf_model(model: Any, x: torch.Tensor, z: torch.Tensor, shape: torch.Size) -> None:
    log_p = _leaf_log_joint(model, x, z, shape)
    factor = dist.Unit(log_p, validate_args=False)  # pyro.factor, without its argument check
    pyro.sample(LEAF_JOINT_SITE, factor, obs=factor.sample(), infer={"is_auxiliary": True})


def _logmeanexp(t: torch.Tensor, dim: int) -> torch.Tensor:
    return torch.logsumexp(t, dim=dim) - math.log(t.shape[dim])


class _SPNBound(ELBO):
    """Shared plumbing: Pyro's trace hooks, ``loss``, ``loss_and_grads`` and ``differentiable_loss``
    from a per-example bound ``(B,)`` that :meth:`_combine` forms from the leaf log-weights.

    :param num_particles: ``K`` samples per leaf.
    :param vectorize_particles: draw the ``K`` samples in one call (default) or one at a time.
    """

    def __init__(self, num_particles: int = 1, vectorize_particles: bool = True) -> None:
        super().__init__(
            num_particles=check_positive_int("num_particles", num_particles),
            max_plate_nesting=1,
            vectorize_particles=check_bool("vectorize_particles", vectorize_particles),
        )

    @abstractmethod
    def _combine(self, model: Any, log_w: torch.Tensor) -> torch.Tensor:
        """The bound per example ``(B,)`` from the leaf log-weights ``(K, B, L)``."""
        raise NotImplementedError

    def _leaf_traces(self, model: Any, guide: Any, args: tuple, kwargs: dict, num_samples: int):
        x = _x_from_args(args, kwargs)
        _check_protocol(model, guide)
        guide_trace = poutine.trace(_leaf_guide).get_trace(guide, x, num_samples)
        site = guide_trace.nodes[LEAF_LATENT_SITE]
        shape = site["fn"].log_density.shape
        model_trace = poutine.trace(_leaf_model).get_trace(model, x, site["value"], shape)
        return model_trace, guide_trace

    def _get_trace(self, model: Any, guide: Any, args: tuple, kwargs: dict):
        """The ``(model_trace, guide_trace)`` pair of one particle (see the module docstring)."""
        return self._leaf_traces(model, guide, args, kwargs, 1)

    def _get_vectorized_trace(self, model: Any, guide: Any, args: tuple, kwargs: dict):
        """The pair of all ``num_particles`` particles, drawn by the guide in one call."""
        return self._leaf_traces(model, guide, args, kwargs, self.num_particles)

    def leaf_log_weights(self, model: Any, guide: Any, *args: Any, **kwargs: Any) -> torch.Tensor:
        """Leaf log-weights ``(K, B, L)`` of one draw of the particles (through :meth:`_get_traces`).

        The ``Delta``'s log-density at its own atom and the ``Unit``'s factor are read directly:
        they equal the sites' ``log_prob`` without its ``z == v`` test.
        """
        parts = [
            model_trace.nodes[LEAF_JOINT_SITE]["fn"].log_factor
            - guide_trace.nodes[LEAF_LATENT_SITE]["fn"].log_density
            for model_trace, guide_trace in self._get_traces(model, guide, args, kwargs)
        ]
        return parts[0] if len(parts) == 1 else torch.cat(parts, 0)

    def per_example_bound(self, model: Any, guide: Any, x: torch.Tensor) -> torch.Tensor:
        """The stochastic bound for each example, shape ``(B,)`` (differentiable)."""
        return self._combine(model, self.leaf_log_weights(model, guide, x))

    def differentiable_loss(self, model: Any, guide: Any, *args: Any, **kwargs: Any) -> torch.Tensor:
        """Negative bound summed over the batch, as a differentiable scalar tensor."""
        loss = -self._combine(model, self.leaf_log_weights(model, guide, *args, **kwargs)).sum()
        warn_if_nan(loss, "loss")
        return loss

    def loss(self, model: Any, guide: Any, *args: Any, **kwargs: Any) -> float:
        """Negative bound summed over the batch, as a float (no gradients)."""
        with torch.no_grad():
            loss = -float(self._combine(model, self.leaf_log_weights(model, guide, *args, **kwargs)).sum())
        warn_if_nan(loss, "loss")
        return loss

    def loss_and_grads(self, model: Any, guide: Any, *args: Any, **kwargs: Any) -> float:
        """Negative bound summed over the batch; back-propagates it into all parameters (with
        ``retain_graph=self.retain_graph``, as :class:`~pyro.infer.Trace_ELBO`)."""
        loss = -self._combine(model, self.leaf_log_weights(model, guide, *args, **kwargs)).sum()
        if loss.requires_grad:
            loss.backward(retain_graph=self.retain_graph)
        loss = float(loss.detach())
        warn_if_nan(loss, "loss")
        return loss


class SPNLeafELBO(_SPNBound):
    """Bound (a): leaf ELBOs pushed through the SPN, :math:`\\log\\mathrm{SPN}(\\exp\\hat{\\mathcal{L}}_l)`.

    :math:`\\hat{\\mathcal{L}}_l = \\frac1K\\sum_k \\log w_{lk}` (Tan & Peharz 2019, §3; see
    ``docs/spvae.md``). For the same samples it never exceeds :class:`SPNLeafIWELBO`.

    :param num_particles: ``K`` samples per leaf for the Monte-Carlo leaf ELBO.
    :param vectorize_particles: draw the ``K`` samples in one call (default) or one at a time.
    """

    def _combine(self, model: Any, log_w: torch.Tensor) -> torch.Tensor:
        return model.spn_log_value(log_w.mean(0))


class SPNLeafIWELBO(_SPNBound):
    """Bound (b): leaf-averaged importance weights, :math:`\\log\\mathrm{SPN}(\\frac1K\\sum_k w_{lk})`.

    The SPVAE training objective (Tan & Peharz 2019 train with ``K = 5``); tends to
    :math:`\\log p(x)` as ``K`` grows. For evaluation with thousands of samples use
    :func:`spn_log_likelihood`, which streams over samples.

    :param num_particles: ``K`` independent samples per leaf.
    :param vectorize_particles: draw the ``K`` samples in one call (default) or one at a time.
    """

    def __init__(self, num_particles: int = 5, vectorize_particles: bool = True) -> None:
        super().__init__(num_particles, vectorize_particles)

    def _combine(self, model: Any, log_w: torch.Tensor) -> torch.Tensor:
        return model.spn_log_value(_logmeanexp(log_w, 0))


class SPNRootIWELBO(_SPNBound):
    """Bound (c): root-averaged importance weights, :math:`\\log\\frac1K\\sum_k\\mathrm{SPN}(w_{\\cdot k})`.

    Each sample ``k`` gives one unbiased estimate :math:`\\mathrm{SPN}(w_{\\cdot k})` of
    :math:`p(x)`; this is IWAE over those ``K`` estimates. Looser than :class:`SPNLeafIWELBO` in
    expectation (see the module docstring).

    :param num_particles: ``K`` samples (one per leaf per sample).
    :param vectorize_particles: draw the ``K`` samples in one call (default) or one at a time.
    """

    def __init__(self, num_particles: int = 5, vectorize_particles: bool = True) -> None:
        super().__init__(num_particles, vectorize_particles)

    def _combine(self, model: Any, log_w: torch.Tensor) -> torch.Tensor:
        return _logmeanexp(model.spn_log_value(log_w), 0)
