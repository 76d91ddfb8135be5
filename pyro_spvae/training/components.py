"""Type checks of the parts a :class:`~pyro_spvae.training.Trainer` is built from."""

from __future__ import annotations

from typing import Any

import torch
from pyro.infer import ELBO
from pyro.optim import PyroOptim

from pyro_spvae.training.settings import Schedule

__all__ = ["check_components"]


def check_components(**parts: Any) -> None:
    """:raises TypeError: for a model/guide that is no module, an estimator that is no ELBO, an
    optimiser that is no Pyro optimiser, a dataset without ``batch``/``__len__`` or settings of
    the wrong class."""
    kinds: dict[str, tuple[type | None, str]] = {
        "model": (torch.nn.Module, "a torch.nn.Module (PyroModule)"),
        "guide": (torch.nn.Module, "a torch.nn.Module (PyroModule)"),
        "elbo": (ELBO, "a pyro.infer.ELBO instance"),
        "valid_elbo": (ELBO, "a pyro.infer.ELBO instance"),
        "optim": (PyroOptim, "a pyro.optim.PyroOptim (e.g. pyro.optim.Adam)"),
        "schedule": (Schedule, "a pyro_spvae.training.Schedule"),
        "train_data": (None, "a dataset with __len__ and batch(idx, generator)"),
        "valid_data": (None, "a dataset with __len__ and batch(idx, generator)"),
    }
    for name, value in parts.items():
        cls, what = kinds[name]
        if value is None and name in ("valid_elbo", "valid_data"):
            continue
        if cls is None:
            ok = hasattr(value, "batch") and hasattr(value, "__len__")
        else:
            ok = isinstance(value, cls)
        if not ok:
            raise TypeError(f"{name} must be {what}, got {type(value).__name__}")
