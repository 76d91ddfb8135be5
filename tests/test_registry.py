"""Every family registered in :data:`pyro_spvae.zoo.MODELS`, end to end on tiny examples.

The test iterates the registry, so a new family gets this coverage by registering: build, one SVI
step under each of Pyro's ``Trace_ELBO``, ``TraceEnum_ELBO``, ``RenyiELBO`` (vectorised particles)
and ``JitTrace_ELBO``, under :class:`~pyro_spvae.infer.TraceIWAE_ELBO` and, for sum-product
networks of VAEs (:class:`~pyro_spvae.infer.spn_leaves.SPNLeafModel`), under the SPN-aware bound
:class:`~pyro_spvae.infer.SPNLeafIWELBO`, for guides with a mixture posterior
(:class:`~pyro_spvae.infer.MixturePosteriorGuide`) under :class:`~pyro_spvae.infer.MixtureELBO`;
``model.sample``; and the evaluation API (:func:`pyro_spvae.evaluation.evaluate`) on a few examples.

A family needs an entry in :data:`CASES` (tiny hyper-parameters and a maker of valid data); a
registered family without one fails loudly (:func:`test_every_family_has_a_case`). A family may add
variant cases (``"dlgmm/b"``: ``Case.family`` names the registered family) and declare, with a
reason, the estimators that do not apply to it (``Case.exclude``): they are reported as skips.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from typing import NamedTuple

import pyro
import pytest
import torch
from pyro.infer import SVI, JitTrace_ELBO, RenyiELBO, Trace_ELBO, TraceEnum_ELBO
from pyro.nn import PyroModule
from pyro.optim import Adam

from pyro_spvae.evaluation import evaluate
from pyro_spvae.infer import MixtureELBO, MixturePosteriorGuide, SPNLeafIWELBO, TraceIWAE_ELBO
from pyro_spvae.infer.spn_bounds import SPNLeafGuide, SPNLeafModel
from pyro_spvae.zoo import MODELS

NUM_EXAMPLES = 3


class Case(NamedTuple):
    """A family's tiny test configuration."""

    event_shape: tuple[int, ...]
    kwargs: dict
    #: ``(generator, n) -> (n, *event_shape)`` data in the support of the family's likelihood
    data: Callable[[torch.Generator, int], torch.Tensor]
    #: the registered family, when the case name is a variant such as ``"dlgmm/b"`` (default: the name)
    family: str | None = None
    #: estimator name (a key of :data:`ESTIMATORS`) or ``"evaluate"`` -> why it does not apply; each
    #: exclusion is reported as a skip with its reason, never silently
    exclude: dict[str, str] = {}


def _binary(shape: tuple[int, ...]) -> Callable[[torch.Generator, int], torch.Tensor]:
    return lambda g, n: torch.bernoulli(torch.full((n, *shape), 0.5), generator=g)


_DLGMM = {"z_dim": 2, "num_components": 3, "hidden": (8,)}
_NO_JIT = ("Pyro's MixtureOfDiagNormals samples through a custom autograd.Function that torch.jit.trace "
           "cannot trace (RuntimeError: unordered_map::at)")
_ENUMERATED = ("the guide marks 'c' infer={'enumerate': 'parallel'}: only TraceEnum_ELBO sums it out (the "
               "other ELBOs warn and would sample it); case 'dlgmm/b-sampled' covers enumerate=None")
_SAMPLES_EVERY_SITE = ("importance sampling draws every latent site and refuses sites marked for "
                       "enumeration; case 'dlgmm/b-sampled' covers enumerate=None")

_MIVAE = {"z_dim": 2, "n_categories": 3, "hidden": (8,)}
_MIVAE_ENUMERATED = ("the guide marks 'c' infer={'enumerate': 'parallel'}: only TraceEnum_ELBO sums it out "
                     "(the other ELBOs warn and would sample it); case 'mivae/sampled' covers enumerate=None")
_MIVAE_SAMPLES_EVERY_SITE = ("importance sampling draws every latent site and refuses sites marked for "
                             "enumeration; case 'mivae/sampled' covers enumerate=None")


#: Family name -> tiny hyper-parameters and data. Add a line here when registering a family.
CASES: dict[str, Case] = {
    "vae": Case((1, 4, 4), {"z_dim": 2, "hidden": (8,)},
                lambda g, n: torch.bernoulli(torch.full((n, 1, 4, 4), 0.5), generator=g)),
    "spvae": Case((1, 4, 4), {"region_graph": {"type": "poon_domingos", "steps": [2]}, "z_dim": 2,
                              "hidden": (4,)},
                  lambda g, n: torch.rand(n, 1, 4, 4, generator=g)),
    "linear_gaussian": Case((5,), {"z_dim": 2}, lambda g, n: torch.randn(n, 5, generator=g)),
    # DLGMM (Nalisnick, Hertel & Smyth 2016): one case per guide of pyro_spvae.zoo.DLGMM_GUIDES
    "dlgmm": Case((1, 4, 4), _DLGMM, _binary((1, 4, 4)), exclude={"JitTrace_ELBO": _NO_JIT}),
    "dlgmm/b": Case((1, 4, 4), {**_DLGMM, "guide": "b"}, _binary((1, 4, 4)), family="dlgmm", exclude={
        "Trace_ELBO": _ENUMERATED, "RenyiELBO": _ENUMERATED, "JitTrace_ELBO": _ENUMERATED,
        "TraceIWAE_ELBO": _SAMPLES_EVERY_SITE, "evaluate": _SAMPLES_EVERY_SITE}),
    "dlgmm/b-sampled": Case((1, 4, 4), {**_DLGMM, "guide": "b", "enumerate": None}, _binary((1, 4, 4)),
                            family="dlgmm", exclude={
        "RenyiELBO": "RenyiELBO(alpha=0) drops the score-function term of the discrete guide site 'c' "
                     "(its surrogate adds alpha / (1 - alpha) log q(c) = 0), so q(c | x) gets no gradient"}),
    "dlgmm-dp": Case((1, 4, 4), {**_DLGMM, "alpha": 2.0}, _binary((1, 4, 4)),
                     exclude={"JitTrace_ELBO": _NO_JIT}),
    "dlgmm-dp/global": Case((1, 4, 4), {**_DLGMM, "weights": "global"}, _binary((1, 4, 4)), family="dlgmm-dp",
                            exclude={"JitTrace_ELBO": _NO_JIT}),
    # VHP-VAE (Klushyn et al. 2019): hierarchical prior with K = 2 importance samples of zeta
    "vhp-vae": Case((1, 4, 4), {"z_dim": 2, "zeta_dim": 2, "num_prior_samples": 2, "hidden": (8,),
                                "prior_hidden": (4,)}, _binary((1, 4, 4))),
    # MIVAE (Dupont 2018; Serdega & Kim 2020): z and a 3-way code, enumerated, sampled or relaxed
    "mivae": Case((1, 4, 4), _MIVAE, _binary((1, 4, 4)), exclude={
        "Trace_ELBO": _MIVAE_ENUMERATED, "RenyiELBO": _MIVAE_ENUMERATED, "JitTrace_ELBO": _MIVAE_ENUMERATED,
        "TraceIWAE_ELBO": _MIVAE_SAMPLES_EVERY_SITE, "evaluate": _MIVAE_SAMPLES_EVERY_SITE}),
    "mivae/sampled": Case((1, 4, 4), {**_MIVAE, "enumerate": None}, _binary((1, 4, 4)), family="mivae"),
    "mivae-relaxed": Case((1, 4, 4), _MIVAE, _binary((1, 4, 4))),
}


#: Every registered family and every case (variants such as ``"dlgmm/b"`` included).
FAMILIES = sorted(set(MODELS) | set(CASES))


def _skip_if_excluded(case: Case, family: str, what: str) -> None:
    if what in case.exclude:
        pytest.skip(f"{what} does not apply to {family}: {case.exclude[what]}")


def _is_spn(model: object, guide: object) -> bool:
    return isinstance(model, SPNLeafModel) and isinstance(guide, SPNLeafGuide)


#: Estimator name -> (factory, applies to the (model, guide) pair).
ESTIMATORS: dict[str, tuple[Callable[[], pyro.infer.ELBO], Callable[[object, object], bool]]] = {
    "Trace_ELBO": (Trace_ELBO, lambda m, g: True),
    # families without discrete latents have nothing to enumerate (Pyro warns, see _svi_step)
    "TraceEnum_ELBO": (TraceEnum_ELBO, lambda m, g: True),
    "RenyiELBO": (lambda: RenyiELBO(num_particles=2, vectorize_particles=True), lambda m, g: True),
    # data checks convert tensors to Python bools, which torch.jit reports as TracerWarnings (as do
    # Pyro's own distributions): Pyro's switch for them
    "JitTrace_ELBO": (lambda: JitTrace_ELBO(ignore_jit_warnings=True), lambda m, g: True),
    "TraceIWAE_ELBO": (lambda: TraceIWAE_ELBO(num_particles=2), lambda m, g: True),
    "SPNLeafIWELBO": (lambda: SPNLeafIWELBO(num_particles=2), _is_spn),
    # the per-component objective of mixture posteriors (DLGMM guide (c)), for guides with a mixture site
    "MixtureELBO": (MixtureELBO, lambda m, g: isinstance(g, MixturePosteriorGuide) and bool(g.mixture_site)),
}


def _build(family: str) -> tuple[PyroModule, PyroModule, torch.Tensor, Case]:
    if family not in CASES:
        pytest.fail(f"family {family!r} is registered in pyro_spvae.zoo.MODELS but has no entry in "
                    "tests/test_registry.py CASES (tiny hyper-parameters and a data maker)")
    case = CASES[family]
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    model, guide = MODELS[case.family or family](case.event_shape, **case.kwargs)
    x = case.data(torch.Generator().manual_seed(1), NUM_EXAMPLES)
    return model, guide, x, case


def _snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in module.named_parameters()}


def _changed(module: torch.nn.Module, before: dict[str, torch.Tensor]) -> list[str]:
    return [name for name, p in module.named_parameters() if not torch.equal(p.detach(), before[name])]


def _svi_step(model: PyroModule, guide: PyroModule, x: torch.Tensor, elbo: pyro.infer.ELBO) -> float:
    svi = SVI(model, guide, Adam({"lr": 1e-2}), elbo)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="TraceEnum_ELBO found no sample sites configured")
        return svi.step(x)


def test_every_family_has_a_case():
    missing = sorted(set(MODELS) - {case.family or name for name, case in CASES.items()})
    assert not missing, (
        f"registered families {missing} have no entry in tests/test_registry.py CASES: add tiny "
        "hyper-parameters and a data maker so that the registry test covers them"
    )


@pytest.mark.parametrize("family", FAMILIES)
def test_build(family):
    model, guide, x, case = _build(family)
    assert isinstance(model, PyroModule) and isinstance(guide, PyroModule)
    assert next(model.parameters(), None) is not None and next(guide.parameters(), None) is not None
    assert x.shape == (NUM_EXAMPLES, *case.event_shape)


@pytest.mark.parametrize("estimator", sorted(ESTIMATORS))
@pytest.mark.parametrize("family", FAMILIES)
def test_one_svi_step(family, estimator):
    model, guide, x, case = _build(family)
    _skip_if_excluded(case, family, estimator)
    make, applies = ESTIMATORS[estimator]
    if not applies(model, guide):
        pytest.skip(f"{estimator} does not apply to {family}")
    before_model, before_guide = _snapshot(model), _snapshot(guide)
    loss = _svi_step(model, guide, x, make())
    assert isinstance(loss, float) and math.isfinite(loss), loss
    assert _changed(model, before_model), f"{estimator} changed no parameter of the {family} model"
    assert _changed(guide, before_guide), f"{estimator} changed no parameter of the {family} guide"


@pytest.mark.parametrize("family", FAMILIES)
def test_sample(family):
    model, _, _, case = _build(family)
    samples = model.sample(4)
    assert samples.shape == (4, *case.event_shape)
    assert bool(torch.isfinite(samples).all())


@pytest.mark.parametrize("family", FAMILIES)
def test_evaluation(family):
    model, guide, x, case = _build(family)
    _skip_if_excluded(case, family, "evaluate")
    report = evaluate(model, guide, x, num_samples=8, chunk_size=4, batch_size=2)
    assert report.estimator == ("spn-leaf-iw" if _is_spn(model, guide) else "iwae")
    assert report.log_px.shape == (NUM_EXAMPLES,) and bool(torch.isfinite(report.log_px).all())
    assert report.num_samples == 8 and report.event_dim == math.prod(case.event_shape)
    assert math.isfinite(report.nll_nats) and math.isfinite(report.bits_per_dim)
