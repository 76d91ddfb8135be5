r"""The VAE with a learnt hierarchical prior (VHP-VAE) of Klushyn et al. (2019) as a Pyro model.

Klushyn, Chen, Kurle, Cseke & van der Smagt (2019), "Learning Hierarchical Priors in VAEs",
NeurIPS. For each of the ``B`` data points (``pyro.plate("data", B, dim=-1)``)::

    zeta ~ N(0, I_d),    z | zeta ~ N(mu(zeta), diag sigma(zeta)^2),    x | z ~ lik(decoder(z))

and ``zeta`` is integrated out: the site ``"z"`` has the prior
:math:`p(z) = \int p(z \mid \zeta) p(\zeta) d\zeta`, whose ``log_prob`` is the ``K``-sample
importance-weighted bound with the amortised :math:`q(\zeta \mid z)`
(:class:`~pyro_spvae.distributions.hierarchical_prior.HierarchicalPrior`; the networks are
:class:`~pyro_spvae.nn.hierarchical_prior_net.HierarchicalPriorNet`). Any ELBO on this model is
therefore the VHP-VAE objective of the paper

.. math::

    \mathbb{E}_{q(z \mid x)}\Big[\log p(x \mid z) + \log \frac1K \sum_k
    \frac{p(z \mid \zeta_k) p(\zeta_k)}{q(\zeta_k \mid z)} - \log q(z \mid x)\Big] \le \log p(x),

and the paper's constrained optimisation (minimise the KL-like terms subject to a reconstruction
constraint :math:`\mathbb{E}[C] \le \kappa^2`) is that ELBO wrapped in
:class:`~pyro_spvae.infer.geco.GECO` with ``rule="vhp"``.

**Where q(zeta | z) lives.** :math:`q(\zeta \mid z)` is a proposal inside the prior's density
bound, not the posterior of a sample site, so it is a network of the *model* (``prior_net``) and
its parameters are trained by the ELBO's gradient through ``log p(z)``; the guide
(:class:`~pyro_spvae.guides.VHPVAEGuide`) is the usual :math:`q(z \mid x)`, and models never import
guides.

The decoder, the likelihoods and ``sample``/``reconstruct`` are those of
:class:`~pyro_spvae.models.VAE`.
"""

from __future__ import annotations

from collections.abc import Sequence

import pyro
import torch
from torch import nn

from pyro_spvae.distributions.hierarchical_prior import HierarchicalPrior
from pyro_spvae.nn.hierarchical_prior_net import HierarchicalPriorNet
from pyro_spvae.nn.likelihoods import Likelihood
from pyro_spvae.validation import check_nonnegative_int, check_positive_int

from .vae import VAE

__all__ = ["VHPVAE"]


class VHPVAE(VAE):
    r"""VAE with the hierarchical prior ``z ~ int p(z | zeta) N(zeta; 0, I) dzeta`` (see the module
    docstring).

    :param event_shape: shape of one observation ``(C, H, W)`` (any non-empty shape with
        ``arch="dense"``).
    :param z_dim: ``D``, the dimension of ``z``.
    :param zeta_dim: ``d``, the dimension of ``zeta`` (default: ``z_dim``).
    :param num_prior_samples: ``K``, importance samples of ``zeta`` in the prior's log-density
        bound (:attr:`num_prior_samples` may be raised later, e.g. for evaluation).
    :param prior_hidden: hidden widths of the networks of ``p(z | zeta)`` and ``q(zeta | z)``
        (default: ``hidden``).
    :param prior_min_scale: lower bound on the scales of ``p(z | zeta)`` and ``q(zeta | z)``.

    The remaining keywords are :class:`~pyro_spvae.models.VAE`'s (``hidden``, ``likelihood``,
    ``arch`` ``"dense"`` or ``"conv"``, ``activation``, ``channels``, ``likelihood_kwargs``,
    ``decoder_heads``, ``stride``, ``out_layer``, ``init``). Parameters: the decoder, the
    likelihood head and ``prior_net``.

    ``forward(x)`` with ``x`` of shape ``(B, *event_shape)`` is the Pyro model (sites ``"z"``
    ``(B, z_dim)`` and observed ``"x"``); ``max_plate_nesting = 1``; every op accepts leading
    particle dims.
    """

    def __init__(self, event_shape: Sequence[int] = (1, 28, 28), z_dim: int = 32, zeta_dim: int | None = None,
                 num_prior_samples: int = 5, hidden: Sequence[int] = (200, 200),
                 prior_hidden: Sequence[int] | None = None, likelihood: str | Likelihood = "bernoulli",
                 arch: str = "dense", activation: str | nn.Module = "softplus",
                 channels: Sequence[int] = (32, 64),
                 likelihood_kwargs: dict | None = None, decoder_heads: str = "shared", stride: int = 2,
                 out_layer: str = "conv", init: str = "torch", prior_min_scale: float = 1e-4) -> None:
        super().__init__(event_shape, z_dim=z_dim, hidden=hidden, likelihood=likelihood, arch=arch,
                         activation=activation, channels=channels, likelihood_kwargs=likelihood_kwargs,
                         decoder_heads=decoder_heads, stride=stride, out_layer=out_layer, init=init)
        zeta_dim = self.z_dim if zeta_dim is None else zeta_dim
        prior_hidden = hidden if prior_hidden is None else prior_hidden
        self.prior_net = HierarchicalPriorNet(self.z_dim, zeta_dim, prior_hidden, activation,
                                              num_prior_samples, prior_min_scale, init)

    @property
    def num_prior_samples(self) -> int:
        """``K``, importance samples of ``zeta`` per evaluation of ``log p(z)``."""
        return self.prior_net.num_samples

    @num_prior_samples.setter
    def num_prior_samples(self, value: int) -> None:
        self.prior_net.num_samples = check_positive_int("num_prior_samples", value)

    @property
    def zeta_dim(self) -> int:
        """``d``, the dimension of ``zeta``."""
        return self.prior_net.zeta_dim

    def prior(self, batch_size: int, like: torch.Tensor | None = None) -> HierarchicalPrior:
        """The hierarchical prior over ``z`` with batch shape ``(batch_size,)`` and event shape
        ``(z_dim,)``, with ``like``'s dtype and device (default: the parameters')."""
        batch_size = check_nonnegative_int("batch_size", batch_size)
        return self.prior_net(like).expand([batch_size])

    def forward(self, x: torch.Tensor) -> None:
        """The Pyro model for a batch ``x`` of shape ``(B, *event_shape)``."""
        self.validate(x)
        with pyro.plate("data", x.shape[0], dim=-1):
            # batch shape () expanded by the plate: no traced size becomes an int (JitTrace_ELBO)
            z = pyro.sample("z", self.prior_net(x))
            pyro.sample("x", self.decode(z), obs=x)

    @torch.no_grad()
    def embed_prior(self, num_samples: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Ancestral draws ``(zeta, z)`` of shapes ``(num_samples, zeta_dim)`` and
        ``(num_samples, z_dim)`` from the hierarchical prior (for plots of the learnt prior)."""
        num_samples = check_positive_int("num_samples", num_samples)
        zeta = self.prior_net.zeta_prior().sample((num_samples,))
        return zeta, self.prior_net.conditional(zeta).sample()
