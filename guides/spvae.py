r"""Leaf-wise amortised guide for SPVAE (Tan & Peharz, ICML 2019; ``DESIGN.md`` §3).

Every leaf VAE ``l`` of the SPN has its own encoder :math:`q_\phi(z_l | x_{R_l})` reading only
its patch; all ``L`` encoders are ONE stacked network (:class:`~pyro_spvae.nn.StackedMLP` over
flattened patches, or grouped convolutions :class:`~pyro_spvae.nn.StackedConvEncoder`), giving a
diagonal Gaussian per leaf:

.. math::  q(z | x) = \prod_l \mathcal{N}\big(z_l; \mu_l(x_{R_l}), \mathrm{diag}\,\sigma_l^2(x_{R_l})\big).

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
from pyro.distributions import TorchDistribution
from pyro.nn import PyroModule, pyro_method
from torch import Tensor, nn
from torch.distributions import constraints, register_kl

from pyro_spvae.models.spvae import SPVAE, LeafScopes, _check_image, _LeafPrior
from pyro_spvae.validation import check_hidden, check_positive_int
from pyro_spvae.nn.stacked import StackedConvEncoder, StackedMLP

__all__ = ["SPVAEGuide"]

_MIN_SCALE = 1e-4
_LOG_2PI = math.log(2 * math.pi)


class _LeafPosterior(TorchDistribution):
    r""":math:`\prod_l \mathcal{N}(z_l; \mu_l, \mathrm{diag}\,\sigma_l^2)` over ``(L, z_dim)`` per data point.

    The distribution of site ``z`` in :meth:`SPVAEGuide.forward`: equal to
    ``Normal(loc, scale).to_event(2)``, but ``rsample`` keeps its standard-normal draw
    :math:`\epsilon` so that ``log_prob`` of the value just drawn is
    :math:`-\tfrac12\|\epsilon\|^2 - \sum\log\sigma - \tfrac n2 \log 2\pi`, which equals the
    Gaussian log-density identically in ``loc`` and ``scale`` (value and gradient, see
    :meth:`SPVAEGuide.leaf_rsample`) at a fraction of the cost. Any other value goes through the
    usual formula.
    """

    arg_constraints = {"loc": constraints.real, "scale": constraints.positive}
    support = constraints.independent(constraints.real, 2)
    has_rsample = True

    def __init__(self, loc: Tensor, scale: Tensor) -> None:
        self.loc, self.scale = torch.broadcast_tensors(loc, scale)
        self._last: tuple[Tensor, Tensor] | None = None  # (value, eps) of the latest rsample
        super().__init__(self.loc.shape[:-2], self.loc.shape[-2:], validate_args=False)

    def expand(self, batch_shape: Sequence[int], _instance: Any = None) -> _LeafPosterior:
        shape = torch.Size(batch_shape) + self.event_shape
        return _LeafPosterior(self.loc.expand(shape), self.scale.expand(shape))

    @property
    def mean(self) -> Tensor:
        return self.loc

    @property
    def variance(self) -> Tensor:
        return self.scale.pow(2)

    def rsample(self, sample_shape: Sequence[int] = ()) -> Tensor:
        shape = self._extended_shape(torch.Size(sample_shape))
        eps = torch.randn(shape, dtype=self.loc.dtype, device=self.loc.device)
        value = torch.addcmul(self.loc, self.scale, eps)
        self._last = (value, eps)
        return value

    def log_prob(self, value: Tensor) -> Tensor:
        if self._last is not None and value is self._last[0]:
            eps = self._last[1]
        else:
            eps = (value - self.loc) / self.scale
        n = self.event_shape.numel()
        log_det = torch.log(self.scale).sum((-2, -1))
        return -0.5 * torch.linalg.vecdot(eps, eps).sum(-1) - log_det - 0.5 * n * _LOG_2PI

    def entropy(self) -> Tensor:
        n = self.event_shape.numel()
        return torch.log(self.scale).sum((-2, -1)) + 0.5 * n * (1.0 + _LOG_2PI)


@register_kl(_LeafPosterior, _LeafPrior)
def _kl_leaf_posterior_prior(q: _LeafPosterior, p: _LeafPrior) -> Tensor:
    """Analytic KL for ``TraceMeanField_ELBO``: ``0.5 * sum(scale^2 + loc^2 - 1) - sum(log scale)``."""
    sq = q.scale * q.scale + q.loc * q.loc - 1.0
    return 0.5 * sq.sum((-2, -1)) - torch.log(q.scale).sum((-2, -1))


class SPVAEGuide(PyroModule):
    """Stacked leaf encoders producing :math:`q(z_l | x_{R_l})` for all leaves at once.

    :param scopes: the model's :class:`~pyro_spvae.models.spvae.LeafScopes` (patch layout).
    :param leaf_k: leaf VAEs per leaf region (leaf ``l`` reads region ``l // leaf_k``).
    :param z_dim: latent size per leaf.
    :param hidden: hidden widths of every leaf encoder.
    :param activation: activation name.
    :param arch: ``"dense"`` or ``"conv"`` (rectangular patches only).
    :param channels: convolution widths for ``arch="conv"``.
    :param mask_input: also feed the observation mask to the encoders.

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
    ) -> None:
        super().__init__()
        if not isinstance(scopes, LeafScopes):
            raise TypeError(f"scopes must be a LeafScopes, got {type(scopes).__name__}")
        self.scopes = scopes
        self.leaf_k = check_positive_int("leaf_k", leaf_k)
        self.z_dim = check_positive_int("z_dim", z_dim)
        self.hidden = check_hidden("hidden", hidden)
        self.mask_input = bool(mask_input)
        self.num_leaves = scopes.num_regions * self.leaf_k
        self.event_shape = scopes.event_shape
        c = self.event_shape[0]
        c_in = 2 * c if self.mask_input else c
        if arch == "dense":
            self.encoder = StackedMLP(self.num_leaves, c_in * scopes.max_size, self.hidden, 2 * self.z_dim,
                                      activation=activation)
        elif arch == "conv":
            if scopes.patch_shape is None:
                raise ValueError("arch='conv' needs rectangular leaf regions of one size; use arch='dense'")
            self.encoder = StackedConvEncoder(
                self.num_leaves, (c_in, *scopes.patch_shape), 2 * self.z_dim,
                check_hidden("channels", channels), self.hidden, activation=activation,
            )
        else:
            raise ValueError(f"arch must be 'dense' or 'conv', got {arch!r}")
        self.arch = arch

    @property
    def _param(self) -> Tensor:
        """A parameter of the encoder: the dtype and device inputs must have."""
        return next(self.encoder.parameters())

    @classmethod
    def from_model(cls, model: SPVAE, hidden: Sequence[int] | None = None, mask_input: bool = False,
                   **kwargs: Any) -> SPVAEGuide:
        """The guide matching ``model``'s leaves, architecture and (by default) hidden widths."""
        if not isinstance(model, SPVAE):
            raise TypeError(f"model must be an SPVAE, got {type(model).__name__}")
        kw: dict[str, Any] = {"arch": model.arch, "activation": kwargs.pop("activation", "softplus")}
        if model.arch == "conv":
            kw["channels"] = kwargs.pop("channels", model.channels)
        kw.update(kwargs)
        return cls(model.scopes, model.leaf_k, model.z_dim, model.hidden if hidden is None else hidden,
                   mask_input=mask_input, **kw)

    def _masked_patches(self, x: Tensor) -> Tensor:
        """Validated patches ``(B, R, C_in, S)`` of images ``(B, C, H, W)``: missing (NaN) and padding
        pixels set to 0, followed by the observation mask channels when ``mask_input``."""
        # type, dtype/device (of the encoder), shape, empty batch and inf; NaN = missing
        x = _check_image(x, self.event_shape, None, allow_missing=True, like=self._param)
        p = self.scopes.gather(x)  # (B, R, C, S)
        observed = ~torch.isnan(p) & self.scopes.mask.unsqueeze(-2)
        p = torch.where(observed, p, torch.zeros_like(p))
        if self.mask_input:
            p = torch.cat([p, observed.to(p.dtype)], dim=-2)
        return p

    def _split_loc_scale(self, h: Tensor) -> tuple[Tensor, Tensor]:
        """``loc`` and ``scale = softplus(raw) + _MIN_SCALE`` from encoder outputs ``h = (loc, raw)``."""
        # softplus on the strided half of ``h`` is ~10x slower than on a contiguous copy (torch 2.13 CPU)
        loc, raw = h.split(self.z_dim, dim=-1)
        return loc, nn.functional.softplus(raw.contiguous()) + _MIN_SCALE

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
        b, r, c_in, s = p.shape
        p = p.movedim(0, 1).unsqueeze(1).expand(r, self.leaf_k, b, c_in, s)
        h = self.encoder.forward_net_major(p.reshape(self.num_leaves, b, c_in * s))  # (L, B, 2 z_dim)
        return self._split_loc_scale(h)

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
        # drawn (K, B, L, z_dim) as in leaf_posterior(x).rsample (same random stream), stored leaf-major
        eps = torch.randn((num_samples, loc.shape[1], self.num_leaves, self.z_dim), dtype=loc.dtype,
                          device=loc.device).permute(2, 0, 1, 3).contiguous()
        z = torch.addcmul(loc.unsqueeze(1), scale.unsqueeze(1), eps)  # (L, K, B, z_dim)
        log_q = (-0.5 * torch.linalg.vecdot(eps, eps)
                 - (torch.log(scale).sum(-1) + 0.5 * self.z_dim * _LOG_2PI).unsqueeze(1))
        return z.permute(1, 2, 0, 3), log_q.permute(1, 2, 0)

    def forward(self, x: Tensor) -> Tensor:
        """Sample site ``z`` ``(B, L, z_dim)`` in ``pyro.plate("data", B, dim=-1)``."""
        loc, scale = self._loc_scale(x)
        with pyro.plate("data", x.shape[0], dim=-1):
            return pyro.sample("z", _LeafPosterior(loc, scale))
