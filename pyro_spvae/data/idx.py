"""Reader for the IDX binary format of the MNIST files.

An IDX file starts with a 4-byte magic number ``0x00 0x00 <type> <ndim>`` followed by ``ndim``
big-endian ``uint32`` dimension sizes and the row-major payload. Only the unsigned-byte type
(``0x08``), the one MNIST uses, is supported. Files may be gzip-compressed (detected from the gzip
magic bytes, whatever the file name).
"""

from __future__ import annotations

import gzip
import math
import zlib
from pathlib import Path

import numpy as np

__all__ = ["parse_idx", "read_idx", "decompress_if_gzip"]

_GZIP_MAGIC = b"\x1f\x8b"
_UBYTE = 0x08
_TYPE_NAMES = {0x08: "ubyte", 0x09: "byte", 0x0B: "short", 0x0C: "int", 0x0D: "float", 0x0E: "double"}


def decompress_if_gzip(data: bytes, source: str = "<bytes>") -> bytes:
    """Return ``data`` decompressed when it starts with the gzip magic bytes, else unchanged.

    :param data: raw file contents.
    :param source: name used in error messages.
    :raises TypeError: when ``data`` is not ``bytes``.
    :raises ValueError: when the gzip stream is corrupt or truncated.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"{source}: expected bytes, got {type(data).__name__}")
    data = bytes(data)
    if not data.startswith(_GZIP_MAGIC):
        return data
    try:
        return gzip.decompress(data)
    except (OSError, EOFError, zlib.error) as err:
        raise ValueError(f"{source}: corrupt or truncated gzip data ({err})") from err


def parse_idx(data: bytes, source: str = "<bytes>", expected_ndim: int | None = None) -> np.ndarray:
    """Parse the contents of an (uncompressed or gzip-compressed) IDX file.

    :param data: file contents.
    :param source: name used in error messages (e.g. the file path).
    :param expected_ndim: when given, the number of dimensions the file must declare.
    :returns: a read-only ``uint8`` array of the declared shape, e.g. ``(N, 28, 28)`` for images
        and ``(N,)`` for labels.
    :raises TypeError: when ``data`` is not ``bytes``.
    :raises ValueError: when the magic number, the element type, the dimensions or the payload
        length are invalid.
    """
    data = decompress_if_gzip(data, source)
    if len(data) < 4:
        raise ValueError(f"{source}: too short for an IDX header ({len(data)} bytes, need at least 4)")
    if data[0] != 0 or data[1] != 0:
        raise ValueError(
            f"{source}: bad IDX magic number {data[:4].hex()} (must start with 0000); not an IDX file"
        )
    dtype_code, ndim = data[2], data[3]
    if dtype_code != _UBYTE:
        kind = _TYPE_NAMES.get(dtype_code, f"unknown code 0x{dtype_code:02x}")
        raise ValueError(f"{source}: unsupported IDX element type {kind}; only unsigned bytes (0x08)")
    if ndim == 0:
        raise ValueError(f"{source}: IDX header declares 0 dimensions")
    if expected_ndim is not None and ndim != expected_ndim:
        raise ValueError(f"{source}: IDX file has {ndim} dimensions, expected {expected_ndim}")
    header_len = 4 + 4 * ndim
    if len(data) < header_len:
        raise ValueError(f"{source}: truncated IDX header ({len(data)} bytes, need {header_len})")
    shape = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    expected = math.prod(shape)
    payload = len(data) - header_len
    if payload != expected:
        what = "truncated" if payload < expected else "trailing bytes in"
        raise ValueError(
            f"{source}: {what} IDX payload: header shape {shape} needs {expected} bytes, found {payload}"
        )
    array = np.frombuffer(data, dtype=np.uint8, offset=header_len).reshape(shape)
    return array


def read_idx(path: str | Path, expected_ndim: int | None = None) -> np.ndarray:
    """Read an IDX file (raw or ``.gz``) from disk; see :func:`parse_idx`.

    :raises FileNotFoundError: when ``path`` does not exist.
    :raises ValueError: when the file is not a valid IDX file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"IDX file not found: {path}")
    return parse_idx(path.read_bytes(), str(path), expected_ndim)
