"""Writing run files safely: atomic replacement and up-front writability checks.

Every file a run directory holds (checkpoints, ``config.json``, ``eval.json``, plots) is written by
:func:`atomic_write`: the content goes to a temporary file in the destination's directory, which
is flushed, ``fsync``-ed and moved over the destination with :func:`os.replace` (then the directory
is ``fsync``-ed). A process killed at any moment, or a write failing on a full disk, therefore
leaves either the previous complete file or the new complete file, never a torn one, and the
temporary file is removed when the write fails.

:func:`check_output_dir` and :func:`check_output_file` are called by commands *before* their long
computations, so that an output that cannot be written is reported at once.
"""

from __future__ import annotations

import os
import secrets
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from pyro_spvae.training.factory import RunError

__all__ = [
    "TMP_PREFIX",
    "atomic_write",
    "atomic_write_text",
    "check_output_dir",
    "check_output_file",
    "fsync_dir",
    "remove_stale_temporaries",
]

#: Prefix of the temporary files of :func:`atomic_write` (removed by :func:`remove_stale_temporaries`).
TMP_PREFIX = ".tmp-"

#: Fault-injection hook for tests: seconds to sleep after the temporary file is complete and before
#: it replaces an EXISTING destination (a slow disk, so that a kill lands while a good file is being
#: overwritten).
FAULT_SLEEP_ENV = "PYRO_SPVAE_CHECKPOINT_SLEEP"


def fsync_dir(directory: Path) -> None:
    """``fsync`` a directory (persists a rename); a no-op where directories cannot be opened."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds (Windows)
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def _create_temporary(path: Path) -> tuple[int, Path]:
    """A new temporary file beside ``path``, created with mode ``0o666`` less the umask (the mode
    a plain ``open`` gives; ``tempfile.mkstemp`` would make it private to the user)."""
    while True:
        tmp = path.with_name(f"{TMP_PREFIX}{path.name}.{secrets.token_hex(4)}")
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666), tmp
        except FileExistsError:  # pragma: no cover - a 32-bit name collision
            continue


def atomic_write(path: str | os.PathLike, content: bytes | Callable[[BinaryIO], object],
                 *, before_replace: Callable[[], object] | None = None) -> Path:
    """Atomically replace ``path`` with ``content`` (see the module docstring).

    :param path: the destination; its directory must exist.
    :param content: the bytes, or a function writing them to a binary file object.
    :param before_replace: called once the temporary file is complete, just before it replaces the
        destination (e.g. to keep a copy of the previous file).
    :raises OSError: when the write fails (full disk, read-only directory, ...); the error names
        ``path`` and no temporary file is left behind.
    """
    path = Path(path)
    directory = path.parent
    try:
        fd, tmp = _create_temporary(path)
    except OSError as e:
        raise OSError(e.errno, f"cannot write {path}: {e.strerror}", str(path)) from None
    try:
        with os.fdopen(fd, "wb") as f:
            if callable(content):
                content(f)
            else:
                f.write(content)
            f.flush()
            os.fsync(f.fileno())
        delay = os.environ.get(FAULT_SLEEP_ENV)
        if delay and path.exists():
            import time

            time.sleep(float(delay))
        if before_replace is not None:
            before_replace()
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise OSError(e.errno, f"cannot write {path}: {e.strerror}", str(path)) from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(directory)
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """:func:`atomic_write` of ``text`` encoded as UTF-8."""
    return atomic_write(path, text.encode("utf-8"))


def remove_stale_temporaries(directory: str | os.PathLike) -> list[Path]:
    """Delete the temporary files left in ``directory`` by writes that were killed mid-way.

    :returns: the removed paths.
    """
    removed = []
    directory = Path(directory)
    if directory.is_dir():
        for p in sorted(directory.glob(TMP_PREFIX + "*")):
            p.unlink(missing_ok=True)
            removed.append(p)
    return removed


def _probe_writable(directory: Path, what: str) -> None:
    """Create and delete a temporary file in the existing ``directory`` (permissions alone do not
    tell: a read-only mount or a full quota only shows on an actual write)."""
    try:
        fd, name = tempfile.mkstemp(prefix=f"{TMP_PREFIX}probe.", dir=directory)
        os.close(fd)
        os.unlink(name)
    except OSError as e:
        raise RunError(f"cannot write in {what} {directory}: {e.strerror}") from None


def check_output_dir(path: str | os.PathLike, what: str = "directory") -> Path:
    """Check that ``path`` is, or can be created as, a writable directory (creates nothing).

    :param what: how messages name it (e.g. ``"run directory"``).
    :raises RunError: for an empty path, a path that is a file or lies under a file, or a
        directory (or nearest existing parent) in which nothing can be written.
    """
    if str(path).strip() == "":
        raise RunError(f"the {what} must not be empty (give a path)")
    path = Path(path)
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if existing.exists() and not existing.is_dir():
        where = "is a file" if existing == path else f"lies under {existing}, which is a file"
        raise RunError(f"{what} {path} {where}, not a directory")
    _probe_writable(existing, what)
    return path


def check_output_file(path: str | os.PathLike, what: str = "output file") -> Path:
    """Check that the file ``path`` can be written (its directory exists or can be created and is
    writable; ``path`` itself is not a directory). Creates nothing.

    :raises RunError: otherwise, naming the problem.
    """
    if str(path).strip() == "":
        raise RunError(f"the {what} must not be empty (give a path)")
    path = Path(path)
    if path.is_dir():
        raise RunError(f"{what} {path} is a directory")
    check_output_dir(path.parent, f"directory of the {what}")
    return path
