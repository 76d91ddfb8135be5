"""The baseline variational autoencoder (Kingma & Welling 2014) as a Pyro model.

Generative model, for each of the ``B`` data points (``pyro.plate("data", B, dim=-1)``)::

    z ~ N(0, I_{z_dim}),    x | z ~ lik(decoder(z))

with ``lik`` one of the likelihood heads of :mod:`pyro_spvae.nn.likelihoods` (Bernoulli,
Gaussian with learnt scale, Binomial(255), discretised logistic, 256-way categorical) and a dense
(MLP) or convolutional decoder. The default sizes follow the IWAE paper's one-stochastic-layer
MNIST model, 784-200-200-50 (Burda et al. 2016, §5).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import pyro
import pyro.distributions as dist
import torch
from pyro.nn import PyroModule
from torch import nn
from torch.distributions import Distribution

from pyro_spvae.nn.builders import ARCHS, build_decoder
from pyro_spvae.validation import (
    check_event_shape,
    check_float_tensor,
    check_hidden,
    check_input_like,
    check_nonnegative_int,
    check_positive_int,
)
from pyro_spvae.nn.likelihoods import Likelihood, make_likelihood

if TYPE_CHECKING:
    from pyro_spvae.guides.gaussian import GaussianGuide

__all__ = ["VAE", "build_vae"]


class VAE(PyroModule):
    r"""Variational autoencoder ``z ~ N(0, I)``, ``x | z ~ lik(decoder(z))``.

    :param event_shape: shape of one observation ``(C, H, W)`` (any non-empty shape with
        ``arch="dense"``).
    :param z_dim: latent dimension.
    :param hidden: hidden widths of the decoder MLP (for ``"conv"``: of the MLP before the
        transposed convolutions).
    :param likelihood: likelihood name (``"bernoulli"``, ``"gaussian"``, ``"binomial"``,
        ``"logistic"``, ``"categorical"``) or a :class:`~pyro_spvae.nn.Likelihood`.
    :param arch: ``"dense"`` or ``"conv"``.
    :param activation: activation name or module.
    :param channels: convolution widths (``arch="conv"`` only).
    :param likelihood_kwargs: options of the likelihood head (e.g. ``{"scale": "predicted"}``).

    ``forward(x)`` with ``x`` of shape ``(B, *event_shape)`` is the Pyro model (sites ``"z"``,
    shape ``(B, z_dim)``, and observed ``"x"``); ``max_plate_nesting = 1``; every op accepts extra
    leading particle dims (``vectorize_particles=True``).
    """

    def __init__(self, event_shape: Sequence[int] = (1, 28, 28), z_dim: int = 50,
                 hidden: Sequence[int] = (200, 200), likelihood: str | Likelihood = "bernoulli",
                 arch: str = "dense", activation: str | nn.Module = "softplus",
                 channels: Sequence[int] = (32, 64), likelihood_kwargs: dict | None = None) -> None:
        super().__init__()
        self.event_shape = check_event_shape("event_shape", event_shape)
        self.z_dim = check_positive_int("z_dim", z_dim)
        hidden = check_hidden("hidden", hidden)
        if arch not in ARCHS:
            raise ValueError(f"unknown arch {arch!r}; choose one of {ARCHS}")
        self.arch = arch
        self.likelihood = make_likelihood(likelihood, self.event_shape, **(likelihood_kwargs or {}))
        if arch == "conv" and len(self.event_shape) != 3:
            raise ValueError(f"arch='conv' needs event_shape (C, H, W), got {self.event_shape}")
        self.decoder = build_decoder(arch, self.z_dim, self.likelihood.param_shape, hidden, activation,
                                     channels)

    def validate(self, x: object) -> torch.Tensor:
        """Check a data batch ``x`` of shape ``(B, *event_shape)``: tensor type, floating dtype,
        shape, NaN/inf and the support of the likelihood.

        :raises TypeError: if ``x`` is not a tensor.
        :raises ValueError: naming the problem otherwise.
        """
        x = check_float_tensor("x", x, self.event_shape, batch_dims=1)
        check_input_like("x", x, next(self.parameters()))
        return self.likelihood.validate(x)

    def decode(self, z: torch.Tensor) -> Distribution:
        """``p(x | z)`` for latents of shape ``(..., z_dim)``: a distribution with batch shape
        ``...`` and event shape ``event_shape``."""
        check_input_like("z", z, next(self.parameters()))
        if z.dim() == 0 or z.shape[-1] != self.z_dim:
            raise ValueError(f"z must have shape (..., {self.z_dim}), got {tuple(z.shape)}")
        return self.likelihood(self.decoder(z))

    def prior(self, batch_size: int, like: torch.Tensor | None = None) -> Distribution:
        """The prior ``N(0, I)`` over ``z`` with batch shape ``(batch_size,)`` and event shape
        ``(z_dim,)``, with ``like``'s dtype and device (default: the parameters')."""
        batch_size = check_nonnegative_int("batch_size", batch_size)
        if like is not None and not isinstance(like, torch.Tensor):
            raise TypeError(f"like must be a torch.Tensor or None, got {type(like).__name__}")
        ref = like if like is not None else next(self.parameters())
        zero = torch.zeros((), dtype=ref.dtype, device=ref.device)
        return dist.Normal(zero, zero + 1).expand([batch_size, self.z_dim]).to_event(1)

    def forward(self, x: torch.Tensor) -> None:
        """The Pyro model for a batch ``x`` of shape ``(B, *event_shape)``."""
        self.validate(x)
        with pyro.plate("data", x.shape[0], dim=-1):
            z = pyro.sample("z", self.prior(x.shape[0], like=x))
            pyro.sample("x", self.decode(z), obs=x)

    @torch.no_grad()
    def sample(self, num_samples: int, mean: bool = True) -> torch.Tensor:
        """Draw ``num_samples`` images ``(num_samples, *event_shape)`` from the model:
        ``z ~ p(z)``, then the mean of ``p(x | z)`` (``mean=True``, for image grids) or a sample."""
        num_samples = check_positive_int("num_samples", num_samples)
        z = self.prior(num_samples).sample()
        px = self.decode(z)
        return px.mean if mean else px.sample()

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor, guide: GaussianGuide, mean: bool = True) -> torch.Tensor:
        """Reconstruct ``x`` of shape ``(B, *event_shape)`` through ``guide``'s posterior mean:
        the mean (or a sample) of ``p(x | z = loc(x))``, shape ``(B, *event_shape)``."""
        self.validate(x)
        if not hasattr(guide, "encode"):
            raise TypeError(f"guide must provide encode(x) -> (loc, scale), got {type(guide).__name__}")
        loc, _ = guide.encode(x)
        px = self.decode(loc)
        return px.mean if mean else px.sample()


def build_vae(event_shape: Sequence[int] = (1, 28, 28), *, z_dim: int = 50,
              hidden: Sequence[int] = (200, 200), likelihood: str = "bernoulli", arch: str = "dense",
              activation: str = "softplus", channels: Sequence[int] = (32, 64),
              likelihood_kwargs: dict | None = None, min_scale: float = 1e-4) -> tuple[VAE, GaussianGuide]:
    """Registry builder: a :class:`VAE` and its :class:`~pyro_spvae.guides.GaussianGuide` with
    mirrored encoder/decoder architectures (same ``hidden``, ``arch``, ``activation``, ``channels``).

    :returns: ``(model, guide)``.
    """
    from pyro_spvae.guides.gaussian import GaussianGuide  # models build on guides, lazily

    model = VAE(event_shape, z_dim=z_dim, hidden=hidden, likelihood=likelihood, arch=arch,
                activation=activation, channels=channels, likelihood_kwargs=likelihood_kwargs)
    guide = GaussianGuide(event_shape, z_dim=z_dim, hidden=hidden, arch=arch, activation=activation,
                          channels=channels, min_scale=min_scale)
    return model, guide
