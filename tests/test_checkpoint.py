"""Checkpoints: atomic writes surviving SIGKILL, weights-only loading, refusal of unsafe or
non-finite content, RNG state round trips."""

from __future__ import annotations

import os
import pickle
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from pyro_spvae.training import (
    CheckpointError,
    NonFiniteCheckpointError,
    capture_rng_state,
    load_checkpoint,
    restore_rng_state,
    save_checkpoint,
)

TESTS_DIR = Path(__file__).resolve().parent
REPO_ROOT = TESTS_DIR.parent


class _RunsCode:
    """Unpickling this calls ``os.system`` (what a malicious checkpoint would do)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_round_trip_and_format(tmp_path):
    state = {"model": {"w": torch.randn(3)}, "step": 7, "config": {"lr": 1e-3, "hidden": [2, 3], "x": None}}
    path = save_checkpoint(tmp_path / "c.pt", state)
    loaded = load_checkpoint(path)
    assert loaded["format"] == 1 and loaded["step"] == 7 and loaded["config"] == state["config"]
    assert torch.equal(loaded["model"]["w"], state["model"]["w"])
    assert list(tmp_path.iterdir()) == [path]  # no temporary file left behind


@pytest.mark.parametrize("how", ["torch.save", "pickle.dump"])
def test_code_executing_checkpoint_is_refused(tmp_path, how):
    marker = tmp_path / "pwned"
    evil = {"format": 1, "model": _RunsCode(marker)}
    path = tmp_path / "evil.pt"
    if how == "torch.save":
        torch.save(evil, path)
    else:
        with open(path, "wb") as f:
            pickle.dump(evil, f)
    with pytest.raises(CheckpointError, match="refusing to load checkpoint .*could run code"):
        load_checkpoint(path)
    assert not marker.exists()


def test_corrupt_missing_and_foreign_files(tmp_path):
    good = save_checkpoint(tmp_path / "good.pt", {"model": {"w": torch.ones(1000)}})
    data = good.read_bytes()
    torn = tmp_path / "torn.pt"
    torn.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load_checkpoint(torn)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.pt")
    torch.save({"w": torch.ones(1)}, tmp_path / "foreign.pt")
    with pytest.raises(CheckpointError, match="not a pyro-spvae checkpoint"):
        load_checkpoint(tmp_path / "foreign.pt")
    torch.save({"format": 99}, tmp_path / "future.pt")
    with pytest.raises(CheckpointError, match="format 99"):
        load_checkpoint(tmp_path / "future.pt")


def test_non_finite_state_is_never_written(tmp_path):
    path = save_checkpoint(tmp_path / "c.pt", {"model": {"w": torch.zeros(2)}, "step": 1})
    bad = {
        "model": {"w": torch.tensor([0.0, float("nan")])},
        "optimizer": {"w": {"m": torch.tensor(float("inf"))}},
    }
    with pytest.raises(NonFiniteCheckpointError, match=r"model\.w, optimizer\.w\.m"):
        save_checkpoint(path, {**bad, "step": 2})
    assert load_checkpoint(path)["step"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.pt"]


def test_rng_state_round_trip():
    gen = torch.Generator().manual_seed(5)
    random.random(), np.random.rand(), torch.rand(1), np.random.randn()  # non-trivial positions
    state = capture_rng_state(gen)
    # The snapshot survives a weights-only save/load.
    draws = (
        random.random(),
        float(np.random.randn()),
        float(np.random.rand()),
        torch.rand(3),
        torch.rand(2, generator=gen),
    )
    torch.manual_seed(99), random.seed(99), np.random.seed(99), gen.manual_seed(99)
    restore_rng_state(state, gen)
    again = (
        random.random(),
        float(np.random.randn()),
        float(np.random.rand()),
        torch.rand(3),
        torch.rand(2, generator=gen),
    )
    assert draws[:3] == again[:3]
    assert torch.equal(draws[3], again[3]) and torch.equal(draws[4], again[4])


_CHILD = textwrap.dedent(
    """
    import sys
    sys.path.insert(0, {tests!r})
    from test_training import make_trainer
    t = make_trainer({out!r}, max_steps=12, checkpoint_every=4, log_every=4)
    t.fit()
    """
)


def test_sigkill_during_checkpoint_write_resumes_exactly(tmp_path):
    """A training process is SIGKILLed while writing its second checkpoint (the fault hook holds
    the complete temporary file before ``os.replace``): the previous checkpoint stays loadable and
    the resumed run ends with exactly the parameters of an uninterrupted run."""
    sys.path.insert(0, str(TESTS_DIR))
    from test_training import make_trainer, params_of

    reference = make_trainer(None, max_steps=12, checkpoint_every=4, log_every=4)
    reference.fit()
    expected = params_of(reference)

    out = tmp_path / "run"
    env = {**os.environ, "PYRO_SPVAE_CHECKPOINT_SLEEP": "30", "PYTHONWARNINGS": "ignore"}
    stderr_path = tmp_path / "child.stderr"
    stderr_file = open(stderr_path, "wb")  # noqa: SIM115
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD.format(tests=str(TESTS_DIR), out=str(out))],
        env=env,
        cwd=REPO_ROOT,
        stdout=subprocess.DEVNULL,
        stderr=stderr_file,
    )
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and child.poll() is None:
            # The hook sleeps only when overwriting, i.e. from the second write on. Checking for the
            # destination FIRST ensures any temporary seen afterwards belongs to a later write.
            if (out / "checkpoint.pt").exists() and list(out.glob(".tmp-checkpoint.pt.*")):
                break
            time.sleep(0.05)
        else:
            child.wait(timeout=5)
            pytest.fail(f"child never reached its second checkpoint write: {stderr_path.read_text()[-2000:]}")
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        stderr_file.close()
    assert child.returncode == -signal.SIGKILL
    assert list(out.glob(".tmp-checkpoint.pt.*")), "the kill should have landed mid-write"
    assert load_checkpoint(out / "checkpoint.pt")["step"] == 4

    resumed = make_trainer(out, max_steps=12, checkpoint_every=4, log_every=4)
    assert resumed.resume()
    assert not list(out.glob(".tmp-*")), "stale temporaries are cleaned up on resume"
    assert resumed.step_count == 4
    resumed.fit()
    got = params_of(resumed)
    for k in expected:
        assert torch.equal(got[k], expected[k]), k
