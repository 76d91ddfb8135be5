"""Training: an SVI :class:`Trainer` for any ``pyro.infer.ELBO`` with validation, early stopping,
atomic checkpoints that resume exactly, a NaN/Inf guard, JSON-lines metrics and data-parallel
training under ``torchrun``; run configurations (:class:`TrainConfig`, presets), the factories
that turn one into a trainer (:meth:`Trainer.from_config`), run directories that are validated
completely before anything is written (:func:`plan_training`, :class:`TrainingSession`,
:func:`resume_config`), integrity-checked checkpoints with a fallback to the previous one,
atomic outputs (:func:`atomic_write`), memory estimates, and restoring a run directory; training
hooks (:mod:`pyro_spvae.training.hooks`: GECO's Lagrange multiplier, the capacity and temperature
schedules, the MI regulariser's ``Q`` network) that carry the estimator's state across steps,
checkpoints and resumes."""

from pyro_spvae.training.checkpoint import (
    CHECKPOINT_FORMAT,
    CheckpointError,
    LoadedCheckpoint,
    NonFiniteCheckpointError,
    UnsafeCheckpointError,
    capture_rng_state,
    load_checkpoint,
    load_checkpoint_or_previous,
    previous_checkpoint_path,
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
    check_num_shards,
    gather_concat,
    init_distributed,
    launch_command,
    rank_slice,
    shards_for_rank,
    shutdown_distributed,
)
from pyro_spvae.training.early_stopping import PlateauTracker
from pyro_spvae.training.factory import (
    ELBO_NAMES,
    RunError,
    build_model,
    load_data,
    make_elbo,
    make_objective,
    make_optimizer,
    model_max_plate_nesting,
)
from pyro_spvae.training.files import atomic_write, atomic_write_text, check_output_dir, check_output_file
from pyro_spvae.training.hooks import (
    CapacityHook,
    GECOHook,
    MIHook,
    TemperatureHook,
    TrainingHook,
    hooks_for,
    validation_elbo,
)
from pyro_spvae.training.memory import MemoryBudgetError, memory_budget
from pyro_spvae.training.metrics import MetricsError, MetricsWriter, read_metrics
from pyro_spvae.training.params import ParamStoreSlot, release_foreign_params
from pyro_spvae.training.presets import DEFAULT_PRESET, PRESETS, preset_config
from pyro_spvae.training.resume import RESUMABLE_FIELDS, ResumePoint, resume_config
from pyro_spvae.training.rundir import (
    CONFIG_NAME,
    RUN_FILES,
    RestoredRun,
    checkpoint_path,
    load_run_config,
    remove_run_files,
    restore_run,
    run_leftovers,
)
from pyro_spvae.training.sampler import TensorData
from pyro_spvae.training.seeding import derive_seed, seed_everything
from pyro_spvae.training.session import TrainingSession, TrainPlan, plan_training
from pyro_spvae.training.settings import (
    CapacitySettings,
    EarlyStopping,
    GECOSettings,
    MISettings,
    Schedule,
    StepOptions,
    TemperatureSettings,
)
from pyro_spvae.training.step import NonFiniteError
from pyro_spvae.training.trainer import (
    BEST_NAME,
    CHECKPOINT_NAME,
    METRICS_NAME,
    BatchSource,
    Trainer,
    TrainResult,
)

__all__ = [
    "BEST_NAME",
    "BatchSource",
    "CHECKPOINT_FORMAT",
    "CHECKPOINT_NAME",
    "CONFIG_NAME",
    "CapacityHook",
    "CapacitySettings",
    "CheckpointError",
    "DEFAULT_PRESET",
    "DistributedContext",
    "ELBO_NAMES",
    "EarlyStopping",
    "GECOHook",
    "GECOSettings",
    "LoadedCheckpoint",
    "METRICS_NAME",
    "MIHook",
    "MISettings",
    "MemoryBudgetError",
    "MetricsError",
    "MetricsWriter",
    "NonFiniteCheckpointError",
    "NonFiniteError",
    "PRESETS",
    "ParamStoreSlot",
    "PlateauTracker",
    "RESUMABLE_FIELDS",
    "RUN_FILES",
    "RestoredRun",
    "ResumePoint",
    "RunError",
    "Schedule",
    "StepOptions",
    "TemperatureHook",
    "TemperatureSettings",
    "TensorData",
    "TrainConfig",
    "TrainPlan",
    "TrainResult",
    "Trainer",
    "TrainingHook",
    "TrainingSession",
    "UnsafeCheckpointError",
    "all_reduce_sum_",
    "atomic_write",
    "atomic_write_text",
    "barrier",
    "broadcast_parameters",
    "build_model",
    "capture_rng_state",
    "check_num_shards",
    "check_output_dir",
    "check_output_file",
    "checkpoint_path",
    "derive_seed",
    "gather_concat",
    "hooks_for",
    "init_distributed",
    "launch_command",
    "load_checkpoint",
    "load_checkpoint_or_previous",
    "load_data",
    "load_run_config",
    "make_elbo",
    "make_objective",
    "make_optimizer",
    "memory_budget",
    "model_max_plate_nesting",
    "plan_training",
    "preset_config",
    "previous_checkpoint_path",
    "rank_slice",
    "read_metrics",
    "release_foreign_params",
    "remove_run_files",
    "remove_stale_temporaries",
    "restore_rng_state",
    "restore_run",
    "resume_config",
    "run_leftovers",
    "save_checkpoint",
    "seed_everything",
    "shards_for_rank",
    "shutdown_distributed",
    "validation_elbo",
]
