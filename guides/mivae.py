r"""Amortised guide of :class:`~pyro_spvae.models.MIVAE`: a mean-field posterior over the
continuous and the categorical code (Dupont 2018, "JointVAE")::

    q(z, c | x) = N(z; loc(x), diag scale(x)^2) q(c | x)

from one encoder (:func:`~pyro_spvae.nn.build_encoder`) with ``2 z_dim + n`` outputs.

- ``code="categorical"``: ``"c" ~ Categorical(softmax(logits(x)))``, marked
  ``infer={"enumerate": "parallel"}`` by default, so that ``TraceEnum_ELBO`` sums the ``n`` values
  exactly (``c`` has shape ``(n, 1)`` left of the data plate); ``enumerate=None`` samples it (for
  ``Trace_ELBO`` with score-function gradients, importance-weighted estimators and
  :func:`pyro_spvae.evaluation.evaluate`).
- ``code="relaxed"``: ``"c" ~`` :class:`~pyro_spvae.models.mivae.RelaxedOneHotCode` at the
  guide's temperature (a buffer, set by :meth:`MIVAEGuide.set_temperature` together with the
  model's), reparameterised; hard one-hot draws with straight-through gradients with
  ``straight_through=True`` and always in eval mode (see :mod:`pyro_spvae.models.mivae`).

The guide's ``q(c | x)`` also serves as the auxiliary ``Q(c | x)`` of the mutual-information bound
(:class:`~pyro_spvae.infer.MIRegularizedELBO` with ``q="guide"``; Serdega & Kim 2020,
arXiv:2006.02227).
"""

from __future__ import annotations

from collections.abc import Sequence

import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F
from pyro.nn import PyroModule
from torch import nn

from pyro_spvae.models.mivae import CODES, RelaxedOneHotCode
from pyro_spvae.nn.builders import build_encoder
from pyro_spvae.validation import (
    check_bool,
    check_choice,
    check_event_shape,
    check_hidden,
    check_int,
    check_module_data,
    check_positive_float,
    check_positive_int,
    check_real,
)

__all__ = ["ENUMERATE", "MIVAEGuide"]

#: Values of ``enumerate`` (Pyro's ``infer={"enumerate": ...}`` of ``"c"``; ``None`` samples it).
ENUMERATE = (None, "parallel", "sequential")


class MIVAEGuide(PyroModule):
    r"""``q(z | x) q(c | x)`` for :class:`~pyro_spvae.models.MIVAE` (see the module docstring).

    :param event_shape: shape of one observation, e.g. ``(1, 28, 28)``.
    :param z_dim: number of continuous latent dimensions.
    :param n_categories: number of values ``n >= 2`` of the code.
    :param code: ``"categorical"`` or ``"relaxed"``, as the model's.
    :param temperature: initial temperature of the relaxed code (buffer ``temperature``).
    :param hidden: hidden widths of the encoder MLP.
    :param arch: ``"dense"`` or ``"conv"``.
    :param activation: activation name or module.
    :param channels: convolution widths (``arch="conv"``).
    :param min_scale: lower bound on the posterior scale of ``z``, ``>= 0``.
    :param enumerate: ``infer={"enumerate": ...}`` of a categorical ``"c"`` (:data:`ENUMERATE`);
        ignored with ``code="relaxed"``.
    :param straight_through: hard relaxed codes with straight-through gradients in training too.
    :param stride: stride of the convolutions (``arch="conv"``).
    :param init: weight initialisation, ``"torch"`` or ``"tf1"``.

    ``forward(x)`` with ``x`` of shape ``(B, *event_shape)`` samples ``"z"`` ``(B, z_dim)`` and
    ``"c"`` inside ``pyro.plate("data", B, dim=-1)`` (plus leading particle/enumeration dims).
    """

    def __init__(self, event_shape: Sequence[int] = (1, 28, 28), z_dim: int = 10, n_categories: int = 10,
                 code: str = "categorical", temperature: float = 0.67, hidden: Sequence[int] = (200, 200),
                 arch: str = "dense", activation: str | nn.Module = "softplus",
                 channels: Sequence[int] = (32, 64), min_scale: float = 1e-4,
                 enumerate: str | None = "parallel", straight_through: bool = False, stride: int = 2,
                 init: str = "torch") -> None:
        super().__init__()
        self.event_shape = check_event_shape("event_shape", event_shape)
        self.z_dim = check_positive_int("z_dim", z_dim)
        self.n_categories = check_int("n_categories", n_categories, 2)
        self.code = check_choice("code", code, CODES)
        self.register_buffer("temperature", torch.tensor(check_positive_float("temperature", temperature)))
        self.min_scale = check_real("min_scale", min_scale, 0.0)
        self.enumerate = check_choice("enumerate", enumerate, ENUMERATE)
        self.straight_through = check_bool("straight_through", straight_through)
        self.arch = arch
        self.encoder = build_encoder(arch, self.event_shape, 2 * self.z_dim + self.n_categories,
                                     check_hidden("hidden", hidden), activation, channels, stride=stride,
                                     init=init)

    def set_temperature(self, value: float) -> None:
        """Set the relaxed code's temperature in place (keep it equal to the model's)."""
        self.temperature.fill_(check_positive_float("temperature", value))

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Posterior parameters for ``x`` of shape ``(..., *event_shape)``: ``loc`` and ``scale``
        of ``z``, each ``(..., z_dim)``, and the normalised ``logits`` of ``c``, ``(..., n)``."""
        check_module_data("x", x, self.event_shape, self, batch_dims=None)
        return self._encode(x)

    def _encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        out = self.encoder(x)
        d = self.z_dim
        loc, raw, logits = out[..., :d], out[..., d: 2 * d], out[..., 2 * d:]
        return loc, F.softplus(raw) + self.min_scale, logits.log_softmax(-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Sample ``"z"`` and ``"c"`` for a batch ``x`` of shape ``(B, *event_shape)``; returns ``z``."""
        check_module_data("x", x, self.event_shape, self)
        loc, scale, logits = self._encode(x)
        with pyro.plate("data", x.shape[0], dim=-1):
            z = pyro.sample("z", dist.Normal(loc, scale).to_event(1))
            if self.code == "categorical":
                infer = {"enumerate": self.enumerate} if self.enumerate else {}
                pyro.sample("c", dist.Categorical(logits=logits), infer=infer)
            else:
                hard = self.straight_through or not self.training
                pyro.sample("c", RelaxedOneHotCode(self.temperature.to(x.dtype), logits=logits, hard=hard))
        return z
