r"""Reading a trained latent Gaussian mixture (:class:`~pyro_spvae.models.DLGMM` and its guides).

- :func:`responsibilities`: ``r_ik = E_{q(z, v | x_i)}[p(c = k | z, v)]`` per example, the model's
  component posterior averaged over the guide's ``z`` (and sticks ``v``), with
  ``p(k | z, v) = softmax_k(log pi_k(v) + log N(z; mu_k, sigma_k^2))`` (the cluster assignment of
  VaDE, Jiang et al. 2017, eq. 16, averaged over ``q`` instead of taken at its mean);
- :func:`mixture_weights`: the expected mixture weights (the model's own weights, or ``E_q[pi(v)]``
  averaged over the data for models with stick sites), and :func:`components_in_use`: how many
  components carry more than a threshold of the mass;
- :func:`samples_per_component`: observations decoded from each component, heaviest first;
- :func:`clustering_accuracy`: unsupervised clustering accuracy against labels with the best
  one-to-one matching of clusters to labels (Hungarian algorithm, Kuhn 1955, through
  :func:`scipy.optimize.linear_sum_assignment`), the metric of DEC (Xie et al. 2016, eq. 10) and
  VaDE (94.46% on MNIST);
- :func:`plot_latent_space`: a 2-D PCA projection of latents coloured by label, written atomically.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pyro
import pyro.poutine as poutine
import torch
from torch import Tensor

from pyro_spvae.models.dlgmm import DLGMM
from pyro_spvae.training.files import atomic_write
from pyro_spvae.validation import (
    check_instance,
    check_integer_dtype,
    check_positive_int,
    check_real,
    check_tensor,
)

__all__ = [
    "ClusteringAccuracy",
    "clustering_accuracy",
    "components_in_use",
    "mixture_weights",
    "plot_latent_space",
    "responsibilities",
    "samples_per_component",
]


def _check_model(model: object) -> DLGMM:
    return check_instance("model", model, DLGMM)


@torch.no_grad()
def _guide_draws(guide, x: Tensor, num_samples: int) -> tuple[Tensor, Tensor | None]:
    """``(z (S, B, D), v (S, B or 1, K-1) or None)`` from ``num_samples`` vectorised guide runs
    (a particle plate left of the data plate; enumeration flags are not acted on: ``"c"`` is sampled)."""
    with poutine.block(), pyro.plate("num_particles_vectorized", num_samples, dim=-2):
        trace = poutine.trace(guide).get_trace(x)
    if "z" not in trace.nodes:
        raise ValueError("the guide has no site 'z'")
    z = trace.nodes["z"]["value"]
    v = trace.nodes["v"]["value"] if "v" in trace.nodes else None
    return z.expand(num_samples, *z.shape[-2:]), v


def _batches(x: Tensor, batch_size: int):
    yield from torch.split(x, check_positive_int("batch_size", batch_size))


@torch.no_grad()
def responsibilities(model: DLGMM, guide, x: Tensor, num_samples: int = 16,
                     batch_size: int = 256) -> Tensor:
    """Per-example component posteriors ``(N, K)`` (rows sum to 1), see the module docstring.

    :param model: a :class:`~pyro_spvae.models.DLGMM`; :param guide: any of its guides.
    :param x: data ``(N, *event_shape)``.
    :param num_samples: draws of ``q(z, v | x)`` averaged per example.
    :param batch_size: examples per guide pass.
    """
    model = _check_model(model)
    S = check_positive_int("num_samples", num_samples)
    out = []
    for xb in _batches(model.validate(x), batch_size):
        z, v = _guide_draws(guide, xb, S)
        out.append(model.z_prior(v).responsibilities(z).mean(0))
    return torch.cat(out)


@torch.no_grad()
def mixture_weights(model: DLGMM, guide=None, x: Tensor | None = None, num_samples: int = 16,
                    batch_size: int = 256) -> Tensor:
    """Expected mixture weights ``(K,)``: the model's weights without stick sites; with sticks,
    ``E_q[pi(v)]`` over ``num_samples`` draws of the guide, averaged over the examples ``x``.

    :raises ValueError: for a model with stick sites and no ``guide`` or ``x``.
    """
    model = _check_model(model)
    if model.stick_site is None:
        return model.z_prior().probs.detach()
    if guide is None or x is None:
        raise ValueError("a model with stick sites needs the guide and data to read its weights")
    S = check_positive_int("num_samples", num_samples)
    total, count = 0.0, 0
    for xb in _batches(model.validate(x), batch_size):
        _, v = _guide_draws(guide, xb, S)
        pi = model.stick_logits(v).exp().expand(S, xb.shape[0], model.num_components)
        total, count = total + pi.sum((0, 1)), count + S * xb.shape[0]
    return total / count


def components_in_use(weights: Tensor, threshold: float = 0.01) -> int:
    """The number of components whose weight exceeds ``threshold``.

    :param weights: mixture weights ``(K,)``, or responsibilities ``(N, K)`` (averaged over examples).
    :param threshold: in ``[0, 1)``.
    """
    check_tensor("weights", weights)
    threshold = check_real("threshold", threshold, 0.0, 1.0, high_open=True)
    if weights.dim() not in (1, 2):
        raise ValueError(f"weights must have shape (K,) or (N, K), got {tuple(weights.shape)}")
    w = weights.mean(0) if weights.dim() == 2 else weights
    return int((w > threshold).sum())


@torch.no_grad()
def samples_per_component(model: DLGMM, num_samples: int, weights: Tensor | None = None,
                          mean: bool = True) -> tuple[Tensor, Tensor]:
    """Observations from each component, ``z ~ N(mu_k, sigma_k^2)`` decoded by
    :meth:`DLGMM.sample_components <pyro_spvae.models.DLGMM.sample_components>`.

    :param weights: optional ``(K,)`` weights (e.g. :func:`mixture_weights`): components are then
        returned heaviest first.
    :returns: ``(samples (K, num_samples, *event_shape), order (K,))``, ``order[j]`` the component
        of row ``j``.
    """
    model = _check_model(model)
    samples = model.sample_components(num_samples, mean=mean)
    order = torch.arange(model.num_components)
    if weights is not None:
        check_tensor("weights", weights)
        if weights.shape != (model.num_components,):
            raise ValueError(f"weights must have shape ({model.num_components},), got {tuple(weights.shape)}")
        order = torch.argsort(weights.detach().cpu(), descending=True)
    return samples[order.to(samples.device)], order


class ClusteringAccuracy(NamedTuple):
    """:ivar accuracy: fraction of examples whose matched label is right, in ``[0, 1]``.
    :ivar mapping: cluster -> label of the best one-to-one matching (unmatched clusters absent)."""

    accuracy: float
    mapping: dict[int, int]


def clustering_accuracy(labels: Tensor, clusters: Tensor) -> ClusteringAccuracy:
    """Unsupervised clustering accuracy ``max_m (1/N) sum_i 1[labels_i = m(clusters_i)]`` over
    one-to-one maps ``m`` from clusters to labels (Hungarian matching on the contingency table).

    With more clusters than labels the surplus clusters stay unmatched and their examples count as
    errors (as in DEC and VaDE).

    :param labels: ``(N,)`` non-negative integer labels; :param clusters: ``(N,)`` non-negative
        integer cluster indices (e.g. ``responsibilities(...).argmax(-1)``).
    :raises ValueError: for different lengths, an empty input or negative values.
    """
    from scipy.optimize import linear_sum_assignment

    y, c = check_integer_dtype("labels", labels), check_integer_dtype("clusters", clusters)
    if y.dim() != 1 or y.shape != c.shape or y.numel() == 0:
        raise ValueError(f"labels and clusters must be non-empty 1-D tensors of equal length, got "
                         f"{tuple(y.shape)} and {tuple(c.shape)}")
    if bool((y < 0).any()) or bool((c < 0).any()):
        raise ValueError("labels and clusters must be non-negative")
    y, c = y.cpu().long(), c.cpu().long()
    n_c, n_y = int(c.max()) + 1, int(y.max()) + 1
    counts = torch.zeros(n_c, n_y, dtype=torch.long).index_put_((c, y), torch.ones_like(y), accumulate=True)
    rows, cols = linear_sum_assignment(counts.numpy(), maximize=True)
    matched = int(counts[torch.as_tensor(rows), torch.as_tensor(cols)].sum())
    return ClusteringAccuracy(matched / y.numel(), {int(r): int(k) for r, k in zip(rows, cols)})


def _pca_2d(z: Tensor) -> np.ndarray:
    """The first two principal components ``(N, 2)`` of ``z (N, D)`` (zero-padded for ``D = 1``)."""
    z = z.detach().cpu().double()
    z = z - z.mean(0)
    _, _, vh = torch.linalg.svd(z, full_matrices=False)
    proj = z @ vh[:2].T
    return torch.nn.functional.pad(proj, (0, 2 - proj.shape[1])).numpy()


def plot_latent_space(z: Tensor, labels: Tensor | None, path: str | os.PathLike, title: str | None = None,
                      point_size: float = 4.0, legend_title: str = "label") -> Path:
    """Scatter the 2-D PCA projection of latents ``z (N, D)`` coloured by ``labels (N,)`` (integer
    classes, e.g. digits or components; ``None``: one colour) and write it as PNG to ``path``
    atomically (the directory is created; a failed write leaves the previous file intact).

    Each class keeps its colour across plots (``tab10`` for classes below 10, else ``tab20``,
    indexed by the class value) and gets a legend entry titled ``legend_title``.

    :returns: the written path.
    """
    from matplotlib import colormaps
    from matplotlib.figure import Figure

    check_tensor("z", z)
    if z.dim() != 2 or z.shape[0] < 2:
        raise ValueError(f"z must have shape (N, D) with N >= 2, got {tuple(z.shape)}")
    if labels is not None and (check_integer_dtype("labels", labels).shape != z.shape[:1]):
        raise ValueError(f"labels must have shape ({z.shape[0]},), got {tuple(labels.shape)}")
    xy = _pca_2d(z)
    fig = Figure(figsize=(5.6, 5))
    ax = fig.add_subplot()
    if labels is None:
        ax.scatter(xy[:, 0], xy[:, 1], s=point_size)
    else:
        y = labels.detach().cpu().numpy()
        cmap = colormaps["tab10" if y.max() < 10 else "tab20"]
        for c in np.unique(y):
            ax.scatter(xy[y == c, 0], xy[y == c, 1], s=point_size, color=cmap(int(c) % cmap.N), label=str(c))
        ax.legend(title=legend_title, markerscale=3, fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
    ax.set_xlabel("PC 1")
    ax.set_ylabel("PC 2")
    ax.set_title(title or "latent space (PCA)")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=100, bbox_inches="tight"))
