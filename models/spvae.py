r"""SPVAE: a sum-product network whose leaves are small VAEs over image patches.

Tan & Peharz, "Hierarchical Decompositional Mixtures of Variational Autoencoders", ICML 2019
(``DESIGN.md`` §3). A region graph (by default Poon-Domingos over the ``H x W`` grid with one
coarse step of 7: a 4x4 grid of 7x7 patches, 100 regions, 200 partitions) carries ``sum_k`` sums
per internal region (1 at the root) and ``leaf_k`` leaf VAEs per leaf region ``R``:

.. math::

    p(x) = \mathrm{SPN}\big(p_l(x_{R_l})\big), \qquad
    p_l(x_{R_l}) = \int p_\theta(x_{R_l} | z_l)\, \mathcal{N}(z_l; 0, I)\, dz_l.        \qquad (1)

All ``L = num_leaf_regions * leaf_k`` leaf decoders are ONE stacked network
(:class:`~pyro_spvae.nn.StackedMLP` over flattened patches, or grouped convolutions,
:class:`~pyro_spvae.nn.StackedConvDecoder`), so a forward pass costs a handful of batched kernels
whatever the number of leaves. Leaf ``l`` belongs to leaf region ``l // leaf_k``.

As a plain Pyro model (``forward``), all leaf latents are one site ``z`` of shape
``(B, L, z_dim)`` drawn from the prior and ``x`` is drawn from the SPN of decoder likelihoods,
``x | z ~ SPN(p(x_{R_l} | z_l))``. Because (1) is multilinear in its leaves and the leaf latents
are independent, this model has exactly the marginal (1), so :class:`pyro.infer.Trace_ELBO`,
:class:`~pyro_spvae.infer.TraceIWAE_ELBO` and friends apply unchanged. The model also implements
the leaf protocol of :mod:`pyro_spvae.infer.spn_bounds` (``leaf_log_joint``,
``spn_log_value``) for the SPN-aware bounds the paper trains and evaluates with.

Missing pixels (NaN) are marginalised exactly at the leaves: they contribute log-density 0.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Any

import pyro
import torch
from pyro.distributions import TorchDistribution
from pyro.nn import PyroModule, pyro_method
from torch import Tensor, nn
from torch.distributions import constraints

from pyro_spvae.validation import (
    check_event_shape,
    check_float_tensor,
    check_floating_dtype,
    check_hidden,
    check_input_like,
    check_positive_int,
)
from pyro_spvae.nn.likelihoods import make_likelihood
from pyro_spvae.nn.stacked import StackedConvDecoder, StackedMLP
from pyro_spvae.spn.network import SPN
from pyro_spvae.spn.region_graph import RegionGraph, poon_domingos, random_binary_trees

__all__ = ["LeafScopes", "SPVAE", "LEAF_LIKELIHOODS", "build_spvae", "region_graph_from_spec"]

#: Leaf likelihood names. Each takes one decoder output per pixel value: the Gaussian mean (with
#: a learnt per-leaf, per-pixel precision), Bernoulli logits, or Binomial(255) logits on the grid
#: ``k/255`` (Tan & Peharz 2019: Gaussian for "continuous", Binomial(255) for "discrete" MNIST).
LEAF_LIKELIHOODS = ("gaussian", "binomial", "bernoulli")
_BINOMIAL_N = 255
_LIK_NAMES = {"gaussian": "Gaussian", "bernoulli": "Bernoulli", "binomial": "Binomial(255)"}
_LOG_2PI = math.log(2 * math.pi)


class LeafScopes(nn.Module):
    """Gathers the patches ``x_R`` of the leaf regions of a region graph and scatters them back.

    The region graph's variables are the pixels of the ``H x W`` grid (row-major); every leaf
    region covers all ``C`` channels of its pixels. Regions of unequal size are padded to the
    largest, ``S`` pixels, and masked.

    :param region_graph: region graph over ``H * W`` variables.
    :param event_shape: image shape ``(C, H, W)``.
    :raises ValueError: if the graph's variables do not match the image grid.

    Attributes: ``index`` ``(R, S)`` pixel indices, ``mask`` ``(R, S)`` valid slots,
    ``patch_shape`` ``(h, w)`` when every leaf region is a full ``h x w`` rectangle (else
    ``None``).
    """

    def __init__(self, region_graph: RegionGraph, event_shape: Sequence[int]) -> None:
        super().__init__()
        if not isinstance(region_graph, RegionGraph):
            raise TypeError(
                f"region_graph must be a pyro_spvae.spn.RegionGraph, got {type(region_graph).__name__}"
            )
        self.event_shape = check_event_shape("event_shape", event_shape)
        if len(self.event_shape) != 3:
            raise ValueError(f"event_shape must be (C, H, W), got {self.event_shape}")
        c, h, w = self.event_shape
        if region_graph.num_vars != h * w:
            raise ValueError(
                f"the region graph has {region_graph.num_vars} variables but images of shape "
                f"{self.event_shape} have {h * w} pixels (H * W): the region graph is incompatible with "
                "event_shape"
            )
        leaves = region_graph.regions[: region_graph.num_leaf_regions]
        self.num_regions = len(leaves)
        self.max_size = max(len(r) for r in leaves)
        index = torch.zeros(self.num_regions, self.max_size, dtype=torch.long)
        mask = torch.zeros(self.num_regions, self.max_size, dtype=torch.bool)
        shapes = set()
        for i, r in enumerate(leaves):  # construction only
            index[i, : len(r)] = torch.tensor(r)
            mask[i, : len(r)] = True
            rows, cols = [v // w for v in r], [v % w for v in r]
            ph, pw = max(rows) - min(rows) + 1, max(cols) - min(cols) + 1
            shapes.add((ph, pw) if ph * pw == len(r) else None)
        self.patch_shape: tuple[int, int] | None = shapes.pop() if len(shapes) == 1 else None
        self.register_buffer("index", index, persistent=False)
        self.register_buffer("mask", mask, persistent=False)

    @property
    def patch_numel(self) -> int:
        """``C * S``, the length of a flattened (padded) patch."""
        return self.event_shape[0] * self.max_size

    def gather(self, x: Tensor) -> Tensor:
        """Patches of ``x`` ``(..., C, H, W)``: returns ``(..., R, C, S)`` (padding slots hold pixel 0)."""
        c, h, w = self.event_shape
        xf = x.reshape(*x.shape[:-3], c, h * w).index_select(-1, self.index.flatten())
        return xf.view(*x.shape[:-3], c, *self.index.shape).movedim(-3, -2)  # (..., R, C, S)

    def scatter(self, patches: Tensor, active: Tensor) -> Tensor:
        """Write the patches of the ``active`` regions into images; uncovered pixels are NaN.

        :param patches: ``(N, R, C, S)`` values per region.
        :param active: ``(N, R)`` bool, the regions to write (disjoint scopes, e.g. the leaf
            regions of one induced tree).
        :returns: ``(N, C, H, W)``.
        """
        c, h, w = self.event_shape
        n = patches.shape[0]
        hw = h * w
        dummy = torch.full_like(self.index, hw)
        idx = torch.where(active.unsqueeze(-1) & self.mask, self.index, dummy)  # (N, R, S)
        idx = idx.reshape(n, 1, -1).expand(n, c, -1)
        out = patches.new_full((n, c, hw + 1), math.nan)
        out.scatter_(2, idx, patches.movedim(-2, -3).reshape(n, c, -1))
        return out[..., :hw].reshape(n, c, h, w)


@functools.cache
def _leaf_support(likelihood: str) -> tuple[constraints.Constraint, str] | None:
    """The support constraint of the likelihood head of the same name (``None``: all reals)."""
    if likelihood == "gaussian":
        return None
    head = make_likelihood(likelihood, (1,))
    return head.support, head.support_description


def _check_image(x: Any, event_shape: tuple[int, ...], likelihood: str | None, allow_missing: bool,
                 like: Tensor | None = None) -> Tensor:
    """Validate a batch of images ``(B, C, H, W)``; NaN = missing when ``allow_missing``.

    Type, dtype, shape, empty batch and infinite values go through
    :func:`~pyro_spvae.validation.check_float_tensor`; the support is the one of the likelihood head
    of the same name (:mod:`pyro_spvae.nn.likelihoods`; ``likelihood=None`` skips it);
    ``like`` (a module buffer or parameter) fixes the dtype and device
    (:func:`~pyro_spvae.validation.check_input_like`).
    """
    x = check_floating_dtype("x", x)
    if like is not None:
        check_input_like("x", x, like)
    missing = torch.isnan(x) if allow_missing else None
    if missing is not None and bool(missing.any()):
        obs = torch.where(missing, torch.zeros_like(x), x)  # 0 lies in every leaf support
    else:
        obs, missing = x, None
    check_float_tensor("x", obs, event_shape, batch_dims=1)
    support = _leaf_support(likelihood) if likelihood is not None else None
    if support is not None:
        ok = support[0].check(obs)
        if not bool(ok.all()):
            bad = obs[~ok]
            raise ValueError(
                f"x has {bad.numel()} values outside the support of the {_LIK_NAMES[likelihood]} "
                f"leaf likelihood "
                f"({support[1]}), e.g. {bad.flatten()[:3].tolist()}"
                + ("; use the 'spvae-discrete' transform" if likelihood == "binomial" else "")
            )
    return x


def _sum_to(t: Tensor, shape: torch.Size) -> Tensor:
    """Sum the broadcast dims of ``t`` so that it has ``shape`` (the reverse of broadcasting)."""
    lead = t.dim() - len(shape)
    dims = tuple(range(lead)) + tuple(
        lead + i for i, n in enumerate(shape) if n == 1 and t.shape[lead + i] != 1
    )
    return (t.sum(dims, keepdim=True) if dims else t).reshape(shape)


def _masked_gaussian_log_lik(patches: Tensor, mean: Tensor, log_scale: Tensor, obs: Tensor,
                             dims: int | tuple[int, ...]) -> Tensor:
    """Gaussian leaf log-likelihood of ``patches``, summed over ``dims`` with the observation mask
    ``obs`` multiplied into every term (masked-out pixels contribute 0); missing pixels of
    ``patches`` must already be zeroed. Without a mask use the fused :class:`_GaussianQuadForm`."""
    inv_scale, const = torch.exp(-log_scale) * obs, (-log_scale - 0.5 * _LOG_2PI) * obs
    r = (patches - mean) * inv_scale
    return const.sum(dims) - 0.5 * (r * r).sum(dims)


def _count_log_lik(likelihood: str, patches: Tensor, logits: Tensor, obs: Tensor | None,
                   dims: int | tuple[int, ...]) -> Tensor:
    """Bernoulli or Binomial(255) leaf log-likelihood of ``patches`` given ``logits``, summed over ``dims``.

    ``k * logits - n * softplus(logits)`` plus the binomial coefficient (Binomial only), each term
    multiplied by the observation mask ``obs`` when given (masked-out pixels contribute 0).

    :param likelihood: ``"bernoulli"`` or ``"binomial"``.
    :param patches: values in ``{0, 1}`` or on the grid ``k/255`` (missing pixels already zeroed).
    :param logits: decoder outputs, broadcasting with ``patches``.
    :param obs: observation mask broadcasting with both, or ``None`` (all observed).
    """
    if likelihood == "bernoulli":
        k, n, const = patches, 1.0, None
    else:
        k, n = torch.round(patches * _BINOMIAL_N), float(_BINOMIAL_N)
        const = math.lgamma(n + 1) - torch.lgamma(k + 1) - torch.lgamma(n - k + 1)
    # k * logits - n * softplus(logits), masked, summed over the patch
    t = k * logits - n * nn.functional.softplus(logits)
    if obs is not None:
        t = t * obs
        const = None if const is None else const * obs
    out = t.sum(dims)
    return out if const is None else out + const.sum(dims)


class _GaussianQuadForm(torch.autograd.Function):
    r""":math:`-\tfrac12 \sum_d \big((x_d - \mu_d)\, e^{-s_d}\big)^2` over the last dim, fused.

    ``x``, ``mu`` and the log-scale ``s`` broadcast against each other. Autograd through the
    elementwise expression makes about a dozen passes over the big ``(..., D)`` tensor (sub, mul,
    square, their backwards and a gradient accumulation); here the forward makes two (the residual
    ``r``, written once and scaled in place, and a dot product) and the backward three, with
    :math:`\partial/\partial\mu = g\, r\, e^{-s}`, :math:`\partial/\partial s = g\, r^2`,
    :math:`\partial/\partial x = -g\, r\, e^{-s}`.
    """

    @staticmethod
    def forward(ctx: Any, x: Tensor, mu: Tensor, log_scale: Tensor) -> Tensor:
        inv = torch.exp(-log_scale)
        r = torch.sub(x, mu)
        r.mul_(inv)
        ctx.save_for_backward(r, inv)
        ctx.shapes = (x.shape, mu.shape, log_scale.shape)
        return torch.linalg.vecdot(r, r).mul_(-0.5)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
        r, inv = ctx.saved_tensors
        x_shape, mu_shape, s_shape = ctx.shapes
        t = r * grad.unsqueeze(-1)
        grad_s = _sum_to(t * r, s_shape) if ctx.needs_input_grad[2] else None
        if not (ctx.needs_input_grad[0] or ctx.needs_input_grad[1]):
            return None, None, grad_s
        t.mul_(inv)  # g r e^{-s}
        grad_mu = _sum_to(t, mu_shape) if ctx.needs_input_grad[1] else None
        grad_x = -_sum_to(t, x_shape) if ctx.needs_input_grad[0] else None
        return grad_x, grad_mu, grad_s


class _LeafPrior(TorchDistribution):
    r""":math:`\mathcal{N}(0, I)` over the leaf latents ``(L, z_dim)`` of each data point.

    The prior of site ``z`` in :meth:`SPVAE.forward`: equal to
    ``Normal(0, 1).expand(batch_shape + event_shape).to_event(2)`` but its ``log_prob`` is one dot
    product, :math:`-\tfrac12 \|z\|^2 - \tfrac{n}{2}\log 2\pi`, instead of the half dozen
    elementwise passes (and support checks) of ``Normal.log_prob``.
    """

    arg_constraints: dict = {}
    support = constraints.independent(constraints.real, 2)
    has_rsample = True

    def __init__(self, like: Tensor, batch_shape: Sequence[int], event_shape: Sequence[int]) -> None:
        self._like = like  # a scalar tensor fixing dtype and device
        super().__init__(torch.Size(batch_shape), torch.Size(event_shape), validate_args=False)

    def expand(self, batch_shape: Sequence[int], _instance: Any = None) -> _LeafPrior:
        return _LeafPrior(self._like, batch_shape, self.event_shape)

    @property
    def mean(self) -> Tensor:
        return self._like.new_zeros(self.batch_shape + self.event_shape)

    @property
    def variance(self) -> Tensor:
        return self._like.new_ones(self.batch_shape + self.event_shape)

    def rsample(self, sample_shape: Sequence[int] = ()) -> Tensor:
        shape = self._extended_shape(torch.Size(sample_shape))
        return torch.randn(shape, dtype=self._like.dtype, device=self._like.device)

    def log_prob(self, value: Tensor) -> Tensor:
        n = self.event_shape.numel()
        return -0.5 * torch.linalg.vecdot(value, value).sum(-1) - 0.5 * n * _LOG_2PI

    def entropy(self) -> Tensor:
        n = self.event_shape.numel()
        return self._like.new_full(self.batch_shape, 0.5 * n * (1.0 + _LOG_2PI))


class _SPNOfLeafLikelihoods(TorchDistribution):
    """``x | z ~ SPN(p(x_{R_l} | z_l))``: the observation distribution of :meth:`SPVAE.forward`.

    Batch shape ``(..., B)`` from ``z`` ``(..., B, L, z_dim)``; event shape ``(C, H, W)``;
    ``log_prob`` marginalises NaN pixels. ``sample`` draws an induced tree from the SPN and decodes
    the selected leaves' given latents.
    """

    arg_constraints: dict = {}
    support = constraints.independent(constraints.real, 3)

    def __init__(self, model: SPVAE, z: Tensor) -> None:
        self.model, self.z = model, z
        super().__init__(z.shape[:-2], torch.Size(model.event_shape), validate_args=False)

    def log_prob(self, value: Tensor) -> Tensor:
        return self.model.spn_log_value(self.model.leaf_log_lik(value, self.z))

    def sample(self, sample_shape: Sequence[int] = ()) -> Tensor:
        z = self.z.expand(*sample_shape, *self.z.shape)
        flat = z.reshape(-1, *z.shape[-2:])
        with torch.no_grad():
            out = self.model._decode_selected(flat, self.model.select_leaves(flat.shape[0]), mode="sample")
        return out.reshape(*z.shape[:-2], *self.model.event_shape)


class SPVAE(PyroModule):
    r"""Sum-product network of VAEs (Tan & Peharz 2019) as a Pyro model.

    :param event_shape: image shape ``(C, H, W)``.
    :param region_graph: a :class:`~pyro_spvae.spn.RegionGraph` over the ``H * W`` pixels
        (default: ``poon_domingos((H, W), 7)``, the paper's 16 patches of 7x7 on MNIST).
    :param sum_k: sums per internal region (the root has one).
    :param leaf_k: leaf VAEs per leaf region.
    :param z_dim: latent size of every leaf VAE.
    :param hidden: hidden widths of every leaf decoder (``()``: linear decoders, i.e. pPCA leaves
        with the Gaussian likelihood).
    :param activation: activation of the leaf networks.
    :param likelihood: ``"gaussian"`` (learnt precision), ``"binomial"`` (255 trials on the grid
        ``k/255``) or ``"bernoulli"``.
    :param arch: ``"dense"`` (stacked MLPs over flattened patches) or ``"conv"`` (grouped
        convolutions over rectangular patches).
    :param channels: convolution widths of conv leaves.
    :param allow_missing: treat NaN pixels as missing and marginalise them (else NaN is an error).

    Site shapes in :meth:`forward`: ``z`` ``(B, L, z_dim)`` (event dims 2), ``x`` ``(B, C, H, W)``.
    """

    def __init__(
        self,
        event_shape: Sequence[int] = (1, 28, 28),
        region_graph: RegionGraph | None = None,
        sum_k: int = 2,
        leaf_k: int = 2,
        z_dim: int = 25,
        hidden: Sequence[int] = (30, 30),
        activation: str = "softplus",
        likelihood: str = "gaussian",
        arch: str = "dense",
        channels: Sequence[int] = (8, 16),
        allow_missing: bool = True,
    ) -> None:
        super().__init__()
        self.allow_missing = bool(allow_missing)
        self.event_shape = check_event_shape("event_shape", event_shape)
        if len(self.event_shape) != 3:
            raise ValueError(f"event_shape must be (C, H, W), got {self.event_shape}")
        c, h, w = self.event_shape
        self.sum_k = check_positive_int("sum_k", sum_k)
        self.leaf_k = check_positive_int("leaf_k", leaf_k)
        self.z_dim = check_positive_int("z_dim", z_dim)
        self.hidden = check_hidden("hidden", hidden)
        if likelihood not in LEAF_LIKELIHOODS:
            raise ValueError(f"unknown leaf likelihood {likelihood!r}; choose one of {LEAF_LIKELIHOODS}")
        if arch not in ("dense", "conv"):
            raise ValueError(f"arch must be 'dense' or 'conv', got {arch!r}")
        self.likelihood, self.arch = likelihood, arch
        if region_graph is None:
            if h < 2 * 7 and w < 2 * 7:
                raise ValueError(
                    f"the default Poon-Domingos graph (step 7) cannot split a {h}x{w} grid; pass region_graph"
                )
            region_graph = poon_domingos((h, w), 7)
        self.region_graph = region_graph
        self.scopes = LeafScopes(region_graph, self.event_shape)
        self.num_regions = self.scopes.num_regions
        self.num_leaves = self.num_regions * self.leaf_k
        n_out = self.scopes.patch_numel
        if arch == "dense":
            self.decoder = StackedMLP(self.num_leaves, self.z_dim, self.hidden, n_out, activation=activation)
        else:
            if self.scopes.patch_shape is None:
                raise ValueError(
                    "arch='conv' needs leaf regions that are rectangles of one size (e.g. Poon-Domingos "
                    "patches); this region graph has irregular leaf regions: use arch='dense'"
                )
            self.channels = check_hidden("channels", channels)
            self.decoder = StackedConvDecoder(
                self.num_leaves, self.z_dim, (c, *self.scopes.patch_shape), c, self.channels, self.hidden,
                activation=activation,
            )
        if likelihood == "gaussian":
            # learnt log standard deviation per leaf and pixel value: (L, C, S)
            self.log_scale = nn.Parameter(torch.full((self.num_leaves, c, self.scopes.max_size), -1.0))
        #: the sum-product network over external (VAE) leaves; its weights are ``spn.*`` parameters
        self.spn = SPN(region_graph, num_sums=self.sum_k, leaves=None, num_leaf_components=self.leaf_k)
        self.register_buffer("_zero", torch.zeros(()), persistent=False)
        self._all_valid = bool(self.scopes.mask.all())  # no padding slots in the leaf patches

    # ------------------------------------------------------------------ leaf side
    def _leaf_patches(self, x: Tensor) -> Tensor:
        """``(B, C, H, W)`` -> ``(B, L, C, S)``: leaf ``l`` reads the patch of region ``l // leaf_k``."""
        p = self.scopes.gather(x)  # (B, R, C, S)
        return p.unsqueeze(-3).expand(*p.shape[:-2], self.leaf_k, *p.shape[-2:]).reshape(
            *p.shape[:-3], self.num_leaves, *p.shape[-2:]
        )

    @pyro_method
    def decode(self, z: Tensor) -> Tensor:
        """Decoder outputs per leaf, ``(..., L, z_dim)`` -> ``(..., L, C, S)`` (Gaussian means or logits)."""
        out = self.decoder(z)
        c = self.event_shape[0]
        return out.reshape(*out.shape[: z.dim() - 1], c, self.scopes.max_size)

    def _observed(self, patches: Tensor) -> Tensor | None:
        """``(B, L, C, S)`` mask of observed, non-padding patch entries; ``None`` when all are."""
        valid = self.scopes.mask.repeat_interleave(self.leaf_k, 0).unsqueeze(-2)  # (L, 1, S)
        missing = torch.isnan(patches)
        if not missing.any() and bool(valid.all()):
            return None
        return ~missing & valid

    @pyro_method
    def leaf_log_lik(self, x: Tensor, z: Tensor) -> Tensor:
        """:math:`\\log p(x_{R_l} | z_l)` with NaN pixels marginalised (they contribute 0).

        The terms that do not depend on ``z`` are summed on the small ``(B, L)`` side and masking
        is a multiplication by the observation mask, so the big ``(..., B, L, C, S)`` tensors go
        through a handful of elementwise passes only.

        :param x: images ``(B, C, H, W)`` (NaN = missing).
        :param z: leaf latents ``(..., B, L, z_dim)``.
        :returns: ``(..., B, L)``.
        """
        if z.dim() >= 3 and x.dim() == 4 and z.shape[-3] == x.shape[0]:
            return self._leaf_log_lik_net_major(x, z)
        patches = self._leaf_patches(x)  # (B, L, C, S)
        obs = self._observed(patches)
        if obs is not None:
            patches = torch.where(obs, patches, torch.zeros_like(patches))
        params = self.decode(z)  # (..., B, L, C, S)
        if self.likelihood == "gaussian":
            if obs is None:
                quad = _GaussianQuadForm.apply(
                    patches.flatten(-2), params.flatten(-2), self.log_scale.flatten(-2)
                )
                return quad + (-self.log_scale - 0.5 * _LOG_2PI).sum((-2, -1))
            return _masked_gaussian_log_lik(patches, params, self.log_scale, obs, (-2, -1))
        return _count_log_lik(self.likelihood, patches, params, obs, (-2, -1))

    def _leaf_log_lik_net_major(self, x: Tensor, z: Tensor) -> Tensor:
        """:meth:`leaf_log_lik` with the leaf axis first throughout.

        The stacked decoder runs on ``(L, M * B, .)`` (one ``baddbmm`` per layer, no layout copy;
        ``z`` from :meth:`SPVAEGuide.leaf_rsample <pyro_spvae.guides.SPVAEGuide.leaf_rsample>` is
        already a leaf-major view) and the likelihood on ``(L, M, B, D)`` with ``D = C * S``;
        only the small ``(M, B, L)`` result is transposed back.
        """
        lk, c, s = self.num_leaves, self.event_shape[0], self.scopes.max_size
        b, batch = x.shape[0], z.shape[:-2]
        mu = self.decoder.forward_net_major(z.movedim(-2, 0).reshape(lk, -1, self.z_dim))
        mu = mu.view(lk, -1, b, c * s)  # (L, M, B, D)
        p = self.scopes.gather(x)  # (B, R, C, S)
        p = p.movedim(0, 1).unsqueeze(1).expand(self.num_regions, self.leaf_k, b, c, s)
        patches = p.reshape(lk, 1, b, c * s)  # (L, 1, B, D)
        obs = None
        if not self._all_valid or bool(torch.isnan(x).any()):
            valid = self.scopes.mask.repeat_interleave(self.leaf_k, 0).unsqueeze(1).expand(lk, c, s)
            obs = ~torch.isnan(patches) & valid.reshape(lk, 1, 1, c * s)
            patches = torch.where(obs, patches, torch.zeros_like(patches))
        if self.likelihood == "gaussian":
            log_scale = self.log_scale.reshape(lk, 1, 1, c * s)
            if obs is None:
                out = _GaussianQuadForm.apply(patches, mu, log_scale) + (-log_scale - 0.5 * _LOG_2PI).sum(-1)
            else:
                out = _masked_gaussian_log_lik(patches, mu, log_scale, obs, -1)
        else:
            out = _count_log_lik(self.likelihood, patches, mu, obs, -1)
        # (L, M, B) -> (M, B, L) -> (..., B, L)
        return out.expand(lk, mu.shape[1], b).permute(1, 2, 0).reshape(*batch, lk)

    @pyro_method
    def leaf_log_joint(self, x: Tensor, z: Tensor) -> Tensor:
        """:math:`\\log p(x_{R_l}, z_l) = \\log p(x_{R_l} | z_l) + \\log \\mathcal{N}(z_l; 0, I)`.

        :returns: ``(..., B, L)`` for ``z`` of shape ``(..., B, L, z_dim)``.
        """
        log_prior = -0.5 * (z * z).sum(-1) - 0.5 * self.z_dim * _LOG_2PI
        return self.leaf_log_lik(x, z) + log_prior

    # ------------------------------------------------------------------ SPN side
    @pyro_method
    def spn_log_value(self, leaf_log_values: Tensor) -> Tensor:
        """Push leaf log-values ``(..., L)`` through the SPN; returns the log root value ``(...)``."""
        lv = leaf_log_values
        if lv.dim() == 0 or lv.shape[-1] != self.num_leaves:
            raise ValueError(
                f"leaf_log_values must have shape (..., L={self.num_leaves}), got {tuple(lv.shape)}"
            )
        return self.spn(lv.reshape(*lv.shape[:-1], self.num_regions, self.leaf_k))

    # ------------------------------------------------------------------ sampling, MPE, inpainting
    @torch.no_grad()
    def select_leaves(self, n: int, leaf_log_values: Tensor | None = None, mode: str = "sample") -> Tensor:
        """Top-down selection of an induced tree per example (Poon & Domingos 2011).

        :param n: number of trees.
        :param leaf_log_values: ``(n, L)`` leaf log-values given the evidence, or ``None`` for
            unconditional selection (every leaf value 1).
        :param mode: ``"sample"`` (tree drawn from its posterior) or ``"mpe"`` (max-product argmax).
        :returns: ``(n, R)`` long tensor: selected leaf VAE within each leaf region, ``-1`` for
            regions outside the tree.
        """
        if leaf_log_values is None:
            leaf_log_values = self._zero.new_zeros(n, self.num_leaves)
        lv = leaf_log_values.reshape(n, self.num_regions, self.leaf_k)
        return self.spn.select_leaf_components(lv, mode=mode)

    @torch.no_grad()
    def _decode_selected(self, z: Tensor, k: Tensor, mode: str = "sample") -> Tensor:
        """Decode the selected leaves and assemble images.

        :param z: ``(N, L, z_dim)`` latents of all leaves.
        :param k: ``(N, R)`` selected component per leaf region (``-1``: not selected).
        :param mode: ``"sample"`` draws pixels from the leaf likelihoods, ``"mean"`` takes their means.
        :returns: ``(N, C, H, W)``; pixels outside the selected leaves' scopes are NaN.
        """
        if mode not in ("sample", "mean"):
            raise ValueError(f"mode must be 'sample' or 'mean', got {mode!r}")
        n = z.shape[0]
        c, s = self.event_shape[0], self.scopes.max_size
        params = self.decode(z).reshape(n, self.num_regions, self.leaf_k, c, s)
        idx = k.clamp(min=0).view(n, self.num_regions, 1, 1, 1).expand(n, self.num_regions, 1, c, s)
        p = params.gather(2, idx).squeeze(2)  # (N, R, C, S)
        if self.likelihood == "gaussian":
            if mode == "mean":
                vals = p
            else:
                log_scale = self.log_scale.reshape(self.num_regions, self.leaf_k, c, s)
                log_scale = log_scale.unsqueeze(0).expand(n, -1, -1, -1, -1).gather(2, idx).squeeze(2)
                vals = p + torch.exp(log_scale) * torch.randn_like(p)
        elif self.likelihood == "bernoulli":
            probs = torch.sigmoid(p)
            vals = probs if mode == "mean" else torch.bernoulli(probs)
        else:
            probs = torch.sigmoid(p)
            if mode == "mean":
                vals = probs
            else:
                vals = torch.binomial(torch.full_like(probs, float(_BINOMIAL_N)), probs) / _BINOMIAL_N
        return self.scopes.scatter(vals, k >= 0)

    @torch.no_grad()
    def sample(self, n: int, mode: str = "sample") -> Tensor:
        """Draw ``n`` images: an induced tree top-down, then the selected leaf VAEs' ``z ~ N(0, I)`` decoded.

        :param n: number of images.
        :param mode: ``"sample"`` (pixels from the likelihood) or ``"mean"`` (likelihood means).
        :returns: ``(n, C, H, W)``.
        """
        n = check_positive_int("n", n)
        z = torch.randn(n, self.num_leaves, self.z_dim, dtype=self._zero.dtype, device=self._zero.device)
        return self._decode_selected(z, self.select_leaves(n), mode)

    @torch.no_grad()
    def _complete(self, x: Tensor, guide: Any, num_samples: int, mode: str) -> Tensor:
        """Shared by :meth:`inpaint` and :meth:`reconstruct`: decoded images given the evidence ``x``."""
        if not callable(getattr(guide, "leaf_posterior", None)):
            raise TypeError(
                f"guide must provide leaf_posterior(x) (e.g. SPVAEGuide), got {type(guide).__name__}"
            )
        num_samples = check_positive_int("num_samples", num_samples)
        if mode not in ("sample", "mpe"):
            raise ValueError(f"mode must be 'sample' or 'mpe', got {mode!r}")
        x = _check_image(x, self.event_shape, self.likelihood, allow_missing=True, like=self._zero)
        b = x.shape[0]
        q = guide.leaf_posterior(x)
        z = q.sample((num_samples,))  # (K, B, L, z_dim)
        log_joint = self.leaf_log_joint(x, z)
        log_w = log_joint - q.log_prob(z)  # (K, B, L)
        # leaf regions without evidence have marginal exactly 1 and posterior = prior
        patches = self._leaf_patches(x)
        valid = self.scopes.mask.repeat_interleave(self.leaf_k, 0).unsqueeze(-2)
        seen = (~torch.isnan(patches) & valid).any(-1).any(-1)  # (B, L)
        lv = torch.where(seen, torch.logsumexp(log_w, 0) - math.log(num_samples), torch.zeros_like(log_w[0]))
        k = self.select_leaves(b, lv, mode)
        if mode == "sample":  # sampling-importance-resampling from the K proposals per leaf
            j = torch.distributions.Categorical(logits=log_w.movedim(0, -1)).sample()  # (B, L)
            z_prior = torch.randn_like(z[0])
        else:  # the most probable proposal under the joint (approximate leaf MAP)
            j = log_joint.argmax(0)
            z_prior = torch.zeros_like(z[0])
        j = j.view(1, b, self.num_leaves, 1).expand(1, b, self.num_leaves, self.z_dim)
        z_sel = z.gather(0, j).squeeze(0)
        z_sel = torch.where(seen.unsqueeze(-1), z_sel, z_prior)
        return self._decode_selected(z_sel, k, "sample" if mode == "sample" else "mean")

    @torch.no_grad()
    def inpaint(self, x: Tensor, guide: Any, num_samples: int = 100, mode: str = "mpe") -> Tensor:
        """Fill the missing (NaN) pixels of ``x`` by marginalisation (Tan & Peharz 2019, §5).

        Leaf marginals of the observed pixels are estimated by importance sampling with ``guide``
        (``num_samples`` per leaf; regions without evidence get exactly 1), the SPN selects an
        induced tree given them (``mode="sample"``: from its posterior; ``"mpe"``: max-product
        argmax), and each selected leaf decodes a latent given its observed pixels
        (``"sample"``: importance resampling and a likelihood draw; ``"mpe"``: the proposal of
        highest joint density and the likelihood mean).

        :param x: ``(B, C, H, W)`` with NaN at the missing pixels.
        :returns: ``(B, C, H, W)`` with observed pixels unchanged.
        """
        out = self._complete(x, guide, num_samples, mode)
        return torch.where(torch.isnan(x), out, x)

    @torch.no_grad()
    def reconstruct(self, x: Tensor, guide: Any, num_samples: int = 100) -> Tensor:
        """MPE-style reconstruction of ``x`` ``(B, C, H, W)``: the likelihood means of the selected leaves."""
        return self._complete(x, guide, num_samples, "mpe")

    # ------------------------------------------------------------------ Pyro model
    def forward(self, x: Tensor) -> Tensor:
        """The Pyro model: ``z ~ N(0, I)`` ``(B, L, z_dim)``, ``x | z ~ SPN(p(x_R | z_l))`` observed."""
        x = _check_image(x, self.event_shape, self.likelihood, allow_missing=self.allow_missing,
                         like=self._zero)
        b = x.shape[0]
        with pyro.plate("data", b, dim=-1):
            z = pyro.sample("z", _LeafPrior(self._zero, (b,), (self.num_leaves, self.z_dim)))
            pyro.sample("x", _SPNOfLeafLikelihoods(self, z), obs=x)
        return z


def region_graph_from_spec(spec: dict[str, Any], event_shape: Sequence[int]) -> RegionGraph:
    """Build a region graph over the ``H x W`` pixels of ``event_shape`` from a plain dict.

    :raises ValueError: for an unknown ``type`` or bad arguments.
    """
    spec = dict(spec)
    kind = spec.pop("type", None)
    _, h, w = check_event_shape("event_shape", event_shape)
    try:
        if kind == "poon_domingos":
            return poon_domingos((h, w), spec.pop("steps", 7), **spec)
        if kind == "random_binary_trees":
            return random_binary_trees(h * w, event_shape=(h, w), **spec)
    except TypeError as err:
        raise ValueError(f"bad region graph arguments {spec}: {err}") from None
    raise ValueError(f"region_graph type must be 'poon_domingos' or 'random_binary_trees', got {kind!r}")


def build_spvae(event_shape: Sequence[int] = (1, 28, 28), **kwargs: Any) -> tuple[SPVAE, Any]:
    """Registry builder: ``(SPVAE, SPVAEGuide)`` sharing region graph and leaf settings.

    Keyword arguments go to :class:`SPVAE`; ``guide_hidden`` (default: ``hidden``) and
    ``mask_input`` go to :class:`~pyro_spvae.guides.spvae.SPVAEGuide`. ``region_graph`` may also
    be a plain dict (for JSON configs): ``{"type": "poon_domingos", "steps": [7]}`` or
    ``{"type": "random_binary_trees", "depth": 4, "num_repetitions": 2, "seed": 0}``.
    """
    from pyro_spvae.guides.spvae import SPVAEGuide

    guide_kw = {k: kwargs.pop(k) for k in ("guide_hidden", "mask_input") if k in kwargs}
    if isinstance(kwargs.get("region_graph"), dict):
        kwargs["region_graph"] = region_graph_from_spec(kwargs["region_graph"], event_shape)
    model = SPVAE(event_shape, **kwargs)
    guide = SPVAEGuide.from_model(model, hidden=guide_kw.get("guide_hidden"),
                                  mask_input=guide_kw.get("mask_input", False))
    return model, guide
