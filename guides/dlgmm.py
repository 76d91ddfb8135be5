r"""Amortised guides for the deep latent Gaussian mixture model :class:`~pyro_spvae.models.DLGMM`.

The posterior of Nalisnick, Hertel & Smyth (2016, §3) is itself a mixture,
``q(z | x) = sum_k pi_k(x) N(z; mu_k(x), diag s_k(x)^2)``, from one encoder with ``K`` heads. The
paper's three ways of training it, and its stick-breaking posterior for DP weights:

(a) :class:`MixtureGuide`: ``"z" ~`` Pyro's :class:`~pyro.distributions.MixtureOfDiagNormals`
    (through :meth:`GaussianMixture.to_pathwise
    <pyro_spvae.distributions.GaussianMixture.to_pathwise>`), whose ``rsample`` carries pathwise
    gradients for the means, scales *and* weights (Jankowiak & Karaletsos 2019,
    arXiv:1806.01856; needs ``z_dim >= 2``). For the marginal model (``component_site=False``),
    under any ELBO.
(b) :class:`EnumeratedMixtureGuide`: the component index as a discrete site,
    ``"c" ~ Categorical(pi(x))`` marked ``infer={"enumerate": "parallel"}`` (configurable), then
    ``"z" ~ N(mu_c(x), s_c(x))``, vectorised over components (``c`` of shape ``(K, 1)`` indexes
    the ``(B, K, D)`` heads to ``(K, B, D)``). With ``TraceEnum_ELBO`` the bound
    ``sum_k q(k|x) E_{q(z|x,k)}[log p(x, z, k) - log q(k|x) - log q(z|x,k)]`` is summed over
    ``k`` exactly (one reparameterised ``z`` per component). For ``component_site=True`` models.
(c) the paper's per-component estimator
    ``sum_k pi_k(x) E_{q_k}[log p(x, z) - log q(z | x)]`` with one reparameterised sample per
    component and the mixture entropy by Monte Carlo is an *objective*, not a guide:
    :class:`~pyro_spvae.infer.MixtureELBO` with :class:`MixtureGuide` (or a pathwise
    :class:`StickBreakingGuide`).
(d) :class:`StickBreakingGuide`: for models with stick sites ``"v"`` (DP, or per-data-point
    Dirichlet weights), ``"v" ~ Kumaraswamy(a(x), b(x))`` per data point (or global ``a, b``
    parameters), the posterior of the stick-breaking VAE (Nalisnick & Smyth 2017, §3.2); with
    per-data-point sticks their weights ``pi(v)`` are the mixture weights of ``q(z | x, v)``
    (pathwise, as (a), or with an enumerated ``"c"``, as (b)). ``KL(Kumaraswamy || Beta)`` is registered
    (:mod:`pyro_spvae.distributions.kl`), so ``TraceMeanField_ELBO`` uses it analytically.

Every guide samples its sites inside ``pyro.plate("data", B, dim=-1)`` (global sticks outside it),
in the model's order, and accepts leading particle and enumeration dims.
"""

from __future__ import annotations

from collections.abc import Sequence

import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F
from pyro.nn import PyroModule, PyroParam
from pyro.ops.indexing import Vindex
from torch import nn
from torch.distributions import constraints

from pyro_spvae.distributions.gaussian_mixture import GaussianMixture
from pyro_spvae.distributions.stick_breaking import kumaraswamy_log_isf, log1mexp, stick_breaking_log_weights
from pyro_spvae.nn.builders import build_encoder
from pyro_spvae.validation import (
    check_choice,
    check_event_shape,
    check_hidden,
    check_int,
    check_module_data,
    check_positive_int,
    check_real,
)

__all__ = ["COMPONENTS", "EnumeratedMixtureGuide", "MixtureGuide", "StickBreakingGuide"]

#: How :class:`StickBreakingGuide` samples ``z`` given the sticks: pathwise mixture or enumerated ``"c"``.
COMPONENTS = ("pathwise", "enumerated")
_ENUMERATE = (None, "parallel", "sequential")
_STICKS = ("local", "global")
#: lower bound on the Kumaraswamy posterior parameters (numerical safety of ``log v`` and the KL)
_MIN_CONCENTRATION = 1e-2


class _Kumaraswamy(dist.Kumaraswamy):
    """``Kumaraswamy(a, b)`` whose reparameterised draws stay inside ``(0, 1)`` in floating point.

    Torch's sampler ``(1 - u^(1/b))^(1/a)`` rounds to exactly ``1`` with probability
    ``(eps/2)^b`` (19% in float32 for ``b = 0.1``), where ``log q(v)`` and ``log(1 - v)`` are
    infinite. Draws go through :func:`~pyro_spvae.distributions.kumaraswamy_log_isf` (log space)
    and are clamped to ``[tiny, 1 - eps]``; ``log_prob`` uses ``log1mexp`` for ``log(1 - v^a)``.
    The class is still a ``Kumaraswamy``, so the registered ``KL(Kumaraswamy || Beta)`` applies.
    """

    def rsample(self, sample_shape: tuple[int, ...] = ()) -> torch.Tensor:
        shape = self._extended_shape(sample_shape)
        a, b = self.concentration1.expand(shape), self.concentration0.expand(shape)
        finfo = torch.finfo(a.dtype)
        neg_log_u = torch.empty_like(a).exponential_().clamp(min=finfo.tiny)
        log_v, _ = kumaraswamy_log_isf(neg_log_u, a, b)
        return log_v.exp().clamp(min=finfo.tiny, max=1 - finfo.eps)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        if self._validate_args:
            self._validate_sample(value)
        a, b, log_v = self.concentration1, self.concentration0, torch.log(value)
        return torch.log(a) + torch.log(b) + (a - 1) * log_v + (b - 1) * log1mexp(-a * log_v)


class _MixtureHeads(PyroModule):
    """One encoder with ``K`` Gaussian heads and (optionally) per-data-point mixture logits and
    Kumaraswamy stick parameters; the common part of the guides of this module.

    Encoder output layout (last dim): ``[logits (K) | locs (K*D) | raw scales (K*D) | raw a (K-1) |
    raw b (K-1)]``, the first and the last two blocks present when asked for.
    """

    def __init__(self, event_shape: Sequence[int], z_dim: int, num_components: int, *, logits: bool,
                 local_sticks: bool, hidden: Sequence[int], arch: str, activation: str | nn.Module,
                 channels: Sequence[int], min_scale: float) -> None:
        super().__init__()
        self.event_shape = check_event_shape("event_shape", event_shape)
        self.z_dim = check_positive_int("z_dim", z_dim)
        self.num_components = check_int("num_components", num_components, 2)
        self.min_scale = check_real("min_scale", min_scale, 0.0)
        self.arch = arch
        K, D = self.num_components, self.z_dim
        self._sizes = (K if logits else 0, K * D, K * D, *((K - 1, K - 1) if local_sticks else (0, 0)))
        self.encoder = build_encoder(arch, self.event_shape, sum(self._sizes), check_hidden("hidden", hidden),
                                     activation, channels)

    def _validate(self, x: object, batch_dims: int | None) -> None:
        check_module_data("x", x, self.event_shape, self, batch_dims=batch_dims)

    def heads(self, x: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor,
                                               torch.Tensor | None, torch.Tensor | None]:
        """``(logits (..., K), locs (..., K, D), scales (..., K, D), a (..., K-1), b (..., K-1))``
        for ``x`` of shape ``(..., *event_shape)``; absent blocks are ``None``."""
        out = self.encoder(x)
        logits, locs, raw, raw_a, raw_b = torch.split(out, self._sizes, dim=-1)
        shape = (*out.shape[:-1], self.num_components, self.z_dim)
        scales = F.softplus(raw).reshape(shape) + self.min_scale
        a = b = None
        if self._sizes[3]:
            a, b = F.softplus(raw_a) + _MIN_CONCENTRATION, F.softplus(raw_b) + _MIN_CONCENTRATION
        return (logits if self._sizes[0] else None), locs.reshape(shape), scales, a, b

    def posterior(self, x: torch.Tensor) -> GaussianMixture:
        """The marginal posterior ``q(z | x) = sum_k rho_k(x) N(mu_k(x), diag s_k(x)^2)`` for ``x`` of
        shape ``(..., *event_shape)`` (batch shape ``...``), for guides with their own weights.

        :raises ValueError: for per-data-point sticks, whose weights ``pi(v)`` are random.
        """
        self._validate(x, None)
        logits, locs, scales, _, _ = self.heads(x)
        if logits is None:
            raise ValueError("with per-data-point sticks the posterior weights pi(v) are random")
        return GaussianMixture(logits, locs, scales)



def _sample_z_pathwise(logits: torch.Tensor, locs: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    return pyro.sample("z", GaussianMixture(logits, locs, scales).to_pathwise())


def _sample_z_enumerated(logits: torch.Tensor, locs: torch.Tensor, scales: torch.Tensor,
                         enumerate: str | None) -> torch.Tensor:
    infer = {"enumerate": enumerate} if enumerate else {}
    c = pyro.sample("c", dist.Categorical(logits=logits), infer=infer)
    # c: (B,), (..., B) or (K, 1, ...) under enumeration; Vindex broadcasts it with the batch dims
    loc, scale = Vindex(locs)[..., c, :], Vindex(scales)[..., c, :]
    return pyro.sample("z", dist.Normal(loc, scale).to_event(1))


class MixtureGuide(_MixtureHeads):
    r"""Guide (a): ``"z" ~ sum_k pi_k(x) N(mu_k(x), diag s_k(x)^2)`` with pathwise gradients.

    :param event_shape: shape of one observation, e.g. ``(1, 28, 28)``.
    :param z_dim: latent dimension ``D >= 2`` (``MixtureOfDiagNormals`` has no ``D = 1``).
    :param num_components: ``K >= 2`` posterior components (usually the model's ``K``).
    :param hidden: hidden widths of the encoder; :param arch: ``"dense"`` or ``"conv"``;
    :param activation: activation name or module; :param channels: convolution widths.
    :param min_scale: lower bound on the posterior scales, ``>= 0``.

    ``mixture_site = "z"``: the site :class:`~pyro_spvae.infer.MixtureELBO` draws per component.
    """

    mixture_site = "z"

    def __init__(self, event_shape: Sequence[int] = (1, 28, 28), z_dim: int = 50, num_components: int = 10,
                 hidden: Sequence[int] = (200, 200), arch: str = "dense",
                 activation: str | nn.Module = "softplus", channels: Sequence[int] = (32, 64),
                 min_scale: float = 1e-4) -> None:
        if check_positive_int("z_dim", z_dim) < 2:
            raise ValueError("MixtureGuide needs z_dim >= 2 (MixtureOfDiagNormals has no D = 1)")
        super().__init__(event_shape, z_dim, num_components, logits=True, local_sticks=False, hidden=hidden,
                         arch=arch, activation=activation, channels=channels, min_scale=min_scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Sample ``"z"`` of shape ``(B, z_dim)`` for ``x`` of shape ``(B, *event_shape)``."""
        self._validate(x, batch_dims=1)
        logits, locs, scales, _, _ = self.heads(x)
        with pyro.plate("data", x.shape[0], dim=-1):
            return _sample_z_pathwise(logits, locs, scales)


class EnumeratedMixtureGuide(_MixtureHeads):
    r"""Guide (b): ``"c" ~ Categorical(pi(x))``, then ``"z" ~ N(mu_c(x), diag s_c(x)^2)``.

    For models with ``component_site=True``. Parameters as :class:`MixtureGuide` (any
    ``z_dim >= 1``), plus

    :param enumerate: ``infer={"enumerate": ...}`` of ``"c"``: ``"parallel"`` (default;
        ``TraceEnum_ELBO`` sums over the components), ``"sequential"`` or ``None`` (``"c"`` is
        sampled, with score-function gradients; needed by estimators that sample every site, such
        as :class:`~pyro_spvae.infer.TraceIWAE_ELBO` and the evaluation API). The attribute may be
        changed after construction.
    """

    def __init__(self, event_shape: Sequence[int] = (1, 28, 28), z_dim: int = 50, num_components: int = 10,
                 hidden: Sequence[int] = (200, 200), arch: str = "dense",
                 activation: str | nn.Module = "softplus", channels: Sequence[int] = (32, 64),
                 min_scale: float = 1e-4, enumerate: str | None = "parallel") -> None:
        super().__init__(event_shape, z_dim, num_components, logits=True, local_sticks=False, hidden=hidden,
                         arch=arch, activation=activation, channels=channels, min_scale=min_scale)
        self.enumerate = check_choice("enumerate", enumerate, _ENUMERATE)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Sample ``"c"`` and ``"z"`` for ``x`` of shape ``(B, *event_shape)``; returns ``z``."""
        self._validate(x, batch_dims=1)
        logits, locs, scales, _, _ = self.heads(x)
        with pyro.plate("data", x.shape[0], dim=-1):
            return _sample_z_enumerated(logits, locs, scales, self.enumerate)


class StickBreakingGuide(_MixtureHeads):
    r"""Guide (d): Kumaraswamy sticks ``"v"``, then ``z`` from a mixture of ``K`` Gaussians.

    Local sticks (per data point, the paper's posterior):
    ``q(v, z | x) = prod_k Kumaraswamy(v_k; a_k(x), b_k(x)) * sum_k pi_k(v) N(z; mu_k(x), s_k(x)^2)``
    (or with the site ``"c" ~ Categorical(pi(v))`` between them, ``components="enumerated"``): the
    posterior weights of a data point's components are its own stick-breaking weights. Global
    sticks (one ``v`` for the batch) cannot tell the data points apart, so ``z`` gets its own
    per-data-point weights: ``q(v) q(z | x)`` with ``q(z | x) = sum_k rho_k(x) N(mu_k(x), s_k(x)^2)``
    (mean field, as for the finite mixture).

    Parameters as :class:`MixtureGuide`, plus

    :param sticks: ``"local"`` (``a(x), b(x)`` from the encoder, for ``weights="local"`` models) or
        ``"global"`` (``a, b`` parameters of shape ``(K - 1,)``, site outside the data plate).
    :param components: ``"pathwise"`` (``"z"`` from ``MixtureOfDiagNormals``, ``z_dim >= 2``; also
        for :class:`~pyro_spvae.infer.MixtureELBO`) or ``"enumerated"`` (``"c"`` then ``"z"``, for
        ``component_site=True`` models).
    :param enumerate: ``infer={"enumerate": ...}`` of ``"c"`` with ``components="enumerated"``.

    ``a, b = softplus(.) + 0.01``; the sticks stay inside ``(0, 1)`` in floating point.
    """

    def __init__(self, event_shape: Sequence[int] = (1, 28, 28), z_dim: int = 50, num_components: int = 10,
                 hidden: Sequence[int] = (200, 200), arch: str = "dense",
                 activation: str | nn.Module = "softplus", channels: Sequence[int] = (32, 64),
                 min_scale: float = 1e-4, sticks: str = "local", components: str = "pathwise",
                 enumerate: str | None = "parallel") -> None:
        check_choice("sticks", sticks, _STICKS)
        self.components = check_choice("components", components, COMPONENTS)
        if components == "pathwise" and check_positive_int("z_dim", z_dim) < 2:
            raise ValueError("components='pathwise' needs z_dim >= 2 (MixtureOfDiagNormals has no D = 1)")
        super().__init__(event_shape, z_dim, num_components, logits=sticks == "global",
                         local_sticks=sticks == "local", hidden=hidden, arch=arch, activation=activation,
                         channels=channels,
                         min_scale=min_scale)
        self.sticks = sticks
        self.enumerate = check_choice("enumerate", enumerate, _ENUMERATE)
        if sticks == "global":
            ones = torch.ones(self.num_components - 1)
            self.stick_a = PyroParam(ones.clone(), constraint=constraints.greater_than(_MIN_CONCENTRATION))
            self.stick_b = PyroParam(ones.clone(), constraint=constraints.greater_than(_MIN_CONCENTRATION))

    @property
    def mixture_site(self) -> str | None:
        """``"z"`` when it is drawn from a pathwise mixture (for :class:`~pyro_spvae.infer.MixtureELBO`)."""
        return "z" if self.components == "pathwise" else None

    def stick_posterior(self, x: torch.Tensor) -> dist.Kumaraswamy:
        """``q(v | x)`` with event shape ``(K - 1,)``: batch ``...`` for local sticks, ``()`` global."""
        self._validate(x, None)
        if self.sticks == "global":
            return _Kumaraswamy(self.stick_a, self.stick_b).to_event(1)
        _, _, _, a, b = self.heads(x)
        return _Kumaraswamy(a, b).to_event(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Sample ``"v"`` (and ``"c"``) and ``"z"`` for ``x`` of shape ``(B, *event_shape)``."""
        self._validate(x, batch_dims=1)
        logits, locs, scales, a, b = self.heads(x)
        if self.sticks == "global":
            pyro.sample("v", _Kumaraswamy(self.stick_a, self.stick_b).to_event(1))
        with pyro.plate("data", x.shape[0], dim=-1):
            if self.sticks == "local":
                v = pyro.sample("v", _Kumaraswamy(a, b).to_event(1))
                logits = stick_breaking_log_weights(torch.log(v), torch.log1p(-v))
            if self.components == "pathwise":
                return _sample_z_pathwise(logits, locs, scales)
            return _sample_z_enumerated(logits, locs, scales, self.enumerate)
