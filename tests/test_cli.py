"""The ``pyro-spvae`` command line on the embedded dataset: train / evaluate / sample, exact
resume, and clean errors (exit status 2, no traceback) for bad input."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pyro_spvae.cli import main
from pyro_spvae.training import load_checkpoint, read_metrics
from pyro_spvae.training.presets import PRESETS, preset_config

REPO_ROOT = Path(__file__).resolve().parents[1]
TINY = [
    "--z-dim", "4", "--hidden", "32", "--batch-size", "32", "--eval-every", "5",
    "--valid-max-examples", "64", "--log-every", "5", "--no-progress",
]  # fmt: skip


def run_cli(argv, capsys) -> tuple[int, str, str]:
    try:
        code = main([str(a) for a in argv])
    except SystemExit as e:  # argparse errors
        code = e.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cli") / "run"
    argv = ["train", "--out", str(out), "--steps", "10", "--lr-decay", "0.5", "--lr-patience", "1", *TINY]
    assert main(argv) == 0
    return out


def test_train_writes_all_outputs(trained_run):
    for name in (
        "config.json",
        "checkpoint.pt",
        "best.pt",
        "metrics.jsonl",
        "curve.png",
        "samples.png",
        "reconstructions.png",
    ):
        assert (trained_run / name).is_file(), name
        assert (trained_run / name).stat().st_size > 0
    config = json.loads((trained_run / "config.json").read_text())
    assert config["model"] == "vae" and config["steps"] == 10 and config["epochs"] is None
    assert config["lr_decay"] == 0.5 and config["lr_patience"] == 1
    assert config["model_kwargs"] == {"z_dim": 4, "hidden": [32], "arch": "dense", "likelihood": "bernoulli"}
    state = load_checkpoint(trained_run / "checkpoint.pt")
    assert state["step"] == 10 and state["config"] == config
    records = read_metrics(trained_run / "metrics.jsonl")
    assert [r["step"] for r in records] == [5, 10]
    assert all(r["valid_loss"] is not None and r["examples_per_s"] > 0 for r in records)
    assert (trained_run / "samples.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_evaluate_writes_eval_json(trained_run, capsys):
    code, out, err = run_cli(
        ["evaluate", "--run", trained_run, "--num-samples", "100", "--max-examples", "12", "--no-progress"],
        capsys,
    )
    assert code == 0, err
    report = json.loads((trained_run / "eval.json").read_text())
    assert report["num_examples"] == 12 and report["num_samples"] == 100 and report["split"] == "test"
    assert report["nll_nats"] == pytest.approx(-report["log_likelihood_nats"])
    assert report["bits_per_dim"] == pytest.approx(report["nll_nats"] / (784 * 0.6931471805599453))
    # An untrained-ish tiny VAE on binarised MNIST: between a perfect and a uniform model.
    assert 0 < report["nll_nats"] < 784 * 0.6931471805599453
    khat = report["khat"]
    assert khat["num_nonfinite"] == 0 and 0 <= khat["fraction_above_threshold"] <= 1
    assert khat["mean"] <= khat["max"] and (khat["max"] > khat["threshold"]) == (
        khat["fraction_above_threshold"] > 0
    )
    assert 1 <= report["ess"]["min"] <= report["ess"]["mean"] <= 100
    assert json.loads(out)["nll_nats"] == pytest.approx(report["nll_nats"])


def test_sample_writes_png(trained_run, tmp_path, capsys):
    target = tmp_path / "grid.png"
    code, out, err = run_cli(["sample", "--run", trained_run, "--num", "9", "--out", target], capsys)
    assert code == 0, err
    assert target.read_bytes()[:4] == b"\x89PNG"
    assert out.strip() == str(target)


def test_interrupted_and_resumed_run_matches_uninterrupted(tmp_path, capsys):
    full, part = tmp_path / "full", tmp_path / "part"
    assert run_cli(["train", "--out", full, "--steps", "14", *TINY], capsys)[0] == 0
    # "Interrupted" after 7 steps (mid-epoch: 3000 // 32 = 93 steps per epoch) ...
    assert run_cli(["train", "--out", part, "--steps", "7", *TINY], capsys)[0] == 0
    # ... then resumed to the same total.
    code, out, err = run_cli(["train", "--out", part, "--resume", "--steps", "14", *TINY], capsys)
    assert code == 0, err
    assert "resumed from step 7" in out
    a, b = load_checkpoint(full / "checkpoint.pt"), load_checkpoint(part / "checkpoint.pt")
    assert b["step"] == 14
    for part_name in ("model", "guide"):
        for k, v in a[part_name].items():
            assert torch.equal(v, b[part_name][k]), (part_name, k)


def test_presets_are_valid_configs():
    assert "vae-binary" in PRESETS
    for name in PRESETS:
        preset_config(name)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["train", "--model", "nosuchmodel"], "unknown model 'nosuchmodel'; choose one of"),
        (["train", "--preset", "nosuch"], "unknown preset 'nosuch'"),
        (["train", "--batch-size", "-3"], "argument --batch-size: expected a positive integer, got '-3'"),
        (["train", "--lr", "abc"], "argument --lr: expected a positive finite number, got 'abc'"),
        (["train", "--lr", "nan"], "expected a positive finite number"),
        (["train", "--hidden", "10,x"], "expected comma-separated positive integers"),
        (["train", "--elbo", "nope"], "argument --elbo: invalid choice: 'nope'"),
        (["train", "--steps", "5", "--epochs", "2"], "not allowed with argument"),
        (
            ["train", "--batch-size", "5000", "--steps", "1"],
            "batch_size 5000 exceeds the 3000 training examples",
        ),
        (["train", "--z-dim", "0"], "expected a positive integer, got '0'"),
        (["train", "--lr-decay", "1.5", "--steps", "1"], "lr_decay must be a finite number in (0, 1)"),
        (
            [
                "train",
                "--transform",
                "discrete",
                "--likelihood",
                "bernoulli",
                "--steps",
                "1",
                "--hidden",
                "8",
            ],
            "training failed: x has",
        ),
        (["train", "--likelihood", "poisson"], "unknown likelihood 'poisson'"),
        (["train", "--elbo", "renyi", "--alpha", "1"], "Renyi alpha must differ from 1"),
        (["evaluate", "--run", "/nonexistent/run"], "run directory /nonexistent/run does not exist"),
        (["sample", "--run", "/nonexistent/run", "--num", "0"], "expected a positive integer"),
        (["frobnicate"], "invalid choice: 'frobnicate'"),
    ],
)
def test_bad_input_exits_2_with_message(argv, message, tmp_path, capsys):
    argv = [*argv, "--out", str(tmp_path / "run")] if argv[0] == "train" else argv
    code, _, err = run_cli(argv, capsys)
    assert code == 2
    assert message in err
    assert "Traceback" not in err


def test_missing_mnist_dir_is_a_clear_error(tmp_path, capsys):
    missing = tmp_path / "no-such-dir"
    code, _, err = run_cli(
        ["train", "--data", "mnist", "--data-dir", missing, "--out", tmp_path / "r"], capsys
    )
    assert code == 2
    assert f"data directory {missing} does not exist" in err


def test_existing_run_needs_resume(trained_run, capsys):
    code, _, err = run_cli(["train", "--out", trained_run, "--steps", "3"], capsys)
    assert code == 2 and "pass --resume" in err


def test_module_entry_point_reports_errors_without_traceback(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "pyro_spvae", "train", "--model", "spam", "--out", str(tmp_path / "r")],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "pyro-spvae train: error: unknown model 'spam'" in proc.stderr
    assert "Traceback" not in proc.stderr


class _RunsCode:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


def test_crafted_checkpoint_is_refused_by_every_command(trained_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    marker = tmp_path / "pwned"
    for name in ("best.pt", "checkpoint.pt"):
        torch.save({"format": 1, "model": _RunsCode(marker)}, run / name)
    for argv in (
        ["evaluate", "--run", run, "--num-samples", "10", "--max-examples", "2"],
        ["sample", "--run", run],
        ["train", "--out", run, "--resume", "--steps", "20", *TINY],
    ):
        code, _, err = run_cli(argv, capsys)
        assert code == 2, err
        assert "refusing to load checkpoint" in err and "Traceback" not in err
    assert not marker.exists()


def test_spvae_preset_trains_and_evaluates_with_spn_bound(tmp_path, capsys):
    """An SPVAE preset trains with the SPN-aware bound and ``evaluate`` reports the paper's
    leaf-averaged importance-weighted bound (no PSIS k-hat: there is no single weight vector)."""
    out = tmp_path / "spvae"
    code, _, err = run_cli(
        ["train", "--preset", "spvae-discrete", "--data", "embedded", "--steps", "2", "--batch-size", "16",
         "--eval-every", "2", "--valid-max-examples", "32", "--out", out, "--no-progress"],
        capsys,
    )  # fmt: skip
    assert code == 0, err
    config = json.loads((out / "config.json").read_text())
    assert config["model"] == "spvae" and config["elbo"] == "spn-leaf-iw"
    code, _, err = run_cli(
        ["evaluate", "--run", out, "--num-samples", "8", "--chunk-size", "4", "--max-examples", "6",
         "--no-progress"],
        capsys,
    )  # fmt: skip
    assert code == 0, err
    report = json.loads((out / "eval.json").read_text())
    assert report["estimator"] == "spn-leaf-iw" and report["khat"] is None
    # Binomial(255) on the 8-bit grid is a probability mass function: log p(x) <= 0.
    assert -1e7 < report["log_likelihood_nats"] < 0  # untrained: ~-1.2e5 nats after 2 steps
