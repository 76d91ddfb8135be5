"""Data checks once per batch (:mod:`pyro_spvae.validation_memo`), the pure-Python broadcast test
and the trainer's fused gradient scaling and NaN/Inf check."""

from __future__ import annotations

import itertools
import random

import pyro
import pytest
import torch

import pyro_spvae.nn.bernoulli_likelihood as bernoulli
import pyro_spvae.validation as validation
from pyro_spvae.training.step import nonfinite_problem, scale_grads_
from pyro_spvae.validation import broadcastable, check_float_tensor
from pyro_spvae.validation_memo import checks_once, passed_once
from tests.test_fast_step import N, batch, trainer_for, vae_pair


class Counter:
    def __init__(self, result: bool = True) -> None:
        self.calls, self.result = 0, result

    def __call__(self, x: torch.Tensor) -> bool:
        self.calls += 1
        return self.result


def test_a_passed_check_runs_once_per_unchanged_tensor_inside_the_block():
    x, check = torch.zeros(3, 4), Counter()
    with checks_once():
        assert passed_once("c", x, check) and passed_once("c", x, check)
        assert check.calls == 1
        assert passed_once("other", x, check) and check.calls == 2  # one entry per check name
        assert passed_once("c", x.clone(), check) and check.calls == 3  # another tensor
        x[0, 0] = 1.0  # in place: version bumped
        assert passed_once("c", x, check) and check.calls == 4
        x[1:].add_(1.0)  # through a view: the shared version counter is bumped too
        assert passed_once("c", x, check) and check.calls == 5
        with checks_once():  # nested blocks share the outer memo
            assert passed_once("c", x, check) and check.calls == 5
    assert passed_once("c", x, check) and check.calls == 6  # outside: always run
    assert passed_once("c", x, check) and check.calls == 7


def test_failures_and_inference_tensors_are_never_remembered():
    x, failing = torch.zeros(2), Counter(result=False)
    with checks_once():
        assert not passed_once("c", x, failing) and not passed_once("c", x, failing)
        assert failing.calls == 2
        with torch.inference_mode():
            y = torch.zeros(2)
        check = Counter()
        assert passed_once("c", y, check) and passed_once("c", y, check) and check.calls == 2


def test_a_tensor_changed_after_its_check_is_checked_again_and_refused():
    x = torch.ones(4, 3)
    with checks_once():
        check_float_tensor("x", x, (3,), batch_dims=1)
        x[2, 1] = float("nan")
        with pytest.raises(ValueError, match="x contains NaN values"):
            check_float_tensor("x", x, (3,), batch_dims=1)
        y = torch.ones(4, 3)
        assert bernoulli.all_binary(y)
        y[0, 0] = 0.5
        assert not bernoulli.all_binary(y)


def test_a_training_step_checks_its_batch_once(monkeypatch):
    """With Pyro's validation on, the model's support check and ``log_prob``'s sample check share
    one ``all_binary`` pass, and the guide's and the model's finiteness checks one sum."""
    calls = {"binary": 0, "finite": 0}

    def counted(name, fn):
        def wrapper(x):
            calls[name] += 1
            return fn(x)
        return wrapper

    monkeypatch.setattr(bernoulli, "_all_binary", counted("binary", bernoulli._all_binary))
    monkeypatch.setattr(validation, "_all_finite", counted("finite", validation._all_finite))
    model, guide = vae_pair()
    trainer = trainer_for(model, guide, "trace", 1, pyro.optim.Adam({"lr": 1e-2}))[0]
    x = batch()
    with pyro.validation_enabled(True):
        trainer.step(x)
    assert calls == {"binary": 1, "finite": 1}
    with pyro.validation_enabled(True):  # outside a step the checks run at every call
        model.validate(x), model.validate(x)
    assert calls == {"binary": 3, "finite": 3}


def test_a_bad_batch_is_still_refused_by_a_training_step():
    model, guide = vae_pair()
    trainer = trainer_for(model, guide, "trace", 1, pyro.optim.Adam({"lr": 1e-2}))[0]
    x = batch()
    x[3, 0, 2, 2] = 0.5
    with pytest.raises(ValueError, match="outside the support"):
        trainer.step(x)


@pytest.mark.parametrize("seed", range(3))
def test_broadcastable_agrees_with_torch(seed):
    rng = random.Random(seed)
    sizes = (0, 1, 2, 3)
    for _ in range(400):
        count = rng.randint(1, 3)
        shapes = [tuple(rng.choice(sizes) for _ in range(rng.randint(0, 4))) for _ in range(count)]
        try:
            torch.broadcast_shapes(*shapes)
            expected = True
        except RuntimeError:
            expected = False
        assert broadcastable(*shapes) is expected, shapes


def test_scale_grads_divides_and_finds_non_finite_entries():
    torch.manual_seed(0)
    grads = [torch.randn(5, 3), torch.randn(7)]
    expected = [g / N for g in grads]
    assert scale_grads_(grads, N) is True
    for g, e in zip(grads, expected):
        torch.testing.assert_close(g, e, rtol=1e-7, atol=0)
    for bad in (float("nan"), float("inf"), float("-inf")):
        grads = [torch.randn(4), torch.randn(2, 2)]
        grads[1][1, 0] = bad
        assert scale_grads_(grads, 3) is False
    doubles = [torch.randn(4, dtype=torch.float64), torch.randn(3)]  # mixed dtypes: exact division
    expected = [g / 3 for g in doubles]
    assert scale_grads_(doubles, 3) is None
    assert all(torch.equal(g, e) for g, e in zip(doubles, expected))


@pytest.mark.parametrize("known", [None, False])
def test_nonfinite_problem_names_the_parameters(known):
    named = [(f"p{i}", torch.nn.Parameter(torch.zeros(3))) for i in range(3)]
    for (_, p), v in zip(named, itertools.cycle([0.0, float("nan"), 1.0])):
        p.grad = torch.full((3,), v)
    problem = nonfinite_problem(named, 1.5, known)
    assert problem == "non-finite gradients of p1"
    for _, p in named:
        p.grad = torch.zeros(3)
    assert nonfinite_problem(named, 1.5, None if known is None else True) is None
    assert nonfinite_problem(named, float("nan"), True) == "loss is nan"
