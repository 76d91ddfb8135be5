"""SVHN (Netzer et al., 2011) from its original MATLAB files, read by a minimal MAT 5.0 reader.

Files ("format 2: cropped digits", http://ufldl.stanford.edu/housenumbers/, for non-commercial use):
``train_32x32.mat``, ``test_32x32.mat`` and ``extra_32x32.mat``. Each holds ``X``, ``uint8`` of
MATLAB shape ``(32, 32, 3, N)`` (row, column, channel, image), and ``y``, of shape ``(N, 1)``, the
digit labels ``1..10`` where ``10`` stands for the digit 0 (read here as 0). The published files
are MAT 5.0 files with zlib-compressed variables (``miCOMPRESSED``); uncompressed MAT 5.0 files
(``scipy.io.savemat``'s default) are read too, MAT 7.3 (HDF5) files are not.

Splits, as in the SPVAE reference code (Tan & Peharz 2019, ``data/svhn/download_and_process_svhn.py``;
see ``docs/spvae.md``): ``train`` = the 73,257 images of ``train_32x32``, ``valid`` = the first
26,032 images of ``extra_32x32`` (only that prefix is decompressed, not the whole 1.3 GB file),
``test`` = the 26,032 images of ``test_32x32``.

Directory resolution (first match wins): the ``root`` argument, the environment variable
``PYRO_SPVAE_SVHN``, then ``platformdirs.user_cache_dir("pyro-spvae")/svhn``. Nothing is downloaded:
fetch the three files by hand into that directory.
"""

from __future__ import annotations

import math
import os
import struct
import zlib
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import platformdirs
import torch

from pyro_spvae.validation import check_bool, check_choice, check_positive_int

from .mnist import SPLITS
from .transforms import rgb_to_grayscale

__all__ = [
    "SVHN_ENV_VAR", "SVHN_FILES", "SVHN_URL", "SVHN_VALID_SIZE", "load_svhn", "read_mat_v5", "svhn_dir",
]

SVHN_ENV_VAR = "PYRO_SPVAE_SVHN"
SVHN_URL = "http://ufldl.stanford.edu/housenumbers/"
#: Split -> file (``valid`` uses a prefix of ``extra``).
SVHN_FILES: dict[str, str] = {
    "train": "train_32x32.mat", "valid": "extra_32x32.mat", "test": "test_32x32.mat",
}
#: Number of leading ``extra_32x32`` images that form the validation split (as the reference).
SVHN_VALID_SIZE = 26_032

_HEADER_BYTES = 128
_MI_UINT32, _MI_INT32, _MI_MATRIX, _MI_COMPRESSED = 6, 5, 14, 15
#: MAT data types (``miINT8`` ...) -> numpy type codes.
_MI_TYPES = {1: "i1", 2: "u1", 3: "i2", 4: "u2", 5: "i4", 6: "u4", 7: "f4", 9: "f8", 12: "i8", 13: "u8"}
#: MATLAB numeric array classes (``mxDOUBLE_CLASS`` ...) -> numpy type codes.
_MX_CLASSES = {6: "f8", 7: "f4", 8: "i1", 9: "u1", 10: "i2", 11: "u2", 12: "i4", 13: "u4", 14: "i8", 15: "u8"}
_MAX_META_BYTES = 1 << 16  # flags, dimensions and names are tiny; more means a corrupt file
_CHUNK = 1 << 20
_MAX_DEFLATE_RATIO = 1032  # deflate expands at most ~1032-fold: bounds what a corrupt size may claim


class _ElementStream:
    """The bytes of one top-level MAT element, read from the file or inflated on the fly."""

    def __init__(self, f, nbytes: int, compressed: bool, source: Path):
        self._f, self._left, self._source = f, nbytes, source
        self._inflate = zlib.decompressobj() if compressed else None
        self._bound = nbytes * (_MAX_DEFLATE_RATIO if compressed else 1)  # bytes the element can yield
        self._pending = b""

    def read(self, n: int, what: str) -> bytearray:
        """Exactly ``n`` bytes; :raises ValueError: (naming the file) when the element ends first."""
        if n > self._bound:  # checked before allocating what a corrupt size field claims
            raise ValueError(f"{self._source}: truncated or corrupt MAT file ({what} ends early)")
        self._bound -= n
        out = bytearray(n)
        view = memoryview(out)
        pos = 0
        while pos < n:
            if self._inflate is None:
                got = self._f.readinto(view[pos : pos + min(n - pos, self._left)]) if self._left else 0
                self._left -= got
            else:
                got = self._inflate_into(view[pos:], what)
            if not got:
                raise ValueError(f"{self._source}: truncated or corrupt MAT file ({what} ends early)")
            pos += got
        return out

    def _inflate_into(self, view: memoryview, what: str) -> int:
        z = self._inflate
        while True:
            if not self._pending and self._left:
                self._pending = self._f.read(min(self._left, _CHUNK))
                self._left = self._left - len(self._pending) if self._pending else 0
            try:
                chunk = z.decompress(self._pending, len(view))
            except zlib.error as err:
                raise ValueError(f"{self._source}: corrupt compressed data in {what} ({err})") from None
            self._pending = z.unconsumed_tail
            if chunk:
                view[: len(chunk)] = chunk
                return len(chunk)
            if z.eof or not (self._pending or self._left):
                return 0

    def tag(self, endian: str, what: str) -> tuple[int, int, bytes | None]:
        """``(data type, byte count, inline data)``; the data is inline (``bytes``) only for the
        "small data element" format (at most 4 bytes packed into the tag)."""
        raw = self.read(8, what)
        mtype, nbytes = struct.unpack(endian + "II", raw)
        if mtype >> 16:
            nbytes, mtype = mtype >> 16, mtype & 0xFFFF
            if nbytes > 4:
                raise ValueError(f"{self._source}: corrupt MAT file (bad small element tag in {what})")
            return mtype, nbytes, bytes(raw[4 : 4 + nbytes])
        return mtype, nbytes, None

    def element(self, endian: str, what: str) -> tuple[int, bytes]:
        """A small sub-element (flags, dimensions, name) with its padding to 8 bytes consumed."""
        mtype, nbytes, inline = self.tag(endian, what)
        if inline is not None:
            return mtype, inline
        if nbytes > _MAX_META_BYTES:
            raise ValueError(f"{self._source}: corrupt MAT file ({what} of {nbytes} bytes)")
        return mtype, bytes(self.read(nbytes + (-nbytes) % 8, what))[:nbytes]


def _read_header(f, path: Path) -> str:
    header = f.read(_HEADER_BYTES)
    if len(header) < _HEADER_BYTES:
        raise ValueError(f"{path}: too short for a MAT file ({len(header)} bytes, the header needs 128)")
    indicator = header[126:128]
    if indicator not in (b"IM", b"MI"):
        raise ValueError(f"{path}: not a MAT 5.0 file (no endian indicator in the 128-byte header)")
    endian = "<" if indicator == b"IM" else ">"
    version = struct.unpack(endian + "H", header[124:126])[0]
    if version == 0x0200:
        raise ValueError(f"{path}: a MAT 7.3 (HDF5) file; only MAT 5.0 files (MATLAB -v7 or -v6) are read")
    if version != 0x0100:
        raise ValueError(f"{path}: unsupported MAT file version 0x{version:04x} (expected 0x0100)")
    return endian


def _matrix_header(stream: _ElementStream, endian: str, path: Path) -> tuple[str, int, bool, tuple[int, ...]]:
    """``(name, class code, complex flag, dims)`` from the first three sub-elements of a matrix."""
    flags_type, flags = stream.element(endian, "array flags")
    dims_type, dims_raw = stream.element(endian, "array dimensions")
    _, name_raw = stream.element(endian, "array name")
    if flags_type != _MI_UINT32 or len(flags) != 8 or dims_type != _MI_INT32 or len(dims_raw) % 4:
        raise ValueError(f"{path}: corrupt MAT file (bad array flags or dimensions)")
    word = struct.unpack(endian + "I", flags[:4])[0]
    dims = struct.unpack(f"{endian}{len(dims_raw) // 4}i", dims_raw)
    if len(dims) < 2 or min(dims) < 0:
        raise ValueError(f"{path}: corrupt MAT file (array dimensions {dims})")
    return name_raw.decode("latin-1"), word & 0xFF, bool(word & 0x800), dims


def _read_array(
    stream: _ElementStream, endian: str, path: Path, header: tuple, max_items: int | None
) -> np.ndarray:
    """The real part of a numeric matrix, cut to ``max_items`` along its last non-singleton axis
    (a prefix in MATLAB's column-major order), in the array's class dtype."""
    name, mx_class, is_complex, dims = header
    if mx_class not in _MX_CLASSES or is_complex:
        raise ValueError(f"{path}: variable {name!r} is not a real numeric array (MATLAB class {mx_class})")
    axis = max((i for i, d in enumerate(dims) if d != 1), default=len(dims) - 1)
    keep = dims[axis] if max_items is None else min(dims[axis], max_items)
    shape = dims[:axis] + (keep,) + dims[axis + 1 :]
    mtype, nbytes, inline = stream.tag(endian, f"data of {name!r}")
    if mtype not in _MI_TYPES:
        raise ValueError(f"{path}: variable {name!r} has unsupported MAT data type {mtype}")
    dtype = np.dtype(endian + _MI_TYPES[mtype])
    if nbytes != math.prod(dims) * dtype.itemsize:
        raise ValueError(
            f"{path}: corrupt MAT file: variable {name!r} of shape {dims} stores {nbytes} bytes of "
            f"{dtype.name}, expected {math.prod(dims) * dtype.itemsize}"
        )
    count = math.prod(shape)
    if inline is not None:
        raw = bytearray(inline)  # writable, for torch.from_numpy
    else:
        raw = stream.read(count * dtype.itemsize, f"variable {name!r}")
    values = np.frombuffer(raw, dtype=dtype, count=count).astype(_MX_CLASSES[mx_class], copy=False)
    return values.reshape(shape, order="F")


def read_mat_v5(
    path: str | os.PathLike, names: Iterable[str], max_items: int | None = None
) -> dict[str, np.ndarray]:
    """Read real numeric variables from a MAT 5.0 file (compressed or not, either byte order).

    Variables not in ``names`` are skipped without being decompressed.

    :param path: the ``.mat`` file.
    :param names: the variables to read.
    :param max_items: when given, read only the first ``max_items`` entries along each array's last
        non-singleton axis (e.g. the first images of ``X`` of shape ``(32, 32, 3, N)`` and the
        first labels of ``y`` of shape ``(N, 1)``).
    :returns: name -> array in MATLAB's shape (Fortran order) and its class dtype (a ``double``
        stored as bytes, as MATLAB compresses it, comes back as ``float64``).
    :raises FileNotFoundError: when ``path`` does not exist.
    :raises ValueError: naming the file for an unreadable, truncated or corrupt file, a MAT 7.3 or
        other unsupported file, a missing or non-numeric variable.
    """
    path = Path(path)
    wanted = set(names)
    if max_items is not None:
        max_items = check_positive_int("max_items", max_items)
    if not path.is_file():
        raise FileNotFoundError(f"MAT file not found: {path}")
    try:
        with open(path, "rb") as f:
            found = _read_variables(f, path, wanted, max_items)
    except OSError as err:  # permissions, I/O errors: the file is there but unusable
        raise ValueError(f"{path}: cannot read the file ({err})") from None
    missing = sorted(wanted - found.keys())
    if missing:
        raise ValueError(f"{path}: the MAT file has no variable {missing} (found {sorted(found)})")
    return found


def _read_variables(f, path: Path, wanted: set[str], max_items: int | None) -> dict[str, np.ndarray]:
    """Walk the top-level elements of an open MAT file until every wanted variable is read."""
    found: dict[str, np.ndarray] = {}
    size = os.fstat(f.fileno()).st_size
    endian = _read_header(f, path)
    while wanted - found.keys():
        tag = f.read(8)
        if len(tag) < 8:
            if tag:
                raise ValueError(f"{path}: truncated MAT file (partial element tag at the end)")
            break
        mtype, nbytes = struct.unpack(endian + "II", tag)
        start = f.tell()
        if start + nbytes > size:
            raise ValueError(
                f"{path}: truncated MAT file: an element of {nbytes} bytes at offset {start - 8} runs "
                f"past the end of the file ({size} bytes)"
            )
        if mtype in (_MI_MATRIX, _MI_COMPRESSED) and nbytes:
            stream = _ElementStream(f, nbytes, mtype == _MI_COMPRESSED, path)
            is_matrix = mtype == _MI_MATRIX or stream.tag(endian, "compressed element")[0] == _MI_MATRIX
            header = _matrix_header(stream, endian, path) if is_matrix else None
            if header is not None and header[0] in wanted and header[0] not in found:
                found[header[0]] = _read_array(stream, endian, path, header, max_items)
        f.seek(start + nbytes)
    return found


def svhn_dir(root: str | os.PathLike | None = None) -> Path:
    """The SVHN directory: ``root``, else ``$PYRO_SPVAE_SVHN``, else the user cache's ``svhn``.

    :raises TypeError: when ``root`` is not a path.
    """
    if root is not None:
        if not isinstance(root, (str, os.PathLike)):
            raise TypeError(f"root must be a path (str or os.PathLike), got {type(root).__name__}")
        return Path(root).expanduser()
    env = os.environ.get(SVHN_ENV_VAR, "").strip()
    if env:
        return Path(env).expanduser()
    return Path(platformdirs.user_cache_dir("pyro-spvae")) / "svhn"


def _check_svhn(path: Path, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``X`` as ``(N, 3, 32, 32)`` (a view) and ``y`` as ``int64`` digits ``0..9``."""
    if x.dtype != np.uint8 or x.ndim != 4 or x.shape[:3] != (32, 32, 3):
        raise ValueError(f"{path}: X is {x.dtype} of shape {x.shape}, expected uint8 of shape (32, 32, 3, N)")
    n = x.shape[3]
    if y.shape != (n, 1):
        raise ValueError(f"{path}: y has shape {y.shape}, expected ({n}, 1) to match X")
    bad = ~((y >= 1) & (y <= 10) & (y == np.round(y)))
    if bad.any():
        raise ValueError(f"{path}: label {float(y[bad][0]):g} in y is not one of 1..10 (10 = digit 0)")
    return x.transpose(3, 2, 0, 1), (y[:, 0].astype(np.int64) % 10)


def load_svhn(
    split: str, root: str | os.PathLike | None = None, grayscale: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """Load one SVHN split as tensors (see the module docstring for files and splits).

    :param split: ``"train"`` (73,257 images), ``"valid"`` (the first :data:`SVHN_VALID_SIZE` =
        26,032 images of ``extra_32x32.mat``) or ``"test"`` (26,032 images).
    :param root: directory of the ``.mat`` files (see :func:`svhn_dir`).
    :param grayscale: convert to greyscale with :func:`~pyro_spvae.data.rgb_to_grayscale`
        (Pillow's ``convert("L")``, as the SPVAE reference does) instead of keeping RGB.
    :returns: ``images``, ``uint8`` of shape ``(N, 1, 32, 32)`` (``(N, 3, 32, 32)`` in RGB), row
        ``H`` and column ``W`` as in the MATLAB arrays, and ``labels``, ``int64`` digits ``0..9``
        of shape ``(N,)`` (the files' label 10 is the digit 0).
    :raises ValueError: for an unknown split, or a file that is unreadable, truncated, corrupt or
        not in the SVHN layout (the message names the file).
    :raises TypeError: for a ``root`` that is not a path or a non-bool ``grayscale``.
    :raises FileNotFoundError: when the split's file is missing (the message names the path and
        where to download it).
    """
    check_choice("SVHN split", split, SPLITS)
    check_bool("grayscale", grayscale)
    path = svhn_dir(root) / SVHN_FILES[split]
    if not path.is_file():
        raise FileNotFoundError(
            f"SVHN file {path} not found: download {SVHN_FILES[split]} (format 2, cropped digits) from "
            f"{SVHN_URL} into {path.parent}, or pass root=... or set {SVHN_ENV_VAR}"
        )
    arrays = read_mat_v5(path, ("X", "y"), max_items=SVHN_VALID_SIZE if split == "valid" else None)
    x, y = _check_svhn(path, arrays["X"], arrays["y"])
    if split == "valid" and x.shape[0] < SVHN_VALID_SIZE:
        raise ValueError(
            f"{path}: {x.shape[0]} images, the validation split needs the first {SVHN_VALID_SIZE}"
        )
    images = torch.from_numpy(x)
    images = rgb_to_grayscale(images) if grayscale else images.contiguous()
    return images, torch.from_numpy(y)
