r"""The Lagrange-multiplier hook :class:`pyro_spvae.infer.GECO` (Rezende & Viola 2018; the VHP rule of
Klushyn et al. 2019).

Closed-form constrained optimum (:func:`test_training_meets_the_constraint`). Data with mean 0 and
variance ``v = 4``; model ``z ~ N(0, 1)``, ``x | z ~ N(w z + b, 1)`` (noise fixed); guide
``q(z | x) = N(a x + c, s_q^2)``; constraint ``C = E (x - w z - b)^2`` (``"mse"``, one dimension).

- ``coupling="scale"``: the loss is ``KL + lambda (x - w z - b)^2 / 2``, the negative ELBO of
  probabilistic PCA with noise variance ``sigma^2 = 1 / lambda``, whose optimum (Tipping & Bishop
  1999; ``docs/ground_truth.md``) has ``w^2 = v - sigma^2`` and the exact posterior, so that
  ``E[C] = sigma^2`` (one latent dimension per data dimension). ``E[C] = kappa^2`` gives
  ``lambda* = 1 / kappa^2``.
- ``coupling="penalty"``: the loss is ``-ELBO + (lambda - 1) C = KL + (lambda - 1/2) (x - w z - b)^2``,
  i.e. ``sigma^2 = 1 / (2 lambda - 1)`` and ``lambda* = (1 + 1 / kappa^2) / 2``.
- The VHP rule with a loose constraint ``kappa^2 > 1`` (met by the plain ELBO, ``E[C] = 1`` at
  ``lambda = 1``) relaxes to ``lambda* = 1`` with ``E[C] = 1``.
"""

from __future__ import annotations

import copy
import io
import math
import warnings

import pyro
import pyro.distributions as dist
import pytest
import torch
import torch.nn.functional as F
from pyro.infer import SVI, JitTrace_ELBO, RenyiELBO, Trace_ELBO, TraceEnum_ELBO, TraceMeanField_ELBO
from pyro.nn import PyroModule
from pyro.optim import Adam
from torch import nn

from pyro_spvae.infer import GECO, SPNLeafIWELBO, TraceIWAE_ELBO
from pyro_spvae.infer.geco import negative_log_likelihood, squared_error
from pyro_spvae.zoo import MODELS


class Toy(PyroModule):
    """``z ~ N(0, 1)``, ``x | z ~ N(w z + b, 1)``."""

    def __init__(self) -> None:
        super().__init__()
        self.w, self.b = nn.Parameter(torch.tensor(0.5)), nn.Parameter(torch.tensor(0.0))

    def forward(self, x: torch.Tensor) -> None:
        with pyro.plate("data", x.shape[0], dim=-1):
            z = pyro.sample("z", dist.Normal(0.0, 1.0).expand([1]).to_event(1))
            pyro.sample("x", dist.Normal(z * self.w + self.b, 1.0).to_event(1), obs=x)


class ToyGuide(PyroModule):
    """``q(z | x) = N(a x + c, softplus(raw)^2)``."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.c, self.raw = (nn.Parameter(torch.tensor(0.0)) for _ in range(3))

    def forward(self, x: torch.Tensor) -> None:
        with pyro.plate("data", x.shape[0], dim=-1):
            pyro.sample("z", dist.Normal(x * self.a + self.c, F.softplus(self.raw)).to_event(1))


def toy_data(n: int = 256) -> torch.Tensor:
    """``n`` points with empirical mean 0 and variance exactly 4, shape ``(n, 1)``."""
    x = torch.randn(n, 1, generator=torch.Generator().manual_seed(0))
    return 2.0 * (x - x.mean()) / x.std(unbiased=False)


# ---------------------------------------------------------------------------- constrained optimum
@pytest.mark.parametrize("rule, coupling, kappa2, lam_star, c_star", [
    ("geco", "scale", 0.5, 2.0, 0.5),
    ("vhp", "scale", 0.5, 2.0, 0.5),
    ("vhp", "scale", 2.0, 1.0, 1.0),  # loose: met at lambda = 1, so the VHP rule stays there
    ("geco", "penalty", 0.5, 1.5, 0.5),
])
def test_training_meets_the_constraint(rule, coupling, kappa2, lam_star, c_star):
    pyro.clear_param_store()
    pyro.set_rng_seed(1)
    x = toy_data()
    geco = GECO(Trace_ELBO(), "mse", kappa=math.sqrt(kappa2), rule=rule, coupling=coupling, nu=0.3,
                alpha=0.9, warmup=100)
    svi = SVI(Toy(), ToyGuide(), Adam({"lr": 0.1}), geco)
    lams, cs = [], []
    for _ in range(600):
        svi.step(x)
        lams.append(geco.multiplier)
        cs.append(geco.last_constraint)
    lam, c = torch.tensor(lams[-200:]), torch.tensor(cs[-200:])
    assert abs(float(lam.mean()) - lam_star) < 0.1 * lam_star, (lam.mean(), lam_star)
    assert float(lam.std()) < 0.05 * float(lam.mean()), "the multiplier did not settle"
    assert abs(float(c.mean()) - c_star) < 0.1 * c_star, (c.mean(), c_star)


# ---------------------------------------------------------------------------- rule directions
def _geco(**kw) -> GECO:
    return GECO(Trace_ELBO(), "mse", kappa=0.5, **kw)


@pytest.mark.parametrize("rule", ["geco", "vhp"])
@pytest.mark.parametrize("lambda_init", [0.5, 1.0, 3.0])
def test_lambda_grows_while_violated(rule, lambda_init):
    g = _geco(rule=rule, lambda_init=lambda_init)
    lams = [g.update(0.25 + 0.1) for _ in range(10)]
    assert all(b > a for a, b in zip([lambda_init, *lams], lams)), lams


def test_geco_lambda_shrinks_while_satisfied():
    """GECO has no pull toward 1: it keeps shrinking lambda (down to its clamp)."""
    g = _geco(rule="geco", lambda_init=3.0)
    lams = [g.update(0.25 - 0.1) for _ in range(60)]
    assert all(b < a for a, b in zip([3.0, *lams], lams)) and lams[-1] < 0.1


@pytest.mark.parametrize("lambda_init", [5.0, 0.2])
def test_vhp_lambda_relaxes_to_one_while_satisfied(lambda_init):
    """The VHP rule moves lambda monotonically toward 1 from either side (nu tau |d| < 1)."""
    g = _geco(rule="vhp", lambda_init=lambda_init)
    lams = [g.update(0.25 - 0.005) for _ in range(1000)]
    steps = [b - a for a, b in zip([lambda_init, *lams], lams)]
    if lambda_init > 1:
        assert all(s <= 0 for s in steps) and min(lams) >= 1.0
    else:
        assert all(s >= 0 for s in steps) and max(lams) <= 1.0
    assert abs(lams[-1] - 1.0) < 1e-3


@pytest.mark.parametrize("rule, factor", [("geco", 1.1), ("vhp", 1.05)])
def test_clamps(rule, factor):
    g = _geco(rule=rule)
    assert g.update(100.0) == pytest.approx(factor)  # the factor is clamped
    assert _geco(rule="geco", lambda_init=2.0).update(0.0) == pytest.approx(2.0 * 0.9)
    capped = _geco(rule=rule, lambda_max=1.2)
    assert [capped.update(100.0) for _ in range(5)][-1] == 1.2
    floored = _geco(rule="geco", lambda_min=0.5, factor_min=0.1)
    assert [floored.update(0.0) for _ in range(5)][-1] == 0.5


def test_warmup_interval_and_moving_average():
    g = _geco(rule="geco", warmup=3, update_every=2, alpha=0.9)
    lams = [g.update(1.0) for _ in range(8)]
    changed = [b != a for a, b in zip([1.0, *lams], lams)]
    assert changed == [False, False, False, False, True, False, True, False]  # steps 5 and 7
    h = _geco(alpha=0.9)
    h.update(1.0)
    assert h.constraint_ma == 1.0
    h.update(2.0)
    assert h.constraint_ma == pytest.approx(0.9 * 1.0 + 0.1 * 2.0)
    m = h.metrics()
    assert m["lambda"] == h.multiplier and m["constraint"] == 2.0
    assert m["violation"] == pytest.approx(m["constraint_ma"] - 0.25)
    assert math.isnan(_geco().metrics()["constraint_ma"])


def test_arguments():
    with pytest.raises(TypeError, match="ELBO"):
        GECO("Trace_ELBO")
    with pytest.raises(ValueError, match="JitTrace_ELBO"):
        GECO(JitTrace_ELBO())
    with pytest.raises(ValueError, match="rule"):
        _geco(rule="beta")
    with pytest.raises(ValueError, match="constraint"):
        GECO(Trace_ELBO(), "mae")
    with pytest.raises(TypeError, match="constraint"):
        GECO(Trace_ELBO(), 3)
    with pytest.raises(ValueError, match="no site"):
        GECO(Trace_ELBO(), {})
    with pytest.raises(TypeError, match="kappa"):
        GECO(Trace_ELBO(), kappa=True)
    with pytest.raises(ValueError, match="alpha"):
        _geco(alpha=1.0)
    with pytest.raises(ValueError, match="factor_min"):
        _geco(factor_min=1.5)
    with pytest.raises(ValueError, match="lambda_init"):
        _geco(lambda_init=10.0, lambda_max=5.0)
    with pytest.raises(TypeError, match="update_every"):
        _geco(update_every=2.0)
    with pytest.raises(ValueError, match="no constraint"):
        _geco().step()


# ---------------------------------------------------------------------------- state and resume
def test_state_round_trip():
    g = _geco(rule="vhp", alpha=0.5)
    for c in (0.9, 0.7, 0.1):
        g.update(c)
    buf = io.BytesIO()
    torch.save(g.state_dict(), buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)
    h = _geco(rule="vhp", alpha=0.5)
    h.load_state_dict(state)
    assert h.state_dict() == g.state_dict() and h.metrics() == g.metrics()
    assert [g.update(c) for c in (0.3, 0.5, 0.05)] == [h.update(c) for c in (0.3, 0.5, 0.05)]
    with pytest.raises(ValueError, match="lacks"):
        h.load_state_dict({"lambda": 1.0})
    with pytest.raises(ValueError, match="lambda"):
        h.load_state_dict({**state, "lambda": -1.0})
    with pytest.raises(TypeError, match="num_steps"):
        h.load_state_dict({**state, "num_steps": 2.0})


def _vae_run(steps: int, start: dict | None = None) -> tuple[list[float], list[float], dict]:
    """``steps`` SVI steps of a tiny VAE under GECO, optionally from a checkpoint ``start``:
    the losses, the multiplier after each step and a checkpoint (model, guide, optimiser, GECO, RNG)."""
    pyro.clear_param_store()
    pyro.set_rng_seed(7)
    model, guide = MODELS["vae"]((1, 4, 4), z_dim=2, hidden=(8,))
    x = torch.bernoulli(torch.full((6, 1, 4, 4), 0.5), generator=torch.Generator().manual_seed(8))
    optim = Adam({"lr": 1e-2})
    geco = GECO(Trace_ELBO(), "mse", kappa=0.3, nu=2.0, alpha=0.5)
    if start is not None:
        start = copy.deepcopy(start)  # as loaded from disk: torch's Adam adopts (and updates) its tensors
        model.load_state_dict(start["model"])
        guide.load_state_dict(start["guide"])
        optim.set_state(start["optim"])
        geco.load_state_dict(start["geco"])
        torch.set_rng_state(start["rng"])
    svi = SVI(model, guide, optim, geco)
    losses, lams = [], []
    for _ in range(steps):
        losses.append(svi.step(x))
        lams.append(geco.multiplier)
    checkpoint = copy.deepcopy({"model": model.state_dict(), "guide": guide.state_dict(),
                                "optim": optim.get_state(), "geco": geco.state_dict(),
                                "rng": torch.get_rng_state()})
    return losses, lams, checkpoint


def test_exact_resume_gives_the_same_lambda_trajectory():
    losses, lams, end = _vae_run(6)
    _, _, ckpt = _vae_run(3)
    losses_r, lams_r, end_r = _vae_run(3, start=ckpt)
    assert losses_r == losses[3:] and lams_r == lams[3:]
    assert end_r["geco"] == end["geco"]
    assert len(set(lams)) == 6, "lambda never moved: the test would not see a wrong resume"


# ---------------------------------------------------------------------------- wrapping ELBOs
def _tiny(family: str):
    pyro.clear_param_store()
    pyro.set_rng_seed(9)
    if family == "spvae":
        model, guide = MODELS["spvae"]((1, 4, 4), region_graph={"type": "poon_domingos", "steps": [2]},
                                       z_dim=2, hidden=(4,))
        return model, guide, torch.rand(3, 1, 4, 4, generator=torch.Generator().manual_seed(2))
    model, guide = MODELS[family]((1, 4, 4), z_dim=2, hidden=(8,))
    x = torch.bernoulli(torch.full((3, 1, 4, 4), 0.5), generator=torch.Generator().manual_seed(2))
    return model, guide, x


@pytest.mark.parametrize("family, make, constraint, coupling", [
    ("vae", Trace_ELBO, "mse", "scale"),
    ("vae", TraceMeanField_ELBO, "nll", "scale"),
    ("vhp-vae", TraceEnum_ELBO, "mse", "scale"),
    ("vae", lambda: RenyiELBO(num_particles=2, vectorize_particles=True), "mse", "scale"),
    ("vhp-vae", lambda: TraceIWAE_ELBO(num_particles=3), "mse", "penalty"),
    ("vae", lambda: TraceIWAE_ELBO(num_particles=2, estimator="dreg"), "nll", "penalty"),
    ("spvae", lambda: SPNLeafIWELBO(num_particles=2), "nll", "penalty"),
])
def test_wraps_any_elbo(family, make, constraint, coupling):
    model, guide, x = _tiny(family)
    geco = GECO(make(), constraint, kappa=0.01, lambda_init=2.0)
    assert geco.coupling == coupling
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    svi = SVI(model, guide, Adam({"lr": 1e-2}), geco)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="TraceEnum_ELBO found no sample sites configured")
        losses = [svi.step(x) for _ in range(2)]
        assert math.isfinite(svi.evaluate_loss(x))
    assert all(math.isfinite(v) for v in losses)
    assert geco.num_steps == 2 and geco.multiplier == pytest.approx(2.0 * 1.1**2)  # violated: grows
    assert any(not torch.equal(p.detach(), before[n]) for n, p in model.named_parameters())


def test_scale_needs_the_site():
    """An ELBO that never runs the observation site cannot be scaled: a clear error."""
    model, guide, x = _tiny("spvae")
    with pytest.raises(ValueError, match="coupling='penalty'"):
        GECO(SPNLeafIWELBO(num_particles=2), "nll", coupling="scale").loss_and_grads(model, guide, x)
    with pytest.raises(ValueError, match="no sample site 'y'"):
        GECO(Trace_ELBO(), {"y": "mse"}, coupling="penalty").loss_and_grads(model, guide, x)


def test_losses_and_updates():
    """loss never updates; the scaled loss is affine in lambda; differentiable_loss updates only with
    gradients enabled; without auto_update the calls accumulate until update()."""
    model, guide, x = _tiny("vae")
    values = []
    for lam in (1.0, 2.0, 3.0):
        g = GECO(Trace_ELBO(), "nll", lambda_init=lam)
        pyro.set_rng_seed(3)
        values.append(g.loss(model, guide, x))
        pyro.set_rng_seed(3)
        assert float(g.differentiable_loss(model, guide, x).detach()) == pytest.approx(values[-1], rel=1e-5)
        assert g.num_steps == 1
        with torch.no_grad():
            g.differentiable_loss(model, guide, x)
        assert g.num_steps == 1
    assert values[2] - values[1] == pytest.approx(values[1] - values[0], rel=1e-4)
    assert values[1] > values[0]  # the negative log-likelihood is positive for Bernoulli pixels
    g = GECO(Trace_ELBO(), {"x": lambda fn, v: torch.ones(fn.batch_shape), "z": lambda fn, v: 2 * torch.ones(
        fn.batch_shape)}, auto_update=False)
    g.loss_and_grads(model, guide, x)
    g.loss_and_grads(model, guide, x)
    stats = g.constraint_stats()
    assert stats.tolist() == [[6.0, 6.0], [12.0, 6.0]] and g.num_steps == 0
    assert g.constraint_from_stats(stats) == 3.0
    g.discard_pending()
    assert g.constraint_stats().tolist() == [[0.0, 0.0], [0.0, 0.0]]
    g.update(3.0)
    assert g.num_steps == 1 and g.last_constraint == 3.0


def test_builtin_constraints():
    loc, v = torch.randn(4, 5), torch.randn(4, 5)
    fn = dist.Normal(loc, 2.0).to_event(1)
    torch.testing.assert_close(squared_error(fn, v), ((loc - v) ** 2).mean(-1))
    torch.testing.assert_close(squared_error(fn, v, "sum"), ((loc - v) ** 2).sum(-1))
    torch.testing.assert_close(negative_log_likelihood(fn, v, "sum"), -fn.log_prob(v))
    torch.testing.assert_close(negative_log_likelihood(fn, v), -fn.log_prob(v) / 5)
