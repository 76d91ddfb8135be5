"""Trainer: step scaling, sharding, NaN guard, validation/early stopping, metrics, exact resume.

Uses a tiny self-contained model/guide so the trainer is tested independently of the VAE.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import Trace_ELBO
from pyro.nn import PyroModule, PyroParam
from torch import nn

from pyro_spvae.training import (
    DistributedContext,
    EarlyStopping,
    NonFiniteError,
    Schedule,
    StepOptions,
    TrainConfig,
    Trainer,
    load_checkpoint,
    make_elbo,
    make_optimizer,
    read_metrics,
    shards_for_rank,
)

D, Z = 6, 2


class TinyModel(PyroModule):
    """z ~ N(0, I), x ~ N(dec(z), 0.5); ``poison`` injects an infinite factor (guard tests)."""

    def __init__(self) -> None:
        super().__init__()
        self.dec = PyroModule[nn.Linear](Z, D)
        self.poison = False

    def forward(self, x: torch.Tensor) -> None:
        with pyro.plate("data", x.shape[0], dim=-1):
            z = pyro.sample("z", dist.Normal(x.new_zeros(Z), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(self.dec(z), 0.5).to_event(1), obs=x)
        if self.poison:
            pyro.factor("poison", self.dec.bias.sum() * float("inf"))


class TinyGuide(PyroModule):
    def __init__(self) -> None:
        super().__init__()
        self.enc = PyroModule[nn.Linear](D, 2 * Z)

    def forward(self, x: torch.Tensor) -> None:
        loc, log_scale = self.enc(x).chunk(2, dim=-1)
        with pyro.plate("data", x.shape[0], dim=-1):
            pyro.sample("z", dist.Normal(loc, log_scale.exp()).to_event(1))


class NoisyData:
    """Fixed vectors plus generator-driven noise (exercises the per-shard data generator).

    ``fail_at`` raises ``KeyboardInterrupt`` on that call of :meth:`batch` (simulated crash)."""

    def __init__(self, n: int = 40, seed: int = 1, fail_at: int | None = None, noise: float = 0.1) -> None:
        g = torch.Generator().manual_seed(seed)
        self.noise = noise
        self.x = torch.randn(n, D, generator=g)
        self.calls = 0
        self.fail_at = fail_at

    def __len__(self) -> int:
        return self.x.shape[0]

    def batch(self, idx: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        self.calls += 1
        if self.fail_at is not None and self.calls == self.fail_at:
            raise KeyboardInterrupt("simulated crash")
        return self.x[idx] + self.noise * torch.randn(idx.shape[0], D, generator=generator)


def _group(cls, kw: dict) -> dict:
    """The keywords of ``kw`` that are fields of the settings class ``cls`` (removed from ``kw``)."""
    return {f.name: kw.pop(f.name) for f in dataclasses.fields(cls) if f.name in kw}


def make_trainer(
    tmp_path=None, *, seed: int = 0, data=None, valid=None, model=None, guide=None, **kw
) -> Trainer:
    """A trainer of the tiny model; ``kw`` holds fields of the settings groups (``steps``,
    ``patience``, ``shards``, ...) and ``elbo``/``optim``."""
    pyro.clear_param_store()
    torch.manual_seed(123)  # identical initialisation across trainers
    model = model or TinyModel()
    guide = guide or TinyGuide()
    schedule = Schedule(**{"batch_size": 8, "steps": 12, **_group(Schedule, kw)})
    return Trainer(
        model,
        guide,
        kw.pop("elbo", Trace_ELBO()),
        kw.pop("optim", make_optimizer(1e-2)),
        data or NoisyData(),
        schedule,
        valid_data=valid,
        early_stopping=EarlyStopping(**_group(EarlyStopping, kw)),
        options=StepOptions(seed=seed, **_group(StepOptions, kw)),
        out_dir=tmp_path,
        progress=False,
        **kw,
    )


def params_of(trainer: Trainer) -> dict[str, torch.Tensor]:
    out = {f"model.{k}": v.detach().clone() for k, v in trainer.model.state_dict().items()}
    out.update({f"guide.{k}": v.detach().clone() for k, v in trainer.guide.state_dict().items()})
    return out


def test_fit_reduces_loss_and_writes_metrics(tmp_path):
    t = make_trainer(
        tmp_path, steps=None, epochs=30, eval_every=25, log_every=5, valid=NoisyData(16, 2)
    )
    before = t.evaluate()
    result = t.fit()
    assert result.step == 30 * (40 // 8)
    assert result.best_valid_loss < before
    records = read_metrics(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in records] == list(range(5, 151, 5))
    keys = {"step", "epoch", "train_loss", "valid_loss", "examples_per_s", "wall_time", "cpu_time", "lr"}
    keys.add("skipped_steps")
    assert all(keys <= set(r) for r in records)
    assert records[-1]["lr"] == pytest.approx(1e-2)
    assert records[-1]["train_loss"] < records[0]["train_loss"]
    assert [r["step"] for r in records if r["valid_loss"] is not None] == [25, 50, 75, 100, 125, 150]
    assert (tmp_path / "checkpoint.pt").exists() and (tmp_path / "best.pt").exists()
    best = load_checkpoint(tmp_path / "best.pt")
    assert best["step"] == result.best_step
    assert best["best_valid_loss"] == pytest.approx(result.best_valid_loss)


def test_step_divides_by_global_batch_and_matches_manual_gradient():
    """With a deterministic objective, one step equals a hand-made Adam step on the mean loss."""

    class Mean(PyroModule):
        def __init__(self) -> None:
            super().__init__()
            self.mu = nn.Parameter(torch.zeros(D))

        def forward(self, x):
            with pyro.plate("data", x.shape[0], dim=-1):
                pyro.sample("x", dist.Normal(self.mu, 1.0).to_event(1), obs=x)

    class Empty(PyroModule):
        def forward(self, x):
            pass

    x = torch.randn(10, D)
    t = make_trainer(model=Mean(), guide=Empty(), optim=make_optimizer(0.1), batch_size=10, steps=1)
    loss = t.step(x)
    expected_loss = -dist.Normal(torch.zeros(D), 1.0).log_prob(x).sum() / 10
    assert loss == pytest.approx(float(expected_loss), rel=1e-6)
    # Adam's first step moves each coordinate by lr * sign(grad); grad of the mean loss = -(mean x).
    assert torch.allclose(t.model.mu.detach(), 0.1 * torch.sign(x.mean(0)), atol=1e-6)


@pytest.mark.parametrize("num_shards", [2, 3])
def test_sharded_step_equals_full_batch_for_deterministic_objective(num_shards):
    """Shards (uneven: 8 = 3 + 3 + 2) and the 1/S scaling of a global site reproduce the full batch."""

    class GlobalModel(PyroModule):
        def __init__(self) -> None:
            super().__init__()
            self.w = nn.Parameter(torch.zeros(D))

        def forward(self, x):
            theta = pyro.sample("theta", dist.Normal(torch.zeros(D), 1.0).to_event(1))
            with pyro.plate("data", x.shape[0], dim=-1):
                pyro.sample("x", dist.Normal(self.w + theta, 1.0).to_event(1), obs=x)

    class DeltaGuide(PyroModule):
        def __init__(self) -> None:
            super().__init__()
            self.theta_loc = PyroParam(torch.full((D,), 0.3))

        def forward(self, x):
            pyro.sample("theta", dist.Delta(self.theta_loc).to_event(1))

    def run(shards):
        t = make_trainer(
            model=GlobalModel(),
            guide=DeltaGuide(),
            shards=shards,
            data=NoisyData(noise=0.0),
            steps=5,
            optim=make_optimizer(0.05),
        )
        t.fit()
        return params_of(t)

    full, sharded = run(1), run(num_shards)
    for k in full:
        assert torch.allclose(full[k], sharded[k], atol=1e-6), k


def test_shards_for_rank_partition():
    idx = torch.randperm(11)
    for world in (1, 2, 3):
        got = {}
        for rank in range(world):
            ctx = DistributedContext(rank=rank, world_size=world)
            got.update(dict(shards_for_rank(idx, 3, ctx)))
        assert torch.equal(torch.cat([got[k] for k in range(3)]), idx)
    with pytest.raises(ValueError, match="at least the number of processes"):
        shards_for_rank(idx, 1, DistributedContext(rank=0, world_size=2))


def test_resume_after_crash_is_bit_identical(tmp_path):
    """Crash (KeyboardInterrupt) mid-run after a mid-epoch checkpoint; a new trainer resumes it."""
    ref = make_trainer(None, steps=13, valid=NoisyData(16, 2), eval_every=4)
    ref.fit()
    expected = params_of(ref)

    # 40 examples / batch 8 = 5 steps per epoch; checkpoints every 4 steps (mid-epoch at 4, 8, 12).
    crashing = make_trainer(
        tmp_path, steps=13, valid=NoisyData(16, 2), eval_every=4, data=NoisyData(fail_at=11)
    )
    with pytest.raises(KeyboardInterrupt):
        crashing.fit()
    assert load_checkpoint(tmp_path / "checkpoint.pt")["step"] == 8

    resumed = make_trainer(tmp_path, steps=13, valid=NoisyData(16, 2), eval_every=4)
    assert resumed.resume()
    assert resumed.step_count == 8
    resumed.fit()
    got = params_of(resumed)
    assert got.keys() == expected.keys()
    for k in expected:
        assert torch.equal(got[k], expected[k]), k
    # The metrics file continues consistently: no duplicated steps.
    steps = [r["step"] for r in read_metrics(tmp_path / "metrics.jsonl")]
    assert steps == sorted(set(steps))


def test_resume_refuses_mismatched_seed(tmp_path):
    make_trainer(tmp_path, steps=2, eval_every=2).fit()
    other = make_trainer(tmp_path, seed=1, steps=4, eval_every=2)
    with pytest.raises(ValueError, match="seed=0"):
        other.resume()


def test_nonfinite_guard_raises_with_step_and_keeps_last_good_checkpoint(tmp_path):
    t = make_trainer(tmp_path, steps=10, eval_every=2)
    t.fit()
    t2 = make_trainer(tmp_path, steps=20, eval_every=2)
    t2.resume()
    good = load_checkpoint(tmp_path / "checkpoint.pt")
    t2.model.poison = True
    with pytest.raises(NonFiniteError, match=r"step 11: loss is -?inf; non-finite gradients of dec\.bias"):
        t2.fit()
    # Nothing non-finite reached the parameters or the checkpoint on disk.
    assert all(torch.isfinite(v).all() for v in params_of(t2).values())
    assert load_checkpoint(tmp_path / "checkpoint.pt")["step"] == good["step"] == 10


def test_nonfinite_guard_skip_mode(tmp_path):
    class SometimesPoisoned(TinyModel):
        trainer: Trainer | None = None

        def forward(self, x):
            self.poison = self.trainer is not None and self.trainer.step_count % 3 == 1
            super().forward(x)

    model = SometimesPoisoned()
    t = make_trainer(tmp_path, model=model, steps=9, eval_every=3, on_nonfinite="skip", log_every=9)
    model.trainer = t
    result = t.fit()
    assert result.skipped_steps == 3  # steps 2, 5, 8
    assert all(torch.isfinite(v).all() for v in params_of(t).values())
    assert read_metrics(tmp_path / "metrics.jsonl")[-1]["skipped_steps"] == 3
    assert load_checkpoint(tmp_path / "checkpoint.pt")["skipped_steps"] == 3

    always = TinyModel()
    always.poison = True
    t = make_trainer(model=always, steps=9, on_nonfinite="skip", max_consecutive_skips=2)
    with pytest.raises(NonFiniteError, match="3 consecutive steps skipped"):
        t.fit()
    assert t.guard.skipped_steps == 2


def test_early_stopping_with_patience(tmp_path):
    # Learning rate 0: validation never improves after the first check.
    t = make_trainer(
        tmp_path, steps=100, eval_every=2, patience=3, valid=NoisyData(16, 2), optim=make_optimizer(1e-12)
    )
    result = t.fit()
    assert result.stopped_early
    assert result.step == 2 * (1 + 3)
    assert result.best_step == 2
    # A resumed early-stopped run does not train further.
    again = make_trainer(tmp_path, steps=100, eval_every=2, patience=3, valid=NoisyData(16, 2))
    assert again.resume() and again.fit().step == result.step


def test_learning_rate_decays_on_plateau(tmp_path):
    # Learning rate ~0: validation never improves after the first check (steps 2, 4, ..., 14).
    t = make_trainer(tmp_path, steps=14, eval_every=2, lr_decay=0.5, lr_patience=2,
                     valid=NoisyData(16, 2), optim=make_optimizer(1e-12, group_lrs={r"^enc\.": 4e-12}))
    result = t.fit()
    assert not result.stopped_early and result.best_step == 2
    rows = read_metrics(tmp_path / "metrics.jsonl")
    lrs = {r["step"]: r["lr"] for r in rows if r["valid_loss"] is not None}
    # two checks without improvement per decay: at steps 6, 10 and 14; every group decays alike
    assert lrs[4] == [1e-12, 4e-12]
    assert lrs[6] == lrs[8] == [0.5e-12, 2e-12]
    assert lrs[10] == lrs[12] == [0.25e-12, 1e-12]
    assert lrs[14] == [0.125e-12, 0.5e-12]
    assert t.plateau.lr_scale == 0.125 and load_checkpoint(tmp_path / "checkpoint.pt")["lr_scale"] == 0.125


def test_min_rel_improvement_ignores_noise_level_gains(tmp_path):
    t = make_trainer(tmp_path, steps=100, eval_every=2, patience=3, lr_decay=0.5, lr_patience=2,
                     min_rel_improvement=1e-3, valid=NoisyData(16, 2))
    losses = iter([100.0, 99.95, 99.9, 99.0, 98.99, 98.98, 98.97, 98.96])
    t.evaluate = lambda *a, **k: next(losses)
    result = t.fit()
    # 99.95 and 99.9 are within 0.1% of 100 (no improvement), 99.0 is one; after it three more
    # noise-level gains end the run, while best.pt still follows the lowest loss
    assert result.stopped_early and result.step == 2 * 7
    assert result.best_step == 14 and result.best_valid_loss == 98.97
    assert t.plateau.lr_scale == 0.25  # decayed after 99.9 and after 98.98 (two checks without gain each)
    # slow steady progress adds up: measured from the last counted improvement, every second
    # 0.06% step makes a 0.12% gain that counts (measured from the previous check, none would)
    t = make_trainer(tmp_path / "creep", steps=10, eval_every=2, patience=3, min_rel_improvement=1e-3,
                     valid=NoisyData(16, 2))
    losses = iter([100.0, 99.94, 99.88, 99.82, 99.76])
    t.evaluate = lambda *a, **k: next(losses)
    assert not t.fit().stopped_early and t.plateau.ref_valid_loss == 99.76 and t.plateau.bad_checks == 0
    assert load_checkpoint(tmp_path / "best.pt")["step"] == 14


def test_learning_rate_decay_resumes_exactly(tmp_path):
    # a large step size overshoots: the validation loss stops improving now and then
    def trainer(path, steps):
        return make_trainer(path, steps=steps, eval_every=1, lr_decay=0.5, lr_patience=1,
                            valid=NoisyData(16, 2), optim=make_optimizer(0.3))

    ref = trainer(None, 20)
    ref.fit()
    assert ref.plateau.lr_scale < 1  # the validation loss plateaus at least once
    trainer(tmp_path, 10).fit()
    resumed = trainer(tmp_path, 20)
    assert resumed.resume() and resumed.step_count == 10
    resumed.fit()
    assert resumed.plateau.lr_scale == ref.plateau.lr_scale and resumed.current_lr() == ref.current_lr()
    expected, got = params_of(ref), params_of(resumed)
    for k in expected:
        assert torch.equal(got[k], expected[k]), k


def param_groups(t: Trainer) -> list[dict]:
    """The parameter groups of the trainer's torch optimiser(s)."""
    return [g for o in t.optimizer.torch_optimizers() for g in o.param_groups]


def test_group_learning_rates_apply_by_name():
    optim = make_optimizer(1e-3, group_lrs={r"^enc\.": 1e-2})
    t = make_trainer(optim=optim, steps=1)
    t.fit()
    store = pyro.get_param_store()
    lrs = {store.param_name(p): g["lr"] for g in param_groups(t) for p in g["params"]}
    assert lrs["enc.weight"] == lrs["enc.bias"] == 1e-2
    assert lrs["dec.weight"] == lrs["dec.bias"] == 1e-3
    assert t.current_lr() == [1e-3, 1e-2]


def test_works_with_other_elbos():
    for name in ("meanfield", "renyi"):
        t = make_trainer(elbo=make_elbo(name, num_particles=3), steps=3)
        assert math.isfinite(t.fit().train_loss)


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"batch_size": 0}, ValueError, r"batch_size must be an int in \[1, inf\], got 0"),
        ({"batch_size": 100}, ValueError, "exceeds the 40 training examples"),
        ({"steps": None}, ValueError, "give steps or epochs"),
        ({"on_nonfinite": "ignore"}, ValueError, "unknown on_nonfinite 'ignore'"),
        ({"shards": 9}, ValueError, r"number of shards \(9\) exceeds the batch size \(8\)"),
        ({"eval_every": 1.5}, TypeError, "eval_every must be an int, got float"),
        ({"lr_decay": 1.0}, ValueError, r"lr_decay must be a finite number in \(0, 1\)"),
        ({"lr_decay": 0}, ValueError, r"lr_decay must be a finite number in \(0, 1\)"),
        ({"lr_patience": 0}, ValueError, r"lr_patience must be an int in \[1, inf\]"),
        ({"min_rel_improvement": -0.1}, ValueError,
         r"min_rel_improvement must be a finite number in \[0, 1\)"),
        ({"max_consecutive_skips": True}, TypeError, "max_consecutive_skips must be an int, got bool"),
    ],
)
def test_invalid_arguments(kwargs, error, message):
    with pytest.raises(error, match=message):
        make_trainer(**kwargs)


@pytest.mark.parametrize(
    "field, value, error, message",
    [
        ("batch_size", 0, ValueError, "batch_size must be an int"),
        ("steps", 1.5, TypeError, "steps must be an int"),
        ("epochs", None, ValueError, "give steps or epochs"),
        ("seed", -1, ValueError, "seed must be an int in \\[0"),
        ("shards", 0, ValueError, "shards must be an int"),
        ("patience", 0, ValueError, "patience must be an int"),
        ("lr", -1e-3, ValueError, "lr must be a finite number"),
        ("clip_norm", "1", TypeError, "clip_norm must be a real number"),
        ("group_lrs", {"^enc": 0.0}, ValueError, "learning rate for '\\^enc'"),
        ("group_lrs", [], TypeError, "group_lrs must be a dict"),
        ("num_particles", 0, ValueError, "num_particles must be an int"),
        ("alpha", float("nan"), ValueError, "alpha must be a finite number"),
        ("lr_decay", 1.5, ValueError, "lr_decay must be a finite number in"),
        ("on_nonfinite", "ignore", ValueError, "unknown on_nonfinite"),
        ("elbo", "nope", ValueError, "unknown ELBO 'nope'"),
        ("model", "nope", ValueError, "unknown model 'nope'"),
        ("data", "cifar", ValueError, "unknown data 'cifar'"),
        ("model_kwargs", None, TypeError, "model_kwargs must be a dict"),
        ("constraint", "mae", ValueError, "GECO: unknown constraint 'mae'"),
        ("constraint", 1, TypeError, "constraint must be 'mse' or 'nll'"),
        ("constraint_site", "", ValueError, "constraint site must be a non-empty site name"),
        ("kappa", -0.1, ValueError, "GECO: kappa must be a finite number in \\[0"),
        ("geco_rule", "beta", ValueError, "GECO: unknown rule 'beta'"),
        ("geco_nu", 0.0, ValueError, "GECO: nu must be a finite number"),
        ("geco_alpha", 1.0, ValueError, "GECO: alpha must be a finite number in \\[0, 1\\)"),
        ("geco_warmup", 1.5, TypeError, "GECO: warmup must be an int"),
        ("geco_update_every", 0, ValueError, "GECO: update_every must be an int"),
        ("lambda_init", 0.0, ValueError, "GECO: lambda_min|GECO: lambda_init"),
        ("geco_coupling", "both", ValueError, "GECO: unknown coupling 'both'"),
        ("mi_sites", "c", TypeError, "mi_sites must be a list of site names"),
        ("mi_sites", ["z[x]"], ValueError, "MI regulariser: cannot parse code 'z\\[x\\]'"),
        ("mi_weight", -1.0, ValueError, "MI regulariser: weight must be a finite number"),
        ("mi_q", "encoder", ValueError, "unknown mi_q 'encoder'"),
        ("capacity_sites", [], TypeError, "capacity sites must be a non-empty list"),
        ("capacity_steps", -1, ValueError, "capacity: num_steps must be an int"),
        ("capacity_gamma", -30.0, ValueError, "capacity: gamma must be a finite number"),
        ("temperature_start", 0.0, ValueError, "temperature: start must be a finite number in \\(0"),
    ],
)
def test_train_config_checks_every_field(field, value, error, message):
    with pytest.raises(error, match=message):
        TrainConfig(**{field: value})


def test_from_config_builds_the_configured_trainer(tmp_path):
    """``Trainer.from_config`` hands the configuration's groups, estimator and optimiser to the
    trainer: it trains exactly like one built by hand from the same settings, and stores the
    configuration in its checkpoints."""
    config = TrainConfig(batch_size=8, steps=6, epochs=None, eval_every=3, log_every=3, patience=2,
                         lr=1e-2, lr_decay=0.5, lr_patience=1, seed=3, shards=2)
    assert config.schedule() == Schedule(batch_size=8, steps=6, eval_every=3, log_every=3)
    assert config.early_stopping() == EarlyStopping(patience=2, lr_decay=0.5, lr_patience=1)
    assert config.step_options() == StepOptions(seed=3, shards=2)
    pyro.clear_param_store()
    torch.manual_seed(123)
    t = Trainer.from_config(config, TinyModel(), TinyGuide(), NoisyData(), NoisyData(16, 2), out_dir=tmp_path,
                            progress=False)
    assert isinstance(t.elbo, Trace_ELBO) and t.elbo.max_plate_nesting == 1
    assert (t.schedule, t.plateau.policy, t.options) == (config.schedule(), config.early_stopping(),
                                                         config.step_options())
    t.fit()
    ref = make_trainer(None, seed=3, steps=6, eval_every=3, log_every=3, patience=2, lr_decay=0.5,
                       lr_patience=1, shards=2, valid=NoisyData(16, 2),
                       elbo=make_elbo("trace", max_plate_nesting=1))
    ref.fit()
    expected, got = params_of(ref), params_of(t)
    for k in expected:
        assert torch.equal(got[k], expected[k]), k
    assert load_checkpoint(tmp_path / "checkpoint.pt")["config"] == config.to_dict()
    with pytest.raises(TypeError, match="config must be a TrainConfig"):
        Trainer.from_config(config.to_dict(), TinyModel(), TinyGuide(), NoisyData())


def test_make_elbo_by_name_and_wrapped():
    """The estimators of the model families by name, GECO inside the MI regulariser (whose
    generative pass must not see GECO's scaled sites), the settings of the configuration."""
    from pyro.infer import TraceEnum_ELBO

    from pyro_spvae.infer import GECO, CapacityELBO, MIRegularizedELBO, MixtureELBO
    from pyro_spvae.training import GECOSettings, MISettings

    assert isinstance(make_elbo("enum", max_plate_nesting=1), TraceEnum_ELBO)
    assert isinstance(make_elbo("mixture", 2), MixtureELBO)
    capacity = make_elbo("capacity", max_plate_nesting=1)
    assert isinstance(capacity, CapacityELBO) and not capacity.auto_step and capacity.gamma == 30.0
    elbo = make_elbo("trace", geco=GECOSettings("nll", kappa=0.3, rule="vhp", nu=0.5), mi=MISettings(("c",)))
    assert isinstance(elbo, MIRegularizedELBO) and isinstance(elbo.elbo, GECO)
    geco = elbo.elbo
    assert (geco.rule, geco.kappa, geco.nu, geco.auto_update) == ("vhp", 0.3, 0.5, False)
    assert isinstance(geco.elbo, Trace_ELBO) and geco.coupling == "scale"
    with pytest.raises(ValueError, match="needs its Q network"):
        make_elbo("trace", mi=MISettings(("c",), q="net"))
    config = TrainConfig(constraint="mse", kappa=0.2, geco_rule="vhp", geco_warmup=3, mi_sites=["c", "z[0]"],
                         mi_weight=2.0, temperature_start=1.0)
    assert config.geco() == GECOSettings("mse", "x", 0.2, "vhp", warmup=3)
    assert config.mi() == MISettings(("c", "z[0]"), 2.0) and config.temperature().start == 1.0
    assert TrainConfig().geco() is None and TrainConfig().mi() is None and TrainConfig().temperature() is None


def test_rejects_non_elbo_and_clashing_names():
    with pytest.raises(TypeError, match="pyro.infer.ELBO"):
        make_trainer(elbo="trace")

    class ClashGuide(PyroModule):
        def __init__(self) -> None:
            super().__init__()
            self.dec = PyroModule[nn.Linear](D, 2 * Z)

    with pytest.raises(ValueError, match="share Pyro parameter names"):
        make_trainer(guide=ClashGuide())


def test_metrics_are_valid_json_lines(tmp_path):
    make_trainer(tmp_path, steps=4, log_every=2).fit()
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 2
    assert [json.loads(line)["step"] for line in lines] == [2, 4]


# ---------------------------------------------------------------------------- issue 10
def _untimed(records):
    timing = ("examples_per_s", "wall_time", "cpu_time")
    return [{k: v for k, v in r.items() if k not in timing} for r in records]


def test_metrics_resume_exactly_from_a_checkpoint_between_logging_steps(tmp_path):
    """Checkpoints at 3, 6 (not logging steps: 5, 10); killed in step 9. The first train_loss after
    the resume (step 10) averages steps 6..10 as in the uninterrupted run, not 7..10 alone."""
    ref = make_trainer(tmp_path / "ref", steps=13, log_every=5, checkpoint_every=3)
    ref.fit()
    crashing = make_trainer(tmp_path / "run", steps=13, log_every=5, checkpoint_every=3,
                            data=NoisyData(fail_at=9))
    with pytest.raises(KeyboardInterrupt):
        crashing.fit()
    assert load_checkpoint(tmp_path / "run" / "checkpoint.pt")["step"] == 6
    resumed = make_trainer(tmp_path / "run", steps=13, log_every=5, checkpoint_every=3)
    assert resumed.resume()
    result = resumed.fit()
    got = read_metrics(tmp_path / "run" / "metrics.jsonl")
    expected = read_metrics(tmp_path / "ref" / "metrics.jsonl")
    assert [r["step"] for r in got] == [5, 10, 13]
    assert _untimed(got) == _untimed(expected)
    assert result.train_loss == ref.last_train_loss
    # a finished run resumed again reports its last train_loss (it printed "train_loss": null)
    again = make_trainer(tmp_path / "run", steps=13, log_every=5, checkpoint_every=3)
    assert again.resume() and again.fit().train_loss == result.train_loss


def test_damaged_metrics_file_is_an_error_naming_file_and_line(tmp_path):
    from pyro_spvae.training import MetricsError

    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1}\nnot json\n{"step": 2}\n')
    with pytest.raises(MetricsError, match=r"metrics.jsonl, line 2: not valid JSON"):
        read_metrics(path)
    path.write_text('{"step": 1}\n[1, 2]\n')
    with pytest.raises(MetricsError, match=r"line 2: expected a JSON object"):
        read_metrics(path)
    path.write_text('{"step": 1}\n{"loss": 2}\n')
    with pytest.raises(MetricsError, match=r"line 2: no integer 'step'"):
        read_metrics(path)
    path.write_bytes(b'{"step": 1}\n\xff\n')
    with pytest.raises(MetricsError, match=r"metrics.jsonl, line 2: not UTF-8"):
        read_metrics(path)
    path.write_text('{"step": 1}\n{"step": 2, "lo')  # torn last line of a killed write: tolerated
    assert read_metrics(path) == [{"step": 1}]
    path.unlink()
    path.mkdir()
    with pytest.raises(MetricsError, match="is a directory"):
        read_metrics(path)


def test_guard_checks_parameters_after_the_update(tmp_path):
    """A finite gradient times a huge learning rate overflows the parameters: the step is named
    (it used to pass the guard and fail later in distribution validation)."""
    t = make_trainer(tmp_path, steps=3, optim=make_optimizer(1e308))
    with pytest.raises(NonFiniteError, match=r"step 1: non-finite parameters after the update: dec\.bias"):
        t.fit()
    assert not (tmp_path / "checkpoint.pt").exists()


def test_skip_restores_parameters_and_optimiser_state(tmp_path):
    t = make_trainer(tmp_path, steps=6, log_every=3, on_nonfinite="skip")
    for _ in range(2):
        t._timed_step()
    before = t.state_dict()
    before = {"params": params_of(t), "optim": copy.deepcopy(before["optimizer"])}
    for g in param_groups(t):
        g["lr"] = 1e308
    loss, _ = t._timed_step()
    assert math.isnan(loss) and t.guard.skipped_steps == 1
    after = t.state_dict()
    for k, v in before["params"].items():
        assert torch.equal(params_of(t)[k], v), k
    for name, st in before["optim"].items():
        for i, s in st["state"].items():
            for key, value in s.items():
                assert torch.equal(after["optimizer"][name]["state"][i][key], value), (name, key)
    for g in param_groups(t):
        assert g["lr"] == 1e308  # the restored state is the one before the step
        g["lr"] = 1e-2
    result = t.fit()
    assert result.skipped_steps == 1 and all(torch.isfinite(v).all() for v in params_of(t).values())


def test_resumed_optimiser_takes_the_configured_learning_rate(tmp_path):
    make_trainer(tmp_path, steps=4, eval_every=2, lr_decay=0.5, lr_patience=1, valid=NoisyData(16, 2),
                 optim=make_optimizer(0.3)).fit()
    scale = load_checkpoint(tmp_path / "checkpoint.pt")["lr_scale"]
    resumed = make_trainer(tmp_path, steps=5, eval_every=2, lr_decay=0.5, lr_patience=1,
                           valid=NoisyData(16, 2), optim=make_optimizer(0.01, group_lrs={r"^enc\.": 0.02}))
    assert resumed.resume()
    resumed._timed_step()
    assert resumed.current_lr() == [0.01 * scale, 0.02 * scale]
