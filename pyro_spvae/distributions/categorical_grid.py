"""256-way categorical likelihood on the 8-bit grid (as in PixelRNN, van den Oord et al. 2016)."""

from __future__ import annotations

import torch
from pyro.distributions import TorchDistribution
from torch.distributions import constraints

from .grid import GridConstraint, grid_index, grid_values

__all__ = ["CategoricalGrid"]


class CategoricalGrid(TorchDistribution):
    r"""``X = K / (L - 1)`` with ``K ~ Categorical(softmax(logits))`` over ``L`` levels.

    :param logits: unnormalised log-probabilities of shape ``batch_shape + (L,)``; ``L = 256``
        for 8-bit data. ``batch_shape = logits.shape[:-1]``, ``event_shape = ()``.
    """

    arg_constraints = {"logits": constraints.real_vector}
    has_rsample = False

    def __init__(self, logits: torch.Tensor, validate_args: bool | None = None) -> None:
        if not isinstance(logits, torch.Tensor) or logits.dim() < 1 or logits.shape[-1] < 2:
            raise ValueError("CategoricalGrid needs logits of shape (..., L) with L >= 2 levels")
        self.logits = logits - logits.logsumexp(-1, keepdim=True)
        self.num_levels = logits.shape[-1]
        super().__init__(logits.shape[:-1], torch.Size(), validate_args=validate_args)

    @constraints.dependent_property(is_discrete=True, event_dim=0)
    def support(self) -> constraints.Constraint:
        return GridConstraint(self.num_levels)

    def expand(self, batch_shape, _instance=None):
        new = self._get_checked_instance(CategoricalGrid, _instance)
        batch_shape = torch.Size(batch_shape)
        new.logits = self.logits.expand(batch_shape + (self.num_levels,))
        new.num_levels = self.num_levels
        super(CategoricalGrid, new).__init__(batch_shape, torch.Size(), validate_args=False)
        new._validate_args = self._validate_args
        return new

    @property
    def probs(self) -> torch.Tensor:
        """Level probabilities, shape ``batch_shape + (L,)``."""
        return self.logits.exp()

    @property
    def _grid(self) -> torch.Tensor:
        return grid_values(self.num_levels, dtype=self.logits.dtype, device=self.logits.device)

    @property
    def mean(self) -> torch.Tensor:
        return (self.probs * self._grid).sum(-1)

    @property
    def mode(self) -> torch.Tensor:
        return self.logits.argmax(-1).to(self.logits.dtype) / (self.num_levels - 1)

    @property
    def variance(self) -> torch.Tensor:
        return (self.probs * (self._grid - self.mean.unsqueeze(-1)) ** 2).sum(-1)

    def sample(self, sample_shape: tuple[int, ...] = ()) -> torch.Tensor:
        with torch.no_grad():
            cat = torch.distributions.Categorical(logits=self.logits, validate_args=False)
            k = cat.sample(torch.Size(sample_shape))
            return k.to(self.logits.dtype) / (self.num_levels - 1)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        if self._validate_args:
            self._validate_sample(value)
        k = grid_index(value, self.num_levels)
        shape = torch.broadcast_shapes(k.shape, self.batch_shape)
        logits = self.logits.expand(shape + (self.num_levels,))
        return logits.gather(-1, k.expand(shape).unsqueeze(-1)).squeeze(-1)
