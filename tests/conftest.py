import os
from pathlib import Path

import pyro
import pytest
import torch

# Small networks: one intra-op thread is fastest and leaves the other core free (CI has 2 cores).
torch.set_num_threads(1)

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_MNIST = REPO_ROOT.parent / "shared" / "data" / "mnist"


@pytest.fixture(autouse=True)
def _reset_pyro():
    """Fresh param store and fixed seed for every test."""
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    pyro.enable_validation(True)
    yield
    pyro.clear_param_store()


@pytest.fixture
def mnist_dir() -> Path:
    """Directory of the real MNIST IDX files (``../shared/data/mnist``); skips when absent."""
    path = Path(os.environ.get("PYRO_SPVAE_TEST_MNIST", SHARED_MNIST))
    if not (path / "train-images-idx3-ubyte.gz").exists():
        pytest.skip(f"MNIST not found at {path}")
    return path
