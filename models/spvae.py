r"""SPVAE: a sum-product network whose leaves are small VAEs over image patches.

Tan & Peharz, "Hierarchical Decompositional Mixtures of Variational Autoencoders", ICML 2019, §3
(see ``docs/spvae.md``). A region graph (default: Poon-Domingos over the ``H x W`` grid with one
coarse step of 7, 16 patches of 7x7 on MNIST) carries ``sum_k`` sums per internal region (1 at the
root) and ``leaf_k`` leaf VAEs per leaf region; leaf ``l`` reads the patch of region ``l // leaf_k``:

.. math::

    p(x) = \mathrm{SPN}\big(p_l(x_{R_l})\big), \qquad
    p_l(x_{R_l}) = \int p_\theta(x_{R_l} | z_l)\, \mathcal{N}(z_l; 0, I)\, dz_l.        \qquad (1)

All ``L`` leaf decoders are ONE stacked network (:class:`~pyro_spvae.nn.StackedMLP` or
:class:`~pyro_spvae.nn.StackedConvDecoder`). The Pyro model (``forward``) draws all leaf latents as
one site ``z`` ``(B, L, z_dim)`` (:class:`~pyro_spvae.distributions.LeafPrior`) and ``x`` from a
:class:`~pyro_spvae.distributions.SumProductNetwork` with callable leaves; since (1) is multilinear
in its leaves and the latents are independent, this model has exactly the marginal (1), so Pyro's
ELBOs apply unchanged. The model also implements the leaf protocol of
:mod:`pyro_spvae.infer.spn_leaves` (``leaf_log_joint``, ``spn_log_value``) for the SPN-aware bounds
the paper trains and evaluates with. Missing pixels (NaN) are marginalised exactly at the leaves.

Leaf parameterisations: by default the Gaussian leaves have a learnt per-leaf, per-pixel log-scale;
the SPVAE reference code's (the ``paper-*`` presets) is ``likelihood_kwargs={"scale": "precision",
"loc": "sigmoid"}``: each leaf decoder predicts the mean (through a sigmoid) and the precision
``1 + g^2`` per example and pixel, with ``decoder_heads="separate"`` (one stacked network per head,
dense leaves) or one conv decoder whose output layer holds both heads; discrete leaves use the
reference's squeezed Binomial with ``{"eps": 1e-7}`` (see :mod:`pyro_spvae.nn.reference_likelihoods`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import pyro
import torch
from pyro.nn import PyroModule, pyro_method
from torch import Tensor, nn

from pyro_spvae.distributions import LeafPrior, SumProductNetwork
from pyro_spvae.nn.builders import HEADS
from pyro_spvae.nn.leaf_likelihood import LEAF_LIKELIHOOD_OPTIONS, LEAF_LIKELIHOODS, LeafLikelihood
from pyro_spvae.nn.likelihoods import make_likelihood
from pyro_spvae.nn.stacked import StackedConvDecoder, StackedHeads, StackedMLP
from pyro_spvae.spn import SPN, LeafScopes, RegionGraph, poon_domingos
from pyro_spvae.validation import (
    check_bool,
    check_choice,
    check_event_shape,
    check_hidden,
    check_positive_int,
)

__all__ = ["SPVAE", "LEAF_LIKELIHOODS", "LEAF_LIKELIHOOD_OPTIONS"]


_LOG_2PI = math.log(2 * math.pi)


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
    :param likelihood: ``"gaussian"`` (learnt scale), ``"binomial"`` (255 trials on the grid
        ``k/255``) or ``"bernoulli"``.
    :param arch: ``"dense"`` (stacked MLPs over flattened patches) or ``"conv"`` (grouped
        convolutions over rectangular patches).
    :param channels: convolution widths of conv leaves.
    :param allow_missing: treat NaN pixels as missing and marginalise them (else NaN is an error).
    :param likelihood_kwargs: options of the leaf likelihood
        (:data:`~pyro_spvae.nn.leaf_likelihood.LEAF_LIKELIHOOD_OPTIONS`):
        Gaussian ``scale`` ``"log_scale"`` (learnt per leaf and pixel) or ``"precision"``
        (predicted, ``1 + g^2``) and ``loc`` ``"identity"`` or ``"sigmoid"``; Binomial ``eps``
        (``1e-7``: the reference's squeezed ``p``).
    :param decoder_heads: ``"shared"`` (one stacked decoder for every likelihood parameter) or
        ``"separate"`` (one stacked decoder per parameter).
    :param stride: stride of the conv leaves' (transposed) convolutions.
    :param out_layer: the conv leaf decoders' output layer, ``"conv"`` or ``"deconv"``
        (:class:`~pyro_spvae.nn.ConvDecoder`).
    :param init: weight initialisation of the leaf networks, ``"torch"`` or ``"tf1"``.

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
        likelihood_kwargs: dict[str, Any] | None = None,
        decoder_heads: str = "shared",
        stride: int = 2,
        out_layer: str = "conv",
        init: str = "torch",
    ) -> None:
        super().__init__()
        self.allow_missing = check_bool("allow_missing", allow_missing)
        self.event_shape = check_event_shape("event_shape", event_shape)
        if len(self.event_shape) != 3:
            raise ValueError(f"event_shape must be (C, H, W), got {self.event_shape}")
        self.sum_k = check_positive_int("sum_k", sum_k)
        self.leaf_k = check_positive_int("leaf_k", leaf_k)
        self.z_dim = check_positive_int("z_dim", z_dim)
        self.hidden = check_hidden("hidden", hidden)
        self.likelihood = check_choice("leaf likelihood", likelihood, LEAF_LIKELIHOODS)
        self.arch = check_choice("arch", arch, ("dense", "conv"))
        self.region_graph = self._default_graph() if region_graph is None else region_graph
        #: patch gather/scatter of the leaf regions (shared with the guide)
        self.scopes = LeafScopes(self.region_graph, self.event_shape)
        self.num_regions = self.scopes.num_regions
        self.num_leaves = self.num_regions * self.leaf_k
        self.channels = check_hidden("channels", channels)
        #: the leaf likelihood on flat patches (options checked, defaults filled in)
        self.leaf_likelihood = LeafLikelihood(self.likelihood, likelihood_kwargs)
        self.likelihood_kwargs = self.leaf_likelihood.options
        #: decoder outputs per pixel value: 2 (mean, precision) with a predicted precision, else 1
        self.num_params = self.leaf_likelihood.num_params
        self.decoder_heads = check_choice("decoder_heads", decoder_heads, HEADS)
        self.stride, self.out_layer, self.init = stride, out_layer, init  # checked by the networks
        self.decoder = self._make_decoder(activation)
        c, s = self.event_shape[0], self.scopes.max_size
        if self.leaf_likelihood.learnt_scale:
            # learnt log standard deviation per leaf and pixel value: (L, C, S)
            self.log_scale = nn.Parameter(torch.full((self.num_leaves, c, s), -1.0))
        #: the likelihood head over whole images: support checks and drawing pixels
        head_kwargs = self.leaf_likelihood.head_kwargs()
        self.likelihood_head = make_likelihood(likelihood, self.event_shape, **head_kwargs)
        #: the sum-product network over external (VAE) leaves; its weights are ``spn.*`` parameters
        self.spn = SPN(self.region_graph, num_sums=self.sum_k, leaves=None, num_leaf_components=self.leaf_k)
        self.register_buffer("_zero", torch.zeros(()), persistent=False)

    def _default_graph(self) -> RegionGraph:
        h, w = self.event_shape[1:]
        if h < 2 * 7 and w < 2 * 7:
            raise ValueError(f"the default Poon-Domingos graph (step 7) cannot split a {h}x{w} grid; "
                             "pass region_graph")
        return poon_domingos((h, w), 7)

    def _make_decoder(self, activation: str) -> nn.Module:
        p, c = self.num_params, self.event_shape[0]
        separate = self.decoder_heads == "separate" and p > 1
        nets_p = 1 if separate else p  # parameter blocks per stacked network
        if self.arch == "dense":
            nets = [StackedMLP(self.num_leaves, self.z_dim, self.hidden, self.scopes.patch_numel * nets_p,
                               activation=activation, init=self.init) for _ in range(p // nets_p)]
            return StackedHeads(nets, event_dims=1) if separate else nets[0]
        if self.scopes.patch_shape is None:
            raise ValueError(
                "arch='conv' needs leaf regions that are rectangles of one size (e.g. Poon-Domingos "
                "patches); this region graph has irregular leaf regions: use arch='dense'"
            )
        nets = [StackedConvDecoder(self.num_leaves, self.z_dim, (c, *self.scopes.patch_shape), c * nets_p,
                                   self.channels, self.hidden, activation=activation, stride=self.stride,
                                   out_layer=self.out_layer, init=self.init, heads=nets_p)
                for _ in range(p // nets_p)]
        return StackedHeads(nets, event_dims=3) if separate else nets[0]

    def _validate(self, x: Any, allow_missing: bool) -> Tensor:
        """Images ``(B, C, H, W)`` of the module's dtype and device, in the leaf likelihood's support."""
        head = self.likelihood_head
        return head.validate(x, batch_dims=1, allow_missing=allow_missing, like=self._zero,
                             what=f"{head.label} leaf likelihood")

    # ------------------------------------------------------------------ leaf side
    @pyro_method
    def decode(self, z: Tensor) -> Tensor:
        """Decoder outputs per leaf, ``(..., L, z_dim)`` -> ``(..., L, P * C, S)``: the ``P =``
        :attr:`num_params` parameter blocks (Gaussian means and raw precisions, or logits)."""
        out = self.decoder(z)
        return out.reshape(*out.shape[: z.dim() - 1], self.num_params * self.event_shape[0],
                           self.scopes.max_size)

    def _decode_net_major(self, z: Tensor) -> list[Tensor]:
        """The :attr:`num_params` decoder outputs ``(L, M, C * S)`` for net-major latents
        ``(L, M, z_dim)``."""
        if isinstance(self.decoder, StackedHeads):
            return self.decoder.forward_net_major_heads(z)
        out = self.decoder.forward_net_major(z)
        return list(out.chunk(self.num_params, -1)) if self.num_params > 1 else [out]

    def _log_lik(self, patches: Tensor, params: Sequence[Tensor], obs: Tensor | None,
                 leaf_shape: Sequence[int]) -> Tensor:
        """Leaf log-likelihood summed over the last dim of flat patches, from the :attr:`num_params`
        decoder outputs ``params``; ``leaf_shape`` lays out the learnt log-scales like them."""
        log_scale = self.log_scale.reshape(leaf_shape) if self.leaf_likelihood.learnt_scale else None
        return self.leaf_likelihood.log_lik(patches, params, obs, log_scale)

    @pyro_method
    def leaf_log_lik(self, x: Tensor, z: Tensor) -> Tensor:
        """:math:`\\log p(x_{R_l} | z_l)` with NaN pixels marginalised (they contribute 0), through the
        fused masked log-densities of :mod:`pyro_spvae.distributions`; leaf-major
        (:meth:`_leaf_log_lik_net_major`) when ``z`` carries the batch of ``x``.

        :param x: images ``(B, C, H, W)`` (NaN = missing).
        :param z: leaf latents ``(..., B, L, z_dim)`` (or broadcasting against it).
        :returns: ``(..., B, L)``.
        """
        if z.dim() >= 3 and x.dim() == 4 and z.shape[-3] == x.shape[0]:
            return self._leaf_log_lik_net_major(x, z)
        p, obs = self.scopes.gather_observed(x)  # (B, R, C, S)
        p, obs = (None if t is None else self.scopes.per_component(t, self.leaf_k) for t in (p, obs))
        params = self.decode(z).flatten(-2).chunk(self.num_params, -1)
        return self._log_lik(p, params, obs, (self.num_leaves, self.scopes.patch_numel))

    def _leaf_log_lik_net_major(self, x: Tensor, z: Tensor) -> Tensor:
        """:meth:`leaf_log_lik` leaf-major: the stacked decoder runs on ``(L, M * B, .)`` (no layout
        copy for ``z`` from :meth:`SPVAEGuide.leaf_rsample <pyro_spvae.guides.SPVAEGuide.leaf_rsample>`)
        and the likelihood on ``(L, M, B, C * S)``; only the ``(M, B, L)`` result is transposed."""
        lk, d = self.num_leaves, self.scopes.patch_numel
        b, batch = x.shape[0], z.shape[:-2]
        params = self._decode_net_major(z.movedim(-2, 0).reshape(lk, -1, self.z_dim))
        params = [t.view(lk, -1, b, d) for t in params]  # (L, M, B, D) each
        p, obs = self.scopes.gather_observed(x)  # (B, R, C, S) -> (L, 1, B, D) below
        p, obs = (None if t is None else self.scopes.per_component(t, self.leaf_k, True).unsqueeze(1)
                  for t in (p, obs))
        out = self._log_lik(p, params, obs, (lk, 1, 1, d))
        # (L, M, B) -> (M, B, L) -> (..., B, L)
        return out.expand(lk, params[0].shape[1], b).permute(1, 2, 0).reshape(*batch, lk)

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
        """Top-down selection of ``n`` induced trees (Poon & Domingos 2011): ``(n, R)`` selected leaf
        VAE per leaf region, ``-1`` outside the tree, given leaf log-values ``(n, L)`` (``None``:
        unconditional) by ``mode`` ``"sample"`` (from the posterior) or ``"mpe"`` (max-product)."""
        if leaf_log_values is None:
            leaf_log_values = self._zero.new_zeros(n, self.num_leaves)
        lv = leaf_log_values.reshape(n, self.num_regions, self.leaf_k)
        return self.spn.select_leaf_components(lv, mode=mode)

    @torch.no_grad()
    def _decode_selected(self, z: Tensor, k: Tensor, mode: str = "sample") -> Tensor:
        """Images ``(N, C, H, W)`` from latents ``z`` ``(N, L, z_dim)`` of the leaves ``k`` ``(N, R)``
        selected per region (``-1``: none): their likelihood parameters scattered into images and
        handed to the likelihood head, whose draw (``mode="sample"``) or mean is returned; pixels
        outside the selected leaves' scopes are NaN."""
        check_choice("mode", mode, ("sample", "mean"))
        params = self.decode(z)  # (N, L, P * C, S): the head's parameters, or the first of two
        if self.leaf_likelihood.learnt_scale:  # the head's 2nd parameter: the leaf's log-scale
            params = torch.cat([params, self.log_scale.expand_as(params)], -2)
        n, r = z.shape[0], self.num_regions
        params = params.reshape(n, r, self.leaf_k, *params.shape[-2:])
        idx = k.clamp(min=0).view(n, r, 1, 1, 1).expand(n, r, 1, *params.shape[-2:])
        images = self.scopes.scatter(params.gather(2, idx).squeeze(2), k >= 0)  # (N, P * C, H, W)
        uncovered = torch.isnan(images[:, : self.event_shape[0]])
        d = self.likelihood_head(torch.where(torch.isnan(images), torch.zeros_like(images), images))
        vals = d.mean if mode == "mean" else d.sample()
        return vals.masked_fill(uncovered, math.nan)

    def _decode_given(self, z: Tensor, k: Tensor) -> Tensor:
        """Draws from the leaves ``k`` ``(..., R)`` selected by trees, with latents ``z`` ``(..., L, z_dim)``
        broadcasting against ``k``'s batch: ``(..., C, H, W)``."""
        zz = z.expand(*k.shape[:-1], *z.shape[-2:]).reshape(-1, *z.shape[-2:])
        out = self._decode_selected(zz, k.reshape(-1, k.shape[-1]), "sample")
        return out.reshape(*k.shape[:-1], *self.event_shape)

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
        check_choice("mode", mode, ("sample", "mpe"))
        x = self._validate(x, allow_missing=True)
        b, lk = x.shape[0], self.num_leaves
        q = guide.leaf_posterior(x)
        z = q.sample((num_samples,))  # (K, B, L, z_dim)
        log_joint = self.leaf_log_joint(x, z)
        log_w = log_joint - q.log_prob(z)  # (K, B, L)
        # leaf regions without evidence have marginal exactly 1 and posterior = prior
        seen = self.scopes.observed(self.scopes.gather(x)).flatten(-2).any(-1)  # (B, R)
        seen = seen.repeat_interleave(self.leaf_k, -1)  # (B, L)
        lv = torch.where(seen, torch.logsumexp(log_w, 0) - math.log(num_samples), torch.zeros_like(log_w[0]))
        k = self.select_leaves(b, lv, mode)
        if mode == "sample":  # sampling-importance-resampling from the K proposals per leaf
            j = torch.distributions.Categorical(logits=log_w.movedim(0, -1)).sample()  # (B, L)
            z_prior = torch.randn_like(z[0])
        else:  # the most probable proposal under the joint (approximate leaf MAP)
            j = log_joint.argmax(0)
            z_prior = torch.zeros_like(z[0])
        z_sel = z.gather(0, j.view(1, b, lk, 1).expand(1, b, lk, self.z_dim)).squeeze(0)
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
    def observation(self, z: Tensor) -> SumProductNetwork:
        """``x | z ~ SPN(p(x_{R_l} | z_l))`` for leaf latents ``z`` ``(..., B, L, z_dim)``: a
        :class:`~pyro_spvae.distributions.SumProductNetwork`, batch ``(..., B)``, event ``(C, H, W)``;
        ``log_prob`` marginalises NaN pixels, ``sample`` decodes ``z`` at the leaves of drawn trees."""
        r, k = self.num_regions, self.leaf_k
        return SumProductNetwork(
            self.spn, lambda x: self.leaf_log_lik(x, z).unflatten(-1, (r, k)), batch_shape=z.shape[:-2],
            allow_missing=self.allow_missing, validate_args=False, event_shape=self.event_shape,
            leaf_sampler=lambda sel: self._decode_given(z, sel),
        )

    def forward(self, x: Tensor) -> Tensor:
        """The Pyro model: ``z ~ N(0, I)`` ``(B, L, z_dim)``, ``x | z ~ SPN(p(x_R | z_l))`` observed."""
        x = self._validate(x, self.allow_missing)
        b = x.shape[0]
        prior = LeafPrior((self.num_leaves, self.z_dim), (b,), dtype=self._zero.dtype,
                          device=self._zero.device, validate_args=False)
        with pyro.plate("data", b, dim=-1):
            z = pyro.sample("z", prior)
            pyro.sample("x", self.observation(z), obs=x)
        return z
