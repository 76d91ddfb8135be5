"""Run configuration: a dataclass of plain values (stored as ``config.json`` and in checkpoints).

Its fields are flat (one JSON key each); :meth:`TrainConfig.schedule`,
:meth:`~TrainConfig.early_stopping` and :meth:`~TrainConfig.step_options` group the trainer's
fields into the settings objects of :mod:`pyro_spvae.training.settings`, and
:meth:`pyro_spvae.training.Trainer.from_config` builds a trainer from it.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from pyro_spvae.training.factory import check_elbo_options, check_optimizer_options
from pyro_spvae.training.files import atomic_write_text
from pyro_spvae.training.settings import (
    CapacitySettings,
    EarlyStopping,
    GECOSettings,
    MISettings,
    Schedule,
    StepOptions,
    TemperatureSettings,
)
from pyro_spvae.validation import check_choice

__all__ = ["TrainConfig"]

_S = TypeVar("_S", Schedule, EarlyStopping, StepOptions)


@dataclass
class TrainConfig:
    """Everything that defines a training run.

    :ivar model: model family, a key of :data:`pyro_spvae.zoo.MODELS`.
    :ivar model_kwargs: hyper-parameters passed to the family's builder (``z_dim``, ``hidden``,
        ``arch``, ``likelihood``, ...); ``likelihood`` defaults to the dataset's natural one.
    :ivar data: ``"embedded"`` or ``"mnist"``.
    :ivar data_dir: MNIST directory (``None``: ``$PYRO_SPVAE_DATA`` or the user cache).
    :ivar transform: data transform (see ``pyro_spvae.data.TRANSFORMS``).
    :ivar elbo: estimator name (see :data:`pyro_spvae.training.ELBO_NAMES`).
    :ivar num_particles: samples per data point.
    :ivar alpha: Renyi order (``elbo="renyi"``).
    :ivar batch_size: global batch size.
    :ivar lr: Adam learning rate.
    :ivar group_lrs: ``{regex: lr}`` for parameters whose names match (e.g. SPN sum weights).
    :ivar clip_norm: gradient-norm clipping (ClippedAdam) or ``None``.
    :ivar steps: maximum number of steps (``None``: bounded by ``epochs``).
    :ivar epochs: maximum number of epochs (``None``: bounded by ``steps``).
    :ivar eval_every: validate every this many steps.
    :ivar patience: early stopping after this many validations without improvement (``None``: off).
    :ivar lr_decay: multiply the learning rates by this factor in ``(0, 1)`` after ``lr_patience``
        validations without improvement (``None``: off).
    :ivar lr_patience: validations without improvement before each learning-rate decay.
    :ivar min_rel_improvement: smallest relative decrease of the validation loss that counts as an
        improvement for ``patience`` and ``lr_patience``.
    :ivar valid_max_examples: validate on at most this many examples (``None``: all).
    :ivar log_every: metrics line every this many steps.
    :ivar checkpoint_every: checkpoint every this many steps (``None``: ``eval_every``).
    :ivar seed: master seed.
    :ivar shards: micro-batches per step (``None``: number of processes).
    :ivar on_nonfinite: ``"raise"`` or ``"skip"``.
    :ivar constraint: ``"mse"`` or ``"nll"``: train under a Lagrange multiplier on this constraint of
        the site ``constraint_site`` with tolerance ``kappa`` (``None``: no multiplier); ``geco_rule``,
        ``geco_nu``, ``geco_alpha``, ``geco_tau``, ``geco_warmup``, ``geco_update_every``,
        ``lambda_init``, ``lambda_min``, ``lambda_max`` and ``geco_coupling`` are the options of
        :class:`~pyro_spvae.infer.GECO` (:class:`~pyro_spvae.training.settings.GECOSettings`).
    :ivar mi_sites: codes of the mutual-information regulariser, e.g. ``["c", "z[0]"]`` (empty:
        none), with weight ``mi_weight`` and ``Q`` ``mi_q`` (``"guide"`` or ``"net"``).
    :ivar capacity_sites: sites of the capacity objective (``elbo="capacity"``), whose capacities
        rise from 0 to ``capacity_max`` nats over ``capacity_steps`` steps, weighted by ``capacity_gamma``.
    :ivar temperature_start: anneal a relaxed code's temperature from this value down to
        ``temperature_end`` at ``temperature_rate`` per step (``None``: the model's fixed temperature).
    :raises TypeError: for a field of the wrong type; :raises ValueError: for an invalid value.
    """

    model: str = "vae"
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    data: str = "embedded"
    data_dir: str | None = None
    transform: str = "binary-dynamic"
    elbo: str = "trace"
    num_particles: int = 1
    alpha: float = 0.0
    batch_size: int = 128
    lr: float = 1e-3
    group_lrs: dict[str, float] = field(default_factory=dict)
    clip_norm: float | None = None
    steps: int | None = None
    epochs: int | None = 100
    eval_every: int = 100
    patience: int | None = 10
    lr_decay: float | None = None
    lr_patience: int = 5
    min_rel_improvement: float = 0.0
    valid_max_examples: int | None = None
    log_every: int = 50
    checkpoint_every: int | None = None
    seed: int = 0
    shards: int | None = None
    on_nonfinite: str = "raise"
    constraint: str | None = None
    constraint_site: str = "x"
    kappa: float = 0.1
    geco_rule: str = "geco"
    geco_nu: float = 1.0
    geco_alpha: float = 0.99
    geco_tau: float = 100.0
    geco_warmup: int = 0
    geco_update_every: int = 1
    lambda_init: float = 1.0
    lambda_min: float = 1e-6
    lambda_max: float = 1e6
    geco_coupling: str = "auto"
    mi_sites: list[str] = field(default_factory=list)
    mi_weight: float = 1.0
    mi_q: str = "guide"
    capacity_sites: list[str] = field(default_factory=lambda: ["z", "c"])
    capacity_max: float = 5.0
    capacity_steps: int = 25000
    capacity_gamma: float = 30.0
    temperature_start: float | None = None
    temperature_end: float = 0.3
    temperature_rate: float = 1e-4

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Check every field (each check is written once: the trainer's fields by the settings
        groups of :mod:`pyro_spvae.training.settings`, the estimator and optimiser options by
        :mod:`pyro_spvae.training.factory`).

        :raises TypeError: naming the first field of the wrong type.
        :raises ValueError: naming the first field with an invalid value.
        """
        from pyro_spvae.data import DATASETS, TRANSFORMS
        from pyro_spvae.zoo import MODELS

        check_choice("model", self.model, MODELS)
        for name in ("model_kwargs", "group_lrs"):
            if not isinstance(getattr(self, name), dict):
                raise TypeError(f"{name} must be a dict, got {type(getattr(self, name)).__name__}")
        check_choice("data", self.data, DATASETS)
        if self.data_dir is not None and not isinstance(self.data_dir, str):
            raise TypeError(f"data_dir must be a path (str) or None, got {type(self.data_dir).__name__}")
        check_choice("transform", self.transform, TRANSFORMS)
        check_elbo_options(self.elbo, self.num_particles, self.alpha)
        check_optimizer_options(self.lr, self.group_lrs, self.clip_norm)
        self.schedule()
        self.early_stopping()
        self.step_options()
        for name in ("mi_sites", "capacity_sites"):
            if not isinstance(getattr(self, name), list):
                kind = type(getattr(self, name)).__name__
                raise TypeError(f"{name} must be a list of site names, got {kind}")
        # the fields of the multiplier, the regulariser and the annealing are checked even when off
        self._geco("mse" if self.constraint is None else self.constraint)
        MISettings(tuple(self.mi_sites) or ("c",), self.mi_weight, self.mi_q)
        self.capacity()
        start = 1.0 if self.temperature_start is None else self.temperature_start
        TemperatureSettings(start, self.temperature_end, self.temperature_rate)

    def _settings(self, cls: type[_S]) -> _S:
        """``cls`` built from this configuration's fields of the same names."""
        mine = {f.name for f in dataclasses.fields(self)}
        return cls(**{f.name: getattr(self, f.name) for f in dataclasses.fields(cls) if f.name in mine})

    def schedule(self) -> Schedule:
        """The trainer's :class:`~pyro_spvae.training.Schedule` (batch size, length, intervals)."""
        return self._settings(Schedule)

    def early_stopping(self) -> EarlyStopping:
        """The trainer's :class:`~pyro_spvae.training.EarlyStopping` (patience, learning-rate decay)."""
        return self._settings(EarlyStopping)

    def step_options(self) -> StepOptions:
        """The trainer's :class:`~pyro_spvae.training.StepOptions` (seed, shards, NaN/Inf policy)."""
        return self._settings(StepOptions)

    def geco(self) -> GECOSettings | None:
        """The Lagrange multiplier's :class:`~pyro_spvae.training.settings.GECOSettings` (``None``
        without ``constraint``)."""
        return None if self.constraint is None else self._geco(self.constraint)

    def _geco(self, constraint: str) -> GECOSettings:
        return GECOSettings(constraint, self.constraint_site, self.kappa, self.geco_rule, self.geco_nu,
                            self.geco_alpha, self.geco_tau, self.geco_warmup, self.geco_update_every,
                            self.lambda_init, self.lambda_min, self.lambda_max, self.geco_coupling)

    def mi(self) -> MISettings | None:
        """The MI regulariser's :class:`~pyro_spvae.training.settings.MISettings` (``None`` without
        ``mi_sites``)."""
        return MISettings(tuple(self.mi_sites), self.mi_weight, self.mi_q) if self.mi_sites else None

    def capacity(self) -> CapacitySettings:
        """The capacities of ``elbo="capacity"`` (:class:`~pyro_spvae.training.settings.CapacitySettings`)."""
        return CapacitySettings(tuple(self.capacity_sites), self.capacity_max, self.capacity_steps,
                                self.capacity_gamma)

    def temperature(self) -> TemperatureSettings | None:
        """The temperature annealing (``None`` without ``temperature_start``)."""
        if self.temperature_start is None:
            return None
        return TemperatureSettings(self.temperature_start, self.temperature_end, self.temperature_rate)

    def to_dict(self) -> dict[str, Any]:
        """Plain-type dict (JSON and ``weights_only`` safe)."""
        return json.loads(json.dumps(dataclasses.asdict(self)))

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        """Build from a dict, rejecting unknown keys by name."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown configuration keys {unknown}; known keys: {sorted(known)}")
        return cls(**values)

    def save(self, path: str | os.PathLike) -> None:
        """Write as JSON, atomically (:func:`~pyro_spvae.training.files.atomic_write`: a failed
        write leaves the previous file and no temporary), creating the directory if needed.

        :raises OSError: when the file cannot be written.
        """
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")

    @classmethod
    def load(cls, path: str | os.PathLike) -> TrainConfig:
        """Read a ``config.json``.

        :raises FileNotFoundError: when missing.
        :raises ValueError: naming the file when it cannot be read, is not UTF-8 JSON holding an
            object, or holds an invalid configuration (wrong types included).
        """
        path = Path(path)
        if not path.is_file():
            what = "is a directory" if path.is_dir() else "not found"
            raise FileNotFoundError(f"{path} {what}: is this a pyro-spvae run directory?")
        try:
            values = json.loads(path.read_bytes().decode("utf-8"))
        except UnicodeDecodeError as e:
            raise ValueError(f"{path} is not UTF-8 text ({e.reason} at byte {e.start})") from None
        except json.JSONDecodeError as e:
            raise ValueError(f"{path} is not valid JSON: {e}") from None
        except OSError as e:
            raise ValueError(f"cannot read {path}: {e.strerror}") from None
        if not isinstance(values, dict):
            raise ValueError(f"{path} must hold a JSON object")
        try:
            return cls.from_dict(values)
        except (ValueError, TypeError) as e:
            raise ValueError(f"{path}: {e}") from None
