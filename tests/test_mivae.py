"""MIVAE (joint continuous + categorical code; Dupont 2018, Serdega & Kim 2020), its guide, the
relaxed code and the JointVAE capacity objective.

- shapes of the sites, and the decoder vectorised over the enumeration dim (one pass for all ``n``);
- the enumerated ``TraceEnum_ELBO`` equals the sum over ``c`` written out by hand;
- the relaxed ELBO tends to the enumerated one as the temperature goes to 0 (common random numbers:
  both draw the same ``z``);
- :class:`RelaxedOneHotCode`: hard draws are exact categorical draws, the log-probability of a
  vertex is the categorical log-mass, the registered KL is the categorical one;
- the schedules, temperature annealing and :class:`CapacityELBO` against its formula.
"""

from __future__ import annotations

import math
import warnings

import pyro
import pyro.poutine as poutine
import pytest
import torch
from pyro.infer import SVI, Trace_ELBO, TraceEnum_ELBO
from pyro.optim import Adam
from torch.distributions import Categorical, kl_divergence

from pyro_spvae.guides import MIVAEGuide
from pyro_spvae.infer import CapacityELBO, ExponentialSchedule, LinearSchedule
from pyro_spvae.models import MIVAE, RelaxedOneHotCode
from pyro_spvae.zoo import build_mivae

SHAPE = (1, 4, 4)
N_CAT = 3


def _data(n: int = 4, seed: int = 1) -> torch.Tensor:
    return torch.bernoulli(torch.full((n, *SHAPE), 0.5), generator=torch.Generator().manual_seed(seed))


def _pair(code: str = "categorical", **kwargs):
    return build_mivae(SHAPE, z_dim=2, n_categories=N_CAT, hidden=(8,), code=code, **kwargs)


# ----------------------------------------------------------------------------- model and guide
@pytest.mark.parametrize("code", ["categorical", "relaxed"])
@pytest.mark.parametrize("arch", ["dense", "conv"])
def test_site_shapes(code, arch):
    shape = (1, 8, 8) if arch == "conv" else SHAPE
    model, guide = build_mivae(shape, z_dim=2, n_categories=N_CAT, hidden=(8,), code=code, arch=arch,
                               channels=(4, 4), enumerate=None)
    x = torch.bernoulli(torch.full((5, *shape), 0.5))
    guide_trace = poutine.trace(guide).get_trace(x)
    model_trace = poutine.trace(poutine.replay(model, guide_trace)).get_trace(x)
    assert model_trace.nodes["z"]["value"].shape == (5, 2)
    c = model_trace.nodes["c"]["value"]
    assert c.shape == ((5,) if code == "categorical" else (5, N_CAT))
    assert model_trace.nodes["x"]["fn"].batch_shape == (5,)
    loc, scale, logits = guide.encode(x)
    assert loc.shape == scale.shape == (5, 2) and logits.shape == (5, N_CAT)
    assert torch.allclose(logits.exp().sum(-1), torch.ones(5))
    assert model.sample(3).shape == (3, *shape)


def test_decoder_is_vectorised_over_the_enumerated_code():
    model, guide = _pair()
    x = _data(5)
    calls = []
    model.decoder.register_forward_hook(lambda m, i, o: calls.append(tuple(i[0].shape)))
    guide_trace = poutine.trace(poutine.enum(guide, first_available_dim=-2)).get_trace(x)
    assert guide_trace.nodes["c"]["value"].shape == (N_CAT, 1)
    model_trace = poutine.trace(poutine.replay(model, guide_trace)).get_trace(x)
    assert calls == [(N_CAT, 5, 2 + N_CAT)]  # one pass decodes every (category, data point)
    assert model_trace.nodes["x"]["fn"].batch_shape == (N_CAT, 5)


def test_enumerated_elbo_equals_the_sum_over_c_by_hand():
    model, guide = _pair()
    x = _data(4)
    pyro.set_rng_seed(3)
    loss = TraceEnum_ELBO(max_plate_nesting=1).loss(model, guide, x)
    pyro.set_rng_seed(3)  # the same z: the guide draws z first, and enumerating c draws nothing
    z = poutine.trace(guide).get_trace(x).nodes["z"]["value"]
    with torch.no_grad():
        loc, scale, log_q = guide.encode(x)
        log_pz = torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(-1)
        log_qz = torch.distributions.Normal(loc, scale).log_prob(z).sum(-1)
        per_c = torch.stack([model.decode(z, model.one_hot(torch.full((4,), k))).log_prob(x)
                             for k in range(N_CAT)], -1)  # (B, n): log p(x | z, c = k)
        elbo = log_pz - log_qz + (log_q.exp() * (per_c - math.log(N_CAT) - log_q)).sum(-1)
    assert loss == pytest.approx(-float(elbo.sum()), rel=1e-5, abs=1e-4)


def _losses(temperature: float, num_particles: int) -> tuple[float, float, float]:
    """Losses of the enumerated pair, of the relaxed pair at ``temperature`` and of the same relaxed
    pair with hard (straight-through) codes, all with the same weights and the same draws: the
    guides draw ``z`` first, and the two relaxed pairs the same Gumbel noise (common random numbers).
    Each is the sum of 4 data points' negative ELBOs (about 11 nats each)."""
    torch.manual_seed(0)
    model_e, guide_e = _pair()
    x = _data(4)
    kw = {"num_particles": num_particles, "vectorize_particles": True, "max_plate_nesting": 1}
    pyro.set_rng_seed(5)
    out = [TraceEnum_ELBO(**kw).loss(model_e, guide_e, x)]
    for hard in (False, True):
        model_r, guide_r = _pair("relaxed", straight_through=hard)
        model_r.load_state_dict(model_e.state_dict())
        guide_r.load_state_dict(guide_e.state_dict())
        model_r.set_temperature(temperature)
        assert float(guide_r.temperature) == pytest.approx(temperature)  # one buffer for both
        pyro.set_rng_seed(5)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="TraceEnum_ELBO found no sample sites configured")
            out.append(Trace_ELBO(**kw).loss(model_r, guide_r, x))
    return out[0], out[1], out[2]


def test_relaxed_elbo_tends_to_the_enumerated_one():
    # hard codes are exact categorical draws (Gumbel-max): an unbiased estimate of the enumerated
    # ELBO (Monte Carlo standard error about 0.01 with 20000 particles)
    enumerated, _, hard = _losses(0.5, 20000)
    assert hard == pytest.approx(enumerated, abs=0.05)
    # the relaxed ELBO tends to the hard one draw by draw as the temperature goes to 0
    gaps = {t: abs(relaxed - hard) for t in (2.0, 0.01, 0.001) for _, relaxed, hard in [_losses(t, 2000)]}
    assert gaps[2.0] > 0.5 and gaps[0.01] < 0.01 and gaps[0.001] < 1e-3, gaps


def test_eval_mode_makes_the_relaxed_model_categorical():
    model, guide = _pair("relaxed")
    model.eval()
    guide.eval()
    x = _data(6)
    guide_trace = poutine.trace(guide).get_trace(x)
    c = guide_trace.nodes["c"]["value"]
    assert bool(((c == 0) | (c == 1)).all()) and torch.equal(c.sum(-1), torch.ones(6))
    model_trace = poutine.trace(poutine.replay(model, guide_trace)).get_trace(x)
    model_trace.compute_log_prob()
    guide_trace.compute_log_prob()
    assert torch.allclose(model_trace.nodes["c"]["log_prob"], torch.full((6,), -math.log(N_CAT)))
    _, _, log_q = guide.encode(x)
    expected = log_q.gather(-1, c.argmax(-1, keepdim=True))[..., 0]
    assert torch.allclose(guide_trace.nodes["c"]["log_prob"], expected)
    assert bool(((model.sample(4) >= 0) & (model.sample(4) <= 1)).all())


# ----------------------------------------------------------------------------- the relaxed code
def test_relaxed_code_distribution():
    logits = torch.tensor([0.2, -1.0, 1.5]).log_softmax(-1)
    soft = RelaxedOneHotCode(torch.tensor(0.5), logits=logits)
    hard = RelaxedOneHotCode(torch.tensor(0.5), logits=logits, hard=True)
    y = soft.rsample((5,))
    assert y.shape == (5, 3) and torch.allclose(y.sum(-1), torch.ones(5)) and bool((y > 0).all())
    assert torch.allclose(soft.log_prob(y), (y * logits).sum(-1))
    torch.manual_seed(0)
    h = hard.rsample((20000,))
    assert bool(((h == 0) | (h == 1)).all())
    freq = h.mean(0)  # Gumbel-max: argmax of the relaxed draw has law softmax(logits)
    assert torch.allclose(freq, logits.exp(), atol=0.015)
    assert torch.allclose(hard.log_prob(torch.eye(3)), logits)  # the categorical log-mass at vertices
    expanded = hard.expand((4, 2))
    assert isinstance(expanded, RelaxedOneHotCode) and expanded.hard and expanded.batch_shape == (4, 2)
    q = RelaxedOneHotCode(torch.tensor(0.3), logits=logits)
    p = RelaxedOneHotCode(torch.tensor(0.3), logits=torch.zeros(3))
    expected = kl_divergence(Categorical(logits=logits), Categorical(logits=torch.zeros(3)))
    assert torch.allclose(kl_divergence(q, p), expected)


def test_straight_through_gradient():
    logits = torch.zeros(3, requires_grad=True)
    y = RelaxedOneHotCode(torch.tensor(0.5), logits=logits, hard=True).rsample((8,))
    (y * torch.arange(3.0)).sum().backward()
    assert logits.grad is not None and bool(logits.grad.abs().sum() > 0)


# ----------------------------------------------------------------------------- schedules, temperature
def test_schedules():
    lin = LinearSchedule(0.0, 5.0, 100)
    assert [lin(0), lin(50), lin(100), lin(1000)] == [0.0, 2.5, 5.0, 5.0]
    assert LinearSchedule(1.0, 3.0, 0)(0) == 3.0
    exp = ExponentialSchedule(1.0, 0.3, 0.01)
    assert exp(0) == 1.0 and exp(10) == pytest.approx(math.exp(-0.1)) and exp(10000) == 0.3
    with pytest.raises(TypeError):
        LinearSchedule(0.0, 5.0, 10.5)
    with pytest.raises(ValueError):
        ExponentialSchedule(1.0, 0.0)
    with pytest.raises(ValueError):
        lin(-1)


def test_temperature_is_shared_and_annealed():
    model, guide = _pair("relaxed", temperature=1.0)
    schedule = ExponentialSchedule(1.0, 0.3, 0.5)
    for step in range(5):
        model.set_temperature(schedule(step))
    assert float(model.temperature) == pytest.approx(schedule(4)) == pytest.approx(float(guide.temperature))
    guide.set_temperature(0.05)
    assert float(model.temperature) == pytest.approx(0.05)
    pyro.set_rng_seed(0)
    c = poutine.trace(guide).get_trace(_data(64)).nodes["c"]["value"].detach()
    assert float(c.max(-1).values.mean()) > 0.95  # low temperature: nearly one-hot
    with pytest.raises(ValueError):
        model.set_temperature(0.0)


def test_argument_checks():
    with pytest.raises(ValueError):
        MIVAE(SHAPE, n_categories=1)
    with pytest.raises(TypeError):
        MIVAE(SHAPE, n_categories=2.0)
    with pytest.raises(ValueError):
        MIVAE(SHAPE, code="gumbel")
    with pytest.raises(TypeError):
        MIVAE(SHAPE, temperature=True)
    with pytest.raises(ValueError):
        MIVAEGuide(SHAPE, enumerate="yes")
    with pytest.raises(TypeError):
        MIVAEGuide(SHAPE, straight_through=1)
    model, _ = _pair()
    with pytest.raises(ValueError):
        model(torch.full((2, *SHAPE), 0.5))  # outside the Bernoulli support
    with pytest.raises(ValueError):
        model.decode(torch.zeros(2, 2), torch.zeros(2, N_CAT + 1))


# ----------------------------------------------------------------------------- JointVAE capacity objective
def test_capacity_elbo_matches_its_formula():
    model, guide = _pair("relaxed")
    x = _data(4)
    gamma, c_z = 30.0, LinearSchedule(0.0, 5.0, 10)
    elbo = CapacityELBO({"z": c_z, "c": LinearSchedule(0.0, 5.0, 10)}, gamma=gamma, max_plate_nesting=1)
    elbo.num_steps = 20  # both capacities at 5 nats; the code's is capped at log 3
    pyro.set_rng_seed(2)
    terms = elbo.compute_terms(model, guide, x)
    assert terms.capacity == {"z": 5.0, "c": pytest.approx(math.log(N_CAT))}
    pyro.set_rng_seed(2)
    guide_trace = poutine.trace(guide).get_trace(x)
    model_trace = poutine.trace(poutine.replay(model, guide_trace)).get_trace(x)
    with torch.no_grad():
        log_lik = model_trace.nodes["x"]["fn"].log_prob(x).sum()
        kl_z = kl_divergence(guide_trace.nodes["z"]["fn"], model_trace.nodes["z"]["fn"]).mean()
        _, _, log_q = guide.encode(x)
        kl_c = (log_q.exp() * (log_q + math.log(N_CAT))).sum(-1).mean()
    assert float(terms.kl["z"]) == pytest.approx(float(kl_z), rel=1e-5)
    assert float(terms.kl["c"]) == pytest.approx(float(kl_c), rel=1e-5)
    expected = -log_lik + gamma * 4 * ((kl_z - 5.0).abs() + (kl_c - math.log(N_CAT)).abs())
    assert float(terms.loss) == pytest.approx(float(expected), rel=1e-5)


def test_capacity_elbo_trains_and_counts_steps():
    model, guide = _pair("relaxed")
    elbo = CapacityELBO({"z": LinearSchedule(0.0, 5.0, 100), "c": LinearSchedule(0.0, 5.0, 100)})
    svi = SVI(model, guide, Adam({"lr": 1e-2}), elbo)
    losses = [svi.step(_data(8)) for _ in range(3)]
    assert all(math.isfinite(v) for v in losses) and elbo.num_steps == 3
    plain = CapacityELBO({"z": LinearSchedule()}, auto_step=False)  # "c" gets its plain KL
    assert math.isfinite(SVI(model, guide, Adam({"lr": 1e-2}), plain).step(_data(8))) and plain.num_steps == 0


def test_capacity_elbo_refuses_sampled_discrete_sites():
    model, guide = _pair(enumerate=None)
    with pytest.raises(ValueError, match="reparameterised"):
        CapacityELBO({"z": LinearSchedule()}).loss(model, guide, _data(4))
    with pytest.raises(TypeError):
        CapacityELBO({"z": 5.0})
