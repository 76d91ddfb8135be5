"""Regenerate ``pyro_spvae/data/mnist_small.npz`` deterministically from the real MNIST files.

Usage::

    .venv/bin/python scripts/make_embedded.py [--root ../shared/data/mnist] [--out PATH]

For each split, draws a fixed number of images per digit (300 train, 50 valid, 50 test) without
replacement using ``numpy.random.default_rng(SEED)``, keeps them in their original MNIST order and
stores images, labels and source indices in a compressed ``.npz``. MNIST (LeCun, Cortes & Burges)
is licensed CC BY-SA 3.0.
"""

from __future__ import annotations

import argparse
import hashlib
from pathlib import Path

import numpy as np

from pyro_spvae.data.embedded import EMBEDDED_PATH, EMBEDDED_SIZES
from pyro_spvae.data.mnist import load_mnist

SEED = 20190609  # ICML 2019 (SPVAE)
REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_ROOT = REPO_ROOT.parent / "shared" / "data" / "mnist"


def select(labels: np.ndarray, per_class: int, rng: np.random.Generator) -> np.ndarray:
    """Sorted indices of ``per_class`` images of each digit, drawn without replacement."""
    chosen = [
        rng.choice(np.flatnonzero(labels == digit), size=per_class, replace=False) for digit in range(10)
    ]
    return np.sort(np.concatenate(chosen))


def build(root: Path) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(SEED)
    arrays: dict[str, np.ndarray] = {}
    for split, size in EMBEDDED_SIZES.items():
        images, labels = load_mnist(split, root=root, download=False)
        index = select(labels.numpy(), size // 10, rng)
        arrays[f"{split}_images"] = images[index, 0].numpy()
        arrays[f"{split}_labels"] = labels[index].numpy().astype(np.uint8)
        arrays[f"{split}_index"] = index.astype(np.int64)
    return arrays


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=DEFAULT_ROOT, help="directory of the MNIST IDX files")
    parser.add_argument("--out", type=Path, default=EMBEDDED_PATH, help="output .npz path")
    args = parser.parse_args(argv)
    arrays = build(args.root)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(args.out, **arrays)
    digest = hashlib.sha256(b"".join(arrays[k].tobytes() for k in sorted(arrays))).hexdigest()
    size_kib = args.out.stat().st_size / 1024
    print(f"wrote {args.out} ({size_kib:.0f} KiB); content sha256 {digest}")
    for split in EMBEDDED_SIZES:
        counts = np.bincount(arrays[f"{split}_labels"], minlength=10)
        print(f"  {split}: {len(arrays[f'{split}_labels'])} images, label counts {counts.tolist()}")


if __name__ == "__main__":
    main()
