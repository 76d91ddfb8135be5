"""Every model-family preset trains through the command line (``pyro-spvae train --preset NAME``) for
a few steps on the embedded MNIST subset, with tiny networks, and writes the metrics of its training
hooks (``geco/lambda``, ``capacity/step``, ``temperature/value``, ``mi/c``); bad values of the
family options end with one ``error:`` line and exit status 2.

Figures are replaced by a cheap write of the same files (rendering costs about a second per run; it
is tested in ``test_cli.py``).
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from cli_contract import cli, stub_figures

from pyro_spvae.training import PRESETS, load_checkpoint, read_metrics, restore_run

TINY = ["--data", "embedded", "--steps", "4", "--z-dim", "2", "--hidden", "8", "--batch-size", "8",
        "--eval-every", "4", "--log-every", "2", "--valid-max-examples", "8", "--no-progress",
        "--threads", "1"]

#: preset -> (hook metrics its lines must hold, extra options keeping it tiny)
FAMILY_PRESETS: dict[str, tuple[tuple[str, ...], list[str]]] = {
    "dlgmm-a": ((), ["--num-components", "3"]),
    "dlgmm-b": ((), ["--num-components", "3"]),
    "dlgmm-c": ((), ["--num-components", "3"]),
    "dlgmm-dp-d": ((), ["--num-components", "3"]),
    "dlgmm-dp-a": ((), ["--num-components", "3"]),
    "vhp-vae": (("geco/lambda", "geco/constraint", "geco/constraint_ma"), ["--geco-warmup", "1"]),
    "vae-geco": (("geco/lambda", "geco/constraint"), ["--geco-warmup", "1"]),
    "iwae": ((), ["--num-particles", "2"]),
    "mivae": ((), ["--n-categories", "3"]),
    "mivae-mi": (("mi/c",), ["--n-categories", "3"]),
    "mivae-relaxed-mi": (("temperature/value", "mi/c"), ["--n-categories", "3", "--temperature-rate", "0.1"]),
    "mivae-relaxed": (("capacity/step", "capacity/z", "capacity/c"), ["--n-categories", "3"]),
}


@pytest.fixture(autouse=True)
def cheap_figures(monkeypatch):
    stub_figures(monkeypatch)


def test_every_family_preset_is_tested():
    families = {"dlgmm", "dlgmm-dp", "vhp-vae", "mivae", "mivae-relaxed"}
    assert {n for n, p in PRESETS.items() if p["model"] in families} <= set(FAMILY_PRESETS)


@pytest.mark.parametrize("preset", sorted(FAMILY_PRESETS))
def test_family_preset_trains(preset, tmp_path):
    torch.set_num_threads(1)
    keys, extra = FAMILY_PRESETS[preset]
    code, text = cli(["train", "--preset", preset, "--out", tmp_path, *TINY, *extra])
    assert code == 0, text
    records = read_metrics(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in records] == [2, 4]
    assert all(math.isfinite(r["train_loss"]) for r in records) and records[-1]["valid_loss"] is not None
    for key in keys:
        assert all(isinstance(r.get(key), float) for r in records), (key, records[-1])
    state = load_checkpoint(tmp_path / "checkpoint.pt")
    config = json.loads((tmp_path / "config.json").read_text())
    assert state["step"] == 4 and config["elbo"] == PRESETS[preset]["elbo"]
    if keys:
        assert {k.split("/")[0] for k in keys} <= set(state["hooks"])


def test_mi_regulariser_with_its_own_q_network(tmp_path):
    torch.set_num_threads(1)
    code, text = cli(["train", "--preset", "mivae-mi", "--out", tmp_path, *TINY, "--n-categories", "3",
                      "--mi-q", "net", "--mi-sites", "c,z[0,1]"])
    assert code == 0, text
    state = load_checkpoint(tmp_path / "checkpoint.pt")
    assert set(state["hook_modules"]) == {"mi.0"}
    assert any(name.startswith("mi_q") for name in state["optimizer"])  # trained with the model
    assert {"mi/c", "mi/z[0,1]"} <= set(read_metrics(tmp_path / "metrics.jsonl")[-1])


@pytest.mark.parametrize("options, message", [
    (["--kappa", "-1"], "--kappa: expected a non-negative finite number"),
    (["--geco-alpha", "1"], "--geco-alpha: expected a number in [0, 1)"),
    (["--geco-rule", "beta"], "--geco-rule: invalid choice"),
    (["--mi-sites", ","], "--mi-sites: expected comma-separated sites"),
    (["--temperature-end", "0"], "--temperature-end: expected a positive finite number"),
    (["--elbo", "enumerate"], "--elbo: invalid choice"),
    (["--preset", "vae-geco", "--lambda-init", "1e9"], "GECO: lambda_init must be a finite number in"),
    (["--preset", "vae-geco", "--lambda-min", "2", "--lambda-max", "1"], "GECO: lambda_max"),
    (["--preset", "mivae-mi", "--mi-sites", "c["], "MI regulariser: cannot parse code 'c['"),
    (["--preset", "vae-geco", "--temperature-start", "1"], "VAE has no set_temperature"),
    (["--preset", "dlgmm-a", "--guide", "d"], "needs a model with stick sites"),
    (["--preset", "vae-geco", "--constraint-site", "y"], "never ran the constrained sites ['y']"),
    (["--preset", "mivae-mi", "--mi-sites", "q"], "the model has no latent sample site 'q'"),
])
def test_bad_family_options_are_one_error_line(options, message, tmp_path):
    code, text = cli(["train", "--out", tmp_path / "run", *TINY, *options])
    assert code == 2 and message in text, text


@pytest.mark.parametrize("preset", ["dlgmm-b", "mivae-relaxed"])
def test_enumerated_and_relaxed_runs_evaluate_and_sample(preset, tmp_path):
    """A run trained with an enumerated guide site (``TraceEnum_ELBO``) or a relaxed code is restored for
    inference with the site sampled and in eval mode (importance sampling draws every site)."""
    torch.set_num_threads(1)
    assert cli(["train", "--preset", preset, "--out", tmp_path, *TINY, *FAMILY_PRESETS[preset][1]])[0] == 0
    run = restore_run(tmp_path, "best", "test")
    assert not run.model.training and not run.guide.training
    if preset == "dlgmm-b":
        assert run.guide.enumerate is None
    code, text = cli(["evaluate", "--run", tmp_path, "--num-samples", "4", "--max-examples", "4",
                      "--no-progress", "--threads", "1"])
    assert code == 0, text
    report = json.loads((tmp_path / "eval.json").read_text())
    assert math.isfinite(report["nll_nats"]) and report["num_examples"] == 4
    assert cli(["sample", "--run", tmp_path, "--num", "4"])[0] == 0
