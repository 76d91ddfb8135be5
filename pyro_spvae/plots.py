"""Plots written by the CLI (matplotlib, Agg backend: no display needed).

- :func:`save_image_grid`: a grid of images ``(N, C, H, W)`` with values in ``[0, 1]``.
- :func:`save_training_curve`: training and validation loss per example against steps.
- :func:`model_samples` / :func:`reconstructions`: images from any model/guide pair following the
  model contract (observation site ``"x"``), using the mean of ``p(x | z)`` where available.
- :func:`save_run_figures`: the figures ``pyro-spvae train`` leaves in a run directory.

Figures are rendered in memory and written atomically
(:func:`~pyro_spvae.training.atomic_write`): a failed write (full disk, read-only directory)
leaves the previous file intact and no temporary file behind.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from pyro import poutine  # noqa: E402

from pyro_spvae.training.files import atomic_write  # noqa: E402
from pyro_spvae.validation import check_tensor  # noqa: E402

__all__ = [
    "image_grid",
    "model_samples",
    "reconstructions",
    "save_image_grid",
    "save_run_figures",
    "save_training_curve",
]


def _save_figure(fig: Any, path: str | os.PathLike) -> Path:
    """Render ``fig`` as PNG and write it atomically to ``path`` (its directory is created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        return atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=100, bbox_inches="tight"))
    finally:
        plt.close(fig)


def image_grid(images: torch.Tensor, nrow: int | None = None, padding: int = 2) -> torch.Tensor:
    """Tile ``images`` of shape ``(N, C, H, W)`` (``C`` in {1, 3}) into one ``(H', W', C)`` array.

    :raises TypeError: if ``images`` is not a tensor.
    :raises ValueError: for a wrong shape, an empty batch or non-finite values.
    """
    check_tensor("images", images)
    if images.dim() != 4 or images.shape[1] not in (1, 3):
        raise ValueError(
            f"images must be a tensor of shape (N, C, H, W) with C in (1, 3), got {tuple(images.shape)}"
        )
    n, c, h, w = images.shape
    if n == 0:
        raise ValueError("images is empty")
    images = images.detach().float().cpu()
    if not torch.isfinite(images).all():
        raise ValueError("images contain NaN or Inf")
    nrow = nrow or math.ceil(math.sqrt(n))
    ncol = math.ceil(n / nrow)
    grid = torch.ones(c, ncol * (h + padding) + padding, nrow * (w + padding) + padding)
    for i in range(n):
        r, q = divmod(i, nrow)
        top, left = padding + r * (h + padding), padding + q * (w + padding)
        grid[:, top : top + h, left : left + w] = images[i].clamp(0, 1)
    return grid.permute(1, 2, 0)


def save_image_grid(
    images: torch.Tensor, path: str | os.PathLike, nrow: int | None = None, title: str | None = None
) -> Path:
    """Write :func:`image_grid` of ``images`` as a PNG."""
    grid = image_grid(images, nrow)
    fig, ax = plt.subplots(figsize=(6, 6 * grid.shape[0] / grid.shape[1]))
    ax.imshow(grid.squeeze(-1).numpy() if grid.shape[-1] == 1 else grid.numpy(), cmap="gray", vmin=0, vmax=1)
    ax.axis("off")
    if title:
        ax.set_title(title)
    return _save_figure(fig, path)


def save_training_curve(
    records: Sequence[dict[str, Any]], path: str | os.PathLike, title: str | None = None
) -> Path:
    """Plot ``train_loss`` and ``valid_loss`` (per example) against ``step`` from metrics records.

    :raises ValueError: when no record has a training or validation loss.
    """
    train = [(r["step"], r["train_loss"]) for r in records if r.get("train_loss") is not None]
    valid = [(r["step"], r["valid_loss"]) for r in records if r.get("valid_loss") is not None]
    if not train and not valid:
        raise ValueError("no losses to plot: the metrics records hold no train_loss or valid_loss")
    fig, ax = plt.subplots(figsize=(6, 4))
    if train:
        ax.plot(*zip(*train), label="train")
    if valid:
        ax.plot(*zip(*valid), "o-", label="validation")
    ax.set_xlabel("step")
    ax.set_ylabel("loss per example (nats)")
    ax.grid(alpha=0.3)
    ax.legend()
    if title:
        ax.set_title(title)
    return _save_figure(fig, path)


def _observation_image(fn: Any, mean: bool) -> torch.Tensor:
    if mean:
        try:
            return fn.mean
        except NotImplementedError:
            pass
    return fn.sample()


@torch.no_grad()
def model_samples(
    model: Any, event_shape: Sequence[int], num: int, mean: bool = True, site: str = "x"
) -> torch.Tensor:
    """``num`` images from the model: latents from the prior, then the mean of ``p(x | z)``
    (``mean=True``, when the distribution has one) or a sample.

    Runs ``model(x)`` with the observation site un-conditioned on a placeholder batch of zeros
    (valid for every likelihood), so it works for any model following the model contract.
    """
    placeholder = torch.zeros(num, *event_shape)
    tr = poutine.trace(poutine.uncondition(model)).get_trace(placeholder)
    if site not in tr.nodes:
        raise ValueError(f"the model has no observation site {site!r}")
    return _observation_image(tr.nodes[site]["fn"], mean)


@torch.no_grad()
def reconstructions(
    model: Any, guide: Any, x: torch.Tensor, mean: bool = True, site: str = "x"
) -> torch.Tensor:
    """Reconstructions of ``x``: latents from ``guide(x)``, then the mean of ``p(x | z)`` (or a
    sample)."""
    guide_trace = poutine.trace(guide).get_trace(x)
    tr = poutine.trace(poutine.replay(poutine.uncondition(model), trace=guide_trace)).get_trace(x)
    if site not in tr.nodes:
        raise ValueError(f"the model has no observation site {site!r}")
    return _observation_image(tr.nodes[site]["fn"], mean)


def save_run_figures(out_dir: str | os.PathLike, model: Any, guide: Any, data: Any, *, seed: int,
                     title: str, records: Sequence[dict[str, Any]] = ()) -> None:
    """The figures of a trained run in ``out_dir``: ``curve.png`` (from the metrics ``records``,
    when there are any), ``samples.png`` (64 samples, noise from ``seed``) and
    ``reconstructions.png`` (the first 32 examples of ``data`` next to their reconstructions)."""
    from pyro_spvae.training import seed_everything

    out_dir = Path(out_dir)
    if records:
        save_training_curve(records, out_dir / "curve.png", title=title)
    seed_everything(seed)
    event_shape = tuple(data.event_shape)
    save_image_grid(model_samples(model, event_shape, 64), out_dir / "samples.png", title="samples")
    n = min(32, len(data))
    x = data.batch(torch.arange(n), torch.Generator().manual_seed(seed))
    recon = reconstructions(model, guide, x)
    pairs = torch.stack([x, recon], 1).reshape(2 * n, *event_shape)
    save_image_grid(pairs, out_dir / "reconstructions.png", nrow=8, title="data | reconstruction")
