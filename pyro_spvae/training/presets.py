"""Named training configurations for ``pyro-spvae train --preset NAME``.

Each preset is a partial :class:`~pyro_spvae.training.config.TrainConfig` (a dict of field values);
command-line options override it. Add a preset by adding an entry to :data:`PRESETS`.

The model families of the structured priors have presets of their own: ``dlgmm-{a,b,c}`` and
``dlgmm-dp-{d,a}`` (latent Gaussian mixtures, one per guide), ``vhp-vae``, ``vae-geco`` and ``iwae``
(hierarchical priors and the GECO multiplier), ``mivae``, ``mivae-mi``, ``mivae-relaxed-mi`` and
``mivae-relaxed`` (the JointVAE capacity baseline).

Two families reproduce the SPVAE paper (Tan & Peharz 2019, Table 1): ``{spvae,vae,conv-spvae,
conv-vae}-{continuous,discrete}`` compare SPVAEs with VAE baselines of the SAME parameter count
(a comparison the paper never made), and ``paper-*`` are the paper's own protocol and architectures
as its reference code runs them (grid-searched baselines, see the comment above them).
"""

from __future__ import annotations

from typing import Any

from pyro_spvae.training.config import TrainConfig

__all__ = ["DEFAULT_PRESET", "PAPER_ARCHITECTURES", "PRESETS", "paper_preset_name", "preset_config"]

#: Preset name -> partial configuration.
PRESETS: dict[str, dict[str, Any]] = {
    # The default job: a dense VAE on the embedded MNIST subset with dynamic binarisation and a
    # Bernoulli likelihood: 2300 steps, ~2-4 minutes on 2 CPU cores (test NLL ~119 nats, 5000 samples).
    "vae-binary": {
        "model": "vae",
        "model_kwargs": {"z_dim": 32, "hidden": [200, 200], "arch": "dense", "likelihood": "bernoulli"},
        "data": "embedded",
        "transform": "binary-dynamic",
        "elbo": "trace",
        "batch_size": 128,
        "lr": 1e-3,
        "epochs": 100,
        "eval_every": 100,
        "patience": 10,
    },
}

# --- SPVAE reproduction (Tan & Peharz, ICML 2019, Table 1; see docs/spvae.md) ------------------
# Eight configurations: {SPVAE, VAE, Conv-SPVAE, Conv-VAE} x MNIST {continuous, discrete}.
# Adam lr 1e-3 for the VAE parameters and 1e-2 for the SPN sum weights (params named "spn..."),
# batch 128, validation every 128 batches with patience 10; continuous presets also train the
# Gaussian log-precisions at 1e-2. SPVAEs train with the leaf-averaged
# importance-weighted bound (K = 5, "spn-leaf-iw" = pyro_spvae.infer.SPNLeafIWELBO); the VAE
# baselines with the IWAE bound at the same K. Baselines have the SPVAE's parameter count
# (model + guide): dense 234k (VAE hidden 123x123), conv 361k (Conv-VAE channels 16/32, hidden 108).
# scripts/reproduce_spvae.py trains all eight and evaluates the 5000-sample bound.
_SPVAE_COMMON: dict[str, Any] = {
    "data": "mnist",
    "batch_size": 128,
    "lr": 1e-3,
    "epochs": 500,
    "eval_every": 128,
    "patience": 10,
    "num_particles": 5,
}
#: Pyro names of the Gaussian log-precision / log-scale parameters (VAE head, SPVAE leaves).
_PRECISION = r"(^|\.)log_(precision|scale)$"
for _data, _lik in (("continuous", "gaussian"), ("discrete", "binomial")):
    for _name, _model, _elbo, _kw in (
        ("spvae", "spvae", "spn-leaf-iw", {"arch": "dense"}),
        ("vae", "vae", "iwae", {"arch": "dense", "z_dim": 25, "hidden": [123, 123]}),
        ("conv-spvae", "spvae", "spn-leaf-iw", {"arch": "conv"}),
        ("conv-vae", "vae", "iwae", {"arch": "conv", "z_dim": 25, "hidden": [108], "channels": [16, 32]}),
    ):
        PRESETS[f"{_name}-{_data}"] = {
            **_SPVAE_COMMON,
            "model": _model,
            "model_kwargs": {**_kw, "likelihood": _lik},
            "transform": f"spvae-{_data}",
            "elbo": _elbo,
            "group_lrs": {
                **({"^spn": 1e-2} if _model == "spvae" else {}),
                # the learnt per-pixel precision of the Gaussian likelihood (our choice, not the paper's:
                # at 1e-3 Adam needs ~10k steps to move a log-precision from 0 to log(255^2) ~ 11)
                **({_PRECISION: 1e-2} if _lik == "gaussian" else {}),
            },
        }

# --- SPVAE paper protocol (Tan & Peharz, ICML 2019, Table 1, as the authors' reference code runs it;
# see docs/spvae.md) -------------------------------------------------------------------------------
# The architectures and training settings of the runs behind Table 1, read from the reference code
# (github.com/cambridge-mlg/SPVAE: scripts/{iwae,sp_iwae,conviwae,sp_conviwae}.py, src/tfdensitynet.py,
# src/tfconvnet.py, main/hptune_*.py and the 5000elbo_*/compile notebooks): softplus networks with the
# reference's TF1 initialisation ("tf1": He-truncated-normal dense kernels, Glorot-uniform conv
# kernels, zero biases); Gaussian encoders with precision 1 + f^2 (dense: separate mean and precision
# networks; conv: a shared trunk with two linear heads); Gaussian likelihood with mean sigmoid(g_mu)
# and precision 1 + g_p^2 predicted per example and pixel (dense: separate networks; conv: two
# transposed-convolution heads), or Binomial(255) with p squeezed into [1e-7, 1 - 1e-7]; one Adam
# learning rate for every parameter (1e-3 VAEs, 1e-2 SP models, sum weights included), no weight
# decay, batch 128, the K = 5 bound (per leaf for SPVAEs), validation of the same bound on every
# validation image every 128 steps, stop after 11 validations without a new best (patience 11,
# min_rel_improvement 0) and evaluate best.pt. No step cap in the reference (epochs=1000 here is one).
# Deviations: PyTorch's symmetric "same" padding (TF pads stride-2 convolutions bottom/right: same
# shapes and counts, alignment off by a pixel); all 50k training images (the reference's input
# pipeline sees only its first ~17.4k, docs/spvae.md); the SPN's sum weights are einsum logits plus
# mixing logits (346 redundant logits more than the reference's flat sums, same model family).
# Parameter counts (model + guide; tests/test_presets_paper.py) equal the reference's num_weights.
_PAPER_COMMON: dict[str, Any] = {
    "batch_size": 128,
    "num_particles": 5,
    "epochs": 1000,
    "eval_every": 128,
    "patience": 11,
    "min_rel_improvement": 0.0,
    "group_lrs": {},
}
#: Leaf/VAE likelihood options of the reference, by data variant.
_PAPER_LIKELIHOOD: dict[str, dict[str, Any]] = {
    "continuous": {"likelihood": "gaussian", "likelihood_kwargs": {"scale": "precision", "loc": "sigmoid"}},
    "discrete": {"likelihood": "binomial", "likelihood_kwargs": {"eps": 1e-7}},
}
_PAPER_NETS: dict[str, Any] = {"activation": "softplus", "init": "tf1", "posterior_scale": "precision"}


def _paper_vae(z: int, hidden: list[int]) -> dict[str, Any]:
    """Dense VAE of the reference: separate mean/precision MLPs on both sides."""
    return {**_PAPER_NETS, "arch": "dense", "z_dim": z, "hidden": hidden, "encoder_heads": "separate",
            "decoder_heads": "separate"}


def _paper_conv_vae(z: int, dense: list[int]) -> dict[str, Any]:
    """Conv VAE of the reference: conv 32 -> conv 64 (stride 2), dense ``dense``, two heads; decoder
    dense -> transposed conv 32 -> transposed-conv heads (no hidden dense layer)."""
    return {**_PAPER_NETS, "arch": "conv", "z_dim": z, "channels": [32, 64], "hidden": dense,
            "decoder_hidden": [], "stride": 2, "out_layer": "deconv"}


def _paper_spvae(z: int, hidden: list[int], step: int) -> dict[str, Any]:
    """SPVAE of the reference: Poon-Domingos graph with one coarse step, 2 sums and 2 leaf VAEs per
    region, dense leaf VAEs with separate heads."""
    return {**_PAPER_NETS, "arch": "dense", "z_dim": z, "hidden": hidden, "sum_k": 2, "leaf_k": 2,
            "region_graph": {"type": "poon_domingos", "steps": [step]}, "encoder_heads": "separate",
            "decoder_heads": "separate"}


def _paper_conv_spvae(z: int, dense: list[int], step: int) -> dict[str, Any]:
    """Conv-SPVAE of the reference: leaf conv 4 -> conv 8 (stride 1), dense ``dense``, two heads."""
    return {**_PAPER_NETS, "arch": "conv", "z_dim": z, "channels": [4, 8], "hidden": [],
            "guide_hidden": dense, "stride": 1, "out_layer": "deconv", "sum_k": 2, "leaf_k": 2,
            "region_graph": {"type": "poon_domingos", "steps": [step]}}


#: The selected runs of the reference (``5000elbo_*`` notebooks): (family, data set, variant) ->
#: architecture. MNIST 28x28 (Poon-Domingos step 7); SVHN and CIFAR-10 greyscale 32x32 (step 8).
PAPER_ARCHITECTURES: dict[tuple[str, str, str], dict[str, Any]] = {
    ("vae", "mnist", "continuous"): _paper_vae(200, [300, 300]),
    ("vae", "mnist", "discrete"): _paper_vae(200, [300, 300]),
    ("conv-vae", "mnist", "continuous"): _paper_conv_vae(200, [64]),
    ("conv-vae", "mnist", "discrete"): _paper_conv_vae(100, [64]),
    ("spvae", "mnist", "continuous"): _paper_spvae(25, [30, 30], 7),
    ("spvae", "mnist", "discrete"): _paper_spvae(25, [30, 30], 7),
    ("conv-spvae", "mnist", "continuous"): _paper_conv_spvae(25, [64], 7),
    ("conv-spvae", "mnist", "discrete"): _paper_conv_spvae(25, [64], 7),
    ("vae", "svhn", "continuous"): _paper_vae(100, [300, 300]),
    ("vae", "svhn", "discrete"): _paper_vae(100, [600, 600]),
    ("vae", "cifar10", "continuous"): _paper_vae(50, [300, 300]),
    ("vae", "cifar10", "discrete"): _paper_vae(200, [600, 600]),
    ("spvae", "svhn", "continuous"): _paper_spvae(25, [32, 32], 8),
    ("spvae", "svhn", "discrete"): _paper_spvae(50, [100, 100], 8),
    ("spvae", "cifar10", "continuous"): _paper_spvae(25, [32, 32], 8),
    ("spvae", "cifar10", "discrete"): _paper_spvae(25, [30, 30], 8),
    ("conv-vae", "svhn", "continuous"): _paper_conv_vae(150, [128]),
    ("conv-vae", "svhn", "discrete"): _paper_conv_vae(200, [32]),
    ("conv-vae", "cifar10", "continuous"): _paper_conv_vae(150, [128]),
    ("conv-vae", "cifar10", "discrete"): _paper_conv_vae(150, [128]),
    ("conv-spvae", "svhn", "continuous"): _paper_conv_spvae(25, [64], 8),
    ("conv-spvae", "svhn", "discrete"): _paper_conv_spvae(25, [64], 8),
    ("conv-spvae", "cifar10", "continuous"): _paper_conv_spvae(25, [32], 8),
    ("conv-spvae", "cifar10", "discrete"): _paper_conv_spvae(25, [32], 8),
}


def paper_preset_name(family: str, dataset: str, variant: str) -> str:
    """``paper-{family}-{variant}`` on MNIST, ``paper-{family}-{variant}-{dataset}`` otherwise."""
    return f"paper-{family}-{variant}" + ("" if dataset == "mnist" else f"-{dataset}")


for (_family, _dataset, _variant), _arch in PAPER_ARCHITECTURES.items():
    _sp = "spvae" in _family
    PRESETS[paper_preset_name(_family, _dataset, _variant)] = {
        **_PAPER_COMMON,
        "model": "spvae" if _sp else "vae",
        "model_kwargs": {**_arch, **_PAPER_LIKELIHOOD[_variant]},
        "data": _dataset,
        "transform": f"spvae-{_variant}",
        "elbo": "spn-leaf-iw" if _sp else "iwae",
        "lr": 1e-2 if _sp else 1e-3,
    }

# --- Model families of issues 13-15 (dynamically binarised MNIST, dense 784-200-200 networks, Bernoulli
# likelihood, Adam 1e-3, batch 100; see docs/mixtures.md, docs/hierarchical_priors.md and
# docs/mutual_information.md). Test with e.g. `--data embedded --steps 20`. ----------------------------------
_FAMILY_COMMON: dict[str, Any] = {
    "data": "mnist",
    "transform": "binary-dynamic",
    "batch_size": 100,
    "lr": 1e-3,
    "epochs": 200,
    "eval_every": 500,
    "patience": 10,
}
_NET: dict[str, Any] = {"hidden": [200, 200], "arch": "dense", "likelihood": "bernoulli"}


def _family(model: str, elbo: str, **fields: Any) -> dict[str, Any]:
    """A preset of ``model`` trained with ``elbo``; ``model_kwargs`` extend the common networks."""
    kwargs = {**_NET, **fields.pop("model_kwargs", {})}
    return {**_FAMILY_COMMON, "model": model, "elbo": elbo, "model_kwargs": kwargs, **fields}


#: GECO's reconstruction constraint on binarised MNIST: kappa = 0.34, i.e. kappa^2 = 0.1156 nats per pixel
#: (about 90 nats per image; the setting recorded by scripts/vhp_results.py),
#: lambda updated every 10 steps after a warm-up of 200 (docs/hierarchical_priors.md, "Known pitfalls").
_GECO_NLL: dict[str, Any] = {"constraint": "nll", "constraint_site": "x", "kappa": 0.34, "geco_warmup": 200,
                             "geco_update_every": 10}
_DLGMM: dict[str, Any] = {"z_dim": 50, "num_components": 10}
_MIVAE: dict[str, Any] = {"z_dim": 10, "n_categories": 10}
PRESETS.update({
    # DLGMM (Nalisnick, Hertel & Smyth 2016): finite mixture with learnt global weights, one preset per guide:
    # (a) pathwise mixture posterior, (b) enumerated component index, (c) the paper's per-component estimator
    "dlgmm-a": _family("dlgmm", "trace", model_kwargs={**_DLGMM, "guide": "a"}),
    "dlgmm-b": _family("dlgmm", "enum", model_kwargs={**_DLGMM, "guide": "b"}),
    "dlgmm-c": _family("dlgmm", "mixture", model_kwargs={**_DLGMM, "guide": "c"}),
    # truncated Dirichlet process (alpha 1, truncation 10): (d) per-data-point Kumaraswamy sticks and the
    # pathwise mixture; (a) global sticks and the mixture posterior of guide (a); analytic stick KL
    "dlgmm-dp-d": _family("dlgmm-dp", "meanfield", model_kwargs={**_DLGMM, "guide": "d"}),
    "dlgmm-dp-a": _family("dlgmm-dp", "meanfield",
                          model_kwargs={**_DLGMM, "guide": "d", "weights": "global"}),
    # VHP-VAE (Klushyn et al. 2019): hierarchical prior (K = 5 samples of zeta) under the reconstruction
    # constraint with the VHP multiplier rule
    "vhp-vae": _family("vhp-vae", "trace", model_kwargs={"z_dim": 32, "num_prior_samples": 5,
                                                         "prior_hidden": [100, 100]},
                       geco_rule="vhp", **_GECO_NLL),
    # the same multiplier on the plain VAE (a beta-VAE with beta = 1 / lambda chosen by the constraint),
    # and the IWAE baseline (K = 5)
    "vae-geco": _family("vae", "trace", model_kwargs={"z_dim": 32}, geco_rule="geco",
                        **{**_GECO_NLL, "geco_nu": 1.0}),
    "iwae": _family("vae", "iwae", model_kwargs={"z_dim": 32}, num_particles=5),
    # MIVAE (Serdega & Kim 2020): 10 continuous dims and a 10-way code summed exactly (TraceEnum_ELBO),
    # without and with the MI regulariser on the code, read by its own Q network (with the guide as Q
    # a code the decoder ignores keeps a flat q(c|x) and the bound never takes off; a continuous dim
    # read through the decoder mean at the same weight swamps the code: docs/mutual_information.md)
    "mivae": _family("mivae", "enum", model_kwargs=dict(_MIVAE)),
    "mivae-mi": _family("mivae", "enum", model_kwargs=dict(_MIVAE), mi_sites=["c"], mi_weight=10.0,
                        mi_q="net"),
    # the relaxed (Gumbel-softmax) code: the paper's setting, temperature annealed 1 -> 0.3 with the MI
    # regulariser, and JointVAE's capacity objective (Dupont 2018: capacities 0 -> 5 nats over 25k steps,
    # gamma 30, temperature 0.67) as the baseline
    "mivae-relaxed-mi": _family("mivae-relaxed", "trace", model_kwargs=dict(_MIVAE),
                                mi_sites=["c"], mi_weight=10.0, mi_q="net", temperature_start=1.0,
                                temperature_end=0.3,
                                temperature_rate=1e-4),
    "mivae-relaxed": _family("mivae-relaxed", "capacity", model_kwargs={**_MIVAE, "temperature": 0.67},
                             capacity_sites=["z", "c"], capacity_max=5.0, capacity_steps=25000,
                             capacity_gamma=30.0),
})

#: Preset used when ``--preset`` is not given.
DEFAULT_PRESET = "vae-binary"


def preset_config(name: str, **overrides: Any) -> TrainConfig:
    """The :class:`TrainConfig` of preset ``name`` with ``overrides`` applied (``model_kwargs`` and
    ``group_lrs`` are merged key by key).

    :raises ValueError: for an unknown preset (listing the known ones) or invalid values.
    """
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(sorted(PRESETS))}")
    values = {k: (dict(v) if isinstance(v, dict) else v) for k, v in PRESETS[name].items()}
    for key, value in overrides.items():
        if key in ("model_kwargs", "group_lrs") and isinstance(value, dict):
            values[key] = {**values.get(key, {}), **value}
        else:
            values[key] = value
    return TrainConfig.from_dict(values)
