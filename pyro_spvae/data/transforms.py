"""Image transforms from 8-bit images to model inputs in ``[0, 1]``.

Every transform works in two stages so that :class:`~pyro_spvae.data.ImageDataset` can precompute
the deterministic part once per split and apply the stochastic part per batch:

- :meth:`Transform.prepare` maps the whole split, ``uint8`` of shape ``(N, C, H, W)``, to a stored
  tensor (deterministic, done once; a compact ``uint8`` whenever possible);
- :meth:`Transform.batch` maps rows of the stored tensor to ``float32`` of shape ``(B, C, H, W)``,
  drawing any noise from the given ``torch.Generator`` (the global RNG when ``None``).

===================  ==========================================================  =============
name                 output                                                      likelihood
===================  ==========================================================  =============
binary-dynamic       Bernoulli(k/255), resampled on every batch                  bernoulli
binary-static        one fixed Bernoulli(k/255) draw per image (seeded)          bernoulli
discrete             k/255                                                       binomial
dequantized          (k + u)/256, u ~ U[0, 1) per batch; floor(256 x) = k        gaussian
spvae-discrete       per-image min-max to [0, 1], then round(255 x)/255          binomial
spvae-continuous     spvae-discrete + N(0, (1/255)^2) reflected into [0, 1],     gaussian
                     per-image min-max again (noise fixed by a seed)
===================  ==========================================================  =============

The SPVAE preprocessing follows Tan & Peharz (ICML 2019, experiments and reference code); see
``docs/spvae.md``. Colour data sets (SVHN, CIFAR-10) are first made greyscale with
:func:`rgb_to_grayscale`, as the reference does, so that the transforms above see ``(N, 1, 32, 32)``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

import torch

from pyro_spvae.validation import (
    check_choice,
    check_floating_dtype,
    check_nonnegative_int,
    check_positive_int,
    check_tensor,
)

__all__ = [
    "TRANSFORMS",
    "DequantizeUniform",
    "Discrete8Bit",
    "DynamicBinarize",
    "SPVAEContinuous",
    "SPVAEDiscrete",
    "SeededTransform",
    "StaticBinarize",
    "Transform",
    "get_transform",
    "minmax_per_image",
    "reflect_unit",
    "rgb_to_grayscale",
]

# Largest u with (k + u) < k + 1 exactly in float32 for every k in 0..255.
_U_MAX = 1.0 - 2.0**-15


def _check_images(images: torch.Tensor) -> None:
    check_tensor("images", images)
    if images.dtype != torch.uint8:
        raise ValueError(f"images must have dtype torch.uint8 (8-bit pixels), got {images.dtype}")
    if images.dim() != 4:
        raise ValueError(f"images must have shape (N, C, H, W), got {tuple(images.shape)}")
    if min(images.shape[1:]) < 1:
        raise ValueError(f"images must have non-empty C, H, W, got shape {tuple(images.shape)}")


def _check_generator(generator: torch.Generator | None) -> None:
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")


def minmax_per_image(x: torch.Tensor) -> torch.Tensor:
    """Rescale each image to ``[0, 1]``: ``(x - min) / (max - min)`` over all but the first dim.

    Constant images map to zeros.

    :param x: float tensor of shape ``(N, ...)``.
    :returns: float tensor of the same shape, each image with min 0 and (unless constant) max 1.
    """
    check_floating_dtype("x", x)
    if x.dim() < 1:
        raise ValueError("minmax_per_image expects a tensor of shape (N, ...)")
    if x.numel() == 0:
        return x.clone()
    flat = x.flatten(1) if x.dim() > 1 else x.reshape(-1, 1)
    lo = flat.amin(dim=1, keepdim=True)
    span = flat.amax(dim=1, keepdim=True) - lo
    out = (flat - lo) / torch.where(span > 0, span, torch.ones_like(span))
    return out.reshape(x.shape)


def reflect_unit(x: torch.Tensor) -> torch.Tensor:
    """Reflect values into ``[0, 1]`` at both boundaries (``-0.1 -> 0.1``, ``1.1 -> 0.9``)."""
    y = torch.remainder(x, 2.0)
    return torch.where(y > 1.0, 2.0 - y, y)


def rgb_to_grayscale(images: torch.Tensor, chunk: int = 8192) -> torch.Tensor:
    """8-bit RGB to 8-bit greyscale exactly as Pillow's ``Image.convert("L")``, which the SPVAE
    reference applies to SVHN (``data/dataprocessing.py``, ``greyscalify``):

    ``L = (19595 R + 38470 G + 7471 B + 2**15) >> 16``,

    the ITU-R BT.601 luma weights 0.299, 0.587, 0.114 in 16-bit fixed point, rounded to the
    nearest integer (so ``L`` is in ``0..255``). See ``docs/spvae.md``.

    :param images: ``uint8`` tensor of shape ``(N, 3, H, W)`` (channels R, G, B).
    :param chunk: images converted at a time (bounds the ``int32`` temporaries).
    :returns: ``uint8`` tensor of shape ``(N, 1, H, W)``.
    :raises TypeError: if ``images`` is not a tensor.
    :raises ValueError: for a dtype other than ``uint8`` or a shape other than ``(N, 3, H, W)``.
    """
    _check_images(images)
    if images.shape[1] != 3:
        raise ValueError(f"images must have 3 channels (R, G, B), got shape {tuple(images.shape)}")
    chunk = check_positive_int("chunk", chunk)
    weights = torch.tensor([19595, 38470, 7471], dtype=torch.int32).view(1, 3, 1, 1)
    out = torch.empty((images.shape[0], 1, *images.shape[2:]), dtype=torch.uint8)
    for start in range(0, images.shape[0], chunk):
        part = images[start : start + chunk].to(torch.int32)
        luma = ((part * weights).sum(dim=1, keepdim=True) + 2**15) >> 16
        out[start : start + chunk] = luma.to(torch.uint8)
    return out


class Transform(ABC):
    """A named image transform with its natural likelihood (see the module docstring)."""

    name: ClassVar[str]
    #: Name of the natural likelihood in :func:`pyro_spvae.nn.likelihoods.make_likelihood`.
    likelihood: ClassVar[str]
    #: Whether :meth:`batch` draws random numbers.
    stochastic: ClassVar[bool]

    def prepare(self, images: torch.Tensor) -> torch.Tensor:
        """Deterministic part on a whole split.

        :param images: ``uint8`` tensor of shape ``(N, C, H, W)``.
        :returns: the stored representation, first dim ``N`` (row ``i`` depends on image ``i`` only).
        """
        _check_images(images)
        return self._prepare(images)

    def batch(self, stored: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Stochastic part on rows of the stored tensor.

        :param stored: rows of :meth:`prepare`'s output, shape ``(B, C, H, W)``.
        :param generator: random source for stochastic transforms (ignored by deterministic ones).
        :returns: ``float32`` tensor of shape ``(B, C, H, W)`` with values in ``[0, 1]``.
        """
        _check_generator(generator)
        return self._batch(stored, generator)

    def __call__(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """``batch(prepare(images), generator)``: the transform applied to 8-bit images."""
        return self.batch(self.prepare(images), generator)

    def _prepare(self, images: torch.Tensor) -> torch.Tensor:
        return images

    @abstractmethod
    def _batch(self, stored: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor: ...

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class SeededTransform(Transform):
    """A transform whose deterministic part draws its noise once, from a generator seeded with
    ``seed`` (an int ``>= 0``), so that a split is always transformed the same way."""

    def __init__(self, seed: int = 0):
        self.seed = check_nonnegative_int("seed", seed)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(seed={self.seed})"


class DynamicBinarize(Transform):
    """Fresh Bernoulli(k/255) binarisation on every batch (values in ``{0, 1}``)."""

    name = "binary-dynamic"
    likelihood = "bernoulli"
    stochastic = True

    def _batch(self, stored, generator):
        return torch.bernoulli(stored.float() / 255.0, generator=generator)


class StaticBinarize(SeededTransform):
    """One fixed Bernoulli(k/255) binarisation of a whole split, seeded by ``seed``.

    Image ``i`` of the split always gets the same binary image, however it is batched.
    """

    name = "binary-static"
    likelihood = "bernoulli"
    stochastic = False

    def _prepare(self, images):
        gen = torch.Generator().manual_seed(self.seed)
        return torch.bernoulli(images.float() / 255.0, generator=gen).to(torch.uint8)

    def _batch(self, stored, generator):
        return stored.float()


class Discrete8Bit(Transform):
    """The 8-bit grid ``k / 255``."""

    name = "discrete"
    likelihood = "binomial"
    stochastic = False

    def _batch(self, stored, generator):
        return stored.float() / 255.0


class DequantizeUniform(Transform):
    """Uniform dequantisation ``(k + u) / 256`` with fresh ``u ~ U[0, 1)`` per batch.

    Values lie in ``[0, 1)`` and ``floor(256 x) == k`` exactly.
    """

    name = "dequantized"
    likelihood = "gaussian"
    stochastic = True

    def _batch(self, stored, generator):
        u = torch.rand(stored.shape, generator=generator).clamp_(max=_U_MAX)
        return (stored.float() + u) / 256.0


class SPVAEDiscrete(Transform):
    """SPVAE "discrete" preprocessing: per-image min-max to ``[0, 1]``, then ``round(255 x) / 255``.

    The rounding is the reference's ``discretize`` for MNIST and CIFAR-10. Its SVHN script saves
    the min-max'd greyscale images *without* rounding (``255 x`` is then generally not an integer,
    which its lgamma-based Binomial accepts). Here SVHN is rounded too, so that every "discrete"
    data set lives on the Binomial(255) grid of :class:`~pyro_spvae.distributions.BinomialGrid`:
    a deliberate deviation of at most ``0.5 / 255`` per pixel (see ``docs/spvae.md``).
    """

    name = "spvae-discrete"
    likelihood = "binomial"
    stochastic = False

    def _prepare(self, images):
        return torch.round(255.0 * minmax_per_image(images.float())).to(torch.uint8)

    def _batch(self, stored, generator):
        return stored.float() / 255.0


class SPVAEContinuous(SeededTransform):
    """SPVAE "continuous" preprocessing: the discrete version plus ``N(0, (1/255)^2)`` noise,
    reflected into ``[0, 1]``, then per-image min-max again.

    The noise is drawn once per split from a generator seeded with ``seed`` (a preprocessing step,
    as in the paper), so the data set is fixed.
    For SVHN the reference adds the noise to the unrounded min-max'd images; here it is added to
    the rounded ones (see :class:`SPVAEDiscrete`), a difference of at most ``0.5 / 255`` before a
    noise of standard deviation ``1 / 255``.
    """

    name = "spvae-continuous"
    likelihood = "gaussian"
    stochastic = False

    def _prepare(self, images):
        discrete = torch.round(255.0 * minmax_per_image(images.float())) / 255.0
        gen = torch.Generator().manual_seed(self.seed)
        noisy = discrete + torch.randn(discrete.shape, generator=gen) / 255.0
        return minmax_per_image(reflect_unit(noisy)).clamp_(0.0, 1.0)

    def _batch(self, stored, generator):
        return stored.float()


_REGISTRY: dict[str, type[Transform]] = {
    cls.name: cls
    for cls in (
        DynamicBinarize,
        StaticBinarize,
        Discrete8Bit,
        DequantizeUniform,
        SPVAEDiscrete,
        SPVAEContinuous,
    )
}

#: Names accepted by :func:`get_transform` and :func:`~pyro_spvae.data.load_dataset`.
TRANSFORMS: tuple[str, ...] = tuple(_REGISTRY)


def get_transform(transform: str | Transform) -> Transform:
    """Return the transform named ``transform`` (default seeds), or ``transform`` itself.

    :raises ValueError: for an unknown name (the message lists the valid ones).
    :raises TypeError: for anything but a name or a :class:`Transform`.
    """
    if isinstance(transform, Transform):
        return transform
    if not isinstance(transform, str):
        raise TypeError(f"transform must be a name or a Transform, got {type(transform).__name__}")
    return _REGISTRY[check_choice("transform", transform, TRANSFORMS)]()

