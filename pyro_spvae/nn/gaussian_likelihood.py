r"""The Gaussian likelihood head, ``x ~ Normal(loc, scale)`` per element with a learnt scale.

The mean is the first decoder output ``m`` (``loc="identity"``) or :math:`\sigma(m)`
(``loc="sigmoid"``, data in ``[0, 1]``); the scale, plus ``min_scale`` except for ``"precision"``:

.. math::  \text{global: } e^{-\lambda / 2}, \quad \text{predicted: } \operatorname{softplus}(r),
           \quad \text{precision: } (1 + g^2)^{-1/2}, \quad \text{log\_scale: } e^{s},

with :math:`\lambda` a learnt per-element log-precision shared by all inputs and :math:`r`,
:math:`g`, :math:`s` a second decoder output (``"precision"``: the SPVAE reference code, Tan &
Peharz 2019).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import pyro.distributions as dist
import torch
import torch.nn.functional as F
from torch import nn
from torch.distributions import Distribution

from pyro_spvae.validation import check_choice, check_positive_float, check_real

from .likelihood_base import Likelihood

__all__ = ["GaussianLikelihood"]


class GaussianLikelihood(Likelihood):
    r"""``x ~ Normal(loc, scale)`` per element with a learnt scale.

    :param event_shape: observation shape.
    :param scale: ``"global"`` (default): a learnt per-element log-precision parameter
        ``log_precision`` of shape ``event_shape`` shared by all inputs, ``scale =
        exp(-log_precision / 2)``;
        ``"predicted"``: the decoder also outputs ``raw`` and ``scale = softplus(raw)``;
        ``"precision"``: the decoder also outputs ``g`` and the precision is ``1 + g^2`` per input
        and element (``scale <= 1``; the SPVAE reference code, Tan & Peharz 2019; ``min_scale`` is
        not added);
        ``"log_scale"``: the second input is the log standard deviation, ``scale = exp(log_scale)``
        (for a model that holds its own scale parameters, e.g. the per-leaf scales of SPVAE).
    :param min_scale: lower bound added to the scale (numerical safety), ``>= 0``.
    :param init_scale: initial scale of the ``"global"`` parameter, ``> 0``.
    :param loc: ``"identity"`` (default): the first output is the mean; ``"sigmoid"``: the mean is
        its sigmoid (data in ``[0, 1]``, as in the SPVAE reference).
    """

    name = "gaussian"

    #: The ``scale`` modes.
    SCALES: tuple[str, ...] = ("global", "predicted", "precision", "log_scale")
    #: The ``loc`` modes.
    LOCS: tuple[str, ...] = ("identity", "sigmoid")

    def __init__(self, event_shape: Sequence[int], scale: str = "global", min_scale: float = 1e-4,
                 init_scale: float = 1.0, loc: str = "identity") -> None:
        super().__init__(event_shape)
        self.scale_mode = check_choice("gaussian scale", scale, self.SCALES)
        self.loc_mode = check_choice("gaussian loc", loc, self.LOCS)
        self.min_scale = check_real("min_scale", min_scale, 0.0)
        init_scale = check_positive_float("init_scale", init_scale)
        if scale == "global":
            self.log_precision = nn.Parameter(torch.full(self.event_shape, -2.0 * math.log(init_scale)))

    @property
    def num_params(self) -> int:
        return 1 if self.scale_mode == "global" else 2

    @property
    def precision(self) -> torch.Tensor:
        """The learnt precision ``1 / scale^2`` (``"global"`` mode only), shape ``event_shape``."""
        if self.scale_mode != "global":
            raise AttributeError("precision is a parameter only with scale='global'")
        return self.log_precision.exp()

    def forward(self, params: torch.Tensor) -> Distribution:
        split = self._split(params)
        loc = self._param(split, 0)
        if self.loc_mode == "sigmoid":
            loc = torch.sigmoid(loc)
        if self.scale_mode == "global":
            scale = torch.exp(-0.5 * self.log_precision) + self.min_scale
        elif self.scale_mode == "predicted":
            scale = F.softplus(self._param(split, 1)) + self.min_scale
        elif self.scale_mode == "precision":
            g = self._param(split, 1)
            scale = torch.rsqrt(1.0 + g * g)
        else:
            scale = torch.exp(self._param(split, 1)) + self.min_scale
        loc, scale = torch.broadcast_tensors(loc, scale)
        return self._independent(dist.Normal(loc, scale))
