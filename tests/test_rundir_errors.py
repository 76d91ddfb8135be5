"""The CLI's error contract: every refusal is one ``pyro-spvae <command>: error: ...`` line with
exit status 2 and no traceback (corrupt data and checkpoints, unusable output paths, read-only
and full disks, damaged run files, settings beyond the memory budget), and outputs are written
atomically and only after the command has checked that it can write them."""

from __future__ import annotations

import errno
import gzip
import json
import os
import random
import shutil
from pathlib import Path

import pytest
from test_rundir import TINY, assert_refused, run_cli, snapshot

from pyro_spvae.training import files, load_checkpoint, save_checkpoint
from pyro_spvae.training.memory import check_memory, parse_size

MNIST_STEMS = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
               "t10k-labels-idx1-ubyte")
EVAL = ["--num-samples", "2", "--max-examples", "2", "--no-progress"]


@pytest.fixture(scope="module")
def base_run(tmp_path_factory) -> Path:
    from pyro_spvae.cli import main

    out = tmp_path_factory.mktemp("errors") / "run"
    assert main(["train", "--out", str(out), "--steps", "4", *TINY]) == 0
    return out


@pytest.fixture
def run(base_run, tmp_path) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(base_run, copy)
    return copy


def commands(run: Path) -> list[list]:
    """A resume, an evaluation and a sample of ``run``."""
    return [["train", "--out", run, "--resume", "--steps", "8", "--no-progress"],
            ["evaluate", "--run", run, *EVAL], ["sample", "--run", run, "--num", "4"]]


def _fsync_failing_for(fragment: str):
    """An ``os.fsync`` that fails with ENOSPC (a full disk) for files whose name contains
    ``fragment``."""
    real = os.fsync

    def fsync(fd):
        try:
            name = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            pytest.skip("needs /proc/self/fd to tell files apart")
        if fragment in name:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(fd)

    return fsync


# --------------------------------------------------------------------------- data files
@pytest.mark.parametrize("damage", ["corrupt", "truncated", "checksum"])
def test_bad_mnist_files_are_one_error_line_for_every_command(run, tmp_path, capsys, damage):
    mnist = tmp_path / "mnist"
    mnist.mkdir()
    payload = bytes(8) + bytes(range(256)) * 8
    for stem in MNIST_STEMS:
        data = gzip.compress(payload)
        data = {"corrupt": data[:10] + bytes(50) + data[60:], "truncated": data[: len(data) // 2],
                "checksum": data}[damage]
        (mnist / f"{stem}.gz").write_bytes(data)
    config = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**config, "data": "mnist", "data_dir": str(mnist)}))
    expected = {"corrupt": "corrupt", "truncated": "truncated", "checksum": "SHA-256 mismatch"}[damage]
    for argv in [*commands(run), ["train", "--out", tmp_path / "new", "--data", "mnist", "--data-dir", mnist,
                                  "--steps", "2", *TINY]]:
        assert_refused(run_cli(argv, capsys), str(mnist), expected)


# --------------------------------------------------------------------------- output paths
def test_unusable_output_paths(run, tmp_path, capsys, monkeypatch):
    a_file = tmp_path / "file"
    a_file.write_text("x")
    cases = [
        (["train", "--out", a_file, "--steps", "2", *TINY], "is a file, not a directory"),
        (["train", "--out", a_file / "sub", "--steps", "2", *TINY], f"lies under {a_file}, which is a file"),
        (["evaluate", "--run", run, "--out", a_file / "eval.json", *EVAL], "is a file, not a directory"),
        (["sample", "--run", run, "--out", tmp_path], "is a directory"),
        (["evaluate", "--run", a_file, *EVAL], f"run directory {a_file} is not a directory"),
        (["sample", "--run", tmp_path / "missing"], "does not exist"),
    ]
    for argv, message in cases:
        assert_refused(run_cli(argv, capsys), message)
    monkeypatch.chdir(tmp_path / "run")
    before = snapshot(tmp_path / "run")
    assert_refused(run_cli(["train", "--out", "", "--steps", "2", *TINY], capsys), "must not be empty")
    assert snapshot(tmp_path / "run") == before  # it trained into the current directory


def test_read_only_run_directory_is_refused_before_any_work(run, capsys, monkeypatch):
    real = files.tempfile.mkstemp

    def mkstemp(*args, dir=None, **kwargs):
        if dir is not None and Path(dir).resolve() == run.resolve():
            raise OSError(errno.EROFS, "Read-only file system")
        return real(*args, dir=dir, **kwargs)

    monkeypatch.setattr(files.tempfile, "mkstemp", mkstemp)
    monkeypatch.setattr("pyro_spvae.evaluation.evaluate", lambda *a, **k: pytest.fail("evaluated anyway"))
    before = snapshot(run)
    for argv in commands(run):
        assert_refused(run_cli(argv, capsys), "cannot write in", "Read-only file system")
    assert snapshot(run) == before


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root ignores permissions")
def test_read_only_permissions_are_refused(run, capsys):
    run.chmod(0o555)
    try:
        for argv in commands(run):
            assert_refused(run_cli(argv, capsys), "cannot write in")
    finally:
        run.chmod(0o755)


def test_full_disk_while_checkpointing_keeps_the_previous_checkpoint(run, capsys, monkeypatch):
    monkeypatch.setattr(files.os, "fsync", _fsync_failing_for(".tmp-checkpoint.pt"))
    good = (run / "checkpoint.pt").read_bytes()
    result = run_cli(commands(run)[0], capsys)
    assert_refused(result, "cannot write", "checkpoint.pt", "No space left on device")
    monkeypatch.undo()
    assert (run / "checkpoint.pt").read_bytes() == good and not list(run.glob(".tmp-*"))
    code, out, err = run_cli(commands(run)[0], capsys)
    assert code == 0 and "resumed from step 4" in out, err


def test_failed_writes_leave_previous_outputs_and_no_temporaries(run, capsys, monkeypatch):
    """``samples.png`` and ``config.json`` were written in place (a truncated image, an empty
    ``config.json.tmp`` on a full disk)."""
    monkeypatch.setattr(files.os, "fsync", _fsync_failing_for(".tmp-"))
    before = snapshot(run)
    assert_refused(run_cli(["sample", "--run", run, "--num", "4"], capsys), "samples.png", "No space left")
    assert_refused(run_cli(commands(run)[0], capsys), "config.json", "No space left")
    assert snapshot(run) == before


# --------------------------------------------------------------------------- run files
def test_damaged_checkpoints_are_one_error_line(run, capsys):
    (run / "checkpoint.prev.pt").unlink(missing_ok=True)
    (run / "best.prev.pt").unlink(missing_ok=True)
    last = ["evaluate", "--run", run, "--checkpoint", "last", *EVAL]
    (run / "checkpoint.pt").write_bytes(b"x")  # 1 byte: an IndexError escaped
    for argv in (commands(run)[0], last):
        assert_refused(run_cli(argv, capsys), "checkpoint.pt is corrupt or truncated")
    rng = random.Random(1)
    for _ in range(5):
        (run / "checkpoint.pt").write_bytes(bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 64))))
        line = assert_refused(run_cli(last, capsys), "is corrupt or truncated")
        assert "could run code" not in line
    state = load_checkpoint(run / "best.pt")
    for key, argv in (("rng", commands(run)[0]), ("step", last)):
        save_checkpoint(run / "checkpoint.pt", {k: v for k, v in state.items() if k != key})
        assert_refused(run_cli(argv, capsys), f"lacks the entries ['{key}']")


@pytest.mark.parametrize("change", [{"data": "cifar"}, {"transform": "nope"}, {"data_dir": 5}, "not utf-8"])
def test_bad_config_json_is_one_error_line_naming_it(run, capsys, change):
    path = run / "config.json"
    if change == "not utf-8":
        path.write_bytes(b"\xff\xfe{}")
    else:
        path.write_text(json.dumps({**json.loads(path.read_text()), **change}))
    before = snapshot(run)
    for argv in commands(run):
        assert_refused(run_cli(argv, capsys), str(path))
    assert snapshot(run) == before


@pytest.mark.parametrize("content", ["[1, 2]\n", "7\n", b'{"step": 2}\n\xff\n', "directory"])
def test_damaged_metrics_file_is_one_error_line_naming_it(run, capsys, content):
    path = run / "metrics.jsonl"
    path.unlink()
    if content == "directory":
        path.mkdir()
    else:
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
    before = snapshot(run)
    assert_refused(run_cli(commands(run)[0], capsys), str(path))
    assert snapshot(run) == before


# --------------------------------------------------------------------------- memory
def test_memory_hungry_settings_are_refused_with_the_estimate(run, tmp_path, capsys, monkeypatch):
    cases = [
        (["train", "--out", tmp_path / "a", "--steps", "2", *TINY, "--z-dim", "100000000"], "parameters"),
        (["train", "--out", tmp_path / "b", "--steps", "2", "--num-particles", "100000", "--no-progress"],
         "num_particles 100000"),
        (["evaluate", "--run", run, "--num-samples", "20000", "--chunk-size", "20000", "--batch-size", "50",
          "--memory-budget", "4G", "--no-progress"], "chunk_size 20000 x batch_size 50"),
    ]
    for argv, fragment in cases:
        assert_refused(run_cli(argv, capsys), "need about", fragment, "budget")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    monkeypatch.setattr("pyro_spvae.training.memory.NOTE_BYTES", 0)
    code, _, err = run_cli(["evaluate", "--run", run, *EVAL], capsys)
    assert code == 0 and "warning: these settings need about" in err, err


def test_memory_sizes_and_notes():
    assert parse_size("16G") == 16 * 1024**3 and parse_size("1.5k") == 1536 and parse_size("off") is None
    with pytest.raises(ValueError, match="expected a size"):
        parse_size("lots")
    assert check_memory(10, "x", None) is None
    assert "9.0 GiB" in check_memory(9 * 1024**3, "chunk x batch", 100 * 1024**3)
