"""Named training configurations for ``pyro-spvae train --preset NAME``.

Each preset is a partial :class:`~pyro_spvae.training.config.TrainConfig` (a dict of field values);
command-line options override it. Add a preset by adding an entry to :data:`PRESETS`.
"""

from __future__ import annotations

from typing import Any

from pyro_spvae.training.config import TrainConfig

__all__ = ["DEFAULT_PRESET", "PRESETS", "preset_config"]

#: Preset name -> partial configuration.
PRESETS: dict[str, dict[str, Any]] = {
    # The default job: a dense VAE on the embedded MNIST subset with dynamic binarisation and a
    # Bernoulli likelihood: 2300 steps, ~2-4 minutes on 2 CPU cores (test NLL ~119 nats, 5000 samples).
    "vae-binary": {
        "model": "vae",
        "model_kwargs": {"z_dim": 32, "hidden": [200, 200], "arch": "dense", "likelihood": "bernoulli"},
        "data": "embedded",
        "transform": "binary-dynamic",
        "elbo": "trace",
        "batch_size": 128,
        "lr": 1e-3,
        "epochs": 100,
        "eval_every": 100,
        "patience": 10,
    },
}

# --- SPVAE reproduction (Tan & Peharz, ICML 2019, Table 1; DESIGN §3) -------------------------
# Eight configurations: {SPVAE, VAE, Conv-SPVAE, Conv-VAE} x MNIST {continuous, discrete}.
# Adam lr 1e-3 for the VAE parameters and 1e-2 for the SPN sum weights (params named "spn..."),
# batch 128, validation every 128 batches with patience 10; continuous presets also train the
# Gaussian log-precisions at 1e-2. SPVAEs train with the leaf-averaged
# importance-weighted bound (K = 5, "spn-leaf-iw" = pyro_spvae.infer.SPNLeafIWELBO); the VAE
# baselines with the IWAE bound at the same K. Baselines have the SPVAE's parameter count
# (model + guide): dense 234k (VAE hidden 123x123), conv 361k (Conv-VAE channels 16/32, hidden 108).
# scripts/reproduce_spvae.py trains all eight and evaluates the 5000-sample bound.
_SPVAE_COMMON: dict[str, Any] = {
    "data": "mnist",
    "batch_size": 128,
    "lr": 1e-3,
    "epochs": 500,
    "eval_every": 128,
    "patience": 10,
    "num_particles": 5,
}
#: Pyro names of the Gaussian log-precision / log-scale parameters (VAE head, SPVAE leaves).
_PRECISION = r"(^|\.)log_(precision|scale)$"
for _data, _lik in (("continuous", "gaussian"), ("discrete", "binomial")):
    for _name, _model, _elbo, _kw in (
        ("spvae", "spvae", "spn-leaf-iw", {"arch": "dense"}),
        ("vae", "vae", "iwae", {"arch": "dense", "z_dim": 25, "hidden": [123, 123]}),
        ("conv-spvae", "spvae", "spn-leaf-iw", {"arch": "conv"}),
        ("conv-vae", "vae", "iwae", {"arch": "conv", "z_dim": 25, "hidden": [108], "channels": [16, 32]}),
    ):
        PRESETS[f"{_name}-{_data}"] = {
            **_SPVAE_COMMON,
            "model": _model,
            "model_kwargs": {**_kw, "likelihood": _lik},
            "transform": f"spvae-{_data}",
            "elbo": _elbo,
            "group_lrs": {
                **({"^spn": 1e-2} if _model == "spvae" else {}),
                # the learnt per-pixel precision of the Gaussian likelihood (our choice, not the paper's:
                # at 1e-3 Adam needs ~10k steps to move a log-precision from 0 to log(255^2) ~ 11)
                **({_PRECISION: 1e-2} if _lik == "gaussian" else {}),
            },
        }

#: Preset used when ``--preset`` is not given.
DEFAULT_PRESET = "vae-binary"


def preset_config(name: str, **overrides: Any) -> TrainConfig:
    """The :class:`TrainConfig` of preset ``name`` with ``overrides`` applied (``model_kwargs`` and
    ``group_lrs`` are merged key by key).

    :raises ValueError: for an unknown preset (listing the known ones) or invalid values.
    """
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(sorted(PRESETS))}")
    values = {k: (dict(v) if isinstance(v, dict) else v) for k, v in PRESETS[name].items()}
    for key, value in overrides.items():
        if key in ("model_kwargs", "group_lrs") and isinstance(value, dict):
            values[key] = {**values.get(key, {}), **value}
        else:
            values[key] = value
    return TrainConfig.from_dict(values)
