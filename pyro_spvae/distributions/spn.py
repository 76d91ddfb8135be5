"""``SumProductNetwork``: a torch/Pyro ``Distribution`` view over an :class:`~pyro_spvae.spn.SPN`.

The parameters live in the :class:`~pyro_spvae.spn.SPN` module (register them with
``pyro.module("spn", spn)``); this class is a light view that gives the network proper batch/event
shapes, argument validation and the ``Distribution`` interface, so that
``pyro.sample("x", SumProductNetwork(spn), obs=x)`` works.  See Poon & Domingos (2011), RAT-SPN and
Einsum Networks (Peharz et al. 2019, 2020) and SPVAE (Tan & Peharz 2019); ``docs/spvae.md``.

Leaves: the SPN's built-in factorised leaves (Bernoulli, Categorical, Normal, Binomial), or external
per-leaf-region log-densities given as ``leaf_log_prob``: a tensor ``(*batch, L, K_leaf)`` already
evaluated at the observation, or a callable ``x -> (..., L, K_leaf)`` (e.g. stacked leaf VAE
decoders, the observation site of :class:`~pyro_spvae.models.SPVAE`).  ``NaN`` entries of ``x``
mean *missing* and are marginalised exactly (built-in leaves give them log-density 0; a callable
must do the same).  With external leaves, ``sample`` draws an induced tree top-down and hands the
selected leaf components to a ``leaf_sampler`` callable.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from pyro.distributions.torch_distribution import TorchDistribution
from torch import Tensor
from torch.distributions import constraints

from pyro_spvae.spn.network import SPN, check_sample_shape, check_spn_value
from pyro_spvae.validation import check_event_shape

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
    :param event_shape: the shape of ``x`` read by a callable ``leaf_log_prob`` (e.g. images
        ``(C, H, W)`` over the ``H * W`` variables of the graph); default ``spn.event_shape``.
    :param leaf_sampler: with external leaves, a callable ``k -> x`` drawing ``x``
        ``(*k.shape[:-1], *event_shape)`` from the leaf components ``k`` ``(..., L)`` (long, ``-1``
        for leaf regions outside the tree) selected by an induced tree; enables :meth:`sample`.

    ``log_prob(x)``: ``x (..., *event_shape)`` -> ``(...)`` broadcast with ``batch_shape``.
    ``sample(sample_shape, evidence=None)``: ``sample_shape + batch_shape + event_shape`` exact samples,
    conditioned on the observed (non-NaN) entries of ``evidence`` when given (inpainting; built-in
    leaves only). ``mpe(evidence=None)``: max-product MPE completion (see
    :mod:`pyro_spvae.spn.network`), built-in leaves only.
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
        *,
        event_shape: Sequence[int] | None = None,
        leaf_sampler: Callable[[Tensor], Tensor] | None = None,
    ) -> None:
        if not isinstance(spn, SPN):
            raise TypeError(f"spn must be a pyro_spvae.spn.SPN module, got {type(spn).__name__}")
        if leaf_log_prob is None:
            spn._require_leaves()
        elif torch.is_tensor(leaf_log_prob):
            leaf_log_prob, batch_shape = self._leaf_tensor(spn, leaf_log_prob, batch_shape)
        elif not callable(leaf_log_prob):
            raise TypeError(
                f"leaf_log_prob must be None, a tensor or a callable, got {type(leaf_log_prob).__name__}"
            )
        if event_shape is not None and not callable(leaf_log_prob):
            raise ValueError("event_shape can only be given with a callable leaf_log_prob")
        if leaf_sampler is not None and not callable(leaf_sampler):
            raise TypeError(f"leaf_sampler must be a callable, got {type(leaf_sampler).__name__}")
        if leaf_sampler is not None and leaf_log_prob is None:
            raise ValueError("leaf_sampler can only be given with external leaves (leaf_log_prob)")
        self.spn = spn
        self.leaf_log_prob = leaf_log_prob
        self.leaf_sampler = leaf_sampler
        self.allow_missing = bool(allow_missing)
        shape = spn.event_shape if event_shape is None else check_event_shape("event_shape", event_shape)
        super().__init__(torch.Size(batch_shape or ()), torch.Size(shape), validate_args=validate_args)

    @staticmethod
    def _leaf_tensor(spn: SPN, leaf: Tensor, batch_shape: Sequence[int] | None) -> tuple[Tensor, torch.Size]:
        """A leaf log-density tensor checked against ``spn`` and expanded to ``batch_shape``."""
        spn._check_leaf_lp(leaf)
        own = leaf.shape[:-2]
        if batch_shape is None:
            return leaf, own
        try:
            return leaf.expand(*batch_shape, *leaf.shape[-2:]), torch.Size(batch_shape)
        except RuntimeError as err:
            raise ValueError(
                f"leaf_log_prob batch shape {tuple(own)} cannot be expanded to {tuple(batch_shape)}"
            ) from err

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
        new.leaf_sampler = self.leaf_sampler
        new.allow_missing = self.allow_missing
        super(SumProductNetwork, new).__init__(batch_shape, self.event_shape, validate_args=False)
        new._validate_args = self._validate_args
        return new

    def _validate_sample(self, value: Tensor) -> None:
        check_spn_value(value, self.event_shape, self.support, batch_shape=self.batch_shape,
                        allow_missing=self.allow_missing)

    def log_prob(self, value: Tensor) -> Tensor:
        if self._validate_args:
            self._validate_sample(value)
        n = len(self.event_shape)
        shape = torch.broadcast_shapes(value.shape[: value.dim() - n], self.batch_shape)
        leaf = self.leaf_log_prob
        if leaf is None:
            lp = self.spn.log_prob(value, validate_args=False)  # validated above when enabled
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
        sample_shape = check_sample_shape(sample_shape)
        if self.leaf_log_prob is not None:
            return self._sample_external(sample_shape, evidence)
        evidence = self._evidence(evidence)
        return self.spn.sample(sample_shape, evidence=evidence)

    @torch.no_grad()
    def _sample_external(self, sample_shape: torch.Size, evidence: Tensor | None) -> Tensor:
        """Unconditional sampling with external leaves: trees from the SPN, leaves from ``leaf_sampler``."""
        if self.leaf_sampler is None:
            raise NotImplementedError(
                "sampling needs the SPN's built-in leaves or a leaf_sampler; with external leaf "
                "log-densities use SPN.select_leaf_components() and sample the selected leaves yourself"
            )
        if evidence is not None:
            raise NotImplementedError("conditional sampling (evidence) needs the SPN's built-in leaves")
        shape = sample_shape + self.batch_shape
        ref = next(self.spn.parameters())
        if shape.numel() == 0:
            return ref.new_empty(*shape, *self.event_shape)
        unconditional = ref.new_zeros(shape.numel(), self.spn.num_leaf_regions, self.spn.num_leaf_components)
        k = self.spn.select_leaf_components(unconditional, mode="sample")
        return self.leaf_sampler(k.reshape(*shape, self.spn.num_leaf_regions))

    def mpe(self, evidence: Tensor | None = None) -> Tensor:
        """Max-product MPE completion of ``evidence`` (all missing when ``None``)."""
        if self.leaf_log_prob is not None:
            raise NotImplementedError(
                "MPE needs the SPN's built-in leaves; use SPN.select_leaf_components(mode='mpe')"
            )
        evidence = self._evidence(evidence)
        return self.spn.mpe(evidence)
