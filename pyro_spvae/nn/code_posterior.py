r"""An amortised posterior ``Q(c | x)`` over named latent codes: the auxiliary network of the
variational mutual-information bound

.. math:: I(c; x) \ge H(c) + \mathbb{E}_{p(c)\,p(x \mid c)} \log Q(c \mid x)

(Barber & Agakov 2003, "The IM algorithm"; Chen et al. 2016, "InfoGAN", §5; Serdega & Kim 2020,
"Variational Mutual Information Maximization Framework for VAE Latent Codes with Continuous and
Discrete Priors", arXiv:2006.02227). The bound itself, and what the codes are, live in
:mod:`pyro_spvae.infer.mutual_information`; this module only maps data to distributions.

One encoder (:func:`~pyro_spvae.nn.build_encoder`, ``"dense"`` or ``"conv"``) reads ``x`` and its
last layer holds one head per code:

- ``("categorical", n)``: ``Q(c | x) = Categorical(softmax(logits(x)))``, ``n`` logits, batch shape
  ``(...)``, values the integer categories;
- ``("gaussian", d)``: ``Q(c | x) = N(loc(x), diag scale(x)^2)`` over ``d`` dimensions,
  ``scale = softplus(raw) + min_scale``, event shape ``(d,)``.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence

import pyro.distributions as dist
import torch
import torch.nn.functional as F
from pyro.nn import PyroModule
from torch import nn
from torch.distributions import Distribution

from pyro_spvae.validation import (
    check_choice,
    check_event_shape,
    check_hidden,
    check_module_data,
    check_positive_int,
    check_real,
)

from .builders import build_encoder

__all__ = ["HEAD_KINDS", "CodePosteriorNet"]

#: The kinds of code a head can describe.
HEAD_KINDS: tuple[str, ...] = ("categorical", "gaussian")

#: default Pyro names ``"mi_q"``, ``"mi_q_1"``, ...: the parameters of a ``PyroModule`` live in Pyro's
#: global parameter store under its name, so two networks (or a network and a guide whose encoder
#: is also called ``encoder``) must never share one
_NAMES = itertools.count()


class CodePosteriorNet(PyroModule):
    r"""``Q(c | x)`` for several codes at once (see the module docstring).

    :param event_shape: shape of one observation, e.g. ``(1, 28, 28)``.
    :param heads: code label -> ``(kind, size)``: ``("categorical", n)`` or ``("gaussian", d)``
        (see :data:`HEAD_KINDS`), e.g. ``{"c": ("categorical", 10), "z[0]": ("gaussian", 1)}``.
    :param hidden: hidden widths of the encoder MLP (``()``: a linear map, which is the exact
        posterior mean of a linear-Gaussian model).
    :param arch: ``"dense"`` or ``"conv"``.
    :param activation: activation name or module.
    :param channels: convolution widths (``arch="conv"``).
    :param min_scale: lower bound of the Gaussian heads' scales, ``>= 0``.
    :param name: the module's name in Pyro's parameter store (default: a fresh ``"mi_q"``,
        ``"mi_q_1"``, ...), so that SVI finds and trains its parameters.

    ``forward(x)`` with ``x`` of shape ``(..., *event_shape)`` returns ``{label: distribution}``
    with batch shape ``(...)``.
    """

    def __init__(self, event_shape: Sequence[int], heads: Mapping[str, tuple[str, int]],
                 hidden: Sequence[int] = (256,), arch: str = "dense", activation: str | nn.Module = "relu",
                 channels: Sequence[int] = (32, 64), min_scale: float = 1e-3,
                 name: str | None = None) -> None:
        if name is None:
            count = next(_NAMES)
            name = "mi_q" if count == 0 else f"mi_q_{count}"
        if not isinstance(name, str) or not name:
            raise TypeError(f"name must be a non-empty str, got {name!r}")
        super().__init__(name)
        self.event_shape = check_event_shape("event_shape", event_shape)
        if not isinstance(heads, Mapping) or not heads:
            raise TypeError(f"heads must be a non-empty mapping label -> (kind, size), got {heads!r}")
        self.heads: dict[str, tuple[str, int]] = {}
        for label, head in heads.items():
            if not isinstance(head, tuple) or len(head) != 2:
                raise TypeError(f"heads[{label!r}] must be a pair (kind, size), got {head!r}")
            kind = check_choice(f"heads[{label!r}] kind", head[0], HEAD_KINDS)
            self.heads[label] = (kind, check_positive_int(f"heads[{label!r}] size", head[1]))
        self.min_scale = check_real("min_scale", min_scale, 0.0)
        sizes = [n if kind == "categorical" else 2 * n for kind, n in self.heads.values()]
        self.encoder = build_encoder(arch, self.event_shape, sum(sizes), check_hidden("hidden", hidden),
                                     activation, channels)
        self._sizes = sizes

    def forward(self, x: torch.Tensor) -> dict[str, Distribution]:
        """``{label: Q(c | x)}`` for ``x`` of shape ``(..., *event_shape)``."""
        check_module_data("x", x, self.event_shape, self, batch_dims=None)
        blocks = torch.split(self.encoder(x), self._sizes, dim=-1)
        out: dict[str, Distribution] = {}
        for (label, (kind, n)), block in zip(self.heads.items(), blocks):
            if kind == "categorical":
                out[label] = dist.Categorical(logits=block)
            else:
                loc, raw = block[..., :n], block[..., n:]
                out[label] = dist.Normal(loc, F.softplus(raw) + self.min_scale).to_event(1)
        return out
