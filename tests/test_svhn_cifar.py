"""SVHN (MATLAB files) and CIFAR-10 (binary batches) loaders, on small files written here in the
same formats, and the greyscale step of the SPVAE reference preprocessing."""

import hashlib
import io
import struct
import tarfile
import zlib
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pyro_spvae.data import (
    DATASETS,
    cifar10_valid_index,
    get_transform,
    load_cifar10,
    load_dataset,
    load_svhn,
    read_mat_v5,
    rgb_to_grayscale,
)
from pyro_spvae.data import cifar as cifar_module
from pyro_spvae.data import svhn as svhn_module
from pyro_spvae.training import TrainConfig

# SHA-256 of data/cifar10/indices/combined/validation.indx in cambridge-mlg/SPVAE (commit 2c2eac6).
REFERENCE_VALIDATION_INDX_SHA256 = "d87589542176aa0515f39ddfe310f9b437f54c6aa794635f8e7136e8608a673e"


# ----------------------------------------------------------------------------- writers


def svhn_arrays(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``X`` (32, 32, 3, n) uint8 and ``y`` (n, 1) float64 in 1..10 (every label occurs if n >= 10)."""
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, (32, 32, 3, n), dtype=np.uint8)
    y = (np.arange(n) % 10 + 1).astype(np.float64).reshape(n, 1)
    return x, y


def _element(mtype: int, data: bytes, endian: str) -> bytes:
    if len(data) <= 4:  # small data element format
        return struct.pack(endian + "I", (len(data) << 16) | mtype) + data.ljust(4, b"\0")
    return struct.pack(endian + "II", mtype, len(data)) + data + b"\0" * (-len(data) % 8)


def matlab_style_mat(path: Path, arrays: dict, endian: str = "<", compress: bool = True) -> None:
    """A MAT 5.0 file as MATLAB writes SVHN's: each variable zlib-compressed, names as small
    elements, and a double ``y`` stored as ``miUINT8`` bytes (``arrays``: name -> (class, array))."""
    header = b"MATLAB 5.0 MAT-file, written by the tests".ljust(116) + b"\0" * 8
    header += struct.pack(endian + "H", 0x0100) + (b"IM" if endian == "<" else b"MI")
    out = [header]
    for name, (mx_class, array) in arrays.items():
        flags = struct.pack(endian + "II", mx_class, 0)
        dims = struct.pack(f"{endian}{array.ndim}i", *array.shape)
        payload = np.asarray(array, dtype=np.uint8).tobytes(order="F")
        body = (_element(6, flags, endian) + _element(5, dims, endian) + _element(1, name.encode(), endian)
                + _element(2, payload, endian))
        matrix = struct.pack(endian + "II", 14, len(body)) + body
        if compress:
            packed = zlib.compress(matrix)
            out.append(struct.pack(endian + "II", 15, len(packed)) + packed)
        else:
            out.append(matrix)
    path.write_bytes(b"".join(out))


def write_svhn(root: Path, sizes: dict[str, int], compress: bool = True) -> dict[str, tuple]:
    arrays = {}
    for seed, (split, n) in enumerate(sizes.items()):
        x, y = svhn_arrays(n, seed)
        scipy.io.savemat(root / svhn_module.SVHN_FILES[split], {"X": x, "y": y}, do_compression=compress)
        arrays[split] = (x, y)
    return arrays


def cifar_batch(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, bytes]:
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8)
    labels = rng.integers(0, 10, n, dtype=np.uint8)
    records = np.concatenate([labels[:, None], images.reshape(n, -1)], axis=1)
    return images, labels, records.tobytes()


def write_cifar(directory: Path, n: int = 4) -> tuple[np.ndarray, np.ndarray, dict[str, bytes]]:
    """Five training batches and a test batch of ``n`` records; returns the training images and
    labels in file order and the files' bytes."""
    directory.mkdir(parents=True, exist_ok=True)
    images, labels, files = [], [], {}
    names = [*cifar_module.CIFAR10_TRAIN_FILES, cifar_module.CIFAR10_TEST_FILE]
    for seed, name in enumerate(names):
        x, y, data = cifar_batch(n, seed)
        (directory / name).write_bytes(data)
        files[name] = data
        if name != cifar_module.CIFAR10_TEST_FILE:
            images.append(x)
            labels.append(y)
    return np.concatenate(images), np.concatenate(labels), files


@pytest.fixture
def small_cifar(monkeypatch):
    """4 records per batch (20 training images) and a 5-image validation index."""
    monkeypatch.setattr(cifar_module, "_RECORDS_PER_FILE", 4)
    valid = torch.tensor([1, 2, 7, 13, 19])
    monkeypatch.setattr(cifar_module, "cifar10_valid_index", lambda: valid.clone())
    return valid


def pil_grayscale(rgb_nchw: np.ndarray) -> np.ndarray:
    from PIL import Image

    return np.stack([np.array(Image.fromarray(np.ascontiguousarray(im.transpose(1, 2, 0))).convert("L"))
                     for im in rgb_nchw])[:, None]


# ----------------------------------------------------------------------------- greyscale


def test_rgb_to_grayscale_matches_pillow_and_formula():
    pytest.importorskip("PIL")
    rgb = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (5, 3, 32, 32), dtype=np.uint8))
    grey = rgb_to_grayscale(rgb, chunk=2)
    assert grey.shape == (5, 1, 32, 32) and grey.dtype == torch.uint8
    assert np.array_equal(grey.numpy(), pil_grayscale(rgb.numpy()))
    # Hand computation: (19595 R + 38470 G + 7471 B + 32768) >> 16.
    pixel = torch.tensor([200, 100, 50], dtype=torch.uint8).view(1, 3, 1, 1)
    assert rgb_to_grayscale(pixel).item() == (19595 * 200 + 38470 * 100 + 7471 * 50 + 32768) >> 16 == 124
    white = torch.full((1, 3, 2, 2), 255, dtype=torch.uint8)
    assert torch.all(rgb_to_grayscale(white) == 255)
    with pytest.raises(ValueError, match="3 channels"):
        rgb_to_grayscale(torch.zeros(1, 1, 4, 4, dtype=torch.uint8))
    with pytest.raises(ValueError, match="uint8"):
        rgb_to_grayscale(torch.zeros(1, 3, 4, 4))
    with pytest.raises(TypeError):
        rgb_to_grayscale(np.zeros((1, 3, 4, 4), dtype=np.uint8))


# ----------------------------------------------------------------------------- MAT reader


@pytest.mark.parametrize("compress", [False, True])
def test_read_mat_v5_scipy_files(tmp_path, compress):
    x, y = svhn_arrays(7)
    path = tmp_path / "a.mat"
    scipy.io.savemat(path, {"other": np.arange(5.0), "X": x, "y": y}, do_compression=compress)
    out = read_mat_v5(path, ["X", "y"])
    assert set(out) == {"X", "y"}
    assert out["X"].dtype == np.uint8 and np.array_equal(out["X"], x)
    assert out["y"].dtype == np.float64 and np.array_equal(out["y"], y)
    cut = read_mat_v5(path, ["X", "y"], max_items=3)  # the first 3 images and labels
    assert np.array_equal(cut["X"], x[..., :3]) and np.array_equal(cut["y"], y[:3])
    assert np.array_equal(read_mat_v5(path, ["y"], max_items=100)["y"], y)


@pytest.mark.parametrize("endian", ["<", ">"])
@pytest.mark.parametrize("compress", [False, True])
def test_read_mat_v5_matlab_style_files(tmp_path, endian, compress):
    x, y = svhn_arrays(12)
    path = tmp_path / "m.mat"
    matlab_style_mat(path, {"X": (9, x), "y": (6, y)}, endian, compress)  # uint8 X, double y
    out = read_mat_v5(path, ["X", "y"], max_items=5)
    assert out["y"].dtype == np.float64 and np.array_equal(out["y"], y[:5])
    assert np.array_equal(out["X"], x[..., :5])
    assert np.array_equal(scipy.io.loadmat(path)["y"], y)  # the writer agrees with scipy


def test_read_mat_v5_errors_name_the_file(tmp_path):
    x, y = svhn_arrays(6)
    good = tmp_path / "good.mat"
    scipy.io.savemat(good, {"X": x, "y": y}, do_compression=True)
    data = good.read_bytes()
    cases = {
        "short.mat": (data[:60], "too short for a MAT file"),
        "cut.mat": (data[: len(data) // 2], "truncated MAT file"),
        "tag.mat": (data + b"\x0e\0", "partial element tag"),  # seen when looking for Z
        "text.mat": (b"hello" * 40, "not a MAT 5.0 file"),
        "v73.mat": (data[:124] + b"\x00\x02IM" + data[128:], "MAT 7.3"),
    }
    for name, (content, match) in cases.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(ValueError, match=match) as info:
            read_mat_v5(tmp_path / name, ["X", "y", "Z"] if name == "tag.mat" else ["X", "y"])
        assert name in str(info.value)
    # Corrupt compressed bytes (the element length kept): a zlib error, reported with the file name.
    start = 128 + 8 + 20
    bad = data[:start] + bytes(b ^ 0x5A for b in data[start : start + 200]) + data[start + 200 :]
    (tmp_path / "zlib.mat").write_bytes(bad)
    with pytest.raises(ValueError, match="zlib.mat: (corrupt|truncated)"):
        read_mat_v5(tmp_path / "zlib.mat", ["X", "y"])
    with pytest.raises(ValueError, match=r"good.mat: the MAT file has no variable \['Z'\]"):
        read_mat_v5(good, ["X", "Z"])
    with pytest.raises(FileNotFoundError, match="nothere.mat"):
        read_mat_v5(tmp_path / "nothere.mat", ["X"])
    scipy.io.savemat(tmp_path / "cplx.mat", {"X": np.ones(3) + 1j})
    with pytest.raises(ValueError, match="not a real numeric array"):
        read_mat_v5(tmp_path / "cplx.mat", ["X"])


# ----------------------------------------------------------------------------- SVHN


def test_svhn_splits_shapes_labels_and_layout(tmp_path, monkeypatch):
    monkeypatch.setattr(svhn_module, "SVHN_VALID_SIZE", 6)  # the reference cuts extra at 26,032
    arrays = write_svhn(tmp_path, {"train": 11, "valid": 15, "test": 9})
    for split, n in {"train": 11, "valid": 6, "test": 9}.items():
        x, y = arrays[split]
        rgb, labels = load_svhn(split, root=tmp_path, grayscale=False)
        assert rgb.shape == (n, 3, 32, 32) and rgb.dtype == torch.uint8
        # images[i, c, row, col] == X[row, col, c, i]
        assert np.array_equal(rgb.numpy(), x[..., :n].transpose(3, 2, 0, 1))
        assert labels.dtype == torch.int64 and labels.tolist() == [int(v) % 10 for v in y[:n, 0]]
        grey, labels2 = load_svhn(split, root=tmp_path)
        assert grey.shape == (n, 1, 32, 32) and torch.equal(grey, rgb_to_grayscale(rgb))
        assert torch.equal(labels, labels2)
    assert 0 in load_svhn("train", root=tmp_path)[1].tolist()  # label 10 is the digit 0
    monkeypatch.setattr(svhn_module, "SVHN_VALID_SIZE", 16)
    with pytest.raises(ValueError, match="extra_32x32.mat: 15 images, the validation split needs the first"):
        load_svhn("valid", root=tmp_path)


def test_svhn_env_var_and_missing_files(tmp_path, monkeypatch):
    write_svhn(tmp_path, {"test": 3})
    monkeypatch.setenv(svhn_module.SVHN_ENV_VAR, str(tmp_path))
    assert load_svhn("test")[0].shape == (3, 1, 32, 32)
    with pytest.raises(FileNotFoundError, match=r"train_32x32.mat not found.*ufldl.stanford.edu/housenumber"):
        load_svhn("train")
    with pytest.raises(ValueError, match="unknown SVHN split 'validation'"):
        load_svhn("validation", root=tmp_path)
    with pytest.raises(TypeError, match="grayscale"):
        load_svhn("test", root=tmp_path, grayscale=1)
    with pytest.raises(TypeError, match="root"):
        load_svhn("test", root=3)


def test_svhn_bad_contents(tmp_path):
    x, y = svhn_arrays(4)
    bad = {
        "X": ({"X": x.astype(np.float64), "y": y}, r"X is float64 of shape \(32, 32, 3, 4\), expected uint8"),
        "shape": ({"X": x[:28], "y": y}, "expected uint8 of shape"),
        "labels": ({"X": x, "y": y[:3]}, r"y has shape \(3, 1\), expected \(4, 1\)"),
        "values": ({"X": x, "y": y * 0}, r"label 0 in y is not one of 1..10"),
        "missing": ({"X": x}, r"no variable \['y'\]"),
    }
    for case, (contents, match) in bad.items():
        directory = tmp_path / case
        directory.mkdir()
        scipy.io.savemat(directory / "test_32x32.mat", contents)
        with pytest.raises(ValueError, match=match) as info:
            load_svhn("test", root=directory)
        assert "test_32x32.mat" in str(info.value)
    write_svhn(tmp_path, {"train": 5})
    data = (tmp_path / "train_32x32.mat").read_bytes()
    (tmp_path / "train_32x32.mat").write_bytes(data[:-100])
    with pytest.raises(ValueError, match="train_32x32.mat: truncated MAT file"):
        load_svhn("train", root=tmp_path)


# ----------------------------------------------------------------------------- CIFAR-10


def test_cifar_reference_validation_index():
    index = cifar10_valid_index()
    assert index.dtype == torch.int64 and index.shape == (10_000,)
    assert torch.all(index[1:] > index[:-1]) and index[0] >= 0 and index[-1] < 50_000
    text = "".join(f"{i}\n" for i in index.tolist())  # the reference's file, byte for byte
    assert hashlib.sha256(text.encode()).hexdigest() == REFERENCE_VALIDATION_INDX_SHA256
    assert index[:5].tolist() == [1, 2, 3, 7, 18] and index[-1].item() == 49_984


@pytest.mark.parametrize("layout", ["flat", "subdir", "archive"])
def test_cifar_splits_and_layouts(tmp_path, small_cifar, layout):
    files_dir = tmp_path / ("files" if layout == "flat" else "files/cifar-10-batches-bin")
    train_x, train_y, files = write_cifar(files_dir)
    root = tmp_path / "files"
    if layout == "archive":
        root = tmp_path / "packed"
        root.mkdir()
        with tarfile.open(root / "cifar-10-binary.tar.gz", "w:gz") as tar:
            for name, data in files.items():
                info = tarfile.TarInfo(f"cifar-10-batches-bin/{name}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    valid = small_cifar.numpy()
    train = np.setdiff1d(np.arange(20), valid)
    for split, rows in {"train": train, "valid": valid}.items():
        rgb, labels = load_cifar10(split, root=root, grayscale=False)
        assert rgb.shape == (len(rows), 3, 32, 32) and rgb.dtype == torch.uint8
        assert np.array_equal(rgb.numpy(), train_x[rows])
        assert labels.dtype == torch.int64 and np.array_equal(labels.numpy(), train_y[rows])
        grey, _ = load_cifar10(split, root=root)
        assert torch.equal(grey, rgb_to_grayscale(rgb))
    test_x, test_y, _ = cifar_batch(4, 5)
    rgb, labels = load_cifar10("test", root=root, grayscale=False)
    assert np.array_equal(rgb.numpy(), test_x) and np.array_equal(labels.numpy(), test_y)
    # The record layout: byte 1 + c * 1024 + row * 32 + col is pixel (c, row, col).
    record = np.frombuffer(files["test_batch.bin"], np.uint8)[: 3073]
    assert rgb[0, 2, 3, 4].item() == record[1 + 2 * 1024 + 3 * 32 + 4]
    # A custom validation index gives the complementary training split.
    x, _ = load_cifar10("train", root=root, grayscale=False, valid_index=torch.arange(15))
    assert np.array_equal(x.numpy(), train_x[15:])


def test_cifar_errors(tmp_path, small_cifar, monkeypatch):
    with pytest.raises(FileNotFoundError, match=r"data_batch_1.bin.*cifar-10-binary.tar.gz.*cs.toronto.edu"):
        load_cifar10("train", root=tmp_path)
    monkeypatch.setenv(cifar_module.CIFAR10_ENV_VAR, str(tmp_path / "env"))
    with pytest.raises(FileNotFoundError, match="test_batch.bin"):
        load_cifar10("test")
    write_cifar(tmp_path)
    data = (tmp_path / "data_batch_3.bin").read_bytes()
    (tmp_path / "data_batch_3.bin").write_bytes(data[:-3073])  # one record short
    with pytest.raises(ValueError, match=r"data_batch_3.bin: 9219 bytes, expected 12292 .*truncated"):
        load_cifar10("valid", root=tmp_path)
    (tmp_path / "data_batch_3.bin").write_bytes(b"\x0b" + data[1:])  # label 11
    with pytest.raises(ValueError, match=r"data_batch_3.bin: label 11 in record 0 is not in 0..9"):
        load_cifar10("train", root=tmp_path)
    (tmp_path / "data_batch_3.bin").write_bytes(data)
    with pytest.raises(ValueError, match=r"valid_index must lie in \[0, 20\)"):
        load_cifar10("train", root=tmp_path, valid_index=torch.tensor([3, 20]))
    with pytest.raises(ValueError, match="repeat"):
        load_cifar10("train", root=tmp_path, valid_index=torch.tensor([3, 3]))
    with pytest.raises(TypeError):
        load_cifar10("train", root=tmp_path, valid_index=[1, 2])
    with pytest.raises(ValueError, match="unknown CIFAR-10 split"):
        load_cifar10("validation", root=tmp_path)
    packed = tmp_path / "packed"
    packed.mkdir()
    (packed / "cifar-10-binary.tar.gz").write_bytes(b"\x1f\x8b" + b"garbage" * 10)
    with pytest.raises(ValueError, match="cifar-10-binary.tar.gz: unreadable, truncated or corrupt archive"):
        load_cifar10("test", root=packed)


# ----------------------------------------------------------------------------- load_dataset


def test_load_dataset_svhn_and_cifar10(tmp_path, small_cifar, monkeypatch):
    assert {"svhn", "cifar10"} <= set(DATASETS)
    monkeypatch.setattr(svhn_module, "SVHN_VALID_SIZE", 4)
    (tmp_path / "svhn").mkdir()
    write_svhn(tmp_path / "svhn", {"train": 10, "valid": 7, "test": 5})
    write_cifar(tmp_path / "cifar")
    sizes = {("svhn", "train"): 10, ("svhn", "valid"): 4, ("svhn", "test"): 5,
             ("cifar10", "train"): 15, ("cifar10", "valid"): 5, ("cifar10", "test"): 4}
    for (name, split), n in sizes.items():
        root = tmp_path / ("svhn" if name == "svhn" else "cifar")
        grey = load_svhn(split, root=root)[0] if name == "svhn" else load_cifar10(split, root=root)[0]
        disc = load_dataset(name, split, "spvae-discrete", root=root)
        assert len(disc) == n and disc.event_shape == (1, 32, 32) and disc.likelihood == "binomial"
        x = disc.batch(torch.arange(n))
        # Hand computation: per-image min-max of the greyscale, then round(255 x) / 255.
        g = grey.double().flatten(1)
        lo, hi = g.min(1, keepdim=True).values, g.max(1, keepdim=True).values
        expected = torch.round(255 * (g - lo) / (hi - lo)) / 255
        assert torch.allclose(x.double().flatten(1), expected, atol=1e-6)
        cont = load_dataset(name, split, "spvae-continuous", root=root)
        c = cont.batch(torch.arange(n)).flatten(1)
        assert cont.likelihood == "gaussian"
        assert torch.all(c.min(1).values == 0) and torch.all(c.max(1).values == 1)
        assert (c - x.flatten(1)).abs().max() < 8 / 255
    assert torch.equal(get_transform("spvae-discrete")(grey), x)
    config = TrainConfig(data="svhn", transform="spvae-continuous", data_dir=str(tmp_path / "svhn"))
    assert config.data == "svhn" and TrainConfig(data="cifar10").data == "cifar10"


# ----------------------------------------------------------------------------- properties


def _small_mat(compress: bool) -> bytes:
    x, y = svhn_arrays(3)
    buffer = io.BytesIO()
    scipy.io.savemat(buffer, {"X": x, "y": y}, do_compression=compress)
    return buffer.getvalue()


MAT_FILES = {compress: _small_mat(compress) for compress in (False, True)}


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(compress=st.booleans(), cut=st.integers(0, 10**6), flips=st.lists(st.tuples(st.integers(0, 10**6),
       st.integers(1, 255)), max_size=4))
def test_property_damaged_mat_files_raise_value_error(tmp_path, compress, cut, flips):
    data = bytearray(MAT_FILES[compress])
    for position, mask in flips:
        data[position % len(data)] ^= mask
    data = data[: max(cut % (len(data) + 1), 0)] if cut % 3 else data
    path = tmp_path / "damaged.mat"
    path.write_bytes(bytes(data))
    try:
        out = read_mat_v5(path, ["X", "y"])
    except ValueError as err:
        assert "damaged.mat" in str(err)
    else:  # damage that the format cannot see (pixel bytes) still gives arrays of the declared size
        assert all(isinstance(v, np.ndarray) for v in out.values())


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(payload=st.binary(max_size=40_000))
def test_property_random_bytes_as_cifar_batch(tmp_path, monkeypatch, payload):
    monkeypatch.setattr(cifar_module, "_RECORDS_PER_FILE", 4)
    (tmp_path / "test_batch.bin").write_bytes(payload)
    try:
        x, y = load_cifar10("test", root=tmp_path)
    except ValueError as err:
        assert "test_batch.bin" in str(err)
    else:
        assert x.shape == (4, 1, 32, 32) and int(y.max()) <= 9
