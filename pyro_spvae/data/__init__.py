"""Data for pyro-spvae: MNIST from IDX files (download with SHA-256 checks), SVHN from its MATLAB
files and CIFAR-10 from its binary batches (both fetched by hand), image transforms, and an
embedded MNIST subset for offline runs.

Main entry point: :func:`load_dataset` returning an :class:`ImageDataset`.

MNIST (LeCun, Cortes & Burges) is licensed CC BY-SA 3.0. SVHN (Netzer et al., 2011) is for
non-commercial use. CIFAR-10 is by Krizhevsky (2009).
"""

from .cifar import (
    CIFAR10_ARCHIVE,
    CIFAR10_ENV_VAR,
    CIFAR10_TEST_FILE,
    CIFAR10_TRAIN_FILES,
    CIFAR10_URL,
    cifar10_dir,
    cifar10_valid_index,
    load_cifar10,
)
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
from .svhn import SVHN_ENV_VAR, SVHN_FILES, SVHN_URL, SVHN_VALID_SIZE, load_svhn, read_mat_v5, svhn_dir
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
    rgb_to_grayscale,
)

__all__ = [
    "CIFAR10_ARCHIVE",
    "CIFAR10_ENV_VAR",
    "CIFAR10_TEST_FILE",
    "CIFAR10_TRAIN_FILES",
    "CIFAR10_URL",
    "DATASETS",
    "EMBEDDED_PATH",
    "EMBEDDED_SIZES",
    "ENV_VAR",
    "MIRRORS",
    "MNIST_FILES",
    "SPLITS",
    "SVHN_ENV_VAR",
    "SVHN_FILES",
    "SVHN_URL",
    "SVHN_VALID_SIZE",
    "TRANSFORMS",
    "DequantizeUniform",
    "Discrete8Bit",
    "DynamicBinarize",
    "ImageDataset",
    "SPVAEContinuous",
    "SPVAEDiscrete",
    "StaticBinarize",
    "Transform",
    "cifar10_dir",
    "cifar10_valid_index",
    "default_mnist_dir",
    "download_mnist",
    "get_transform",
    "load_cifar10",
    "load_dataset",
    "load_embedded",
    "load_mnist",
    "load_svhn",
    "minmax_per_image",
    "mnist_dir",
    "parse_idx",
    "read_idx",
    "read_mat_v5",
    "reflect_unit",
    "rgb_to_grayscale",
    "svhn_dir",
]
