"""The CLI's error contract, shared by the CLI test files: run ``main(argv)`` in-process and check
that it either succeeds silently on stderr or exits 2 with exactly one ``error:`` line, never a
traceback."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

from pyro_spvae.cli import main
from pyro_spvae.training import atomic_write


def cli(argv: list) -> tuple[int, str]:
    """``main(argv)`` in-process; checks the contract and returns the exit status and stderr."""
    err, out = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        try:
            code = main([str(a) for a in argv])
        except SystemExit as e:  # argparse
            code = e.code
    text = err.getvalue()
    errors = [line for line in text.splitlines() if "error:" in line]
    assert "Traceback" not in text, text
    assert (code == 0 and not errors) or (code == 2 and len(errors) == 1), (argv, code, text)
    return code, text


def stub_figures(monkeypatch) -> None:
    """Replace the run figures written by ``train`` with placeholder files of the same names (the
    figures take seconds to draw; the tests check the files exist)."""
    def figures(out_dir, *args, **kwargs):
        for name in ("curve.png", "samples.png", "reconstructions.png"):
            atomic_write(Path(out_dir) / name, b"\x89PNG figure placeholder")

    monkeypatch.setattr("pyro_spvae.plots.save_run_figures", figures)

