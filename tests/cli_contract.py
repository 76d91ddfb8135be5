"""The CLI's error contract, shared by the CLI test files: run ``main(argv)`` in-process and check
that it either succeeds silently on stderr or exits 2 with exactly one ``error:`` line, never a
traceback."""

from __future__ import annotations

import contextlib
import io

from pyro_spvae.cli import main


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
