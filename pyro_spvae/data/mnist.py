"""MNIST from the original IDX files: location, download with SHA-256 verification, splits.

MNIST (Yann LeCun, Corinna Cortes and Christopher J.C. Burges) is distributed under the Creative
Commons Attribution-Share Alike 3.0 licence (CC BY-SA 3.0).

Directory resolution (first match wins): the ``root`` argument, the environment variable
``PYRO_SPVAE_DATA``, then ``platformdirs.user_cache_dir("pyro-spvae")/mnist``. The directory holds
the four original files, gzip-compressed (``train-images-idx3-ubyte.gz``) or raw
(``train-images-idx3-ubyte``). Splits: ``train`` = the first 50,000 images of the training file,
``valid`` = its last 10,000, ``test`` = the 10,000 ``t10k`` images.
"""

from __future__ import annotations

import functools
import hashlib
import os
import tempfile
import urllib.request
from pathlib import Path

import numpy as np
import platformdirs
import torch

from pyro_spvae.validation import check_bool, check_choice

from .idx import decompress_if_gzip, parse_idx

__all__ = [
    "ENV_VAR",
    "MIRRORS",
    "MNIST_FILES",
    "SPLITS",
    "default_mnist_dir",
    "download_mnist",
    "load_mnist",
    "mnist_dir",
]

ENV_VAR = "PYRO_SPVAE_DATA"

#: Canonical public mirrors, tried in order.
MIRRORS: tuple[str, ...] = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
)

#: File stem -> SHA-256 of the DECOMPRESSED IDX file.
MNIST_FILES: dict[str, str] = {
    "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
}

SPLITS: tuple[str, ...] = ("train", "valid", "test")
_VALID_SIZE = 10_000
_SPLIT_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "valid": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}

# Indirection so tests can serve files without network access.
_urlopen = urllib.request.urlopen


def default_mnist_dir() -> Path:
    """The per-user cache directory used when neither ``root`` nor ``PYRO_SPVAE_DATA`` is set."""
    return Path(platformdirs.user_cache_dir("pyro-spvae")) / "mnist"


def mnist_dir(root: str | os.PathLike | None = None) -> Path:
    """Resolve the MNIST directory: ``root``, else ``$PYRO_SPVAE_DATA``, else :func:`default_mnist_dir`.

    :raises TypeError: when ``root`` is not a path.
    """
    if root is not None:
        if not isinstance(root, (str, os.PathLike)):
            raise TypeError(f"root must be a path (str or os.PathLike), got {type(root).__name__}")
        return Path(root).expanduser()
    env = os.environ.get(ENV_VAR, "").strip()
    if env:
        return Path(env).expanduser()
    return default_mnist_dir()


def _find_file(directory: Path, stem: str) -> Path | None:
    for candidate in (directory / stem, directory / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _missing(directory: Path) -> list[str]:
    return [stem for stem in MNIST_FILES if _find_file(directory, stem) is None]


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same directory and ``os.replace``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def _fetch_verified(stem: str, mirrors: tuple[str, ...], timeout: float) -> bytes:
    """Return the gzip bytes of ``stem`` from the first mirror whose content passes SHA-256."""
    failures = []
    for mirror in mirrors:
        url = mirror.rstrip("/") + f"/{stem}.gz"
        try:
            with _urlopen(url, timeout=timeout) as response:
                payload = response.read()
            digest = _sha256(decompress_if_gzip(payload, url))
        except (OSError, ValueError) as err:  # URLError, HTTPError, timeouts are OSErrors
            failures.append(f"{url}: {err}")
            continue
        if digest != MNIST_FILES[stem]:
            failures.append(f"{url}: SHA-256 mismatch (expected {MNIST_FILES[stem]}, got {digest})")
            continue
        return payload
    raise FileNotFoundError(f"could not download a verified copy of {stem}: " + "; ".join(failures))


def download_mnist(
    root: str | os.PathLike | None = None,
    mirrors: tuple[str, ...] = MIRRORS,
    timeout: float = 60.0,
) -> Path:
    """Download the missing MNIST files into the resolved directory, verifying their SHA-256.

    Each file is checked (decompressed content against :data:`MNIST_FILES`) before it is written,
    and written atomically, so a failed or corrupt download leaves no file behind.

    :param root: target directory (see :func:`mnist_dir`).
    :param mirrors: base URLs tried in order.
    :param timeout: per-request timeout in seconds.
    :returns: the directory.
    :raises FileNotFoundError: when a file cannot be fetched with the right checksum from any mirror
        (the message lists each mirror's failure), or cannot be written.
    :raises TypeError: when ``mirrors`` is a single string instead of a sequence of URLs.
    :raises ValueError: when ``mirrors`` is empty.
    """
    directory = mnist_dir(root)
    if isinstance(mirrors, (str, bytes)):
        raise TypeError("mirrors must be a sequence of base URLs, not a single string")
    if not mirrors:
        raise ValueError("mirrors must name at least one base URL")
    for stem in _missing(directory):
        payload = _fetch_verified(stem, tuple(mirrors), timeout)
        try:
            _atomic_write(directory / f"{stem}.gz", payload)
        except OSError as err:
            raise FileNotFoundError(f"could not write {stem}.gz into {directory}: {err}") from err
    return directory


@functools.lru_cache(maxsize=4)
def _read_cached(path: str, mtime_ns: int, size: int, verify: bool, expected_ndim: int) -> np.ndarray:
    try:
        raw = Path(path).read_bytes()
    except OSError as err:  # permissions, I/O errors: the file is there but unusable
        raise ValueError(f"{path}: cannot read the file ({err.strerror})") from None
    data = decompress_if_gzip(raw, path)
    stem = Path(path).name.removesuffix(".gz")
    if verify:
        digest = _sha256(data)
        if digest != MNIST_FILES[stem]:
            raise ValueError(
                f"{path}: SHA-256 mismatch (expected {MNIST_FILES[stem]}, got {digest}); the file is "
                "corrupt or not the original MNIST file: delete it to download it again, or pass "
                "verify=False"
            )
    return parse_idx(data, path, expected_ndim)


def _read(path: Path, verify: bool, expected_ndim: int) -> np.ndarray:
    st = path.stat()
    return _read_cached(str(path), st.st_mtime_ns, st.st_size, verify, expected_ndim)


def _not_found_message(directory: Path, missing: list[str], reason: str) -> str:
    return (
        f"MNIST files {missing} not found in {directory} (looked for the original IDX names, raw or "
        f".gz). Pass root=..., set the environment variable {ENV_VAR}, or allow download=True. "
        f"{reason}"
    )


def load_mnist(
    split: str,
    root: str | os.PathLike | None = None,
    download: bool = True,
    verify: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Load one MNIST split as tensors.

    :param split: ``"train"`` (first 50,000 training images), ``"valid"`` (last 10,000) or
        ``"test"`` (the 10,000 ``t10k`` images).
    :param root: directory of the IDX files (see :func:`mnist_dir`).
    :param download: fetch missing files from :data:`MIRRORS` (SHA-256 verified).
    :param verify: check the SHA-256 of local files too.
    :returns: ``images`` of shape ``(N, 1, 28, 28)`` and dtype ``uint8``, and ``labels`` of shape
        ``(N,)`` and dtype ``int64``.
    :raises ValueError: for an unknown split, or a file that is present but unreadable, corrupt
        (gzip stream, IDX header or payload), truncated, or fails its SHA-256 check: the message
        names the file and the problem. This is the whole error contract of the MNIST files:
        ``ValueError`` for a bad file, ``FileNotFoundError`` for a missing one.
    :raises FileNotFoundError: when files are missing and cannot be downloaded.
    """
    check_choice("MNIST split", split, SPLITS)
    check_bool("download", download)
    directory = mnist_dir(root)
    images_stem, labels_stem = _SPLIT_FILES[split]
    missing = [s for s in (images_stem, labels_stem) if _find_file(directory, s) is None]
    if missing:
        if not download:
            raise FileNotFoundError(_not_found_message(directory, missing, "Download disabled."))
        try:
            download_mnist(directory)
        except OSError as err:
            message = _not_found_message(directory, missing, f"Download failed: {err}")
            raise FileNotFoundError(message) from err
    images_path = _find_file(directory, images_stem)
    labels_path = _find_file(directory, labels_stem)
    assert images_path is not None and labels_path is not None
    images = _read(images_path, verify, 3)
    labels = _read(labels_path, verify, 1)
    if images.shape[1:] != (28, 28):
        raise ValueError(f"{images_path}: images have shape {images.shape[1:]}, expected (28, 28)")
    if labels.shape[0] != images.shape[0]:
        raise ValueError(
            f"{labels_path}: {labels.shape[0]} labels for {images.shape[0]} images in {images_path}"
        )
    if labels.size and int(labels.max()) > 9:
        raise ValueError(f"{labels_path}: label {int(labels.max())} out of range 0..9")
    if split == "test":
        sl = slice(None)
    else:
        if images.shape[0] <= _VALID_SIZE:
            raise ValueError(
                f"{images_path}: {images.shape[0]} training images, need more than {_VALID_SIZE} "
                "to split off the validation set"
            )
        sl = slice(None, -_VALID_SIZE) if split == "train" else slice(-_VALID_SIZE, None)
    x = torch.from_numpy(np.array(images[sl], copy=True)).unsqueeze(1)
    y = torch.from_numpy(labels[sl].astype(np.int64))
    return x, y
