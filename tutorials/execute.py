"""Execute the tutorial notebooks in place so that they are committed with real outputs.

Usage::

    python tutorials/execute.py                 # full runs (smoke_test off), outputs saved
    python tutorials/execute.py --smoke a.ipynb  # smoke runs of the named notebooks

The test suite (``tests/test_tutorials.py``) runs the same code under ``SMOKE_TEST=1`` without
writing the notebooks back.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import nbformat
from nbclient import NotebookClient

HERE = Path(__file__).resolve().parent


def execute(path: Path, smoke: bool, write: bool, timeout: int = 3600) -> nbformat.NotebookNode:
    """Run every cell of the notebook at ``path`` (cwd = ``tutorials/``) and optionally save it."""
    nb = nbformat.read(path, as_version=4)
    env_smoke = os.environ.get("SMOKE_TEST")
    if smoke:
        os.environ["SMOKE_TEST"] = "1"
    else:
        os.environ.pop("SMOKE_TEST", None)
    try:
        client = NotebookClient(
            nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}
        )
        client.execute()
    finally:
        if env_smoke is None:
            os.environ.pop("SMOKE_TEST", None)
        else:
            os.environ["SMOKE_TEST"] = env_smoke
    if write:
        nbformat.write(nb, path)
    return nb


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebooks", nargs="*", type=Path)
    parser.add_argument("--smoke", action="store_true", help="run with SMOKE_TEST=1")
    parser.add_argument("--no-write", action="store_true", help="do not save outputs")
    args = parser.parse_args(argv)
    paths = args.notebooks or sorted(HERE.glob("*.ipynb"))
    for path in paths:
        print(f"executing {path} (smoke={args.smoke})", flush=True)
        execute(path.resolve(), smoke=args.smoke, write=not args.no_write)
    return 0


if __name__ == "__main__":
    sys.exit(main())
