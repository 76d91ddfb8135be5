"""ArviZ interoperability: PSIS k-hat diagnostics and export to :class:`arviz.InferenceData`.

**PSIS k-hat** (:func:`psis_khat`). Pareto-smoothed importance sampling (Vehtari, Simpson,
Gelman, Yao & Gabry, "Pareto Smoothed Importance Sampling", JMLR 2024, §3; see
``docs/estimators.md``) fits a generalised Pareto distribution to the largest ``M = ceil(min(S / 5,
3 sqrt(S)))`` of ``S`` importance weights; its shape ``k-hat`` says how heavy the weights' tail is
(``> 0.7``: the importance-sampling estimate is unreliable). :func:`psis_khat` computes exactly the
``k-hat`` of :func:`arviz.psislw` (the empirical-Bayes fit of Zhang & Stephens 2009 with ArviZ's
prior, ``reff = 1``), vectorised over the rows of a ``(N, S)`` array instead of one Python call per
row, without sorting the body of the weights and without importing ArviZ (tested against
:func:`arviz.psislw` to ``1e-6``).

**Export** (:func:`to_inference_data`). Groups of the returned object (``chain = 1``,
``draw = num_samples``):

- ``posterior``: every latent site's draws ``z ~ q(z | x)``; local sites (inside the data plate)
  carry an ``example`` dim, event dims are named ``<site>_dim_<j>``. These are proposal draws:
  weight them by ``exp(log_weight)`` (or check ``khat``) before reading them as the exact posterior.
- ``sample_stats``: ``log_weight (chain, draw, example)`` = ``log p(x_i, z_i) - log q(z_i | x_i)``
  (global sites' terms included once per particle) and ``weight``, the self-normalised weights
  per example.
- ``log_likelihood``: the observed sites' ``log p(x_i | z_i)`` per example (``(chain, draw, example)``).
- ``observed_data``: ``x`` flattened to ``(example, x_dim_0)``.
- ``attrs``: ``log_px`` (``log mean_s w_is`` per example) and ``khat`` (:func:`psis_khat`).
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import torch
from torch import Tensor

from pyro_spvae.infer.importance import ImportanceTerms, compute_importance_terms
from pyro_spvae.infer.particles import guess_max_plate_nesting, in_data_plate
from pyro_spvae.validation import check_positive_int, check_tensor

__all__ = ["psis_khat", "to_inference_data"]

#: Log-weight spread (nats) below which the weights count as constant and k-hat is 0.
KHAT_MIN_SPREAD = 1e-3


def _import_arviz():
    with warnings.catch_warnings():
        # ArviZ 0.2x announces its refactor with a FutureWarning at import time.
        warnings.simplefilter("ignore", FutureWarning)
        import arviz

    return arviz


def _gpd_khat(tails: np.ndarray) -> np.ndarray:
    """Generalised-Pareto shape of each row of ``tails`` ``(R, n)`` (ascending exceedances > 0).

    Zhang & Stephens (2009) empirical Bayes with ArviZ's ``_gpdfit`` constants (``m = 30 +
    floor(sqrt(n))`` grid points, prior ``3`` on the quartile, ``k`` shrunk towards 0.5 with weight
    10), the same floating-point operations row by row.
    """
    n = tails.shape[1]
    m = 30 + int(n**0.5)
    grid = 1 - np.sqrt(m / (np.arange(1, m + 1, dtype=float) - 0.5))  # (m,)
    b = grid / (3 * tails[:, int(n / 4 + 0.5) - 1, None]) + 1 / tails[:, -1, None]  # (R, m)
    k = np.log1p(-b[:, :, None] * tails[:, None, :]).mean(-1)  # (R, m)
    len_scale = n * (np.log(-(b / k)) - k - 1)
    weights = 1 / np.exp(len_scale[:, None, :] - len_scale[:, :, None]).sum(-1)  # (R, m)
    weights = np.where(weights >= 10 * np.finfo(float).eps, weights, 0.0)  # drops NaN too, as ArviZ
    total = weights.sum(-1, keepdims=True)
    weights = np.divide(weights, total, out=np.zeros_like(weights), where=total > 0)
    b_post = np.where(weights > 0, b * weights, 0.0).sum(-1)  # (R,)
    k_post = np.log1p(-b_post[:, None] * tails).mean(-1)
    return (n * k_post + 10 * 0.5) / (n + 10)


def _khat_rows(lw: np.ndarray) -> np.ndarray:
    """:func:`arviz.psislw`'s k-hat of every row of ``lw`` ``(R, S)`` (``reff = 1``)."""
    num = lw.shape[1]
    tail_max = int(np.ceil(min(num / 5.0, 3 * num**0.5)))
    x = lw - lw.max(-1, keepdims=True)
    kth = num - tail_max - 1  # ascending index of the cutoff value, ArviZ's ``cutoff_ind``
    top = np.partition(x, kth, axis=-1)[:, kth:]  # the cutoff value and the M values above it
    top.sort(-1)
    cutoff = np.maximum(top[:, 0], np.log(np.finfo(float).tiny))
    tail_len = (top[:, 1:] > cutoff[:, None]).sum(-1)  # < M when values tie with the cutoff
    khat = np.full(lw.shape[0], np.inf)  # ArviZ: k = inf when the tail has 4 values or fewer
    for n in np.unique(tail_len[tail_len > 4]):
        rows = tail_len == n
        with np.errstate(all="ignore"):  # a degenerate fit gives NaN, as in ArviZ
            khat[rows] = _gpd_khat(np.exp(top[rows, -n:]) - np.exp(cutoff[rows, None]))
    return khat


def psis_khat(log_weights: Tensor | np.ndarray) -> np.ndarray:
    """PSIS k-hat of each row of ``log_weights`` ``(N, S)``: that of :func:`arviz.psislw`, vectorised.

    Rows whose log-weights span less than ``1e-3`` nats (weights bounded within 0.1 %, e.g. an
    exact posterior up to round-off) get k-hat 0, where the generalised-Pareto tail fit is undefined.

    :param log_weights: ``(N, S)`` log importance weights (any offset per row).
    :returns: ``(N,)`` float64; ``inf`` for rows whose tail holds 4 values or fewer (small ``S``).
    :raises ValueError: if ``log_weights`` is not two-dimensional.
    """
    lw = np.asarray(log_weights, dtype=np.float64)
    if lw.ndim != 2:
        raise ValueError(f"log_weights must have shape (N, S), got {lw.shape}")
    khat = np.zeros(lw.shape[0])
    fit = (lw.max(-1) - lw.min(-1)) >= KHAT_MIN_SPREAD
    if fit.any():
        khat[fit] = _khat_rows(lw[fit])
    return khat


def _site_array(
    value: Tensor, site: dict, data_plate: str, mpn: int, num_examples: int
) -> tuple[np.ndarray, list]:
    """Reshape a site's value ``(K, ..., event)`` to ``(K, [example], *event)`` and name its dims."""
    event_dim = site["fn"].event_dim
    L = mpn + 1
    batch_ndim = value.dim() - event_dim
    value = value.reshape((1,) * max(0, L - batch_ndim) + value.shape)
    batch = value.shape[: value.dim() - event_dim]
    event = value.shape[value.dim() - event_dim :]
    data_dim = in_data_plate(site, data_plate)
    K = batch[0]
    dims: list[str] = []
    if data_dim is not None:
        d = len(batch) + data_dim
        value = value.movedim(d, 1)
        other = value.shape[2 : 2 + len(batch) - 2]
        if any(s != 1 for s in other):
            raise ValueError(f"site '{site['name']}' lies in plates other than '{data_plate}'; not supported")
        value = value.reshape((K, value.shape[1]) + tuple(event)).expand((K, num_examples) + tuple(event))
        dims.append("example")
    else:
        if any(s != 1 for s in batch[1:]):
            raise ValueError(f"global site '{site['name']}' lies in a plate; not supported")
        value = value.reshape((K,) + tuple(event))
    dims += [f"{site['name']}_dim_{j}" for j in range(len(event))]
    return value.detach().cpu().numpy()[None], dims


def _observed_log_lik(site: dict, data_plate: str, mpn: int, k: int, num_examples: int) -> np.ndarray:
    """An observed data-plate site's ``log p(x_i | z_i)`` as ``(1, k, num_examples)``."""
    lp = site["fn"].log_prob(site["value"])
    lp = lp.reshape((1,) * max(0, mpn + 1 - lp.dim()) + lp.shape)
    d = lp.dim() + in_data_plate(site, data_plate)
    other = [i for i in range(lp.dim()) if i not in {0, d}]
    lp = lp.sum(other, keepdim=True) if other else lp
    return lp.reshape(lp.shape[0], lp.shape[d]).expand(k, num_examples).cpu().numpy()[None]


class _Draws:
    """Per-site draws, log-likelihoods and dim names collected over the chunks of particles."""

    def __init__(self, data_plate: str, mpn: int, num_examples: int) -> None:
        self.data_plate, self.mpn, self.num_examples = data_plate, mpn, num_examples
        self.posterior: dict[str, list[np.ndarray]] = {}
        self.loglik: dict[str, list[np.ndarray]] = {}
        self.dims: dict[str, list[str]] = {}
        self.log_w: list[Tensor] = []

    def add(self, terms: ImportanceTerms, k: int) -> None:
        self.log_w.append((terms.log_weights + terms.global_log_weights.unsqueeze(-1)).double())
        model_trace, guide_trace = terms.traces[0]
        for name, site in guide_trace.nodes.items():
            if site["type"] == "sample" and not site["is_observed"]:
                arr, self.dims[name] = _site_array(site["value"], site, self.data_plate, self.mpn,
                                                   self.num_examples)
                self.posterior.setdefault(name, []).append(arr)
        for name, site in model_trace.nodes.items():
            if site["type"] != "sample" or not site["is_observed"]:
                continue
            if in_data_plate(site, self.data_plate) is not None:
                lp = _observed_log_lik(site, self.data_plate, self.mpn, k, self.num_examples)
                self.loglik.setdefault(name, []).append(lp)
                self.dims[name] = ["example"]


@torch.no_grad()
def to_inference_data(
    model,
    guide,
    x: Tensor,
    num_samples: int = 1000,
    chunk_size: int = 500,
    max_plate_nesting: int | None = None,
    data_plate: str = "data",
):
    """Draw ``num_samples`` guide samples per example of ``x`` and return an ``arviz.InferenceData``.

    :param x: a batch ``(N, *event_shape)`` of data.
    :param int num_samples: draws per example (``draw`` dim).
    :param int chunk_size: particles per vectorised pass.
    :param max_plate_nesting: plates of the model; ``None`` guesses it by running the pair once.
    :returns: ``arviz.InferenceData`` with groups described in the module docstring; use
        ``az.summary(idata, var_names=[...])`` or ``az.plot_posterior``.
    """
    num_samples = check_positive_int("num_samples", num_samples)
    chunk_size = check_positive_int("chunk_size", chunk_size)
    check_tensor("x", x)
    if x.dim() < 1:
        raise ValueError("x must be a tensor of shape (N, ...)")
    az = _import_arviz()
    import xarray  # an ArviZ dependency, imported lazily like ArviZ

    N = x.shape[0]
    mpn = max_plate_nesting or guess_max_plate_nesting(model, guide, (x,), {})
    draws = _Draws(data_plate, mpn, N)
    done = 0
    while done < num_samples:
        k = min(chunk_size, num_samples - done)
        draws.add(compute_importance_terms(model, guide, (x,), {}, k, mpn, data_plate=data_plate,
                                           share_globals=False), k)
        done += k
    lw = torch.cat(draws.log_w, 0).T  # (N, S)
    log_px = torch.logsumexp(lw, -1) - math.log(num_samples)
    weight = torch.softmax(lw, -1)
    post = {name: np.concatenate(v, axis=1) for name, v in draws.posterior.items()}
    ll = {name: np.concatenate(v, axis=1) for name, v in draws.loglik.items()}
    sample_stats = {"log_weight": lw.T.numpy()[None], "weight": weight.T.numpy()[None]}
    dims = {**draws.dims, "log_weight": ["example"], "weight": ["example"]}
    idata = az.from_dict(
        posterior=post,
        sample_stats=sample_stats,
        log_likelihood=ll or None,
        coords={"example": np.arange(N)},
        dims=dims,
        attrs={"log_px": log_px.tolist(), "khat": psis_khat(lw.numpy()).tolist(), "num_samples": num_samples},
    )
    obs = x.reshape(N, -1).detach().cpu().numpy()
    observed = xarray.Dataset({"x": (("example", "x_dim_0"), obs)}, coords={"example": np.arange(N)})
    idata.add_groups(observed_data=observed)
    return idata
