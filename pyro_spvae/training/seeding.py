"""Seeding: one integer seed drives every random number generator of a run.

Randomness inside a training step (latent noise drawn by the guide, dynamic binarisation, ...) is
keyed by ``(seed, step, shard)`` through :func:`derive_seed`, not by the history of the
generators. This is what makes a resumed run bit-identical to an uninterrupted one and a run on
``N`` processes identical (to float summation order) to one process with the same number of
shards: the noise for a shard does not depend on which process draws it.
"""

from __future__ import annotations

import random

import numpy as np
import torch

from pyro_spvae.validation import check_nonnegative_int

__all__ = ["derive_seed", "seed_everything"]

_MASK63 = (1 << 63) - 1


def derive_seed(seed: int, *keys: int) -> int:
    """A 63-bit seed derived from ``seed`` and integer ``keys`` (statistically independent streams).

    :raises TypeError: for a non-integer input; :raises ValueError: for a negative one.
    """
    for k in (seed, *keys):
        check_nonnegative_int("seed key", k)
    state = np.random.SeedSequence([int(seed), *(int(k) for k in keys)]).generate_state(2, dtype=np.uint32)
    return ((int(state[0]) << 32) | int(state[1])) & _MASK63


def seed_everything(seed: int) -> None:
    """Seed Python's :mod:`random`, NumPy's global generator and torch (CPU and CUDA).

    Like ``pyro.set_rng_seed`` but accepts 63-bit seeds (NumPy receives the low 32 bits).

    :raises TypeError: for a non-integer seed; :raises ValueError: for a negative one.
    """
    check_nonnegative_int("seed", seed)
    random.seed(int(seed))
    np.random.seed(int(seed) & 0xFFFFFFFF)
    # torch.manual_seed also queues lazy CUDA seeding (recording a stack trace each call); that
    # costs ~1 ms per training step on CPU-only machines, so seed CUDA only where it exists.
    torch.default_generator.manual_seed(int(seed))
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(int(seed))
