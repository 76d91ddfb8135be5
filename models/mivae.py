r"""A VAE with a joint continuous and categorical latent code (JointVAE, Dupont 2018) as a Pyro model,
the model of the mutual-information regularised VAE of Serdega & Kim (2020).

Generative model, for each of the ``B`` data points (``pyro.plate("data", B, dim=-1)``)::

    z ~ N(0, I_{z_dim}),    c ~ Categorical(1/n, ..., 1/n),    x | z, c ~ lik(decoder([z, onehot(c)]))

with ``n = n_categories`` and the likelihood heads and dense/conv decoders of
:class:`~pyro_spvae.models.VAE`. References: Dupont (2018), "Learning Disentangled Joint Continuous
and Discrete Representations", NeurIPS; Serdega & Kim (2020), "Variational Mutual Information
Maximization Framework for VAE Latent Codes with Continuous and Discrete Priors", arXiv:2006.02227.

Two ways of handling the code (``code``):

- ``"categorical"``: the site ``"c"`` is a :class:`~pyro.distributions.Categorical`. A guide that
  marks its ``"c"`` ``infer={"enumerate": "parallel"}`` (:class:`~pyro_spvae.guides.MIVAEGuide`)
  lets ``TraceEnum_ELBO`` sum the ``n`` values exactly; the decoder is vectorised over the
  enumeration dim (``c`` of shape ``(n, 1)`` against ``z`` of shape ``(B, z_dim)`` decodes
  ``(n, B)`` images in one pass). Unmarked, ``"c"`` is sampled (score-function gradients).
- ``"relaxed"``: the site ``"c"`` is a :class:`RelaxedOneHotCode`, the Gumbel-softmax / Concrete
  relaxation ``y = softmax((log pi + g) / tau)``, ``g`` i.i.d. Gumbel (Jang, Gu & Poole 2017;
  Maddison, Mnih & Teh 2017), reparameterised, with the temperature ``tau`` a buffer of the model
  and of its guide (:meth:`MIVAE.set_temperature`, annealed by a schedule such as
  :class:`~pyro_spvae.infer.ExponentialSchedule`).

**The relaxed objective and its limit.** :class:`RelaxedOneHotCode` scores a point ``y`` of the
simplex with the categorical log-mass extended linearly, ``log p(y) = sum_k y_k log pi_k`` (equal to
``log pi_k`` at the vertex ``y = e_k``). With a guide ``q(c | x) = RelaxedOneHotCode(tau, q(x))``
every ELBO of Pyro then estimates

.. math:: \mathcal{L}_\tau = \mathbb{E}_{q(z|x)}\,\mathbb{E}_{y \sim \mathrm{GS}_\tau(q)}
          \Big[\log p(x \mid z, y) + \sum_k y_k \log \frac{1/n}{q_k(x)}\Big]
          - \mathrm{KL}(q(z|x) \,\|\, p(z)).

Since ``argmax_k y_k = argmax_k (log q_k + g_k)`` has law ``q`` for every ``tau`` (the Gumbel-max
trick) and ``y -> e_argmax`` almost surely as ``tau -> 0``, ``L_tau`` tends to the ELBO of the
categorical model summed over ``c`` (what ``TraceEnum_ELBO`` computes with an enumerated guide);
the relaxed term ``sum_k y_k log(q_k n)`` tends to JointVAE's analytic ``KL(q(c|x) || U_n)``, which
is also registered as ``kl_divergence`` between two :class:`RelaxedOneHotCode` (used by
``TraceMeanField_ELBO`` and :class:`~pyro_spvae.infer.CapacityELBO`). With ``hard=True``
(:meth:`eval` mode, or ``straight_through=True`` in the guide) the code is the exact one-hot draw
``e_argmax`` with straight-through gradients (Jang et al. 2017, §2.2), and the model *is* the
categorical one: log-likelihood evaluation of a relaxed model is done in eval mode.

``max_plate_nesting = 1``; every op accepts extra leading particle and enumeration dims.
"""

from __future__ import annotations

from collections.abc import Sequence

import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F
from pyro.nn import PyroModule
from torch import nn
from torch.distributions import Distribution, register_kl
from torch.distributions.utils import clamp_probs

from pyro_spvae.nn.builders import build_decoder
from pyro_spvae.nn.likelihoods import Likelihood, make_likelihood
from pyro_spvae.validation import (
    check_bool,
    check_choice,
    check_event_shape,
    check_hidden,
    check_int,
    check_module_data,
    check_network_input,
    check_positive_float,
    check_positive_int,
)

__all__ = ["CODES", "MIVAE", "RelaxedOneHotCode"]

#: How the categorical code is handled (see the module docstring).
CODES: tuple[str, ...] = ("categorical", "relaxed")


class RelaxedOneHotCode(dist.RelaxedOneHotCategorical):
    r"""Gumbel-softmax relaxation of a one-hot categorical code whose log-probability is the
    categorical log-mass extended linearly to the simplex (see the module docstring).

    - ``rsample``: ``y = softmax((logits + g) / temperature)`` (Jang et al. 2017, §2), or with
      ``hard=True`` the one-hot ``e_argmax(y)`` in the forward pass (an exact categorical draw)
      with the gradient of ``y`` (straight-through, Jang et al. 2017, §2.2);
    - ``log_prob(y) = sum_k y_k log pi_k``, shape ``batch_shape``; at a vertex ``e_k`` this is the
      categorical ``log pi_k``. It is not the Concrete density of ``y`` (Maddison et al. 2017;
      Pyro's :class:`~pyro.distributions.RelaxedOneHotCategorical`): its role is to make the
      relaxed ELBO tend to the categorical one as ``temperature -> 0``.

    :param temperature: ``tau > 0`` (scalar tensor).
    :param probs: category probabilities ``(..., n)``; or
    :param logits: unnormalised log-probabilities ``(..., n)``.
    :param hard: one-hot values with straight-through gradients.
    """

    def __init__(self, temperature: torch.Tensor, probs: torch.Tensor | None = None,
                 logits: torch.Tensor | None = None, hard: bool = False,
                 validate_args: bool | None = None) -> None:
        super().__init__(temperature, probs=probs, logits=logits, validate_args=validate_args)
        self.hard = check_bool("hard", hard)

    def expand(self, batch_shape, _instance=None) -> RelaxedOneHotCode:
        new = self._get_checked_instance(RelaxedOneHotCode, _instance)
        new = super().expand(batch_shape, _instance=new)
        new.hard = self.hard
        return new

    def rsample(self, sample_shape: torch.Size | tuple[int, ...] = ()) -> torch.Tensor:
        shape = self._extended_shape(sample_shape)
        logits = self.logits
        u = clamp_probs(torch.rand(shape, dtype=logits.dtype, device=logits.device))
        # a softmax rather than exp(log-softmax) (torch's sampler), which leaves the simplex by
        # ~1e-5 in float32 at low temperatures
        soft = torch.softmax((logits - (-u.log()).log()) / self.temperature, dim=-1)
        if not self.hard:
            return soft
        hard = F.one_hot(soft.argmax(-1), soft.shape[-1]).to(soft.dtype)
        return hard + (soft - soft.detach())  # exactly one-hot forward, gradient of soft backward

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        if self._validate_args:
            self._validate_sample(value)
        return (value * self.logits).sum(-1)


@register_kl(RelaxedOneHotCode, RelaxedOneHotCode)
def _kl_relaxed_code(q: RelaxedOneHotCode, p: RelaxedOneHotCode) -> torch.Tensor:
    """``KL(q || p)`` of the underlying categoricals, ``sum_k q_k (log q_k - log p_k)`` (the
    temperature-free limit of the relaxed term; JointVAE's discrete KL, Dupont 2018)."""
    return (q.probs * (q.logits - p.logits)).sum(-1)


class MIVAE(PyroModule):
    r"""Joint continuous + categorical latent VAE (see the module docstring for the model).

    :param event_shape: shape of one observation ``(C, H, W)`` (any non-empty shape with
        ``arch="dense"``).
    :param z_dim: number of continuous latent dimensions.
    :param n_categories: number of values ``n >= 2`` of the categorical code.
    :param code: ``"categorical"`` or ``"relaxed"`` (:data:`CODES`).
    :param temperature: initial temperature ``tau > 0`` of the relaxed code (the buffer
        ``temperature``; unused with ``code="categorical"``).
    :param hidden: hidden widths of the decoder MLP.
    :param likelihood: likelihood name or :class:`~pyro_spvae.nn.Likelihood`.
    :param arch: ``"dense"`` or ``"conv"``.
    :param activation: activation name or module.
    :param channels: convolution widths (``arch="conv"``).
    :param likelihood_kwargs: options of the likelihood head.
    :param stride: stride of the transposed convolutions (``arch="conv"``).
    :param init: weight initialisation, ``"torch"`` or ``"tf1"``.

    ``forward(x)`` with ``x`` of shape ``(B, *event_shape)`` is the Pyro model: sites ``"z"``
    ``(B, z_dim)``, ``"c"`` (``(B,)`` integers, or ``(B, n)`` points of the simplex when relaxed)
    and the observed ``"x"``.
    """

    max_plate_nesting = 1

    def __init__(self, event_shape: Sequence[int] = (1, 28, 28), z_dim: int = 10, n_categories: int = 10,
                 code: str = "categorical", temperature: float = 0.67, hidden: Sequence[int] = (200, 200),
                 likelihood: str | Likelihood = "bernoulli", arch: str = "dense",
                 activation: str | nn.Module = "softplus", channels: Sequence[int] = (32, 64),
                 likelihood_kwargs: dict | None = None, stride: int = 2, init: str = "torch") -> None:
        super().__init__()
        self.event_shape = check_event_shape("event_shape", event_shape)
        self.z_dim = check_positive_int("z_dim", z_dim)
        self.n_categories = check_int("n_categories", n_categories, 2)
        self.code = check_choice("code", code, CODES)
        self.register_buffer("temperature", torch.tensor(check_positive_float("temperature", temperature)))
        self.likelihood = make_likelihood(likelihood, self.event_shape, **(likelihood_kwargs or {}))
        self.arch = arch  # checked by build_decoder
        self.decoder = build_decoder(arch, self.z_dim + self.n_categories, self.likelihood.param_shape,
                                     check_hidden("hidden", hidden), activation, channels,
                                     num_heads=self.likelihood.num_params, stride=stride, init=init)

    def set_temperature(self, value: float) -> None:
        """Set the relaxed code's temperature in place (e.g. each step of an annealing schedule)."""
        self.temperature.fill_(check_positive_float("temperature", value))

    def validate(self, x: object) -> torch.Tensor:
        """Check a data batch ``x`` of shape ``(B, *event_shape)`` (see :meth:`VAE.validate
        <pyro_spvae.models.VAE.validate>`)."""
        x = check_module_data("x", x, self.event_shape, self)
        return self.likelihood.validate(x)

    def one_hot(self, c: torch.Tensor) -> torch.Tensor:
        """The code as the decoder reads it, ``(..., n)``: ``onehot(c)`` for integer categories
        ``c`` of shape ``(...)``, or ``c`` itself for points of the simplex ``(..., n)``."""
        if c.dtype.is_floating_point:
            return check_network_input("c", c, self.temperature, (self.n_categories,))
        return F.one_hot(c, self.n_categories).to(self.temperature.dtype)

    def decode(self, z: torch.Tensor, code: torch.Tensor) -> Distribution:
        """``p(x | z, c)`` for ``z`` of shape ``(..., z_dim)`` and a one-hot or relaxed code
        ``(..., n)`` (leading dims broadcast, e.g. an enumeration dim): batch shape the broadcast
        leading dims, event shape ``event_shape``."""
        check_network_input("z", z, next(self.parameters()), (self.z_dim,))
        check_network_input("code", code, next(self.parameters()), (self.n_categories,))
        lead = torch.broadcast_shapes(z.shape[:-1], code.shape[:-1])
        h = torch.cat([z.expand(*lead, self.z_dim), code.expand(*lead, self.n_categories)], dim=-1)
        return self.likelihood(self.decoder(h))

    def code_prior(self, like: torch.Tensor | None = None) -> Distribution:
        """The prior of ``"c"`` (uniform over ``n``; batch shape ``()``): a
        :class:`~pyro.distributions.Categorical`, or a :class:`RelaxedOneHotCode` at the current
        temperature (hard one-hot draws in eval mode)."""
        ref = self.temperature if like is None else like
        logits = torch.zeros(self.n_categories, dtype=ref.dtype, device=ref.device)
        if self.code == "categorical":
            return dist.Categorical(logits=logits)
        return RelaxedOneHotCode(self.temperature.to(ref.dtype), logits=logits, hard=not self.training)

    def forward(self, x: torch.Tensor) -> None:
        """The Pyro model for a batch ``x`` of shape ``(B, *event_shape)``."""
        self.validate(x)
        with pyro.plate("data", x.shape[0], dim=-1):
            # batch dims come from the plate (JIT-traceable, see VAE.forward)
            zero = torch.zeros((), dtype=x.dtype, device=x.device)
            z = pyro.sample("z", dist.Normal(zero, zero + 1).expand([self.z_dim]).to_event(1))
            c = pyro.sample("c", self.code_prior(x))
            pyro.sample("x", self.decode(z, self.one_hot(c)), obs=x)

    @torch.no_grad()
    def sample(self, num_samples: int, mean: bool = True) -> torch.Tensor:
        """Draw ``num_samples`` images ``(num_samples, *event_shape)``: ``z ~ N(0, I)``, ``c``
        uniform (one-hot), then the mean of ``p(x | z, c)`` (``mean=True``) or a sample."""
        num_samples = check_positive_int("num_samples", num_samples)
        ref = self.temperature
        z = torch.randn(num_samples, self.z_dim, dtype=ref.dtype, device=ref.device)
        c = torch.randint(self.n_categories, (num_samples,), device=ref.device)
        px = self.decode(z, self.one_hot(c))
        return px.mean if mean else px.sample()
