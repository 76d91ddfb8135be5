r"""The networks of a learnt hierarchical prior (the VHP of Klushyn et al. 2019) as a ``PyroModule``.

Klushyn, Chen, Kurle, Cseke & van der Smagt (2019), "Learning Hierarchical Priors in VAEs",
NeurIPS: the prior over the latent code ``z`` (dimension ``D``) is
:math:`p(z) = \int p_\theta(z \mid \zeta)\, \mathcal{N}(\zeta; 0, I)\, d\zeta` with
``zeta`` of dimension ``d``, and its log-density is bounded with ``K`` importance samples from an
amortised :math:`q_\phi(\zeta \mid z)` (see
:class:`~pyro_spvae.distributions.hierarchical_prior.HierarchicalPrior`). This module holds both
networks, diagonal Gaussians from MLPs:

.. math::

    p_\theta(z \mid \zeta) = \mathcal{N}\big(z;\ \mu_\theta(\zeta),
    \mathrm{diag}\,\sigma_\theta(\zeta)^2\big),
    \qquad
    q_\phi(\zeta \mid z) = \mathcal{N}\big(\zeta;\ m_\phi(z), \mathrm{diag}\,s_\phi(z)^2\big),

with scales ``softplus(raw) + min_scale``. :math:`q_\phi(\zeta \mid z)` is part of the prior's
density bound (``zeta`` is not a sample site of the Pyro program), so it belongs to the model that
holds this module, not to a guide. Calling the module returns the stateless distribution, used as
an ordinary prior site::

    prior_net = HierarchicalPriorNet(z_dim=32, zeta_dim=32, num_samples=5)
    with pyro.plate("data", x.shape[0]):
        z = pyro.sample("z", prior_net(like=x))
"""

from __future__ import annotations

from collections.abc import Sequence

import pyro.distributions as dist
import torch
import torch.nn.functional as F
from pyro.nn import PyroModule, pyro_method
from torch import nn

from pyro_spvae.distributions.hierarchical_prior import HierarchicalPrior
from pyro_spvae.validation import check_positive_int, check_real, check_tensor

from .mlp import MLP

__all__ = ["HierarchicalPriorNet"]


class HierarchicalPriorNet(PyroModule):
    r"""Learnable :math:`p_\theta(z \mid \zeta)` and :math:`q_\phi(\zeta \mid z)` (see the module
    docstring) with :math:`p(\zeta) = \mathcal{N}(0, I_d)`.

    :param z_dim: ``D``, the dimension of ``z``.
    :param zeta_dim: ``d``, the dimension of ``zeta``.
    :param hidden: hidden widths of both MLPs.
    :param activation: activation name or module.
    :param num_samples: ``K``, importance samples of ``zeta`` per prior density evaluation.
    :param min_scale: lower bound (``>= 0``) added to both Gaussians' scales.
    :param init: weight initialisation, ``"torch"`` or ``"tf1"``.

    Parameters: ``conditional_net`` (MLP ``d -> 2 D``) and ``posterior_net`` (MLP ``D -> 2 d``).
    """

    def __init__(self, z_dim: int, zeta_dim: int, hidden: Sequence[int] = (256, 256),
                 activation: str | nn.Module = "softplus", num_samples: int = 5, min_scale: float = 1e-4,
                 init: str = "torch") -> None:
        super().__init__()
        self.z_dim = check_positive_int("z_dim", z_dim)
        self.zeta_dim = check_positive_int("zeta_dim", zeta_dim)
        self.num_samples = check_positive_int("num_samples", num_samples)
        self.min_scale = check_real("min_scale", min_scale, 0.0)
        self.conditional_net = MLP(self.zeta_dim, hidden, 2 * self.z_dim, activation=activation, init=init)
        self.posterior_net = MLP(self.z_dim, hidden, 2 * self.zeta_dim, activation=activation, init=init)

    def _gaussian(self, out: torch.Tensor, dim: int) -> dist.Distribution:
        loc, raw = out[..., :dim], out[..., dim:]
        return dist.Normal(loc, F.softplus(raw) + self.min_scale).to_event(1)

    @pyro_method
    def conditional(self, zeta: torch.Tensor) -> dist.Distribution:
        r""":math:`p_\theta(z \mid \zeta)` for ``zeta (..., d)``: batch shape ``...``, event ``(D,)``."""
        return self._gaussian(self.conditional_net(zeta), self.z_dim)

    @pyro_method
    def posterior(self, z: torch.Tensor) -> dist.Distribution:
        r""":math:`q_\phi(\zeta \mid z)` for ``z (..., D)``: batch shape ``...``, event ``(d,)``."""
        return self._gaussian(self.posterior_net(z), self.zeta_dim)

    def zeta_prior(self, like: torch.Tensor | None = None) -> dist.Distribution:
        """:math:`p(\\zeta) = \\mathcal{N}(0, I_d)` (batch shape ``()``) with ``like``'s dtype and
        device (default: the parameters')."""
        ref = next(self.parameters()) if like is None else check_tensor("like", like)
        zero = torch.zeros((), dtype=ref.dtype, device=ref.device)
        return dist.Normal(zero, zero + 1).expand([self.zeta_dim]).to_event(1)

    def forward(self, like: torch.Tensor | None = None, num_samples: int | None = None) -> HierarchicalPrior:
        """The prior :math:`p(z)` as a :class:`~pyro_spvae.distributions.hierarchical_prior.HierarchicalPrior`
        with batch shape ``()`` (``pyro.plate`` expands it).

        :param like: a tensor whose dtype and device the prior takes (e.g. the data batch).
        :param num_samples: ``K`` for this prior (default: :attr:`num_samples`).
        """
        K = self.num_samples if num_samples is None else check_positive_int("num_samples", num_samples)
        return HierarchicalPrior(self.conditional, self.posterior, self.zeta_prior(like), self.z_dim, K)
