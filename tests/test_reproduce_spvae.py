"""``scripts/reproduce_spvae.py`` end to end on the embedded data with a tiny budget: the report
merges runs, pairs SPVAE with its baseline and plots the data-efficiency curve."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def reproduce():
    spec = importlib.util.spec_from_file_location("reproduce_spvae", REPO / "scripts" / "reproduce_spvae.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _args(tmp_path: Path, *configs: str, fractions=("1",)) -> list[str]:
    return ["--configs", *configs, "--data", "embedded", "--max-steps", "2", "--num-samples", "3",
            "--eval-examples", "6", "--eval-batch", "4", "--valid-examples", "8", "--fractions", *fractions,
            "--run-dir", str(tmp_path / "runs"), "--out", str(tmp_path / "r.md"), "--threads", "1",
            "--set", "num_particles=1", "--set", "lr=2e-3"]


def test_report_merges_runs_and_plots_the_curve(reproduce, tmp_path):
    assert reproduce.main(_args(tmp_path, "spvae-discrete", fractions=("0.01", "1"))) == 0
    assert reproduce.main(_args(tmp_path, "vae-discrete", fractions=("0.01", "1"))) == 0
    # a re-run replaces its rows instead of adding to them; a variant sits beside the preset
    assert reproduce.main(_args(tmp_path, "vae-discrete")) == 0
    assert reproduce.main([*_args(tmp_path, "vae-discrete"), "--variant", "z=8",
                           "--set", 'model_kwargs={"z_dim": 8}']) == 0
    rows = json.loads((tmp_path / "r.json").read_text())["rows"]
    assert sorted((r["config"], r["variant"], r["fraction"]) for r in rows) == [
        ("spvae-discrete", "", 0.01), ("spvae-discrete", "", 1.0), ("vae-discrete", "", 0.01),
        ("vae-discrete", "", 1.0), ("vae-discrete", "z=8", 1.0),
    ]
    for r in rows:
        assert math.isfinite(r["bound"]) and r["bound"] < 0  # a log-likelihood bound of 8-bit images
        assert r["stderr"] > 0 and r["eval_examples"] == 6 and r["num_samples"] == 3
        assert r["overrides"]["num_particles"] == 1 and r["overrides"]["lr"] == 2e-3
        assert r["paper"] == reproduce.PAPER_TABLE1[r["config"]]
    assert rows[-1]["overrides"]["model_kwargs"] == {"z_dim": 8} and rows[-1]["params"] < rows[-2]["params"]
    assert (tmp_path / "runs" / "vae-discrete-z=8" / "best.pt").exists()  # its own run directory
    assert {r["train_examples"] for r in rows if r["fraction"] == 0.01} == {30}  # 1% of 3000
    report = (tmp_path / "r.md").read_text()
    assert "| spvae-discrete | vae-discrete |" in report  # the equal-budget comparison
    assert "| spvae-discrete | vae-discrete [z=8] |" in report
    assert "| spvae-discrete | 0.01 | 30 |" in report  # the data-efficiency table
    assert (tmp_path / "spvae_data_efficiency.png").stat().st_size > 1000
    (tmp_path / "r.md").unlink()
    assert reproduce.main(["--report-only", "--out", str(tmp_path / "r.md")]) == 0
    assert (tmp_path / "r.md").read_text() == report


def test_bad_override_is_a_usage_error(reproduce, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        reproduce.main([*_args(tmp_path, "vae-discrete"), "--set", "lr"])
    assert e.value.code == 2
    assert "--set takes KEY=JSON" in capsys.readouterr().err
