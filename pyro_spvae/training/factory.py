"""Build estimators and optimisers from plain configuration values (CLI and presets)."""

from __future__ import annotations

import re
from typing import Any

import pyro.optim
from pyro.infer import ELBO, RenyiELBO, Trace_ELBO, TraceMeanField_ELBO

__all__ = ["ELBO_NAMES", "make_elbo", "make_optimizer"]

#: Estimator names accepted by :func:`make_elbo`.
ELBO_NAMES: tuple[str, ...] = (
    "trace", "meanfield", "renyi", "iwae", "dreg", "spn-leaf", "spn-leaf-iw", "spn-root-iw"
)


def make_elbo(
    name: str,
    num_particles: int = 1,
    *,
    alpha: float = 0.0,
    vectorize_particles: bool = True,
    max_plate_nesting: int | None = None,
) -> ELBO:
    """An ELBO estimator by name.

    :param name: ``"trace"`` (``Trace_ELBO``), ``"meanfield"`` (``TraceMeanField_ELBO``, analytic
        KL where available), ``"renyi"`` (``RenyiELBO(alpha)``), ``"iwae"`` / ``"dreg"``
        (:class:`pyro_spvae.infer.TraceIWAE_ELBO` with the plain IWAE or the doubly-reparameterised
        gradient); ``"spn-leaf"`` / ``"spn-leaf-iw"`` / ``"spn-root-iw"``: the SPN-aware bounds of
        :mod:`pyro_spvae.infer.spn_bounds` (leaf ELBOs, leaf-averaged and root-averaged importance
        weights; Tan & Peharz 2019) for SPN-of-VAEs models such as SPVAE.
    :param num_particles: samples per data point (``K``).
    :param alpha: Renyi divergence order for ``"renyi"`` (``alpha != 1``; ``0`` is IWAE).
    :param vectorize_particles: draw particles in one vectorised pass.
    :param max_plate_nesting: passed to the estimator (``None``: Pyro guesses by tracing).
    :raises ValueError: for an unknown name or invalid hyper-parameters.
    """
    if not isinstance(name, str) or name not in ELBO_NAMES:
        raise ValueError(f"unknown ELBO {name!r}; choose one of {', '.join(ELBO_NAMES)}")
    if isinstance(num_particles, bool) or not isinstance(num_particles, int) or num_particles < 1:
        raise ValueError(f"num_particles must be a positive integer, got {num_particles!r}")
    kw: dict[str, Any] = {"num_particles": num_particles, "vectorize_particles": vectorize_particles}
    if max_plate_nesting is not None:
        kw["max_plate_nesting"] = max_plate_nesting
    if name == "trace":
        return Trace_ELBO(**kw)
    if name == "meanfield":
        return TraceMeanField_ELBO(**kw)
    if name == "renyi":
        if float(alpha) == 1.0:
            raise ValueError("Renyi alpha must differ from 1 (alpha = 1 is the ELBO: use 'trace')")
        return RenyiELBO(alpha=float(alpha), **kw)
    if name.startswith("spn-"):
        from pyro_spvae.infer import SPNLeafELBO, SPNLeafIWELBO, SPNRootIWELBO

        spn_bound = {"spn-leaf": SPNLeafELBO, "spn-leaf-iw": SPNLeafIWELBO, "spn-root-iw": SPNRootIWELBO}
        return spn_bound[name](num_particles)
    try:
        from pyro_spvae.infer import TraceIWAE_ELBO
    except ImportError as e:  # pragma: no cover - depends on the installed version
        raise ValueError(
            f"ELBO {name!r} needs pyro_spvae.infer.TraceIWAE_ELBO, which is unavailable: {e}"
        ) from e
    return TraceIWAE_ELBO(estimator=name, **kw)


def make_optimizer(
    lr: float = 1e-3,
    *,
    group_lrs: dict[str, float] | None = None,
    clip_norm: float | None = None,
    betas: tuple[float, float] = (0.9, 0.999),
) -> pyro.optim.PyroOptim:
    """Adam (or ClippedAdam with ``clip_norm``) with optional per-parameter learning rates.

    :param lr: default learning rate.
    :param group_lrs: ``{regex: lr}``; a parameter whose Pyro name matches a pattern
        (``re.search``, first match wins) uses that learning rate, e.g.
        ``{"sum_logits|weights$": 1e-2}`` for SPN sum weights (DESIGN §3).
    :param clip_norm: clip each parameter's gradient norm (``pyro.optim.ClippedAdam``).
    :param betas: Adam's moment decay rates.
    :raises ValueError: for non-positive learning rates, a bad clip norm or an invalid regex.
    """

    def _check_lr(what: str, value: Any) -> float:
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or not 0 < float(value) < float("inf")
        ):
            raise ValueError(f"{what} must be a positive finite number, got {value!r}")
        return float(value)

    lr = _check_lr("lr", lr)
    patterns: list[tuple[re.Pattern[str], float]] = []
    for pattern, value in (group_lrs or {}).items():
        try:
            patterns.append((re.compile(pattern), _check_lr(f"learning rate for {pattern!r}", value)))
        except re.error as e:
            raise ValueError(f"invalid parameter-name pattern {pattern!r}: {e}") from None
    if clip_norm is not None:
        clip_norm = _check_lr("clip_norm", clip_norm)

    def args_for(param_name: str) -> dict[str, Any]:
        rate = lr
        for regex, value in patterns:
            if regex.search(param_name):
                rate = value
                break
        out: dict[str, Any] = {"lr": rate, "betas": tuple(betas)}
        if clip_norm is not None:
            out["clip_norm"] = clip_norm
        return out

    if clip_norm is not None:
        return pyro.optim.ClippedAdam(args_for if patterns else args_for(""))
    return pyro.optim.Adam(args_for if patterns else args_for(""))
