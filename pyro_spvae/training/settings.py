"""The trainer's settings, grouped by concern: how long and how often (:class:`Schedule`), when to
stop or decay the learning rate (:class:`EarlyStopping`) and how each step is computed
(:class:`StepOptions`), and the per-step state of the estimator: a Lagrange multiplier
(:class:`GECOSettings`), a mutual-information regulariser (:class:`MISettings`), JointVAE's
capacities (:class:`CapacitySettings`) and a relaxed code's temperature (:class:`TemperatureSettings`).

Each group checks its own fields when it is built (through :mod:`pyro_spvae.validation`), so a
:class:`~pyro_spvae.training.Trainer` holds only valid settings and never re-checks them;
:class:`~pyro_spvae.training.TrainConfig` builds these groups from its fields of the same names
and so validates them here as well, in one place.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from pyro.infer import Trace_ELBO

from pyro_spvae.infer import GECO, CapacityELBO, ExponentialSchedule, LinearSchedule, MIRegularizedELBO
from pyro_spvae.validation import (
    check_choice,
    check_nonnegative_int,
    check_positive_int,
    check_unit_interval,
)

__all__ = [
    "MI_QS",
    "NONFINITE_POLICIES",
    "CapacitySettings",
    "EarlyStopping",
    "GECOSettings",
    "MISettings",
    "Schedule",
    "StepOptions",
    "TemperatureSettings",
]

#: What :class:`StepOptions` accepts for ``on_nonfinite``.
NONFINITE_POLICIES: tuple[str, ...] = ("raise", "skip")

_T = TypeVar("_T")


def _optional(check: Callable[[str, Any], _T], name: str, value: Any) -> _T | None:
    """``check(name, value)``, or ``None`` for ``value=None`` (an optional setting left unset)."""
    return None if value is None else check(name, value)


@dataclass(frozen=True)
class Schedule:
    """How long to train, and how often to validate, log and checkpoint.

    :ivar batch_size: the GLOBAL batch size (split across shards and processes).
    :ivar steps: stop after at most this many optimisation steps (``None``: bounded by ``epochs``).
    :ivar epochs: stop after at most this many passes over the training data
        (``len(train_data) // batch_size`` steps each; ``None``: bounded by ``steps``).
    :ivar eval_every: validate every this many steps.
    :ivar log_every: write a metrics line every this many steps (and at every validation).
    :ivar checkpoint_every: write ``checkpoint.pt`` every this many steps (``None``: ``eval_every``).
    :ivar valid_batch_size: examples per validation pass (``None``: ``batch_size``).
    :ivar valid_max_examples: validate on the first examples only (``None``: all of them).
    :raises TypeError: for a non-integer field.
    :raises ValueError: for a non-positive one, or when neither ``steps`` nor ``epochs`` is given.
    """

    batch_size: int
    steps: int | None = None
    epochs: int | None = None
    eval_every: int = 100
    log_every: int = 50
    checkpoint_every: int | None = None
    valid_batch_size: int | None = None
    valid_max_examples: int | None = None

    def __post_init__(self) -> None:
        check_positive_int("batch_size", self.batch_size)
        check_positive_int("eval_every", self.eval_every)
        check_positive_int("log_every", self.log_every)
        for name in ("steps", "epochs", "checkpoint_every", "valid_batch_size", "valid_max_examples"):
            _optional(check_positive_int, name, getattr(self, name))
        if self.steps is None and self.epochs is None:
            raise ValueError("give steps or epochs (or both) to bound training")

    def total_steps(self, steps_per_epoch: int) -> int:
        """Length of training: the smaller of ``steps`` and ``epochs * steps_per_epoch``."""
        limits = [] if self.steps is None else [self.steps]
        if self.epochs is not None:
            limits.append(self.epochs * steps_per_epoch)
        return min(limits)


@dataclass(frozen=True)
class EarlyStopping:
    """Early stopping and reduce-on-plateau learning rates, both driven by the validation loss.

    :ivar patience: stop after this many validations without improvement (``None``: never).
    :ivar lr_decay: multiply every learning rate by this factor in ``(0, 1)`` after ``lr_patience``
        validations without improvement (``None``: constant learning rates). Early stopping counts
        validations without improvement independently, so ``patience`` larger than
        ``lr_patience`` leaves room for several decays.
    :ivar lr_patience: validations without improvement before each decay.
    :ivar min_rel_improvement: a validation counts as an improvement (for ``patience`` and
        ``lr_patience``) only when it beats the last counted improvement by more than this
        fraction of its magnitude, in ``[0, 1)`` (``0``: any decrease; ``best.pt`` always keeps the
        lowest loss). With a decaying learning rate, a small threshold such as ``1e-4`` stops
        noise-level gains from postponing early stopping indefinitely.
    :raises TypeError: for a field of the wrong type.
    :raises ValueError: for a value out of range.
    """

    patience: int | None = None
    lr_decay: float | None = None
    lr_patience: int = 5
    min_rel_improvement: float = 0.0

    def __post_init__(self) -> None:
        _optional(check_positive_int, "patience", self.patience)
        _optional(check_unit_interval, "lr_decay", self.lr_decay)
        check_positive_int("lr_patience", self.lr_patience)
        check_unit_interval("min_rel_improvement", self.min_rel_improvement, closed_low=True)


@dataclass(frozen=True)
class StepOptions:
    """How one optimisation step is computed: randomness, sharding and the NaN/Inf guard.

    :ivar seed: master seed; every step's randomness derives from ``(seed, step, shard)``.
    :ivar shards: micro-batches per global batch (``None``: the number of processes). Each shard
        draws its randomness from ``(seed, step, shard)``, so ``N`` processes and one process with
        the same number of shards produce the same parameters.
    :ivar data_plate: name of the data plate (sample sites outside it are scaled by ``1/shards``).
    :ivar on_nonfinite: ``"raise"`` (stop with :class:`~pyro_spvae.training.NonFiniteError`) or
        ``"skip"`` (drop the update and continue) when the loss or a gradient is NaN/Inf.
    :ivar max_consecutive_skips: with ``"skip"``, raise after this many skipped steps in a row.
    :raises TypeError: for a field of the wrong type.
    :raises ValueError: for a value out of range or an unknown policy.
    """

    seed: int = 0
    shards: int | None = None
    data_plate: str = "data"
    on_nonfinite: str = "raise"
    max_consecutive_skips: int = 100

    def __post_init__(self) -> None:
        check_nonnegative_int("seed", self.seed)
        _optional(check_positive_int, "shards", self.shards)
        if not isinstance(self.data_plate, str):
            raise TypeError(f"data_plate must be a plate name (str), got {type(self.data_plate).__name__}")
        check_choice("on_nonfinite", self.on_nonfinite, NONFINITE_POLICIES)
        check_positive_int("max_consecutive_skips", self.max_consecutive_skips)


def _checked_by(make: Callable[[], Any], what: str) -> None:
    """Run ``make()`` (the constructor that owns the checks of these values), naming ``what`` in
    its error."""
    try:
        make()
    except (TypeError, ValueError) as e:
        raise type(e)(f"{what}: {e}") from None


@dataclass(frozen=True)
class GECOSettings:
    """A Lagrange multiplier on a data-fit constraint (:class:`~pyro_spvae.infer.GECO`, whose
    constructor names and checks the values; Rezende & Viola 2018, Klushyn et al. 2019,
    ``docs/hierarchical_priors.md``).

    :ivar constraint: ``"mse"`` or ``"nll"`` of the site ``site``.
    :ivar kappa: tolerance (threshold ``kappa^2``, per dimension of the site).
    :ivar rule: ``"geco"`` or ``"vhp"``; ``nu``, ``alpha``, ``tau``, ``warmup``, ``update_every``,
        ``lambda_init``, ``lambda_min``, ``lambda_max`` and ``coupling`` are GECO's.
    :raises TypeError: / :raises ValueError: for a value GECO refuses (the message says which).
    """

    constraint: str = "mse"
    site: str = "x"
    kappa: float = 0.1
    rule: str = "geco"
    nu: float = 1.0
    alpha: float = 0.99
    tau: float = 100.0
    warmup: int = 0
    update_every: int = 1
    lambda_init: float = 1.0
    lambda_min: float = 1e-6
    lambda_max: float = 1e6
    coupling: str = "auto"

    def __post_init__(self) -> None:
        if not isinstance(self.site, str):
            raise TypeError(f"the constraint site must be a site name (str), got {self.site!r}")
        if not self.site:
            raise ValueError("the constraint site must be a non-empty site name, e.g. 'x'")
        if not isinstance(self.constraint, str):
            raise TypeError(f"constraint must be 'mse' or 'nll', got {self.constraint!r}")
        _checked_by(lambda: self.wrap(Trace_ELBO()), "GECO")

    def wrap(self, elbo: Any) -> GECO:
        """:class:`~pyro_spvae.infer.GECO` around ``elbo`` (``auto_update=False``: the trainer
        updates the multiplier once per step, see :class:`~pyro_spvae.training.hooks.GECOHook`)."""
        return GECO(elbo, {self.site: self.constraint}, self.kappa, rule=self.rule, nu=self.nu,
                    alpha=self.alpha, tau=self.tau, warmup=self.warmup, update_every=self.update_every,
                    lambda_init=self.lambda_init, lambda_min=self.lambda_min, lambda_max=self.lambda_max,
                    coupling=self.coupling, auto_update=False)


#: What :class:`MISettings` accepts for ``q``: the guide, or a network of its own.
MI_QS: tuple[str, ...] = ("guide", "net")


@dataclass(frozen=True)
class MISettings:
    """The mutual-information regulariser (:class:`~pyro_spvae.infer.MIRegularizedELBO`; Serdega &
    Kim 2020, ``docs/mutual_information.md``).

    :ivar sites: codes such as ``("c", "z[0]")``.
    :ivar weight: ``w >= 0`` per data point.
    :ivar q: ``"guide"`` (the guide's posterior as ``Q``) or ``"net"`` (a
        :class:`~pyro_spvae.nn.code_posterior.CodePosteriorNet` trained with the model).
    :raises TypeError: / :raises ValueError: for codes or a weight the regulariser refuses.
    """

    sites: tuple[str, ...]
    weight: float = 1.0
    q: str = "guide"

    def __post_init__(self) -> None:
        check_choice("mi_q", self.q, MI_QS)
        _checked_by(lambda: self.wrap(Trace_ELBO()), "MI regulariser")

    def wrap(self, elbo: Any, q: Any = None) -> Any:
        """:class:`~pyro_spvae.infer.MIRegularizedELBO` around ``elbo``, with ``q`` as ``Q`` when
        :attr:`q` is ``"net"``."""
        return MIRegularizedELBO(elbo, list(self.sites), q="guide" if self.q == "guide" or q is None else q,
                                 weight=self.weight)


@dataclass(frozen=True)
class CapacitySettings:
    """JointVAE's controlled capacities (:class:`~pyro_spvae.infer.CapacityELBO`, Dupont 2018):
    the capacity of each site in ``sites`` rises linearly from 0 to ``max`` nats over ``steps``
    applied steps (a categorical site's is capped at ``log n``), weighted by ``gamma``.

    :raises TypeError: / :raises ValueError: for values the schedule or the objective refuse.
    """

    sites: tuple[str, ...] = ("z", "c")
    max: float = 5.0
    steps: int = 25000
    gamma: float = 30.0

    def __post_init__(self) -> None:
        if isinstance(self.sites, str) or not self.sites or not all(isinstance(s, str) for s in self.sites):
            raise TypeError(f"capacity sites must be a non-empty list of site names, got {self.sites!r}")
        _checked_by(lambda: self.make(), "capacity")

    def make(self, num_particles: int = 1, max_plate_nesting: float = float("inf"),
             vectorize_particles: bool = False) -> Any:
        """The :class:`~pyro_spvae.infer.CapacityELBO` (``auto_step=False``: the trainer advances
        it, see :class:`~pyro_spvae.training.hooks.CapacityHook`)."""
        schedule = LinearSchedule(0.0, self.max, self.steps)
        return CapacityELBO(dict.fromkeys(self.sites, schedule), gamma=self.gamma,
                            num_particles=num_particles, max_plate_nesting=max_plate_nesting,
                            vectorize_particles=vectorize_particles, auto_step=False)


@dataclass(frozen=True)
class TemperatureSettings:
    """Annealing of a relaxed code's temperature, ``max(end, start exp(-rate t))`` with ``t`` the
    applied steps (:class:`~pyro_spvae.infer.ExponentialSchedule`; Jang, Gu & Poole 2017).

    :raises TypeError: / :raises ValueError: for values the schedule refuses.
    """

    start: float = 1.0
    end: float = 0.3
    rate: float = 1e-4

    def __post_init__(self) -> None:
        _checked_by(self.schedule, "temperature")

    def schedule(self) -> Any:
        """The :class:`~pyro_spvae.infer.ExponentialSchedule`."""
        return ExponentialSchedule(self.start, self.end, self.rate)
