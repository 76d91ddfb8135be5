"""Training: an SVI :class:`Trainer` for any ``pyro.infer.ELBO`` with validation, early stopping,
atomic checkpoints that resume exactly, a NaN/Inf guard, JSON-lines metrics and data-parallel
training under ``torchrun``; configuration presets and factories used by the CLI."""

from pyro_spvae.training.checkpoint import (
    CHECKPOINT_FORMAT,
    CheckpointError,
    NonFiniteCheckpointError,
    capture_rng_state,
    load_checkpoint,
    remove_stale_temporaries,
    restore_rng_state,
    save_checkpoint,
)
from pyro_spvae.training.config import TrainConfig
from pyro_spvae.training.distributed import (
    DistributedContext,
    all_reduce_sum_,
    barrier,
    broadcast_parameters,
    gather_concat,
    init_distributed,
    launch_command,
    rank_slice,
    shards_for_rank,
    shutdown_distributed,
)
from pyro_spvae.training.factory import ELBO_NAMES, make_elbo, make_optimizer
from pyro_spvae.training.metrics import MetricsWriter, read_metrics
from pyro_spvae.training.presets import DEFAULT_PRESET, PRESETS, preset_config
from pyro_spvae.training.seeding import derive_seed, seed_everything
from pyro_spvae.training.trainer import (
    BatchSource,
    NonFiniteError,
    Trainer,
    TrainResult,
    release_foreign_params,
)

__all__ = [
    "BatchSource",
    "CHECKPOINT_FORMAT",
    "CheckpointError",
    "DEFAULT_PRESET",
    "DistributedContext",
    "ELBO_NAMES",
    "MetricsWriter",
    "NonFiniteCheckpointError",
    "NonFiniteError",
    "PRESETS",
    "TrainConfig",
    "TrainResult",
    "Trainer",
    "all_reduce_sum_",
    "barrier",
    "broadcast_parameters",
    "capture_rng_state",
    "derive_seed",
    "gather_concat",
    "init_distributed",
    "launch_command",
    "load_checkpoint",
    "make_elbo",
    "make_optimizer",
    "preset_config",
    "rank_slice",
    "read_metrics",
    "release_foreign_params",
    "remove_stale_temporaries",
    "restore_rng_state",
    "save_checkpoint",
    "seed_everything",
    "shards_for_rank",
    "shutdown_distributed",
]
