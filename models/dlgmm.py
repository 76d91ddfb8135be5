r"""The deep latent Gaussian mixture model (DLGMM) of Nalisnick, Hertel & Smyth (2016), as a Pyro model.

Nalisnick, Hertel & Smyth (2016), "Approximate inference for deep latent Gaussian mixtures", NIPS
workshop on Bayesian deep learning, §2-3; the truncated Dirichlet process follows the
stick-breaking VAE of Nalisnick & Smyth (2017), ICLR, §3. For each of the ``B`` data points
(``pyro.plate("data", B, dim=-1)``)::

    v ~ Beta(c1, c0)                      sticks (per data point, or once for the batch), or none
    pi = stick_breaking(v)                (``pi`` = the module's learnt or fixed weights when no sticks)
    c ~ Categorical(pi)                   component index (only with ``component_site=True``)
    z ~ N(mu_c, diag sigma_c^2)           (marginally: ``z ~ sum_k pi_k N(mu_k, diag sigma_k^2)``)
    x | z ~ lik(decoder(z))

Mixture weights (``prior`` and ``weights``):

=============  ===========  ===================================================================
``prior``      ``weights``  weights ``pi`` and the site ``"v"``
=============  ===========  ===================================================================
``"finite"``   ``"global"`` parameters of the model: learnt logits (``learn_weights=True``) or
                            uniform ``1/K``; no site ``"v"``
``"finite"``   ``"local"``  per data point ``pi_i ~ Dirichlet(alpha 1_K)``, written as its
                            stick-breaking form ``v_ik ~ Beta(alpha, (K - k) alpha)`` (Connor &
                            Mosimann 1969), site ``"v"`` of shape ``(B, K - 1)``
``"dp"``       ``"local"``  truncated Dirichlet process per data point, as in the paper:
                            ``v_ik ~ Beta(1, alpha)``, ``T = num_components``, site ``"v"``
                            ``(B, T - 1)``; ``E[pi_k] = (1/(1+alpha)) (alpha/(1+alpha))^(k-1)``
``"dp"``       ``"global"`` one draw of the sticks for all data, site ``"v"`` of shape ``(T - 1,)``
                            outside the data plate (a global latent)
=============  ===========  ===================================================================

The stick-breaking map ``pi_k = v_k prod_{j<k} (1 - v_j)``, ``pi_T = prod_{j<T} (1 - v_j)`` is
computed in log space by :func:`~pyro_spvae.distributions.stick_breaking_log_weights`.

The component index (``component_site``):

- ``False`` (default): the *marginal* model, ``"z" ~``
  :class:`~pyro_spvae.distributions.GaussianMixture`; no discrete site. Pairs with the pathwise
  mixture guide (guide (a) of the paper's three, :class:`~pyro_spvae.guides.MixtureGuide`) under
  any ELBO, and with the per-component estimator :class:`~pyro_spvae.infer.MixtureELBO` (c).
- ``True``: ``"c" ~ Categorical(pi)`` then ``"z" ~ N(mu_c, sigma_c)``. Either the guide samples
  ``"c"`` (guide (b), :class:`~pyro_spvae.guides.EnumeratedMixtureGuide`, enumerated by
  ``TraceEnum_ELBO`` on the guide side), or the model's ``"c"`` is enumerated by
  ``TraceEnum_ELBO`` on the model side (``enumerate="parallel"`` here, or
  ``pyro.infer.config_enumerate(model)``) against a guide for ``"z"`` alone; this sums the
  ``K`` components of the prior exactly, which equals the marginal model's ``log p(z)``. The
  components are vectorised: under enumeration ``c`` has shape ``(K, 1)`` and ``mu_c`` indexes the
  ``(K, D)`` means to ``(K, 1, D)``, never a Python loop over components.

``max_plate_nesting = 1`` (the data plate); ``TraceEnum_ELBO(max_plate_nesting=1)`` places the
enumeration dims to its left. Every op accepts extra leading particle or enumeration dims.
"""

from __future__ import annotations

from collections.abc import Sequence

import pyro
import pyro.distributions as dist
import torch
from pyro.nn import PyroModule
from torch import nn
from torch.distributions import Distribution

from pyro_spvae.distributions.gaussian_mixture import GaussianMixture
from pyro_spvae.distributions.stick_breaking import stick_breaking_log_weights
from pyro_spvae.nn.builders import build_decoder
from pyro_spvae.nn.gaussian_mixture_prior import GaussianMixturePrior
from pyro_spvae.nn.likelihoods import Likelihood, make_likelihood
from pyro_spvae.validation import (
    check_bool,
    check_choice,
    check_event_shape,
    check_hidden,
    check_int,
    check_module_data,
    check_network_input,
    check_positive_float,
    check_positive_int,
)

__all__ = ["DLGMM", "ENUMERATE", "PRIORS", "WEIGHTS"]

#: Mixture-weight priors: a finite ``K``-component mixture or a truncated Dirichlet process.
PRIORS = ("finite", "dp")
#: Where the weights live: one set for all data, or drawn per data point.
WEIGHTS = ("global", "local")
#: Values of ``enumerate`` (Pyro's ``infer={"enumerate": ...}``; ``None`` marks nothing).
ENUMERATE = (None, "parallel", "sequential")


class DLGMM(PyroModule):
    r"""Deep latent Gaussian mixture model (see the module docstring for the generative process).

    :param event_shape: shape of one observation, ``(C, H, W)`` for ``arch="conv"``.
    :param z_dim: latent dimension ``D``.
    :param num_components: ``K``, or the truncation ``T`` of the Dirichlet process (``>= 2``).
    :param prior: ``"finite"`` or ``"dp"``.
    :param weights: ``"global"`` or ``"local"`` (per data point).
    :param alpha: concentration ``> 0``: of the DP (``Beta(1, alpha)`` sticks) or of the symmetric
        Dirichlet of ``prior="finite", weights="local"``; unused otherwise.
    :param learn_weights: learn the logits of ``prior="finite", weights="global"`` (else uniform).
    :param component_site: sample the component index as the site ``"c"`` (see the module docstring).
    :param enumerate: ``infer={"enumerate": ...}`` for the model's ``"c"`` (model-side enumeration
        by ``TraceEnum_ELBO``); ``None`` (default) when a guide samples ``"c"``.
    :param init_spread: the component means start at ``init_spread * N(0, I)``.

    The remaining keywords are :class:`~pyro_spvae.models.VAE`'s: ``hidden``, ``likelihood``, ``arch``
    (``"dense"`` or ``"conv"``), ``activation``, ``channels``, ``likelihood_kwargs``.
    Parameters: the decoder, the likelihood head and ``mixture``
    (:class:`~pyro_spvae.nn.GaussianMixturePrior`: ``locs``, ``scales`` ``(K, D)``, ``logits (K,)``).
    """

    max_plate_nesting = 1

    def __init__(self, event_shape: Sequence[int] = (1, 28, 28), z_dim: int = 50, num_components: int = 10,
                 *, prior: str = "finite", weights: str = "global", alpha: float = 1.0,
                 learn_weights: bool = True, component_site: bool = False, enumerate: str | None = None,
                 hidden: Sequence[int] = (200, 200), likelihood: str | Likelihood = "bernoulli",
                 arch: str = "dense", activation: str | nn.Module = "softplus",
                 channels: Sequence[int] = (32, 64), likelihood_kwargs: dict | None = None,
                 init_spread: float = 1.0) -> None:
        super().__init__()
        self.event_shape = check_event_shape("event_shape", event_shape)
        self.z_dim = check_positive_int("z_dim", z_dim)
        K = check_int("num_components", num_components, 2)
        self.prior_type = check_choice("prior", prior, PRIORS)
        self.weights = check_choice("weights", weights, WEIGHTS)
        self.alpha = check_positive_float("alpha", alpha)
        self.component_site = check_bool("component_site", component_site)
        self.enumerate = check_choice("enumerate", enumerate, ENUMERATE)
        if self.enumerate is not None and not self.component_site:
            raise ValueError("enumerate needs component_site=True (the marginal model has no site 'c')")
        #: ``None`` (no site "v"), ``"local"`` (in the data plate) or ``"global"`` (outside it)
        self.stick_site = None if (prior == "finite" and weights == "global") else weights
        learn = check_bool("learn_weights", learn_weights) and self.stick_site is None
        self.mixture = GaussianMixturePrior(K, self.z_dim, learn_weights=learn, init_spread=init_spread)
        c1, c0 = self._stick_concentrations(K)
        self.register_buffer("stick_concentration1", c1)
        self.register_buffer("stick_concentration0", c0)
        hidden = check_hidden("hidden", hidden)
        self.likelihood = make_likelihood(likelihood, self.event_shape, **(likelihood_kwargs or {}))
        self.arch = arch  # checked by build_decoder
        self.decoder = build_decoder(arch, self.z_dim, self.likelihood.param_shape, hidden, activation,
                                     channels)

    def _stick_concentrations(self, K: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(c1, c0)`` of the ``K - 1`` Beta sticks: ``(1, alpha)`` for the DP, ``(alpha, (K - k)
        alpha)`` for the symmetric Dirichlet (Connor & Mosimann 1969)."""
        if self.prior_type == "dp":
            return torch.ones(K - 1), torch.full((K - 1,), self.alpha)
        return torch.full((K - 1,), self.alpha), self.alpha * torch.arange(K - 1, 0, -1).float()

    @property
    def num_components(self) -> int:
        """``K`` (the truncation ``T`` for the DP)."""
        return self.mixture.num_components

    def validate(self, x: object) -> torch.Tensor:
        """Check a data batch ``x`` of shape ``(B, *event_shape)`` (type, dtype, shape, NaN/inf and
        the likelihood's support); :raises TypeError: / :raises ValueError: naming the problem."""
        x = check_module_data("x", x, self.event_shape, self)
        return self.likelihood.validate(x)

    def decode(self, z: torch.Tensor) -> Distribution:
        """``p(x | z)`` for latents ``(..., z_dim)``: batch shape ``...``, event shape ``event_shape``."""
        check_network_input("z", z, next(self.parameters()), (self.z_dim,))
        return self.likelihood(self.decoder(z))

    def stick_prior(self) -> Distribution:
        """The prior of the sticks ``v``: ``Beta(c1, c0)`` with event shape ``(K - 1,)``.

        :raises ValueError: for ``prior="finite", weights="global"`` (no sticks).
        """
        if self.stick_site is None:
            raise ValueError("prior='finite' with weights='global' has no sticks")
        return dist.Beta(self.stick_concentration1, self.stick_concentration0).to_event(1)

    @staticmethod
    def stick_logits(v: torch.Tensor) -> torch.Tensor:
        """``log pi`` of shape ``(..., K)`` from sticks ``v`` in ``(0, 1)`` of shape ``(..., K - 1)``."""
        return stick_breaking_log_weights(torch.log(v), torch.log1p(-v))

    def z_prior(self, v: torch.Tensor | None = None) -> GaussianMixture:
        """``p(z | v) = sum_k pi_k(v) N(mu_k, diag sigma_k^2)``: with sticks ``v`` of shape
        ``(..., K - 1)`` the batch shape is ``...``; without, the module's weights (batch ``()``)."""
        if v is None:
            if self.stick_site is not None:
                raise ValueError("this model draws its weights from sticks: pass v")
            return self.mixture()
        return self.mixture(logits=self.stick_logits(v))

    def forward(self, x: torch.Tensor) -> None:
        """The Pyro model for a batch ``x`` of shape ``(B, *event_shape)``."""
        self.validate(x)
        v = pyro.sample("v", self.stick_prior()) if self.stick_site == "global" else None
        with pyro.plate("data", x.shape[0], dim=-1):
            if self.stick_site == "local":
                v = pyro.sample("v", self.stick_prior())
            prior = self.z_prior(v)
            if self.component_site:
                infer = {"enumerate": self.enumerate} if self.enumerate else {}
                c = pyro.sample("c", dist.Categorical(logits=prior.logits), infer=infer)
                # c: (B,), (..., B) with particles, or (K, 1) under enumeration -> (..., D)
                loc, scale = self.mixture.locs[c], self.mixture.scales[c]
                z = pyro.sample("z", dist.Normal(loc, scale).to_event(1))
            else:
                z = pyro.sample("z", prior)
            pyro.sample("x", self.decode(z), obs=x)

    @torch.no_grad()
    def sample_latents(self, num_samples: int) -> torch.Tensor:
        """``num_samples`` draws of ``z`` from the prior, shape ``(num_samples, z_dim)`` (local sticks
        drawn per sample, global sticks once)."""
        n = check_positive_int("num_samples", num_samples)
        if self.stick_site is None:
            return self.z_prior().sample((n,))
        v = self.stick_prior().sample((n,) if self.stick_site == "local" else ())
        return self.z_prior(v).sample(() if self.stick_site == "local" else (n,))

    @torch.no_grad()
    def sample(self, num_samples: int, mean: bool = True) -> torch.Tensor:
        """Draw ``num_samples`` observations ``(num_samples, *event_shape)``: ``z`` from the prior,
        then the mean of ``p(x | z)`` (``mean=True``) or a sample."""
        px = self.decode(self.sample_latents(num_samples))
        return px.mean if mean else px.sample()

    @torch.no_grad()
    def sample_components(self, num_samples: int, mean: bool = True) -> torch.Tensor:
        """``num_samples`` observations from each component, shape ``(K, num_samples, *event_shape)``:
        ``z ~ N(mu_k, diag sigma_k^2)``, then the mean of ``p(x | z)`` or a sample."""
        n = check_positive_int("num_samples", num_samples)
        locs, scales = self.mixture.locs, self.mixture.scales
        z = locs.unsqueeze(1) + scales.unsqueeze(1) * torch.randn(locs.shape[0], n, self.z_dim,
                                                                   dtype=locs.dtype, device=locs.device)
        px = self.decode(z)
        return px.mean if mean else px.sample()
