"""Run configuration: a dataclass of plain values (stored as ``config.json`` and in checkpoints)."""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pyro_spvae.validation import check_unit_interval

__all__ = ["TrainConfig"]

_NONFINITE = ("raise", "skip")


@dataclass
class TrainConfig:
    """Everything that defines a training run.

    :ivar model: model family, a key of ``pyro_spvae.models.MODELS``.
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

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """:raises ValueError: naming the first invalid field."""

        def pos_int(name: str, optional: bool = False, minimum: int = 1) -> None:
            v = getattr(self, name)
            if v is None and optional:
                return
            if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
                raise ValueError(f"{name} must be an integer >= {minimum}, got {v!r}")

        for name in ("num_particles", "batch_size", "eval_every", "log_every", "lr_patience"):
            pos_int(name)
        for name in ("steps", "epochs", "patience", "valid_max_examples", "checkpoint_every", "shards"):
            pos_int(name, optional=True)
        pos_int("seed", minimum=0)
        if self.steps is None and self.epochs is None:
            raise ValueError("give steps or epochs (or both) to bound training")
        for name in ("lr", "clip_norm"):
            v = getattr(self, name)
            if v is None and name == "clip_norm":
                continue
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not (math.isfinite(v) and v > 0):
                raise ValueError(f"{name} must be a positive finite number, got {v!r}")
        if self.lr_decay is not None:
            check_unit_interval("lr_decay", self.lr_decay)
        check_unit_interval("min_rel_improvement", self.min_rel_improvement, closed_low=True)
        if (
            isinstance(self.alpha, bool)
            or not isinstance(self.alpha, (int, float))
            or not math.isfinite(self.alpha)
        ):
            raise ValueError(f"alpha must be a finite number, got {self.alpha!r}")
        if self.on_nonfinite not in _NONFINITE:
            raise ValueError(f"on_nonfinite must be one of {_NONFINITE}, got {self.on_nonfinite!r}")
        if not isinstance(self.model_kwargs, dict):
            raise ValueError(f"model_kwargs must be a dict, got {type(self.model_kwargs).__name__}")
        if not isinstance(self.group_lrs, dict):
            raise ValueError(f"group_lrs must be a dict, got {type(self.group_lrs).__name__}")
        for name in ("model", "data", "transform", "elbo"):
            if not isinstance(getattr(self, name), str):
                raise ValueError(f"{name} must be a string, got {getattr(self, name)!r}")

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
        """Write as JSON (atomically)."""
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> TrainConfig:
        """Read a ``config.json``.

        :raises FileNotFoundError: when missing; :raises ValueError: when invalid.
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found: is this a pyro-spvae run directory?")
        try:
            values = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{path} is not valid JSON: {e}") from None
        if not isinstance(values, dict):
            raise ValueError(f"{path} must hold a JSON object")
        return cls.from_dict(values)
