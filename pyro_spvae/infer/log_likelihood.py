"""Streaming importance-sampling estimate of the per-example log marginal likelihood.

For each example ``x_i`` and ``S`` samples ``z_is ~ q(z | x_i)``::

    log p(x_i) ~= log (1/S) sum_s w_is,   w_is = p(x_i, z_is) / q(z_is | x_i)

(the ``S``-sample IWAE bound of Burda et al. 2016, eq. 8, used as the standard evaluation with
``S = 5000``; see ``docs/estimators.md``). Its expectation is a lower bound that tends to
``log p(x_i)`` as ``S`` grows. Particles are drawn in passes of ``chunk_size`` particles for up to
``batch_size`` examples (a vectorised ``pyro.plate``) and combined with a running log-sum-exp, so
compute memory is ``O(chunk_size * examples per pass)`` whatever ``num_samples``.

Pass shape
----------
With ``chunk_size=None`` (the default) the shape of a pass comes from a memory budget ``M``
(:func:`pass_budget`: 12 MiB on CPU, where the per-pass tensors should stay in the last-level cache,
256 MiB on CUDA): one pass may hold ``R = M // (D * itemsize)`` particle-example rows of ``x``'s
size (``D`` values of ``x.dtype`` per example; the decoder output and the per-element
log-densities of a pass have this size), and :func:`pass_shape` picks the ``chunk_size`` and the
examples per pass (at most ``batch_size``) with ``chunk_size * examples <= R`` that need the fewest
passes, ties going to the larger ``chunk_size`` (every pass re-runs the guide's encoder and the
model's input checks on its examples). For 200 MNIST images (``D = 784``, float32) and
``S = 5000``: ``R = 4011``, 1000 particles for 4 examples per pass, 250 passes. Pass an explicit
``chunk_size`` to fix the shape (``chunk_size`` particles for ``batch_size`` examples).

Validation: with Pyro's validation on (the default), every example is validated once, by one
single-particle pass over ``x`` (distribution arguments and supports, Pyro's trace checks; the
random state is restored after it), and the ``S`` particles are then drawn with Pyro's validation
off (:func:`pyro.validation_enabled`, restored afterwards): the checks on the broadcast
``(particles, examples, D)`` tensors would cost about a quarter of a pass.

Diagnostics per example:

- PSIS k-hat (:func:`~pyro_spvae.infer.arviz.psis_khat`, that of :func:`arviz.psislw` vectorised
  over examples): ``k-hat > 0.7`` means the weights are so heavy-tailed that the estimate is
  unreliable. PSIS needs the whole weight vector, so the ``(examples per pass, num_samples)``
  log-weights of the current pass batch are kept as float32 relative to a float64 per-example
  offset and dropped after the batch; ``psis=False`` keeps nothing and memory is flat in
  ``num_samples``. When all log-weights of an example agree to within ``1e-3`` nats (an exact
  posterior) the weights are bounded, PSIS's tail fit is undefined and k-hat is reported as 0.
- Effective sample size ``(sum_s w_is)^2 / sum_s w_is^2`` (Kong 1992), from running log-sum-exps.

Units: ``nats`` is the mean negative log-likelihood per example; ``bits_per_dim`` is
``nats / (D ln 2)`` with ``D`` the number of scalar dimensions of one example. For discrete data
(8-bit grid ``k/255`` with a Binomial/discretised-logistic/categorical likelihood, or binary data)
``log p(x)`` is a log-probability and bits/dim are comparable across models (e.g. HCLT 1.20 on
8-bit MNIST). For a density over ``[0, 1]^D`` (dequantised/continuous data) the same formula is
reported; add ``log2(256) = 8`` bits/dim to compare with densities over ``[0, 256)^D`` and note
that densities may exceed 1 (negative nats).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import NamedTuple

import pyro
import pyro.distributions
import pyro.infer
import pyro.poutine
import torch
from torch import Tensor
from tqdm import tqdm

from pyro_spvae.infer.arviz import psis_khat
from pyro_spvae.infer.importance import compute_importance_terms
from pyro_spvae.infer.particles import guess_max_plate_nesting
from pyro_spvae.validation import check_bool, check_positive_int, check_tensor
from pyro_spvae.validation_memo import checks_once

__all__ = [
    "LogLikelihoodResult",
    "PASS_BUDGET_BYTES",
    "log_marginal_likelihood",
    "pass_budget",
    "pass_shape",
    "psis_khat",
]

KHAT_THRESHOLD = 0.7

#: Bytes of ``x``-sized rows one pass may hold when ``chunk_size=None``, by device type.
PASS_BUDGET_BYTES = {"cpu": 12 * 2**20, "cuda": 256 * 2**20}


class LogLikelihoodResult(NamedTuple):
    """Result of :func:`log_marginal_likelihood`.

    :ivar log_px: ``(N,)`` float64 estimates of ``log p(x_i)``.
    :ivar khat: ``(N,)`` PSIS k-hat (NaN when ``psis=False``).
    :ivar ess: ``(N,)`` effective sample size of the normalised weights, in ``[1, num_samples]``.
    :ivar nats: mean negative log-likelihood per example.
    :ivar bits_per_dim: ``nats / (D ln 2)``.
    :ivar num_samples: ``S``. :ivar event_dim: ``D``.
    :ivar log_weights: ``(N, S)`` float32 log-weights when ``keep_log_weights=True`` else ``None``.
    """

    log_px: Tensor
    khat: Tensor
    ess: Tensor
    nats: float
    bits_per_dim: float
    num_samples: int
    event_dim: int
    log_weights: Tensor | None = None

    @property
    def unreliable(self) -> Tensor:
        """Boolean ``(N,)`` mask of examples with ``k-hat > 0.7``."""
        return self.khat > KHAT_THRESHOLD


def pass_budget(device: torch.device | str) -> int:
    """The default per-pass budget in bytes for ``device`` (:data:`PASS_BUDGET_BYTES`; CPU's
    for device types it does not list)."""
    return PASS_BUDGET_BYTES.get(torch.device(device).type, PASS_BUDGET_BYTES["cpu"])


def pass_shape(num_examples: int, num_samples: int, example_bytes: int, *, max_examples: int,
               budget: int) -> tuple[int, int]:
    """The pass shape for ``budget`` bytes per pass (see the module docstring).

    Among ``chunk <= num_samples`` and ``examples <= min(max_examples, num_examples)`` with
    ``chunk * examples * example_bytes <= budget`` (at least one row per pass), the pair with the
    fewest passes ``ceil(num_examples / examples) * ceil(num_samples / chunk)``, ties going to the
    larger ``chunk``; the chunks and example batches are then evened out (``chunk =
    ceil(num_samples / ceil(num_samples / chunk))``, the same for the examples).

    :param num_examples: ``N``. :param num_samples: ``S``.
    :param example_bytes: bytes of one example of the data (``D * itemsize``).
    :param max_examples: at most this many examples per pass.
    :param budget: bytes of ``x``-sized rows per pass.
    :returns: ``(chunk, examples per pass)``.
    """
    rows = max(1, budget // max(1, example_bytes))
    best = (math.inf, 1, 1)
    for per_pass in range(1, min(max_examples, num_examples, rows) + 1):
        chunk = min(num_samples, rows // per_pass)  # the largest chunk for this many examples
        passes = math.ceil(num_examples / per_pass) * math.ceil(num_samples / chunk)
        if passes < best[0]:
            best = (passes, chunk, per_pass)
    _, chunk, per_pass = best
    chunk = math.ceil(num_samples / math.ceil(num_samples / chunk))
    return chunk, math.ceil(num_examples / math.ceil(num_examples / per_pass))


def _chunk_log_weights(model, guide, xb: Tensor, k: int, *, max_plate_nesting: int, data_plate: str,
                       vectorize: bool) -> Tensor:
    """``log w`` of ``k`` fresh particles for every example of ``xb`` ``(B, ...)``: ``(k, B)`` float64."""
    terms = compute_importance_terms(model, guide, (xb,), {}, num_particles=k,
                                     max_plate_nesting=max_plate_nesting, data_plate=data_plate,
                                     share_globals=False, vectorize=vectorize)
    if terms.local_scale != 1.0:
        raise ValueError(
            f"sites in plate '{data_plate}' are scaled by {terms.local_scale}; evaluate "
            "without data subsampling or poutine.scale"
        )
    lw = (terms.log_weights + terms.global_log_weights.unsqueeze(-1)).to(torch.float64)
    if lw.shape[1] != xb.shape[0]:
        raise ValueError(f"the model's plate '{data_plate}' has size {lw.shape[1]}, expected {xb.shape[0]}")
    return lw


class _BatchEstimate(NamedTuple):
    log_px: Tensor  # (B,) float64
    ess: Tensor  # (B,) float64
    buffer: Tensor | None  # (B, S) float32 log-weights relative to ``offset``
    offset: Tensor | None  # (B,) float64


def _stream_batch(draw: Callable[[int], Tensor], like: Tensor, num_samples: int, chunk_size: int,
                  keep: bool, bar) -> _BatchEstimate:
    """Fold ``num_samples`` log-weights ``draw(k) -> (k, B)``, ``chunk_size`` at a time, into running
    log-sum-exps of ``w`` and ``w^2`` (and a float32 buffer of all of them when ``keep``); ``like``
    is a ``(B, ...)`` tensor on the device of the weights."""
    B = like.shape[0]
    lse = torch.full((B,), -math.inf, dtype=torch.float64, device=like.device)
    lse2 = torch.full_like(lse, -math.inf)
    buf = torch.empty(B, num_samples, dtype=torch.float32, device=like.device) if keep else None
    offset = None
    done = 0
    while done < num_samples:
        k = min(chunk_size, num_samples - done)
        lw = draw(k)
        lse = torch.logaddexp(lse, torch.logsumexp(lw, 0))
        lse2 = torch.logaddexp(lse2, torch.logsumexp(2 * lw, 0))
        if buf is not None:
            if offset is None:
                offset = lw.max(0).values  # float32 storage relative to a float64 offset
            buf[:, done : done + k] = (lw - offset).T.to(torch.float32)
        done += k
        bar.update(1)
    return _BatchEstimate(lse - math.log(num_samples), torch.exp(2 * lse - lse2), buf, offset)


def _validate_once(draw: Callable[..., Tensor], x: Tensor, batch_size: int) -> None:
    """One single-particle pass over ``x`` with Pyro's validation as set by the user, so that the
    distributions check every example once; the random state is restored afterwards."""
    if not (pyro.distributions.is_validation_enabled() or pyro.poutine.is_validation_enabled()
            or pyro.infer.is_validation_enabled()):
        return
    devices = [x.device] if x.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        for xb in x.split(batch_size):
            draw(xb, 1)


def _prepare(model, guide, x: Tensor, num_samples: int, chunk_size: int | None, batch_size: int,
             max_plate_nesting: int | None, data_plate: str, vectorize_particles: bool
             ) -> tuple[functools.partial, int, int]:
    """Validate the arguments of :func:`log_marginal_likelihood`, choose the pass shape and run the
    model/guide pair once on a probe: returns ``(draw, chunk_size, batch_size)``."""
    check_tensor("x", x)
    if x.dim() < 1 or x.shape[0] < 1:
        raise ValueError(f"x must be a tensor of shape (N, ...) with N >= 1, got {tuple(x.shape)}")
    num_samples = check_positive_int("num_samples", num_samples)
    batch_size = check_positive_int("batch_size", batch_size)
    vectorize_particles = check_bool("vectorize_particles", vectorize_particles)
    N = x.shape[0]
    D = math.prod(x.shape[1:])
    max_examples = batch_size
    if chunk_size is None:
        chunk_size, batch_size = pass_shape(N, num_samples, D * x.element_size(), max_examples=max_examples,
                                            budget=pass_budget(x.device))
    else:
        chunk_size = min(check_positive_int("chunk_size", chunk_size), num_samples)
    if max_plate_nesting is None:
        try:  # the guess runs the pair on a 2-example probe: name the caller's x in any error
            max_plate_nesting = guess_max_plate_nesting(model, guide, (x[: min(N, 2)],), {})
        except ValueError as err:
            raise ValueError(f"x of shape {tuple(x.shape)} was refused by the model/guide: {err}") from err
    max_plate_nesting = check_positive_int("max_plate_nesting", max_plate_nesting)
    draw = functools.partial(_chunk_log_weights, model, guide, data_plate=data_plate,
                             max_plate_nesting=max_plate_nesting, vectorize=vectorize_particles)
    _validate_once(draw, x, max_examples)
    return draw, chunk_size, batch_size


def _estimate(draw: Callable[..., Tensor], x: Tensor, num_samples: int, chunk_size: int, batch_size: int,
              *, psis: bool, keep_log_weights: bool, progress: bool
              ) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
    """``log_px``, ``ess``, ``khat`` ``(N,)`` float64 and the ``(N, S)`` log-weights or ``None``, in
    batches of ``batch_size`` examples and chunks of ``chunk_size`` particles (on the CPU)."""
    N = x.shape[0]
    log_px = torch.empty(N, dtype=torch.float64)
    ess = torch.empty(N, dtype=torch.float64)
    khat = torch.full((N,), float("nan"), dtype=torch.float64)
    all_lw = torch.empty(N, num_samples, dtype=torch.float32) if keep_log_weights else None
    total = math.ceil(N / batch_size) * math.ceil(num_samples / chunk_size)
    with tqdm(total=total, disable=not progress, desc="log p(x)", unit="chunk") as bar:
        for start in range(0, N, batch_size):
            xb = x[start : start + batch_size]
            B = xb.shape[0]
            with checks_once():  # the examples' checks run in the first pass of the batch only
                est = _stream_batch(functools.partial(draw, xb), xb, num_samples, chunk_size,
                                    psis or keep_log_weights, bar)
            log_px[start : start + B] = est.log_px.cpu()
            ess[start : start + B] = est.ess.cpu()
            if psis:
                khat[start : start + B] = torch.from_numpy(psis_khat(est.buffer.cpu().numpy()))
            if all_lw is not None:
                all_lw[start : start + B] = (est.buffer.double() + est.offset.unsqueeze(-1)).float().cpu()
    return log_px, ess, khat, all_lw


@torch.no_grad()
def log_marginal_likelihood(
    model,
    guide,
    x: Tensor,
    num_samples: int = 5000,
    chunk_size: int | None = None,
    batch_size: int = 100,
    progress: bool = True,
    psis: bool = True,
    keep_log_weights: bool = False,
    max_plate_nesting: int | None = None,
    data_plate: str = "data",
    vectorize_particles: bool = True,
) -> LogLikelihoodResult:
    """Per-example importance-sampling estimate of ``log p(x_i)`` (see module docstring).

    Works for any model/guide pair following the model contract: ``model(x)`` and ``guide(x)`` with
    a ``pyro.plate(data_plate)`` over the first dim of ``x``. Global latent sites (outside the data
    plate) are drawn once per particle, so the estimate is of the per-example marginal
    ``log int p(theta) p(x_i | theta) d theta`` with ``q(theta)`` as proposal.

    :param x: data of shape ``(N, *event_shape)``.
    :param int num_samples: ``S`` importance samples per example.
    :param chunk_size: particles per vectorised pass; ``None``: chosen with the number of examples
        per pass from a memory budget (module docstring, :func:`pass_shape`).
    :param int batch_size: examples per pass (at most, with ``chunk_size=None``).
    :param bool progress: show a tqdm progress bar.
    :param bool psis: compute PSIS k-hat (keeps one ``(examples per pass, S)`` float32 buffer).
    :param bool keep_log_weights: also return all ``(N, S)`` log-weights (memory ``N * S * 4`` B).
    :param max_plate_nesting: plates of the model; ``None`` guesses it by running the pair once.
    :param bool vectorize_particles: one vectorised pass per chunk or one pass per particle.
    :returns: :class:`LogLikelihoodResult`.
    :raises TypeError: for arguments of the wrong type.
    :raises ValueError: for bad sizes, or a model whose data-plate sites are scaled (subsampled).
    """
    draw, chunk_size, batch_size = _prepare(model, guide, x, num_samples, chunk_size, batch_size,
                                            max_plate_nesting, data_plate, vectorize_particles)
    D = math.prod(x.shape[1:])
    with pyro.validation_enabled(False):
        log_px, ess, khat, all_lw = _estimate(draw, x, num_samples, chunk_size, batch_size, psis=psis,
                                              keep_log_weights=keep_log_weights, progress=progress)
    nats = -float(log_px.mean())
    return LogLikelihoodResult(
        log_px=log_px,
        khat=khat,
        ess=ess,
        nats=nats,
        bits_per_dim=nats / (D * math.log(2)),
        num_samples=num_samples,
        event_dim=D,
        log_weights=all_lw,
    )
