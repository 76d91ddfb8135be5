r"""Fused diagonal-Gaussian log-densities summed over the last dim (the hot path of leaf likelihoods).

For observations ``x``, means :math:`\mu` and log standard deviations ``s`` broadcasting against
each other, summed over the last dim ``d``:

.. math::

    \log \mathcal{N}(x; \mu, e^{2s}) = -\tfrac12 \sum_d \big((x_d - \mu_d)\, e^{-s_d}\big)^2
    - \sum_d s_d - \tfrac{D}{2}\log 2\pi.

The quadratic form is the costly part: :class:`GaussianQuadForm` evaluates it with hand-written
gradients in a few passes over the big broadcast tensor, and the terms that do not depend on
:math:`\mu` are summed on the small side. Used by the SPVAE leaf likelihoods (Tan & Peharz 2019,
learnt per-pixel precision; see ``docs/spvae.md``) and the leaf posterior
:class:`~pyro_spvae.distributions.LeafPosterior`.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

__all__ = ["GaussianQuadForm", "gaussian_log_lik", "gaussian_quad_form"]

LOG_2PI = math.log(2 * math.pi)


def _sum_to(t: Tensor, shape: torch.Size) -> Tensor:
    """Sum the broadcast dims of ``t`` so that it has ``shape`` (the reverse of broadcasting)."""
    lead = t.dim() - len(shape)
    dims = tuple(range(lead)) + tuple(
        lead + i for i, n in enumerate(shape) if n == 1 and t.shape[lead + i] != 1
    )
    return (t.sum(dims, keepdim=True) if dims else t).reshape(shape)


class GaussianQuadForm(torch.autograd.Function):
    r""":math:`-\tfrac12 \sum_d \big((x_d - \mu_d)\, e^{-s_d}\big)^2` over the last dim, fused.

    ``x``, ``mu`` and the log-scale ``s`` broadcast against each other; the result has their
    broadcast shape without the last dim. Autograd through the elementwise expression makes about a
    dozen passes over the big ``(..., D)`` tensor (sub, mul, square, their backwards and a gradient
    accumulation); here the forward makes two (the residual ``r``, written once and scaled in place,
    and a dot product) and the backward three, with :math:`\partial/\partial\mu = g\, r\, e^{-s}`,
    :math:`\partial/\partial s = g\, r^2`, :math:`\partial/\partial x = -g\, r\, e^{-s}`.

    Call it as ``GaussianQuadForm.apply(x, mu, log_scale)`` or through :func:`gaussian_quad_form`.
    """

    @staticmethod
    def forward(ctx: Any, x: Tensor, mu: Tensor, log_scale: Tensor) -> Tensor:
        inv = torch.exp(-log_scale)
        r = torch.sub(x, mu)
        r.mul_(inv)
        ctx.save_for_backward(r, inv)
        ctx.shapes = (x.shape, mu.shape, log_scale.shape)
        return torch.linalg.vecdot(r, r).mul_(-0.5)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
        r, inv = ctx.saved_tensors
        x_shape, mu_shape, s_shape = ctx.shapes
        t = r * grad.unsqueeze(-1)
        grad_s = _sum_to(t * r, s_shape) if ctx.needs_input_grad[2] else None
        if not (ctx.needs_input_grad[0] or ctx.needs_input_grad[1]):
            return None, None, grad_s
        t.mul_(inv)  # g r e^{-s}
        grad_mu = _sum_to(t, mu_shape) if ctx.needs_input_grad[1] else None
        if not ctx.needs_input_grad[0]:
            return None, grad_mu, grad_s
        if x_shape == t.shape and (grad_mu is None or mu_shape != t.shape):
            return t.neg_(), grad_mu, grad_s  # t is not needed any more (grad_mu, if any, is a sum)
        return -_sum_to(t, x_shape), grad_mu, grad_s


def gaussian_quad_form(x: Tensor, mu: Tensor, log_scale: Tensor) -> Tensor:
    r""":math:`-\tfrac12 \sum_d ((x_d - \mu_d) e^{-s_d})^2`: ``(..., D)`` broadcasting inputs -> ``(...)``."""
    return GaussianQuadForm.apply(x, mu, log_scale)


def gaussian_log_lik(x: Tensor, mu: Tensor, log_scale: Tensor, observed: Tensor | None = None) -> Tensor:
    r"""Diagonal-Gaussian log-density :math:`\log\mathcal{N}(x; \mu, e^{2s})` summed over the last dim.

    :param x: observations ``(..., D)``; missing entries must hold a finite value (e.g. 0) and
        have ``observed`` false.
    :param mu: means, broadcasting with ``x``.
    :param log_scale: log standard deviations ``s``, broadcasting with both.
    :param observed: ``None`` (all observed: the fused :class:`GaussianQuadForm` path), or a mask
        (bool or float) broadcasting with the others, multiplied into every term so that masked-out
        entries contribute 0 (exact marginalisation).
    :returns: the broadcast shape of the inputs without the last dim.
    """
    if observed is None:
        return gaussian_quad_form(x, mu, log_scale) + (-log_scale - 0.5 * LOG_2PI).sum(-1)
    inv_scale, const = torch.exp(-log_scale) * observed, (-log_scale - 0.5 * LOG_2PI) * observed
    r = (x - mu) * inv_scale
    return const.sum(-1) - 0.5 * (r * r).sum(-1)
