"""Build what a run needs from plain configuration values: the estimator, the optimiser, the data
splits and the (model, guide) pair of a registered family.

The checks of the estimator and optimiser options live here once (:func:`check_elbo_options`,
:func:`check_optimizer_options`): :func:`make_elbo`/:func:`make_optimizer` and
:class:`~pyro_spvae.training.TrainConfig` both call them.
"""

from __future__ import annotations

import inspect
import re
from pathlib import Path
from typing import Any

import pyro.optim
import torch
from pyro.infer import ELBO, RenyiELBO, Trace_ELBO, TraceEnum_ELBO, TraceMeanField_ELBO

from pyro_spvae.training.hooks import TemperatureHook, TrainingHook, hooks_for
from pyro_spvae.training.settings import CapacitySettings, GECOSettings, MISettings
from pyro_spvae.validation import check_choice, check_positive_float, check_positive_int, check_real

__all__ = [
    "ELBO_NAMES",
    "RunError",
    "build_model",
    "check_elbo_options",
    "check_optimizer_options",
    "load_data",
    "make_elbo",
    "make_objective",
    "make_optimizer",
    "model_max_plate_nesting",
]

#: Estimator names accepted by :func:`make_elbo`.
ELBO_NAMES: tuple[str, ...] = (
    "trace", "meanfield", "renyi", "iwae", "dreg", "spn-leaf", "spn-leaf-iw", "spn-root-iw", "enum",
    "mixture", "capacity",
)


class RunError(ValueError):
    """A run cannot be set up or restored: its directory, configuration, data, model options or
    checkpoint are missing or invalid (the message says which and how to fix it)."""


def check_elbo_options(name: str, num_particles: int, alpha: float) -> tuple[str, int, float]:
    """Check the estimator options of :func:`make_elbo` (and of a :class:`TrainConfig`).

    :returns: ``(name, num_particles, alpha)`` as ``(str, int, float)``.
    :raises TypeError: for a non-integer ``num_particles`` or a non-real ``alpha``.
    :raises ValueError: for an unknown name, ``num_particles < 1``, a non-finite ``alpha`` or
        ``alpha = 1`` with ``"renyi"`` (that is the ELBO itself).
    """
    check_choice("ELBO", name, ELBO_NAMES)
    num_particles = check_positive_int("num_particles", num_particles)
    alpha = check_real("alpha", alpha)
    if name == "renyi" and alpha == 1.0:
        raise ValueError("Renyi alpha must differ from 1 (alpha = 1 is the ELBO: use 'trace')")
    return name, num_particles, alpha


def make_elbo(
    name: str,
    num_particles: int = 1,
    *,
    alpha: float = 0.0,
    vectorize_particles: bool = True,
    max_plate_nesting: int | None = None,
    capacity: CapacitySettings | None = None,
    geco: GECOSettings | None = None,
    mi: MISettings | None = None,
    mi_q: Any = None,
) -> ELBO:
    """An ELBO estimator by name, optionally under a Lagrange multiplier and an MI regulariser.

    :param name: ``"trace"`` (``Trace_ELBO``), ``"meanfield"`` (``TraceMeanField_ELBO``, analytic
        KL where available), ``"renyi"`` (``RenyiELBO(alpha)``), ``"iwae"`` / ``"dreg"``
        (:class:`pyro_spvae.infer.TraceIWAE_ELBO` with the plain IWAE or the doubly-reparameterised
        gradient); ``"spn-leaf"`` / ``"spn-leaf-iw"`` / ``"spn-root-iw"``: the SPN-aware bounds of
        :mod:`pyro_spvae.infer.spn_bounds` (leaf ELBOs, leaf-averaged and root-averaged importance
        weights; Tan & Peharz 2019, see ``docs/spvae.md``) for SPN-of-VAEs models such as SPVAE;
        ``"enum"`` (``TraceEnum_ELBO``: guide sites marked for enumeration, such as the component of
        DLGMM guide (b) or MIVAE's code, are summed exactly); ``"mixture"``
        (:class:`~pyro_spvae.infer.MixtureELBO`, the per-component estimator of mixture posteriors,
        DLGMM guide (c); Nalisnick, Hertel & Smyth 2016, ``docs/mixtures.md``); ``"capacity"``
        (:class:`~pyro_spvae.infer.CapacityELBO`, JointVAE's objective; Dupont 2018).
    :param num_particles: samples per data point (``K``).
    :param alpha: Renyi divergence order for ``"renyi"`` (``alpha != 1``; ``0`` is IWAE).
    :param vectorize_particles: draw particles in one vectorised pass.
    :param max_plate_nesting: passed to the estimator (``None``: Pyro guesses by tracing).
    :param capacity: the capacities of ``"capacity"`` (default :class:`CapacitySettings`).
    :param geco: wrap the estimator in :class:`~pyro_spvae.infer.GECO` (``docs/hierarchical_priors.md``).
    :param mi: wrap the result in :class:`~pyro_spvae.infer.MIRegularizedELBO`, outermost (its
        generative pass must not see GECO's scaled sites; ``docs/mutual_information.md``).
    :param mi_q: the ``Q`` network when ``mi.q == "net"`` (see
        :func:`~pyro_spvae.infer.code_posterior_for`).
    :raises ValueError: for an unknown name or invalid hyper-parameters (see
        :func:`check_elbo_options`), or ``mi.q == "net"`` without ``mi_q``.
    """
    elbo = _base_elbo(*check_elbo_options(name, num_particles, alpha), capacity=capacity,
                      vectorize_particles=vectorize_particles, max_plate_nesting=max_plate_nesting)
    if geco is not None:
        elbo = geco.wrap(elbo)
    if mi is not None:
        if mi.q == "net" and mi_q is None:
            raise ValueError("the MI regulariser with q='net' needs its Q network (mi_q)")
        elbo = mi.wrap(elbo, mi_q)
    return elbo


def _base_elbo(name: str, num_particles: int, alpha: float, *, vectorize_particles: bool,
               max_plate_nesting: int | None, capacity: CapacitySettings | None) -> ELBO:
    """The estimator ``name`` of :func:`make_elbo`, unwrapped."""
    if name.startswith("spn-"):
        from pyro_spvae.infer import SPNLeafELBO, SPNLeafIWELBO, SPNRootIWELBO

        spn_bound = {"spn-leaf": SPNLeafELBO, "spn-leaf-iw": SPNLeafIWELBO, "spn-root-iw": SPNRootIWELBO}
        return spn_bound[name](num_particles)
    if name == "mixture":  # guesses max_plate_nesting itself (the components sit left of every plate)
        from pyro_spvae.infer import MixtureELBO

        return MixtureELBO(num_particles, vectorize_particles=vectorize_particles)
    if name == "capacity":
        mpn = float("inf") if max_plate_nesting is None else max_plate_nesting
        return (capacity or CapacitySettings()).make(num_particles, mpn, vectorize_particles)
    kw: dict[str, Any] = {"num_particles": num_particles, "vectorize_particles": vectorize_particles}
    if max_plate_nesting is not None:
        kw["max_plate_nesting"] = max_plate_nesting
    simple = {"trace": Trace_ELBO, "meanfield": TraceMeanField_ELBO, "enum": TraceEnum_ELBO}
    if name in simple:
        return simple[name](**kw)
    if name == "renyi":
        return RenyiELBO(alpha=alpha, **kw)
    from pyro_spvae.infer import TraceIWAE_ELBO

    return TraceIWAE_ELBO(estimator=name, **kw)


def make_objective(config: Any, model: torch.nn.Module, train_data: Any) -> tuple[ELBO, list[TrainingHook]]:
    """The estimator of a :class:`~pyro_spvae.training.TrainConfig` for ``model`` and the training
    hooks it needs (:func:`~pyro_spvae.training.hooks.hooks_for`, and the temperature annealing of
    ``temperature_start``).

    With ``mi_q="net"`` the ``Q`` network (:func:`~pyro_spvae.infer.code_posterior_for`, Pyro name
    ``"mi_q"``) is built from two examples of ``train_data``.

    :raises RunError: when the model has no temperature to anneal, or the codes are not its sites.
    """
    mi, q = config.mi(), None
    if mi is not None and mi.q == "net":
        from pyro_spvae.infer import code_posterior_for

        like = train_data.batch(torch.arange(min(2, len(train_data))), torch.Generator().manual_seed(0))
        device = next(model.parameters()).device
        try:
            q = code_posterior_for(model, like.to(device), list(mi.sites), name="mi_q").to(device)
        except (TypeError, ValueError) as e:
            raise RunError(f"cannot build the MI regulariser's Q network: {e}") from None
    elbo = make_elbo(config.elbo, config.num_particles, alpha=config.alpha,
                     max_plate_nesting=model_max_plate_nesting(model), capacity=config.capacity(),
                     geco=config.geco(), mi=mi, mi_q=q)
    hooks = hooks_for(elbo)
    annealing = config.temperature()
    if annealing is not None:
        try:
            hooks.append(TemperatureHook(model, annealing.schedule()))
        except TypeError as e:
            raise RunError(f"temperature_start is set but model {config.model!r}: {e}") from None
    return elbo, hooks


def check_optimizer_options(
    lr: float, group_lrs: dict[str, float] | None, clip_norm: float | None
) -> tuple[float, list[tuple[re.Pattern[str], float]], float | None]:
    """Check the options of :func:`make_optimizer` (and of a :class:`TrainConfig`).

    :returns: ``lr``, the compiled ``(pattern, lr)`` pairs of ``group_lrs`` in order, ``clip_norm``.
    :raises TypeError: for a non-numeric rate or clip norm, or ``group_lrs`` that is not a dict.
    :raises ValueError: for a non-positive or non-finite rate or clip norm, or an invalid regex.
    """
    lr = check_positive_float("lr", lr)
    if group_lrs is not None and not isinstance(group_lrs, dict):
        raise TypeError(f"group_lrs must be a dict {{regex: lr}}, got {type(group_lrs).__name__}")
    patterns: list[tuple[re.Pattern[str], float]] = []
    for pattern, value in (group_lrs or {}).items():
        rate = check_positive_float(f"learning rate for {pattern!r}", value)
        try:
            patterns.append((re.compile(pattern), rate))
        except re.error as e:
            raise ValueError(f"invalid parameter-name pattern {pattern!r}: {e}") from None
    if clip_norm is not None:
        clip_norm = check_positive_float("clip_norm", clip_norm)
    return lr, patterns, clip_norm


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
        (``re.search``, first match wins) uses that learning rate, e.g. ``{"^spn": 1e-2}`` for the
        SPN sum weights of an SPVAE (Tan & Peharz 2019 train them at a larger rate than the VAE
        leaves; see ``docs/spvae.md``).
    :param clip_norm: clip each parameter's gradient norm (``pyro.optim.ClippedAdam``).
    :param betas: Adam's moment decay rates.
    :raises ValueError: for non-positive learning rates, a bad clip norm or an invalid regex (see
        :func:`check_optimizer_options`).
    """
    lr, patterns, clip_norm = check_optimizer_options(lr, group_lrs, clip_norm)

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


def model_max_plate_nesting(model: Any) -> int:
    """The model's ``max_plate_nesting`` attribute, else 1 (the model contract's default).

    :raises TypeError: if the attribute is not an integer; :raises ValueError: if it is below 1.
    """
    return check_positive_int("model.max_plate_nesting", getattr(model, "max_plate_nesting", 1))


def load_data(config: Any, split: str) -> Any:
    """The ``split`` of ``config.data`` under ``config.transform`` (:func:`pyro_spvae.data.load_dataset`).

    :param config: a :class:`~pyro_spvae.training.TrainConfig`.
    :raises RunError: when the MNIST directory ``config.data_dir`` or the MNIST files are missing,
        or a data file is unreadable or corrupt (the message names it).
    """
    from pyro_spvae.data import load_dataset

    root = config.data_dir
    if config.data == "mnist" and root is not None and not Path(root).expanduser().is_dir():
        raise RunError(
            f"data directory {root} does not exist (create it, or leave data_dir (--data-dir) unset to "
            "use the default)"
        )
    try:
        return load_dataset(config.data, split, config.transform, root=root)
    except (FileNotFoundError, ValueError) as e:  # missing, or corrupt: see load_mnist
        raise RunError(str(e)) from None


def build_model(config: Any, dataset: Any, *,
                sampled: bool = False) -> tuple[torch.nn.Module, torch.nn.Module]:
    """The (model, guide) pair of family ``config.model`` (a key of :data:`pyro_spvae.zoo.MODELS`)
    for the images of ``dataset``, with hyper-parameters ``config.model_kwargs``.

    A builder that takes a ``likelihood`` gets ``dataset.likelihood`` (the transform's natural one)
    unless the configuration names one; JSON lists become tuples. With ``sampled`` a builder that
    takes ``enumerate`` gets ``enumerate=None``: the guide samples its discrete sites instead of
    marking them for ``TraceEnum_ELBO`` (the same parameters; what importance sampling needs).

    :raises RunError: for options the family's builder does not take, or when it rejects them.
    """
    from pyro_spvae.zoo import MODELS

    builder = MODELS[config.model]
    kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in config.model_kwargs.items()}
    try:
        accepted = inspect.signature(builder).parameters
    except (TypeError, ValueError):  # pragma: no cover - builtins
        accepted = {}
    if "likelihood" in accepted and kwargs.get("likelihood") is None:
        kwargs["likelihood"] = dataset.likelihood
    if kwargs.get("likelihood") is None:
        kwargs.pop("likelihood", None)
    if sampled and "enumerate" in accepted:
        kwargs["enumerate"] = None
    has_var_kw = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in accepted.values())
    unknown = [k for k in kwargs if k not in accepted] if accepted and not has_var_kw else []
    if unknown:
        raise RunError(f"model {config.model!r} does not take option(s) {unknown}")
    try:
        return builder(tuple(dataset.event_shape), **kwargs)
    except (ValueError, TypeError, KeyError) as e:
        raise RunError(f"cannot build model {config.model!r}: {e}") from None
