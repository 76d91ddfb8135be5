"""Guide of the VHP-VAE (:class:`~pyro_spvae.models.VHPVAE`, Klushyn et al. 2019, "Learning
Hierarchical Priors in VAEs", NeurIPS): the amortised diagonal Gaussian ``q(z | x)``.

The VHP-VAE has two variational distributions. ``q(z | x)``, the posterior of the sample site
``"z"``, is this guide. ``q(zeta | z)`` is the proposal of the importance-weighted bound on the
prior's density ``log p(z)``; ``zeta`` is integrated out inside that density and is never a sample
site of the Pyro program, so ``q(zeta | z)`` is a network of the model
(:class:`~pyro_spvae.nn.hierarchical_prior_net.HierarchicalPriorNet`, attribute ``prior_net``)
and this guide knows nothing of it. Any guide for a single latent site ``"z"`` of shape
``(B, z_dim)`` inside ``pyro.plate("data", B, dim=-1)`` can replace it.
"""

from __future__ import annotations

from .gaussian import GaussianGuide

__all__ = ["VHPVAEGuide"]


class VHPVAEGuide(GaussianGuide):
    r"""``q(z | x) = N(loc(x), diag scale(x)^2)`` for the VHP-VAE's site ``"z"``: a
    :class:`~pyro_spvae.guides.GaussianGuide` (same parameters: ``event_shape``, ``z_dim``,
    ``hidden``, ``arch`` ``"dense"``/``"conv"``, ``activation``, ``channels``, ``min_scale``,
    ``posterior_scale``, ``encoder_heads``, ``stride``, ``init``), named for the family so that
    builders, checkpoints and the tutorial say which model it pairs with.

    ``encode(x)`` gives the posterior means used for the latent-space embeddings of the VHP-VAE
    paper (2-D latent spaces coloured by class).
    """
