"""Export guide samples and importance log-weights of a batch of data to :class:`arviz.InferenceData`.

Groups of the returned object (``chain = 1``, ``draw = num_samples``):

- ``posterior``: every latent site's draws ``z ~ q(z | x)``; local sites (inside the data plate)
  carry an ``example`` dim, event dims are named ``<site>_dim_<j>``. These are proposal draws:
  weight them by ``exp(log_weight)`` (or check ``khat``) before reading them as the exact posterior.
- ``sample_stats``: ``log_weight (chain, draw, example)`` = ``log p(x_i, z_i) - log q(z_i | x_i)``
  (global sites' terms included once per particle) and ``weight``, the self-normalised weights
  per example.
- ``log_likelihood``: the observed sites' ``log p(x_i | z_i)`` per example (``(chain, draw, example)``).
- ``observed_data``: ``x`` flattened to ``(example, x_dim_0)``.
- ``attrs``: ``log_px`` (``log mean_s w_is`` per example) and ``khat`` (PSIS, see
  :func:`~pyro_spvae.infer.log_likelihood.psis_khat`).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from pyro_spvae.infer.importance import (
    _in_data_plate,
    check_int,
    compute_importance_terms,
    guess_max_plate_nesting,
)
from pyro_spvae.infer.log_likelihood import _import_arviz, psis_khat

__all__ = ["to_inference_data"]


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
    data_dim = _in_data_plate(site, data_plate)
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
    :returns: ``arviz.InferenceData`` with groups described in the module docstring; use
        ``az.summary(idata, var_names=[...])`` or ``az.plot_posterior``.
    """
    num_samples = check_int("num_samples", num_samples)
    chunk_size = check_int("chunk_size", chunk_size)
    if not isinstance(x, Tensor) or x.dim() < 1:
        raise ValueError("x must be a tensor of shape (N, ...)")
    az = _import_arviz()
    import xarray  # an ArviZ dependency, imported lazily like ArviZ

    N = x.shape[0]
    mpn = max_plate_nesting or guess_max_plate_nesting(model, guide, (x,), {})
    posterior: dict[str, list[np.ndarray]] = {}
    loglik: dict[str, list[np.ndarray]] = {}
    dims: dict[str, list[str]] = {}
    log_w = []
    done = 0
    while done < num_samples:
        k = min(chunk_size, num_samples - done)
        terms = compute_importance_terms(
            model, guide, (x,), {}, k, mpn, data_plate=data_plate, share_globals=False
        )
        log_w.append((terms.log_weights + terms.global_log_weights.unsqueeze(-1)).double())
        model_trace, guide_trace = terms.traces[0]
        for name, site in guide_trace.nodes.items():
            if site["type"] == "sample" and not site["is_observed"]:
                arr, site_dims = _site_array(site["value"], site, data_plate, mpn, N)
                posterior.setdefault(name, []).append(arr)
                dims[name] = site_dims
        for name, site in model_trace.nodes.items():
            if site["type"] != "sample" or not site["is_observed"]:
                continue
            if _in_data_plate(site, data_plate) is not None:
                lp = site["fn"].log_prob(site["value"])
                lp = lp.reshape((1,) * max(0, mpn + 1 - lp.dim()) + lp.shape)
                d = lp.dim() + _in_data_plate(site, data_plate)
                keep = {0, d}
                other = [i for i in range(lp.dim()) if i not in keep]
                lp = lp.sum(other, keepdim=True) if other else lp
                lp = lp.reshape(lp.shape[0], lp.shape[d]).expand(k, N)
                loglik.setdefault(name, []).append(lp.cpu().numpy()[None])
                dims[name] = ["example"]
        done += k
    lw = torch.cat(log_w, 0).T  # (N, S)
    log_px = torch.logsumexp(lw, -1) - math.log(num_samples)
    weight = torch.softmax(lw, -1)
    post = {name: np.concatenate(v, axis=1) for name, v in posterior.items()}
    ll = {name: np.concatenate(v, axis=1) for name, v in loglik.items()}
    sample_stats = {
        "log_weight": lw.T.numpy()[None],
        "weight": weight.T.numpy()[None],
    }
    dims.update({"log_weight": ["example"], "weight": ["example"]})
    idata = az.from_dict(
        posterior=post,
        sample_stats=sample_stats,
        log_likelihood=ll or None,
        coords={"example": np.arange(N)},
        dims=dims,
        attrs={
            "log_px": log_px.tolist(),
            "khat": psis_khat(lw.numpy()).tolist(),
            "num_samples": num_samples,
        },
    )
    obs = x.reshape(N, -1).detach().cpu().numpy()
    observed = xarray.Dataset({"x": (("example", "x_dim_0"), obs)}, coords={"example": np.arange(N)})
    idata.add_groups(observed_data=observed)
    return idata
