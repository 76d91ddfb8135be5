"""Linear-Gaussian ground-truth models: pPCA, a mixture of pPCA and pPCA with a global offset.

These models have closed-form marginal likelihoods and posteriors, so every estimator in
:mod:`pyro_spvae.infer` can be checked against the exact answer (derivations in
``docs/ground_truth.md``).

Probabilistic PCA (Tipping & Bishop 1999, "Probabilistic principal component analysis", eqs. 2-6)::

    z ~ N(0, I_d),    x | z ~ N(W z + b, s^2 I_D)
    p(x)     = N(x; b, C),                 C = W W^T + s^2 I_D
    p(z | x) = N(z; M^{-1} W^T (x - b) / s^2, M^{-1}),   M = I_d + W^T W / s^2

Mixture of pPCA (Tipping & Bishop 1999, "Mixtures of probabilistic principal component analysers")::

    c ~ Categorical(pi),  z ~ N(0, I_d),  x | c, z ~ N(W_c z + b_c, s_c^2 I_D)
    p(x) = sum_c pi_c N(x; b_c, C_c)

pPCA with a global offset ``theta`` shared by all data points (a model with a global latent)::

    theta ~ N(0, tau^2 I_D),  z_i ~ N(0, I_d),  x_i | z_i, theta ~ N(W z_i + b + theta, s^2 I_D)
    p(x_1..N) = N(vec x; 1 (x) b, I_N (x) C + 1 1^T (x) tau^2 I_D)

All models follow the model contract (``CONTRIBUTING.md``): ``forward(x)`` with ``x`` of shape ``(N, D)``,
one ``pyro.plate("data", N, dim=-1)``, latent sites ``"c"``, ``"z"`` (and ``"theta"`` outside
the plate), observation ``"x"``; every op accepts extra leading particle dimensions.
"""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import torch
from pyro.nn import PyroModule
from torch import Tensor, nn

from pyro_spvae.validation import check_module_data, check_positive_float, check_positive_int

__all__ = ["LinearGaussianVAE", "MixtureOfPPCA", "GlobalOffsetPPCA"]


def _init_ppca(module: nn.Module, x_dim: int, z_dim: int, noise_scale: float, weight_scale: float,
               dtype: torch.dtype) -> None:
    """Check the sizes and register the pPCA parameters ``W (D, d)``, ``b (D,)``, ``log_s ()`` of
    ``module`` (random ``W`` with entries of scale ``weight_scale``, ``s = noise_scale``)."""
    module.x_dim = check_positive_int("x_dim", x_dim)
    module.z_dim = check_positive_int("z_dim", z_dim)
    noise_scale = check_positive_float("noise_scale", noise_scale)
    weight_scale = check_positive_float("weight_scale", weight_scale)
    module.W = nn.Parameter(weight_scale * torch.randn(x_dim, z_dim, dtype=dtype))
    module.b = nn.Parameter(0.5 * torch.randn(x_dim, dtype=dtype))
    module.log_s = nn.Parameter(torch.tensor(math.log(noise_scale), dtype=dtype))


def _gaussian_posterior(W: Tensor, s: Tensor, resid: Tensor) -> tuple[Tensor, Tensor]:
    """pPCA posterior N(z; M^{-1} W^T resid / s^2, M^{-1}) for residuals ``resid = x - mean``.

    :param W: ``(..., D, d)``; :param s: ``(...)`` noise scale; :param resid: ``(..., D)``.
    :returns: ``loc (..., d)`` and ``cov (..., d, d)``.
    """
    d = W.shape[-1]
    s2 = (s**2)[..., None, None]
    M = torch.eye(d, dtype=W.dtype) + W.transpose(-1, -2) @ W / s2
    cov = torch.linalg.inv(M)
    cov = 0.5 * (cov + cov.transpose(-1, -2))
    loc = (cov @ (W.transpose(-1, -2) @ resid.unsqueeze(-1)) / s2).squeeze(-1)
    return loc, cov


class LinearGaussianVAE(PyroModule):
    """Linear-Gaussian VAE / probabilistic PCA with exact ``log p(x)`` and posterior.

    :param int x_dim: data dimension ``D``.
    :param int z_dim: latent dimension ``d``.
    :param float noise_scale: initial observation noise ``s``.
    :param float weight_scale: standard deviation of the random initial loadings ``W``.
    :param dtype: parameter dtype (``torch.float64`` for finite-difference tests).
    """

    def __init__(
        self,
        x_dim: int,
        z_dim: int,
        noise_scale: float = 0.5,
        weight_scale: float = 1.0,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        super().__init__()
        _init_ppca(self, x_dim, z_dim, noise_scale, weight_scale, dtype)

    @property
    def noise_scale(self) -> Tensor:
        """Observation noise ``s`` (scalar tensor)."""
        return self.log_s.exp()

    def forward(self, x: Tensor) -> None:
        """Pyro model: ``z ~ N(0, I)``, ``x ~ N(W z + b, s^2 I)``; ``x`` has shape ``(N, D)``."""
        check_module_data("x", x, (self.x_dim,), self)
        W, b, s = self.W, self.b, self.log_s.exp()
        with pyro.plate("data", x.shape[0], dim=-1):
            zero = torch.zeros(self.z_dim, dtype=W.dtype)
            z = pyro.sample("z", dist.Normal(zero, 1.0).to_event(1))
            loc = (z.unsqueeze(-2) @ W.transpose(-1, -2)).squeeze(-2) + b
            pyro.sample("x", dist.Normal(loc, s).to_event(1), obs=x)

    def marginal(self) -> dist.MultivariateNormal:
        """The exact marginal ``N(b, W W^T + s^2 I)`` of one data point."""
        W, s = self.W, self.log_s.exp()
        C = W @ W.T + s**2 * torch.eye(self.x_dim, dtype=W.dtype)
        return dist.MultivariateNormal(self.b, covariance_matrix=C)

    @torch.no_grad()
    def sample(self, num_samples: int) -> Tensor:
        """Draw ``num_samples`` data vectors ``x ~ p(x) = N(b, W W^T + s^2 I)``: ``(num_samples, D)``."""
        return self.marginal().sample((check_positive_int("num_samples", num_samples),))

    def exact_log_prob(self, x: Tensor) -> Tensor:
        """Exact ``log p(x_i) = log N(x_i; b, W W^T + s^2 I)``, shape ``(N,)``."""
        check_module_data("x", x, (self.x_dim,), self)
        return self.marginal().log_prob(x)

    def exact_posterior(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Exact posterior ``p(z | x_i) = N(loc_i, cov)``: ``loc (N, d)``, ``cov (d, d)``."""
        check_module_data("x", x, (self.x_dim,), self)
        loc, cov = _gaussian_posterior(self.W, self.log_s.exp(), x - self.b)
        return loc, cov


class MixtureOfPPCA(PyroModule):
    """Mixture of pPCA models with a discrete component site ``"c"`` (enumerable).

    The model is compatible with :class:`pyro.infer.TraceEnum_ELBO` (``c`` may be enumerated by
    ``pyro.infer.config_enumerate``) as well as with guides that sample ``c``.

    :param int num_components: number of components ``C``.
    :param int x_dim: data dimension ``D``.
    :param int z_dim: latent dimension ``d``.
    :param float noise_scale: initial noise scale of every component.
    :param float offset_scale: standard deviation of the random component offsets ``b_c``.
    """

    def __init__(
        self,
        num_components: int,
        x_dim: int,
        z_dim: int,
        noise_scale: float = 0.5,
        offset_scale: float = 2.0,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        super().__init__()
        self.num_components = check_positive_int("num_components", num_components)
        self.x_dim = check_positive_int("x_dim", x_dim)
        self.z_dim = check_positive_int("z_dim", z_dim)
        noise_scale = check_positive_float("noise_scale", noise_scale)
        offset_scale = check_positive_float("offset_scale", offset_scale)
        C = num_components
        self.logits = nn.Parameter(0.3 * torch.randn(C, dtype=dtype))
        self.W = nn.Parameter(torch.randn(C, x_dim, z_dim, dtype=dtype))
        self.b = nn.Parameter(offset_scale * torch.randn(C, x_dim, dtype=dtype))
        self.log_s = nn.Parameter(torch.full((C,), math.log(noise_scale), dtype=dtype))

    def forward(self, x: Tensor) -> None:
        """Pyro model over ``x`` of shape ``(N, D)``; sites ``"c"``, ``"z"``, ``"x"``."""
        check_module_data("x", x, (self.x_dim,), self)
        W, b, s = self.W, self.b, self.log_s.exp()
        with pyro.plate("data", x.shape[0], dim=-1):
            c = pyro.sample("c", dist.Categorical(logits=self.logits))
            zero = torch.zeros(self.z_dim, dtype=W.dtype)
            z = pyro.sample("z", dist.Normal(zero, 1.0).to_event(1))
            loc = (W[c] @ z.unsqueeze(-1)).squeeze(-1) + b[c]
            pyro.sample("x", dist.Normal(loc, s[c].unsqueeze(-1)).to_event(1), obs=x)

    def _component_marginals(self) -> dist.MultivariateNormal:
        W, s = self.W, self.log_s.exp()
        eye = torch.eye(self.x_dim, dtype=W.dtype)
        C = W @ W.transpose(-1, -2) + (s**2)[:, None, None] * eye
        return dist.MultivariateNormal(self.b, covariance_matrix=C)

    def exact_log_prob(self, x: Tensor) -> Tensor:
        """Exact ``log p(x_i) = logsumexp_c [log pi_c + log N(x_i; b_c, C_c)]``, shape ``(N,)``."""
        check_module_data("x", x, (self.x_dim,), self)
        log_pi = torch.log_softmax(self.logits, -1)
        return torch.logsumexp(log_pi + self._component_marginals().log_prob(x.unsqueeze(-2)), -1)

    def exact_posterior(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Exact posterior ``p(c, z | x_i) = p(c | x_i) N(z; loc_ic, cov_c)``.

        :returns: ``probs (N, C)``, ``loc (N, C, d)``, ``cov (C, d, d)``.
        """
        check_module_data("x", x, (self.x_dim,), self)
        log_pi = torch.log_softmax(self.logits, -1)
        logits = log_pi + self._component_marginals().log_prob(x.unsqueeze(-2))
        probs = torch.softmax(logits, -1)
        loc, cov = _gaussian_posterior(self.W, self.log_s.exp(), x.unsqueeze(-2) - self.b)
        return probs, loc, cov


class GlobalOffsetPPCA(PyroModule):
    """pPCA with a global offset ``theta ~ N(0, tau^2 I_D)`` outside the data plate.

    ``max_plate_nesting = 1``. Exact quantities: the joint ``log p(x_1..N)``
    (:meth:`exact_log_prob`), ``log p(x_i | theta)`` (:meth:`exact_local_log_prob`), the posterior
    of ``theta`` (:meth:`exact_theta_posterior`) and of ``z_i`` given ``theta``
    (:meth:`exact_local_posterior`).

    :param float prior_scale: ``tau``.
    """

    def __init__(
        self,
        x_dim: int,
        z_dim: int,
        prior_scale: float = 1.0,
        noise_scale: float = 0.5,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        super().__init__()
        self.prior_scale = check_positive_float("prior_scale", prior_scale)
        _init_ppca(self, x_dim, z_dim, noise_scale, 1.0, dtype)

    def forward(self, x: Tensor) -> None:
        """Pyro model over ``x`` of shape ``(N, D)``; sites ``"theta"`` (global), ``"z"``, ``"x"``."""
        check_module_data("x", x, (self.x_dim,), self)
        W, b, s = self.W, self.b, self.log_s.exp()
        zero_x = torch.zeros(self.x_dim, dtype=W.dtype)
        theta = pyro.sample("theta", dist.Normal(zero_x, self.prior_scale).to_event(1))
        with pyro.plate("data", x.shape[0], dim=-1):
            zero = torch.zeros(self.z_dim, dtype=W.dtype)
            z = pyro.sample("z", dist.Normal(zero, 1.0).to_event(1))
            loc = (z.unsqueeze(-2) @ W.transpose(-1, -2)).squeeze(-2) + b + theta
            pyro.sample("x", dist.Normal(loc, s).to_event(1), obs=x)

    def _local_cov(self) -> Tensor:
        W, s = self.W, self.log_s.exp()
        return W @ W.T + s**2 * torch.eye(self.x_dim, dtype=W.dtype)

    def exact_log_prob(self, x: Tensor) -> Tensor:
        """Exact joint ``log p(x_1, ..., x_N)`` (scalar) of the whole batch."""
        check_module_data("x", x, (self.x_dim,), self)
        N, D = x.shape
        C = self._local_cov()
        eye_n = torch.eye(N, dtype=C.dtype)
        ones = torch.ones(N, N, dtype=C.dtype)
        eye_d = torch.eye(D, dtype=C.dtype)
        cov = torch.kron(eye_n, C) + self.prior_scale**2 * torch.kron(ones, eye_d)
        return dist.MultivariateNormal(self.b.repeat(N), covariance_matrix=cov).log_prob(x.reshape(-1))

    def exact_local_log_prob(self, x: Tensor, theta: Tensor) -> Tensor:
        """``log p(x_i | theta) = log N(x_i; b + theta, C)``.

        :param theta: ``(D,)`` or ``(..., 1, D)`` (broadcastable against ``x (N, D)``).
        :returns: ``(..., N)``.
        """
        check_module_data("x", x, (self.x_dim,), self)
        mvn = dist.MultivariateNormal(self.b, covariance_matrix=self._local_cov())
        return mvn.log_prob(x - theta)

    def exact_theta_posterior(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Exact ``p(theta | x_1..N) = N(loc, cov)``: ``loc (D,)``, ``cov (D, D)``."""
        check_module_data("x", x, (self.x_dim,), self)
        N, D = x.shape
        C_inv = torch.linalg.inv(self._local_cov())
        prec = torch.eye(D, dtype=C_inv.dtype) / self.prior_scale**2 + N * C_inv
        cov = torch.linalg.inv(prec)
        cov = 0.5 * (cov + cov.T)
        loc = cov @ C_inv @ (x - self.b).sum(0)
        return loc, cov

    def exact_local_posterior(self, x: Tensor, theta: Tensor) -> tuple[Tensor, Tensor]:
        """Exact ``p(z_i | x_i, theta)``: ``loc (..., N, d)`` for ``theta`` of shape ``(D,)`` or
        ``(..., 1, D)``, and ``cov (d, d)``."""
        check_module_data("x", x, (self.x_dim,), self)
        return _gaussian_posterior(self.W, self.log_s.exp(), x - self.b - theta)

