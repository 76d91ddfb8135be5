"""Which examples each training step sees: a reshuffled pass over the training set per epoch,
resumable exactly from a checkpoint."""

from __future__ import annotations

from typing import Any, Protocol

import torch

from pyro_spvae.validation import check_tensor

__all__ = ["BatchSource", "EpochSampler", "TensorData"]


class BatchSource(Protocol):
    """What the trainer needs from a dataset (``pyro_spvae.data.ImageDataset`` satisfies it)."""

    def __len__(self) -> int: ...

    def batch(self, idx: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor: ...


class TensorData:
    """A :class:`BatchSource` of fixed examples already in memory (no transform): ``batch(idx)``
    is ``x[idx]`` whatever the generator. For training on tensors of one's own.

    :param x: the examples, ``(N, *event_shape)`` with ``N >= 1``.
    :raises TypeError: if ``x`` is not a tensor; :raises ValueError: for an empty one.
    :ivar x: the examples.
    """

    def __init__(self, x: torch.Tensor) -> None:
        check_tensor("x", x)
        if x.dim() == 0 or x.shape[0] == 0:
            raise ValueError(f"x must hold at least one example along its first dim, got {tuple(x.shape)}")
        self.x = x

    def __len__(self) -> int:
        return self.x.shape[0]

    def batch(self, idx: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """The examples at ``idx`` (``generator`` is unused: the examples are fixed)."""
        return self.x[idx]


class EpochSampler:
    """Global batches of ``batch_size`` indices from a fresh permutation of ``range(n)`` each
    epoch (an epoch is ``n // batch_size`` steps; the remainder is left out of that epoch).

    :param n: number of training examples (at least ``batch_size``).
    :param batch_size: examples per global batch.
    :param seed: seed of :attr:`generator`, the trainer-owned generator that shuffles each epoch.
    :raises ValueError: when ``batch_size`` exceeds ``n``.
    :ivar epoch: completed passes. :ivar position: batches drawn in the current pass.
    """

    def __init__(self, n: int, batch_size: int, seed: int) -> None:
        if n < batch_size:
            raise ValueError(f"batch_size {batch_size} exceeds the {n} training examples")
        self.n, self.batch_size = n, batch_size
        self.steps_per_epoch = n // batch_size
        self.generator = torch.Generator().manual_seed(seed)
        self.epoch, self.position = 0, 0
        self.perm: torch.Tensor | None = None

    @property
    def progress(self) -> float:
        """Epochs completed, with the fraction of the current one."""
        return self.epoch + self.position / self.steps_per_epoch

    def next_indices(self) -> torch.Tensor:
        """The indices of the next global batch (call :meth:`advance` once it is trained on)."""
        if self.perm is None:
            self.perm = torch.randperm(self.n, generator=self.generator)
            self.position = 0
        b = self.batch_size
        return self.perm[self.position * b : (self.position + 1) * b]

    def advance(self) -> None:
        self.position += 1
        if self.position >= self.steps_per_epoch:
            self.epoch += 1
            self.position = 0
            self.perm = None

    def state_dict(self) -> dict[str, Any]:
        """``epoch``, ``position`` and ``perm`` (the generator travels with the RNG snapshot)."""
        return {"epoch": self.epoch, "position": self.position, "perm": self.perm}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epoch = int(state["epoch"])
        self.position = int(state["position"])
        self.perm = state["perm"]
