"""Command-line values of ``pyro-spvae``: argparse ``type`` parsers built on the checks of
:mod:`pyro_spvae.validation` (a bad value reads ``expected <what>, got '<text>'``), and the options of
the model families and of the estimator's per-step state (:data:`FAMILY_OPTIONS`), each setting the
:class:`~pyro_spvae.training.TrainConfig` field (or model option) of its name.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable
from functools import partial
from typing import Any

from pyro_spvae.validation import (
    check_hidden,
    check_nonnegative_int,
    check_positive_float,
    check_positive_int,
    check_real,
    check_unit_interval,
)

__all__ = [
    "FAMILY_OPTIONS",
    "MODEL_OPTIONS",
    "arg_type",
    "finite_float",
    "group_lr",
    "int_list",
    "memory_size",
    "nonnegative_float",
    "nonnegative_int",
    "option_dest",
    "positive_float",
    "positive_int",
    "site_list",
    "unit_float",
]


def arg_type(
    convert: Callable[[str], Any], check: Callable[[Any], Any], expected: str
) -> Callable[[str], Any]:
    """An argparse ``type``: ``check(convert(text))`` (the checks of :mod:`pyro_spvae.validation`);
    a failure of either reads ``expected {expected}, got {text!r}``."""

    def parse(text: str) -> Any:
        try:
            return check(convert(text))
        except (ValueError, TypeError):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None

    return parse


def _nonempty_widths(values: list[int]) -> list[int]:
    if not values:
        raise ValueError("no widths")
    return list(check_hidden("hidden", values))


positive_int = arg_type(int, partial(check_positive_int, "value"), "a positive integer")
nonnegative_int = arg_type(int, partial(check_nonnegative_int, "value"), "a non-negative integer")
positive_float = arg_type(float, partial(check_positive_float, "value"), "a positive finite number")
finite_float = arg_type(float, partial(check_real, "value"), "a finite number")
nonnegative_float = arg_type(float, partial(check_real, "value", low=0.0), "a non-negative finite number")
unit_float = arg_type(float, partial(check_unit_interval, "value", closed_low=True), "a number in [0, 1)")
int_list = arg_type(lambda text: [int(v) for v in text.split(",") if v.strip()], _nonempty_widths,
                      "comma-separated positive integers")


def site_list(text: str) -> list[str]:
    """Comma-separated site names or codes, commas inside brackets kept: ``c,z[0,3]`` ->
    ``["c", "z[0,3]"]``."""
    items = [v.strip() for v in re.split(r",(?![^\[]*\])", text)]
    if not text.strip() or not all(items):
        raise argparse.ArgumentTypeError(f"expected comma-separated sites such as 'c,z[0]', got {text!r}")
    return items


def memory_size(text: str) -> int:
    """A memory size (``16G``, ``512M``, ``off`` -> 0: no limit)."""
    from pyro_spvae.training.memory import parse_size

    try:
        return parse_size(text) or 0
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def group_lr(text: str) -> tuple[str, float]:
    pattern, sep, lr = text.rpartition("=")
    if not sep or not pattern:
        raise argparse.ArgumentTypeError(f"expected PATTERN=LR (e.g. 'sum_logits=1e-2'), got {text!r}")
    return pattern, positive_float(lr)


#: Options of the model families and of the estimator's per-step state (``pyro_spvae.training.hooks``):
#: ``(flag, type or choices, help)``; each sets the ``TrainConfig`` field of its name (``--geco-nu`` ->
#: ``geco_nu``), or the model option of that name for those in :data:`MODEL_OPTIONS`.
FAMILY_OPTIONS: tuple[tuple[str, Any, str], ...] = (
    ("--guide", ("a", "b", "c", "d"), "DLGMM guide (see pyro_spvae.zoo.build_dlgmm)"),
    ("--num-components", positive_int, "DLGMM mixture components (truncation of a DP)"),
    ("--n-categories", positive_int, "MIVAE categorical code size"),
    ("--constraint", ("mse", "nll"), "train under a Lagrange multiplier on this reconstruction constraint"),
    ("--constraint-site", str, "the constrained observation site (default x)"),
    ("--kappa", nonnegative_float, "tolerance of the constraint (threshold kappa^2 per dimension)"),
    ("--geco-rule", ("geco", "vhp"), "multiplier update rule"),
    ("--geco-nu", positive_float, "step size of log lambda"),
    ("--geco-alpha", unit_float, "moving-average factor of the constraint, in [0, 1)"),
    ("--geco-tau", positive_float, "steepness of the VHP rule's relaxation toward 1"),
    ("--geco-warmup", nonnegative_int, "steps before the first multiplier update"),
    ("--geco-update-every", positive_int, "steps between multiplier updates"),
    ("--lambda-init", positive_float, "initial multiplier"),
    ("--lambda-min", positive_float, "lower clamp of the multiplier"),
    ("--lambda-max", positive_float, "upper clamp of the multiplier"),
    ("--geco-coupling", ("auto", "scale", "penalty"), "how the multiplier enters the loss"),
    ("--mi-sites", site_list, "MI regulariser on these codes, e.g. 'c,z[0],z[1]'"),
    ("--mi-weight", nonnegative_float, "weight of the MI regulariser per data point"),
    ("--mi-q", ("guide", "net"), "Q of the MI bound: the guide or a network of its own"),
    ("--capacity-sites", site_list, "sites of --elbo capacity (default z,c)"),
    ("--capacity-max", nonnegative_float, "final capacity in nats (--elbo capacity)"),
    ("--capacity-steps", nonnegative_int, "steps of the capacity ramp"),
    ("--capacity-gamma", nonnegative_float, "weight of the capacity terms"),
    ("--temperature-start", positive_float, "anneal the relaxed code's temperature from this value"),
    ("--temperature-end", positive_float, "final temperature of the annealing"),
    ("--temperature-rate", nonnegative_float, "temperature decay per step"),
)
MODEL_OPTIONS = ("guide", "num_components", "n_categories")


def option_dest(flag: str) -> str:
    """The field an option sets: ``--geco-nu`` -> ``geco_nu``."""
    return flag[2:].replace("-", "_")
