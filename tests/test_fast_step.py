"""The trainer's fast step against the plain Pyro path.

``Trainer.step`` runs one torch optimiser over the owned parameters (fused Adam where torch has it)
and slices its batch instead of copying it; raw ``pyro.infer.SVI`` with ``pyro.optim.Adam`` (one
torch optimiser per parameter) is the reference. On a fixed seed both must give the same loss, the
same gradients and, after a few steps, the same parameters, to float tolerance, for ``Trace_ELBO``
and ``TraceIWAE_ELBO``. The trainer's losses and gradients are per example (divided by the batch
size) where SVI's are summed; Adam's ``eps`` is scaled by the batch size on the SVI side, which makes
the two updates the same arithmetic.
"""

from __future__ import annotations

import copy

import pyro
import pytest
import torch
from pyro.infer import SVI
from pyro.optim import PyroOptim

from pyro_spvae.training import (
    ParamStoreSlot,
    Schedule,
    StepOptions,
    TensorData,
    Trainer,
    derive_seed,
    make_elbo,
    make_optimizer,
    seed_everything,
)
from pyro_spvae.training.optimizer import FusedOptimizer, PyroStepOptimizer, fusable, make_step_optimizer
from pyro_spvae.zoo import MODELS

N, LR, EPS, SEED = 16, 1e-2, 1e-8, 3
ESTIMATORS = [("trace", 1), ("iwae", 5)]


class RecordingOptim(PyroOptim):
    """``pyro.optim.Adam`` (per-parameter torch optimisers) that records the gradients it is given.
    Being a subclass, it is not fused by the trainer either (:func:`fusable`)."""

    def __call__(self, params, *args, **kwargs):
        store = pyro.get_param_store()
        self.grads = {store.param_name(p): p.grad.detach().clone() for p in params}
        super().__call__(params, *args, **kwargs)



def vae_pair():
    torch.manual_seed(0)
    return MODELS["vae"]((1, 6, 6), z_dim=3, hidden=(8,), likelihood="bernoulli")


def batch() -> torch.Tensor:
    return torch.bernoulli(torch.full((N, 1, 6, 6), 0.4), generator=torch.Generator().manual_seed(1))


def trainer_for(model, guide, estimator: str, k: int, optim: PyroOptim, shards: int | None = None):
    """A trainer whose optimiser records the gradients it applies (``grads``)."""
    t = Trainer(model, guide, make_elbo(estimator, k, max_plate_nesting=1), optim, TensorData(batch()),
                Schedule(batch_size=N, steps=100), options=StepOptions(seed=SEED, shards=shards),
                progress=False)
    grads: dict = {}
    apply = t.optimizer.step

    def recording_step(named):
        grads.clear()
        grads.update({name: p.grad.detach().clone() for name, p in named})
        apply(named)

    t.optimizer.step = recording_step
    return t, grads


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "pyro-optimiser"])
@pytest.mark.parametrize("estimator,k", ESTIMATORS)
def test_trainer_step_equals_svi_with_pyro_adam(estimator, k, fused):
    model, guide = vae_pair()
    x = batch()
    svi_slot, trainer_slot = ParamStoreSlot(), ParamStoreSlot()
    with svi_slot.active():
        ref_optim = RecordingOptim(torch.optim.Adam, {"lr": LR, "eps": EPS * N})
        elbo = make_elbo(estimator, k, max_plate_nesting=1)
        svi = SVI(copy.deepcopy(model), copy.deepcopy(guide), ref_optim, elbo)
    with trainer_slot.active():
        optim = make_optimizer(LR) if fused else RecordingOptim(torch.optim.Adam, {"lr": LR, "eps": EPS})
        t, grads = trainer_for(model, guide, estimator, k, optim)
    assert isinstance(t.optimizer, FusedOptimizer if fused else PyroStepOptimizer)
    for step in range(4):
        with trainer_slot.active():
            loss = t.step(x)
        with svi_slot.active():
            seed_everything(derive_seed(SEED, step, 0))  # the trainer's noise for (seed, step, shard 0)
            ref_loss = svi.step(x)
        assert loss * N == pytest.approx(ref_loss, rel=1e-5)
        num_params = len(list(model.parameters())) + len(list(guide.parameters()))
        assert set(grads) == set(ref_optim.grads) and len(grads) == num_params
        for name, g in grads.items():
            torch.testing.assert_close(g * N, ref_optim.grads[name], rtol=1e-5, atol=1e-5)
    for mine, ref in ((t.model, svi.model), (t.guide, svi.guide)):
        for (name, p), (_, q) in zip(mine.named_parameters(), ref.named_parameters()):
            torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6, msg=name)


def test_fused_optimizer_state_is_pyros_layout_and_interchangeable():
    """The fused optimiser's state is ``PyroOptim.get_state``'s layout: it continues under Pyro's
    per-parameter optimisers (and back) exactly as it would have continued itself."""
    model, guide = vae_pair()
    x = batch()
    slots = [ParamStoreSlot() for _ in range(3)]
    trainers = []
    optims = (make_optimizer(LR), make_optimizer(LR), RecordingOptim(torch.optim.Adam, {"lr": LR}))
    for slot, optim in zip(slots, optims):
        with slot.active():
            trainers.append(trainer_for(copy.deepcopy(model), copy.deepcopy(guide), "trace", 1, optim)[0])
    ref, fused, pyro_path = trainers
    for _ in range(3):
        for slot, t in zip(slots[:2], (ref, fused)):
            with slot.active():
                t.step(x)
    with slots[1].active():
        state = fused.state_dict()
    with slots[0].active():
        ref_state = ref.state_dict()["optimizer"]
    pyro_names = set(state["optimizer"])
    for name, st in state["optimizer"].items():
        assert set(st) == {"state", "param_groups"} and list(st["state"]) == [0], name
        assert [g["params"] for g in st["param_groups"]] == [[0]]
        assert set(st["state"][0]) == {"step", "exp_avg", "exp_avg_sq"}
        torch.testing.assert_close(st["state"][0]["exp_avg"], ref_state[name]["state"][0]["exp_avg"])
    with slots[2].active():
        pyro_path.load_state_dict(copy.deepcopy(state))  # fused state -> Pyro's optimisers
        for _ in range(2):
            pyro_path.step(x)
        assert set(pyro_path.optim.get_state()) == pyro_names
        back = pyro_path.state_dict()
    with slots[1].active():
        fused.load_state_dict(copy.deepcopy(back))  # and back into the fused optimiser
        fused.step(x)
    with slots[0].active():
        for _ in range(3):
            ref.step(x)
    for mine, other in ((fused.model, ref.model), (fused.guide, ref.guide)):
        for (name, p), (_, q) in zip(mine.named_parameters(), other.named_parameters()):
            torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7, msg=name)


@pytest.mark.parametrize("make", [
    lambda: make_optimizer(LR, clip_norm=0.01),
    lambda: make_optimizer(LR, group_lrs={"^decoder": 3 * LR}),
    lambda: pyro.optim.SGD({"lr": LR, "momentum": 0.9}),
    lambda: pyro.optim.Adam({"lr": LR}, {"clip_norm": 0.5}),
], ids=["clipped-adam", "group-lrs", "sgd-momentum", "adam-clip-args"])
def test_fused_equals_pyro_optimiser_for_other_settings(make):
    """ClippedAdam, per-parameter learning rates, SGD with momentum and Pyro's ``clip_args``: the fused
    optimiser updates exactly as Pyro's per-parameter optimisers do."""
    model, guide = vae_pair()
    x = batch()
    fused_slot, pyro_slot = ParamStoreSlot(), ParamStoreSlot()
    with fused_slot.active():
        fused = trainer_for(copy.deepcopy(model), copy.deepcopy(guide), "trace", 1, make())[0]
    with pyro_slot.active():
        plain = trainer_for(copy.deepcopy(model), copy.deepcopy(guide), "trace", 1, make())[0]
        plain.optimizer = PyroStepOptimizer(plain.optim)
    assert isinstance(fused.optimizer, FusedOptimizer)
    for _ in range(3):
        for slot, t in ((fused_slot, fused), (pyro_slot, plain)):
            with slot.active():
                t.step(x)
    for mine, other in ((fused.model, plain.model), (fused.guide, plain.guide)):
        for (name, p), (_, q) in zip(mine.named_parameters(), other.named_parameters()):
            torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7, msg=name)
    with fused_slot.active():
        assert fused.current_lr() == plain.current_lr()


def test_which_optimisers_are_fused():
    assert fusable(make_optimizer(1e-3)) and fusable(make_optimizer(1e-3, clip_norm=1.0))
    assert isinstance(make_step_optimizer(pyro.optim.SGD({"lr": 0.1})), FusedOptimizer)
    assert not fusable(RecordingOptim(torch.optim.Adam, {"lr": 0.1}))  # a subclass may change __call__
    assert not fusable(PyroOptim(torch.optim.LBFGS, {"lr": 0.1}))  # not elementwise
    scheduler = pyro.optim.ExponentialLR({"optimizer": torch.optim.Adam, "optim_args": {"lr": 0.1},
                                          "gamma": 0.9})
    assert isinstance(make_step_optimizer(scheduler), PyroStepOptimizer)


def test_step_slices_the_batch_instead_of_copying_it():
    """``Trainer.step`` hands the model views of ``x`` (no copy by fancy indexing)."""
    model, guide = vae_pair()
    seen = []
    forward = model.forward

    def spy(x):
        seen.append(x)
        return forward(x)

    model.forward = spy
    x = batch()
    trainer_for(model, guide, "trace", 1, make_optimizer(LR))[0].step(x)
    assert len(seen) == 1 and seen[0].data_ptr() == x.data_ptr() and seen[0].shape == x.shape
    seen.clear()
    pyro.clear_param_store()
    trainer_for(model, guide, "trace", 1, make_optimizer(LR), shards=2)[0].step(x)
    assert [s.shape[0] for s in seen] == [N // 2, N // 2]
    assert [s.data_ptr() for s in seen] == [x[: N // 2].data_ptr(), x[N // 2 :].data_ptr()]


def test_parameter_first_used_later_joins_the_fused_optimiser():
    """A parameter a step uses for the first time joins the optimiser then, in a new parameter group;
    steps that do not use it leave it alone, as Pyro's optimisers do."""
    from pyro.nn import PyroModule, PyroParam

    class Late(PyroModule):
        def __init__(self, model):
            super().__init__()
            self.vae = model
            self.shift = PyroParam(torch.zeros(()))
            self.use_shift = False

        def forward(self, x):
            self.vae(x)
            if self.use_shift:
                pyro.factor("pull_shift", -(self.shift - 1.0) ** 2)

    model, guide = vae_pair()
    x = batch()
    slots = [ParamStoreSlot(), ParamStoreSlot()]
    trainers = []
    for slot, fused in zip(slots, (True, False)):
        with slot.active():
            optim = make_optimizer(LR) if fused else RecordingOptim(torch.optim.Adam, {"lr": LR, "eps": EPS})
            late = Late(copy.deepcopy(model))
            trainers.append(trainer_for(late, copy.deepcopy(guide), "trace", 1, optim)[0])
    for step in range(5):
        for slot, t in zip(slots, trainers):
            t.model.use_shift = step in (2, 4)
            with slot.active():
                t.step(x)
    fused, plain = trainers
    assert isinstance(fused.optimizer, FusedOptimizer) and "shift" in fused.optimizer.names.values()
    assert float(fused.model.shift.detach()) > 0  # updated at steps 2 and 4 only
    for (name, p), (_, q) in zip(fused.model.named_parameters(), plain.model.named_parameters()):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7, msg=name)
