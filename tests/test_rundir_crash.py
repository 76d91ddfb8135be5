"""Real failures of ``pyro-spvae train`` processes: SIGKILLs (before the first checkpoint and while
a checkpoint file is being replaced) and a real "disk full" (``RLIMIT_FSIZE``: writes past the
limit fail with ``EFBIG``).

The killed processes are forks of the test process running ``pyro_spvae.cli.main`` (a real
process and a real ``SIGKILL``, without the seconds a fresh interpreter spends importing torch).
Marked slow; still part of the default suite."""

from __future__ import annotations

import os
import signal
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import pytest
from test_rundir import TINY, assert_same_params, run_cli, snapshot, untimed

from pyro_spvae.training import load_checkpoint

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not hasattr(os, "fork") or sys.platform == "darwin", reason="needs fork()"),
]


def fork_cli(argv: list, log: Path, setup: Callable[[], None] | None = None) -> int:
    """Run ``main(argv)`` in a forked child (stdout and stderr to ``log``); returns its pid."""
    from pyro_spvae.cli import main

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # "use of fork() may lead to deadlocks"
        pid = os.fork()
    if pid:
        return pid
    code = 99
    try:
        fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        sys.stdout = sys.stderr = open(fd, "w", buffering=1, closefd=False)  # noqa: SIM115
        if setup is not None:
            setup()
        code = main([str(a) for a in argv])
    except BaseException:  # noqa: BLE001 - the exit status tells the parent
        import traceback

        traceback.print_exc()
    finally:
        os._exit(code)


def kill_when(pid: int, ready: Callable[[], object], log: Path, timeout: float = 120.0) -> bool:
    """SIGKILL the child ``pid`` as soon as ``ready()`` holds.

    :returns: whether it was killed (``False``: it ended by itself first).
    """
    deadline = time.monotonic() + timeout
    while not ready():
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done:
            return False
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            pytest.fail(f"the child hung: {log.read_text()[-2000:]}")
        time.sleep(0.005)
    os.kill(pid, signal.SIGKILL)
    _, status = os.waitpid(pid, 0)
    return os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL


def wait_for(pid: int, timeout: float = 300.0) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.01)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    pytest.fail("the child did not finish")


def test_sigkilled_attempts_resume_to_the_uninterrupted_result(tmp_path, capsys, monkeypatch):
    """Killed after its first validation wrote ``best.pt`` and ``metrics.jsonl`` but before the
    first checkpoint (leftovers that used to be appended to), then killed while replacing a
    checkpoint file: the resumed run ends with the parameters and metrics of an uninterrupted one."""
    reference, out, log = tmp_path / "reference", tmp_path / "run", tmp_path / "child.log"
    schedule = ["--steps", "12", *TINY, "--checkpoint-every", "6", "--eval-every", "3"]
    assert run_cli(["train", "--out", reference, *schedule], capsys)[0] == 0
    # every replacement of an existing checkpoint file waits 1 s before os.replace: a window to kill in
    monkeypatch.setenv("PYRO_SPVAE_CHECKPOINT_SLEEP", "1")
    pid = fork_cli(["train", "--out", out, *schedule], log)  # best.pt at 3, checkpoint.pt only at 6
    assert kill_when(pid, lambda: (out / "best.pt").exists() and (out / "metrics.jsonl").exists(), log), \
        log.read_text()
    assert not (out / "checkpoint.pt").exists()
    code, _, err = run_cli(["train", "--out", out, *schedule], capsys)
    assert code == 2 and "already holds files of a run" in err
    pid = fork_cli(["train", "--out", out, "--resume", "--no-progress"], log)
    assert kill_when(pid, lambda: (out / "checkpoint.pt").exists() and list(out.glob(".tmp-*.pt.*")), log), \
        log.read_text()
    assert load_checkpoint(out / "checkpoint.pt")["step"] == 6
    monkeypatch.delenv("PYRO_SPVAE_CHECKPOINT_SLEEP")
    code, out_text, err = run_cli(["train", "--out", out, "--resume", "--no-progress"], capsys)
    assert code == 0 and "resumed from step 6" in out_text, err
    assert not list(out.glob(".tmp-*"))
    assert_same_params(out / "checkpoint.pt", reference / "checkpoint.pt")
    assert_same_params(out / "best.pt", reference / "best.pt")
    assert untimed(out / "metrics.jsonl") == untimed(reference / "metrics.jsonl")


def _file_size_limit(limit: int) -> Callable[[], None]:
    def apply() -> None:
        import resource

        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail with EFBIG instead
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


@pytest.mark.skipif(not hasattr(signal, "SIGXFSZ"), reason="needs RLIMIT_FSIZE")
def test_real_full_disk_is_one_error_line_and_keeps_every_file(tmp_path, capsys):
    out, log = tmp_path / "run", tmp_path / "child.log"
    assert run_cli(["train", "--out", out, "--steps", "4", *TINY], capsys)[0] == 0
    before = snapshot(out)
    limit = 16 * 1024  # config.json and metrics lines fit, a checkpoint (~150 kB) or an image does not
    assert (out / "best.pt").stat().st_size > limit and (out / "samples.png").stat().st_size > limit
    for argv, name in ((["train", "--out", out, "--resume", "--steps", "8", "--no-progress"], ".pt: "),
                       (["sample", "--run", out], "samples.png: ")):
        assert wait_for(fork_cli(argv, log, _file_size_limit(limit))) == 2
        err = log.read_text()
        lines = [line for line in err.splitlines() if "error:" in line]
        assert len(lines) == 1 and "Traceback" not in err, err
        assert f"cannot write {out}" in lines[0] and f"{name}File too large" in lines[0], lines[0]
        assert not list(out.glob(".tmp-*"))
    kept = ("config.json", "metrics.jsonl")  # the resume's new --steps and its step-6 metrics line
    assert {k: v for k, v in snapshot(out).items() if k not in kept} == {
        k: v for k, v in before.items() if k not in kept}
    code, out_text, err = run_cli(["train", "--out", out, "--resume", "--steps", "8", "--no-progress"],
                                  capsys)
    assert code == 0 and "resumed from step 4" in out_text, err
