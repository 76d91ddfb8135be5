r"""The data-fit constraint of :class:`~pyro_spvae.infer.geco.GECO`: the per-site constraint
functions, and the messenger that scales the constrained sites and measures them.

References
----------
- [GECO] Rezende & Viola (2018), "Taming VAEs", arXiv:1810.00597, §3 (the constraint
  :math:`\mathbb{E}[C(x, z)] \le \kappa^2`).

The constraint
--------------
The constraint ``C``, per data point, is named per site: ``"mse"``, the squared error of the
site's mean :math:`\|x - \mathbb{E}[x \mid z]\|^2`; ``"nll"``, :math:`-\log p(x \mid z)`; or a
function ``(distribution, value) -> Tensor`` of the site as traced, returning one value per batch
element. Built-ins are averaged (``reduction="mean"``, so :math:`\kappa` is an RMS error per pixel
in data units for ``"mse"``, or nats per dimension for ``"nll"``) or summed (``"sum"``: per data
point) over the site's event dims. With several sites ``C`` is the sum of their batch means.

Measuring and scaling
---------------------
With ``coupling="scale"`` :class:`~pyro_spvae.infer.geco.GECO` runs the model under
:class:`_ConstraintSites` (through :class:`_ScaledModel`): the constrained observation sites get
their scale multiplied by :math:`\lambda` (a site-filtered ``poutine.scale``), and each site's
``C`` is measured without gradient on the site as the wrapped ELBO ran it and added, as a running
``[sum, count]``, to a sink that GECO turns into the batch constraint.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping
from typing import Any

import torch
from pyro.poutine.messenger import Messenger
from torch import Tensor
from torch.distributions import Distribution

from pyro_spvae.validation import check_choice

__all__ = ["REDUCTIONS", "SiteConstraint", "negative_log_likelihood", "squared_error"]

REDUCTIONS = ("mean", "sum")

#: ``(distribution, value) -> C`` of a site, one value per batch element of the distribution.
SiteConstraint = Callable[[Distribution, Tensor], Tensor]


def _reduce_event(t: Tensor, fn: Distribution, reduction: str, summed: bool) -> Tensor:
    n = len(fn.event_shape)
    if not summed and n:
        t = t.sum(tuple(range(-n, 0)))
    return t / max(1, math.prod(fn.event_shape)) if reduction == "mean" else t


def squared_error(fn: Distribution, value: Tensor, reduction: str = "mean") -> Tensor:
    """:math:`\\|x - \\mathbb{E}[x \\mid z]\\|^2` of an observation site over its event dims,
    averaged (``"mean"``) or summed (``"sum"``); shape ``fn.batch_shape`` (broadcast with ``value``)."""
    return _reduce_event((fn.mean - value) ** 2, fn, reduction, summed=False)


def negative_log_likelihood(fn: Distribution, value: Tensor, reduction: str = "mean") -> Tensor:
    """:math:`-\\log p(x \\mid z)` of an observation site, per dimension of its event (``"mean"``) or
    per batch element (``"sum"``); shape ``fn.batch_shape``."""
    return _reduce_event(-fn.log_prob(value), fn, reduction, summed=True)


_BUILTINS = {"mse": squared_error, "nll": negative_log_likelihood}


def _site_constraints(constraint: object, reduction: str) -> dict[str, SiteConstraint]:
    items = constraint.items() if isinstance(constraint, Mapping) else [("x", constraint)]
    out: dict[str, SiteConstraint] = {}
    for name, c in items:
        if not isinstance(name, str) or not name:
            raise TypeError(f"constraint sites must be named by non-empty strings, got {name!r}")
        if isinstance(c, str):
            builtin = _BUILTINS[check_choice("constraint", c, _BUILTINS)]
            out[name] = functools.partial(builtin, reduction=reduction)
        elif callable(c):
            out[name] = c
        else:
            raise TypeError(f"the constraint of site {name!r} must be 'mse', 'nll' or a callable "
                            f"(distribution, value) -> Tensor, got {type(c).__name__}")
    if not out:
        raise ValueError("constraint names no site")
    return out


def _accumulate(sink: dict[str, list], name: str, c: Tensor) -> None:
    c = c.detach()
    total, count = sink.get(name, (0.0, 0))
    sink[name] = [total + c.sum(), count + c.numel()]


class _ConstraintSites(Messenger):
    """Scale the constrained sites by ``multiplier`` (unless ``None``) and add their constraint
    values (detached) to ``sink`` (unless ``None``)."""

    def __init__(self, constraints: dict[str, SiteConstraint], multiplier: float | None,
                 sink: dict[str, list] | None) -> None:
        super().__init__()
        self.constraints, self.multiplier, self.sink = constraints, multiplier, sink

    def _process_message(self, msg: dict) -> None:
        if msg["type"] == "sample" and msg["name"] in self.constraints and self.multiplier is not None:
            msg["scale"] = self.multiplier * msg["scale"]

    def _postprocess_message(self, msg: dict) -> None:
        if self.sink is None or msg["type"] != "sample" or msg["name"] not in self.constraints:
            return
        with torch.no_grad():
            _accumulate(self.sink, msg["name"], self.constraints[msg["name"]](msg["fn"], msg["value"]))


class _ScaledModel:
    """``model`` run under :class:`_ConstraintSites`; other attributes are the model's (so that
    estimators reading model methods, such as the SPN-aware bounds, still find them)."""

    def __init__(self, model: Callable, constraints: dict[str, SiteConstraint], multiplier: float,
                 sink: dict[str, list] | None) -> None:
        self.model, self.constraints, self.multiplier, self.sink = model, constraints, multiplier, sink

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        with _ConstraintSites(self.constraints, self.multiplier, self.sink):
            return self.model(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        if name == "model":  # not set yet (copy, pickle): no recursion
            raise AttributeError(name)
        return getattr(self.model, name)
