r"""A variational lower bound on the mutual information between latent codes and data: a
regulariser for any ELBO, and an estimator for trained models.

The bound
---------
For a latent component ``c`` of a generative model ``p(x, c, ...)`` (a categorical code, or
dimensions of a Gaussian latent) and any conditional density ``Q(c | x)``,

.. math:: I(c; x) = H(c) - H(c \mid x) = H(c) + \mathbb{E}_{p(c, x)} \log p(c \mid x)
          \;\ge\; H(c) + \mathbb{E}_{c \sim p(c),\, x \sim p(x \mid c, \dots)} \log Q(c \mid x),

because the gap is ``E_{p(x)} KL(p(c | x) || Q(c | x)) >= 0``; it is tight at ``Q(c | x) = p(c | x)``
(Barber & Agakov 2003, "The IM algorithm"; Chen et al. 2016, "InfoGAN", §5, where it is ``L_I``;
Serdega & Kim 2020, "Variational Mutual Information Maximization Framework for VAE Latent Codes
with Continuous and Discrete Priors", arXiv:2006.02227, who add it to the VAE objective and use it
to measure the MI of a trained VAE). ``H(c)`` is analytic for the priors used here: ``log n`` for a
uniform ``n``-way code (in general ``-sum_k p_k log p_k``, so the bound of a categorical code never
exceeds ``H(c)``: ``log Q <= 0``), and ``(1/2) log(2 pi e sigma^2)`` per dimension of a
``N(0, sigma^2)`` latent (``(1/2) log det(2 pi e Sigma_SS)`` for dims ``S`` of a multivariate normal).

The expectation runs over the *generative* model: the model is run forward with every latent site
drawn from its prior and the observation resampled (:func:`pyro.poutine.uncondition`), giving pairs
``(c, x~)``; ``x~`` is the mean of ``p(x | ...)`` (``x="mean"``, differentiable for every
likelihood; for likelihoods fixed by their mean (Bernoulli, Binomial, Gaussian of fixed scale)
``c -> mean -> x`` is a Markov chain, so ``I(c; mean) >= I(c; x)`` by data processing; when the
decoder also predicts a scale this ordering does not hold, and use ``x="sample"``)
or a draw (``x="sample"``, the MI with the data themselves; reparameterised when the likelihood has
``rsample``).

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
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import pyro.poutine as poutine
import torch
from pyro.distributions import Independent, MultivariateNormal, Normal
from pyro.infer.elbo import ELBO
from pyro.util import warn_if_nan
from torch import Tensor
from torch.distributions import Categorical, Distribution, OneHotCategorical, RelaxedOneHotCategorical

from pyro_spvae.infer.particles import is_latent
from pyro_spvae.nn.code_posterior import CodePosteriorNet
from pyro_spvae.validation import (
    check_choice,
    check_nonnegative_int,
    check_positive_int,
    check_real,
    check_tensor,
)

__all__ = [
    "CodeSite",
    "MIBound",
    "MIRegularizedELBO",
    "X_MODES",
    "code_posterior_for",
    "mutual_information_bound",
    "resolve_codes",
]

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


class MIBound(NamedTuple):
    """The bound of one code (nats). :ivar bound: ``H(c) + mean log Q``; :ivar entropy: ``H(c)``;
    :ivar stderr: Monte Carlo standard error of the bound; :ivar num_samples: pairs averaged."""

    bound: float
    entropy: float
    stderr: float
    num_samples: int


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


def _delegate(name: str) -> property:
    """An attribute of :class:`pyro.infer.ELBO` read from and written to the wrapped ELBO."""
    return property(lambda self: getattr(self.elbo, name), lambda self, v: setattr(self.elbo, name, v),
                    doc=f"The wrapped ELBO's ``{name}`` (one source of truth).")


class MIRegularizedELBO(ELBO):
    r"""Any ELBO plus the mutual-information bound of named codes (Serdega & Kim 2020):

    .. math:: \text{loss} = \text{loss}_{\text{ELBO}} - w \sum_{\text{codes}} \sum_{i=1}^{B}
              \big[H(c) + \log Q(c_i \mid \tilde x_i)\big]

    with one pair ``(c_i, x~_i)`` drawn from the generative model per data point of the batch (the
    model run forward on the same arguments, every site from its prior, see the module docstring),
    so that ``w`` is a weight per data point, as the ELBO's sum over the data plate. The gradient
    of the bound reaches the decoder through ``x~`` (keep ``x="mean"`` for likelihoods without
    ``rsample``, e.g. Bernoulli) and trains ``Q``; prior parameters are not trained by it.

    :param elbo: the wrapped :class:`pyro.infer.ELBO` (Pyro's ``Trace_ELBO``, ``TraceEnum_ELBO``,
        ..., or :class:`~pyro_spvae.infer.TraceIWAE_ELBO`); ``num_particles``,
        ``max_plate_nesting``, ``vectorize_particles`` and ``retain_graph`` are its own.
    :param sites: codes, e.g. ``["c", "z[0]", "z[1]"]`` (see the module docstring).
    :param q: ``"guide"`` (the guide's distributions of the named sites) or a
        :class:`~pyro_spvae.nn.code_posterior.CodePosteriorNet` (see :func:`code_posterior_for`),
        whose parameters enter Pyro's parameter store when it runs, so :class:`~pyro.infer.SVI`
        trains them with the model and guide. With ``"guide"`` a categorical code that the decoder
        ignores can stall: the ELBO's KL keeps ``q(c|x)`` flat and a flat ``Q`` gives the decoder no
        gradient; an own :class:`~pyro_spvae.nn.code_posterior.CodePosteriorNet` avoids this.
    :param weight: ``w >= 0``, one weight for all ``sites``. A continuous dim read through the decoder
        mean (``x="mean"``) has an unbounded bound that can swamp a code's (at most ``ln K``
        nats) under the same weight: regularise codes and dims in separate wrappers, or the code alone.
    :param x: ``"mean"`` or ``"sample"`` (:data:`X_MODES`), what ``Q`` reads.
    :param x_site: the observation site (default: the model's only observed site).
    """

    num_particles = _delegate("num_particles")
    max_plate_nesting = _delegate("max_plate_nesting")
    vectorize_particles = _delegate("vectorize_particles")
    retain_graph = _delegate("retain_graph")
    strict_enumeration_warning = _delegate("strict_enumeration_warning")
    ignore_jit_warnings = _delegate("ignore_jit_warnings")
    jit_options = _delegate("jit_options")

    def __init__(self, elbo: ELBO, sites: Sequence[str], q: str | CodePosteriorNet = "guide",
                 weight: float = 1.0, x: str = "mean", x_site: str | None = None) -> None:
        # ELBO.__init__ is not called: the settings it would store are the wrapped ELBO's
        if not isinstance(elbo, ELBO):
            raise TypeError(f"elbo must be a pyro.infer.ELBO, got {type(elbo).__name__}")
        self.elbo = elbo
        if isinstance(sites, str) or not isinstance(sites, Sequence) or not sites:
            raise TypeError(f"sites must be a non-empty list of codes such as ['c', 'z[0]'], got {sites!r}")
        for spec in sites:
            _parse(spec)
        self.sites = tuple(sites)
        if not (q == "guide" or isinstance(q, CodePosteriorNet)):
            raise TypeError(f"q must be 'guide' or a CodePosteriorNet, got {q!r}")
        self.q = q
        self.weight = check_real("weight", weight, 0.0)
        self.x_mode = check_choice("x", x, X_MODES)
        if x_site is not None and not isinstance(x_site, str):
            raise TypeError(f"x_site must be a site name (str) or None, got {x_site!r}")
        self.x_site = x_site
        self.last_bounds: dict[str, float] = {}

    def _get_trace(self, model, guide, args: tuple, kwargs: dict):
        """The wrapped ELBO's trace pair (:meth:`pyro.infer.ELBO._get_trace`)."""
        return self.elbo._get_trace(model, guide, args, kwargs)

    def _bounds(self, model, guide, args: tuple, kwargs: dict) -> dict[str, Tensor]:
        """``{label: H(c) + log Q(c_i | x~_i)}``, each ``(B,)``."""
        trace, x = _generate(model, args, kwargs, self.x_site, self.x_mode)
        codes = resolve_codes(trace, self.sites)
        log_q = _log_q(guide if self.q == "guide" else self.q, codes, trace, x)
        return {c.label: _entropy(trace, c) + log_q[c.label] for c in codes}

    def _mi_sum(self, model, guide, args: tuple, kwargs: dict) -> Tensor:
        return sum(b.sum() for b in self._bounds(model, guide, args, kwargs).values())

    def mutual_information(self, model, guide, *args, **kwargs) -> dict[str, float]:
        """The current bound of each code in nats (one batch of generated pairs, no gradients;
        for a tight estimate use :func:`mutual_information_bound`)."""
        with torch.no_grad():
            return {k: float(v.mean()) for k, v in self._bounds(model, guide, args, kwargs).items()}

    def loss(self, model, guide, *args, **kwargs) -> float:
        """:returns: the regularised loss (float, no gradients)."""
        loss = self.elbo.loss(model, guide, *args, **kwargs)
        if self.weight:
            with torch.no_grad():
                loss = loss - self.weight * float(self._mi_sum(model, guide, args, kwargs))
        warn_if_nan(loss, "loss")
        return loss

    def differentiable_loss(self, model, guide, *args, **kwargs) -> Tensor:
        """The regularised loss, differentiable.

        :returns: the regularised loss as a differentiable tensor (needs the wrapped ELBO's
            ``differentiable_loss``).
        """
        loss = self.elbo.differentiable_loss(model, guide, *args, **kwargs)
        if self.weight:
            loss = loss - self.weight * self._mi_sum(model, guide, args, kwargs)
        warn_if_nan(loss, "loss")
        return loss

    def loss_and_grads(self, model, guide, *args, **kwargs) -> float:
        """The wrapped ELBO's ``loss_and_grads``, then the gradient of ``-w * bound`` accumulated into
        the same ``.grad`` (``retain_graph=self.retain_graph``); returns the regularised loss. The
        batch's bound of each code (nats, mean over the generated pairs) is kept in
        :attr:`last_bounds` (for logging)."""
        loss = self.elbo.loss_and_grads(model, guide, *args, **kwargs)
        if self.weight:
            bounds = self._bounds(model, guide, args, kwargs)
            self.last_bounds = {k: float(v.detach().mean()) for k, v in bounds.items()}
            mi = sum(b.sum() for b in bounds.values())
            if mi.requires_grad:
                (-self.weight * mi).backward(retain_graph=self.retain_graph)
            loss = loss - self.weight * float(mi.detach())
        warn_if_nan(loss, "loss")
        return loss


def _fit_q(q: CodePosteriorNet, model: Callable, batch: Tensor, sites: Sequence[str], steps: int, lr: float,
           x_site: str | None, x_mode: str) -> None:
    """Maximise ``sum_codes E log Q(c | x~)`` over ``Q``'s parameters on fresh, detached pairs (Adam,
    learning rate decayed linearly to 0, so that the last steps average out the minibatch noise)."""
    opt = torch.optim.Adam(q.parameters(), lr=lr)
    decay = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 1.0 - t / steps)
    codes = None
    for _ in range(steps):
        with torch.no_grad():
            trace, x = _generate(model, (batch,), {}, x_site, x_mode)
        codes = codes or resolve_codes(trace, sites)
        loss = -sum(v.mean() for v in _log_q(q, codes, trace, x).values())
        opt.zero_grad()
        loss.backward()
        opt.step()
        decay.step()


def mutual_information_bound(model: Callable, q: Any, sites: Sequence[str], data_like: Tensor,
                             num_samples: int = 10000, *, steps: int = 1000, lr: float = 1e-2,
                             batch_size: int | None = None, x: str = "sample", x_site: str | None = None,
                             q_kwargs: Mapping[str, Any] | None = None) -> dict[str, MIBound]:
    r"""Estimate the MI lower bound ``H(c) + E log Q(c | x)`` (nats) of each code of ``sites`` for a
    trained model (Serdega & Kim 2020; see the module docstring).

    ``Q`` is fitted first (unless it is the guide): ``steps`` Adam steps on fresh pairs ``(c, x~)``
    from the model, detached, so the model is not changed; then the bound is averaged over
    ``num_samples`` new pairs. The estimate is a lower bound in expectation for any ``Q``; its
    Monte Carlo standard error is reported.

    :param model: the Pyro model, called as ``model(batch)`` (its data argument; the values only
        give the batch shape, the observation is resampled).
    :param q: ``None`` (a fresh :func:`code_posterior_for` network with ``q_kwargs``), a
        :class:`~pyro_spvae.nn.code_posterior.CodePosteriorNet` (fitted ``steps`` steps; ``steps=0``
        uses it as is), or a guide (used as is, see the module docstring).
    :param sites: codes such as ``["c", "z[0]"]``.
    :param data_like: valid data ``(N, *event_shape)``, tiled to ``batch_size`` rows.
    :param num_samples: pairs averaged for the reported bound.
    :param steps: Adam steps fitting ``Q``. :param lr: their learning rate.
    :param batch_size: pairs per model run (default: ``N``).
    :param x: ``"sample"`` (default, the MI with the data) or ``"mean"``.
    :param x_site: the observation site (default: the model's only observed site).
    :returns: ``{label: MIBound}``.
    """
    data_like = check_tensor("data_like", data_like)
    num_samples = check_positive_int("num_samples", num_samples)
    steps = check_nonnegative_int("steps", steps)
    lr = check_real("lr", lr, 0.0, low_open=True)
    batch_size = len(data_like) if batch_size is None else check_positive_int("batch_size", batch_size)
    x_mode = check_choice("x", x, X_MODES)
    batch = data_like[torch.arange(batch_size, device=data_like.device) % len(data_like)]
    if q is None:
        q = code_posterior_for(model, batch, sites, **(q_kwargs or {}))
    if isinstance(q, CodePosteriorNet) and steps:
        _fit_q(q, model, batch, sites, steps, lr, x_site, x_mode)
    values: dict[str, list[Tensor]] = {}
    entropy: dict[str, float] = {}
    n = 0
    with torch.no_grad():
        while n < num_samples:
            trace, xg = _generate(model, (batch,), {}, x_site, x_mode)
            codes = resolve_codes(trace, sites)
            take = min(batch_size, num_samples - n)
            for label, v in _log_q(q, codes, trace, xg).items():
                values.setdefault(label, []).append(v.reshape(-1)[:take].double())
            entropy = {c.label: float(_entropy(trace, c)) for c in codes}
            n += take
    out = {}
    for label, chunks in values.items():
        v = torch.cat(chunks)
        stderr = float(v.std() / math.sqrt(n)) if n > 1 else float("nan")
        out[label] = MIBound(entropy[label] + float(v.mean()), entropy[label], stderr, n)
    return out
