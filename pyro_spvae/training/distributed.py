"""Data-parallel training on ``torch.distributed`` (``torchrun``).

Launch any ``pyro-spvae train`` command under ``torchrun --nproc_per_node=N -m pyro_spvae train ...``:
the process group is initialised from the environment variables that ``torchrun`` sets (``gloo``
on CPU, ``nccl`` when CUDA is available). Every process holds the full model; each global batch of
``B`` examples is split into ``S`` shards (``S`` = number of processes unless chosen otherwise) and
process ``r`` computes the gradient of shards ``r, r + N, r + 2N, ...``. Gradients are all-reduced
with ``SUM`` and divided by the global ``B``, so the update equals that of one process with batch
``B`` and the same number of shards: the per-shard randomness is keyed by ``(seed, step, shard)``
(see :mod:`pyro_spvae.training.seeding`), not by the process that draws it.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

from pyro_spvae.validation import check_choice, check_positive_int

__all__ = [
    "DistributedContext",
    "all_reduce_sum_",
    "barrier",
    "broadcast_parameters",
    "check_num_shards",
    "gather_concat",
    "init_distributed",
    "launch_command",
    "rank_slice",
    "shard_slices",
    "shards_for_rank",
    "shutdown_distributed",
]


@dataclass(frozen=True)
class DistributedContext:
    """Where this process sits in a (possibly trivial) process group.

    :ivar rank: global rank of this process.
    :ivar world_size: number of processes.
    :ivar local_rank: rank on this node (selects the CUDA device).
    :ivar device: device the model lives on.
    :ivar backend: ``"gloo"``/``"nccl"`` or ``None`` for a single process.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    backend: str | None = None

    @property
    def enabled(self) -> bool:
        """True when a process group with more than one process is active."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """True on rank 0, the process that writes files and prints progress."""
        return self.rank == 0


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name}={value!r} is not an integer") from None


def init_distributed(backend: str | None = None) -> DistributedContext:
    """Initialise ``torch.distributed`` from ``torchrun``'s environment when ``WORLD_SIZE > 1``.

    :param backend: ``"gloo"`` or ``"nccl"``; default ``nccl`` when CUDA is available, else ``gloo``.
    :returns: the context; a single-process context when ``WORLD_SIZE`` is unset or 1.
    :raises ValueError: for inconsistent ``RANK``/``WORLD_SIZE`` or an unknown backend.
    """
    world_size = _env_int("WORLD_SIZE", 1)
    if world_size <= 1:
        return DistributedContext()
    rank = _env_int("RANK", -1)
    local_rank = _env_int("LOCAL_RANK", 0)
    if not 0 <= rank < world_size:
        raise ValueError(f"RANK={rank} is not in [0, WORLD_SIZE={world_size})")
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    check_choice("distributed backend", backend, ("gloo", "nccl"))
    if backend == "nccl":
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, init_method="env://", rank=rank, world_size=world_size)
    return DistributedContext(rank, world_size, local_rank, device, backend)


def shutdown_distributed() -> None:
    """Destroy the process group if one is active."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier(ctx: DistributedContext) -> None:
    """Wait for all processes (no-op for a single process)."""
    if ctx.enabled:
        dist.barrier()


def all_reduce_sum_(tensor: torch.Tensor, ctx: DistributedContext) -> torch.Tensor:
    """In-place ``SUM`` all-reduce of ``tensor`` across processes (no-op for one process)."""
    if ctx.enabled:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def broadcast_parameters(tensors: Iterable[torch.Tensor], ctx: DistributedContext) -> None:
    """Overwrite ``tensors`` on every rank with rank 0's values (identical initialisation)."""
    if not ctx.enabled:
        return
    with torch.no_grad():
        for t in tensors:
            dist.broadcast(t.data, src=0)


def check_num_shards(num_shards: int, batch_size: int, ctx: DistributedContext) -> None:
    """Check the shard count against the processes and the batch.

    :raises ValueError: when ``num_shards`` is smaller than the number of processes (a process
        would compute nothing) or larger than the batch (a shard would be empty).
    """
    if num_shards < ctx.world_size:
        raise ValueError(
            f"number of shards ({num_shards}) must be at least the number of processes ({ctx.world_size})"
        )
    if num_shards > batch_size:
        raise ValueError(f"number of shards ({num_shards}) exceeds the batch size ({batch_size})")


def shards_for_rank(
    idx: torch.Tensor, num_shards: int, ctx: DistributedContext
) -> list[tuple[int, torch.Tensor]]:
    """Split the global batch ``idx`` into ``num_shards`` near-equal contiguous shards and return
    ``(shard_number, shard_idx)`` for the shards this rank computes (``r, r + N, ...``).

    The union over ranks of the returned shards is exactly ``idx``, in order.

    :raises ValueError: see :func:`check_num_shards`.
    """
    check_num_shards(num_shards, idx.numel(), ctx)
    parts = torch.tensor_split(idx, num_shards)
    return [(k, parts[k]) for k in range(ctx.rank, num_shards, ctx.world_size)]


def shard_slices(n: int, num_shards: int, ctx: DistributedContext) -> list[tuple[int, slice]]:
    """:func:`shards_for_rank` of ``range(n)`` as slices: ``(shard_number, positions)`` for the
    shards this rank computes, the positions split as ``torch.tensor_split`` splits them. A batch
    sliced by them is a view, not a copy.

    :raises ValueError: see :func:`check_num_shards`.
    """
    check_num_shards(num_shards, n, ctx)
    base, extra = divmod(n, num_shards)
    out = []
    for k in range(ctx.rank, num_shards, ctx.world_size):
        start = k * base + min(k, extra)
        out.append((k, slice(start, start + base + (1 if k < extra else 0))))
    return out


def rank_slice(n: int, ctx: DistributedContext) -> slice:
    """The contiguous block of ``range(n)`` evaluated by this rank (blocks in rank order)."""
    base, extra = divmod(n, ctx.world_size)
    start = ctx.rank * base + min(ctx.rank, extra)
    stop = start + base + (1 if ctx.rank < extra else 0)
    return slice(start, stop)


def gather_concat(tensor: torch.Tensor, ctx: DistributedContext) -> torch.Tensor:
    """Concatenate ``tensor`` (first dim may differ between ranks) across ranks in rank order.

    Every rank receives the full result.
    """
    if not ctx.enabled:
        return tensor
    sizes = torch.zeros(ctx.world_size, dtype=torch.int64, device=tensor.device)
    sizes[ctx.rank] = tensor.shape[0]
    dist.all_reduce(sizes, op=dist.ReduceOp.SUM)
    max_size = int(sizes.max())
    padded = tensor.new_zeros((max_size, *tensor.shape[1:]))
    padded[: tensor.shape[0]] = tensor
    out = [torch.empty_like(padded) for _ in range(ctx.world_size)]
    dist.all_gather(out, padded.contiguous())
    return torch.cat([o[: int(s)] for o, s in zip(out, sizes.tolist())])


def launch_command(argv: Sequence[str], nproc: int = 1) -> list[str]:
    """The command line that runs ``pyro-spvae *argv`` in ``nproc`` data-parallel processes: the
    plain module for one process, ``torchrun --standalone --nproc_per_node=nproc`` (through
    ``python -m torch.distributed.run`` of the running interpreter) for several.

    :raises TypeError: if ``nproc`` is not an int; :raises ValueError: if it is below 1.
    """
    check_positive_int("nproc", nproc)
    module = [sys.executable, "-m", "pyro_spvae", *map(str, argv)]
    if nproc == 1:
        return module
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
            *module[1:]]
