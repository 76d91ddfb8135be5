"""Guides for the linear-Gaussian ground-truth models in :mod:`pyro_spvae.models.linear_gaussian`.

Two kinds per model:

- *exact-posterior* guides (``...PosteriorGuide``): oracles that sample the model's exact posterior
  (computed in closed form from the model's current parameters, without gradient to them), so that
  every importance weight equals ``p(x)`` exactly and every bound is tight for any ``K``;
- deliberately *poor* amortised mean-field guides (linear encoder, diagonal Gaussian), initialised
  at the prior, whose bounds are strictly below ``log p(x)`` and tighten as ``K`` grows.

Every guide samples the same latent sites as its model inside ``pyro.plate("data", N, dim=-1)``
(global sites outside it) and accepts leading particle dimensions.
"""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import torch
from pyro.nn import PyroModule
from torch import Tensor, nn

from pyro_spvae.models.linear_gaussian import GlobalOffsetPPCA, LinearGaussianVAE, MixtureOfPPCA
from pyro_spvae.validation import check_bool, check_module_data, check_positive_float, check_positive_int

__all__ = [
    "LinearGaussianPosteriorGuide",
    "LinearGaussianGuide",
    "MixtureOfPPCAPosteriorGuide",
    "MixtureOfPPCAGuide",
    "GlobalOffsetPPCAPosteriorGuide",
    "GlobalOffsetPPCAGuide",
]


def _check_model(model: object, cls: type) -> None:
    if not isinstance(model, cls):
        raise TypeError(f"model must be a {cls.__name__}, got {type(model).__name__}")


class LinearGaussianPosteriorGuide(PyroModule):
    """Exact posterior ``q(z | x) = p(z | x)`` of a :class:`LinearGaussianVAE` (an oracle guide).

    The model is held by reference (not registered as a sub-module), so the guide has no parameters.

    :param float scale_factor: multiplies the posterior standard deviation (``1`` = exact; ``> 1``
        gives a good over-dispersed proposal with bounded weights, ``< 1`` an under-dispersed one
        with heavy-tailed weights).
    """

    def __init__(self, model: LinearGaussianVAE, scale_factor: float = 1.0) -> None:
        super().__init__()
        _check_model(model, LinearGaussianVAE)
        object.__setattr__(self, "_model", model)
        self.scale_factor = check_positive_float("scale_factor", scale_factor)

    def forward(self, x: Tensor) -> None:
        with torch.no_grad():
            loc, cov = self._model.exact_posterior(x)
            scale_tril = self.scale_factor * torch.linalg.cholesky(cov)
        with pyro.plate("data", x.shape[0], dim=-1):
            pyro.sample("z", dist.MultivariateNormal(loc, scale_tril=scale_tril))


class LinearGaussianGuide(PyroModule):
    """Amortised mean-field guide ``q(z | x) = N(A x + c, diag(sigma^2))``.

    Parameters ``enc_weight`` (``A``), ``enc_bias`` (``c``), ``log_scale`` (``log sigma``); named so
    that no parameter collides with a model site name. Initialised at the prior (``A = 0``,
    ``c = 0``, ``sigma = init_scale``), i.e. deliberately poor.

    :param int x_dim: ``D``. :param int z_dim: ``d``. :param float init_scale: initial ``sigma``.
    """

    def __init__(self, x_dim: int, z_dim: int, init_scale: float = 1.0, dtype: torch.dtype = torch.float32):
        super().__init__()
        self.x_dim = check_positive_int("x_dim", x_dim)
        self.z_dim = check_positive_int("z_dim", z_dim)
        init_scale = check_positive_float("init_scale", init_scale)
        self.enc_weight = nn.Parameter(torch.zeros(z_dim, x_dim, dtype=dtype))
        self.enc_bias = nn.Parameter(torch.zeros(z_dim, dtype=dtype))
        self.log_scale = nn.Parameter(torch.full((z_dim,), math.log(init_scale), dtype=dtype))

    def forward(self, x: Tensor) -> None:
        check_module_data("x", x, (self.x_dim,), self)
        loc = x @ self.enc_weight.T + self.enc_bias
        with pyro.plate("data", x.shape[0], dim=-1):
            pyro.sample("z", dist.Normal(loc, self.log_scale.exp()).to_event(1))


class MixtureOfPPCAPosteriorGuide(PyroModule):
    """Exact posterior ``q(c, z | x) = p(c | x) p(z | x, c)`` of a :class:`MixtureOfPPCA`."""

    def __init__(self, model: MixtureOfPPCA) -> None:
        super().__init__()
        _check_model(model, MixtureOfPPCA)
        object.__setattr__(self, "_model", model)

    def forward(self, x: Tensor) -> None:
        with torch.no_grad():
            probs, loc, cov = self._model.exact_posterior(x)  # (N,C), (N,C,d), (C,d,d)
            scale_tril = torch.linalg.cholesky(cov)
        with pyro.plate("data", x.shape[0], dim=-1):
            c = pyro.sample("c", dist.Categorical(probs=probs))
            onehot = nn.functional.one_hot(c, probs.shape[-1]).to(loc.dtype)  # (..., N, C)
            loc_c = (onehot.unsqueeze(-1) * loc).sum(-2)
            tril_c = (onehot[..., None, None] * scale_tril).sum(-3)
            pyro.sample("z", dist.MultivariateNormal(loc_c, scale_tril=tril_c))


class MixtureOfPPCAGuide(PyroModule):
    """Poor amortised guide for :class:`MixtureOfPPCA`: ``q(c | x) = Cat(softmax(B x + e))``
    (``cls_weight``, ``cls_bias``) and ``q(z | x) = N(A x + a, diag(sigma^2))`` independent of ``c``
    (``enc_weight``, ``enc_bias``, ``log_scale``). Initialised at uniform / prior."""

    def __init__(self, num_components: int, x_dim: int, z_dim: int, dtype: torch.dtype = torch.float32):
        super().__init__()
        num_components = check_positive_int("num_components", num_components)
        self.x_dim = check_positive_int("x_dim", x_dim)
        z_dim = check_positive_int("z_dim", z_dim)
        self.cls_weight = nn.Parameter(torch.zeros(num_components, x_dim, dtype=dtype))
        self.cls_bias = nn.Parameter(torch.zeros(num_components, dtype=dtype))
        self.enc_weight = nn.Parameter(torch.zeros(z_dim, x_dim, dtype=dtype))
        self.enc_bias = nn.Parameter(torch.zeros(z_dim, dtype=dtype))
        self.log_scale = nn.Parameter(torch.zeros(z_dim, dtype=dtype))

    def forward(self, x: Tensor) -> None:
        check_module_data("x", x, (self.x_dim,), self)
        with pyro.plate("data", x.shape[0], dim=-1):
            pyro.sample("c", dist.Categorical(logits=x @ self.cls_weight.T + self.cls_bias))
            loc = x @ self.enc_weight.T + self.enc_bias
            pyro.sample("z", dist.Normal(loc, self.log_scale.exp()).to_event(1))


class GlobalOffsetPPCAPosteriorGuide(PyroModule):
    """Exact posterior ``q(theta) q(z_i | x_i, theta) = p(theta | x) p(z_i | x_i, theta)`` of a
    :class:`GlobalOffsetPPCA`.

    :param bool exact_theta: if ``False``, ``theta`` is drawn from ``N(theta_loc, theta_scale^2 I)``
        instead of its exact posterior while the local posterior stays exact, so that the bound is
        ``log p(theta) - log q(theta) + sum_i log p(x_i | theta)`` exactly for every ``K``.
    """

    def __init__(
        self,
        model: GlobalOffsetPPCA,
        exact_theta: bool = True,
        theta_loc: Tensor | None = None,
        theta_scale: float = 0.3,
    ) -> None:
        super().__init__()
        _check_model(model, GlobalOffsetPPCA)
        object.__setattr__(self, "_model", model)
        self.exact_theta = check_bool("exact_theta", exact_theta)
        self.theta_scale = check_positive_float("theta_scale", theta_scale)
        self.theta_loc = theta_loc

    def forward(self, x: Tensor) -> None:
        m = self._model
        with torch.no_grad():
            if self.exact_theta:
                loc, cov = m.exact_theta_posterior(x)
                q_theta = dist.MultivariateNormal(loc, scale_tril=torch.linalg.cholesky(cov))
            else:
                loc = self.theta_loc if self.theta_loc is not None else torch.zeros(m.x_dim, dtype=m.W.dtype)
                q_theta = dist.Normal(loc, self.theta_scale).to_event(1)
        theta = pyro.sample("theta", q_theta)
        with torch.no_grad():
            z_loc, z_cov = m.exact_local_posterior(x, theta)
            tril = torch.linalg.cholesky(z_cov)
        with pyro.plate("data", x.shape[0], dim=-1):
            pyro.sample("z", dist.MultivariateNormal(z_loc, scale_tril=tril))


class GlobalOffsetPPCAGuide(PyroModule):
    """Mean-field amortised guide for :class:`GlobalOffsetPPCA`:
    ``q(theta) = N(m, diag(sigma_theta^2))`` (``theta_loc``, ``log_theta_scale``) and
    ``q(z_i | x_i, theta) = N(A (x_i - theta) + c, diag(sigma^2))`` (``enc_weight``, ``enc_bias``,
    ``log_scale``).
    """

    def __init__(self, x_dim: int, z_dim: int, dtype: torch.dtype = torch.float32):
        super().__init__()
        self.x_dim = check_positive_int("x_dim", x_dim)
        z_dim = check_positive_int("z_dim", z_dim)
        self.theta_loc = nn.Parameter(torch.zeros(x_dim, dtype=dtype))
        self.log_theta_scale = nn.Parameter(torch.full((x_dim,), math.log(0.5), dtype=dtype))
        self.enc_weight = nn.Parameter(torch.zeros(z_dim, x_dim, dtype=dtype))
        self.enc_bias = nn.Parameter(torch.zeros(z_dim, dtype=dtype))
        self.log_scale = nn.Parameter(torch.zeros(z_dim, dtype=dtype))

    def forward(self, x: Tensor) -> None:
        check_module_data("x", x, (self.x_dim,), self)
        q_theta = dist.Normal(self.theta_loc, self.log_theta_scale.exp()).to_event(1)
        theta = pyro.sample("theta", q_theta)
        loc = (x - theta) @ self.enc_weight.T + self.enc_bias
        with pyro.plate("data", x.shape[0], dim=-1):
            pyro.sample("z", dist.Normal(loc, self.log_scale.exp()).to_event(1))
