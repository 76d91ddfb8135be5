r"""The variational MI bound ``I(c; x) >= H(c) + E log Q(c | x)`` (Barber & Agakov 2003; Chen et al.
2016; Serdega & Kim 2020): estimator, regulariser and their plumbing.

Ground truth for a Gaussian code: in the linear-Gaussian model ``z ~ N(0, I_d)``,
``x = W z + b + eps``, ``eps ~ N(0, s^2 I_D)``, the posterior is Gaussian with covariance
``Sigma = (I + W^T W / s^2)^{-1}`` for every ``x`` (Tipping & Bishop 1999; ``docs/ground_truth.md``), so

.. math:: I(z_i; x) = h(z_i) - h(z_i \mid x) = \tfrac12 \log(2 \pi e) - \tfrac12 \log(2 \pi e \Sigma_{ii})
          = -\tfrac12 \log \Sigma_{ii},

and for the whole vector ``I(z; x) = -(1/2) log det Sigma``. The best ``Q(z_i | x)`` is the exact
marginal posterior ``N(z_i; (Sigma W^T (x - b))_i / s^2, Sigma_ii)``: a linear mean and a constant
scale, which a :class:`CodePosteriorNet` with ``hidden=()`` represents exactly.
"""

from __future__ import annotations

import math
import warnings

import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import pytest
import torch
import torch.nn.functional as F
from pyro.infer import SVI, Trace_ELBO, TraceEnum_ELBO
from pyro.nn import PyroModule
from pyro.optim import Adam

from pyro_spvae.guides import LinearGaussianPosteriorGuide
from pyro_spvae.infer import (
    CodePosteriorNet,
    MIRegularizedELBO,
    TraceIWAE_ELBO,
    code_posterior_for,
    mutual_information_bound,
    resolve_codes,
)
from pyro_spvae.models import LinearGaussianVAE
from pyro_spvae.zoo import build_mivae

LOG2PIE = 0.5 * math.log(2 * math.pi * math.e)


class CodeToData(PyroModule):
    """``c ~ Categorical(probs)``, ``x ~ N(scale * onehot(c), noise^2 I)``: the code determines the
    data when ``scale / noise`` is large, and ``scale = 0`` makes them independent."""

    def __init__(self, probs: torch.Tensor, scale: float = 5.0, noise: float = 0.1) -> None:
        super().__init__()
        self.probs, self.scale, self.noise = probs, scale, noise

    def forward(self, x: torch.Tensor) -> None:
        n = self.probs.shape[-1]
        with pyro.plate("data", x.shape[0], dim=-1):
            c = pyro.sample("c", dist.Categorical(self.probs))
            pyro.sample("x", dist.Normal(self.scale * F.one_hot(c, n).float(), self.noise).to_event(1), obs=x)


def _ppca() -> LinearGaussianVAE:
    model = LinearGaussianVAE(6, 2, noise_scale=0.8)
    with torch.no_grad():
        model.W.copy_(torch.tensor([[1.0, 0.0], [0.5, 0.5], [0.0, 1.0], [0.3, -0.2], [1.0, 1.0], [0.2, 0.1]]))
    return model


def _analytic_mi(model: LinearGaussianVAE) -> tuple[torch.Tensor, torch.Tensor]:
    """``(I(z_i; x) for each i, I(z; x))`` in nats (see the module docstring)."""
    W, s = model.W.detach().double(), float(model.noise_scale.detach())
    cov = torch.linalg.inv(torch.eye(W.shape[1], dtype=W.dtype) + W.T @ W / s**2)
    return -0.5 * torch.log(torch.diagonal(cov)), -0.5 * torch.logdet(cov)


# ----------------------------------------------------------------------------- estimator
def test_bound_approaches_log_n_when_the_code_determines_the_data():
    model = CodeToData(torch.full((4,), 0.25))
    res = mutual_information_bound(model, None, ["c"], torch.zeros(256, 4), num_samples=4096, steps=200,
                                   lr=1e-2, q_kwargs={"hidden": ()})["c"]
    assert res.entropy == pytest.approx(math.log(4))
    assert res.bound <= math.log(4)
    assert res.bound > math.log(4) - 0.05, res


@pytest.mark.parametrize("scale", [0.0, 0.3, 5.0])
def test_bound_never_exceeds_the_entropy_of_the_code(scale):
    probs = torch.tensor([0.5, 0.3, 0.2])
    entropy = float(-(probs * probs.log()).sum())
    model = CodeToData(probs, scale=scale, noise=1.0)
    for seed in range(3):  # untrained and fitted Q: log Q <= 0 for every pair
        torch.manual_seed(seed)
        q = code_posterior_for(model, torch.zeros(64, 3), ["c"], hidden=(8,))
        for steps in (0, 50):
            res = mutual_information_bound(model, q, ["c"], torch.zeros(64, 3), num_samples=512, steps=steps,
                                           lr=1e-2)["c"]
            assert res.entropy == pytest.approx(entropy, rel=1e-6)
            assert res.bound <= entropy
    if scale == 0.0:  # x independent of c: nothing to find
        assert res.bound < 0.05


def test_gaussian_bound_is_below_and_close_to_the_analytic_mi():
    model = _ppca()
    per_dim, joint = _analytic_mi(model)
    res = mutual_information_bound(model, None, ["z[0]", "z[1]", "z"], torch.zeros(256, 6), num_samples=20000,
                                   steps=300, lr=3e-2, q_kwargs={"hidden": ()})
    for i in range(2):
        r = res[f"z[{i}]"]
        assert r.entropy == pytest.approx(LOG2PIE)
        assert r.bound < float(per_dim[i]) + 3 * r.stderr, (r, per_dim)
        assert r.bound > float(per_dim[i]) - 0.05, (r, per_dim)
    # all of z with a factorised Q: still a bound on I(z; x), loose by the posterior correlation
    assert res["z"].entropy == pytest.approx(2 * LOG2PIE)
    assert res["z"].bound < float(joint) + 3 * res["z"].stderr


def test_the_exact_posterior_guide_as_q_gives_the_mi():
    model = _ppca()
    per_dim, _ = _analytic_mi(model)
    guide = LinearGaussianPosteriorGuide(model)
    res = mutual_information_bound(model, guide, ["z[0]", "z[1]"], torch.zeros(512, 6), num_samples=20000)
    for i in range(2):  # Q = p(z_i | x): the bound is tight
        assert res[f"z[{i}]"].bound == pytest.approx(float(per_dim[i]), abs=4 * res[f"z[{i}]"].stderr + 1e-3)


def test_resolve_codes():
    model, _ = build_mivae((1, 4, 4), z_dim=3, n_categories=5, hidden=(4,), code="relaxed")
    x = torch.bernoulli(torch.full((2, 1, 4, 4), 0.5))
    trace = poutine.trace(poutine.uncondition(model)).get_trace(x)
    codes = resolve_codes(trace, ["c", "z[2]", "z[0, 1]", "z"])
    assert [(c.kind, c.dims, c.size) for c in codes] == [
        ("categorical", None, 5), ("gaussian", (2,), 1), ("gaussian", (0, 1), 2), ("gaussian", None, 3)]
    for bad in (["w"], ["c[0]"], ["z[3]"], ["z[0,0]"], ["x"], ["z[a]"]):
        with pytest.raises(ValueError):
            resolve_codes(trace, bad)
    for bad in ("c", [], [0]):
        with pytest.raises(TypeError):
            resolve_codes(trace, bad)


# ----------------------------------------------------------------------------- regulariser
def _data(n: int = 8, seed: int = 1) -> torch.Tensor:
    return torch.bernoulli(torch.full((n, 1, 4, 4), 0.5), generator=torch.Generator().manual_seed(seed))


def _train_and_measure(weight: float) -> float:
    """MI of the code after 80 steps on structureless data (a VAE has no reason to use ``c``)."""
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    model, guide = build_mivae((1, 4, 4), z_dim=2, n_categories=3, hidden=(16,), code="relaxed",
                               temperature=0.5)
    data = _data(64)
    q = code_posterior_for(model, data[:8], ["c"], hidden=(16,))
    elbo = MIRegularizedELBO(Trace_ELBO(), ["c"], q=q, weight=weight)
    svi = SVI(model, guide, Adam({"lr": 1e-2}), elbo)
    for _ in range(80):
        svi.step(data)
    pyro.set_rng_seed(1)
    return mutual_information_bound(model, None, ["c"], data, num_samples=1024, steps=150, lr=1e-2, x="mean",
                                    q_kwargs={"hidden": (16,)})["c"].bound


def test_the_regulariser_raises_the_mi_of_the_code():
    without, with_ = _train_and_measure(0.0), _train_and_measure(10.0)
    assert without < 0.05 and with_ > 0.3, (without, with_)  # at most log 3 = 1.10


def _train_enumerated(sites: list[str], weight: float, x: str = "sample") -> dict[str, float]:
    """The MI bounds of ``sites`` (``x="sample"``: with the data) after 80 steps of
    ``TraceEnum_ELBO`` (the code summed exactly) plus the bound of ``sites``, the guide as ``Q``,
    on structureless data."""
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    model, guide = build_mivae((1, 4, 4), z_dim=2, n_categories=3, hidden=(16,))
    data = _data(64)
    svi = SVI(model, guide, Adam({"lr": 1e-2}),
              MIRegularizedELBO(TraceEnum_ELBO(max_plate_nesting=1), sites, q="guide", weight=weight))
    for _ in range(80):
        svi.step(data)
    pyro.set_rng_seed(1)
    res = mutual_information_bound(model, None, sites, data, num_samples=1024, steps=150, lr=1e-2, x=x,
                                   q_kwargs={"hidden": (16,)})
    return {k: v.bound for k, v in res.items()}


def test_the_regulariser_raises_the_mi_of_the_enumerated_code_with_the_guide_as_q():
    # measured with x="sample" (the MI with the data): about 0.85 nats (at most log 3 = 1.10)
    # against 0.00 without the regulariser (standard errors about 0.01)
    without, with_ = _train_enumerated(["c"], 0.0)["c"], _train_enumerated(["c"], 10.0)["c"]
    assert without < 0.1 and with_ > 0.3, (without, with_)


def test_a_gaussian_dim_read_through_the_mean_swamps_the_code():
    # x="mean": the bound of a Gaussian dim is unbounded (Q(z_0 | mean) sharpens without limit), so
    # regularising c together with z[0] under one weight leaves c unused on structureless data,
    # while c alone is raised (test above); docs/mutual_information.md, section 4
    res = _train_enumerated(["c", "z[0]"], 10.0, x="mean")
    assert res["z[0]"] > 2.0 and res["c"] < 0.1, res  # z[0]: 3.4 nats > H(z_0) = 1.42


CASES = {  # wrapped ELBO -> the MIVAE guide it needs
    "Trace_ELBO": (Trace_ELBO, {"code": "relaxed"}),
    "TraceEnum_ELBO": (lambda: TraceEnum_ELBO(max_plate_nesting=1), {"code": "categorical"}),
    "TraceIWAE_ELBO": (lambda: TraceIWAE_ELBO(num_particles=3), {"code": "categorical", "enumerate": None}),
    "TraceIWAE_ELBO-relaxed": (lambda: TraceIWAE_ELBO(num_particles=3), {"code": "relaxed"}),
}


def _setup(case: str, q_mode: str, weight: float = 1.0):
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    make, kwargs = CASES[case]
    model, guide = build_mivae((1, 4, 4), z_dim=2, n_categories=3, hidden=(8,), **kwargs)
    q = "guide" if q_mode == "guide" else code_posterior_for(model, _data(), ["c", "z[0]"], hidden=(8,))
    return model, guide, MIRegularizedELBO(make(), ["c", "z[0]"], q=q, weight=weight), make()


@pytest.mark.parametrize("q_mode", ["net", "guide"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_the_regulariser_wraps_any_elbo(case, q_mode):
    model, guide, elbo, plain = _setup(case, q_mode)
    x = _data()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="TraceEnum_ELBO found no sample sites configured")
        pyro.set_rng_seed(4)
        regularised = elbo.loss(model, guide, x)
        pyro.set_rng_seed(4)
        base = plain.loss(model, guide, x)
        pyro.set_rng_seed(4)
        plain.loss(model, guide, x)  # the same draws for the MI term as inside elbo.loss
        mi = elbo._mi_sum(model, guide, (x,), {})
        assert regularised == pytest.approx(base - float(mi.detach()), rel=1e-5, abs=1e-4)
        q = elbo.q if q_mode == "net" else guide
        before = {k: p.detach().clone() for k, p in q.named_parameters()}
        svi = SVI(model, guide, Adam({"lr": 1e-2}), elbo)
        losses = [svi.step(x) for _ in range(2)]
    assert all(math.isfinite(v) for v in losses)
    assert all(not torch.equal(p.detach(), before[k]) for k, p in q.named_parameters())  # SVI trains Q
    values = elbo.mutual_information(model, guide, x)
    assert set(values) == {"c", "z[0]"} and values["c"] <= math.log(3)


def test_the_bound_trains_the_decoder_and_q():
    model, guide, elbo, _ = _setup("Trace_ELBO", "net")
    x = _data()
    pyro.set_rng_seed(2)
    loss = -elbo._mi_sum(model, guide, (x,), {})
    loss.backward()
    assert model.decoder.mlp.layers[0].weight.grad.abs().sum() > 0  # through x~ = E[x | z, c]
    assert all(p.grad is not None for p in elbo.q.parameters())
    assert all(p.grad is None for p in guide.parameters())  # Q is the net, not the guide


def test_enumerated_and_relaxed_codes_give_the_same_regularised_objective_in_expectation():
    # the same weights; the relaxed pair in eval mode draws exact one-hot codes (Gumbel-max), so
    # both estimate the same regularised objective: the enumerated one sums c exactly, the relaxed
    # one samples it (4 data points tiled to 20000 rows: per-point standard errors about 0.01 for
    # the ELBO and 0.006 for the bound; measured gaps 0.002 and 0.007)
    torch.manual_seed(0)
    model_e, guide_e = build_mivae((1, 4, 4), z_dim=2, n_categories=3, hidden=(8,))
    model_r, guide_r = build_mivae((1, 4, 4), z_dim=2, n_categories=3, hidden=(8,), code="relaxed")
    model_r.load_state_dict(model_e.state_dict())
    guide_r.load_state_dict(guide_e.state_dict())
    model_r.eval()
    guide_r.eval()
    x = _data(4).repeat(5000, 1, 1, 1)
    out = {}
    pairs = {"enum": (model_e, guide_e, TraceEnum_ELBO(max_plate_nesting=1)),
             "relaxed": (model_r, guide_r, Trace_ELBO(max_plate_nesting=1))}
    for key, (model, guide, inner) in pairs.items():
        elbo = MIRegularizedELBO(inner, ["c"], q="guide", weight=1.0)
        pyro.set_rng_seed(5)
        loss = elbo.loss(model, guide, x) / len(x)
        pyro.set_rng_seed(6)
        with torch.no_grad():
            out[key] = (loss, float(elbo._bounds(model, guide, (x,), {})["c"].mean()))
    assert out["enum"][1] == pytest.approx(out["relaxed"][1], abs=0.03), out
    assert out["enum"][0] == pytest.approx(out["relaxed"][0], abs=0.06), out
    assert abs(out["enum"][1]) > 0.1  # not trivially 0: an untrained Q gives about -0.33


def test_differentiable_loss_matches_loss_and_grads():
    model, guide, elbo, _ = _setup("Trace_ELBO", "net")
    x = _data()
    params = list(model.parameters()) + list(elbo.q.parameters())
    pyro.set_rng_seed(7)
    value = elbo.loss_and_grads(model, guide, x)
    grads = [p.grad.clone() for p in params]
    for p in params:
        p.grad = None
    pyro.set_rng_seed(7)
    loss = elbo.differentiable_loss(model, guide, x)
    loss.backward()
    assert float(loss.detach()) == pytest.approx(value, rel=1e-5)
    for g, p in zip(grads, params):
        assert torch.allclose(g, p.grad, atol=1e-5)


def test_settings_are_the_wrapped_elbos():
    inner = TraceEnum_ELBO(num_particles=3, vectorize_particles=True, max_plate_nesting=1)
    elbo = MIRegularizedELBO(inner, ["c"], weight=0.5)
    assert (elbo.num_particles, elbo.max_plate_nesting, elbo.vectorize_particles) == (3, 2, True)
    elbo.retain_graph = True
    assert inner.retain_graph is True
    with pytest.raises(TypeError):
        MIRegularizedELBO("Trace_ELBO", ["c"])
    with pytest.raises(TypeError):
        MIRegularizedELBO(inner, "c")
    with pytest.raises(TypeError):
        MIRegularizedELBO(inner, ["c"], q=object())
    with pytest.raises(ValueError):
        MIRegularizedELBO(inner, ["c"], weight=-1.0)
    with pytest.raises(ValueError):
        MIRegularizedELBO(inner, ["c"], x="mode")


def test_code_posterior_net():
    net = CodePosteriorNet((1, 4, 4), {"c": ("categorical", 3), "z": ("gaussian", 2)}, hidden=(4,))
    out = net(torch.zeros(5, 1, 4, 4))
    assert out["c"].batch_shape == (5,) and out["z"].event_shape == (2,) and out["z"].batch_shape == (5,)
    other = CodePosteriorNet((1, 4, 4), {"c": ("categorical", 3)})
    assert net._pyro_name != other._pyro_name  # distinct names in Pyro's parameter store
    with pytest.raises(ValueError):
        CodePosteriorNet((1, 4, 4), {"c": ("poisson", 3)})
    with pytest.raises(TypeError):
        CodePosteriorNet((1, 4, 4), {"c": ("categorical", 2.5)})
    with pytest.raises(TypeError):
        CodePosteriorNet((1, 4, 4), {})
