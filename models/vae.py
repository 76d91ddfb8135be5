"""The baseline variational autoencoder (Kingma & Welling 2014) as a Pyro model.

Generative model, for each of the ``B`` data points (``pyro.plate("data", B, dim=-1)``)::

    z ~ N(0, I_{z_dim}),    x | z ~ lik(decoder(z))

with ``lik`` one of the likelihood heads of :mod:`pyro_spvae.nn.likelihoods` (Bernoulli,
Gaussian with learnt or predicted scale, Binomial(255), discretised logistic, 256-way categorical)
and a dense (MLP) or convolutional decoder. The default sizes follow the IWAE paper's
one-stochastic-layer MNIST model, 784-200-200-50 (Burda et al. 2016, §5).

The SPVAE reference code's VAEs (Tan & Peharz 2019; see ``docs/spvae.md``) are options:
``likelihood_kwargs={"scale": "precision", "loc": "sigmoid"}`` (Gaussian mean ``sigmoid(g_mu(z))``,
precision ``1 + g_p(z)^2``) or ``{"eps": 1e-7}`` (squeezed Binomial), ``decoder_heads="separate"``
(one decoder network per likelihood parameter, as their dense VAEs), ``out_layer="deconv"`` (their
conv decoders' transposed-convolution heads) and ``init="tf1"``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import pyro
import pyro.distributions as dist
import torch
from pyro.nn import PyroModule
from torch import nn
from torch.distributions import Distribution

from pyro_spvae.nn.builders import build_decoder
from pyro_spvae.nn.likelihoods import Likelihood, make_likelihood
from pyro_spvae.validation import (
    check_event_shape,
    check_hidden,
    check_network_input,
    check_nonnegative_int,
    check_positive_int,
    check_tensor,
)

__all__ = ["VAE", "Encoder"]


@runtime_checkable
class Encoder(Protocol):
    """What :meth:`VAE.reconstruct` needs of a guide: the posterior parameters of ``z``."""

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(loc, scale)``, each ``(..., z_dim)``, for ``x`` of shape ``(..., *event_shape)``."""
        ...


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
    :param decoder_heads: ``"shared"`` (one decoder for all likelihood parameters) or
        ``"separate"`` (one decoder network per parameter; see :mod:`pyro_spvae.nn.builders`).
    :param stride: stride of the transposed convolutions (``arch="conv"``).
    :param out_layer: ``"conv"`` or ``"deconv"``, the conv decoder's output layer
        (:class:`~pyro_spvae.nn.ConvDecoder`).
    :param init: weight initialisation, ``"torch"`` or ``"tf1"`` (:data:`pyro_spvae.nn.mlp.INITS`).

    ``forward(x)`` with ``x`` of shape ``(B, *event_shape)`` is the Pyro model (sites ``"z"``,
    shape ``(B, z_dim)``, and observed ``"x"``); ``max_plate_nesting = 1``; every op accepts extra
    leading particle dims (``vectorize_particles=True``).
    """

    def __init__(self, event_shape: Sequence[int] = (1, 28, 28), z_dim: int = 50,
                 hidden: Sequence[int] = (200, 200), likelihood: str | Likelihood = "bernoulli",
                 arch: str = "dense", activation: str | nn.Module = "softplus",
                 channels: Sequence[int] = (32, 64), likelihood_kwargs: dict | None = None,
                 decoder_heads: str = "shared", stride: int = 2, out_layer: str = "conv",
                 init: str = "torch") -> None:
        super().__init__()
        self.event_shape = check_event_shape("event_shape", event_shape)
        self.z_dim = check_positive_int("z_dim", z_dim)
        hidden = check_hidden("hidden", hidden)
        self.likelihood = make_likelihood(likelihood, self.event_shape, **(likelihood_kwargs or {}))
        self.arch = arch  # checked by build_decoder
        self.decoder = build_decoder(arch, self.z_dim, self.likelihood.param_shape, hidden, activation,
                                     channels, heads=decoder_heads, num_heads=self.likelihood.num_params,
                                     stride=stride, out_layer=out_layer, init=init)

    def validate(self, x: object) -> torch.Tensor:
        """Check a data batch ``x`` of shape ``(B, *event_shape)``: tensor type, floating dtype,
        shape, NaN/inf and the support of the likelihood.

        :raises TypeError: if ``x`` is not a tensor.
        :raises ValueError: naming the problem otherwise.
        """
        # one pass over the values (check_module_data would make a second finiteness pass): the
        # likelihood's check covers the type, dtype, the parameters' dtype and device, the shape,
        # the empty batch, NaN/inf and the support
        return self.likelihood.validate(x, batch_dims=1, like=next(self.parameters()))

    def decode(self, z: torch.Tensor) -> Distribution:
        """``p(x | z)`` for latents of shape ``(..., z_dim)``: a distribution with batch shape
        ``...`` and event shape ``event_shape``."""
        check_network_input("z", z, next(self.parameters()), (self.z_dim,))
        return self.likelihood(self.decoder(z))

    def prior(self, batch_size: int, like: torch.Tensor | None = None) -> Distribution:
        """The prior ``N(0, I)`` over ``z`` with batch shape ``(batch_size,)`` and event shape
        ``(z_dim,)``, with ``like``'s dtype and device (default: the parameters')."""
        batch_size = check_nonnegative_int("batch_size", batch_size)
        return self._unit_normal(like).expand([batch_size, self.z_dim]).to_event(1)

    def _unit_normal(self, like: torch.Tensor | None) -> dist.Normal:
        """A scalar ``N(0, 1)`` with ``like``'s dtype and device (default: the parameters')."""
        ref = next(self.parameters()) if like is None else check_tensor("like", like)
        zero = torch.zeros((), dtype=ref.dtype, device=ref.device)
        return dist.Normal(zero, zero + 1)

    def forward(self, x: torch.Tensor) -> None:
        """The Pyro model for a batch ``x`` of shape ``(B, *event_shape)``."""
        self.validate(x)
        with pyro.plate("data", x.shape[0], dim=-1):
            # the prior's batch dim comes from the plate (not from an int batch size), so that the
            # model also runs under JIT tracing (JitTrace_ELBO), where x.shape[0] is a traced value
            prior = self._unit_normal(x).expand([self.z_dim]).to_event(1)
            z = pyro.sample("z", prior)
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
    def reconstruct(self, x: torch.Tensor, guide: Encoder, mean: bool = True) -> torch.Tensor:
        """Reconstruct ``x`` of shape ``(B, *event_shape)`` through ``guide``'s posterior mean:
        the mean (or a sample) of ``p(x | z = loc(x))``, shape ``(B, *event_shape)``.

        :param guide: any :class:`Encoder`, e.g. :class:`~pyro_spvae.guides.GaussianGuide`.
        """
        self.validate(x)
        if not isinstance(guide, Encoder):
            raise TypeError(f"guide must provide encode(x) -> (loc, scale), got {type(guide).__name__}")
        loc, _ = guide.encode(x)
        px = self.decode(loc)
        return px.mean if mean else px.sample()

