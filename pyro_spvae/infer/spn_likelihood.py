"""Streaming evaluation of the SPN-aware bounds: importance-weighted :math:`\\log p(x)` of a
sum-product network of VAEs with thousands of samples per leaf.

Tan & Peharz, "Hierarchical Decompositional Mixtures of Variational Autoencoders", ICML 2019,
Table 1 (evaluation with ``K = 5000`` samples per leaf; the bounds are derived in ``docs/spvae.md``).
With the leaf log-weights :math:`\\log w_{lk}` of :mod:`pyro_spvae.infer.spn_leaves`,
:func:`spn_log_likelihood` estimates

.. math::

    \\text{(b)}\\;\\; \\log \\mathrm{SPN}(\\bar w_l), \\quad
    \\log \\bar w_l = \\operatorname{logsumexp}_k \\log w_{lk} - \\log K,
    \\qquad \\text{(c)}\\;\\; \\log \\frac1K \\sum_k \\mathrm{SPN}(w_{\\cdot k}),

bound (b) of :class:`~pyro_spvae.infer.spn_bounds.SPNLeafIWELBO` (``method="leaf"``) or bound (c)
of :class:`~pyro_spvae.infer.spn_bounds.SPNRootIWELBO` (``method="root"``), each a stochastic lower
bound on :math:`\\log p(x)` in expectation. The ``K`` samples are drawn ``chunk_size`` at a time and
folded into running log-sum-exps (per leaf for (b), per example for (c)), so memory does not grow
with ``K``; the examples are split into passes by a memory budget (:func:`leaf_pass_shape`).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from pyro_spvae.infer.log_likelihood import pass_budget, pass_shape
from pyro_spvae.infer.spn_leaves import _check_protocol, _draw_leaves, _leaf_log_joint
from pyro_spvae.validation import check_choice, check_positive_int, check_tensor
from pyro_spvae.validation_memo import checks_once

__all__ = ["LEAF_PASS_BUDGET_FRACTION", "leaf_pass_shape", "spn_log_likelihood"]


#: :func:`spn_log_likelihood`'s rows hold every leaf's patch (``leaf_k`` times the example for
#: SPVAE's partition of the pixels) in several tensors plus the leaves' hidden layers: they get this
#: fraction of the per-pass budget of :func:`~pyro_spvae.infer.log_likelihood.pass_budget`.
LEAF_PASS_BUDGET_FRACTION = 0.25


def leaf_pass_shape(x: torch.Tensor, num_samples: int, chunk_size: int | None = None) -> tuple[int, int]:
    """``(samples, examples)`` per pass of :func:`spn_log_likelihood` for data ``x`` ``(N, ...)``.

    The budget is :data:`LEAF_PASS_BUDGET_FRACTION` of
    :func:`~pyro_spvae.infer.log_likelihood.pass_budget` of ``x``'s device, in rows of ``D`` values
    of ``x.dtype``. ``chunk_size=None``: both from
    :func:`~pyro_spvae.infer.log_likelihood.pass_shape`; otherwise ``min(chunk_size, num_samples)``
    samples for as many examples as the budget holds (at least one; batches evened out), so that a
    fixed chunk never builds a pass over all examples at once.
    """
    n = x.shape[0]
    row = math.prod(x.shape[1:]) * x.element_size()
    budget = int(pass_budget(x.device) * LEAF_PASS_BUDGET_FRACTION)
    if chunk_size is None:
        return pass_shape(n, num_samples, row, max_examples=n, budget=budget)
    chunk = min(chunk_size, num_samples)
    per_pass = max(1, min(n, budget // max(1, row) // chunk))
    return chunk, math.ceil(n / math.ceil(n / per_pass))


def _stream_leaf_bound(model: Any, guide: Any, x: torch.Tensor, num_samples: int, chunk_size: int,
                       method: str) -> torch.Tensor:
    """Running log-sum-exps over ``num_samples`` samples, ``chunk_size`` at a time, for ``x``
    ``(B, ...)``: per leaf ``(B, L)`` (``"leaf"``) or per example ``(B,)`` (``"root"``), divided by
    ``num_samples``."""
    acc: torch.Tensor | None = None
    done = 0
    with checks_once():  # the examples' checks run in the first pass only
        while done < num_samples:
            k = min(chunk_size, num_samples - done)
            z, log_q = _draw_leaves(guide, x, k)
            log_w = _leaf_log_joint(model, x, z, log_q.shape) - log_q  # (k, B, L)
            part = log_w if method == "leaf" else model.spn_log_value(log_w)  # (k, B, L) | (k, B)
            part = torch.logsumexp(part, dim=0)
            acc = part if acc is None else torch.logaddexp(acc, part)
            done += k
    assert acc is not None
    return acc - math.log(num_samples)


@torch.no_grad()
def spn_log_likelihood(
    model: Any,
    guide: Any,
    x: torch.Tensor,
    num_samples: int = 5000,
    chunk_size: int | None = None,
    method: str = "leaf",
) -> torch.Tensor:
    """Importance-weighted estimate of :math:`\\log p(x)` per example, streamed over samples.

    ``method="leaf"`` is the paper's evaluation (Tan & Peharz 2019, Table 1: bound (b) with
    ``num_samples = 5000`` per leaf); ``method="root"`` is bound (c). Samples are drawn
    ``chunk_size`` at a time and folded into running per-leaf (or per-example) log-sum-exps, so
    memory is ``O(chunk_size * examples per pass * L)`` whatever ``num_samples`` is.

    With ``chunk_size=None`` (default) the examples are split into passes by the rule of
    :func:`~pyro_spvae.infer.log_likelihood.log_marginal_likelihood`
    (:func:`~pyro_spvae.infer.log_likelihood.pass_shape`: ``D`` values of ``x.dtype`` per row, any
    number of examples per pass) with :data:`LEAF_PASS_BUDGET_FRACTION` of the budget
    :func:`~pyro_spvae.infer.log_likelihood.pass_budget` of ``x``'s device: 3 MiB on CPU, 1000 samples
    for one 28x28 float32 image per pass. An explicit ``chunk_size`` fixes the samples per pass and the
    budget still bounds the examples per pass (:func:`leaf_pass_shape`: 10 images at ``chunk_size=100``):
    a pass over 100 images at once builds ``(L, chunk, 100, patch)`` tensors that leave the cache and
    costs about twice as much per image. Either way the SPN runs once, on the leaf estimates of all
    examples.

    :param model: an SPN-of-VAEs model following the protocol of
        :mod:`~pyro_spvae.infer.spn_leaves`.
    :param guide: a leaf-wise guide following the protocol.
    :param x: data ``(B, ...)`` (NaN entries are marginalised if the model allows them).
    :param num_samples: total ``K`` samples per leaf.
    :param chunk_size: samples per pass, or ``None`` (see above).
    :param method: ``"leaf"`` or ``"root"``.
    :returns: tensor ``(B,)`` of stochastic lower bounds on :math:`\\log p(x)` (nats).
    """
    num_samples = check_positive_int("num_samples", num_samples)
    check_choice("method", method, ("leaf", "root"))
    check_tensor("x", x)
    if x.dim() < 1 or x.shape[0] < 1:
        raise ValueError(f"x must be a tensor of shape (B, ...) with B >= 1, got {tuple(x.shape)}")
    _check_protocol(model, guide)
    if chunk_size is not None:
        chunk_size = check_positive_int("chunk_size", chunk_size)
    chunk_size, per_pass = leaf_pass_shape(x, num_samples, chunk_size)
    acc = torch.cat([_stream_leaf_bound(model, guide, xb, num_samples, chunk_size, method)
                     for xb in x.split(per_pass)])
    return model.spn_log_value(acc) if method == "leaf" else acc  # the SPN once for all examples
