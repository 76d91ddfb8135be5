"""TraceIWAE_ELBO against ground truth: exact posteriors, brute force, finite differences, SNR."""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.nn import PyroModule

from pyro_spvae.guides import (
    GlobalOffsetPPCAGuide,
    GlobalOffsetPPCAPosteriorGuide,
    LinearGaussianGuide,
    LinearGaussianPosteriorGuide,
    MixtureOfPPCAGuide,
    MixtureOfPPCAPosteriorGuide,
)
from pyro_spvae.infer import TraceIWAE_ELBO
from pyro_spvae.models import GlobalOffsetPPCA, LinearGaussianVAE, MixtureOfPPCA

F64 = torch.float64
OPTIONS = [("iwae", False), ("iwae", True), ("dreg", False)]


def _zero_grads(*modules):
    for m in modules:
        for p in m.parameters():
            p.grad = None


def _grads(module):
    return torch.cat([p.grad.reshape(-1) for p in module.parameters()])


# --------------------------------------------------------------------------- exact posterior
@pytest.mark.parametrize("K", [1, 3, 40])
def test_exact_posterior_every_estimator_is_exact(K):
    model = LinearGaussianVAE(4, 2, dtype=F64)
    guide = LinearGaussianPosteriorGuide(model)
    x = torch.randn(5, 4, dtype=F64)
    truth = model.exact_log_prob(x).sum().item()
    pyro_elbos = [
        pyro.infer.Trace_ELBO(num_particles=K),
        pyro.infer.RenyiELBO(alpha=0, num_particles=K),
    ]
    for elbo in pyro_elbos:
        assert -elbo.loss(model, guide, x) == pytest.approx(truth, abs=1e-8)
    for estimator, stl in OPTIONS:
        for vectorize in (True, False) if K <= 3 else (True,):
            elbo = TraceIWAE_ELBO(
                num_particles=K, estimator=estimator, stl=stl, vectorize_particles=vectorize
            )
            assert -elbo.loss(model, guide, x) == pytest.approx(truth, abs=1e-8)
            assert -elbo.differentiable_loss(model, guide, x).item() == pytest.approx(truth, abs=1e-8)
            assert -elbo.loss_and_grads(model, guide, x) == pytest.approx(truth, abs=1e-8)
            bound = elbo.compute_bounds(model, guide, x)
            torch.testing.assert_close(bound.local, model.exact_log_prob(x).detach(), rtol=0, atol=1e-8)


@pytest.mark.parametrize("K", [1, 7])
def test_exact_posterior_mixture(K):
    model = MixtureOfPPCA(3, 4, 2, dtype=F64)
    guide = MixtureOfPPCAPosteriorGuide(model)
    x = torch.randn(6, 4, dtype=F64) * 2
    truth = model.exact_log_prob(x).sum().item()
    assert -pyro.infer.Trace_ELBO(num_particles=K).loss(model, guide, x) == pytest.approx(truth, abs=1e-8)
    elbo = TraceIWAE_ELBO(num_particles=K)
    assert -elbo.loss(model, guide, x) == pytest.approx(truth, abs=1e-8)
    assert -elbo.loss_and_grads(model, guide, x) == pytest.approx(truth, abs=1e-8)


def test_exact_posterior_global_latent():
    model = GlobalOffsetPPCA(3, 2, dtype=F64)
    guide = GlobalOffsetPPCAPosteriorGuide(model)
    x = torch.randn(4, 3, dtype=F64)
    truth = model.exact_log_prob(x).item()
    for mode in ("nested", "joint"):
        for estimator, stl in OPTIONS:
            elbo = TraceIWAE_ELBO(num_particles=5, estimator=estimator, stl=stl, global_latents=mode)
            assert -elbo.loss(model, guide, x) == pytest.approx(truth, abs=1e-8)
            assert -elbo.differentiable_loss(model, guide, x).item() == pytest.approx(truth, abs=1e-8)


# --------------------------------------------------------------------------- poor guides
def _bound_stats(elbo, model, guide, x, reps):
    with torch.no_grad():
        vals = torch.tensor([-elbo.loss(model, guide, x) for _ in range(reps)], dtype=F64)
    return vals.mean().item(), vals.std().item() / math.sqrt(reps)


@pytest.mark.parametrize("estimator,stl", OPTIONS)
def test_poor_guide_below_truth_and_tightens(estimator, stl):
    model = LinearGaussianVAE(4, 2, dtype=F64)
    guide = LinearGaussianGuide(4, 2, dtype=F64)
    x = 1.5 * torch.randn(6, 4, dtype=F64)
    truth = model.exact_log_prob(x).sum().item()
    stats = [
        _bound_stats(TraceIWAE_ELBO(num_particles=K, estimator=estimator, stl=stl), model, guide, x, 25)
        for K in (1, 5, 50)
    ]
    for (m1, s1), (m2, s2) in zip(stats, stats[1:]):
        assert m2 - m1 > 3 * math.hypot(s1, s2), stats
    mean, se = stats[-1]
    assert mean < truth + 3 * se, (stats, truth)
    assert stats[0][0] < truth - 3 * stats[0][1], (stats, truth)  # strictly loose for the poor guide


def test_poor_guide_mixture_below_truth_and_tightens():
    model = MixtureOfPPCA(3, 4, 2, dtype=F64)
    guide = MixtureOfPPCAGuide(3, 4, 2, dtype=F64)
    x = 2 * torch.randn(6, 4, dtype=F64)
    truth = model.exact_log_prob(x).sum().item()
    stats = [_bound_stats(TraceIWAE_ELBO(num_particles=K), model, guide, x, 25) for K in (1, 5, 50)]
    for (m1, s1), (m2, s2) in zip(stats, stats[1:]):
        assert m2 - m1 > 3 * math.hypot(s1, s2), stats
    assert stats[-1][0] < truth + 3 * stats[-1][1]


# --------------------------------------------------------------------------- global latents
def _log_normal(x, loc, scale):
    return dist.Normal(loc, scale).log_prob(x).sum(-1)


def test_global_latent_per_datapoint_bound_matches_brute_force():
    """Recompute log (1/K) sum_k w_ik(theta) by hand from the sampled theta and z_ik."""
    model = GlobalOffsetPPCA(3, 2, prior_scale=0.7, dtype=F64)
    guide = GlobalOffsetPPCAGuide(3, 2, dtype=F64)
    with torch.no_grad():
        for p in guide.parameters():
            p.add_(0.3 * torch.randn_like(p))
    x = torch.randn(5, 3, dtype=F64)
    K = 6
    for vectorize in (True, False):
        bound = TraceIWAE_ELBO(num_particles=K, vectorize_particles=vectorize).compute_bounds(model, guide, x)
        guide_trace = bound.terms.traces[0][1]
        theta = guide_trace.nodes["theta"]["value"]
        # one trace of K vectorised particles (K, 5, 2), or K traces of one particle (5, 2) as Pyro's
        # sequential particles (no particle plate)
        z = torch.cat([g.nodes["z"]["value"].reshape(-1, 5, 2) for _, g in bound.terms.traces], 0)
        assert theta.shape == (3,)  # ONE theta shared by all particles (nested estimator)
        for _, g in bound.terms.traces:
            torch.testing.assert_close(g.nodes["theta"]["value"], theta)
        assert z.shape == (K, 5, 2)
        with torch.no_grad():
            q_loc = (x - theta) @ guide.enc_weight.T + guide.enc_bias
            log_w = (
                _log_normal(z, torch.zeros(2, dtype=F64), 1.0)
                + _log_normal(x, z @ model.W.T + model.b + theta, model.log_s.exp())
                - _log_normal(z, q_loc, guide.log_scale.exp())
            )
            local = torch.logsumexp(log_w, 0) - math.log(K)
            glob = _log_normal(theta, torch.zeros(3, dtype=F64), 0.7) - _log_normal(
                theta, guide.theta_loc, guide.log_theta_scale.exp()
            )
        torch.testing.assert_close(bound.local, local, rtol=0, atol=1e-10)
        torch.testing.assert_close(bound.global_term, glob, rtol=0, atol=1e-10)
        torch.testing.assert_close(bound.total, glob + local.sum(), rtol=0, atol=1e-10)


def test_global_latent_nested_bound_exact_local_posterior():
    """With exact local posteriors the nested bound is log p(theta)/q(theta) + sum_i log p(x_i|theta)
    for every K, and its expectation over q(theta) is log p(x) - KL(q(theta) || p(theta | x))."""
    model = GlobalOffsetPPCA(3, 2, prior_scale=1.0, dtype=F64)
    t_loc, t_cov = model.exact_theta_posterior(torch.zeros(1, 3, dtype=F64))
    guide = GlobalOffsetPPCAPosteriorGuide(model, exact_theta=False, theta_scale=0.4)
    x = torch.randn(4, 3, dtype=F64)
    with torch.no_grad():
        for K in (1, 9):
            bound = TraceIWAE_ELBO(num_particles=K).compute_bounds(model, guide, x)
            theta = bound.terms.traces[0][1].nodes["theta"]["value"]
            torch.testing.assert_close(bound.local, model.exact_local_log_prob(x, theta), rtol=0, atol=1e-9)
        elbo = TraceIWAE_ELBO(num_particles=3)
        vals = torch.tensor([-elbo.loss(model, guide, x) for _ in range(200)], dtype=F64)
        loc, cov = model.exact_theta_posterior(x)
        q = dist.MultivariateNormal(
            torch.zeros(3, dtype=F64), covariance_matrix=0.16 * torch.eye(3, dtype=F64)
        )
        post = dist.MultivariateNormal(loc, covariance_matrix=cov)
        kl = torch.distributions.kl_divergence(q, post)
        expected = (model.exact_log_prob(x) - kl).item()
    assert post.event_shape == (3,)
    se = vals.std().item() / math.sqrt(len(vals))
    assert abs(vals.mean().item() - expected) < 4 * se
    assert expected < model.exact_log_prob(x).item()


def test_joint_mode_matches_pyro_renyi():
    """global_latents="joint" is Pyro's RenyiELBO(alpha=0) (one weight per particle for the batch)."""
    model = GlobalOffsetPPCA(3, 2, dtype=F64)
    guide = GlobalOffsetPPCAGuide(3, 2, dtype=F64)
    x = torch.randn(4, 3, dtype=F64)
    ours = TraceIWAE_ELBO(num_particles=8, global_latents="joint", max_plate_nesting=1)
    renyi = pyro.infer.RenyiELBO(alpha=0, num_particles=8, vectorize_particles=True, max_plate_nesting=1)
    pyro.set_rng_seed(3)
    a = ours.loss(model, guide, x)
    pyro.set_rng_seed(3)
    b = renyi.loss(model, guide, x)
    assert a == pytest.approx(b, abs=1e-9)


def test_global_bounds_valid_in_expectation():
    model = GlobalOffsetPPCA(3, 2, dtype=F64)
    guide = GlobalOffsetPPCAGuide(3, 2, dtype=F64)
    x = torch.randn(6, 3, dtype=F64)
    truth = model.exact_log_prob(x).item()
    for mode in ("nested", "joint"):
        mean, se = _bound_stats(TraceIWAE_ELBO(num_particles=20, global_latents=mode), model, guide, x, 40)
        assert mean < truth + 3 * se


# --------------------------------------------------------------------------- gradients
def _finite_difference_check(model, guide, x, elbo, seed=5):
    params = list(model.parameters()) + list(guide.parameters())
    pyro.set_rng_seed(seed)
    _zero_grads(model, guide)
    elbo.differentiable_loss(model, guide, x).backward()
    analytic = [p.grad.clone() for p in params]
    eps = 1e-6
    for p, g in zip(params, analytic):
        flat = p.data.view(-1)
        for j in range(flat.numel()):
            old = flat[j].item()
            flat[j] = old + eps
            pyro.set_rng_seed(seed)
            up = elbo.loss(model, guide, x)
            flat[j] = old - eps
            pyro.set_rng_seed(seed)
            down = elbo.loss(model, guide, x)
            flat[j] = old
            fd = (up - down) / (2 * eps)
            assert g.view(-1)[j].item() == pytest.approx(fd, rel=1e-5, abs=1e-6)


def test_iwae_gradients_match_finite_differences():
    model = LinearGaussianVAE(3, 2, dtype=F64)
    guide = LinearGaussianGuide(3, 2, dtype=F64)
    with torch.no_grad():
        for p in guide.parameters():
            p.add_(0.3 * torch.randn_like(p))
    x = torch.randn(2, 3, dtype=F64)
    _finite_difference_check(model, guide, x, TraceIWAE_ELBO(num_particles=4))


def test_iwae_gradients_match_finite_differences_global_latent():
    model = GlobalOffsetPPCA(2, 1, dtype=F64)
    guide = GlobalOffsetPPCAGuide(2, 1, dtype=F64)
    x = torch.randn(3, 2, dtype=F64)
    _finite_difference_check(model, guide, x, TraceIWAE_ELBO(num_particles=3))


def _sample_grads(elbo, model, guide, x, reps, replicas=1):
    """``reps`` gradient draws for the batch ``x``, each averaged over ``replicas`` independent copies
    of ``x`` evaluated in one vectorised call (same mean, variance divided by ``replicas``; only valid
    without global latents, whose draw is shared by the whole batch)."""
    x_rep = x.repeat(replicas, 1)
    gm, gg = [], []
    for _ in range(reps):
        _zero_grads(model, guide)
        elbo.loss_and_grads(model, guide, x_rep)
        gm.append(_grads(model) / replicas)
        gg.append(_grads(guide) / replicas)
    return torch.stack(gm), torch.stack(gg)


def _assert_same_mean(a, b, z=4.5):
    se = torch.sqrt(a.var(0) / a.shape[0] + b.var(0) / b.shape[0])
    assert ((a.mean(0) - b.mean(0)).abs() < z * se + 1e-9).all(), (a.mean(0), b.mean(0), se)


def test_dreg_and_iwae_agree_in_expectation():
    """DReG is unbiased: both the model and the guide gradients agree with IWAE's in expectation."""
    model = LinearGaussianVAE(3, 2, dtype=F64)
    guide = LinearGaussianGuide(3, 2, dtype=F64)
    with torch.no_grad():
        for p in guide.parameters():
            p.add_(0.3 * torch.randn_like(p))
    x = torch.randn(3, 3, dtype=F64)
    m_iwae, g_iwae = _sample_grads(TraceIWAE_ELBO(num_particles=5), model, guide, x, 40, replicas=25)
    dreg = TraceIWAE_ELBO(num_particles=5, estimator="dreg")
    m_dreg, g_dreg = _sample_grads(dreg, model, guide, x, 40, replicas=25)
    _assert_same_mean(m_iwae, m_dreg)
    _assert_same_mean(g_iwae, g_dreg)
    # the two routes of DReG (loss_and_grads and differentiable_loss) give identical gradients
    elbo = TraceIWAE_ELBO(num_particles=5, estimator="dreg")
    pyro.set_rng_seed(11)
    _zero_grads(model, guide)
    elbo.loss_and_grads(model, guide, x)
    first = torch.cat([_grads(model), _grads(guide)])
    pyro.set_rng_seed(11)
    _zero_grads(model, guide)
    elbo.differentiable_loss(model, guide, x).backward()
    torch.testing.assert_close(torch.cat([_grads(model), _grads(guide)]), first)


def test_dreg_and_iwae_agree_in_expectation_global_latent():
    """With a global latent theta(phi) DReG keeps the direct d log p / d theta path unbiased."""
    model = GlobalOffsetPPCA(2, 1, dtype=F64)
    guide = GlobalOffsetPPCAGuide(2, 1, dtype=F64)
    with torch.no_grad():
        for p in guide.parameters():
            p.add_(0.3 * torch.randn_like(p))
    x = torch.randn(3, 2, dtype=F64)
    m_iwae, g_iwae = _sample_grads(TraceIWAE_ELBO(num_particles=4), model, guide, x, 150)
    m_dreg, g_dreg = _sample_grads(TraceIWAE_ELBO(num_particles=4, estimator="dreg"), model, guide, x, 150)
    _assert_same_mean(m_iwae, m_dreg)
    _assert_same_mean(g_iwae, g_dreg)


def test_dreg_snr_beats_iwae_as_k_grows():
    """Guide-gradient signal-to-noise ratio |E g| / std g (Tucker et al. 2019, Fig. 1; Rainforth et
    al. 2018): IWAE's stays low, DReG's grows with K, near the optimum of a mean-field guide."""
    model = LinearGaussianVAE(4, 2, dtype=F64)
    guide = LinearGaussianGuide(4, 2, dtype=F64)
    with torch.no_grad():  # mean-field approximation of the exact posterior (near the optimum)
        s2 = model.noise_scale**2
        cov = torch.linalg.inv(torch.eye(2, dtype=F64) + model.W.T @ model.W / s2)
        A = cov @ model.W.T / s2
        guide.enc_weight.copy_(A)
        guide.enc_bias.copy_(-A @ model.b)
        guide.log_scale.copy_(cov.diagonal().sqrt().log())
    x = 1.5 * torch.randn(3, 4, dtype=F64)

    def snr(estimator, K):
        # 80 draws of the gradient averaged over 10 replicas of x: SNR scaled by sqrt(10) for both
        # estimators alike, which leaves the comparisons below unchanged.
        elbo = TraceIWAE_ELBO(num_particles=K, estimator=estimator)
        _, g = _sample_grads(elbo, model, guide, x, 80, replicas=10)
        return (g.mean(0).abs() / g.std(0)).mean().item() / math.sqrt(10)

    iwae = {K: snr("iwae", K) for K in (10, 100)}
    dreg = {K: snr("dreg", K) for K in (10, 100)}
    assert dreg[100] > dreg[10] * 1.2, (iwae, dreg)
    assert dreg[100] > 2 * iwae[100], (iwae, dreg)
    assert dreg[100] / iwae[100] > dreg[10] / iwae[10], (iwae, dreg)


def test_score_function_gradient_for_discrete_sites_is_unbiased():
    """IWAE with a sampled discrete site: the surrogate's guide gradient matches the exact gradient
    of E[bound] (computed by enumerating c for K = 1, where the bound is the ELBO)."""
    model = MixtureOfPPCA(2, 3, 1, dtype=F64)
    guide = MixtureOfPPCAGuide(2, 3, 1, dtype=F64)
    with torch.no_grad():
        guide.cls_weight.normal_(0, 0.5)
    x = torch.randn(2, 3, dtype=F64)
    _, g_iwae = _sample_grads(TraceIWAE_ELBO(num_particles=1), model, guide, x, 40, replicas=100)
    elbo = pyro.infer.TraceEnum_ELBO(max_plate_nesting=1, num_particles=2000, vectorize_particles=True)
    _zero_grads(model, guide)
    elbo.loss_and_grads(model, pyro.infer.config_enumerate(guide, "parallel"), x)
    reference = torch.cat([guide.cls_weight.grad.reshape(-1), guide.cls_bias.grad.reshape(-1)])
    ours = g_iwae[:, : reference.numel()]
    se = ours.std(0) / math.sqrt(ours.shape[0])
    tol = 4.5 * se + 0.02 * reference.abs()
    assert ((ours.mean(0) - reference).abs() < tol).all(), (ours.mean(0), reference)


def test_svi_training_tightens_bound():
    model = LinearGaussianVAE(4, 2)
    guide = LinearGaussianGuide(4, 2)
    x = torch.randn(16, 4)
    elbo = TraceIWAE_ELBO(num_particles=8, estimator="dreg")
    svi = pyro.infer.SVI(model, guide, pyro.optim.Adam({"lr": 0.1}), elbo)
    first = sum(svi.evaluate_loss(x) for _ in range(5)) / 5
    for _ in range(60):
        svi.step(x)
    last = sum(svi.evaluate_loss(x) for _ in range(5)) / 5
    assert last < first - 5


# --------------------------------------------------------------------------- errors
def test_clear_errors():
    model = MixtureOfPPCA(2, 3, 1)
    guide = MixtureOfPPCAGuide(2, 3, 1)
    x = torch.randn(2, 3)
    with pytest.raises(ValueError, match=r"DReG needs a reparameterisable guide.*'c'"):
        TraceIWAE_ELBO(num_particles=2, estimator="dreg").loss(model, guide, x)
    with pytest.raises(ValueError, match=r"STL needs a reparameterisable guide.*'c'"):
        TraceIWAE_ELBO(num_particles=2, stl=True).differentiable_loss(model, guide, x)
    with pytest.raises(ValueError, match="estimator"):
        TraceIWAE_ELBO(estimator="vimco")
    with pytest.raises(ValueError, match="num_particles"):
        TraceIWAE_ELBO(num_particles=0)
    with pytest.raises(ValueError, match="stl=False"):
        TraceIWAE_ELBO(estimator="dreg", stl=True)
    with pytest.raises(ValueError, match="global_latents"):
        TraceIWAE_ELBO(global_latents="mixed")
    with pytest.raises(ValueError, match="max_plate_nesting"):
        TraceIWAE_ELBO(max_plate_nesting=0)
    lg = LinearGaussianVAE(3, 1)
    with pytest.raises(ValueError, match=r"guide only: \['c'\]"):
        TraceIWAE_ELBO().loss(lg, guide, x)
    with pytest.raises(ValueError, match="no sample site of the model lies in a plate named 'batch'"):
        TraceIWAE_ELBO(data_plate="batch").loss(lg, LinearGaussianGuide(3, 1), x)
    with pytest.raises(ValueError, match="enumeration"):
        TraceIWAE_ELBO().loss(model, pyro.infer.config_enumerate(guide), x)


def test_data_subsampling_scale_multiplies_per_point_bounds():
    """A common scale on the data-plate sites (subsampling factor) multiplies sum_i log mean_k w_ik
    (applied outside the log-mean-exp); inconsistent model/guide scales are rejected."""
    import pyro.poutine as poutine

    model = LinearGaussianVAE(3, 2, dtype=F64)
    guide = LinearGaussianGuide(3, 2, dtype=F64)
    x = torch.randn(4, 3, dtype=F64)
    elbo = TraceIWAE_ELBO(num_particles=6, max_plate_nesting=1)
    pyro.set_rng_seed(4)
    base = elbo.compute_bounds(model, guide, x)
    pyro.set_rng_seed(4)
    scaled = elbo.compute_bounds(poutine.scale(model, 2.5), poutine.scale(guide, 2.5), x)
    torch.testing.assert_close(scaled.local, base.local)
    torch.testing.assert_close(scaled.total, 2.5 * base.total)
    with pytest.raises(ValueError, match="scale"):
        elbo.loss(poutine.scale(model, 2.5), guide, x)


# --------------------------------------------------------------------------- Pyro's ELBO contract
@pytest.mark.parametrize("vectorize", [True, False])
def test_follows_pyro_elbo_contract(vectorize):
    """num_particles / vectorize_particles / max_plate_nesting are the base class's attributes (the
    guessed nesting written back as Pyro does), the base-class trace hooks give K particles (not
    K^2), and loss, differentiable_loss, loss_and_grads and compute_bounds agree on one draw."""
    model = LinearGaussianVAE(3, 2, dtype=F64)
    guide = LinearGaussianGuide(3, 2, dtype=F64)
    x = torch.randn(5, 3, dtype=F64)
    K = 4
    elbo = TraceIWAE_ELBO(num_particles=K, vectorize_particles=vectorize)
    assert (elbo.num_particles, elbo.vectorize_particles) == (K, vectorize)
    assert elbo.max_plate_nesting == float("inf")  # not known before the first call
    assert not hasattr(elbo, "vectorize") and not hasattr(elbo, "_plate_nesting")  # no second copies
    traces = list(elbo._get_traces(model, guide, (x,), {}))
    # the model's data plate, plus Pyro's particle plate when vectorising (as ELBO._guess_max_plate_nesting)
    assert elbo.max_plate_nesting == (2 if vectorize else 1)
    assert len(traces) == (1 if vectorize else K)
    for _, guide_trace in traces:
        z = guide_trace.nodes["z"]["value"]
        assert z.shape == ((K, 5, 2) if vectorize else (5, 2))
        frames = {f.name: f.dim for f in guide_trace.nodes["z"]["cond_indep_stack"]}
        assert frames == ({"num_particles_vectorized": -2, "data": -1} if vectorize else {"data": -1})
    # Pyro's own vectorised ELBO places the same particle plate
    if vectorize:
        ref = pyro.infer.Trace_ELBO(num_particles=K, vectorize_particles=True, max_plate_nesting=1)
        (_, ref_guide), = ref._get_traces(model, guide, (x,), {})
        assert ref_guide.nodes["z"]["value"].shape == (K, 5, 2)
        assert ref.max_plate_nesting == elbo.max_plate_nesting
    losses = []
    for f in (
        elbo.loss,
        lambda *a: elbo.differentiable_loss(*a).item(),
        elbo.loss_and_grads,
        lambda *a: -elbo.compute_bounds(*a).total.item(),
    ):
        pyro.set_rng_seed(1)
        losses.append(f(model, guide, x))
    assert losses == pytest.approx([losses[0]] * 4, abs=1e-10)
    pyro.set_rng_seed(1)
    assert elbo.compute_bounds(model, guide, x).terms.local_p.shape == (K, 5)


class _SharedShiftGuide(PyroModule):
    """Guide whose location uses ``h``, a tensor computed ONCE from its parameter outside the
    guide, so that every call back-propagates through the same graph of ``h``."""

    def __init__(self):
        super().__init__()
        self.a = torch.nn.Parameter(torch.tensor(0.3, dtype=F64))

    def forward(self, x, h):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(h * x, torch.tensor(0.8, dtype=F64)))


def _shared_shift_model(x, h):
    with pyro.plate("data", x.shape[0]):
        z = pyro.sample("z", dist.Normal(torch.zeros((), dtype=F64), 1.0))
        pyro.sample("x", dist.Normal(z, 1.0), obs=x)


@pytest.mark.parametrize("estimator", ["iwae", "dreg"])
def test_retain_graph_is_honoured(estimator):
    """loss_and_grads back-propagates with retain_graph=self.retain_graph, as Trace_ELBO does: with
    retain_graph=True a graph shared by two calls survives the first, and the gradients equal a plain
    backward of differentiable_loss; without it the second backward fails like Pyro's."""
    guide = _SharedShiftGuide()
    x = torch.randn(4, dtype=F64)
    h = guide.a.exp()  # one graph shared by every call below
    elbo = TraceIWAE_ELBO(num_particles=3, estimator=estimator, max_plate_nesting=1, retain_graph=True)
    assert elbo.retain_graph is True
    grads = []
    for _ in range(2):
        pyro.set_rng_seed(2)
        guide.a.grad = None
        elbo.loss_and_grads(_shared_shift_model, guide, x, h)
        grads.append(guide.a.grad.clone())
    pyro.set_rng_seed(2)
    guide.a.grad = None
    elbo.differentiable_loss(_shared_shift_model, guide, x, h).backward(retain_graph=True)
    torch.testing.assert_close(grads[0], grads[1])
    torch.testing.assert_close(guide.a.grad, grads[0])
    assert grads[0].abs() > 0

    plain = TraceIWAE_ELBO(num_particles=3, estimator=estimator, max_plate_nesting=1)
    h = guide.a.exp()
    plain.loss_and_grads(_shared_shift_model, guide, x, h)
    with pytest.raises(RuntimeError, match="second time"):
        plain.loss_and_grads(_shared_shift_model, guide, x, h)


def test_nan_loss_warns():
    """Every loss goes through pyro.util.warn_if_nan, as in Pyro's ELBOs."""

    def model(x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(0.0, 1.0))
            pyro.sample("x", dist.Normal(z, 1.0), obs=x)

    def guide(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(0.0, 1.0))

    x = torch.tensor([0.5, float("nan")])
    with pyro.validation_enabled(False):
        for estimator in ("iwae", "dreg"):
            elbo = TraceIWAE_ELBO(num_particles=2, estimator=estimator)
            for method in (elbo.loss, elbo.loss_and_grads, elbo.differentiable_loss):
                with pytest.warns(UserWarning, match="Encountered NaN: loss"):
                    method(model, guide, x)
