"""Training hooks (:mod:`pyro_spvae.training.hooks`) driven by the :class:`~pyro_spvae.training.Trainer`:
GECO's multiplier (issue 14), the capacity and temperature schedules and the MI regulariser's ``Q``
network (issue 15).

- On the linear-Gaussian model of ``test_geco.py``, whose constrained optimum is known in closed form
  (``lambda* = 1 / kappa^2`` with ``coupling="scale"``; ``docs/hierarchical_priors.md``), training
  through the trainer, with the batch split into shards whose constraint values the hook sums, meets
  the constraint and the multiplier settles.
- Each hook's state survives a checkpoint file round trip, and a run stopped after ``N`` steps and
  resumed to ``2N`` writes the same per-step trajectory (``geco/lambda``, ``temperature/value``,
  ``capacity/step``, ...) and ends with the same parameters, bit for bit, as an uninterrupted run.
"""

from __future__ import annotations

import math
import os
import subprocess
from pathlib import Path

import pyro
import pytest
import torch
import torch.distributed as dist
from pyro.infer import Trace_ELBO
from test_geco import Toy, ToyGuide, toy_data

from pyro_spvae.cli import main
from pyro_spvae.infer import (
    GECO,
    CapacityELBO,
    ExponentialSchedule,
    LinearSchedule,
    MIRegularizedELBO,
    code_posterior_for,
)
from pyro_spvae.training import (
    Schedule,
    StepOptions,
    TensorData,
    Trainer,
    launch_command,
    load_checkpoint,
    make_optimizer,
    read_metrics,
)
from pyro_spvae.training.distributed import DistributedContext
from pyro_spvae.training.hooks import (
    CapacityHook,
    GECOHook,
    MIHook,
    TemperatureHook,
    TrainingHook,
    hooks_for,
    validation_elbo,
)
from pyro_spvae.zoo import MODELS

N = 5  # steps before the interruption
REPO_ROOT = Path(__file__).resolve().parents[1]


class Recorder(TrainingHook):
    """Records ``value()`` after every applied step (a user-defined hook beside the built-in ones)."""

    name = "recorder"

    def __init__(self, value) -> None:
        self.value, self.values = value, []

    def after_step(self, step: int, ok: bool, ctx: DistributedContext) -> None:
        if ok:
            self.values.append(self.value())


def _binary(n: int = 24) -> TensorData:
    x = torch.bernoulli(torch.full((n, 1, 4, 4), 0.5), generator=torch.Generator().manual_seed(3))
    return TensorData(x)


def _setup(kind: str):
    """``(model, guide, elbo, extra hooks, data)`` of a tiny run whose hook state moves every step."""
    pyro.clear_param_store()
    torch.manual_seed(11)
    if kind in ("geco", "mi"):
        model, guide = MODELS["vae"]((1, 4, 4), z_dim=2, hidden=(8,))
        elbo = GECO(Trace_ELBO(), "mse", kappa=0.1, nu=2.0, alpha=0.5)
        if kind == "mi":
            q = code_posterior_for(model, torch.zeros(2, 1, 4, 4), ["z[0]"], hidden=(8,), name="mi_q")
            elbo = MIRegularizedELBO(elbo, ["z[0]"], q=q, weight=1.0)
        return model, guide, elbo, [], _binary()
    model, guide = MODELS["mivae-relaxed"]((1, 4, 4), z_dim=2, n_categories=3, hidden=(8,))
    if kind == "capacity":
        ramp = LinearSchedule(0.0, 5.0, 7)
        return model, guide, CapacityELBO({"z": ramp, "c": ramp}, max_plate_nesting=1), [], _binary()
    hook = TemperatureHook(model, ExponentialSchedule(1.0, 0.3, 0.2))
    return model, guide, Trace_ELBO(max_plate_nesting=1), [hook], _binary()


def _trainer(kind: str, out, steps: int, **kw) -> Trainer:
    model, guide, elbo, extra, data = _setup(kind)
    hooks = [*hooks_for(elbo), *extra]
    schedule = Schedule(batch_size=8, steps=steps, log_every=1, eval_every=4, checkpoint_every=N,
                        valid_max_examples=8)
    return Trainer(model, guide, elbo, make_optimizer(1e-2), data, schedule, valid_data=_binary(8),
                   options=StepOptions(seed=2, shards=2), out_dir=out, progress=False, hooks=hooks, **kw)


def _weights(t: Trainer) -> dict[str, torch.Tensor]:
    modules = {"model": t.model, "guide": t.guide, **t.hook_modules}
    return {f"{k}.{n}": v.clone() for k, m in modules.items() for n, v in m.state_dict().items()}


# ---------------------------------------------------------------------------- constrained optimum
@pytest.mark.parametrize("rule", ["geco", "vhp"])
def test_trainer_meets_the_constraint(rule):
    """``kappa^2 = 0.5``: ``lambda* = 2`` and ``E[C] = 0.5`` (see ``test_geco.py``), the batch in two
    shards (the hook sums their constraint values before each update)."""
    pyro.clear_param_store()
    torch.manual_seed(1)
    geco = GECO(Trace_ELBO(), "mse", kappa=math.sqrt(0.5), rule=rule, nu=0.5, alpha=0.9, warmup=50)
    hooks = hooks_for(geco)
    record = Recorder(lambda: (geco.multiplier, geco.last_constraint))
    t = Trainer(Toy(), ToyGuide(), geco, make_optimizer(0.1), TensorData(toy_data()),
                Schedule(batch_size=256, steps=250), options=StepOptions(seed=1, shards=2), progress=False,
                hooks=[*hooks, record])
    assert not geco.auto_update and t.valid_elbo is geco.elbo
    t.fit()
    lam = torch.tensor([v[0] for v in record.values[-100:]])
    c = torch.tensor([v[1] for v in record.values[-100:]])
    assert geco.num_steps == 250
    assert abs(float(lam.mean()) - 2.0) < 0.1 * 2.0, lam.mean()
    assert float(lam.std()) < 0.05 * float(lam.mean()), "the multiplier did not settle"
    assert abs(float(c.mean()) - 0.5) < 0.1 * 0.5, c.mean()


# ---------------------------------------------------------------------------- checkpoints and resume
TRAJECTORIES = {
    "geco": ("geco/lambda", "geco/constraint_ma"),
    "mi": ("geco/lambda", "mi/z[0]"),
    "capacity": ("capacity/step", "capacity/z"),
    "temperature": ("temperature/value",),
}


@pytest.mark.parametrize("kind", sorted(TRAJECTORIES))
def test_exact_resume_gives_the_same_trajectory(kind, tmp_path):
    ref = _trainer(kind, tmp_path / "ref", 2 * N)
    ref.fit()
    first = _trainer(kind, tmp_path / "run", N)
    first.fit()
    resumed = _trainer(kind, tmp_path / "run", 2 * N)
    assert resumed.resume() and resumed.step_count == N
    assert resumed.state_dict()["hooks"] == first.state_dict()["hooks"]
    resumed.fit()
    expected, got = (read_metrics(p / "metrics.jsonl") for p in (tmp_path / "ref", tmp_path / "run"))
    assert [r["step"] for r in got] == list(range(1, 2 * N + 1))
    for key in TRAJECTORIES[kind]:
        values = [r[key] for r in expected]
        assert [r[key] for r in got] == values, key
        assert len(set(values)) > N, f"{key} hardly moved: the test would not see a wrong resume"
    assert resumed.state_dict()["hooks"] == ref.state_dict()["hooks"]
    a, b = _weights(ref), _weights(resumed)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_hook_state_survives_a_checkpoint_file(tmp_path):
    t = _trainer("mi", tmp_path, 3)
    t.fit()
    state = load_checkpoint(tmp_path / "checkpoint.pt")  # weights_only
    geco = t.elbo.elbo
    assert state["hooks"]["geco"] == geco.state_dict() and state["hooks"]["geco"]["num_steps"] == 3
    assert set(state["hook_modules"]) == {"mi.0"}
    fresh = _trainer("mi", None, 3)
    assert fresh.elbo.elbo.num_steps == 0
    fresh.load_state_dict(state)
    assert fresh.state_dict()["hooks"] == t.state_dict()["hooks"]
    a, b = _weights(t), _weights(fresh)
    assert all(torch.equal(a[k], b[k]) for k in a)
    del state["hooks"]
    with pytest.raises(ValueError, match=r"no state for the training hooks \['mi', 'geco'\]"):
        _trainer("mi", None, 3).load_state_dict(state)


def test_mi_q_network_is_trained_and_checkpointed(tmp_path):
    t = _trainer("mi", tmp_path, 3)
    (q,) = t.hook_modules.values()
    before = {n: p.detach().clone() for n, p in q.named_parameters()}
    t.fit()
    assert all(not torch.equal(p.detach(), before[n]) for n, p in q.named_parameters())
    assert any(name.startswith("mi_q") for name in t.optimizer.state_dict())


# ---------------------------------------------------------------------------- hook behaviour
def test_skipped_steps_advance_nothing():
    ctx = DistributedContext()
    model, guide, geco, _, data = _setup("geco")
    hook = GECOHook(geco)
    geco.loss_and_grads(model, guide, data.x)
    assert geco.constraint_stats()[0, 1] > 0 and geco.num_steps == 0
    hook.after_step(0, False, ctx)
    assert geco.constraint_stats().sum() == 0 and geco.num_steps == 0 and geco.multiplier == 1.0
    capacity = CapacityHook(CapacityELBO({"z": LinearSchedule(0.0, 1.0, 10)}))
    temperature = TemperatureHook(_setup("temperature")[0], ExponentialSchedule(1.0, 0.3, 0.5))
    for h in (capacity, temperature):
        h.after_step(0, False, ctx)
        h.after_step(1, True, ctx)
    assert capacity.state_dict() == {"num_steps": 1} and temperature.state_dict()["num_steps"] == 1
    temperature.before_step(2)
    assert temperature.module.temperature.item() == pytest.approx(math.exp(-0.5))


def test_validation_uses_the_unconstrained_bound_in_eval_mode():
    base = Trace_ELBO()
    assert validation_elbo(MIRegularizedELBO(GECO(base), ["c"])) is base
    assert isinstance(validation_elbo(CapacityELBO({"z": LinearSchedule()})), Trace_ELBO)
    assert [type(h) for h in hooks_for(MIRegularizedELBO(GECO(base), ["c"]))] == [MIHook, GECOHook]
    t = _trainer("temperature", None, 2)
    modes = []
    t.model.register_forward_pre_hook(lambda m, args: modes.append(m.training))
    assert math.isfinite(t.evaluate()) and modes and not any(modes)
    assert t.model.training and t.guide.training


def test_no_hooks_no_hook_state():
    model, guide, _, _, data = _setup("geco")
    t = Trainer(model, guide, Trace_ELBO(), make_optimizer(1e-2), data, Schedule(batch_size=8, steps=1),
                progress=False)
    assert t.hooks == () and t.hook_modules == {} and "hooks" not in t.state_dict()
    with pytest.raises(TypeError, match="TrainingHook"):
        Trainer(model, guide, Trace_ELBO(), make_optimizer(1e-2), data, Schedule(batch_size=8, steps=1),
                progress=False, hooks=[object()])
    with pytest.raises(TypeError, match="set_temperature"):
        TemperatureHook(model, ExponentialSchedule())


# ---------------------------------------------------------------------------- data parallel
@pytest.mark.distributed
@pytest.mark.skipif(not (dist.is_available() and dist.is_gloo_available()), reason="needs gloo")
def test_two_processes_update_the_multiplier_as_one(tmp_path, monkeypatch):
    """GECO under ``torchrun`` (two processes, one shard each): the constraint values are summed across
    processes before each update, so the multiplier follows one process computing both shards."""
    argv = ["train", "--preset", "vae-geco", "--data", "embedded", "--steps", "6", "--z-dim", "2",
            "--hidden", "8", "--batch-size", "16", "--eval-every", "6", "--log-every", "1",
            "--valid-max-examples", "16", "--shards", "2", "--geco-warmup", "0", "--geco-update-every", "1",
            "--kappa", "0.8", "--geco-alpha", "0.5", "--no-progress", "--backend", "gloo"]
    one, two = tmp_path / "one", tmp_path / "two"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    torch.set_num_threads(1)
    monkeypatch.setattr("pyro_spvae.plots.save_run_figures", lambda *args, **kwargs: None)
    assert main([*argv, "--out", str(one)]) == 0
    proc = subprocess.run(launch_command([*argv, "--out", str(two)], 2), cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    a, b = (read_metrics(out / "metrics.jsonl") for out in (one, two))
    for key in ("geco/lambda", "geco/constraint", "geco/constraint_ma"):
        assert [r[key] for r in b] == pytest.approx([r[key] for r in a], rel=1e-6), key
    assert len({r["geco/lambda"] for r in a}) == 6
    sa, sb = (load_checkpoint(out / "checkpoint.pt")["hooks"]["geco"] for out in (one, two))
    assert sb["num_steps"] == sa["num_steps"] == 6 and sb["lambda"] == pytest.approx(sa["lambda"], rel=1e-6)
