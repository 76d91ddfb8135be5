"""``SumProductNetwork``: a torch/Pyro ``Distribution`` view over an :class:`~pyro_spvae.spn.SPN`.

The parameters live in the :class:`~pyro_spvae.spn.SPN` module (register them with
``pyro.module("spn", spn)``); this class is a light view that gives the network proper batch/event
shapes, argument validation and the ``Distribution`` interface, so that
``pyro.sample("x", SumProductNetwork(spn), obs=x)`` works.  See Poon & Domingos (2011), RAT-SPN and
Einsum Networks (Peharz et al. 2019, 2020) and SPVAE (Tan & Peharz 2019).

Leaves: the SPN's built-in factorised leaves (Bernoulli, Categorical, Normal, Binomial), or external
per-leaf-region log-densities given as ``leaf_log_prob``: a tensor ``(*batch, L, K_leaf)`` already
evaluated at the observation, or a callable ``x -> (..., L, K_leaf)`` (e.g. stacked leaf VAE
decoders).  ``NaN`` entries of ``x`` mean *missing* and are marginalised exactly (built-in leaves
give them log-density 0; a callable must do the same).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from pyro.distributions.torch_distribution import TorchDistribution
from torch import Tensor
from torch.distributions import constraints

from ..spn.network import SPN

__all__ = ["SumProductNetwork"]


class SumProductNetwork(TorchDistribution):
    """Distribution of a sum-product network over ``x`` with ``event_shape = spn.event_shape``.

    :param spn: the :class:`~pyro_spvae.spn.SPN` module holding structure and parameters.
    :param leaf_log_prob: ``None`` (use ``spn``'s built-in leaves), a tensor ``(*batch, L, K_leaf)``
        of leaf log-densities at the observed value (its leading dims become the batch shape and
        ``log_prob(value)`` then only validates ``value``), or a callable mapping
        ``x (..., *event_shape)`` to ``(..., L, K_leaf)``.
    :param batch_shape: batch shape (default: ``()`` or the leading dims of a leaf tensor).
    :param allow_missing: whether ``NaN`` (missing) entries are accepted by ``log_prob``.
    :param validate_args: validate values passed to ``log_prob``.

    ``log_prob(x)``: ``x (..., *event_shape)`` -> ``(...)`` broadcast with ``batch_shape``.
    ``sample(sample_shape, evidence=None)``: ``sample_shape + batch_shape + event_shape`` exact samples,
    conditioned on the observed (non-NaN) entries of ``evidence`` when given (inpainting).
    ``mpe(evidence=None)``: max-product MPE completion (see :mod:`pyro_spvae.spn.network`).
    Sampling and MPE need built-in leaves; with external leaves use
    :meth:`SPN.select_leaf_components`.
    """

    arg_constraints: dict[str, constraints.Constraint] = {}
    has_rsample = False

    def __init__(
        self,
        spn: SPN,
        leaf_log_prob: Tensor | Callable[[Tensor], Tensor] | None = None,
        batch_shape: Sequence[int] | None = None,
        allow_missing: bool = True,
        validate_args: bool | None = None,
    ) -> None:
        if not isinstance(spn, SPN):
            raise ValueError(f"spn must be a pyro_spvae.spn.SPN module, got {type(spn).__name__}")
        if leaf_log_prob is None:
            spn._require_leaves()
        elif torch.is_tensor(leaf_log_prob):
            spn._check_leaf_lp(leaf_log_prob)
            own = leaf_log_prob.shape[:-2]
            if batch_shape is None:
                batch_shape = own
            else:
                try:
                    leaf_log_prob = leaf_log_prob.expand(*batch_shape, *leaf_log_prob.shape[-2:])
                except RuntimeError as err:
                    raise ValueError(
                        f"leaf_log_prob batch shape {tuple(own)} cannot be expanded to {tuple(batch_shape)}"
                    ) from err
        elif not callable(leaf_log_prob):
            raise ValueError(
                f"leaf_log_prob must be None, a tensor or a callable, got {type(leaf_log_prob).__name__}"
            )
        self.spn = spn
        self.leaf_log_prob = leaf_log_prob
        self.allow_missing = bool(allow_missing)
        super().__init__(torch.Size(batch_shape or ()), spn.event_shape, validate_args=validate_args)

    @constraints.dependent_property(is_discrete=False, event_dim=0)
    def support(self) -> constraints.Constraint:
        if self.leaf_log_prob is None and self.spn.leaves is not None:
            return self.spn.leaves.support
        return constraints.real

    def expand(
        self, batch_shape: Sequence[int], _instance: SumProductNetwork | None = None
    ) -> SumProductNetwork:
        new = self._get_checked_instance(SumProductNetwork, _instance)
        batch_shape = torch.Size(batch_shape)
        leaf = self.leaf_log_prob
        if torch.is_tensor(leaf):
            leaf = leaf.expand(*batch_shape, *leaf.shape[-2:])
        new.spn = self.spn
        new.leaf_log_prob = leaf
        new.allow_missing = self.allow_missing
        super(SumProductNetwork, new).__init__(batch_shape, self.event_shape, validate_args=False)
        new._validate_args = self._validate_args
        return new

    def _validate_sample(self, value: Tensor) -> None:
        if not torch.is_tensor(value):
            raise ValueError(f"SumProductNetwork value must be a tensor, got {type(value).__name__}")
        if not value.is_floating_point():
            raise ValueError(
                f"SumProductNetwork value must be a floating-point tensor (NaN = missing), got {value.dtype}"
            )
        ev = tuple(self.event_shape)
        n = len(ev)
        if value.dim() < n or tuple(value.shape[value.dim() - n :]) != ev:
            raise ValueError(
                f"SumProductNetwork value must have shape (..., {', '.join(map(str, ev))}); "
                f"got {tuple(value.shape)}"
            )
        try:
            torch.broadcast_shapes(value.shape[: value.dim() - n], self.batch_shape)
        except RuntimeError as err:
            raise ValueError(
                f"value batch shape {tuple(value.shape[: value.dim() - n])} does not broadcast with the "
                f"distribution's batch shape {tuple(self.batch_shape)}"
            ) from err
        missing = torch.isnan(value)
        if not self.allow_missing and bool(missing.any()):
            raise ValueError("SumProductNetwork value contains NaN but allow_missing=False")
        if bool(torch.isinf(value).any()):
            raise ValueError("SumProductNetwork value contains infinite entries")
        observed = value[~missing]
        if observed.numel() and not bool(self.support.check(observed).all()):
            raise ValueError(
                f"SumProductNetwork value has entries outside the leaves' support {self.support}"
            )

    def log_prob(self, value: Tensor) -> Tensor:
        if self._validate_args:
            self._validate_sample(value)
        n = len(self.event_shape)
        shape = torch.broadcast_shapes(value.shape[: value.dim() - n], self.batch_shape)
        leaf = self.leaf_log_prob
        if leaf is None:
            lp = self.spn.log_prob(value)
        elif torch.is_tensor(leaf):
            lp = self.spn(leaf)
        else:
            lp = self.spn(leaf(value))
        return lp.expand(shape)

    def _evidence(self, evidence: Tensor | None) -> Tensor:
        """``evidence`` validated and expanded to ``batch_shape + event_shape`` (all-NaN when ``None``)."""
        if evidence is None:
            ref = next(self.spn.parameters())
            return torch.full(
                (*self.batch_shape, *self.event_shape), float("nan"), dtype=ref.dtype, device=ref.device
            )
        self._validate_sample(evidence)
        n = len(self.event_shape)
        shape = torch.broadcast_shapes(evidence.shape[: evidence.dim() - n], self.batch_shape)
        return evidence.expand(*shape, *self.event_shape)

    def sample(
        self, sample_shape: Sequence[int] = torch.Size(), evidence: Tensor | None = None, **kwargs
    ) -> Tensor:
        """Exact (conditional) samples; see the class docstring."""
        if self.leaf_log_prob is not None:
            raise NotImplementedError(
                "sampling needs the SPN's built-in leaves; with external leaf log-densities use "
                "SPN.select_leaf_components() and sample the selected leaves yourself"
            )
        sample_shape = torch.Size(sample_shape)
        evidence = self._evidence(evidence)
        return self.spn.sample(sample_shape, evidence=evidence)

    def mpe(self, evidence: Tensor | None = None) -> Tensor:
        """Max-product MPE completion of ``evidence`` (all missing when ``None``)."""
        if self.leaf_log_prob is not None:
            raise NotImplementedError(
                "MPE needs the SPN's built-in leaves; use SPN.select_leaf_components(mode='mpe')"
            )
        evidence = self._evidence(evidence)
        return self.spn.mpe(evidence)
