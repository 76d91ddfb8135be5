"""The evaluation API (:mod:`pyro_spvae.evaluation`): exact answers for exact posteriors under both
estimators, the estimator chosen through the ``SPNLeafModel`` protocol, the ``eval.json`` schema,
seeding, and restoring a run directory."""

from __future__ import annotations

import dataclasses
import json
import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.nn import PyroModule

from pyro_spvae.evaluation import ESTIMATORS, EvaluationReport, estimator_for, evaluate, evaluate_run
from pyro_spvae.training import (
    RunError,
    TrainConfig,
    Trainer,
    build_model,
    checkpoint_path,
    load_data,
    restore_run,
)

#: The keys of ``eval.json`` (written by ``pyro-spvae evaluate``), in order.
EVAL_JSON_KEYS = [
    "run", "checkpoint", "step", "split", "num_examples", "num_samples", "log_likelihood_nats",
    "log_likelihood_stderr", "nll_nats", "bits_per_dim", "khat", "estimator", "ess", "processes", "torch",
    "python",
]  # fmt: skip
D, SIGMA = 3, 0.5


class OneFactor(PyroModule):
    """``z ~ N(0, 1)``, ``x | z ~ N(z 1_D, sigma^2 I)``: ``x ~ N(0, sigma^2 I + 1 1^T)`` exactly."""

    def forward(self, x: torch.Tensor) -> None:
        with pyro.plate("data", x.shape[0], dim=-1):
            z = pyro.sample("z", dist.Normal(x.new_zeros(()), 1.0))
            pyro.sample("x", dist.Normal(z.unsqueeze(-1).expand(*z.shape, D), SIGMA).to_event(1), obs=x)


class ExactPosterior(PyroModule):
    """``q(z | x) = p(z | x)``: every importance weight equals ``p(x)``."""

    def forward(self, x: torch.Tensor) -> None:
        precision = 1.0 + D / SIGMA**2
        with pyro.plate("data", x.shape[0], dim=-1):
            pyro.sample("z", dist.Normal(x.sum(-1) / SIGMA**2 / precision, precision**-0.5))


def exact_log_px(x: torch.Tensor) -> torch.Tensor:
    cov = SIGMA**2 * torch.eye(D, dtype=torch.float64) + torch.ones(D, D, dtype=torch.float64)
    mvn = torch.distributions.MultivariateNormal(torch.zeros(D, dtype=torch.float64), cov)
    return mvn.log_prob(x.double())


class ProductOfLeaves(torch.nn.Module):
    """An SPN of ``D`` one-dimensional VAE leaves under one product node: leaf ``l`` models
    ``x_l`` with ``z_l ~ N(0, 1)``, ``x_l | z_l ~ N(z_l, sigma^2)``, so ``p(x_l) = N(0, 1 + sigma^2)``."""

    def leaf_log_joint(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        z = z.squeeze(-1)  # (..., B, L)
        return dist.Normal(0.0, 1.0).log_prob(z) + dist.Normal(z, SIGMA).log_prob(x)

    def spn_log_value(self, leaf_log_values: torch.Tensor) -> torch.Tensor:
        return leaf_log_values.sum(-1)


class ExactLeafPosterior(torch.nn.Module):
    def leaf_posterior(self, x: torch.Tensor) -> dist.TorchDistribution:
        shrink = 1.0 / (1.0 + SIGMA**2)
        return dist.Normal((x * shrink).unsqueeze(-1), (SIGMA**2 * shrink) ** 0.5).to_event(1)


class OnlySPNValue(OneFactor):
    """Has ``spn_log_value`` but not ``leaf_log_joint``: not an SPN of VAE leaves (the protocol
    needs both), although a ``hasattr(model, "spn_log_value")`` test would say it is."""

    def spn_log_value(self, leaf_log_values: torch.Tensor) -> torch.Tensor:
        return leaf_log_values.sum(-1)


def test_generic_estimator_is_exact_with_the_exact_posterior():
    pyro.clear_param_store()
    x = torch.randn(9, D, generator=torch.Generator().manual_seed(0)) * 1.5
    report = evaluate(OneFactor(), ExactPosterior(), x, num_samples=20, batch_size=4, chunk_size=7,
                      max_examples=7)
    assert report.estimator == "iwae" and report.num_examples == 7 and report.processes == 1
    torch.testing.assert_close(report.log_px, exact_log_px(x[:7]), rtol=0, atol=1e-4)
    assert report.nll_nats == pytest.approx(-float(exact_log_px(x[:7]).mean()), abs=1e-4)
    assert report.bits_per_dim == pytest.approx(report.nll_nats / (D * math.log(2)))
    assert report.log_likelihood_stderr == pytest.approx(float(report.log_px.std()) / math.sqrt(7))
    # constant weights: k-hat is 0 and every sample counts
    khat = report.khat_summary()
    assert khat["max"] == 0 and khat["num_nonfinite"] == 0 and khat["fraction_above_threshold"] == 0
    assert report.ess_summary()["min"] == pytest.approx(20)
    content = report.to_dict()
    assert list(content) == EVAL_JSON_KEYS
    assert content["run"] is None and content["khat"] == khat
    assert json.loads(report.to_json()) == json.loads(json.dumps(content))
    assert report.summary() == {k: content[k] for k in ("log_likelihood_nats", "nll_nats", "bits_per_dim")}


def test_spn_estimator_is_chosen_by_protocol_and_exact_with_the_exact_posterior():
    x = torch.randn(5, D, generator=torch.Generator().manual_seed(1))
    model = ProductOfLeaves()
    assert estimator_for(model) == "spn-leaf-iw" and estimator_for(OneFactor()) == "iwae"
    assert estimator_for(OnlySPNValue()) == "iwae"
    assert set(ESTIMATORS) == {"iwae", "spn-leaf-iw"}
    report = evaluate(model, ExactLeafPosterior(), x, num_samples=6, batch_size=2, chunk_size=4)
    exact = torch.distributions.Normal(0.0, (1 + SIGMA**2) ** 0.5).log_prob(x.double()).sum(-1)
    assert report.estimator == "spn-leaf-iw"
    torch.testing.assert_close(report.log_px, exact, rtol=0, atol=1e-4)
    # no single weight vector per example: PSIS k-hat and ESS are undefined
    assert report.khat is None and report.ess is None
    assert report.to_dict()["khat"] is None and report.to_dict()["ess"] is None


class NoisyImages:
    """A dataset whose ``batch`` adds generator-driven noise (like dynamic binarisation)."""

    def __init__(self) -> None:
        self.x = torch.randn(12, D, generator=torch.Generator().manual_seed(2))

    def __len__(self) -> int:
        return self.x.shape[0]

    def batch(self, idx: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.x[idx] + 0.1 * torch.randn(idx.shape[0], D, generator=generator)


def test_dataset_noise_and_sampling_follow_the_seed():
    pyro.clear_param_store()
    model, guide, data = OneFactor(), ExactPosterior(), NoisyImages()

    def run(seed):
        return evaluate(model, guide, data, num_samples=5, seed=seed, max_examples=8).log_px

    a, b, c = run(3), run(3), run(4)
    assert a.shape == (8,) and torch.equal(a, b) and not torch.equal(a, c)
    x = data.batch(torch.arange(8), torch.Generator().manual_seed(3))
    torch.testing.assert_close(a, exact_log_px(x), rtol=0, atol=1e-4)


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"num_samples": 0}, ValueError, "num_samples must be an int"),
        ({"batch_size": 1.5}, TypeError, "batch_size must be an int"),
        ({"max_examples": 0}, ValueError, "max_examples must be an int"),
        ({"seed": -1}, ValueError, "seed must be an int"),
        ({"data": [[0.0] * D]}, TypeError, "data must be a tensor or a dataset"),
    ],
)
def test_evaluate_rejects_bad_arguments(kwargs, error, message):
    kwargs = {"data": torch.zeros(2, D), **kwargs}
    with pytest.raises(error, match=message):
        evaluate(OneFactor(), ExactPosterior(), **kwargs)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A run trained through the Python API: ``Trainer.from_config`` with ``config.json`` beside it."""
    run = tmp_path_factory.mktemp("eval") / "run"
    config = TrainConfig(model_kwargs={"z_dim": 2, "hidden": [8]}, batch_size=16, steps=2, epochs=None,
                         eval_every=2, valid_max_examples=16)
    pyro.clear_param_store()
    train, valid = load_data(config, "train"), load_data(config, "valid")
    model, guide = build_model(config, train)
    trainer = Trainer.from_config(config, model, guide, train, valid, out_dir=run, progress=False)
    config.save(run / "config.json")
    trainer.fit()
    return run


def test_evaluate_run_restores_the_run(run_dir):
    report = evaluate_run(run_dir, num_samples=10, max_examples=5, seed=7)
    assert (report.run, report.checkpoint, report.step, report.split) == (str(run_dir), "best.pt", 2, "test")
    assert report.estimator == "iwae" and report.num_examples == 5 and report.num_samples == 10
    assert report.event_dim == 784 and math.isfinite(report.log_likelihood_nats)
    content = report.to_dict()
    assert list(content) == EVAL_JSON_KEYS and content["checkpoint"] == "best.pt" and content["step"] == 2
    # the same numbers as evaluate() on the restored pair
    restored = restore_run(run_dir, "best", "test")
    again = evaluate(restored.model, restored.guide, restored.data, num_samples=10, max_examples=5, seed=7)
    assert torch.equal(again.log_px, report.log_px)
    last = evaluate_run(run_dir, which="last", split="valid", num_samples=3, max_examples=2)
    assert (last.checkpoint, last.split) == ("checkpoint.pt", "valid")


def test_run_errors_name_the_problem(run_dir, tmp_path):
    with pytest.raises(RunError, match="run directory .* does not exist"):
        evaluate_run(tmp_path / "missing")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(RunError, match="config.json not found"):
        restore_run(empty)
    with pytest.raises(RunError, match="no checkpoint in .*; train first"):
        checkpoint_path(empty)
    with pytest.raises(ValueError, match="unknown checkpoint 'first'"):
        checkpoint_path(run_dir, "first")


def test_report_is_a_plain_record():
    report = EvaluationReport(log_px=torch.tensor([-1.0, -3.0], dtype=torch.float64), khat=None, ess=None,
                              estimator="spn-leaf-iw", num_samples=4, event_dim=2)
    assert report.log_likelihood_nats == -2.0 and report.nll_nats == 2.0
    assert report.bits_per_dim == pytest.approx(2.0 / (2 * math.log(2)))
    single = EvaluationReport(log_px=torch.tensor([-1.0]), khat=None, ess=None, estimator="iwae",
                              num_samples=1, event_dim=1)
    assert math.isnan(single.log_likelihood_stderr)


class PoorGuide(PyroModule):
    """``q(z | x) = N(0, 0.05^2)``: far narrower than the prior and blind to ``x``, so the
    importance weights of most examples are heavy-tailed."""

    def forward(self, x: torch.Tensor) -> None:
        with pyro.plate("data", x.shape[0], dim=-1):
            pyro.sample("z", dist.Normal(x.new_zeros(x.shape[:1]), 0.05))


def test_describe_states_the_psis_diagnosis():
    x = torch.randn(40, D, generator=torch.Generator().manual_seed(3)) * 2.0
    good = evaluate(OneFactor(), ExactPosterior(), x, num_samples=200, chunk_size=100)
    text = good.describe()
    assert "PSIS k-hat > 0.7: 0.0% of the examples (0 of 40)" in text
    assert "reliable" in text and "unreliable" not in text
    assert f"{good.log_likelihood_nats:.2f} +- {good.log_likelihood_stderr:.2f} nats" in text
    poor = evaluate(OneFactor(), PoorGuide(), x, num_samples=200, chunk_size=100)
    above = int((poor.khat > 0.7).sum())
    assert above > 0
    text = poor.describe()
    assert f"PSIS k-hat > 0.7: {above / 40:.1%} of the examples ({above} of 40)" in text
    assert "unreliable" in text and "more samples" in text


def test_describe_counts_khat_above_the_threshold_exactly():
    khat = torch.tensor([0.1, 0.71, 0.7, float("nan"), 2.0, 0.5, 0.9, 0.2], dtype=torch.float64)
    report = EvaluationReport(log_px=torch.full((8,), -90.0, dtype=torch.float64), khat=khat,
                              ess=torch.ones(8, dtype=torch.float64), estimator="iwae", num_samples=5000,
                              event_dim=784, split="test")
    text = report.describe()
    # 0.71, 2.0 and 0.9 exceed 0.7; 0.7 itself and NaN do not
    assert "PSIS k-hat > 0.7: 37.5% of the examples (3 of 8)" in text
    assert "on 8 test examples, 5000 importance samples (estimator 'iwae')" in text
    assert report.khat_summary()["fraction_above_threshold"] == pytest.approx(3 / 8)
    spn = dataclasses.replace(report, khat=None, ess=None, estimator="spn-leaf-iw")
    assert "5000 importance samples per leaf" in spn.describe()
    assert "not defined" in spn.describe() and "k-hat >" not in spn.describe()


def test_default_pass_shape_comes_from_the_memory_budget(monkeypatch):
    """``evaluate`` leaves the pass shape to the evaluators by default (``chunk_size=None``: a pass
    that stays in the cache instead of ``500 x batch_size`` rows), and its memory estimate counts
    that pass."""
    import pyro_spvae.evaluation as evaluation
    from pyro_spvae.infer.log_likelihood import pass_budget, pass_shape
    from pyro_spvae.training.memory import estimate_eval_bytes

    seen = {}
    original = evaluation.log_marginal_likelihood

    def spy(*args, **kwargs):
        seen["chunk_size"] = kwargs["chunk_size"]
        return original(*args, **kwargs)

    monkeypatch.setattr(evaluation, "log_marginal_likelihood", spy)
    pyro.clear_param_store()
    x = torch.randn(6, D, generator=torch.Generator().manual_seed(2))
    report = evaluate(OneFactor(), ExactPosterior(), x, num_samples=30)
    assert seen == {"chunk_size": None}
    torch.testing.assert_close(report.log_px, exact_log_px(x), rtol=0, atol=1e-4)
    # 784 float32 values per example, 5000 samples, 100 examples: the budget's pass, not 500 x 100
    chunk, per_pass = pass_shape(100, 5000, 784 * 4, max_examples=100, budget=pass_budget("cpu"))
    auto, what = estimate_eval_bytes((784,), batch_size=100, chunk_size=None, num_samples=5000)
    fixed, _ = estimate_eval_bytes((784,), batch_size=100, chunk_size=500, num_samples=5000)
    assert auto == 3 * chunk * per_pass * 784 * 4 + per_pass * 5000 * 4
    assert f"chunk_size {chunk} x batch_size {per_pass}" in what and auto < fixed / 10
