"""The model-family registry and the ``(model, guide)`` builders.

This module sits above :mod:`pyro_spvae.models` and :mod:`pyro_spvae.guides` (which never import
each other's private names, and models never import guides): a builder is the one place where a
model and its matching guide meet. The trainer, the evaluation API and the CLI look families up in
:data:`MODELS` by name.

Adding a model family
---------------------
1. a model file ``models/<family>.py`` (a :class:`~pyro.nn.PyroModule` whose ``forward(x)`` is the
   Pyro model; see ``CONTRIBUTING.md`` for the model contract);
2. a guide file ``guides/<family>.py`` (a :class:`~pyro.nn.PyroModule` whose ``forward(x)`` samples
   the model's latent sites);
3. one registry entry here: a builder ``build_<family>(event_shape, **hyper_parameters) -> (model,
   guide)`` and its line in :data:`MODELS`.

``tests/test_registry.py`` then runs the family end to end (every Pyro ELBO, the IWAE estimator,
sampling and evaluation) without further changes; give it small hyper-parameters in its
``SMALL_KWARGS`` table to keep it fast.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from pyro.nn import PyroModule

from pyro_spvae.guides.dlgmm import EnumeratedMixtureGuide, MixtureGuide, StickBreakingGuide
from pyro_spvae.guides.gaussian import GaussianGuide
from pyro_spvae.guides.linear_gaussian import LinearGaussianGuide
from pyro_spvae.guides.mivae import MIVAEGuide
from pyro_spvae.guides.spvae import SPVAEGuide
from pyro_spvae.guides.vhp_vae import VHPVAEGuide
from pyro_spvae.models.dlgmm import DLGMM
from pyro_spvae.models.linear_gaussian import LinearGaussianVAE
from pyro_spvae.models.mivae import MIVAE
from pyro_spvae.models.spvae import SPVAE
from pyro_spvae.models.vae import VAE
from pyro_spvae.models.vhp_vae import VHPVAE
from pyro_spvae.spn.region_graph import region_graph_from_spec
from pyro_spvae.validation import check_event_shape

__all__ = ["DLGMM_GUIDES", "MODELS", "build_dlgmm", "build_dlgmm_dp", "build_linear_gaussian", "build_mivae",
           "build_mivae_relaxed", "build_spvae",
           "build_vae", "build_vhp_vae"]


def build_vae(event_shape: Sequence[int] = (1, 28, 28), *, z_dim: int = 50,
              hidden: Sequence[int] = (200, 200), likelihood: str = "bernoulli", arch: str = "dense",
              activation: str = "softplus", channels: Sequence[int] = (32, 64),
              likelihood_kwargs: dict | None = None, min_scale: float = 1e-4,
              decoder_hidden: Sequence[int] | None = None, encoder_heads: str = "shared",
              decoder_heads: str = "shared", posterior_scale: str = "softplus", stride: int = 2,
              out_layer: str = "conv", init: str = "torch") -> tuple[VAE, GaussianGuide]:
    """A :class:`~pyro_spvae.models.VAE` and its :class:`~pyro_spvae.guides.GaussianGuide` with
    mirrored encoder/decoder architectures (same ``hidden``, ``arch``, ``activation``, ``channels``,
    ``stride`` and ``init``).

    The SPVAE reference code's VAEs (Tan & Peharz 2019; see ``docs/spvae.md`` and the ``paper-*``
    presets of :mod:`pyro_spvae.training.presets`) are ``encoder_heads="separate"``,
    ``decoder_heads="separate"`` (dense), ``posterior_scale="precision"``, ``init="tf1"``, the
    likelihood options of :class:`~pyro_spvae.models.VAE` and, for conv, ``decoder_hidden=()`` and
    ``out_layer="deconv"``.

    :param event_shape: shape of one observation, e.g. ``(1, 28, 28)``.
    :param decoder_hidden: hidden widths of the decoder (default: ``hidden``, those of the encoder).
    :param min_scale: lower bound on the guide's posterior scale (``posterior_scale="softplus"``).
    :param encoder_heads: the guide's ``"shared"`` or ``"separate"`` mean and scale networks.
    :param posterior_scale: ``"softplus"`` or ``"precision"`` (see
        :class:`~pyro_spvae.guides.GaussianGuide`); the other keywords are
        :class:`~pyro_spvae.models.VAE`'s.
    :returns: ``(model, guide)``.
    """
    model = VAE(event_shape, z_dim=z_dim, hidden=hidden if decoder_hidden is None else decoder_hidden,
                likelihood=likelihood, arch=arch, activation=activation, channels=channels,
                likelihood_kwargs=likelihood_kwargs, decoder_heads=decoder_heads, stride=stride,
                out_layer=out_layer, init=init)
    guide = GaussianGuide(event_shape, z_dim=z_dim, hidden=hidden, arch=arch, activation=activation,
                          channels=channels, min_scale=min_scale, posterior_scale=posterior_scale,
                          encoder_heads=encoder_heads, stride=stride, init=init)
    return model, guide


def build_linear_gaussian(event_shape: Sequence[int] | int, z_dim: int = 2,
                          noise_scale: float = 0.5) -> tuple[LinearGaussianVAE, LinearGaussianGuide]:
    """A :class:`~pyro_spvae.models.LinearGaussianVAE` (probabilistic PCA) on flat vectors and its
    amortised mean-field :class:`~pyro_spvae.guides.LinearGaussianGuide`.

    :param event_shape: ``(D,)`` or ``D``; the data are vectors of that length.
    :param z_dim: latent dimension ``d``.
    :param noise_scale: initial observation noise ``s``.
    :raises ValueError: for an ``event_shape`` with more than one dimension.
    :returns: ``(model, guide)``.
    """
    shape = check_event_shape("event_shape", event_shape)
    if len(shape) != 1:
        raise ValueError(f"the linear-Gaussian model takes flat vectors: event_shape (D,), got {shape}")
    model = LinearGaussianVAE(shape[0], z_dim, noise_scale=noise_scale)
    return model, LinearGaussianGuide(shape[0], z_dim)


def build_spvae(event_shape: Sequence[int] = (1, 28, 28), **kwargs: Any) -> tuple[SPVAE, SPVAEGuide]:
    """An :class:`~pyro_spvae.models.SPVAE` and its :class:`~pyro_spvae.guides.SPVAEGuide` sharing
    region graph and leaf settings.

    Keyword arguments go to :class:`~pyro_spvae.models.SPVAE`; ``guide_hidden`` (default: the
    model's ``hidden``), ``mask_input``, ``posterior_scale`` and ``encoder_heads`` go to
    :meth:`SPVAEGuide.from_model <pyro_spvae.guides.SPVAEGuide.from_model>` (which also takes the
    model's ``stride`` and ``init``). The SPVAE reference code's leaves (Tan & Peharz 2019; the
    ``paper-*`` presets) are ``likelihood_kwargs`` ``{"scale": "precision", "loc": "sigmoid"}`` or
    ``{"eps": 1e-7}``, ``decoder_heads="separate"`` and ``encoder_heads="separate"`` (dense),
    ``posterior_scale="precision"`` and ``init="tf1"``. ``region_graph`` may also be a plain dict (for JSON
    configs), see :func:`~pyro_spvae.spn.region_graph.region_graph_from_spec`:
    ``{"type": "poon_domingos", "steps": [7]}`` or
    ``{"type": "random_binary_trees", "depth": 4, "num_repetitions": 2, "seed": 0}``.

    :returns: ``(model, guide)``.
    """
    guide_kw = {k: kwargs.pop(k) for k in ("guide_hidden", "mask_input", "posterior_scale", "encoder_heads")
                if k in kwargs}
    if isinstance(kwargs.get("region_graph"), dict):
        kwargs["region_graph"] = region_graph_from_spec(kwargs["region_graph"], event_shape)
    model = SPVAE(event_shape, **kwargs)
    guide = SPVAEGuide.from_model(model, hidden=guide_kw.pop("guide_hidden", None), **guide_kw)
    return model, guide


#: Guides of the DLGMM families (Nalisnick, Hertel & Smyth 2016; see :mod:`pyro_spvae.guides.dlgmm`):
#: ``"a"`` pathwise mixture posterior, ``"b"`` enumerated component index, ``"c"`` the guide of
#: ``"a"`` for the per-component objective :class:`~pyro_spvae.infer.MixtureELBO`, ``"d"``
#: Kumaraswamy stick-breaking posterior (with a pathwise mixture for ``z``).
DLGMM_GUIDES = ("a", "b", "c", "d")


def build_dlgmm(event_shape: Sequence[int] = (1, 28, 28), *, guide: str = "a", z_dim: int = 50,
                num_components: int = 10, hidden: Sequence[int] = (200, 200), likelihood: str = "bernoulli",
                arch: str = "dense", activation: str = "softplus", channels: Sequence[int] = (32, 64),
                likelihood_kwargs: dict | None = None, min_scale: float = 1e-4,
                enumerate: str | None = "parallel", **model_kwargs: Any) -> tuple[DLGMM, PyroModule]:
    """A :class:`~pyro_spvae.models.DLGMM` (default: finite mixture with learnt global weights) and
    the guide ``guide`` (:data:`DLGMM_GUIDES`) with a mirrored encoder.

    Models without stick sites (``prior="finite", weights="global"``) take ``"a"``/``"c"``
    (:class:`~pyro_spvae.guides.MixtureGuide`, marginal model) or ``"b"``
    (:class:`~pyro_spvae.guides.EnumeratedMixtureGuide`, model with ``component_site=True``); models
    with stick sites take ``"d"`` (:class:`~pyro_spvae.guides.StickBreakingGuide`, pathwise) or
    ``"b"`` (the same sticks with an enumerated component index).

    :param enumerate: ``infer={"enumerate": ...}`` of the guide's ``"c"`` (guide ``"b"``); ``None``
        samples it (for importance-weighted estimators and the evaluation API).
    :param model_kwargs: further :class:`~pyro_spvae.models.DLGMM` keywords (``prior``, ``weights``,
        ``alpha``, ``learn_weights``, ``init_spread``); the other keywords are shared by both.
    :raises ValueError: for an unknown guide or one that does not fit the model's weights.
    :returns: ``(model, guide)``.
    """
    if guide not in DLGMM_GUIDES:
        raise ValueError(f"unknown DLGMM guide {guide!r}; choose one of {list(DLGMM_GUIDES)}")
    net = {"z_dim": z_dim, "num_components": num_components, "hidden": hidden, "arch": arch,
           "activation": activation, "channels": channels}
    model = DLGMM(event_shape, likelihood=likelihood, likelihood_kwargs=likelihood_kwargs,
                  component_site=guide == "b", **net, **model_kwargs)
    if model.stick_site is None:
        if guide == "d":
            raise ValueError("guide 'd' (Kumaraswamy sticks) needs a model with stick sites: prior='dp' or "
                             "weights='local'")
        cls = EnumeratedMixtureGuide if guide == "b" else MixtureGuide
        extra = {"enumerate": enumerate} if guide == "b" else {}
        return model, cls(event_shape, min_scale=min_scale, **net, **extra)
    if guide in ("a", "c"):
        raise ValueError(f"a model with stick sites needs guide 'd' (pathwise; also for MixtureELBO) or 'b', "
                         f"got {guide!r}")
    components = "enumerated" if guide == "b" else "pathwise"
    return model, StickBreakingGuide(event_shape, min_scale=min_scale, sticks=model.stick_site,
                                     components=components, enumerate=enumerate, **net)


def build_dlgmm_dp(event_shape: Sequence[int] = (1, 28, 28), *, guide: str = "d", weights: str = "local",
                   alpha: float = 1.0, **kwargs: Any) -> tuple[DLGMM, PyroModule]:
    """:func:`build_dlgmm` with a truncated Dirichlet-process prior (``prior="dp"``; the truncation
    is ``num_components``), per-data-point sticks by default (as in the paper) and guide ``"d"``.

    :returns: ``(model, guide)``.
    """
    return build_dlgmm(event_shape, guide=guide, prior="dp", weights=weights, alpha=alpha, **kwargs)


def build_vhp_vae(event_shape: Sequence[int] = (1, 28, 28), *, z_dim: int = 32, zeta_dim: int | None = None,
                  num_prior_samples: int = 5, hidden: Sequence[int] = (200, 200),
                  prior_hidden: Sequence[int] | None = None, decoder_hidden: Sequence[int] | None = None,
                  arch: str = "dense", activation: str = "softplus", channels: Sequence[int] = (32, 64),
                  stride: int = 2, init: str = "torch", min_scale: float = 1e-4,
                  posterior_scale: str = "softplus", encoder_heads: str = "shared",
                  **model_kwargs: Any) -> tuple[VHPVAE, VHPVAEGuide]:
    """A :class:`~pyro_spvae.models.VHPVAE` (VAE with the learnt hierarchical prior of Klushyn et al.
    2019) and its :class:`~pyro_spvae.guides.VHPVAEGuide` ``q(z | x)``, with mirrored encoder and
    decoder (same ``hidden``, ``arch``, ``activation``, ``channels``, ``stride``, ``init``).

    ``q(zeta | z)`` is part of the model (its prior's density bound), so the guide is the plain
    Gaussian encoder. Train under the paper's reconstruction constraint by wrapping the ELBO in
    :class:`~pyro_spvae.infer.GECO` (``rule="vhp"``).

    :param zeta_dim: dimension of ``zeta`` (default: ``z_dim``).
    :param num_prior_samples: ``K``, importance samples of ``zeta`` in ``log p(z)``.
    :param prior_hidden: hidden widths of ``p(z | zeta)`` and ``q(zeta | z)`` (default: ``hidden``).
    :param decoder_hidden: hidden widths of the decoder (default: ``hidden``).
    :param min_scale: lower bound on the guide's posterior scale; ``posterior_scale`` and
        ``encoder_heads`` are the guide's too; the other keywords (``likelihood``,
        ``likelihood_kwargs``, ``decoder_heads``, ``out_layer``, ``prior_min_scale``) go to the model.
    :returns: ``(model, guide)``.
    """
    model = VHPVAE(event_shape, z_dim=z_dim, zeta_dim=zeta_dim, num_prior_samples=num_prior_samples,
                   hidden=hidden if decoder_hidden is None else decoder_hidden, prior_hidden=prior_hidden,
                   arch=arch, activation=activation, channels=channels, stride=stride, init=init,
                   **model_kwargs)
    guide = VHPVAEGuide(event_shape, z_dim=z_dim, hidden=hidden, arch=arch, activation=activation,
                        channels=channels, min_scale=min_scale, posterior_scale=posterior_scale,
                        encoder_heads=encoder_heads, stride=stride, init=init)
    return model, guide


def build_mivae(event_shape: Sequence[int] = (1, 28, 28), *, z_dim: int = 10, n_categories: int = 10,
                code: str = "categorical", temperature: float = 0.67, hidden: Sequence[int] = (200, 200),
                likelihood: str = "bernoulli", arch: str = "dense", activation: str = "softplus",
                channels: Sequence[int] = (32, 64), likelihood_kwargs: dict | None = None,
                min_scale: float = 1e-4, enumerate: str | None = "parallel", straight_through: bool = False,
                stride: int = 2, init: str = "torch") -> tuple[MIVAE, MIVAEGuide]:
    """A :class:`~pyro_spvae.models.MIVAE` (continuous ``z`` and an ``n_categories``-way code ``c``;
    Dupont 2018, Serdega & Kim 2020) and its mirrored :class:`~pyro_spvae.guides.MIVAEGuide`.

    With ``code="categorical"`` the guide marks ``"c"`` for ``TraceEnum_ELBO`` (``enumerate``;
    ``None`` samples it); with ``code="relaxed"`` it is a Gumbel-softmax code whose temperature
    buffer the guide shares with the model, so :meth:`MIVAE.set_temperature
    <pyro_spvae.models.MIVAE.set_temperature>` anneals both. Train with any ELBO, wrapped in
    :class:`~pyro_spvae.infer.MIRegularizedELBO` for the MI regulariser or replaced by
    :class:`~pyro_spvae.infer.CapacityELBO` for the JointVAE baseline (relaxed code).

    :returns: ``(model, guide)``.
    """
    net = {"z_dim": z_dim, "n_categories": n_categories, "code": code, "temperature": temperature,
           "hidden": hidden, "arch": arch, "activation": activation, "channels": channels, "stride": stride,
           "init": init}
    model = MIVAE(event_shape, likelihood=likelihood, likelihood_kwargs=likelihood_kwargs, **net)
    guide = MIVAEGuide(event_shape, min_scale=min_scale, enumerate=enumerate,
                       straight_through=straight_through, **net)
    guide.temperature = model.temperature  # one buffer for both (see above)
    return model, guide


def build_mivae_relaxed(event_shape: Sequence[int] = (1, 28, 28), *, likelihood: str = "bernoulli",
                        **kwargs: Any) -> tuple[MIVAE, MIVAEGuide]:
    """:func:`build_mivae` with the Gumbel-softmax code (``code="relaxed"``), JointVAE's setting.

    :returns: ``(model, guide)``.
    """
    return build_mivae(event_shape, code="relaxed", likelihood=likelihood, **kwargs)


#: Model-family name -> builder ``(event_shape, **hyper_parameters) -> (model, guide)``.
MODELS: dict[str, Callable[..., tuple[PyroModule, PyroModule]]] = {
    "vae": build_vae,
    "spvae": build_spvae,
    "linear_gaussian": build_linear_gaussian,
    "dlgmm": build_dlgmm,
    "dlgmm-dp": build_dlgmm_dp,
    "mivae": build_mivae,
    "mivae-relaxed": build_mivae_relaxed,
    "vhp-vae": build_vhp_vae,
}
