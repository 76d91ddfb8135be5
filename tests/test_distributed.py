"""Data-parallel training under ``torchrun`` (two CPU processes, gloo) against one process.

Both runs use the same global batch and ``--shards 2``: the global batch is split into two
micro-batches whose randomness (latent noise, dynamic binarisation) is keyed by
``(seed, step, shard)``, so it does not matter which process computes a shard. Two processes
(one shard each, gradients all-reduced and divided by the global batch) must therefore reach the
parameters of one process computing both shards, up to float summation order. This checks the
sampler (union of shards = the global batch), the all-reduce, the plate scaling and the rank-0-only
outputs with real latent noise, not a deterministic stand-in.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from pyro_spvae.cli import main
from pyro_spvae.training import launch_command, load_checkpoint, read_metrics, seed_everything
from pyro_spvae.zoo import MODELS

pytestmark = [
    pytest.mark.distributed,
    pytest.mark.skipif(
        not (dist.is_available() and dist.is_gloo_available()),
        reason="torch.distributed with gloo unavailable",
    ),
]

REPO_ROOT = Path(__file__).resolve().parents[1]
TINY = [
    "--z-dim", "4", "--hidden", "32", "--batch-size", "32", "--steps", "6", "--eval-every", "3",
    "--valid-max-examples", "64", "--log-every", "3", "--no-progress", "--shards", "2", "--backend", "gloo",
]  # fmt: skip


def _run(argv: list[str], nproc: int) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    cmd = launch_command(argv, nproc)
    proc = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> tuple[Path, Path, str]:
    """The same job trained by one process (in-process CLI) and by two processes under torchrun."""
    root = tmp_path_factory.mktemp("dist")
    one, two = root / "one", root / "two"
    assert main(["train", "--out", str(one), *TINY]) == 0
    proc = _run(["train", "--out", str(two), *TINY], nproc=2)
    return one, two, proc.stdout


def test_two_processes_match_one_process(runs):
    one, two, stdout = runs
    a, b = load_checkpoint(one / "checkpoint.pt"), load_checkpoint(two / "checkpoint.pt")
    assert a["step"] == b["step"] == 6
    for part in ("model", "guide"):
        assert a[part].keys() == b[part].keys()
        for k in a[part]:
            torch.testing.assert_close(b[part][k], a[part][k], rtol=0, atol=1e-5, msg=f"{part}.{k}")
    # The comparison is not vacuous: training moved the parameters by much more than the tolerance.
    seed_everything(0)  # the CLI's initialisation
    model, guide = MODELS["vae"]((1, 28, 28), z_dim=4, hidden=(32,), arch="dense", likelihood="bernoulli")
    init = {"model": model.state_dict(), "guide": guide.state_dict()}
    moved = max(float((a[p][k] - init[p][k]).abs().max()) for p in ("model", "guide") for k in a[p])
    assert moved > 1e-3
    # Validation loss is sharded across ranks and all-reduced: identical to one process.
    assert b["best_valid_loss"] == pytest.approx(a["best_valid_loss"], rel=1e-6)
    # Rank 0 alone wrote outputs: one summary line, one metrics line per log step.
    summaries = [line for line in stdout.splitlines() if line.startswith("{")]
    assert len(summaries) == 1 and json.loads(summaries[0])["steps"] == 6
    assert [r["step"] for r in read_metrics(two / "metrics.jsonl")] == [3, 6]
    assert (two / "samples.png").exists() and (two / "best.pt").exists()


def test_sharded_evaluation_covers_all_examples(runs):
    one = runs[0]
    opts = ["--num-samples", "100", "--max-examples", "11", "--no-progress", "--backend", "gloo"]
    # torchrun's own parser claims abbreviations of --run-path, hence --run-dir.
    _run(["evaluate", "--run-dir", str(one), *opts, "--out", str(one / "eval2.json")], nproc=2)
    assert main(["evaluate", "--run", str(one), *opts, "--out", str(one / "eval1.json")]) == 0
    two = json.loads((one / "eval2.json").read_text())
    single = json.loads((one / "eval1.json").read_text())
    assert two["processes"] == 2 and single["processes"] == 1
    assert two["num_examples"] == single["num_examples"] == 11
    # Different importance samples (per-rank seeds), same examples: estimates agree closely.
    assert two["log_likelihood_nats"] == pytest.approx(single["log_likelihood_nats"], rel=0.02)
