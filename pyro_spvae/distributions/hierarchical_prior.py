r"""A hierarchical prior over ``z`` whose log-density is an importance-weighted lower bound.

Klushyn, Chen, Kurle, Cseke & van der Smagt (2019), "Learning Hierarchical Priors in VAEs",
NeurIPS (the VHP-VAE). The prior of the latent code ``z`` is itself a latent-variable model,

.. math::

    p(z) = \int p(z \mid \zeta)\, p(\zeta)\, d\zeta, \qquad p(\zeta) = \mathcal{N}(0, I),

whose density is intractable. With an amortised proposal :math:`q(\zeta \mid z)` and ``K``
reparameterised draws :math:`\zeta_k \sim q(\zeta \mid z)`, :meth:`HierarchicalPrior.log_prob`
returns the importance-weighted estimate (Burda et al. 2016, eq. 8, applied to ``z`` in place of
``x``)

.. math::

    \hat{\ell}_K(z) = \log \frac{1}{K} \sum_{k=1}^{K}
        \frac{p(z \mid \zeta_k)\, p(\zeta_k)}{q(\zeta_k \mid z)}.

Facts the rest of the package relies on:

- :math:`\exp \hat{\ell}_K(z)` is an **unbiased** estimate of :math:`p(z)` (each weight is), so by
  Jensen :math:`\mathbb{E}[\hat{\ell}_K(z)] \le \log p(z)`: ``log_prob`` is a *stochastic lower
  bound*, non-decreasing in ``K`` in expectation and equal to :math:`\log p(z)` for every ``K``
  when :math:`q(\zeta \mid z) = p(\zeta \mid z)`.
- An ELBO (or an importance-weighted bound) built with this prior's ``log_prob`` in place of
  :math:`\log p(z)` remains a lower bound on :math:`\log p(x)`: the joint weight
  :math:`p(x \mid z)\, \exp\hat{\ell}_K(z) / q(z \mid x)` is an unbiased estimate of
  :math:`p(x)` for the proposal :math:`q(z \mid x) \prod_k q(\zeta_k \mid z)`, so Jensen applies
  as for any importance sampler; every Pyro ELBO, :class:`~pyro_spvae.infer.TraceIWAE_ELBO` and the
  evaluation API (:func:`~pyro_spvae.infer.log_marginal_likelihood`) stay valid bounds.
- ``log_prob`` is random: two calls on the same ``z`` differ. Pyro computes each site's
  ``log_prob`` once per trace, so one ELBO evaluation uses one draw of the ``zeta_k``.

Gradients flow through ``z`` (reparameterised guides), through the networks of
:math:`p(z \mid \zeta)` and, by the reparameterised ``zeta_k``, through :math:`q(\zeta \mid z)`:
maximising an ELBO built on this prior also tightens the prior's own bound (the IWAE gradient of
:math:`\hat{\ell}_K`). :math:`q(\zeta \mid z)` belongs to the prior's density, not to the Pyro
program: ``zeta`` is never a sample site, so it lives with the model (for example in
:class:`pyro_spvae.nn.hierarchical_prior_net.HierarchicalPriorNet`), not in a guide.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
from pyro.distributions import TorchDistribution
from torch import Tensor
from torch.distributions import Distribution, constraints

from pyro_spvae.validation import check_positive_int

__all__ = ["HierarchicalPrior"]

#: ``zeta (..., d) -> p(z | zeta)`` or ``z (..., D) -> q(zeta | z)``: a distribution with batch shape
#: ``...`` and event shape ``(D,)`` resp. ``(d,)``.
ConditionalFn = Callable[[Tensor], Distribution]


def _check_callable(name: str, fn: object) -> ConditionalFn:
    if not callable(fn):
        raise TypeError(f"{name} must be a callable returning a Distribution, got {type(fn).__name__}")
    return fn  # type: ignore[return-value]


def _check_event(name: str, d: object, size: int) -> Distribution:
    if not isinstance(d, Distribution):
        raise TypeError(f"{name} must return a torch Distribution, got {type(d).__name__}")
    if tuple(d.event_shape) != (size,):
        raise ValueError(f"{name} must return a distribution with event shape ({size},), got "
                         f"{tuple(d.event_shape)} (use .to_event(1) on a factorised distribution)")
    return d


class HierarchicalPrior(TorchDistribution):
    r"""Prior :math:`p(z) = \int p(z \mid \zeta) p(\zeta) d\zeta` over ``z`` of event shape ``(D,)``,
    with ``log_prob`` the ``K``-sample importance-weighted bound of the module docstring.

    :param conditional: ``zeta (..., d) -> p(z | zeta)``, a distribution with batch shape ``...``
        and event shape ``(D,)`` (e.g. a diagonal Gaussian from a network; ``rsample`` of this
        prior needs its ``rsample``).
    :param posterior: ``z (..., D) -> q(zeta | z)``, a reparameterisable distribution with batch
        shape ``...`` and event shape ``(d,)``.
    :param zeta_prior: :math:`p(\zeta)` with event shape ``(d,)``, usually
        ``Normal(zeros(d), 1).to_event(1)``; its batch shape is this prior's batch shape, and
        its dtype and device are those of the samples.
    :param z_dim: ``D``.
    :param num_samples: ``K``, the number of importance samples of ``zeta`` per ``log_prob``.
    :param validate_args: torch's argument validation (checks ``log_prob``'s values are real
        vectors).

    Shapes: ``sample(sample_shape)`` / ``rsample`` draw ``zeta ~ p(zeta)`` then ``z ~ p(z | zeta)``
    and return ``sample_shape + batch_shape + (D,)``; ``log_prob(z)`` maps ``z`` of shape
    ``(..., D)`` to ``broadcast(..., batch_shape)`` (the ``K`` draws of ``zeta`` form a leading dim
    that is reduced). ``expand`` expands :math:`p(\zeta)` and keeps the callables, so the
    distribution holds no state besides them (no cached draw): it works as an ordinary prior site,
    ``pyro.sample("z", prior)`` inside ``pyro.plate``, with leading particle dims.
    """

    arg_constraints: dict[str, constraints.Constraint] = {}
    support = constraints.real_vector
    has_rsample = True

    def __init__(self, conditional: ConditionalFn, posterior: ConditionalFn, zeta_prior: Distribution,
                 z_dim: int, num_samples: int = 1, validate_args: bool | None = None) -> None:
        self.conditional = _check_callable("conditional", conditional)
        self.posterior = _check_callable("posterior", posterior)
        if not isinstance(zeta_prior, Distribution) or len(zeta_prior.event_shape) != 1:
            raise TypeError("zeta_prior must be a torch Distribution with event shape (d,), got "
                            f"{zeta_prior!r}")
        self.zeta_prior = zeta_prior
        self.num_samples = check_positive_int("num_samples", num_samples)
        z_dim = check_positive_int("z_dim", z_dim)
        super().__init__(zeta_prior.batch_shape, torch.Size((z_dim,)), validate_args=validate_args)

    @property
    def zeta_dim(self) -> int:
        """``d``, the dimension of ``zeta``."""
        return self.zeta_prior.event_shape[0]

    def expand(self, batch_shape: Sequence[int],
               _instance: HierarchicalPrior | None = None) -> HierarchicalPrior:
        new = self._get_checked_instance(HierarchicalPrior, _instance)
        batch_shape = torch.Size(batch_shape)
        new.conditional, new.posterior, new.num_samples = self.conditional, self.posterior, self.num_samples
        new.zeta_prior = self.zeta_prior.expand(batch_shape)
        super(HierarchicalPrior, new).__init__(batch_shape, self.event_shape, validate_args=False)
        new._validate_args = self._validate_args
        return new

    def with_num_samples(self, num_samples: int) -> HierarchicalPrior:
        """The same prior with ``K = num_samples`` importance samples (e.g. many more for
        evaluation than for training)."""
        new = self.expand(self.batch_shape)
        new.num_samples = check_positive_int("num_samples", num_samples)
        return new

    def log_weights(self, value: Tensor) -> Tensor:
        r"""The ``K`` log importance weights
        :math:`\log p(z \mid \zeta_k) + \log p(\zeta_k) - \log q(\zeta_k \mid z)`,
        :math:`\zeta_k \sim q(\zeta \mid z)` (reparameterised), of shape
        ``(K, *broadcast(value.shape[:-1], batch_shape))`` (independent draws per batch element).

        :param value: ``z`` of shape ``(..., D)``.
        """
        if self._validate_args:
            self._validate_sample(value)
        if value.shape[:-1] != self.batch_shape:  # the K draws form dim 0: align value with the batch
            # numpy's broadcast_shapes: torch's imports torch._refs lazily (seconds) on its first call
            shape = torch.Size(np.broadcast_shapes(value.shape[:-1], self.batch_shape))
            value = value.expand(shape + value.shape[-1:])
        q = _check_event("posterior", self.posterior(value), self.zeta_dim)
        zeta = q.rsample((self.num_samples,))  # (K, ..., d)
        p = _check_event("conditional", self.conditional(zeta), self.event_shape[0])
        return p.log_prob(value) + self.zeta_prior.log_prob(zeta) - q.log_prob(zeta)

    def log_prob(self, value: Tensor) -> Tensor:
        r""":math:`\hat{\ell}_K(z) = \log \frac1K \sum_k w_k`, a stochastic lower bound on
        :math:`\log p(z)` (see the module docstring).

        :param value: ``z`` of shape ``(..., D)``.
        :returns: shape ``broadcast(value.shape[:-1], batch_shape)``.
        """
        return torch.logsumexp(self.log_weights(value), 0) - math.log(self.num_samples)

    def rsample(self, sample_shape: Sequence[int] = torch.Size()) -> Tensor:
        """Ancestral draw ``zeta ~ p(zeta)``, ``z ~ p(z | zeta)``, reparameterised when both are:
        ``sample_shape + batch_shape + (D,)``.

        :raises NotImplementedError: if ``p(z | zeta)`` has no ``rsample``.
        """
        zeta = self.zeta_prior.rsample(torch.Size(sample_shape))
        p = _check_event("conditional", self.conditional(zeta), self.event_shape[0])
        if not p.has_rsample:
            raise NotImplementedError(f"p(z | zeta) = {type(p).__name__} has no rsample; use sample()")
        return p.rsample()

    def sample(self, sample_shape: Sequence[int] = torch.Size()) -> Tensor:
        """Ancestral draw without gradients: ``sample_shape + batch_shape + (D,)``."""
        with torch.no_grad():
            zeta = self.zeta_prior.sample(torch.Size(sample_shape))
            return _check_event("conditional", self.conditional(zeta), self.event_shape[0]).sample()
