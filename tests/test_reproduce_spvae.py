"""``scripts/reproduce_spvae.py`` end to end on the embedded data with a tiny budget: the report
merges runs of both protocols, pairs SPVAE with its baseline and plots the data-efficiency curve;
training and evaluation resume from the run directory and finished stages are skipped; the GPU
path (``--jobs`` concurrent processes under ``--time-budget``) runs on CPU."""

from __future__ import annotations

import importlib.util
import json
import math
import time
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def reproduce():
    spec = importlib.util.spec_from_file_location("reproduce_spvae", REPO / "scripts" / "reproduce_spvae.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _args(tmp_path: Path, *configs: str, fractions=("1",), protocol="matched") -> list[str]:
    return ["--protocol", protocol, "--configs", *configs, "--data", "embedded", "--max-steps", "2",
            "--num-samples", "3", "--eval-examples", "6", "--eval-batch", "4", "--valid-examples", "8",
            "--fractions", *fractions, "--run-dir", str(tmp_path / "runs"), "--out", str(tmp_path / "r.md"),
            "--threads", "1", "--set", "num_particles=1", "--set", "lr=2e-3"]


def _rows(tmp_path: Path) -> list[dict]:
    return json.loads((tmp_path / "r.json").read_text())["rows"]


def test_report_merges_runs_and_plots_the_curve(reproduce, tmp_path):
    assert reproduce.main(_args(tmp_path, "spvae-discrete", fractions=("0.01", "1"))) == 0
    assert reproduce.main(_args(tmp_path, "vae-discrete", fractions=("0.01", "1"))) == 0
    # a re-run replaces its rows instead of adding to them; a variant sits beside the preset
    assert reproduce.main([*_args(tmp_path, "vae-discrete"), "--restart"]) == 0
    assert reproduce.main([*_args(tmp_path, "vae-discrete"), "--variant", "z=8",
                           "--set", 'model_kwargs={"z_dim": 8}']) == 0
    rows = _rows(tmp_path)
    assert sorted((r["config"], r["variant"], r["fraction"]) for r in rows) == [
        ("spvae-discrete", "", 0.01), ("spvae-discrete", "", 1.0), ("vae-discrete", "", 0.01),
        ("vae-discrete", "", 1.0), ("vae-discrete", "z=8", 1.0),
    ]
    for r in rows:
        assert math.isfinite(r["bound"]) and r["bound"] < 0  # a log-likelihood bound of 8-bit images
        assert r["stderr"] > 0 and r["eval_examples"] == 6 and r["num_samples"] == 3
        assert r["overrides"]["num_particles"] == 1 and r["overrides"]["lr"] == 2e-3
        assert r["paper"] == reproduce.PAPER_TABLE1[r["config"]] and r["protocol"] == "matched"
        assert r["device"] == "cpu" and r["final"] and r["steps"] == 2
    assert rows[-1]["overrides"]["model_kwargs"] == {"z_dim": 8} and rows[-1]["params"] < rows[-2]["params"]
    assert (tmp_path / "runs" / "vae-discrete-embedded-z=8" / "best.pt").exists()  # its own run directory
    assert {r["train_examples"] for r in rows if r["fraction"] == 0.01} == {30}  # 1% of 3000
    report = (tmp_path / "r.md").read_text()
    assert "| spvae-discrete | vae-discrete |" in report  # the equal-budget comparison
    assert "| spvae-discrete | vae-discrete [z=8] |" in report
    assert "| spvae-discrete | 0.01 | 30 |" in report  # the data-efficiency table
    assert "| spvae-continuous | not run yet | 2819.2 |" in report  # the paper-protocol table
    assert reproduce.report.DENSE_COMMAND in report
    assert (tmp_path / "spvae_data_efficiency.png").stat().st_size > 1000
    (tmp_path / "r.md").unlink()
    runs = str(tmp_path / "runs")
    assert reproduce.main(["--report-only", "--out", str(tmp_path / "r.md"), "--run-dir", runs]) == 0
    assert (tmp_path / "r.md").read_text() == report


def test_report_shows_how_far_unfinished_paper_configurations_got(reproduce, tmp_path):
    runs = tmp_path / "runs"
    training = runs / "paper-vae-continuous"
    training.mkdir(parents=True)
    lines = [{"step": 128, "epoch": 0.3, "valid_loss": -2400.0},
             {"step": 256, "epoch": 0.6, "valid_loss": -2500.25},
             {"step": 300, "epoch": 0.77, "valid_loss": None}]
    torn = '{"step": 3'  # a line being written
    (training / "metrics.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n" + torn)
    evaluating = runs / "paper-spvae-discrete"
    evaluating.mkdir()
    entry = {"step": 4096, "epoch": 10.5, "valid_loss": 1900.5}
    (evaluating / "metrics.jsonl").write_text(json.dumps(entry) + "\n")
    state = {"train": {"steps": 4096, "best_step": 4096}}
    (evaluating / "reproduce_state.json").write_text(json.dumps(state))
    torch.save(torch.tensor([-1800.0, -1850.0], dtype=torch.float64), evaluating / "test_log_px.pt")
    assert reproduce.main(["--report-only", "--out", str(tmp_path / "r.md"), "--run-dir", str(runs)]) == 0
    report = (tmp_path / "r.md").read_text()
    assert ("| vae-continuous | training: best validation bound 2500.2 (K = 5) at step 256 | 2598.1 | - | "
            "| 300 (0) training | 256 | 0 of 10000 |") in report
    assert ("| spvae-discrete | evaluating: -1825.0 on the first 2 test images | -1532.2 | - | "
            "| 4096 (10) trained | 4096 | 2 of 10000 |") in report
    assert "| vae-discrete | not run yet | -2351.2 |" in report


def _paper(tmp_path: Path, steps: int, examples: int, runs: str = "runs") -> list[str]:
    return ["--configs", "spvae-discrete", "--data", "embedded", "--max-steps", str(steps), "--set",
            "eval_every=2", "--num-samples", "3", "--eval-examples", str(examples), "--eval-batch", "4",
            "--valid-examples", "8", "--run-dir", str(tmp_path / runs), "--out", str(tmp_path / "r.md"),
            "--threads", "1"]


def test_paper_protocol_resumes_and_skips_finished_stages(reproduce, tmp_path):
    run = tmp_path / "runs" / "paper-spvae-discrete-embedded"
    assert reproduce.main(_paper(tmp_path, 2, 4)) == 0
    config = json.loads((run / "config.json").read_text())
    assert config["lr"] == 1e-2 and config["patience"] == 11 and config["num_particles"] == 5
    assert config["model_kwargs"]["likelihood_kwargs"] == {"eps": 1e-7}
    assert reproduce.main(_paper(tmp_path, 2, 8)) == 0  # training is skipped, evaluation continues
    first = torch.load(run / "test_log_px.pt")
    (row,) = _rows(tmp_path)
    assert row["protocol"] == "paper" and row["steps"] == 2 and row["eval_examples"] == 8 and row["final"]
    # an uninterrupted evaluation gives the same numbers (each block is seeded by its position)
    assert reproduce.main(_paper(tmp_path, 2, 8, runs="fresh")) == 0
    torch.testing.assert_close(torch.load(tmp_path / "fresh" / run.name / "test_log_px.pt"), first)
    # a larger step cap resumes training from its checkpoint; the new best.pt is evaluated afresh
    assert reproduce.main(_paper(tmp_path, 4, 8)) == 0
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == [2, 4]
    assert not torch.equal(torch.load(run / "test_log_px.pt"), first)
    state = json.loads((run / "reproduce_state.json").read_text())
    before = (run / "checkpoint.pt").stat().st_mtime_ns, state
    assert reproduce.main(_paper(tmp_path, 4, 8)) == 0  # everything finished: nothing is redone
    after = (run / "checkpoint.pt").stat().st_mtime_ns, json.loads((run / "reproduce_state.json").read_text())
    assert after == before
    # --restart starts the run again
    assert reproduce.main([*_paper(tmp_path, 2, 4), "--restart"]) == 0
    assert [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()] == [2]


@pytest.mark.slow
def test_gpu_path_runs_on_cpu_with_concurrent_jobs_and_a_time_budget(reproduce, tmp_path):
    """``--jobs`` concurrent processes (one per configuration) under a 20-second budget, as
    ``scripts/gpu_table1.sh`` runs the eight on one GPU: each trains at least one validation interval,
    evaluates its best checkpoint so far and merges its row; a second invocation continues."""
    args = ["--configs", "spvae-discrete", "vae-continuous", "--jobs", "2", "--device", "cpu",
            "--time-budget", "20", "--data", "embedded", "--set", "eval_every=4", "--num-samples", "4",
            "--eval-examples", "500", "--eval-batch", "10", "--valid-examples", "32",
            "--run-dir", str(tmp_path / "runs"), "--out", str(tmp_path / "r.md")]
    start = time.time()
    assert reproduce.main(args) == 0
    assert time.time() - start < 20 + 90  # process start-up and one chunk may overrun the budget
    rows = {r["config"]: r for r in _rows(tmp_path)}
    assert set(rows) == {"spvae-discrete", "vae-continuous"}
    for r in rows.values():
        assert r["device"] == "cpu" and r["threads"] == 1 and r["steps"] >= 4 and r["steps"] % 4 == 0
        assert 0 < r["eval_examples"] <= 500 and math.isfinite(r["bound"])
        assert r["eval_time_s"] > 0 and r["train_elapsed_s"] > 0
    assert "| vae-continuous |" in (tmp_path / "r.md").read_text()
    assert reproduce.main(args) == 0
    again = {r["config"]: r for r in _rows(tmp_path)}
    assert all(again[c]["steps"] > rows[c]["steps"] or again[c]["stopped_early"] for c in rows)


def test_bad_override_is_a_usage_error(reproduce, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        reproduce.main([*_args(tmp_path, "vae-discrete"), "--set", "lr"])
    assert e.value.code == 2
    assert "--set takes KEY=JSON" in capsys.readouterr().err
