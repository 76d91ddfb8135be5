r"""Leaf-wise amortised guide for SPVAE (Tan & Peharz, ICML 2019, §3; see ``docs/spvae.md``).

Every leaf VAE ``l`` of the SPN has its own encoder :math:`q_\phi(z_l | x_{R_l})` reading only
its patch; all ``L`` encoders are ONE stacked network (:class:`~pyro_spvae.nn.StackedMLP` over
flattened patches, or grouped convolutions :class:`~pyro_spvae.nn.StackedConvEncoder`), giving a
diagonal Gaussian per leaf (:class:`~pyro_spvae.distributions.LeafPosterior`):

.. math::  q(z | x) = \prod_l \mathcal{N}\big(z_l; \mu_l(x_{R_l}), \mathrm{diag}\,\sigma_l^2(x_{R_l})\big).

The scale is ``softplus(raw) + 1e-4`` by default, or ``1 / sqrt(1 + raw^2)`` with
``posterior_scale="precision"`` (the SPVAE reference code, Tan & Peharz 2019), whose dense leaf
encoders also have separate networks for the mean and ``raw`` (``encoder_heads="separate"``: one
stacked network per head) and whose conv leaf encoders share a trunk with two linear heads (the
default ``"shared"``).

Missing pixels (NaN) are replaced by 0 before encoding; with ``mask_input=True`` the encoder also
reads the observation mask (one extra input per pixel value), so it can tell a missing pixel from
a black one. The model marginalises missing pixels exactly either way; the guide only proposes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import pyro
import pyro.distributions as dist
import torch
from pyro.nn import PyroModule, pyro_method
from torch import Tensor, nn

from pyro_spvae.distributions import LeafPosterior
from pyro_spvae.nn.builders import HEADS
from pyro_spvae.nn.likelihoods import check_observations
from pyro_spvae.nn.stacked import StackedConvEncoder, StackedHeads, StackedMLP
from pyro_spvae.spn.scopes import LeafScopes
from pyro_spvae.validation import check_bool, check_choice, check_hidden, check_positive_int

__all__ = ["SPVAEGuide", "LEAF_POSTERIOR_SCALES"]

#: How the leaf encoders' second output gives the posterior scale (see the module docstring).
LEAF_POSTERIOR_SCALES: tuple[str, ...] = ("softplus", "precision")

_MIN_SCALE = 1e-4
_LOG_2PI = math.log(2 * math.pi)


class SPVAEGuide(PyroModule):
    """Stacked leaf encoders producing :math:`q(z_l | x_{R_l})` for all leaves at once.

    :param scopes: the model's image :class:`~pyro_spvae.spn.LeafScopes` (patch layout).
    :param leaf_k: leaf VAEs per leaf region (leaf ``l`` reads region ``l // leaf_k``).
    :param z_dim: latent size per leaf.
    :param hidden: hidden widths of every leaf encoder.
    :param activation: activation name.
    :param arch: ``"dense"`` or ``"conv"`` (rectangular patches only).
    :param channels: convolution widths for ``arch="conv"``.
    :param mask_input: also feed the observation mask to the encoders.
    :param posterior_scale: ``"softplus"`` or ``"precision"`` (see the module docstring).
    :param encoder_heads: ``"shared"`` or ``"separate"`` networks for the mean and the scale.
    :param stride: stride of the conv leaves' convolutions.
    :param init: weight initialisation, ``"torch"`` or ``"tf1"``.

    Use :meth:`from_model` to match an :class:`~pyro_spvae.models.SPVAE`. Site: ``z`` of shape
    ``(B, L, z_dim)`` inside ``pyro.plate("data", B, dim=-1)``.
    """

    def __init__(
        self,
        scopes: LeafScopes,
        leaf_k: int,
        z_dim: int,
        hidden: Sequence[int] = (30, 30),
        activation: str = "softplus",
        arch: str = "dense",
        channels: Sequence[int] = (8, 16),
        mask_input: bool = False,
        posterior_scale: str = "softplus",
        encoder_heads: str = "shared",
        stride: int = 2,
        init: str = "torch",
    ) -> None:
        super().__init__()
        if not isinstance(scopes, LeafScopes) or not scopes.is_image:
            raise TypeError(f"scopes must be a LeafScopes over images, got {type(scopes).__name__}")
        self.scopes = scopes
        self.leaf_k = check_positive_int("leaf_k", leaf_k)
        self.z_dim = check_positive_int("z_dim", z_dim)
        self.hidden = check_hidden("hidden", hidden)
        self.mask_input = check_bool("mask_input", mask_input)
        self.num_leaves = scopes.num_regions * self.leaf_k
        self.event_shape = scopes.event_shape
        self.arch = check_choice("arch", arch, ("dense", "conv"))
        self.posterior_scale = check_choice("posterior_scale", posterior_scale, LEAF_POSTERIOR_SCALES)
        separate = check_choice("encoder_heads", encoder_heads, HEADS) == "separate"
        if arch == "conv" and scopes.patch_shape is None:
            raise ValueError("arch='conv' needs rectangular leaf regions of one size; use arch='dense'")
        nets = [self._make_encoder(self.z_dim if separate else 2 * self.z_dim, activation, channels, stride,
                                   init) for _ in range(2 if separate else 1)]
        self.encoder = StackedHeads(nets, event_dims=1) if separate else nets[0]

    def _make_encoder(self, out_dim: int, activation: str, channels: Sequence[int], stride: int,
                      init: str) -> nn.Module:
        """One stacked encoder over all leaves with ``out_dim`` outputs per leaf."""
        c_in = 2 * self.event_shape[0] if self.mask_input else self.event_shape[0]
        if self.arch == "dense":
            return StackedMLP(self.num_leaves, c_in * self.scopes.max_size, self.hidden, out_dim,
                              activation=activation, init=init)
        return StackedConvEncoder(self.num_leaves, (c_in, *self.scopes.patch_shape), out_dim,
                                  check_hidden("channels", channels), self.hidden, activation=activation,
                                  stride=stride, init=init)

    @property
    def _param(self) -> Tensor:
        """A parameter of the encoder: the dtype and device inputs must have."""
        return next(self.encoder.parameters())

    @classmethod
    def from_model(cls, model: Any, hidden: Sequence[int] | None = None, mask_input: bool = False,
                   **kwargs: Any) -> SPVAEGuide:
        """The guide matching ``model``'s leaves, architecture and (by default) hidden widths.

        :param model: an :class:`~pyro_spvae.models.SPVAE`; its public attributes ``scopes``,
            ``leaf_k``, ``z_dim``, ``hidden``, ``arch`` (and ``channels`` for conv, ``stride`` and
            ``init`` when it has them) are read.
        :param hidden: hidden widths of the encoders (default: the model's decoder widths).
        :param mask_input: also feed the observation mask to the encoders.
        :param kwargs: other :class:`SPVAEGuide` arguments (``activation``, ``channels``,
            ``posterior_scale``, ``encoder_heads``, ``stride``, ``init``).
        """
        if not isinstance(getattr(model, "scopes", None), LeafScopes):
            raise TypeError(f"model must be an SPVAE (with image LeafScopes), got {type(model).__name__}")
        kw: dict[str, Any] = {"arch": model.arch, "activation": kwargs.pop("activation", "softplus")}
        for name in ("stride", "init"):
            if hasattr(model, name):
                kw[name] = getattr(model, name)
        if model.arch == "conv":
            kw["channels"] = kwargs.pop("channels", model.channels)
        kw.update(kwargs)
        return cls(model.scopes, model.leaf_k, model.z_dim, model.hidden if hidden is None else hidden,
                   mask_input=mask_input, **kw)

    def _masked_patches(self, x: Tensor) -> Tensor:
        """Validated patches ``(B, R, C_in, S)`` of images ``(B, C, H, W)``: missing (NaN) and padding
        pixels set to 0, followed by the observation mask channels when ``mask_input``."""
        # type, dtype/device (of the encoder), shape, empty batch and inf; NaN = missing
        x, _ = check_observations(x, self.event_shape, batch_dims=1, allow_missing=True, like=self._param)
        p, observed = self.scopes.gather_observed(x)  # (B, R, C, S)
        if self.mask_input:
            p = torch.cat([p, torch.ones_like(p) if observed is None else observed.to(p.dtype)], dim=-2)
        return p

    def _scale(self, raw: Tensor) -> Tensor:
        """The posterior scale from the encoders' second output: ``softplus(raw) + _MIN_SCALE``, or
        ``1 / sqrt(1 + raw^2)`` with ``posterior_scale="precision"``."""
        if self.posterior_scale == "precision":
            return torch.rsqrt(1.0 + raw * raw)
        # softplus on the strided half of ``h`` is ~10x slower than on a contiguous copy (torch 2.13 CPU)
        return nn.functional.softplus(raw.contiguous()) + _MIN_SCALE

    def _loc_scale(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``loc``, ``scale`` of shape ``(B, L, z_dim)`` (leaf-major views)."""
        loc, scale = self._loc_scale_net_major(x)
        return loc.transpose(0, 1), scale.transpose(0, 1)

    def _loc_scale_net_major(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Encoders with the leaf axis first: ``loc``, ``scale`` of shape ``(L, B, z_dim)``.

        The inputs are built leaf-major directly and the stacked network runs on ``(L, B, .)`` (one
        ``baddbmm`` per layer, no layout copies: a stacked MLP, or conv encoders in matrix form,
        :class:`~pyro_spvae.nn.StackedConvEncoder`).
        """
        p = self._masked_patches(x)  # (B, R, C_in, S)
        p = self.scopes.per_component(p, self.leaf_k, leaf_major=True)  # (L, B, C_in * S)
        if isinstance(self.encoder, StackedHeads):  # separate mean and scale networks
            loc, raw = self.encoder.forward_net_major_heads(p)
        else:  # (L, B, 2 z_dim) split
            loc, raw = self.encoder.forward_net_major(p).split(self.z_dim, dim=-1)
        return loc, self._scale(raw)

    @pyro_method
    def leaf_posterior(self, x: Tensor) -> dist.TorchDistribution:
        """:math:`q(z_l | x_{R_l})` for all leaves: Normal with batch ``(B, L)``, event ``(z_dim,)``."""
        loc, scale = self._loc_scale(x)
        return dist.Normal(loc, scale).to_event(1)

    @pyro_method
    def leaf_rsample(self, x: Tensor, num_samples: int) -> tuple[Tensor, Tensor]:
        """``num_samples`` reparameterised draws per leaf and their log-densities, fast path.

        With :math:`z = \\mu + \\sigma \\epsilon`,
        :math:`\\log q(z) = -\\tfrac12 \\|\\epsilon\\|^2 - \\sum \\log \\sigma - \\tfrac d2 \\log 2\\pi`
        holds identically in the parameters, so value and gradient equal
        ``leaf_posterior(x).log_prob(z)`` at a fraction of the cost.

        :returns: ``z`` ``(K, B, L, z_dim)`` and ``log_q`` ``(K, B, L)``, both views of leaf-major
            ``(L, K, B, .)`` tensors, the layout in which
            :meth:`SPVAE.leaf_log_lik <pyro_spvae.models.SPVAE.leaf_log_lik>` decodes them.
        """
        loc, scale = self._loc_scale_net_major(x)  # (L, B, z_dim)
        # drawn leaf-major, the layout the decoder reads (no copy): the same distribution as
        # leaf_posterior(x).rsample, another order of the random stream
        eps = torch.randn((self.num_leaves, num_samples, loc.shape[1], self.z_dim), dtype=loc.dtype,
                          device=loc.device)
        z = torch.addcmul(loc.unsqueeze(1), scale.unsqueeze(1), eps)  # (L, K, B, z_dim)
        log_q = (-0.5 * torch.linalg.vecdot(eps, eps)
                 - (torch.log(scale).sum(-1) + 0.5 * self.z_dim * _LOG_2PI).unsqueeze(1))
        return z.permute(1, 2, 0, 3), log_q.permute(1, 2, 0)

    def forward(self, x: Tensor) -> Tensor:
        """Sample site ``z`` ``(B, L, z_dim)`` in ``pyro.plate("data", B, dim=-1)``."""
        loc, scale = self._loc_scale(x)
        with pyro.plate("data", x.shape[0], dim=-1):
            return pyro.sample("z", LeafPosterior(loc, scale, validate_args=False))
