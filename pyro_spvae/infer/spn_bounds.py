"""SPN-aware variational bounds for sum-product networks of VAEs (SPVAE).

Tan & Peharz, "Hierarchical Decompositional Mixtures of Variational Autoencoders", ICML 2019
(``DESIGN.md`` §3). A sum-product network (SPN) is a multilinear polynomial with non-negative
coefficients in its leaf values, and the leaves under one product have disjoint scopes, so every
monomial (induced tree) uses each leaf at most once:

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
The estimators know no particular model.  Any SPN-of-VAEs model/guide pair works when

- ``model.leaf_log_joint(x, z) -> Tensor`` returns :math:`\\log p(x_{R_l}, z_l)` of shape
  ``(..., B, L)`` for latents ``z`` of shape ``(..., B, L, z_dim)`` (missing pixels of ``x``
  marginalised, i.e. they contribute nothing);
- ``model.spn_log_value(leaf_log_values) -> Tensor`` pushes leaf log-values of shape
  ``(..., B, L)`` through the network and returns the log root value ``(..., B)``;
- ``guide.leaf_posterior(x) -> Distribution`` returns :math:`q(z_l | x_{R_l})` with batch shape
  ``(B, L)``, event shape ``(z_dim,)`` and ``rsample``;
- optionally ``guide.leaf_rsample(x, K) -> (z, log_q)``, a fast path returning ``K``
  reparameterised draws ``(K, B, L, z_dim)`` and ``log q`` ``(K, B, L)`` equal in value and
  gradient to ``leaf_posterior(x).log_prob(z)`` (e.g. from the standard-normal noise of a
  location-scale family); it is used when present.

Model and guide methods that read parameters should be :func:`pyro.nn.pyro_method` s of
:class:`~pyro.nn.PyroModule` s (or call :func:`pyro.module`) so that :class:`pyro.infer.SVI`
finds the parameters.  All losses are sums over the batch, like :class:`pyro.infer.Trace_ELBO`.
"""

from __future__ import annotations

import math
from typing import Any, Protocol, runtime_checkable

import torch
from pyro.infer import ELBO

from pyro_spvae.infer.importance import check_int

__all__ = [
    "SPNLeafELBO",
    "SPNLeafIWELBO",
    "SPNRootIWELBO",
    "spn_leaf_log_weights",
    "spn_log_likelihood",
    "SPNLeafModel",
    "SPNLeafGuide",
]


@runtime_checkable
class SPNLeafModel(Protocol):
    """A sum-product network of VAE leaves, as the SPN-aware bounds see it (see the module docstring).

    ``isinstance(model, SPNLeafModel)`` is how callers (the evaluation API, the trainer) choose an
    SPN-aware estimator instead of a generic one.
    """

    def leaf_log_joint(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """:math:`\\log p(x_{R_l}, z_l)`, ``(..., B, L)`` for ``z`` of shape ``(..., B, L, z_dim)``."""
        ...

    def spn_log_value(self, leaf_log_values: torch.Tensor) -> torch.Tensor:
        """Log root value ``(..., B)`` for leaf log-values ``(..., B, L)``."""
        ...


@runtime_checkable
class SPNLeafGuide(Protocol):
    """A guide with a leaf-wise posterior :math:`q(z_l | x_{R_l})` (see the module docstring)."""

    def leaf_posterior(self, x: torch.Tensor) -> Any:
        """A distribution with batch shape ``(B, L)``, event shape ``(z_dim,)`` and ``rsample``."""
        ...

_MODEL_METHODS = ("leaf_log_joint", "spn_log_value")
_GUIDE_METHODS = ("leaf_posterior",)


def _check_protocol(model: Any, guide: Any) -> None:
    for name in _MODEL_METHODS:
        if not callable(getattr(model, name, None)):
            raise TypeError(
                f"SPN-aware bounds need model.{name}(...); {type(model).__name__} has none "
                "(see pyro_spvae.infer.spn_bounds for the protocol)"
            )
    for name in _GUIDE_METHODS:
        if not callable(getattr(guide, name, None)):
            raise TypeError(
                f"SPN-aware bounds need guide.{name}(x); {type(guide).__name__} has none "
                "(see pyro_spvae.infer.spn_bounds for the protocol)"
            )


def _x_from_args(args: tuple, kwargs: dict) -> torch.Tensor:
    if args:
        if len(args) != 1 or kwargs:
            raise TypeError("SPN-aware bounds take exactly one data argument x (model(x), guide(x))")
        return args[0]
    if set(kwargs) == {"x"}:
        return kwargs["x"]
    raise TypeError("SPN-aware bounds take exactly one data argument x (model(x), guide(x))")


def spn_leaf_log_weights(model: Any, guide: Any, x: torch.Tensor, num_samples: int) -> torch.Tensor:
    """Leaf log importance weights :math:`\\log w_{lk} = \\log p(x_{R_l}, z_{lk}) - \\log q(z_{lk}|x_{R_l})`.

    :param model: an SPN-of-VAEs model following the protocol of this module.
    :param guide: a leaf-wise guide following the protocol.
    :param x: data ``(B, ...)``.
    :param num_samples: ``K`` reparameterised samples per leaf.
    :returns: log weights of shape ``(K, B, L)``, differentiable in model and guide parameters.
    """
    _check_protocol(model, guide)
    num_samples = check_int("num_samples", num_samples)
    fast = getattr(guide, "leaf_rsample", None)
    if callable(fast):
        z, log_q = fast(x, num_samples)
    else:
        q = guide.leaf_posterior(x)
        if not q.has_rsample:
            raise ValueError(f"guide.leaf_posterior must return a reparameterisable distribution, got {q}")
        z = q.rsample((num_samples,))  # (K, B, L, z_dim)
        log_q = q.log_prob(z)  # (K, B, L)
    if log_q.dim() != 3 or log_q.shape[:2] != (num_samples, x.shape[0]):
        raise ValueError(
            f"the guide's leaf log-densities must have shape (K, B, L) = ({num_samples}, {x.shape[0]}, L), "
            f"got {tuple(log_q.shape)}: leaf_posterior(x) needs batch shape (B, L)"
        )
    log_p = model.leaf_log_joint(x, z)  # (K, B, L)
    if log_p.shape != log_q.shape:
        raise ValueError(
            f"model.leaf_log_joint returned shape {tuple(log_p.shape)}, "
            f"expected {tuple(log_q.shape)} (K, B, L)"
        )
    return log_p - log_q


def _logmeanexp(t: torch.Tensor, dim: int) -> torch.Tensor:
    return torch.logsumexp(t, dim=dim) - math.log(t.shape[dim])


class _SPNBound(ELBO):
    """Shared plumbing: ``loss``, ``loss_and_grads`` and ``differentiable_loss`` from a per-example
    bound ``(B,)`` computed by :meth:`_bound`."""

    def __init__(self, num_particles: int = 1) -> None:
        num_particles = check_int("num_particles", num_particles)
        super().__init__(num_particles=num_particles, max_plate_nesting=1, vectorize_particles=True)

    def _bound(self, model: Any, guide: Any, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    def _get_trace(self, model: Any, guide: Any, args: tuple, kwargs: dict) -> Any:
        # ELBO's abstract trace hook: these bounds work on leaf-level quantities, not on traces.
        raise NotImplementedError(f"{type(self).__name__} builds no Pyro traces; use loss/loss_and_grads")

    def per_example_bound(self, model: Any, guide: Any, x: torch.Tensor) -> torch.Tensor:
        """The stochastic bound for each example, shape ``(B,)`` (differentiable)."""
        return self._bound(model, guide, x)

    def differentiable_loss(self, model: Any, guide: Any, *args: Any, **kwargs: Any) -> torch.Tensor:
        """Negative bound summed over the batch, as a differentiable scalar tensor."""
        x = _x_from_args(args, kwargs)
        return -self._bound(model, guide, x).sum()

    def loss(self, model: Any, guide: Any, *args: Any, **kwargs: Any) -> float:
        """Negative bound summed over the batch, as a float (no gradients)."""
        with torch.no_grad():
            return float(self.differentiable_loss(model, guide, *args, **kwargs))

    def loss_and_grads(self, model: Any, guide: Any, *args: Any, **kwargs: Any) -> float:
        """Negative bound summed over the batch; back-propagates it into all parameters."""
        loss = self.differentiable_loss(model, guide, *args, **kwargs)
        if loss.requires_grad:
            loss.backward(retain_graph=self.retain_graph)
        return float(loss.detach())


class SPNLeafELBO(_SPNBound):
    """Bound (a): leaf ELBOs pushed through the SPN, :math:`\\log\\mathrm{SPN}(\\exp\\hat{\\mathcal{L}}_l)`.

    :math:`\\hat{\\mathcal{L}}_l = \\frac1K\\sum_k \\log w_{lk}` (Tan & Peharz 2019, §3; ``DESIGN``
    §3). For the same samples it never exceeds :class:`SPNLeafIWELBO`.

    :param num_particles: ``K`` samples per leaf for the Monte-Carlo leaf ELBO.
    """

    def _bound(self, model: Any, guide: Any, x: torch.Tensor) -> torch.Tensor:
        log_w = spn_leaf_log_weights(model, guide, x, self.num_particles)
        return model.spn_log_value(log_w.mean(0))


class SPNLeafIWELBO(_SPNBound):
    """Bound (b): leaf-averaged importance weights, :math:`\\log\\mathrm{SPN}(\\frac1K\\sum_k w_{lk})`.

    The SPVAE training objective (Tan & Peharz 2019 train with ``K = 5``); tends to
    :math:`\\log p(x)` as ``K`` grows. For evaluation with thousands of samples use
    :func:`spn_log_likelihood`, which streams over samples.

    :param num_particles: ``K`` independent samples per leaf.
    """

    def __init__(self, num_particles: int = 5) -> None:
        super().__init__(num_particles)

    def _bound(self, model: Any, guide: Any, x: torch.Tensor) -> torch.Tensor:
        log_w = spn_leaf_log_weights(model, guide, x, self.num_particles)
        return model.spn_log_value(_logmeanexp(log_w, 0))


class SPNRootIWELBO(_SPNBound):
    """Bound (c): root-averaged importance weights, :math:`\\log\\frac1K\\sum_k\\mathrm{SPN}(w_{\\cdot k})`.

    Each sample ``k`` gives one unbiased estimate :math:`\\mathrm{SPN}(w_{\\cdot k})` of
    :math:`p(x)`; this is IWAE over those ``K`` estimates. Looser than :class:`SPNLeafIWELBO` in
    expectation (see the module docstring).

    :param num_particles: ``K`` samples (one per leaf per sample).
    """

    def __init__(self, num_particles: int = 5) -> None:
        super().__init__(num_particles)

    def _bound(self, model: Any, guide: Any, x: torch.Tensor) -> torch.Tensor:
        log_w = spn_leaf_log_weights(model, guide, x, self.num_particles)
        return _logmeanexp(model.spn_log_value(log_w), 0)


@torch.no_grad()
def spn_log_likelihood(
    model: Any,
    guide: Any,
    x: torch.Tensor,
    num_samples: int = 5000,
    chunk_size: int = 250,
    method: str = "leaf",
) -> torch.Tensor:
    """Importance-weighted estimate of :math:`\\log p(x)` per example, streamed over samples.

    ``method="leaf"`` is the paper's evaluation (Tan & Peharz 2019, Table 1: bound (b) with
    ``num_samples = 5000`` per leaf); ``method="root"`` is bound (c). Samples are drawn
    ``chunk_size`` at a time and folded into running per-leaf (or per-example) log-sum-exps, so
    memory is ``O(chunk_size * B * L)`` whatever ``num_samples`` is.

    :param model: an SPN-of-VAEs model following the protocol of this module.
    :param guide: a leaf-wise guide following the protocol.
    :param x: data ``(B, ...)`` (NaN entries are marginalised if the model allows them).
    :param num_samples: total ``K`` samples per leaf.
    :param chunk_size: samples per chunk.
    :param method: ``"leaf"`` or ``"root"``.
    :returns: tensor ``(B,)`` of stochastic lower bounds on :math:`\\log p(x)` (nats).
    """
    num_samples = check_int("num_samples", num_samples)
    chunk_size = check_int("chunk_size", chunk_size)
    if method not in ("leaf", "root"):
        raise ValueError(f"method must be 'leaf' or 'root', got {method!r}")
    acc: torch.Tensor | None = None
    done = 0
    while done < num_samples:
        k = min(chunk_size, num_samples - done)
        log_w = spn_leaf_log_weights(model, guide, x, k)  # (k, B, L)
        part = log_w if method == "leaf" else model.spn_log_value(log_w)  # (k, B, L) | (k, B)
        part = torch.logsumexp(part, dim=0)
        acc = part if acc is None else torch.logaddexp(acc, part)
        done += k
    assert acc is not None
    acc = acc - math.log(num_samples)
    return model.spn_log_value(acc) if method == "leaf" else acc
