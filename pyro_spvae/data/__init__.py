"""Data for pyro-spvae: MNIST from IDX files (download with SHA-256 checks), image transforms, and
an embedded MNIST subset for offline runs.

Main entry point: :func:`load_dataset` returning an :class:`ImageDataset`.

MNIST (LeCun, Cortes & Burges) is licensed CC BY-SA 3.0.
"""

from .dataset import DATASETS, ImageDataset, load_dataset
from .embedded import EMBEDDED_PATH, EMBEDDED_SIZES, load_embedded
from .idx import parse_idx, read_idx
from .mnist import (
    ENV_VAR,
    MIRRORS,
    MNIST_FILES,
    SPLITS,
    default_mnist_dir,
    download_mnist,
    load_mnist,
    mnist_dir,
)
from .transforms import (
    TRANSFORMS,
    DequantizeUniform,
    Discrete8Bit,
    DynamicBinarize,
    SPVAEContinuous,
    SPVAEDiscrete,
    StaticBinarize,
    Transform,
    get_transform,
    minmax_per_image,
    reflect_unit,
)

__all__ = [
    "DATASETS",
    "EMBEDDED_PATH",
    "EMBEDDED_SIZES",
    "ENV_VAR",
    "MIRRORS",
    "MNIST_FILES",
    "SPLITS",
    "TRANSFORMS",
    "DequantizeUniform",
    "Discrete8Bit",
    "DynamicBinarize",
    "ImageDataset",
    "SPVAEContinuous",
    "SPVAEDiscrete",
    "StaticBinarize",
    "Transform",
    "default_mnist_dir",
    "download_mnist",
    "get_transform",
    "load_dataset",
    "load_embedded",
    "load_mnist",
    "minmax_per_image",
    "mnist_dir",
    "parse_idx",
    "read_idx",
    "reflect_unit",
]
