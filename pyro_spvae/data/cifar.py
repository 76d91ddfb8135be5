"""CIFAR-10 (Krizhevsky, 2009) from its binary version, split as in the SPVAE reference code.

Files ("CIFAR-10 binary version", https://www.cs.toronto.edu/~kriz/cifar.html):
``cifar-10-binary.tar.gz`` unpacks to ``cifar-10-batches-bin/`` holding ``data_batch_1.bin`` to
``data_batch_5.bin`` and ``test_batch.bin``, 10,000 images each. A record is 3,073 bytes: the label
byte (``0..9``), then the 1,024 red, 1,024 green and 1,024 blue bytes, each plane 32x32 row-major.
No pickle is involved. The directory may hold the ``.bin`` files themselves, a
``cifar-10-batches-bin`` folder with them, or the archive ``cifar-10-binary.tar.gz`` itself (read
in place, without unpacking); they are looked for in that order.

Splits, as in the SPVAE reference (Tan & Peharz 2019, ``data/cifar10/download_and_process_cifar10.py``;
see ``docs/spvae.md``): the reference holds out a random 10,000 of the 50,000 training images
(``data_batch_1`` to ``_5`` concatenated in order) and commits their indices
(``data/cifar10/indices/combined/validation.indx``, sorted). Those exact indices ship with this
package (``cifar10_valid_index.npz``, see :func:`cifar10_valid_index`), so ``valid`` is that same
10,000 and ``train`` the other 40,000, both in the original order (the reference's ``train.indx`` is
exactly that sorted complement); ``test`` is ``test_batch``'s 10,000.

Greyscale: the reference's stored CIFAR-10 data are 1,024-dimensional (greyscale 32x32), although
its committed script never converts them. The step is taken to be the one its SVHN script uses,
Pillow's ``convert("L")`` (:func:`~pyro_spvae.data.rgb_to_grayscale`), applied before the per-image
min-max of the SPVAE transforms.

Directory resolution (first match wins): the ``root`` argument, the environment variable
``PYRO_SPVAE_CIFAR10``, then ``platformdirs.user_cache_dir("pyro-spvae")/cifar10``. Nothing is
downloaded: fetch ``cifar-10-binary.tar.gz`` by hand into that directory.
"""

from __future__ import annotations

import os
import tarfile
import zlib
from pathlib import Path

import numpy as np
import platformdirs
import torch

from pyro_spvae.validation import check_bool, check_choice, check_integer_dtype

from .mnist import SPLITS
from .transforms import rgb_to_grayscale

__all__ = [
    "CIFAR10_ARCHIVE",
    "CIFAR10_ENV_VAR",
    "CIFAR10_TEST_FILE",
    "CIFAR10_TRAIN_FILES",
    "CIFAR10_URL",
    "cifar10_dir",
    "cifar10_valid_index",
    "load_cifar10",
]

CIFAR10_ENV_VAR = "PYRO_SPVAE_CIFAR10"
CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar.html"
CIFAR10_ARCHIVE = "cifar-10-binary.tar.gz"
CIFAR10_TRAIN_FILES: tuple[str, ...] = tuple(f"data_batch_{i}.bin" for i in range(1, 6))
CIFAR10_TEST_FILE = "test_batch.bin"
_SUBDIR = "cifar-10-batches-bin"
_RECORD_BYTES = 1 + 3 * 32 * 32
_RECORDS_PER_FILE = 10_000
_VALID_INDEX_PATH = Path(__file__).with_name("cifar10_valid_index.npz")
_VALID_SIZE, _TRAIN_TOTAL = 10_000, 50_000


def cifar10_dir(root: str | os.PathLike | None = None) -> Path:
    """The CIFAR-10 directory: ``root``, else ``$PYRO_SPVAE_CIFAR10``, else the user cache's ``cifar10``.

    :raises TypeError: when ``root`` is not a path.
    """
    if root is not None:
        if not isinstance(root, (str, os.PathLike)):
            raise TypeError(f"root must be a path (str or os.PathLike), got {type(root).__name__}")
        return Path(root).expanduser()
    env = os.environ.get(CIFAR10_ENV_VAR, "").strip()
    if env:
        return Path(env).expanduser()
    return Path(platformdirs.user_cache_dir("pyro-spvae")) / "cifar10"


def cifar10_valid_index() -> torch.Tensor:
    """The SPVAE reference's 10,000 validation images: sorted positions in the 50,000 training
    images (``data_batch_1`` to ``_5`` in order), from its ``validation.indx``.

    :returns: ``int64`` tensor of shape ``(10000,)``, strictly increasing, in ``[0, 50000)``.
    :raises FileNotFoundError: when the package was installed without its data file.
    :raises ValueError: when that file is damaged.
    """
    if not _VALID_INDEX_PATH.is_file():
        raise FileNotFoundError(f"{_VALID_INDEX_PATH} is missing: reinstall pyro-spvae with its package data")
    with np.load(_VALID_INDEX_PATH, allow_pickle=False) as archive:
        index = archive["valid_index"].astype(np.int64) if "valid_index" in archive.files else None
    if (
        index is None
        or index.shape != (_VALID_SIZE,)
        or np.any(np.diff(index) <= 0)
        or index[0] < 0
        or index[-1] >= _TRAIN_TOTAL
    ):
        raise ValueError(f"{_VALID_INDEX_PATH} is damaged: expected {_VALID_SIZE} sorted indices below 50000")
    return torch.from_numpy(index)


def _not_found(directory: Path, missing: list[str]) -> FileNotFoundError:
    return FileNotFoundError(
        f"CIFAR-10 binary files {missing} not found in {directory} (nor in {directory / _SUBDIR}), and no "
        f"{CIFAR10_ARCHIVE} there: download the CIFAR-10 binary version ({CIFAR10_ARCHIVE}) from "
        f"{CIFAR10_URL} into {directory} (it may stay packed), or pass root=... or set {CIFAR10_ENV_VAR}"
    )


def _read_archive(archive: Path, names: tuple[str, ...]) -> dict[str, tuple[str, bytes]]:
    """``name -> (source, bytes)`` of the members ``cifar-10-batches-bin/<name>`` of the archive."""
    wanted = {f"{_SUBDIR}/{name}": name for name in names}
    found: dict[str, tuple[str, bytes]] = {}
    try:
        with tarfile.open(archive, "r:*") as tar:
            for member in tar:
                key = member.name.removeprefix("./")
                if key in wanted and member.isfile():
                    handle = tar.extractfile(member)
                    assert handle is not None  # a regular file member always has one
                    found[wanted[key]] = (f"{archive}:{key}", handle.read())
                    if len(found) == len(wanted):
                        break
    except (tarfile.TarError, OSError, EOFError, zlib.error) as err:
        raise ValueError(f"{archive}: unreadable, truncated or corrupt archive ({err})") from None
    missing = [name for name in names if name not in found]
    if missing:
        raise ValueError(f"{archive}: the archive has no {[f'{_SUBDIR}/{m}' for m in missing]}")
    return found


def _read_files(directory: Path, names: tuple[str, ...]) -> dict[str, tuple[str, bytes]]:
    """``name -> (source, bytes)`` for each batch file, from the first location that has them all."""
    missing_per_base = []
    for base in (directory, directory / _SUBDIR):
        missing = [name for name in names if not (base / name).is_file()]
        if not missing:
            found = {}
            for name in names:
                try:
                    found[name] = (str(base / name), (base / name).read_bytes())
                except OSError as err:  # permissions, I/O errors: the file is there but unusable
                    raise ValueError(f"{base / name}: cannot read the file ({err.strerror})") from None
            return found
        missing_per_base.append(missing)
    if (directory / CIFAR10_ARCHIVE).is_file():
        return _read_archive(directory / CIFAR10_ARCHIVE, names)
    raise _not_found(directory, min(missing_per_base, key=len))


def _parse_batch(source: str, data: bytes) -> tuple[np.ndarray, np.ndarray]:
    """``(images (n, 3, 32, 32) uint8, labels (n,) uint8)`` of one binary batch (read-only views)."""
    expected = _RECORDS_PER_FILE * _RECORD_BYTES
    if len(data) != expected:
        raise ValueError(
            f"{source}: {len(data)} bytes, expected {expected} ({_RECORDS_PER_FILE} records of "
            f"{_RECORD_BYTES} bytes: a label byte and 3x32x32 pixels); the file is truncated or not a "
            "CIFAR-10 binary batch"
        )
    records = np.frombuffer(data, dtype=np.uint8).reshape(_RECORDS_PER_FILE, _RECORD_BYTES)
    labels = records[:, 0]
    if labels.size and int(labels.max()) > 9:
        row = int(np.argmax(labels > 9))
        raise ValueError(
            f"{source}: label {int(labels[row])} in record {row} is not in 0..9; not a CIFAR-10 binary batch"
        )
    return records[:, 1:].reshape(-1, 3, 32, 32), labels


def _split_rows(n: int, split: str, valid_index: torch.Tensor | None) -> np.ndarray:
    """Sorted rows of the ``n`` training images that form ``split`` (``train`` or ``valid``)."""
    index = cifar10_valid_index() if valid_index is None else check_integer_dtype("valid_index", valid_index)
    if index.dim() != 1 or index.numel() == 0:
        raise ValueError(f"valid_index must be a non-empty 1-D tensor, got shape {tuple(index.shape)}")
    if int(index.min()) < 0 or int(index.max()) >= n:
        raise ValueError(f"valid_index must lie in [0, {n}) for {n} training images")
    if torch.unique(index).numel() != index.numel():
        raise ValueError("valid_index must not repeat an image")
    mask = torch.zeros(n, dtype=torch.bool)
    mask[index.long()] = True
    return torch.nonzero(mask if split == "valid" else ~mask).squeeze(1).numpy()


def load_cifar10(
    split: str,
    root: str | os.PathLike | None = None,
    grayscale: bool = True,
    valid_index: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Load one CIFAR-10 split as tensors (see the module docstring for files and splits).

    :param split: ``"train"`` (40,000 images), ``"valid"`` (the reference's 10,000 held-out training
        images) or ``"test"`` (10,000).
    :param root: directory of the binary batches or of their archive (see :func:`cifar10_dir`).
    :param grayscale: convert to greyscale with :func:`~pyro_spvae.data.rgb_to_grayscale` (the
        reference's data are greyscale) instead of keeping RGB.
    :param valid_index: positions in the 50,000 training images of the validation images, an
        integer tensor of shape ``(V,)`` (default :func:`cifar10_valid_index`, the reference's).
        ``train`` is the complement; both keep the original order.
    :returns: ``images``, ``uint8`` of shape ``(N, 1, 32, 32)`` (``(N, 3, 32, 32)`` in RGB), and
        ``labels``, ``int64`` classes ``0..9`` of shape ``(N,)``.
    :raises ValueError: for an unknown split, a bad ``valid_index``, or a file that is unreadable,
        truncated or not a CIFAR-10 binary batch (the message names the file).
    :raises TypeError: for a ``root`` that is not a path, a non-bool ``grayscale`` or a
        ``valid_index`` that is not a tensor.
    :raises FileNotFoundError: when the files are missing (the message names the directory and
        where to download them).
    """
    check_choice("CIFAR-10 split", split, SPLITS)
    check_bool("grayscale", grayscale)
    names = (CIFAR10_TEST_FILE,) if split == "test" else CIFAR10_TRAIN_FILES
    files = _read_files(cifar10_dir(root), names)
    batches = [_parse_batch(*files[name]) for name in names]
    images = np.concatenate([b[0] for b in batches])  # copies: writable for torch
    labels = np.concatenate([b[1] for b in batches]).astype(np.int64)
    if split != "test":
        rows = _split_rows(images.shape[0], split, valid_index)
        images, labels = images[rows], labels[rows]
    x = torch.from_numpy(images)
    return (rgb_to_grayscale(x) if grayscale else x), torch.from_numpy(labels)
