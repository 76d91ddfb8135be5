"""Property: no sequence of commands, kills and damaged files breaks the CLI's contract.

After a first 6-step run, Hypothesis draws sequences of: a new run (``train``, sometimes
``--overwrite``), a resume with random overrides (some allowed, some refused), a SIGKILLed resume
(a forked process killed after a random number of metrics lines or while replacing a checkpoint
file), damage to a run file (flipped byte, truncation, a garbage line), ``evaluate`` and
``sample``, on a tiny VAE. After every command:

- it succeeded (exit 0), or printed exactly one ``error:`` line with exit status 2 and no traceback;
- a refused command (exit 2) left the run directory byte for byte as it was.

Finally the run is finished (resumed; started again with ``--overwrite`` when the damage left
nothing to resume from) and its parameters equal those of an uninterrupted run.

Figures are replaced by a cheap atomic write of the same files (rendering them costs about a
second per run; their atomic writing is tested in ``test_rundir_errors.py``).
"""

from __future__ import annotations

import os
import random
import tempfile
from pathlib import Path

import pytest
from cli_contract import cli, stub_figures
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_rundir import assert_same_params, snapshot
from test_rundir_crash import fork_cli, kill_when

from pyro_spvae.cli import main
from pyro_spvae.training import read_metrics

BASE = ["--z-dim", "2", "--hidden", "8", "--batch-size", "8", "--eval-every", "4", "--log-every", "2",
        "--valid-max-examples", "16", "--patience", "0", "--no-progress", "--threads", "1"]
FINAL_STEPS = 10
SLEEP_ENV = "PYRO_SPVAE_CHECKPOINT_SLEEP"
#: Overrides a resume may apply (none changes the parameters' trajectory) ...
ALLOWED = [["--steps", "6"], ["--steps", "10"], ["--log-every", "3"], ["--checkpoint-every", "3"],
           ["--eval-every", "5"], ["--valid-max-examples", "8"], ["--lr", "0.001"],
           ["--on-nonfinite", "skip"]]
#: ... and overrides it must refuse.
REFUSED = [["--batch-size", "16"], ["--seed", "1"], ["--z-dim", "3"], ["--likelihood", "gaussian"],
           ["--elbo", "iwae"], ["--hidden", "9"], ["--transform", "binary-static"]]
DAMAGEABLE = ["checkpoint.pt", "checkpoint.prev.pt", "best.pt", "metrics.jsonl", "config.json"]

actions = st.one_of(
    st.tuples(st.just("train"), st.sampled_from([4, 6, FINAL_STEPS]), st.booleans()),
    st.tuples(st.just("resume"), st.lists(st.sampled_from(ALLOWED + REFUSED), max_size=2)),
    st.tuples(st.just("kill"), st.sampled_from(["metrics", "replace"]), st.integers(1, 4)),
    st.tuples(st.just("damage"), st.sampled_from(DAMAGEABLE),
              st.sampled_from(["flip", "truncate", "garbage"]), st.integers(0, 2**16)),
    st.tuples(st.just("evaluate")),
    st.tuples(st.just("sample")),
)


def damage(path: Path, how: str, seed: int) -> None:
    if not path.is_file():
        return
    data = bytearray(path.read_bytes())
    rng = random.Random(seed)
    if how == "flip" and data:
        data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
    elif how == "truncate":
        data = data[: rng.randrange(len(data) + 1)]
    else:
        lines = bytes(data).split(b"\n")
        lines.insert(rng.randrange(len(lines) + 1), b"garbage {")
        data = bytearray(b"\n".join(lines))
    path.write_bytes(bytes(data))


def _metrics_lines(path: Path) -> int:
    try:
        return len(read_metrics(path))
    except Exception:  # noqa: BLE001 - being written or damaged: not yet
        return 0


def do(action: tuple, run: Path, log: Path) -> None:
    kind = action[0]
    before = snapshot(run) if run.exists() else None
    if kind == "kill":
        _, when, lines = action
        has_config = (run / "config.json").exists()
        argv = ["train", "--out", run, *(["--resume", "--no-progress"] if has_config else
                                          ["--steps", FINAL_STEPS, *BASE])]
        os.environ[SLEEP_ENV] = "0.3"  # the child waits before replacing a file: a window to kill in
        try:
            pid = fork_cli(argv, log)
        finally:
            del os.environ[SLEEP_ENV]
        if when == "metrics":
            ready = lambda: _metrics_lines(run / "metrics.jsonl") >= lines  # noqa: E731
        else:
            ready = lambda: list(run.glob(".tmp-*.pt.*"))  # noqa: E731
        if not kill_when(pid, ready, log, timeout=60):  # it ended (or was refused) first: check how
            text = log.read_text()
            assert "Traceback" not in text and len([x for x in text.splitlines() if "error:" in x]) <= 1, text
        return
    if kind == "damage":
        # a flipped digit in config.json is a valid (if unwanted) edit of a hand-editable file,
        # which no check can tell from an intended one: damage it by truncation or a garbage line
        how = "garbage" if action[1] == "config.json" and action[2] == "flip" else action[2]
        damage(run / action[1], how, action[3])
        return
    if kind == "train":
        argv = ["train", "--out", run, "--steps", action[1], *BASE, *(["--overwrite"] if action[2] else [])]
    elif kind == "resume":
        argv = ["train", "--out", run, "--resume", "--no-progress", *[a for o in action[1] for a in o]]
    elif kind == "evaluate":
        argv = ["evaluate", "--run", run, "--num-samples", "3", "--max-examples", "3", "--no-progress"]
    else:
        argv = ["sample", "--run", run, "--num", "4"]
    code, _ = cli(argv)
    if code == 2:
        after = snapshot(run) if run.exists() else None
        assert after == before, ("a refused command changed the run", argv)


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("property") / "reference"
    assert main(["train", "--out", str(out), "--steps", str(FINAL_STEPS), *BASE]) == 0
    return out


@pytest.fixture(autouse=True)
def cheap_figures(monkeypatch):
    stub_figures(monkeypatch)
    monkeypatch.delenv(SLEEP_ENV, raising=False)


@pytest.mark.slow  # SIGKILLs forked processes (about 15 s)
@pytest.mark.skipif(not hasattr(os, "fork"), reason="kills forked processes")
@settings(max_examples=8, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(steps=st.lists(actions, min_size=2, max_size=7))
def test_commands_kills_and_damage_never_break_a_run(reference, steps):
    with tempfile.TemporaryDirectory() as tmp:
        run, log = Path(tmp) / "run", Path(tmp) / "child.log"
        for action in [("train", 6, False), *steps]:  # most actions then act on an existing run
            if os.environ.get("PROPERTY_DEBUG"):
                print(action, flush=True)
            do(action, run, log)
        code, _ = cli(["train", "--out", run, "--resume", "--steps", FINAL_STEPS, "--no-progress"])
        if code == 2:  # nothing left to resume from (damaged config.json, metrics or every checkpoint)
            code, text = cli(["train", "--out", run, "--overwrite", "--steps", FINAL_STEPS, *BASE])
            assert code == 0, text
        assert_same_params(run / "checkpoint.pt", reference / "checkpoint.pt")
        for argv in (["evaluate", "--run", run, "--num-samples", "2", "--max-examples", "2", "--no-progress"],
                     ["sample", "--run", run, "--num", "2"]):
            assert cli(argv)[0] == 0
