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
    CHECKPOINT_FORMAT,
    CheckpointError,
    NonFiniteCheckpointError,
    UnsafeCheckpointError,
    capture_rng_state,
    load_checkpoint,
    load_checkpoint_or_previous,
    previous_checkpoint_path,
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
    assert loaded["format"] == CHECKPOINT_FORMAT == 2
    assert loaded["step"] == 7 and loaded["config"] == state["config"]
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
    t = make_trainer({out!r}, steps=12, checkpoint_every=4, log_every=4)
    t.fit()
    """
)


def test_sigkill_during_checkpoint_write_resumes_exactly(tmp_path):
    """A training process is SIGKILLed while writing its second checkpoint (the fault hook holds
    the complete temporary file before ``os.replace``): the previous checkpoint stays loadable and
    the resumed run ends with exactly the parameters of an uninterrupted run."""
    sys.path.insert(0, str(TESTS_DIR))
    from test_training import make_trainer, params_of

    reference = make_trainer(None, steps=12, checkpoint_every=4, log_every=4)
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

    resumed = make_trainer(out, steps=12, checkpoint_every=4, log_every=4)
    assert resumed.resume()
    assert not list(out.glob(".tmp-*")), "stale temporaries are cleaned up on resume"
    assert resumed.step_count == 4
    resumed.fit()
    got = params_of(resumed)
    for k in expected:
        assert torch.equal(got[k], expected[k]), k


# ---------------------------------------------------------------------------- integrity (issue 10)
def _record_offset(path: Path, suffix: str) -> int:
    """Offset in ``path`` of the data of the zip record whose name ends with ``suffix``."""
    import zipfile

    with zipfile.ZipFile(path) as archive:
        info = next(i for i in archive.infolist() if i.filename.endswith(suffix))
    raw = path.read_bytes()
    name_len = int.from_bytes(raw[info.header_offset + 26 : info.header_offset + 28], "little")
    extra_len = int.from_bytes(raw[info.header_offset + 28 : info.header_offset + 30], "little")
    return info.header_offset + 30 + name_len + extra_len


def test_bit_rot_inside_tensor_data_is_detected(tmp_path):
    """Flipping bytes of a tensor record used to load silently (torch does not check the zip
    CRCs); altering the content consistently (a valid archive) fails the SHA-256 digest."""
    path = save_checkpoint(tmp_path / "c.pt", {"model": {"w": torch.randn(1000)}, "step": 3})
    data = bytearray(path.read_bytes())
    offset = _record_offset(path, "/data/0")
    data[offset + 100] ^= 0x01
    rotten = tmp_path / "rotten.pt"
    rotten.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="corrupt.*fails its CRC-32 check"):
        load_checkpoint(rotten)
    state = torch.load(path, weights_only=True)
    state["model"]["w"][0] += 1.0
    torch.save(state, tmp_path / "altered.pt")
    with pytest.raises(CheckpointError, match="does not match its SHA256 digest"):
        load_checkpoint(tmp_path / "altered.pt")


def test_previous_checkpoint_is_kept_and_used_when_the_latest_is_corrupt(tmp_path):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, {"step": 1}, keep_previous=True)
    save_checkpoint(path, {"step": 2}, keep_previous=True)
    assert load_checkpoint(previous_checkpoint_path(path))["step"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.prev.pt", "checkpoint.pt"]
    path.write_bytes(path.read_bytes()[:100])
    loaded = load_checkpoint_or_previous(path)
    assert loaded.state["step"] == 1 and loaded.path == previous_checkpoint_path(path)
    assert len(loaded.problems) == 1 and "corrupt or truncated" in loaded.problems[0]
    path.unlink()  # killed between the two renames on a file system without hard links
    assert load_checkpoint_or_previous(path).state["step"] == 1
    previous_checkpoint_path(path).write_bytes(b"")
    with pytest.raises(CheckpointError, match="does not exist; .*checkpoint.prev.pt is corrupt"):
        load_checkpoint_or_previous(path)


def test_unsafe_latest_checkpoint_is_never_skipped(tmp_path):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, {"step": 1}, keep_previous=True)
    marker = tmp_path / "pwned"
    torch.save({"format": 2, "model": _RunsCode(marker)}, path)
    with pytest.raises(UnsafeCheckpointError, match="refusing to load checkpoint .*could run code"):
        load_checkpoint_or_previous(path)
    assert not marker.exists()


def test_random_bytes_are_corrupt_not_unsafe(tmp_path):
    """Every random file is refused as corrupt (an IndexError, KeyError or UnicodeDecodeError
    escaped for some of them, and the others were called 'a pickle that could run code')."""
    rng = random.Random(0)
    path = tmp_path / "random.pt"
    for i in range(300):
        data = bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 300)))
        if i % 3 == 0:
            data = b"PK\x03\x04" + data
        elif i % 3 == 1:
            data = b"\x80\x02" + data  # starts like a protocol-2 pickle
        path.write_bytes(data)
        with pytest.raises(CheckpointError, match="is corrupt or truncated") as info:
            load_checkpoint(path)
        assert not isinstance(info.value, UnsafeCheckpointError), data[:20]


def test_failed_write_keeps_the_previous_files_and_no_temporary(tmp_path, monkeypatch):
    """A write failing on a full disk (here: ENOSPC from fsync) leaves the previous checkpoint,
    its previous version and no temporary file."""
    import errno

    from pyro_spvae.training import files

    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, {"step": 1}, keep_previous=True)
    save_checkpoint(path, {"step": 2}, keep_previous=True)

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(files.os, "fsync", full)
    with pytest.raises(OSError, match="cannot write .*checkpoint.pt: No space left on device"):
        save_checkpoint(path, {"step": 3}, keep_previous=True)
    monkeypatch.undo()
    assert load_checkpoint(path)["step"] == 2 and load_checkpoint(previous_checkpoint_path(path))["step"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.prev.pt", "checkpoint.pt"]
