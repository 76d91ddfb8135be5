"""Integrity checks of checkpoint files, none of which runs code from the file.

- :func:`content_digest`: a SHA-256 digest of a checkpoint's content (tensors by dtype, shape and
  bytes; plain containers and scalars by type and value), stored in the checkpoint and recomputed
  on load, so that bit-rot inside tensor data is detected even where the file still parses.
- :func:`verify_zip`: the CRC-32 of every record of a ``torch.save`` zip archive (``torch.load``
  does not check them), so that corruption is reported as such before anything is unpickled.
- :func:`pickle_globals`: whether bytes are a well-formed pickle and which globals it imports,
  read with :func:`pickletools.genops` (which never executes anything). It tells a pickle that
  ``weights_only`` loading refused for its content (e.g. one crafted to run code) from a file that
  is simply corrupt.
"""

from __future__ import annotations

import hashlib
import io
import pickletools
import zipfile
import zlib
from typing import Any

import torch

__all__ = ["DIGEST_ALGORITHM", "content_digest", "pickle_globals", "pickle_record", "verify_zip"]

#: Name of the digest algorithm, stored with the digest.
DIGEST_ALGORITHM = "sha256"


def _feed(h: Any, obj: Any) -> None:
    """Hash ``obj`` into ``h``, tagged by type so that e.g. ``1``, ``1.0``, ``"1"`` and ``True`` differ."""
    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu().contiguous()
        h.update(f"T{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    elif isinstance(obj, dict):
        h.update(f"D{len(obj)}".encode())
        for k, v in obj.items():
            _feed(h, k)
            _feed(h, v)
    elif isinstance(obj, (list, tuple)):
        h.update(f"{'L' if isinstance(obj, list) else 'U'}{len(obj)}".encode())
        for v in obj:
            _feed(h, v)
    elif isinstance(obj, bool) or obj is None:
        h.update(repr(obj).encode())
    elif isinstance(obj, int):
        h.update(f"I{obj}".encode())
    elif isinstance(obj, float):
        h.update(f"F{obj.hex()}".encode())
    elif isinstance(obj, str):
        data = obj.encode("utf-8", "surrogatepass")
        h.update(f"S{len(data)}:".encode())
        h.update(data)
    else:
        raise TypeError(
            f"checkpoint entries must be tensors, dicts, lists, tuples, str, int, float, bool or None; "
            f"got {type(obj).__name__}"
        )


def content_digest(state: dict[str, Any]) -> str:
    """SHA-256 (hex) of the content of ``state`` (insertion order of dicts included).

    :raises TypeError: for an entry of a type a ``weights_only`` checkpoint cannot hold.
    """
    h = hashlib.sha256()
    _feed(h, state)
    return h.hexdigest()


def verify_zip(data: bytes) -> str | None:
    """The first problem of the zip archive ``data`` (a record whose CRC-32 does not match, a
    truncated or unreadable archive), or ``None`` when every record checks out."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, zlib.error, EOFError, ValueError, OSError, NotImplementedError,
            UnicodeDecodeError) as e:
        return f"unreadable zip archive ({e})"
    if bad is not None:
        return f"record {bad!r} fails its CRC-32 check (the data was altered after it was written)"
    return None


def pickle_record(data: bytes) -> bytes:
    """The pickle inside a ``torch.save`` archive (its ``data.pkl`` record), else ``data`` itself."""
    if zipfile.is_zipfile(io.BytesIO(data)):
        try:
            with zipfile.ZipFile(io.BytesIO(data)) as archive:
                names = [n for n in archive.namelist() if n.endswith("/data.pkl") or n == "data.pkl"]
                if names:
                    return archive.read(names[0])
        except (zipfile.BadZipFile, zlib.error, EOFError, ValueError, OSError):
            return b""
    return data


def pickle_globals(data: bytes) -> list[str] | None:
    """The ``module.name`` globals a well-formed pickle ``data`` imports, or ``None`` when ``data``
    is not a complete, well-formed pickle stream (read without executing anything)."""
    found: list[str] = []
    strings: list[str] = []
    try:
        for opcode, arg, _ in pickletools.genops(io.BytesIO(data)):
            if opcode.name == "GLOBAL" or opcode.name == "INST":
                found.append(str(arg).replace(" ", "."))
            elif opcode.name == "STACK_GLOBAL" and len(strings) >= 2:
                found.append(f"{strings[-2]}.{strings[-1]}")
            if isinstance(arg, str):
                strings.append(arg)
            if opcode.name == "STOP":
                return found
    except Exception:  # noqa: BLE001 - genops raises many kinds on garbage; all mean "not a pickle"
        return None
    return None
