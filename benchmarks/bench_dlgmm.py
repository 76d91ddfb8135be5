"""Cost of a DLGMM training step with K = 10 mixture components against a VAE step of the same networks.

The baseline is a VAE built by hand here: :class:`pyro_spvae.models.VAE` (``z ~ N(0, I)``) and the
amortised Gaussian guide :class:`pyro_spvae.guides.GaussianGuide`, 784-200-200-50 dense networks
(and the convolutional pair), Bernoulli likelihood, one batch of 128 dynamically binarised
embedded-MNIST images, ``Trace_ELBO``. Each DLGMM variant starts from copies of the SAME encoder
and decoder weights (a mixture guide adds ``K`` heads to the last encoder layer):

- ``enumerated prior`` (the goal, <= 2x): :class:`~pyro_spvae.models.DLGMM` with the component
  index ``"c"`` enumerated in the model by ``TraceEnum_ELBO`` (``component_site=True,
  enumerate="parallel"``, all ``K`` components in one vectorised pass over a ``(K, 1)`` index) and
  the same Gaussian guide as the VAE: the only difference is the prior, ``log sum_k pi_k N(z; mu_k,
  sigma_k)`` instead of ``log N(z; 0, I)``;
- ``enumerated prior + mixture guide (a)``: the same with the pathwise ``K``-component posterior
  :class:`~pyro_spvae.guides.MixtureGuide` (``MixtureOfDiagNormals``);
- ``guide (b), enumerated in the guide``: :class:`~pyro_spvae.guides.EnumeratedMixtureGuide`
  under ``TraceEnum_ELBO``: one ``z`` per component, so the decoder runs on ``K x B`` latents;
- ``guide (c), MixtureELBO``: :class:`~pyro_spvae.infer.MixtureELBO` with guide (a), also ``K``
  decoder passes;
- ``guide (d), DP sticks``: truncated DP (``T = K``) with per-data-point Kumaraswamy sticks and a
  pathwise mixture, ``TraceMeanField_ELBO`` (analytic ``KL(Kumaraswamy || Beta)``).

Every side computes its loss with Pyro's :class:`~pyro.infer.elbo.ELBOModule`
(``elbo(model, guide)``) under ``pyro.settings.context(module_local_params=True)``, so the modules
keep their own parameters (no shared global param store), and steps with its own
``torch.optim.Adam``; Pyro validation on (the default). One torch thread; the repetitions of all
sides are interleaved and medians compared, so load from other processes hits every side alike.

``run(quick=False) -> dict`` is called by ``benchmarks/run.py``; ``python benchmarks/bench_dlgmm.py
[--quick]`` runs it stand-alone and prints the summary.
"""

from __future__ import annotations

import copy
import json
import statistics
import sys
import time
from collections.abc import Callable

import pyro
import torch
from pyro.infer import Trace_ELBO, TraceEnum_ELBO, TraceMeanField_ELBO

from pyro_spvae.data import load_dataset
from pyro_spvae.guides import EnumeratedMixtureGuide, GaussianGuide, MixtureGuide, StickBreakingGuide
from pyro_spvae.infer import MixtureELBO
from pyro_spvae.models import DLGMM, VAE

K = 10
GOAL = 2.0


class _Side:
    """A (model, guide, ELBO) with its own Adam optimiser over the ELBOModule's parameters."""

    def __init__(self, model: torch.nn.Module, guide: torch.nn.Module, elbo: pyro.infer.ELBO) -> None:
        self.loss_fn = elbo(model, guide)
        self.opt = torch.optim.Adam(self.loss_fn.parameters(), lr=1e-3)

    def step(self, x: torch.Tensor) -> float:
        self.opt.zero_grad(set_to_none=True)
        loss = self.loss_fn(x)
        loss.backward()
        self.opt.step()
        return float(loss.detach())


@torch.no_grad()
def _copy_trunk(src: torch.nn.Module, dst: torch.nn.Module) -> None:
    """Copy every parameter of ``src`` into ``dst`` with the same name and shape (all but the wider
    output layer of a mixture guide)."""
    dst_state = dst.state_dict()
    for name, value in src.state_dict().items():
        if name in dst_state and dst_state[name].shape == value.shape:
            dst_state[name].copy_(value)


def _sides(arch: str, event_shape: tuple[int, ...], full: bool) -> dict[str, Callable[[], _Side]]:
    net = {"z_dim": 50, "hidden": (200, 200), "arch": arch}
    torch.manual_seed(0)
    vae, gauss = VAE(event_shape, likelihood="bernoulli", **net), GaussianGuide(event_shape, **net)

    def dlgmm(**kw) -> DLGMM:
        model = DLGMM(event_shape, num_components=K, likelihood="bernoulli", **net, **kw)
        _copy_trunk(vae, model)  # same decoder weights; the mixture parameters are its own
        return model

    def guide(cls, **kw) -> torch.nn.Module:
        g = cls(event_shape, num_components=K, **net, **kw)
        _copy_trunk(gauss, g)
        return g

    enum = TraceEnum_ELBO(max_plate_nesting=1)
    sides = {
        "VAE (Trace_ELBO)": lambda: _Side(copy.deepcopy(vae), copy.deepcopy(gauss), Trace_ELBO()),
        "enumerated prior, Gaussian guide": lambda: _Side(
            dlgmm(component_site=True, enumerate="parallel"), copy.deepcopy(gauss), enum),
    }
    if full:
        sides.update({
            "enumerated prior, mixture guide (a)": lambda: _Side(
                dlgmm(component_site=True, enumerate="parallel"), guide(MixtureGuide), enum),
            "guide (b), enumerated in the guide": lambda: _Side(
                dlgmm(component_site=True), guide(EnumeratedMixtureGuide), enum),
            "guide (c), MixtureELBO": lambda: _Side(
                dlgmm(), guide(MixtureGuide), MixtureELBO(max_plate_nesting=1)),
            "guide (d), DP sticks, TraceMeanField": lambda: _Side(
                dlgmm(prior="dp", weights="local"), guide(StickBreakingGuide), TraceMeanField_ELBO()),
        })
    return sides


def _bench(arch: str, reps: int, steps: int, full: bool) -> dict:
    data = load_dataset("embedded", "train", "binary-dynamic")
    x = data.batch(torch.arange(128), torch.Generator().manual_seed(0))
    with pyro.settings.context(module_local_params=True):
        sides = {name: make() for name, make in _sides(arch, tuple(data.event_shape), full).items()}
        first = {name: side.step(x) for name, side in sides.items()}
        for side in sides.values():  # warm-up
            side.step(x)
        times: dict[str, list[float]] = {name: [] for name in sides}
        for _ in range(reps):
            for name, side in sides.items():
                t = time.perf_counter()
                for _ in range(steps):
                    side.step(x)
                times[name].append((time.perf_counter() - t) / steps)
    base = statistics.median(times["VAE (Trace_ELBO)"])
    return {
        "arch": arch, "batch": 128, "num_components": K, "reps": reps, "steps_per_rep": steps,
        "rows": [{"side": name, "step_ms": 1e3 * statistics.median(t), "ratio": statistics.median(t) / base,
                  "first_loss": first[name], "step_ms_all": [1e3 * v for v in t]}
                 for name, t in times.items()],
    }


def run(quick: bool = False) -> dict:
    """Run the benchmark; returns a JSON-serialisable dict with a markdown ``"summary"``."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        reps, steps = (3, 2) if quick else (15, 4)
        results = [_bench("dense", reps, steps, full=True),
                   _bench("conv", max(3, reps // 3), steps, full=False)]
    finally:
        torch.set_num_threads(previous)
    headline = {r["arch"]: next(row for row in r["rows"] if row["side"] == "enumerated prior, Gaussian guide")
                for r in results}
    ok = all(row["ratio"] <= GOAL for row in headline.values())
    lines = [
        f"One training step (ELBO, backward, Adam) of the DLGMM with K = {K} components against a VAE step "
        "of the same networks (z = 50, hidden 200-200, Bernoulli, batch 128); 1 torch thread, interleaved "
        f"repetitions, medians. Goal: enumerated prior <= {GOAL:g}x the VAE step: "
        f"{'met' if ok else 'NOT met'} ("
        + ", ".join(f"{arch} {row['ratio']:.2f}x" for arch, row in headline.items()) + ").",
        "",
        "| arch | side | step (ms) | ratio to VAE |",
        "|---|---|---|---|",
    ]
    for r in results:
        lines += [f"| {r['arch']} | {row['side']} | {row['step_ms']:.2f} | {row['ratio']:.2f}x |"
                  for row in r["rows"]]
    lines += ["", "Guides (b) and (c) decode one z per component (K decoder passes), the price of "
              "summing the component exactly in the posterior; the enumerated prior sums it in the model "
              "at the cost of a K-component log-density."]
    return {"name": "dlgmm", "quick": quick, "threads": 1, "goal_ratio": GOAL, "goal_met": ok,
            "results": results, "summary": "\n".join(lines)}


if __name__ == "__main__":
    result = run(quick="--quick" in sys.argv)
    print(result["summary"])
    print(json.dumps({k: v for k, v in result.items() if k != "summary"}, indent=1)[:2000])
