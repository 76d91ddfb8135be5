r"""The codes of the mutual-information bound and their posterior ``Q(c | x)``: code specs read off
a model trace, the generated pairs ``(c, x~)``, ``H(c)`` and ``log Q(c | x~)``.

These are the terms of the variational lower bound (Barber & Agakov 2003; Serdega & Kim 2020)

.. math:: I(c; x) \;\ge\; H(c) + \mathbb{E}_{c \sim p(c),\, x \sim p(x \mid c, \dots)} \log Q(c \mid x)

derived in :mod:`pyro_spvae.infer.mutual_information`, shared by the regulariser
:class:`~pyro_spvae.infer.mutual_information.MIRegularizedELBO` and the estimator
:func:`~pyro_spvae.infer.mi_estimate.mutual_information_bound`. The pairs come from the model run
forward with every site drawn from its prior (:func:`pyro.poutine.uncondition`), ``x~`` being the
mean of ``p(x | ...)`` or a draw (:data:`X_MODES`). ``H(c)`` is analytic: the entropy of the
categorical prior, or ``(1/2) log det(2 pi e Sigma_SS)`` for dims ``S`` of a Gaussian prior.

Codes are named ``"c"`` (a whole site: a categorical code, or all dims of a Gaussian site jointly)
or ``"z[0]"``, ``"z[0,3]"`` (dimensions of the last axis of a Gaussian site). For relaxed one-hot
codes the target is the category ``argmax_k y_k`` (a categorical draw, by the Gumbel-max trick).

``Q`` is either a :class:`~pyro_spvae.nn.code_posterior.CodePosteriorNet` (its own amortised
network) or the guide: the guide is run on ``x~`` and its distribution of each named site is read
off its trace (categorical logits; the Gaussian marginals of the named dims).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import pyro.poutine as poutine
import torch
from pyro.distributions import Independent, MultivariateNormal, Normal
from torch import Tensor
from torch.distributions import Categorical, Distribution, OneHotCategorical, RelaxedOneHotCategorical

from pyro_spvae.infer.particles import is_latent
from pyro_spvae.nn.code_posterior import CodePosteriorNet
from pyro_spvae.validation import check_tensor

__all__ = ["CodeSite", "X_MODES", "code_posterior_for", "resolve_codes"]

#: What the bound feeds to ``Q``: the mean of ``p(x | ...)`` or a draw.
X_MODES: tuple[str, ...] = ("mean", "sample")
_SPEC = re.compile(r"^([^\[\]]+?)(?:\[\s*(\d+(?:\s*,\s*\d+)*)\s*\])?$")
_CATEGORICAL = (Categorical, OneHotCategorical, RelaxedOneHotCategorical)


class CodeSite(NamedTuple):
    """One code of the bound. :ivar label: as given (``"c"``, ``"z[0]"``); :ivar name: the site;
    :ivar kind: ``"categorical"`` or ``"gaussian"``; :ivar dims: Gaussian dims (``None``: all);
    :ivar size: number of categories, or of dims."""

    label: str
    name: str
    kind: str
    dims: tuple[int, ...] | None
    size: int


def _parse(spec: object) -> tuple[str, tuple[int, ...] | None]:
    if not isinstance(spec, str):
        raise TypeError(f"a code must be a site name such as 'c' or 'z[0]', got {spec!r}")
    m = _SPEC.match(spec.strip())
    if m is None:
        raise ValueError(f"cannot parse code {spec!r}; write 'site' or 'site[i]' or 'site[i,j]'")
    dims = None if m.group(2) is None else tuple(int(d) for d in m.group(2).split(","))
    return m.group(1).strip(), dims


def _gaussian(fn: Distribution) -> Normal | MultivariateNormal | None:
    """The ``Normal`` (or ``MultivariateNormal``) under ``Independent`` wrappers, else ``None``."""
    while isinstance(fn, Independent):
        fn = fn.base_dist
    return fn if isinstance(fn, (Normal, MultivariateNormal)) else None


def resolve_codes(trace: poutine.Trace, sites: Sequence[str]) -> tuple[CodeSite, ...]:
    """The :class:`CodeSite` of each spec in ``sites`` (``"c"``, ``"z[0]"``, ...), read off a trace
    of the model: categorical sites (``Categorical``, one-hot and relaxed one-hot) and Gaussian
    sites (``Normal`` with at most one event dim, ``MultivariateNormal``).

    :raises TypeError: for a spec that is not a string.
    :raises ValueError: for an unknown or observed site, another distribution, or bad dims.
    """
    if isinstance(sites, str) or not isinstance(sites, Sequence) or not sites:
        raise TypeError(f"sites must be a non-empty list of codes such as ['c', 'z[0]'], got {sites!r}")
    codes = []
    for spec in sites:
        name, dims = _parse(spec)
        site = trace.nodes.get(name)
        if site is None or site["type"] != "sample" or not is_latent(site):
            raise ValueError(f"code {spec!r}: the model has no latent sample site {name!r}")
        fn = site["fn"]
        if isinstance(fn, _CATEGORICAL):
            if dims is not None:
                raise ValueError(f"code {spec!r}: a categorical site takes no dims")
            codes.append(CodeSite(spec, name, "categorical", None, int(fn.logits.shape[-1])))
            continue
        base = _gaussian(fn)
        if base is None or fn.event_dim > 1:
            raise ValueError(f"code {spec!r}: site {name!r} is neither categorical nor Gaussian with one "
                             f"event dim ({type(fn).__name__})")
        width = int(fn.event_shape[0]) if fn.event_dim else 1
        if dims is not None and (len(set(dims)) != len(dims) or max(dims) >= width or not fn.event_dim):
            raise ValueError(f"code {spec!r}: dims must be distinct indices below {width} of a vector site")
        codes.append(CodeSite(spec, name, "gaussian", dims, width if dims is None else len(dims)))
    return tuple(codes)


def _targets(trace: poutine.Trace, code: CodeSite) -> Tensor:
    """The code's values in the trace: categories ``(B,)`` or Gaussian dims ``(B, size)``."""
    site = trace.nodes[code.name]
    value, fn = site["value"], site["fn"]
    if code.kind == "categorical":
        return value if isinstance(fn, Categorical) else value.argmax(-1)
    if not fn.event_dim:
        return value.unsqueeze(-1)
    return value if code.dims is None else value[..., list(code.dims)]


def _marginal(fn: Distribution, code: CodeSite) -> tuple[Tensor, Tensor]:
    """``(loc, cov)`` of the code's dims: ``cov`` ``(..., size, size)`` (diagonal for ``Normal``)."""
    base = _gaussian(fn)
    if base is None:
        raise ValueError(f"code {code.label!r}: expected a Gaussian distribution, got {type(fn).__name__}")
    if isinstance(base, MultivariateNormal):
        loc, cov = base.loc, base.covariance_matrix
    else:
        loc, var = base.loc, base.scale**2
        if not fn.event_dim:
            loc, var = loc.unsqueeze(-1), var.unsqueeze(-1)
        loc, var = torch.broadcast_tensors(loc, var)
        cov = torch.diag_embed(var)
    idx = list(range(loc.shape[-1])) if code.dims is None else list(code.dims)
    return loc[..., idx], cov[..., idx, :][..., idx]


def _entropy(trace: poutine.Trace, code: CodeSite) -> Tensor:
    """``H(c)`` of the code under the prior in the trace (mean over the batch; detached)."""
    fn = trace.nodes[code.name]["fn"]
    with torch.no_grad():
        if code.kind == "categorical":
            return Categorical(logits=fn.logits).entropy().mean()
        _, cov = _marginal(fn, code)
        return (0.5 * torch.logdet(2 * math.pi * math.e * cov)).mean()


def _q_from_guide_fn(fn: Distribution, code: CodeSite) -> Distribution:
    if code.kind == "categorical":
        if not isinstance(fn, _CATEGORICAL):
            raise ValueError(f"code {code.label!r}: the guide's site is not categorical "
                             f"({type(fn).__name__})")
        return Categorical(logits=fn.logits)
    loc, cov = _marginal(fn, code)
    return Normal(loc, torch.diagonal(cov, dim1=-2, dim2=-1).sqrt()).to_event(1)


def _q_distributions(q: Any, x: Tensor, codes: tuple[CodeSite, ...]) -> dict[str, Distribution]:
    """``{label: Q(c | x)}`` from a :class:`CodePosteriorNet` or from a guide run on ``x``."""
    if isinstance(q, CodePosteriorNet):
        out = q(x)
        missing = [c.label for c in codes if c.label not in out]
        if missing:
            raise ValueError(f"the Q network has no head for codes {missing}")
        return out
    trace = poutine.trace(q).get_trace(x)
    out = {}
    for code in codes:
        if code.name not in trace.nodes:
            raise ValueError(f"code {code.label!r}: the guide has no site {code.name!r}")
        out[code.label] = _q_from_guide_fn(trace.nodes[code.name]["fn"], code)
    return out


def _generate(model: Callable, args: tuple, kwargs: dict, x_site: str | None,
              x_mode: str) -> tuple[poutine.Trace, Tensor]:
    """Run ``model`` with every site drawn from the prior; return its trace and ``x~``."""
    trace = poutine.trace(poutine.uncondition(model)).get_trace(*args, **kwargs)
    observed = [n for n, s in trace.nodes.items() if s["type"] == "sample" and s["infer"].get("was_observed")]
    name = x_site if x_site is not None else (observed[0] if len(observed) == 1 else None)
    if name is None or name not in observed:
        raise ValueError(f"cannot tell the observation site among {observed}; pass x_site")
    site = trace.nodes[name]
    return trace, site["fn"].mean if x_mode == "mean" else site["value"]


def _log_q(q: Any, codes: tuple[CodeSite, ...], trace: poutine.Trace, x: Tensor) -> dict[str, Tensor]:
    """``log Q(c_i | x_i)`` per generated pair, ``{label: (B,)}``."""
    dists = _q_distributions(q, x, codes)
    return {c.label: dists[c.label].log_prob(_targets(trace, c).detach()) for c in codes}


def code_posterior_for(model: Callable, data_like: Tensor, sites: Sequence[str],
                       **kwargs: Any) -> CodePosteriorNet:
    """A :class:`~pyro_spvae.nn.code_posterior.CodePosteriorNet` with one head per code of ``sites``, for data
    shaped like ``data_like`` ``(B, *event_shape)`` (the model is run once to read the sites).

    :param kwargs: options of :class:`~pyro_spvae.nn.code_posterior.CodePosteriorNet` (``hidden``,
        ``arch``, ...).
    """
    data_like = check_tensor("data_like", data_like)
    with torch.no_grad():
        trace = poutine.trace(poutine.uncondition(model)).get_trace(data_like)
    codes = resolve_codes(trace, sites)
    return CodePosteriorNet(tuple(data_like.shape[1:]), {c.label: (c.kind, c.size) for c in codes}, **kwargs)
