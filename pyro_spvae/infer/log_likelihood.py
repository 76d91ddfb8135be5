"""Streaming importance-sampling estimate of the per-example log marginal likelihood.

For each example ``x_i`` and ``S`` samples ``z_is ~ q(z | x_i)``::

    log p(x_i) ~= log (1/S) sum_s w_is,   w_is = p(x_i, z_is) / q(z_is | x_i)

(the ``S``-sample IWAE bound of Burda et al. 2016, eq. 8, used as the standard evaluation with
``S = 5000``). Its expectation is a lower bound that tends to ``log p(x_i)`` as ``S`` grows.
Particles are drawn in chunks of ``chunk_size`` (a vectorised ``pyro.plate``) and combined with a
running log-sum-exp, so compute memory is ``O(chunk_size * batch_size)`` whatever ``num_samples``.

Diagnostics per example:

- Pareto-smoothed importance sampling k-hat (Vehtari, Simpson, Gelman, Yao & Gabry 2015/2024,
  "Pareto Smoothed Importance Sampling", §3) via :func:`arviz.psislw`: ``k-hat > 0.7`` means the
  weights are so heavy-tailed that the estimate is unreliable. PSIS needs the whole weight vector,
  so the ``(batch_size, num_samples)`` log-weights of the current data batch are kept on CPU as
  float32 relative to a float64 per-example offset (``5000 x 100 x 4`` bytes = 2 MB) and dropped
  after the batch; ``psis=False`` keeps nothing and memory is flat in ``num_samples``. When all
  log-weights of an example agree to within ``1e-6`` nats (an exact posterior) the weights are
  bounded, PSIS's tail fit is undefined and k-hat is reported as 0.
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

import math
import warnings
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from pyro_spvae.infer.importance import check_int, compute_importance_terms, guess_max_plate_nesting

__all__ = ["LogLikelihoodResult", "log_marginal_likelihood", "psis_khat"]

KHAT_THRESHOLD = 0.7


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


def _import_arviz():
    with warnings.catch_warnings():
        # ArviZ 0.2x announces its refactor with a FutureWarning at import time.
        warnings.simplefilter("ignore", FutureWarning)
        import arviz

    return arviz


def psis_khat(log_weights: Tensor | np.ndarray) -> np.ndarray:
    """PSIS k-hat of each row of ``log_weights`` ``(N, S)`` via :func:`arviz.psislw`.

    Rows whose log-weights span less than ``1e-3`` nats (weights bounded within 0.1 %, e.g. an
    exact posterior up to round-off) get k-hat 0, where the generalised-Pareto tail fit is undefined.
    """
    lw = np.asarray(log_weights, dtype=np.float64)
    if lw.ndim != 2:
        raise ValueError(f"log_weights must have shape (N, S), got {lw.shape}")
    az = _import_arviz()
    khat = np.zeros(lw.shape[0])
    spread = lw.max(-1) - lw.min(-1)
    fit = spread >= 1e-3
    if fit.any():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            warnings.simplefilter("ignore", UserWarning)
            _, k = az.psislw(lw[fit] - lw[fit].max(-1, keepdims=True))
        khat[fit] = np.asarray(k, dtype=np.float64).reshape(-1)
    return khat


@torch.no_grad()
def log_marginal_likelihood(
    model,
    guide,
    x: Tensor,
    num_samples: int = 5000,
    chunk_size: int = 500,
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
    :param int chunk_size: particles per vectorised pass (memory ``~ chunk_size * batch_size``).
    :param int batch_size: examples per pass.
    :param bool progress: show a tqdm progress bar.
    :param bool psis: compute PSIS k-hat (keeps one ``(batch_size, S)`` float32 buffer).
    :param bool keep_log_weights: also return all ``(N, S)`` log-weights (memory ``N * S * 4`` B).
    :returns: :class:`LogLikelihoodResult`.
    :raises ValueError: for bad sizes, or a model whose data-plate sites are scaled (subsampled).
    """
    if not isinstance(x, Tensor) or x.dim() < 1 or x.shape[0] < 1:
        raise ValueError(f"x must be a tensor of shape (N, ...) with N >= 1, got {getattr(x, 'shape', x)!r}")
    num_samples = check_int("num_samples", num_samples)
    chunk_size = min(check_int("chunk_size", chunk_size), num_samples)
    batch_size = check_int("batch_size", batch_size)
    N = x.shape[0]
    D = int(np.prod(x.shape[1:])) if x.dim() > 1 else 1
    if max_plate_nesting is None:
        max_plate_nesting = guess_max_plate_nesting(model, guide, (x[: min(N, 2)],), {})
    max_plate_nesting = check_int("max_plate_nesting", max_plate_nesting)

    log_px = torch.empty(N, dtype=torch.float64)
    ess = torch.empty(N, dtype=torch.float64)
    khat = torch.full((N,), float("nan"), dtype=torch.float64)
    all_lw = torch.empty(N, num_samples, dtype=torch.float32) if keep_log_weights else None
    num_chunks = math.ceil(num_samples / chunk_size)
    bar = tqdm(
        total=math.ceil(N / batch_size) * num_chunks,
        disable=not progress,
        desc="log p(x)",
        unit="chunk",
    )
    try:
        for start in range(0, N, batch_size):
            xb = x[start : start + batch_size]
            B = xb.shape[0]
            lse = torch.full((B,), -math.inf, dtype=torch.float64)
            lse2 = torch.full((B,), -math.inf, dtype=torch.float64)
            buf = torch.empty(B, num_samples, dtype=torch.float32) if (psis or keep_log_weights) else None
            done = 0
            while done < num_samples:
                k = min(chunk_size, num_samples - done)
                terms = compute_importance_terms(
                    model,
                    guide,
                    (xb,),
                    {},
                    num_particles=k,
                    max_plate_nesting=max_plate_nesting,
                    data_plate=data_plate,
                    share_globals=False,
                    vectorize=vectorize_particles,
                )
                if terms.local_scale != 1.0:
                    raise ValueError(
                        f"sites in plate '{data_plate}' are scaled by {terms.local_scale}; evaluate "
                        "without data subsampling or poutine.scale"
                    )
                lw = (terms.log_weights + terms.global_log_weights.unsqueeze(-1)).to(torch.float64)
                if lw.shape[1] != B:
                    raise ValueError(f"the model's plate '{data_plate}' has size {lw.shape[1]}, expected {B}")
                lse = torch.logaddexp(lse, torch.logsumexp(lw, 0))
                lse2 = torch.logaddexp(lse2, torch.logsumexp(2 * lw, 0))
                if buf is not None:
                    if done == 0:
                        offset = lw.max(0).values  # float32 storage relative to a float64 offset
                    buf[:, done : done + k] = (lw - offset).T.to(torch.float32)
                done += k
                bar.update(1)
            log_px[start : start + B] = lse - math.log(num_samples)
            ess[start : start + B] = torch.exp(2 * lse - lse2)
            if psis:
                khat[start : start + B] = torch.from_numpy(psis_khat(buf.numpy()))
            if keep_log_weights:
                all_lw[start : start + B] = (buf.to(torch.float64) + offset.unsqueeze(-1)).to(torch.float32)
    finally:
        bar.close()
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
