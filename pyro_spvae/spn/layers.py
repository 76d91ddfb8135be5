"""Vectorised sum-product layers in log space (Einsum Networks, Peharz et al. ICML 2020).

One *layer* of the region-graph schedule holds all partitions whose parent regions have the same
height.  For partition ``p`` with children ``l(p)``, ``r(p)`` (vectors of ``K`` log-values each) and
``O`` output sums,

.. math::  \\log S_{p,o} = \\log \\sum_{i,j} W_{p,i,j,o} \\exp(L_{p,i}) \\exp(R_{p,j}),

i.e. all ``K x K`` products of child sums (Poon & Domingos 2011; RAT-SPN, Peharz et al. 2019) followed by
``O`` weighted sums with weights ``W = softmax(logits)`` over ``(i, j)``.  :class:`EinsumLayer` evaluates
every partition of a layer with ONE einsum using the log-einsum-exp trick: subtract the per-child
maximum, exponentiate, contract, take the log and add the maxima back.  :class:`MixingLayer` mixes the
partitions of regions that have several, ``log sum_p w_{r,p,o} exp(S_{p,o})`` with softmaxed weights.

Both layers also provide the *max-product* variant (``mode="max"``), replacing every sum by a maximum
of the weighted terms, used for MPE inference, and the log-weights needed for top-down backtracking.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from pyro_spvae.validation import check_positive_int

__all__ = ["EinsumLayer", "MixingLayer"]


def _safe_max(x: Tensor, dim: int) -> Tensor:
    """Detached max over ``dim`` (keepdim), with non-finite maxima (all ``-inf``) replaced by 0."""
    return x.detach().amax(dim, keepdim=True).nan_to_num(0.0, 0.0, 0.0)


class EinsumLayer(nn.Module):
    """Product + sum layer for ``P`` binary partitions, evaluated as one einsum.

    :param left: ``(P,)`` storage index of each partition's left child region.
    :param right: ``(P,)`` storage index of each partition's right child region.
    :param num_in: ``K``, the size of the value vector stored per region (the maximum over regions).
    :param num_out: ``O``, the number of sums per partition (``K_sum``, or 1 at the root).
    :param left_sizes: ``(P,)`` number of valid entries of each left child's vector (``<= num_in``;
        the remaining entries are ``-inf`` padding and get zero weight).  ``None``: all valid.
    :param right_sizes: as ``left_sizes`` for the right children.
    :param init_std: standard deviation of the normal initialisation of the weight logits.

    Parameter: ``logits`` of shape ``(P, K, K, O)``; ``log_weights()`` is ``log_softmax`` over
    ``(K, K)`` (padding masked to ``-inf``).
    """

    def __init__(
        self,
        left: Tensor,
        right: Tensor,
        num_in: int,
        num_out: int,
        left_sizes: Tensor | None = None,
        right_sizes: Tensor | None = None,
        init_std: float = 1.0,
    ) -> None:
        super().__init__()
        P = int(left.shape[0])
        if left.shape != (P,) or right.shape != (P,):
            raise ValueError(
                f"left and right must be 1-d of equal length, got {tuple(left.shape)}, {tuple(right.shape)}"
            )
        num_in, num_out = check_positive_int("num_in", num_in), check_positive_int("num_out", num_out)
        self.num_partitions, self.num_in, self.num_out = P, num_in, num_out
        self.register_buffer("left", left.long(), persistent=False)
        self.register_buffer("right", right.long(), persistent=False)
        if left_sizes is None and right_sizes is None:
            self.register_buffer("mask", None, persistent=False)
        else:
            ls = left_sizes if left_sizes is not None else torch.full((P,), num_in)
            rs = right_sizes if right_sizes is not None else torch.full((P,), num_in)
            ar = torch.arange(num_in)
            mask = (ar < ls[:, None])[:, :, None] & (ar < rs[:, None])[:, None, :]  # (P, K, K)
            self.register_buffer("mask", mask, persistent=False)
        self.logits = nn.Parameter(init_std * torch.randn(P, num_in, num_in, num_out))

    def _masked_logits(self) -> Tensor:
        logits = self.logits
        if self.mask is not None:
            logits = logits.masked_fill(~self.mask.unsqueeze(-1), float("-inf"))
        P, K, _, O = logits.shape
        return logits.reshape(P, K * K, O)

    def log_weights(self) -> Tensor:
        """``(P, K, K, O)`` log sum-weights, normalised over the ``(K, K)`` products of each sum."""
        return torch.log_softmax(self._masked_logits(), dim=1).view(self.logits.shape)

    def weights(self) -> Tensor:
        """``(P, K * K, O)`` sum-weights (softmax of the logits over the ``K x K`` products)."""
        return torch.softmax(self._masked_logits(), dim=1)

    def forward(self, values: Tensor, mode: str = "sum") -> Tensor:
        """Evaluate all partitions of the layer.

        :param values: ``(R, B, K)`` log-values of all regions computed so far, region-major (storage
            order); region-major layout makes the child gathers contiguous copies.
        :param mode: ``"sum"`` (sum-product) or ``"max"`` (max-product).
        :returns: ``(P, B, O)`` log-values of the partition sums.
        """
        left = values.index_select(0, self.left)  # (P, B, K)
        right = values.index_select(0, self.right)
        P, B, K = left.shape
        if mode == "max":
            logw = self.log_weights().to(values.dtype)
            terms = left[:, :, :, None, None] + right[:, :, None, :, None] + logw[:, None]  # (P, B, K, K, O)
            return terms.flatten(2, 3).amax(2)
        if mode != "sum":
            raise ValueError(f"mode must be 'sum' or 'max', got {mode!r}")
        ml = _safe_max(left, -1)
        mr = _safe_max(right, -1)
        el, er = torch.exp(left - ml), torch.exp(right - mr)
        outer = (el.unsqueeze(-1) * er.unsqueeze(-2)).reshape(P, B, K * K)
        # the einsum "pbq,pqo->pbo" as one batched matmul over partitions
        prob = torch.bmm(outer, self.weights().to(values.dtype))
        return torch.log(prob) + (ml + mr)

    def forward_batch_last(self, values: Tensor) -> Tensor:
        """Sum-product evaluation in the batch-last layout used by :meth:`SPN.forward`.

        :param values: ``(R, K, B)`` region log-values (storage order), batch innermost.
        :returns: ``(P, O, B)`` partition log-values.

        Same maths as :meth:`forward` with ``mode="sum"``. With the batch innermost every
        elementwise op (max subtraction, ``exp``, the ``K x K`` outer product and their backwards)
        runs over contiguous rows of length ``B`` instead of broadcasting over tiny trailing dims
        of size ``K``, and the contraction is one ``bmm`` ``(P, O, K*K) @ (P, K*K, B)``.
        """
        left = values.index_select(0, self.left)  # (P, K, B)
        right = values.index_select(0, self.right)
        P, K, B = left.shape
        ml = _safe_max(left, 1)  # (P, 1, B)
        mr = _safe_max(right, 1)
        el, er = torch.exp(left - ml), torch.exp(right - mr)
        outer = (el.unsqueeze(2) * er.unsqueeze(1)).view(P, K * K, B)
        prob = torch.bmm(self.weights().to(values.dtype).transpose(1, 2), outer)  # (P, O, B)
        return torch.log(prob) + (ml + mr)

    def extra_repr(self) -> str:
        return f"partitions={self.num_partitions}, in={self.num_in}, out={self.num_out}"


class MixingLayer(nn.Module):
    """Mixture over the partitions of regions that have several (Einsum Networks' mixing layer).

    :param partitions: ``(R, M)`` layer-local partition indices per mixed region, padded with ``-1``
        (``M`` = the largest number of partitions of a region).
    :param num_out: ``O``, the number of sums per region.
    :param init_std: standard deviation of the normal initialisation of the weight logits.
    :param num_partitions: ``P``, the number of partitions of the layer (default: largest index + 1).

    Parameter: ``logits`` ``(R, M, O)``; ``log_weights()`` is ``log_softmax`` over ``M`` with padding
    masked to ``-inf``.
    """

    def __init__(
        self, partitions: Tensor, num_out: int, init_std: float = 1.0, num_partitions: int | None = None
    ) -> None:
        super().__init__()
        if partitions.dim() != 2:
            raise ValueError(
                f"partitions must be a 2-d (regions, max partitions) table, got {tuple(partitions.shape)}"
            )
        R, M = partitions.shape
        num_out = check_positive_int("num_out", num_out)
        self.num_regions, self.max_partitions, self.num_out = R, M, num_out
        self.register_buffer("partitions", partitions.long(), persistent=False)
        self.register_buffer("valid", partitions >= 0, persistent=False)
        P = int(partitions.max()) + 1 if num_partitions is None else num_partitions
        if int(partitions.max()) >= P:
            raise ValueError(f"partition index {int(partitions.max())} out of range for {P} partitions")
        self.num_partitions = P
        # padding entries point at an extra -inf row appended after the P partitions
        self.register_buffer(
            "gather_index", torch.where(partitions >= 0, partitions, P).long(), persistent=False
        )
        self.logits = nn.Parameter(init_std * torch.randn(R, M, num_out))

    def log_weights(self) -> Tensor:
        """``(R, M, O)`` log mixing weights over the partitions of each region."""
        logits = self.logits.masked_fill(~self.valid.unsqueeze(-1), float("-inf"))
        return torch.log_softmax(logits, dim=1)

    def forward(self, part_values: Tensor, mode: str = "sum") -> Tensor:
        """:param part_values: ``(P, B, O)`` partition log-values of the layer (partition-major).
        :returns: ``(R, B, O)`` log-values of the mixed regions."""
        P, B, O = part_values.shape
        if P != self.num_partitions:
            raise ValueError(f"expected values of {self.num_partitions} partitions, got {P}")
        padded = torch.cat([part_values, part_values.new_full((1, B, O), float("-inf"))], dim=0)
        logw = self.log_weights().to(part_values.dtype).unsqueeze(2)  # (R, M, 1, O)
        terms = padded[self.gather_index] + logw  # (R, M, B, O)
        if mode == "max":
            return terms.amax(1)
        if mode != "sum":
            raise ValueError(f"mode must be 'sum' or 'max', got {mode!r}")
        return torch.logsumexp(terms, dim=1)

    def forward_batch_last(self, part_values: Tensor) -> Tensor:
        """Sum mode in the batch-last layout: ``(P, O, B)`` partition log-values -> ``(R, O, B)``."""
        P, O, B = part_values.shape
        padded = torch.cat([part_values, part_values.new_full((1, O, B), float("-inf"))], dim=0)
        logw = self.log_weights().to(part_values.dtype).unsqueeze(-1)  # (R, M, O, 1)
        return torch.logsumexp(padded[self.gather_index] + logw, dim=1)

    def extra_repr(self) -> str:
        return f"regions={self.num_regions}, max_partitions={self.max_partitions}, out={self.num_out}"
