r"""Post-hoc estimate of the mutual-information lower bound of a trained model's latent codes.

Serdega & Kim 2020, "Variational Mutual Information Maximization Framework for VAE Latent Codes
with Continuous and Discrete Priors", arXiv:2006.02227, who use the bound to measure the MI of a
trained VAE (the bound itself, Barber & Agakov 2003, is derived in
:mod:`pyro_spvae.infer.mutual_information`):

.. math:: I(c; x) \;\ge\; H(c) + \mathbb{E}_{c \sim p(c),\, x \sim p(x \mid c, \dots)} \log Q(c \mid x).

:func:`mutual_information_bound` first fits ``Q`` (a
:class:`~pyro_spvae.nn.code_posterior.CodePosteriorNet`) by maximising
:math:`\sum_{\text{codes}} \mathbb{E} \log Q(c \mid \tilde x)` on fresh, detached pairs
``(c, x~)`` from the model (Adam, learning rate decayed linearly to 0), so the model is not changed;
then it averages :math:`H(c) + \log Q(c_i \mid \tilde x_i)` over ``n`` new pairs, with the Monte
Carlo standard error :math:`\mathrm{sd}/\sqrt n`. The estimate is a lower bound in expectation for
any ``Q``. ``Q`` may also be the guide, used as is: its distribution of each named site is read off
its trace on ``x~`` (:mod:`pyro_spvae.infer.mi_codes`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import torch
from torch import Tensor

from pyro_spvae.infer.mi_codes import X_MODES, _entropy, _generate, _log_q, code_posterior_for, resolve_codes
from pyro_spvae.nn.code_posterior import CodePosteriorNet
from pyro_spvae.validation import (
    check_choice,
    check_nonnegative_int,
    check_positive_int,
    check_real,
    check_tensor,
)

__all__ = ["MIBound", "mutual_information_bound"]


class MIBound(NamedTuple):
    """The bound of one code (nats). :ivar bound: ``H(c) + mean log Q``; :ivar entropy: ``H(c)``;
    :ivar stderr: Monte Carlo standard error of the bound; :ivar num_samples: pairs averaged."""

    bound: float
    entropy: float
    stderr: float
    num_samples: int


def _fit_q(q: CodePosteriorNet, model: Callable, batch: Tensor, sites: Sequence[str], steps: int, lr: float,
           x_site: str | None, x_mode: str) -> None:
    """Maximise ``sum_codes E log Q(c | x~)`` over ``Q``'s parameters on fresh, detached pairs (Adam,
    learning rate decayed linearly to 0, so that the last steps average out the minibatch noise)."""
    opt = torch.optim.Adam(q.parameters(), lr=lr)
    decay = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 1.0 - t / steps)
    codes = None
    for _ in range(steps):
        with torch.no_grad():
            trace, x = _generate(model, (batch,), {}, x_site, x_mode)
        codes = codes or resolve_codes(trace, sites)
        loss = -sum(v.mean() for v in _log_q(q, codes, trace, x).values())
        opt.zero_grad()
        loss.backward()
        opt.step()
        decay.step()


def mutual_information_bound(model: Callable, q: Any, sites: Sequence[str], data_like: Tensor,
                             num_samples: int = 10000, *, steps: int = 1000, lr: float = 1e-2,
                             batch_size: int | None = None, x: str = "sample", x_site: str | None = None,
                             q_kwargs: Mapping[str, Any] | None = None) -> dict[str, MIBound]:
    r"""Estimate the MI lower bound ``H(c) + E log Q(c | x)`` (nats) of each code of ``sites`` for a
    trained model (Serdega & Kim 2020; see the module docstring).

    ``Q`` is fitted first (unless it is the guide): ``steps`` Adam steps on fresh pairs ``(c, x~)``
    from the model, detached, so the model is not changed; then the bound is averaged over
    ``num_samples`` new pairs. The estimate is a lower bound in expectation for any ``Q``; its
    Monte Carlo standard error is reported.

    :param model: the Pyro model, called as ``model(batch)`` (its data argument; the values only
        give the batch shape, the observation is resampled).
    :param q: ``None`` (a fresh :func:`code_posterior_for` network with ``q_kwargs``), a
        :class:`~pyro_spvae.nn.code_posterior.CodePosteriorNet` (fitted ``steps`` steps; ``steps=0``
        uses it as is), or a guide (used as is, see the module docstring).
    :param sites: codes such as ``["c", "z[0]"]``.
    :param data_like: valid data ``(N, *event_shape)``, tiled to ``batch_size`` rows.
    :param num_samples: pairs averaged for the reported bound.
    :param steps: Adam steps fitting ``Q``. :param lr: their learning rate.
    :param batch_size: pairs per model run (default: ``N``).
    :param x: ``"sample"`` (default, the MI with the data) or ``"mean"``.
    :param x_site: the observation site (default: the model's only observed site).
    :returns: ``{label: MIBound}``.
    """
    data_like = check_tensor("data_like", data_like)
    num_samples = check_positive_int("num_samples", num_samples)
    steps = check_nonnegative_int("steps", steps)
    lr = check_real("lr", lr, 0.0, low_open=True)
    batch_size = len(data_like) if batch_size is None else check_positive_int("batch_size", batch_size)
    x_mode = check_choice("x", x, X_MODES)
    batch = data_like[torch.arange(batch_size, device=data_like.device) % len(data_like)]
    if q is None:
        q = code_posterior_for(model, batch, sites, **(q_kwargs or {}))
    if isinstance(q, CodePosteriorNet) and steps:
        _fit_q(q, model, batch, sites, steps, lr, x_site, x_mode)
    values: dict[str, list[Tensor]] = {}
    entropy: dict[str, float] = {}
    n = 0
    with torch.no_grad():
        while n < num_samples:
            trace, xg = _generate(model, (batch,), {}, x_site, x_mode)
            codes = resolve_codes(trace, sites)
            take = min(batch_size, num_samples - n)
            for label, v in _log_q(q, codes, trace, xg).items():
                values.setdefault(label, []).append(v.reshape(-1)[:take].double())
            entropy = {c.label: float(_entropy(trace, c)) for c in codes}
            n += take
    out = {}
    for label, chunks in values.items():
        v = torch.cat(chunks)
        stderr = float(v.std() / math.sqrt(n)) if n > 1 else float("nan")
        out[label] = MIBound(entropy[label] + float(v.mean()), entropy[label], stderr, n)
    return out
