"""Run directories that never break: a resume is validated before anything is written, the stored
``config.json`` is the source of truth, the overrides that may change really apply, leftovers of
an earlier attempt are refused or removed, and the metrics resume exactly.

Commands run in-process (``pyro_spvae.cli.main``) on a tiny VAE and the embedded data."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from pyro_spvae.cli import main
from pyro_spvae.training import (
    CheckpointError,
    RunError,
    load_checkpoint,
    read_metrics,
    resume_config,
    run_leftovers,
)

TINY = [
    "--z-dim", "2", "--hidden", "8", "--batch-size", "8", "--eval-every", "4", "--valid-max-examples", "16",
    "--log-every", "3", "--no-progress", "--threads", "1",
]  # fmt: skip
#: Fields of a metrics record that depend on wall-clock time.
TIMING = ("examples_per_s", "wall_time", "cpu_time")


def run_cli(argv, capsys) -> tuple[int, str, str]:
    """``main(argv)`` in-process: exit status, stdout, stderr."""
    try:
        code = main([str(a) for a in argv])
    except SystemExit as e:  # argparse errors
        code = e.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_refused(result: tuple[int, str, str], *fragments: str) -> str:
    """The CLI's contract for a refusal: exit status 2, exactly one ``error:`` line (containing
    ``fragments``), no traceback. Returns the line."""
    code, _, err = result
    lines = [line for line in err.splitlines() if "error:" in line]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


def untimed(path: Path) -> list[dict]:
    """The records of a metrics file without the fields that depend on wall-clock time."""
    return [{k: v for k, v in r.items() if k not in TIMING} for r in read_metrics(path)]


def snapshot(directory: Path) -> dict[str, bytes]:
    """Every file under ``directory`` (relative path -> content)."""
    files = sorted(p for p in directory.rglob("*") if p.is_file())
    return {str(p.relative_to(directory)): p.read_bytes() for p in files}


def params_of(path: Path) -> dict[str, torch.Tensor]:
    state = load_checkpoint(path)
    return {f"{part}.{k}": v for part in ("model", "guide") for k, v in state[part].items()}


def assert_same_params(a: Path, b: Path) -> None:
    pa, pb = params_of(a), params_of(b)
    assert pa.keys() == pb.keys()
    for k in pa:
        assert torch.equal(pa[k], pb[k]), k


@pytest.fixture(scope="module")
def base_run(tmp_path_factory) -> Path:
    """A finished 8-step run (checkpoints at 4 and 8, so ``checkpoint.prev.pt`` exists)."""
    out = tmp_path_factory.mktemp("rundir") / "run"
    assert main(["train", "--out", str(out), "--steps", "8", *TINY]) == 0
    return out


@pytest.fixture
def run(base_run, tmp_path) -> Path:
    """A private copy of :func:`base_run`."""
    copy = tmp_path / "run"
    shutil.copytree(base_run, copy)
    return copy


# --------------------------------------------------------------------------- defect 1
REFUSED_OVERRIDES = [
    (["--batch-size", "16"], "batch_size (8 -> 16)"),
    (["--seed", "3"], "seed (0 -> 3)"),
    (["--z-dim", "5"], "model_kwargs.z_dim (2 -> 5)"),
    (["--likelihood", "gaussian"], "model_kwargs.likelihood ('bernoulli' -> 'gaussian')"),
    (["--elbo", "iwae", "--transform", "binary-static"],
     "transform ('binary-dynamic' -> 'binary-static'), elbo ('trace' -> 'iwae')"),
]


def test_refused_resume_writes_nothing_and_the_run_stays_usable(run, capsys):
    before = snapshot(run)
    for override, named in REFUSED_OVERRIDES:
        argv = ["train", "--out", run, "--resume", "--steps", "12", "--no-progress", *override]
        assert_refused(run_cli(argv, capsys), "cannot resume", named, "config.json")
        assert snapshot(run) == before, override
    code, out, err = run_cli(["train", "--out", run, "--resume", "--steps", "12", "--no-progress"], capsys)
    assert code == 0, err
    assert "resumed from step 8" in out and load_checkpoint(run / "checkpoint.pt")["step"] == 12
    for argv in (["evaluate", "--run", run, "--num-samples", "2", "--max-examples", "2", "--no-progress"],
                 ["sample", "--run", run, "--num", "4"]):
        assert run_cli(argv, capsys)[0] == 0


def test_same_values_as_stored_are_not_changes(run):
    config, changes = resume_config(run, {"batch_size": 8, "seed": 0, "model_kwargs": {"z_dim": 2},
                                          "steps": 8, "epochs": None})
    assert changes == {} and config.batch_size == 8


# --------------------------------------------------------------------------- defect 2
def test_resume_with_a_new_learning_rate_applies_and_records_it(run, capsys):
    code, out, err = run_cli(["train", "--out", run, "--resume", "--steps", "12", "--lr", "0.05",
                              "--no-progress"], capsys)
    assert code == 0, err
    assert "lr 0.001 -> 0.05" in out
    assert json.loads((run / "config.json").read_text())["lr"] == 0.05
    state = load_checkpoint(run / "checkpoint.pt")
    assert state["config"]["lr"] == 0.05
    groups = [g for st in state["optimizer"].values() for g in st["param_groups"]]
    assert groups and all(g["lr"] == 0.05 for g in groups)
    lrs = {r["step"]: r["lr"] for r in read_metrics(run / "metrics.jsonl")}
    assert lrs[6] == 0.001 and lrs[9] == lrs[12] == 0.05


# --------------------------------------------------------------------------- defect 4
def _killed_before_first_checkpoint(run: Path) -> None:
    """What an attempt killed between its first validation and its first checkpoint leaves."""
    for name in ("checkpoint.pt", "checkpoint.prev.pt", "best.prev.pt", "curve.png", "samples.png",
                 "reconstructions.png"):
        (run / name).unlink()


def test_new_run_over_leftovers_is_refused_naming_them(run, capsys):
    _killed_before_first_checkpoint(run)
    before = snapshot(run)
    line = assert_refused(run_cli(["train", "--out", run, "--steps", "6", *TINY], capsys),
                          "already holds files of a run", "--resume", "--overwrite")
    for name in ("config.json", "best.pt", "metrics.jsonl"):
        assert name in line
    assert snapshot(run) == before


def test_overwrite_and_resume_without_checkpoint_start_clean(run, tmp_path, capsys):
    reference = tmp_path / "reference"
    assert run_cli(["train", "--out", reference, "--steps", "6", *TINY], capsys)[0] == 0
    _killed_before_first_checkpoint(run)
    (run / "notes.txt").write_text("mine")
    resumed = tmp_path / "resumed"
    shutil.copytree(run, resumed)
    code, _, err = run_cli(["train", "--out", run, "--overwrite", "--steps", "6", *TINY], capsys)
    assert code == 0, err
    code, out, err = run_cli(["train", "--out", resumed, "--resume", "--steps", "6", "--no-progress"], capsys)
    assert code == 0, err
    assert "no checkpoint in" in out
    for directory in (run, resumed):
        assert (directory / "notes.txt").read_text() == "mine"  # not a run file: left alone
        assert untimed(directory / "metrics.jsonl") == untimed(reference / "metrics.jsonl")
        assert load_checkpoint(directory / "best.pt")["step"] <= 6
        assert_same_params(directory / "checkpoint.pt", reference / "checkpoint.pt")


def test_run_leftovers_lists_temporaries_too(tmp_path):
    (tmp_path / ".tmp-checkpoint.pt.x1").write_bytes(b"")
    (tmp_path / "mine.txt").write_text("")
    assert run_leftovers(tmp_path) == [".tmp-checkpoint.pt.x1"]
    assert run_leftovers(tmp_path / "missing") == []


# --------------------------------------------------------------------------- defect 5
def test_resume_without_config_json_is_an_error(run, capsys):
    (run / "config.json").unlink()
    before = snapshot(run)
    assert_refused(run_cli(["train", "--out", run, "--resume", "--steps", "12", "--no-progress"], capsys),
                   "cannot resume", "config.json not found")
    assert snapshot(run) == before
    with pytest.raises(RunError, match="config.json not found"):
        resume_config(run, {})


# --------------------------------------------------------------------------- defect 9 (CLI side)
def test_resume_of_a_finished_run_reports_its_train_loss(run, capsys):
    code, out, err = run_cli(["train", "--out", run, "--resume", "--no-progress"], capsys)
    assert code == 0, err
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["train_loss"] == pytest.approx(read_metrics(run / "metrics.jsonl")[-1]["train_loss"])


def test_garbage_metrics_line_is_refused_with_file_and_line(run, capsys):
    lines = (run / "metrics.jsonl").read_text().splitlines()
    (run / "metrics.jsonl").write_text("\n".join([lines[0], "garbage{", *lines[1:]]) + "\n")
    before = snapshot(run)
    assert_refused(run_cli(["train", "--out", run, "--resume", "--steps", "12", "--no-progress"], capsys),
                   f"{run / 'metrics.jsonl'}, line 2: not valid JSON")
    assert snapshot(run) == before


# --------------------------------------------------------------------------- defect 3 (CLI side)
def test_corrupt_latest_checkpoint_falls_back_to_the_previous_one(run, tmp_path, capsys):
    reference = tmp_path / "reference"
    assert run_cli(["train", "--out", reference, "--steps", "12", *TINY], capsys)[0] == 0
    data = bytearray((run / "checkpoint.pt").read_bytes())
    data[len(data) // 2] ^= 0xFF  # bit-rot inside the archive
    (run / "checkpoint.pt").write_bytes(bytes(data))
    code, out, err = run_cli(["train", "--out", run, "--resume", "--steps", "12", "--no-progress"], capsys)
    assert code == 0, err
    assert "warning: checkpoint" in err and "corrupt" in err and "checkpoint.prev.pt" in err
    assert "resumed from step 4" in out
    assert (run / "checkpoint.pt.corrupt").exists()
    assert_same_params(run / "checkpoint.pt", reference / "checkpoint.pt")


def test_every_checkpoint_corrupt_is_refused(run, capsys):
    for name in ("checkpoint.pt", "checkpoint.prev.pt"):
        (run / name).write_bytes(b"\x00")
    before = snapshot(run)
    assert_refused(run_cli(["train", "--out", run, "--resume", "--steps", "12", "--no-progress"], capsys),
                   "checkpoint.pt is corrupt", "checkpoint.prev.pt is corrupt")
    assert snapshot(run) == before
    with pytest.raises(CheckpointError):
        load_checkpoint(run / "checkpoint.pt")


def test_hand_edited_config_that_no_longer_matches_the_checkpoint_is_refused(run, capsys):
    path = run / "config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "num_particles": 2}))
    before = snapshot(run)
    assert_refused(run_cli(["train", "--out", run, "--resume", "--steps", "12", "--no-progress"], capsys),
                   "num_particles 1 (config.json: 2)", "belong to different runs")
    assert snapshot(run) == before


def test_resume_below_the_checkpoint_step_is_refused(run, capsys):
    before = snapshot(run)
    assert_refused(run_cli(["train", "--out", run, "--resume", "--steps", "6", "--no-progress"], capsys),
                   "is at step 8, beyond this run's 6 steps")
    assert snapshot(run) == before
