"""A small MNIST subset shipped inside the package, so the default run needs no download.

``mnist_small.npz`` holds 3,000 training, 500 validation and 500 test images (300 / 50 / 50 per
digit), drawn deterministically by ``scripts/make_embedded.py`` from the corresponding MNIST splits
(train = first 50,000 training images, valid = last 10,000, test = ``t10k``). Arrays per split:
``{split}_images`` (``uint8``, ``(N, 28, 28)``), ``{split}_labels`` (``uint8``, ``(N,)``) and
``{split}_index`` (``int64``, position of each image in its MNIST split).

MNIST is by Yann LeCun, Corinna Cortes and Christopher J.C. Burges and is distributed under the
Creative Commons Attribution-Share Alike 3.0 licence (CC BY-SA 3.0); the subset is shared under the
same licence.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from pyro_spvae.validation import check_choice

from .mnist import SPLITS

__all__ = ["EMBEDDED_PATH", "EMBEDDED_SIZES", "load_embedded"]

EMBEDDED_PATH = Path(__file__).with_name("mnist_small.npz")
#: Number of images per split in the embedded file.
EMBEDDED_SIZES: dict[str, int] = {"train": 3000, "valid": 500, "test": 500}


def load_embedded(split: str, return_index: bool = False) -> tuple[torch.Tensor, ...]:
    """Load one split of the embedded MNIST subset.

    :param split: ``"train"``, ``"valid"`` or ``"test"``.
    :param return_index: also return each image's position in its full MNIST split.
    :returns: ``images`` ``uint8`` of shape ``(N, 1, 28, 28)``, ``labels`` ``int64`` of shape
        ``(N,)`` (and ``index`` ``int64`` of shape ``(N,)`` when ``return_index``).
    :raises ValueError: for an unknown split or a damaged file.
    :raises FileNotFoundError: when the package was installed without its data file.
    """
    check_choice("split", split, SPLITS)
    if not EMBEDDED_PATH.is_file():
        raise FileNotFoundError(
            f"embedded dataset {EMBEDDED_PATH} is missing: reinstall pyro-spvae with its package data "
            "or regenerate it with scripts/make_embedded.py"
        )
    with np.load(EMBEDDED_PATH, allow_pickle=False) as archive:
        try:
            images = archive[f"{split}_images"]
            labels = archive[f"{split}_labels"]
            index = archive[f"{split}_index"]
        except KeyError as err:
            raise ValueError(f"embedded dataset {EMBEDDED_PATH} is damaged: {err}") from err
    if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != (28, 28):
        raise ValueError(f"embedded dataset {EMBEDDED_PATH}: bad images {images.dtype} {images.shape}")
    if labels.shape != (images.shape[0],) or index.shape != (images.shape[0],):
        raise ValueError(f"embedded dataset {EMBEDDED_PATH}: labels/index do not match the images")
    x = torch.from_numpy(np.ascontiguousarray(images)).unsqueeze(1)
    y = torch.from_numpy(labels.astype(np.int64))
    if return_index:
        return x, y, torch.from_numpy(index.astype(np.int64))
    return x, y
