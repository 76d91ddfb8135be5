"""The leaf protocol of the SPN-aware estimators, and the leaf log importance weights.

Tan & Peharz, "Hierarchical Decompositional Mixtures of Variational Autoencoders", ICML 2019, §3
(see ``docs/spvae.md``). With VAE leaves the leaf values of a sum-product network,
:math:`v_l = p_l(x_{R_l}) = \\int p(x_{R_l} | z_l) p(z_l) dz_l`, are intractable. With a leaf-wise
guide :math:`q(z_l | x_{R_l})` and :math:`z_{lk} \\sim q` independent over leaves ``l`` and samples
``k``, the leaf log importance weights are

.. math::

    \\log w_{lk} = \\log p(x_{R_l}, z_{lk}) - \\log q(z_{lk} | x_{R_l}),

from which the bounds of :mod:`pyro_spvae.infer.spn_bounds` and the streamed evaluation of
:mod:`pyro_spvae.infer.spn_likelihood` are formed.

Protocol
--------
The estimators know no particular model.  Any SPN-of-VAEs model/guide pair works when

- ``model.leaf_log_joint(x, z) -> Tensor`` returns :math:`\\log p(x_{R_l}, z_l)` of shape
  ``(..., B, L)`` for latents ``z`` of shape ``(..., B, L, z_dim)`` (missing pixels of ``x``
  marginalised, i.e. they contribute nothing);
- ``model.spn_log_value(leaf_log_values) -> Tensor`` pushes leaf log-values of shape
  ``(..., B, L)`` through the network and returns the log root value ``(..., B)``;
- ``guide.leaf_posterior(x) -> Distribution`` returns :math:`q(z_l | x_{R_l})` with batch shape
  ``(B, L)``, event shape ``(z_dim,)`` and ``rsample``;
- optionally ``guide.leaf_rsample(x, K) -> (z, log_q)``, a fast path returning ``K``
  reparameterised draws ``(K, B, L, z_dim)`` and ``log q`` ``(K, B, L)`` equal in value and
  gradient to ``leaf_posterior(x).log_prob(z)`` (e.g. from the standard-normal noise of a
  location-scale family); it is used when present.

:class:`SPNLeafModel` and :class:`SPNLeafGuide` declare this protocol (``isinstance`` checks it).
Model and guide methods that read parameters should be :func:`pyro.nn.pyro_method` s of
:class:`~pyro.nn.PyroModule` s (or call :func:`pyro.module`) so that :class:`pyro.infer.SVI`
finds the parameters.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import torch

from pyro_spvae.validation import check_positive_int

__all__ = ["SPNLeafGuide", "SPNLeafModel", "spn_leaf_log_weights"]


@runtime_checkable
class SPNLeafModel(Protocol):
    """A sum-product network of VAE leaves, as the SPN-aware bounds see it (see the module docstring).

    ``isinstance(model, SPNLeafModel)`` is how callers (the evaluation API, the trainer) choose an
    SPN-aware estimator instead of a generic one.
    """

    def leaf_log_joint(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """:math:`\\log p(x_{R_l}, z_l)`, ``(..., B, L)`` for ``z`` of shape ``(..., B, L, z_dim)``."""
        ...

    def spn_log_value(self, leaf_log_values: torch.Tensor) -> torch.Tensor:
        """Log root value ``(..., B)`` for leaf log-values ``(..., B, L)``."""
        ...


@runtime_checkable
class SPNLeafGuide(Protocol):
    """A guide with a leaf-wise posterior :math:`q(z_l | x_{R_l})` (see the module docstring)."""

    def leaf_posterior(self, x: torch.Tensor) -> Any:
        """A distribution with batch shape ``(B, L)``, event shape ``(z_dim,)`` and ``rsample``."""
        ...


_MODEL_METHODS = ("leaf_log_joint", "spn_log_value")
_GUIDE_METHODS = ("leaf_posterior",)


def _check_protocol(model: Any, guide: Any) -> None:
    """:raises TypeError: naming the first missing method unless ``model`` is an
    :class:`SPNLeafModel` and ``guide`` an :class:`SPNLeafGuide`."""
    for obj, proto, methods, role in ((model, SPNLeafModel, _MODEL_METHODS, "model"),
                                      (guide, SPNLeafGuide, _GUIDE_METHODS, "guide")):
        if isinstance(obj, proto):
            continue
        missing = next((n for n in methods if not callable(getattr(obj, n, None))), methods[0])
        raise TypeError(
            f"SPN-aware bounds need {role}.{missing}(...); {type(obj).__name__} has none "
            f"(it is no {proto.__name__}; see pyro_spvae.infer.spn_bounds for the protocol)"
        )


def _draw_leaves(guide: Any, x: torch.Tensor, num_samples: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``K`` reparameterised leaf latents ``z (K, B, L, z_dim)`` and their ``log q (K, B, L)``."""
    fast = getattr(guide, "leaf_rsample", None)
    if callable(fast):
        z, log_q = fast(x, num_samples)
    else:
        q = guide.leaf_posterior(x)
        if not q.has_rsample:
            raise ValueError(f"guide.leaf_posterior must return a reparameterisable distribution, got {q}")
        z = q.rsample((num_samples,))  # (K, B, L, z_dim)
        log_q = q.log_prob(z)  # (K, B, L)
    if log_q.dim() != 3 or log_q.shape[:2] != (num_samples, x.shape[0]):
        raise ValueError(
            f"the guide's leaf log-densities must have shape (K, B, L) = ({num_samples}, {x.shape[0]}, L), "
            f"got {tuple(log_q.shape)}: leaf_posterior(x) needs batch shape (B, L)"
        )
    return z, log_q


def _leaf_log_joint(model: Any, x: torch.Tensor, z: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    log_p = model.leaf_log_joint(x, z)  # (K, B, L)
    if log_p.shape != shape:
        raise ValueError(
            f"model.leaf_log_joint returned shape {tuple(log_p.shape)}, expected {tuple(shape)} (K, B, L)"
        )
    return log_p


def spn_leaf_log_weights(model: Any, guide: Any, x: torch.Tensor, num_samples: int) -> torch.Tensor:
    """Leaf log importance weights :math:`\\log w_{lk} = \\log p(x_{R_l}, z_{lk}) - \\log q(z_{lk}|x_{R_l})`.

    :param model: an SPN-of-VAEs model following the protocol of this module.
    :param guide: a leaf-wise guide following the protocol.
    :param x: data ``(B, ...)``.
    :param num_samples: ``K`` reparameterised samples per leaf.
    :returns: log weights of shape ``(K, B, L)``, differentiable in model and guide parameters.
    """
    _check_protocol(model, guide)
    z, log_q = _draw_leaves(guide, x, check_positive_int("num_samples", num_samples))
    return _leaf_log_joint(model, x, z, log_q.shape) - log_q
