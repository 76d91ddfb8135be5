"""Tests for pyro_spvae.data: IDX reading, MNIST splits/checksums/download, transforms, datasets."""

import gzip
import hashlib
import io
import math
import shutil
import struct
import tempfile
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pyro_spvae.data import (
    DATASETS,
    EMBEDDED_PATH,
    ENV_VAR,
    MNIST_FILES,
    SPLITS,
    TRANSFORMS,
    ImageDataset,
    SPVAEContinuous,
    StaticBinarize,
    default_mnist_dir,
    download_mnist,
    get_transform,
    load_dataset,
    load_embedded,
    load_mnist,
    minmax_per_image,
    mnist_dir,
    parse_idx,
    read_idx,
    reflect_unit,
)
from pyro_spvae.data import mnist as mnist_module

# From ../shared/data/README.md (decompressed files); kept separate from the package constants.
README_SHA256 = {
    "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
}
TRAIN_FILE_LABEL_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
HYPOTHESIS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def idx_bytes(array: np.ndarray) -> bytes:
    """Encode a uint8 array as an IDX file."""
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()


def random_images(n: int = 20, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 1, 28, 28), generator=gen, dtype=torch.uint8)


SMALL = ImageDataset(random_images(20), torch.arange(20) % 10, "discrete")


class FakeResponse(io.BytesIO):
    pass


def serve(files: dict[str, bytes], calls: list[str] | None = None):
    """A stand-in for urllib's urlopen serving ``files`` by URL basename (404 otherwise)."""

    def urlopen(url, timeout=None):
        if calls is not None:
            calls.append(url)
        name = url.rsplit("/", 1)[-1]
        if name not in files:
            raise urllib.error.HTTPError(url, 404, "Not Found", None, None)
        return FakeResponse(files[name])

    return urlopen


def no_network(url, timeout=None):
    raise urllib.error.URLError("network unreachable (test)")


# ----------------------------------------------------------------------------- IDX format


def test_parse_idx_roundtrip_raw_and_gzip():
    array = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    data = idx_bytes(array)
    np.testing.assert_array_equal(parse_idx(data), array)
    np.testing.assert_array_equal(parse_idx(gzip.compress(data), expected_ndim=3), array)


@pytest.mark.parametrize(
    "data, match",
    [
        (b"\x00\x00", "too short"),
        (b"\x08\x03\x00\x00" + bytes(8), "magic"),
        (bytes([0, 0, 0x0D, 1]) + struct.pack(">I", 1) + bytes(4), "float"),
        (bytes([0, 0, 0x08, 0]), "0 dimensions"),
        (bytes([0, 0, 0x08, 3]) + struct.pack(">I", 2), "truncated IDX header"),
        (bytes([0, 0, 0x08, 1]) + struct.pack(">I", 5) + bytes(3), "truncated IDX payload"),
        (bytes([0, 0, 0x08, 1]) + struct.pack(">I", 2) + bytes(3), "trailing"),
        (b"\x1f\x8b" + bytes(30), "gzip"),
    ],
)
def test_parse_idx_rejects_invalid(data, match):
    with pytest.raises(ValueError, match=match):
        parse_idx(data, "f.idx")


def test_parse_idx_wrong_ndim_and_type():
    with pytest.raises(ValueError, match="expected 3"):
        parse_idx(idx_bytes(np.zeros(4, np.uint8)), expected_ndim=3)
    with pytest.raises(TypeError):
        parse_idx("not bytes")
    with pytest.raises(FileNotFoundError):
        read_idx("/nonexistent/file-idx1-ubyte")


# ----------------------------------------------------------------------------- real MNIST


def test_mnist_checksums(mnist_dir):
    assert MNIST_FILES == README_SHA256
    for stem, expected in README_SHA256.items():
        data = gzip.decompress((mnist_dir / f"{stem}.gz").read_bytes())
        assert hashlib.sha256(data).hexdigest() == expected


def test_mnist_splits_shapes_dtypes_and_label_counts(mnist_dir):
    sizes = {"train": 50_000, "valid": 10_000, "test": 10_000}
    loaded = {split: load_mnist(split, root=mnist_dir, download=False) for split in SPLITS}
    for split, (x, y) in loaded.items():
        assert x.shape == (sizes[split], 1, 28, 28) and x.dtype == torch.uint8
        assert y.shape == (sizes[split],) and y.dtype == torch.int64
        assert 0 <= int(y.min()) and int(y.max()) <= 9
    train_file_labels = torch.cat([loaded["train"][1], loaded["valid"][1]])
    assert torch.bincount(train_file_labels, minlength=10).tolist() == TRAIN_FILE_LABEL_COUNTS
    # train = first 50k of the training file, valid = its last 10k.
    raw = read_idx(mnist_dir / "train-images-idx3-ubyte.gz")
    np.testing.assert_array_equal(loaded["train"][0][:, 0].numpy(), raw[:50_000])
    np.testing.assert_array_equal(loaded["valid"][0][:, 0].numpy(), raw[50_000:])
    assert loaded["train"][0].flatten(1).float().mean().item() == pytest.approx(33.3, abs=0.5)


def test_mnist_raw_files_and_env_var(mnist_dir, tmp_path, monkeypatch):
    for stem in ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        (tmp_path / stem).write_bytes(gzip.decompress((mnist_dir / f"{stem}.gz").read_bytes()))
    monkeypatch.setenv(ENV_VAR, str(tmp_path))
    monkeypatch.setattr(mnist_module, "_urlopen", no_network)
    x_raw, y_raw = load_mnist("test")  # from the environment variable, raw IDX files
    x_gz, y_gz = load_mnist("test", root=mnist_dir, download=False)
    assert torch.equal(x_raw, x_gz) and torch.equal(y_raw, y_gz)


def test_mnist_dir_resolution(tmp_path, monkeypatch):
    monkeypatch.delenv(ENV_VAR, raising=False)
    assert mnist_dir() == default_mnist_dir()
    assert default_mnist_dir().name == "mnist" and "pyro-spvae" in str(default_mnist_dir())
    monkeypatch.setenv(ENV_VAR, str(tmp_path / "env"))
    assert mnist_dir() == tmp_path / "env"
    assert mnist_dir(tmp_path / "arg") == tmp_path / "arg"
    with pytest.raises(TypeError, match="root"):
        mnist_dir(3)


def test_missing_directory_gives_clear_error(tmp_path, monkeypatch):
    missing = tmp_path / "no-such-dir"
    with pytest.raises(FileNotFoundError, match=ENV_VAR) as info:
        load_mnist("train", root=missing, download=False)
    assert str(missing) in str(info.value) and "train-images-idx3-ubyte" in str(info.value)
    monkeypatch.setattr(mnist_module, "_urlopen", no_network)
    with pytest.raises(FileNotFoundError, match="network unreachable") as info:
        load_dataset("mnist", "test", "discrete", root=missing)
    assert str(missing) in str(info.value) and ENV_VAR in str(info.value)
    assert not missing.exists() or not any(missing.iterdir())


def test_download_verifies_and_writes_atomically(mnist_dir, tmp_path, monkeypatch):
    files = {f"{stem}.gz": (mnist_dir / f"{stem}.gz").read_bytes() for stem in MNIST_FILES}
    calls: list[str] = []
    monkeypatch.setattr(mnist_module, "_urlopen", serve(files, calls))
    target = tmp_path / "cache"
    x, y = load_mnist("test", root=target)  # downloads all four files
    assert sorted(p.name for p in target.iterdir()) == sorted(files)
    for name, data in files.items():
        assert (target / name).read_bytes() == data
    assert all(url.startswith(mnist_module.MIRRORS[0]) for url in calls) and len(calls) == 4
    x_ref, y_ref = load_mnist("test", root=mnist_dir, download=False)
    assert torch.equal(x, x_ref) and torch.equal(y, y_ref)
    calls.clear()
    download_mnist(target)  # nothing missing: no request
    assert calls == []


def test_download_rejects_wrong_checksum_and_leaves_nothing(mnist_dir, tmp_path, monkeypatch):
    good = (mnist_dir / "t10k-labels-idx1-ubyte.gz").read_bytes()
    tampered = bytearray(gzip.decompress(good))
    tampered[-1] = (tampered[-1] + 1) % 10  # a valid IDX file with one label changed
    files = {f"{stem}.gz": gzip.compress(bytes(tampered)) for stem in MNIST_FILES}
    monkeypatch.setattr(mnist_module, "_urlopen", serve(files))
    target = tmp_path / "cache"
    with pytest.raises(FileNotFoundError, match="SHA-256 mismatch") as info:
        load_mnist("test", root=target)
    for mirror in mnist_module.MIRRORS:
        assert mirror in str(info.value)
    assert not target.exists() or list(target.iterdir()) == []
    # Truncated/corrupt gzip from the mirror: same outcome.
    monkeypatch.setattr(mnist_module, "_urlopen", serve({k: v[:100] for k, v in files.items()}))
    with pytest.raises(FileNotFoundError, match="corrupt or truncated"):
        download_mnist(target)
    assert not target.exists() or list(target.iterdir()) == []


def test_download_falls_back_to_second_mirror(mnist_dir, tmp_path, monkeypatch):
    stem = "t10k-labels-idx1-ubyte"
    good = (mnist_dir / f"{stem}.gz").read_bytes()

    def urlopen(url, timeout=None):
        if url.startswith(mnist_module.MIRRORS[0]):
            return FakeResponse(b"<html>error page</html>")
        return FakeResponse(good)

    monkeypatch.setattr(mnist_module, "_urlopen", urlopen)
    monkeypatch.setattr(mnist_module, "MNIST_FILES", {stem: README_SHA256[stem]})
    download_mnist(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == [f"{stem}.gz"]
    assert (tmp_path / f"{stem}.gz").read_bytes() == good


def test_corrupt_or_truncated_local_files(mnist_dir, tmp_path):
    shutil.copy(mnist_dir / "t10k-images-idx3-ubyte.gz", tmp_path)
    labels = gzip.decompress((mnist_dir / "t10k-labels-idx1-ubyte.gz").read_bytes())
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(labels[:-7])
    with pytest.raises(ValueError, match="SHA-256 mismatch"):
        load_mnist("test", root=tmp_path, download=False)
    with pytest.raises(ValueError, match="truncated IDX payload"):
        load_mnist("test", root=tmp_path, download=False, verify=False)
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(labels[:6])
    with pytest.raises(ValueError, match="truncated IDX header"):
        load_mnist("test", root=tmp_path, download=False, verify=False)
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(idx_bytes(np.full(10_000, 12, np.uint8)))
    with pytest.raises(ValueError, match="out of range"):
        load_mnist("test", root=tmp_path, download=False, verify=False)
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(idx_bytes(np.zeros(9_999, np.uint8)))
    with pytest.raises(ValueError, match="9999 labels for 10000 images"):
        load_mnist("test", root=tmp_path, download=False, verify=False)


# ----------------------------------------------------------------------------- transforms


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return load_embedded("train")[0][:200]


def test_transform_registry_and_likelihoods():
    expected = {
        "binary-dynamic": "bernoulli",
        "binary-static": "bernoulli",
        "discrete": "binomial",
        "dequantized": "gaussian",
        "spvae-continuous": "gaussian",
        "spvae-discrete": "binomial",
    }
    assert set(TRANSFORMS) == set(expected)
    for name, likelihood in expected.items():
        t = get_transform(name)
        assert t.name == name and t.likelihood == likelihood
        assert load_dataset("embedded", "valid", name).likelihood == likelihood
    assert {get_transform(n).stochastic for n in ("binary-dynamic", "dequantized")} == {True}
    with pytest.raises(ValueError, match="binary-dynamic"):
        get_transform("binarized")
    with pytest.raises(TypeError):
        get_transform(3)


def test_binarisation_value_sets_and_mean(images):
    gen = torch.Generator().manual_seed(1)
    for name in ("binary-dynamic", "binary-static"):
        x = get_transform(name)(images, gen)
        assert x.dtype == torch.float32 and x.shape == images.shape
        assert set(torch.unique(x).tolist()) == {0.0, 1.0}
    # Dynamic binarisation is unbiased: the average of many draws approaches k/255.
    t = get_transform("binary-dynamic")
    draws = torch.stack([t(images[:20], gen) for _ in range(400)]).mean(0)
    assert (draws - images[:20].float() / 255).abs().max() < 0.12  # 400 draws: 5 sd < 0.125


def test_discrete_and_dequantized(images):
    x = get_transform("discrete")(images)
    assert torch.equal(x * 255, images.float()) and x.min() >= 0 and x.max() <= 1
    worst = torch.tensor([[[[0, 255]]]], dtype=torch.uint8).expand(1, 1, 64, 2)
    for batch in (images, worst):
        d = get_transform("dequantized")(batch, torch.Generator().manual_seed(0))
        assert d.dtype == torch.float32 and d.min() >= 0 and d.max() < 1
        assert torch.equal(torch.floor(256 * d).to(torch.uint8), batch)
    # Noise fills each bin: the fractional parts look uniform.
    frac = (256 * get_transform("dequantized")(images) - images.float()).flatten()
    assert frac.mean().item() == pytest.approx(0.5, abs=0.01)


def test_stochastic_transforms_reproducible(images):
    for name in ("binary-dynamic", "dequantized"):
        t = get_transform(name)
        a = t(images, torch.Generator().manual_seed(5))
        b = t(images, torch.Generator().manual_seed(5))
        c = t(images, torch.Generator().manual_seed(6))
        assert torch.equal(a, b) and not torch.equal(a, c)
        torch.manual_seed(3)
        d = t(images)
        torch.manual_seed(3)
        assert torch.equal(d, t(images))  # global RNG when no generator


def test_static_binarisation_independent_of_batch_order():
    ds = load_dataset("embedded", "valid", "binary-static")
    full = ds.batch(torch.arange(len(ds)), torch.Generator().manual_seed(0))
    perm = torch.randperm(len(ds), generator=torch.Generator().manual_seed(1))
    for start in range(0, len(ds), 64):
        idx = perm[start : start + 64]
        assert torch.equal(ds.batch(idx, torch.Generator().manual_seed(start)), full[idx])
    again = load_dataset("embedded", "valid", "binary-static").batch(torch.arange(len(ds)))
    assert torch.equal(again, full)
    other = load_dataset("embedded", "valid", StaticBinarize(seed=1)).batch(torch.arange(len(ds)))
    assert not torch.equal(other, full)
    # The fixed draw is still Bernoulli(k/255) on average over pixels.
    raw = load_embedded("valid")[0].float() / 255
    assert (full.mean() - raw.mean()).abs() < 0.005


def test_spvae_preprocessing(images):
    # Dim the images first so min-max has work to do.
    dim = (images.float() * 0.5 + 20).to(torch.uint8)
    disc = get_transform("spvae-discrete")(dim)
    flat = disc.flatten(1)
    assert torch.all(flat.min(1).values == 0) and torch.all(flat.max(1).values == 1)
    assert torch.equal(torch.round(disc * 255), disc * 255)
    expected = minmax_per_image(dim.float())
    assert (disc - expected).abs().max() <= 0.5 / 255 + 1e-6
    cont = SPVAEContinuous(seed=0)(dim)
    flat = cont.flatten(1)
    assert torch.all(flat.min(1).values == 0) and torch.all(flat.max(1).values == 1)
    noise = (cont - disc).flatten()
    assert noise.abs().max() < 8 / 255 and 0.5 / 255 < noise.std() < 2 / 255
    assert not torch.equal(torch.round(cont * 255), cont * 255)
    assert torch.equal(SPVAEContinuous(seed=0)(dim), cont)
    assert not torch.equal(SPVAEContinuous(seed=1)(dim), cont)


def test_spvae_preprocessing_on_real_mnist(mnist_dir):
    ds = load_dataset("mnist", "test", "spvae-continuous", root=mnist_dir, download=False)
    x = ds.batch(torch.arange(len(ds))).flatten(1)
    assert torch.all(x.min(1).values == 0) and torch.all(x.max(1).values == 1)


def test_minmax_and_reflect_helpers():
    x = torch.tensor([[2.0, 4.0, 3.0], [5.0, 5.0, 5.0]])
    assert torch.equal(minmax_per_image(x), torch.tensor([[0.0, 1.0, 0.5], [0.0, 0.0, 0.0]]))
    y = reflect_unit(torch.tensor([-0.25, 0.0, 0.5, 1.0, 1.25, 2.5]))
    assert torch.allclose(y, torch.tensor([0.25, 0.0, 0.5, 1.0, 0.75, 0.5]))
    with pytest.raises(ValueError, match="floating-point dtype"):  # a wrong dtype is a wrong value
        minmax_per_image(torch.zeros(2, 3, dtype=torch.uint8))
    with pytest.raises(TypeError, match="torch.Tensor"):
        minmax_per_image([[2.0, 4.0]])


# ----------------------------------------------------------------------------- datasets


def test_embedded_dataset_needs_no_network(monkeypatch, tmp_path):
    monkeypatch.setattr(mnist_module, "_urlopen", no_network)
    monkeypatch.setenv(ENV_VAR, str(tmp_path / "nowhere"))
    sizes = {"train": 3000, "valid": 500, "test": 500}
    for split, n in sizes.items():
        ds = load_dataset("embedded", split, "binary-dynamic")
        assert len(ds) == n and ds.event_shape == (1, 28, 28)
        assert ds.labels.dtype == torch.int64
        assert torch.bincount(ds.labels, minlength=10).tolist() == [n // 10] * 10
        x = ds.batch(torch.arange(16), torch.Generator().manual_seed(0))
        assert x.shape == (16, 1, 28, 28) and x.dtype == torch.float32
    assert not (tmp_path / "nowhere").exists()
    assert EMBEDDED_PATH.stat().st_size < 2.5e6


def test_embedded_matches_real_mnist(mnist_dir):
    for split in SPLITS:
        x, y, index = load_embedded(split, return_index=True)
        x_full, y_full = load_mnist(split, root=mnist_dir, download=False)
        assert torch.equal(x, x_full[index]) and torch.equal(y, y_full[index])
        assert len(torch.unique(index)) == len(index)


def test_load_dataset_mnist(mnist_dir):
    ds = load_dataset("mnist", "valid", "discrete", root=mnist_dir, download=False)
    assert len(ds) == 10_000 and ds.event_shape == (1, 28, 28) and ds.likelihood == "binomial"
    x = ds.batch(torch.tensor([0, 9_999]))
    x_ref, _ = load_mnist("valid", root=mnist_dir, download=False)
    assert torch.equal(x * 255, x_ref[[0, 9_999]].float())


def test_load_dataset_rejects_unknown_names():
    names = r"\['cifar10', 'embedded', 'mnist', 'svhn'\]"
    with pytest.raises(ValueError, match=r"unknown dataset 'cifar'; choose one of " + names):
        load_dataset("cifar", "train", "discrete")
    with pytest.raises(ValueError, match=r"unknown split 'validation'; choose one of \['test', 'train'"):
        load_dataset("embedded", "validation", "discrete")
    with pytest.raises(ValueError, match="spvae-continuous"):
        load_dataset("embedded", "train", "binarised")
    with pytest.raises(ValueError, match=r"unknown MNIST split 'training'; choose one of \['test', 'train'"):
        load_mnist("training")
    assert DATASETS == ("embedded", "mnist", "svhn", "cifar10")


def test_batch_rejects_bad_indices():
    with pytest.raises(TypeError, match="idx"):
        SMALL.batch([0, 1])
    with pytest.raises(ValueError, match="idx must have an integer dtype"):  # a wrong dtype is a wrong value
        SMALL.batch(torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match="one-dimensional"):
        SMALL.batch(torch.zeros(2, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="out of range"):
        SMALL.batch(torch.tensor([0, 20]))
    with pytest.raises(ValueError, match="out of range"):
        SMALL.batch(torch.tensor([-1]))
    with pytest.raises(TypeError, match="generator"):
        SMALL.batch(torch.tensor([0]), generator=0)
    assert SMALL.batch(torch.tensor([], dtype=torch.long)).shape == (0, 1, 28, 28)


def test_image_dataset_rejects_bad_construction():
    with pytest.raises(ValueError, match="uint8"):
        ImageDataset(torch.zeros(2, 1, 28, 28), torch.zeros(2, dtype=torch.long))
    with pytest.raises(TypeError, match="images must be a torch.Tensor"):
        ImageDataset(np.zeros((2, 1, 28, 28), np.uint8), torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        ImageDataset(torch.zeros(2, 28, 28, dtype=torch.uint8), torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match="labels"):
        ImageDataset(random_images(3), torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match="labels must have an integer dtype"):
        ImageDataset(random_images(2), torch.zeros(2))
    with pytest.raises(TypeError, match="labels must be a torch.Tensor"):
        ImageDataset(random_images(2), [0, 1])


def test_subset():
    ds = load_dataset("embedded", "train", "binary-static")
    small, large = ds.subset(100, seed=3), ds.subset(0.5, seed=3)
    assert len(small) == 100 and len(large) == 1500 and small.event_shape == ds.event_shape
    assert small.likelihood == "bernoulli"
    # Nested, in original order, and the stored binarisation is kept.
    full = ds.batch(torch.arange(len(ds))).flatten(1)
    lookup = {tuple(row.tolist()): i for i, row in enumerate(full)}
    idx_small = [lookup[tuple(r.tolist())] for r in small.batch(torch.arange(100)).flatten(1)]
    idx_large = {lookup[tuple(r.tolist())] for r in large.batch(torch.arange(1500)).flatten(1)}
    assert idx_small == sorted(idx_small) and set(idx_small) <= idx_large
    assert torch.equal(small.labels, ds.labels[idx_small])
    assert torch.equal(ds.subset(100, seed=3).labels, small.labels)
    assert not torch.equal(ds.subset(100, seed=4).labels, small.labels)
    assert len(ds.subset(1.0)) == len(ds)
    for bad, err in [(0, ValueError), (3001, ValueError), (0.0, ValueError), (-0.1, ValueError),
                     (float("nan"), ValueError), (1.5, ValueError), (1e-5, ValueError),
                     (True, TypeError), ("10", TypeError)]:
        with pytest.raises(err):
            ds.subset(bad)


# ----------------------------------------------------------------------------- properties (issue 5)


@HYPOTHESIS
@given(data=st.binary(max_size=64), gz=st.booleans())
def test_property_random_bytes_as_idx(data, gz):
    payload = gzip.compress(data) if gz else data
    try:
        array = parse_idx(payload, "random")
    except ValueError:
        return
    assert array.dtype == np.uint8 and array.size == len(data) - 4 - 4 * array.ndim


@HYPOTHESIS
@given(
    ndim=st.integers(1, 4),
    dims=st.lists(st.integers(0, 6), min_size=4, max_size=4),
    cut=st.integers(-8, 8),
)
def test_property_headers_with_wrong_lengths(ndim, dims, cut):
    shape = dims[:ndim]
    payload = bytes(max(0, math.prod(shape) + cut))
    data = bytes([0, 0, 0x08, ndim]) + struct.pack(f">{ndim}I", *shape) + payload
    valid = max(0, math.prod(shape) + cut) == math.prod(shape)
    try:
        array = parse_idx(data)
    except ValueError:
        assert not valid
        return
    assert valid
    assert array.shape == tuple(shape)


@HYPOTHESIS
@given(images=st.binary(max_size=200), labels=st.binary(max_size=40), verify=st.booleans())
def test_property_loader_on_random_files(images, labels, verify):
    with tempfile.TemporaryDirectory() as root:
        Path(root, "t10k-images-idx3-ubyte").write_bytes(images)
        Path(root, "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(labels))
        with pytest.raises(ValueError):
            load_mnist("test", root=root, download=False, verify=verify)


@HYPOTHESIS
@given(
    values=st.lists(st.integers(-(2**40), 2**40), max_size=8),
    dtype=st.sampled_from([torch.long, torch.int32, torch.int16, torch.uint8, torch.float32, torch.bool]),
    two_d=st.booleans(),
)
def test_property_batch_indices(values, dtype, two_d):
    try:
        idx = torch.tensor(values, dtype=dtype)
    except (RuntimeError, OverflowError):
        return  # torch cannot represent the values in that dtype
    if two_d:
        idx = idx.reshape(1, -1)
    try:
        x = SMALL.batch(idx)
    except (TypeError, ValueError):
        ok = not two_d and dtype not in (torch.float32, torch.bool) and all(0 <= v < 20 for v in idx.tolist())
        assert not ok
        return
    assert x.shape == (len(values), 1, 28, 28)
    assert torch.equal(x * 255, SMALL.batch(idx.long()) * 255)


@HYPOTHESIS
@given(
    size=st.one_of(
        st.floats(allow_nan=True, allow_infinity=True),
        st.integers(-(2**70), 2**70),
        st.text(max_size=3),
        st.none(),
    ),
    seed=st.integers(0, 2**62),
)
def test_property_subset_sizes(size, seed):
    try:
        sub = SMALL.subset(size, seed=seed)
    except (TypeError, ValueError):
        valid = (isinstance(size, int) and 1 <= size <= 20) or (
            isinstance(size, float) and 0 < size <= 1 and round(size * 20) >= 1
        )
        assert not valid
        return
    assert 1 <= len(sub) <= len(SMALL)


@HYPOTHESIS
@given(
    shape=st.lists(st.integers(0, 4), min_size=0, max_size=5),
    dtype=st.sampled_from([torch.uint8, torch.float32, torch.int64]),
    name=st.sampled_from(TRANSFORMS),
)
def test_property_image_dataset_inputs(shape, dtype, name):
    images = torch.zeros(shape, dtype=dtype)
    labels = torch.zeros(shape[:1], dtype=torch.long)
    try:
        ds = ImageDataset(images, labels, name)
    except (TypeError, ValueError):
        assert dtype != torch.uint8 or len(shape) != 4 or min(shape[1:]) == 0
        return
    assert ds.event_shape == tuple(shape[1:]) and len(ds) == shape[0]


@HYPOTHESIS
@given(name=st.one_of(st.text(max_size=12), st.none(), st.integers()), which=st.integers(0, 2))
def test_property_unknown_names(name, which):
    args = ["embedded", "valid", "discrete"]
    args[which] = name
    try:
        ds = load_dataset(*args)
    except (TypeError, ValueError):
        assert name not in (DATASETS, SPLITS, TRANSFORMS)[which]
        return
    assert len(ds) == 500


@HYPOTHESIS
@given(payload=st.binary(max_size=300), gz=st.booleans())
def test_property_download_of_random_bytes_leaves_nothing(payload, gz):
    body = gzip.compress(payload) if gz else payload
    saved = mnist_module._urlopen
    mnist_module._urlopen = lambda url, timeout=None: FakeResponse(body)
    try:
        with tempfile.TemporaryDirectory() as root:
            with pytest.raises(FileNotFoundError, match="could not download"):
                download_mnist(Path(root) / "mnist")
            assert not (Path(root) / "mnist").exists()
    finally:
        mnist_module._urlopen = saved


def test_batch_is_a_copy_equal_to_indexing():
    """``batch`` copies the stored rows (index_select): the same values as indexing the stored
    tensor, for any order and repeats, and writing into a batch leaves the dataset unchanged."""
    data = ImageDataset(random_images(20), torch.arange(20) % 10, "binary-static")
    for idx in (torch.arange(5, 12), torch.tensor([3, 3, 0, 19, 7]), torch.arange(20).flip(0)):
        out = data.batch(idx)
        torch.testing.assert_close(out, data.transform.batch(data._stored[idx]), rtol=0, atol=0)
    before = data.batch(torch.arange(20)).clone()
    out = data.batch(torch.arange(4))
    out.fill_(0.5)
    torch.testing.assert_close(data.batch(torch.arange(20)), before, rtol=0, atol=0)
