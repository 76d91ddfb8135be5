"""A training step of the VAE through the library against a hand-written PyTorch step and raw Pyro SVI.

Setting (issue 11): the VAE 784-200-200-50 (``pyro_spvae.zoo.MODELS["vae"]``, Bernoulli likelihood,
dense or convolutional networks), batch 128 of real MNIST images (``$PYRO_SPVAE_DATA`` or
``../shared/data/mnist``, dynamically binarised; the packaged subset when neither exists), one torch
thread, Adam with learning rate 1e-3, for the single-sample ELBO (``Trace_ELBO``) and the IWAE bound
at K = 5 (:class:`~pyro_spvae.infer.TraceIWAE_ELBO`, vectorised particles).

Every row starts from the same weights (deep copies of one model and guide) and steps on the same
batch:

- ``hand-written``: the encoder and decoder modules called directly, the reparameterised bound
  written out (``log p(x|z) + log p(z) - log q(z|x)``; for K = 5 its log-mean-exp over particles),
  divided by the batch size, ``loss.backward()`` and one ``torch.optim.Adam`` over all parameters
  (torch's default implementation);
- ``hand-written, fused Adam``: the same with ``torch.optim.Adam(fused=True)`` (the kernel the
  trainer's optimiser uses), to show how much of the difference is the optimiser;
- ``raw Pyro SVI``: ``pyro.infer.SVI(model, guide, pyro.optim.Adam, elbo).step(x)`` with the same
  estimator object as the trainer's (:func:`~pyro_spvae.training.make_elbo`);
- ``Trainer.step``: :meth:`pyro_spvae.training.Trainer.step` (per-step seeding, loss and gradients,
  NaN/Inf guard before and after the update, one torch optimiser).

The library's own input checks (``VAE.validate``, ``GaussianGuide``'s) always run; "Pyro validation"
is ``pyro.enable_validation`` (Pyro's and torch's distribution checks, on by default). Repetitions
are interleaved (every variant once per repetition, in a rotated order), so that load from other
processes hits all rows alike; each variant keeps its own Pyro param store (swapped in for its
block). Both wall-clock time and the process's CPU time are recorded: on a shared machine the CPU
time is the steadier measure of the work a step does. Ratios are of medians.

A cProfile of ``Trainer.step`` (dense, ``Trace_ELBO``, Pyro validation on) is recorded with the
results: the top entries by own time show where the remaining gap to the hand-written step goes.

``run(quick=False) -> dict`` is called by ``benchmarks/run.py``; ``python benchmarks/bench_vae_step.py
[--quick]`` runs it stand-alone and prints the summary.
"""

from __future__ import annotations

import contextlib
import copy
import cProfile
import functools
import importlib
import io
import json
import math
import os
import pstats
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pyro
import torch
import torch.nn.functional as F
from pyro.infer import SVI

from pyro_spvae.data import load_dataset
from pyro_spvae.training import ParamStoreSlot, Schedule, Trainer, make_elbo, make_optimizer
from pyro_spvae.zoo import MODELS

LOG_2PI = math.log(2 * math.pi)
BATCH = 128
LR = 1e-3
MODEL_KW = {"z_dim": 50, "hidden": (200, 200), "likelihood": "bernoulli"}
SHARED_MNIST = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"

#: Goals of issue 11: Trainer.step / hand-written step, per architecture.
GOALS = {"dense": 1.25, "conv": 1.15}

#: Row name -> (Pyro validation, label).
VARIANTS: dict[str, tuple[bool, str]] = {
    "hand": (True, "hand-written PyTorch"),
    "hand_fused": (True, "hand-written, fused Adam"),
    "svi_on": (True, "raw Pyro SVI, Pyro validation on"),
    "svi_off": (False, "raw Pyro SVI, Pyro validation off"),
    "trainer_on": (True, "`Trainer.step`, Pyro validation on"),
    "trainer_off": (False, "`Trainer.step`, Pyro validation off"),
    "pyro_elbo_bare": (False, "attribution: Pyro ELBO + fused Adam, no checks at all"),
    "trainer_bare": (False, "attribution: `Trainer.step`, no checks at all"),
}
#: Rows timed for the dense networks only: they attribute the gap (the VAE's and the guide's input
#: checks are switched off on those instances; Pyro validation off).
ATTRIBUTION = ("pyro_elbo_bare", "trainer_bare")


def mnist_batch(batch: int = BATCH) -> tuple[torch.Tensor, str]:
    """The first ``batch`` training images of real MNIST, dynamically binarised (seed 0), and the
    data source's name."""
    data, source = mnist()
    return data.batch(torch.arange(batch), torch.Generator().manual_seed(0)), source


@functools.lru_cache(maxsize=1)
def mnist() -> tuple[Any, str]:
    """The MNIST training split (dynamic binarisation) and the data source's name."""
    root = os.environ.get("PYRO_SPVAE_DATA") or (str(SHARED_MNIST) if SHARED_MNIST.is_dir() else None)
    if root is not None and (Path(root) / "train-images-idx3-ubyte.gz").exists():
        data, source = load_dataset("mnist", "train", "binary-dynamic", root=root, download=False), "mnist"
    else:  # pragma: no cover - machines without MNIST
        data, source = load_dataset("embedded", "train", "binary-dynamic"), "embedded MNIST subset"
    return data, source


class HandWritten:
    """The same VAE and bound in plain PyTorch: the model's decoder and the guide's encoder called
    directly (deep copies, same weights), one ``torch.optim.Adam``."""

    def __init__(self, model: torch.nn.Module, guide: torch.nn.Module, k: int, fused: bool = False) -> None:
        self.enc = copy.deepcopy(guide.encoder)
        self.dec = copy.deepcopy(model.decoder)
        self.z_dim, self.min_scale, self.k = model.z_dim, guide.min_scale, k
        self.event_dims = len(model.event_shape)
        params = list(self.enc.parameters()) + list(self.dec.parameters())
        self.opt = torch.optim.Adam(params, lr=LR, fused=True) if fused else torch.optim.Adam(params, lr=LR)

    def loss(self, x: torch.Tensor) -> torch.Tensor:
        """``-bound / B`` for a batch ``x`` of shape ``(B, 1, 28, 28)``."""
        out = self.enc(x)
        loc, scale = out[..., : self.z_dim], F.softplus(out[..., self.z_dim :]) + self.min_scale
        eps = torch.randn((self.k, *loc.shape)) if self.k > 1 else torch.randn_like(loc)
        z = loc + scale * eps
        logits = self.dec(z)
        bce = F.binary_cross_entropy_with_logits(logits, x.expand_as(logits), reduction="none")
        log_px = -bce.flatten(-self.event_dims).sum(-1)
        log_pz = -0.5 * (z**2 + LOG_2PI).sum(-1)
        log_qz = (-0.5 * (eps**2 + LOG_2PI) - scale.log()).sum(-1)
        log_w = log_px + log_pz - log_qz
        bound = torch.logsumexp(log_w, 0) - math.log(self.k) if self.k > 1 else log_w
        return -bound.sum() / x.shape[0]

    def step(self, x: torch.Tensor) -> float:
        loss = self.loss(x)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        return float(loss.detach())


class _Unchecked:
    """Switch off the input checks of a VAE and its guide (instance attributes shadowing
    ``VAE.validate`` and ``GaussianGuide._validate``), for the attribution rows only."""

    def __init__(self, model: torch.nn.Module, guide: torch.nn.Module) -> None:
        self.model, self.guide = model, guide

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        self.model.validate = lambda x: x
        self.guide._validate = lambda x, batch_dims: None
        try:
            yield
        finally:
            del self.model.validate, self.guide._validate


class _PyroELBOBare:
    """Pyro's ELBO and one fused Adam, the pattern Pyro documents for torch optimisers
    (``elbo.differentiable_loss``, ``backward``, ``step``): the floor of any step through Pyro."""

    def __init__(self, model: torch.nn.Module, guide: torch.nn.Module, estimator: str, k: int) -> None:
        self.model, self.guide = model, guide
        self.elbo = make_elbo(estimator, k, max_plate_nesting=1)
        params = list(model.parameters()) + list(guide.parameters())
        self.opt = torch.optim.Adam(params, lr=LR, fused=True)

    def step(self, x: torch.Tensor) -> float:
        loss = self.elbo.differentiable_loss(self.model, self.guide, x) / x.shape[0]
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        return float(loss.detach())


def build_variants(arch: str, estimator: str, k: int, x: torch.Tensor) -> dict[str, tuple[Callable, list]]:
    """Row name -> ``(step function, contexts to enter around it)``, all from the same initial weights
    (each Pyro side with a param store of its own)."""
    torch.manual_seed(0)
    model, guide = MODELS["vae"](tuple(x.shape[1:]), arch=arch, **MODEL_KW)
    hand = HandWritten(model, guide, k)
    hand_fused = HandWritten(model, guide, k, fused=True)
    svi_slot, trainer_slot = ParamStoreSlot(), ParamStoreSlot()
    with svi_slot.active():
        svi = SVI(copy.deepcopy(model), copy.deepcopy(guide), pyro.optim.Adam({"lr": LR}),
                  make_elbo(estimator, k, max_plate_nesting=1))
    with trainer_slot.active():
        elbo = make_elbo(estimator, k, max_plate_nesting=1)
        trainer = Trainer(copy.deepcopy(model), copy.deepcopy(guide), elbo, make_optimizer(LR), mnist()[0],
                          Schedule(batch_size=x.shape[0], steps=10**9), progress=False)
    n = x.shape[0]
    variants = {
        "hand": (hand.step, []),
        "hand_fused": (hand_fused.step, []),
        "svi_on": (lambda b: svi.step(b) / n, [svi_slot]),
        "svi_off": (lambda b: svi.step(b) / n, [svi_slot]),
        "trainer_on": (trainer.step, [trainer_slot]),
        "trainer_off": (trainer.step, [trainer_slot]),
    }
    if arch == "dense":
        bare_slot = ParamStoreSlot()
        bare = _PyroELBOBare(copy.deepcopy(model), copy.deepcopy(guide), estimator, k)
        variants["pyro_elbo_bare"] = (bare.step, [bare_slot, _Unchecked(bare.model, bare.guide)])
        variants["trainer_bare"] = (trainer.step, [trainer_slot, _Unchecked(trainer.model, trainer.guide)])
    return variants


@contextlib.contextmanager
def _context(contexts: list, validation: bool) -> Iterator[None]:
    pyro.enable_validation(validation)
    try:
        with contextlib.ExitStack() as stack:
            for c in contexts:
                stack.enter_context(c.active())
            yield
    finally:
        pyro.enable_validation(True)


def time_config(arch: str, estimator: str, k: int, x: torch.Tensor, reps: int, steps: int) -> dict[str, Any]:
    """Interleaved repetitions of ``steps`` steps of every variant; per-step medians and ratios."""
    variants = build_variants(arch, estimator, k, x)
    names = list(variants)
    first = {}
    for name, (fn, contexts) in variants.items():  # warm-up: allocations, optimiser state
        with _context(contexts, VARIANTS[name][0]):
            first[name] = float(fn(x))
            fn(x)
    wall: dict[str, list[float]] = {name: [] for name in names}
    cpu: dict[str, list[float]] = {name: [] for name in names}
    load_before = os.getloadavg()
    for rep in range(reps):
        for name in names[rep % len(names):] + names[: rep % len(names)]:
            fn, contexts = variants[name]
            with _context(contexts, VARIANTS[name][0]):
                t0, c0 = time.perf_counter(), time.process_time()
                for _ in range(steps):
                    fn(x)
                wall[name].append(1e3 * (time.perf_counter() - t0) / steps)
                cpu[name].append(1e3 * (time.process_time() - c0) / steps)
    med_wall = {n: statistics.median(v) for n, v in wall.items()}
    med_cpu = {n: statistics.median(v) for n, v in cpu.items()}
    return {
        "arch": arch, "estimator": estimator, "num_particles": k, "batch": x.shape[0], "reps": reps,
        "steps_per_rep": steps, "load_before": [round(v, 2) for v in load_before],
        "load_after": [round(v, 2) for v in os.getloadavg()], "first_loss": first,
        "wall_ms": med_wall, "cpu_ms": med_cpu,
        "ratio_wall": {n: med_wall[n] / med_wall["hand"] for n in names},
        "ratio_cpu": {n: med_cpu[n] / med_cpu["hand"] for n in names},
        "wall_ms_all": wall, "cpu_ms_all": cpu,
    }


def profile_trainer_step(x: torch.Tensor, steps: int = 100, top: int = 12) -> dict[str, list[dict[str, Any]]]:
    """cProfile of ``steps`` ``Trainer.step`` calls (dense, ``Trace_ELBO``, Pyro validation on): the
    ``top`` entries by own time, and by cumulative time among Pyro's and this package's functions
    (CPU ms per step, profiler overhead included)."""
    fn, contexts = build_variants("dense", "trace", 1, x)["trainer_on"]
    with _context(contexts, True):
        for _ in range(3):
            fn(x)
        prof = cProfile.Profile(time.process_time)  # CPU time: steadier on a shared machine
        prof.enable()
        for _ in range(steps):
            fn(x)
        prof.disable()
    rows = []
    stats = pstats.Stats(prof, stream=io.StringIO()).stats  # type: ignore[attr-defined]
    for (path, line, func), (_, ncalls, tottime, cumtime, _) in stats.items():
        where = f"{Path(path).parent.name}/{Path(path).name}:{line}({func})" if line else func
        ms = {"own_ms_per_step": 1e3 * tottime / steps, "cumulative_ms_per_step": 1e3 * cumtime / steps}
        rows.append({"function": where, "calls_per_step": ncalls / steps, **ms})
    own = sorted(rows, key=lambda r: -r["own_ms_per_step"])[:top]
    packages = ("pyro", "infer", "poutine", "training", "models", "guides", "nn", "distributions")
    ours = [r for r in rows if r["function"].split("/")[0] in packages]
    cumulative = sorted(ours, key=lambda r: -r["cumulative_ms_per_step"])[: 2 * top]
    return {"own": own, "cumulative": cumulative}


#: Pieces of Pyro's validation, each switched off alone (for measurement only) on the dense
#: ``Trainer.step`` with Pyro validation on: (label, module attribute paths, replacement).
PYRO_CHECKS = (
    ("`warn_if_nan`/`warn_if_inf` on every site's log-density and the loss (with gradient hooks)",
     ("pyro.poutine.trace_struct.warn_if_nan", "pyro.poutine.trace_struct.warn_if_inf",
      "pyro.infer.trace_elbo.warn_if_nan"), lambda v, *a, **k: v),
    ("`check_model_guide_match` (site names and shapes of model and guide)",
     ("pyro.infer.enum.check_model_guide_match",), lambda *a, **k: None),
    ("the Bernoulli sample check in `log_prob` (this package's `CheckedBernoulli`)",
     ("pyro_spvae.nn.likelihoods.CheckedBernoulli._validate_sample",), lambda self, value: None),
)


def _patched(path: str, value: Any) -> contextlib.AbstractContextManager:
    """Swap the attribute at the dotted ``path`` (a module, then attributes) for ``value``."""
    parts = path.split(".")
    i = len(parts) - 1
    while True:  # the longest importable module prefix
        try:
            obj: Any = importlib.import_module(".".join(parts[:i]))
            break
        except ModuleNotFoundError:
            i -= 1
    for part in parts[i:-1]:
        obj = getattr(obj, part)
    return _swap(obj, parts[-1], value)


@contextlib.contextmanager
def _swap(obj: Any, attr: str, value: Any) -> Iterator[None]:
    old = getattr(obj, attr)
    setattr(obj, attr, value)
    try:
        yield
    finally:
        setattr(obj, attr, old)


def pyro_validation_costs(x: torch.Tensor, reps: int = 15, steps: int = 5) -> list[dict[str, Any]]:
    """CPU ms per dense ``Trainer.step`` (Trace_ELBO, Pyro validation on) saved by switching off
    each of :data:`PYRO_CHECKS` alone, and all of Pyro's validation; interleaved, medians."""
    fn, contexts = build_variants("dense", "trace", 1, x)["trainer_on"]
    cases = [("all checks on", ())] + [(label, paths) for label, paths, _ in PYRO_CHECKS] + [
        ("Pyro validation off (`pyro.enable_validation(False)`)", None)]
    replacement = {label: value for label, _, value in PYRO_CHECKS}
    times: dict[str, list[float]] = {label: [] for label, _ in cases}
    with _context(contexts, True):
        for _ in range(3):
            fn(x)
        for rep in range(reps):
            for label, paths in cases[rep % len(cases):] + cases[: rep % len(cases)]:
                with contextlib.ExitStack() as stack:
                    if paths is None:
                        pyro.enable_validation(False)
                        stack.callback(pyro.enable_validation, True)
                    for path in paths or ():
                        stack.enter_context(_patched(path, replacement[label]))
                    c0 = time.process_time()
                    for _ in range(steps):
                        fn(x)
                    times[label].append(1e3 * (time.process_time() - c0) / steps)
    base = statistics.median(times["all checks on"])
    return [{"check": label, "cpu_ms": statistics.median(v), "saved_ms": base - statistics.median(v)}
            for label, v in times.items()]


#: The attribution of the dense rows: (label, row, row it is measured from).
STAGES = (
    ("the optimiser: one fused Adam instead of torch's default loop", "hand_fused", "hand"),
    ("Pyro's ELBO machinery (traces, replay, distributions, log-prob sums)", "pyro_elbo_bare", "hand_fused"),
    ("the trainer's stages (seeding, capture, 1/B, NaN/Inf guard)", "trainer_bare", "pyro_elbo_bare"),
    ("the model's and guide's input checks", "trainer_off", "trainer_bare"),
    ("Pyro validation (distribution argument/support checks, site shapes)", "trainer_on", "trainer_off"),
)


def _table(rows: list[dict[str, Any]]) -> list[str]:
    lines = ["| arch | estimator | row | CPU ms | wall ms | ratio CPU | ratio wall |",
             "|---|---|---|---:|---:|---:|---:|"]
    for r in rows:
        est = "Trace_ELBO" if r["estimator"] == "trace" else f"TraceIWAE_ELBO, K={r['num_particles']}"
        for name, (_, label) in VARIANTS.items():
            if name in r["cpu_ms"]:
                lines.append(f"| {r['arch']} | {est} | {label} | {r['cpu_ms'][name]:.2f} "
                             f"| {r['wall_ms'][name]:.2f} | {r['ratio_cpu'][name]:.2f}x "
                             f"| {r['ratio_wall'][name]:.2f}x |")
    return lines


def _goals(rows: list[dict[str, Any]]) -> list[str]:
    lines = ["Goal check (`Trainer.step` / hand-written, CPU-time medians). The goal is stated with the "
             "library's input checks on, which both rows have; the first row also has Pyro's own validation "
             "on (`pyro.enable_validation`, Pyro's default; its costs are in the last table):", ""]
    for r in rows:
        goal = GOALS[r["arch"]]
        on, off, svi = (r["ratio_cpu"][n] for n in ("trainer_on", "trainer_off", "svi_on"))
        verdict = " / ".join("met" if v <= goal else "not met" for v in (on, off))
        when = f" (rows kept from the run of {r['from_run']})" if r.get("from_run") else ""
        lines.append(f"- {r['arch']}, {r['estimator']} K={r['num_particles']}: Pyro validation on {on:.2f}x, "
                     f"off {off:.2f}x (goal <= {goal}x: {verdict}); raw SVI {svi:.2f}x (on); load "
                     f"{r['load_before'][0]} -> {r['load_after'][0]}{when}")
    return lines


def _attribution(rows: list[dict[str, Any]]) -> list[str]:
    dense = [r for r in rows if "trainer_bare" in r["cpu_ms"]]
    lines = ["Where the dense step's time goes (differences of CPU-time medians, in ms and in units of the "
             "hand-written step):", "",
             "| stage | " + " | ".join(f"{r['estimator']} K={r['num_particles']}" for r in dense) + " |",
             "|---|" + "---:|" * len(dense)]
    for label, row, base in STAGES:
        cells = [f"{r['cpu_ms'][row] - r['cpu_ms'][base]:+.2f} ms "
                 f"({r['ratio_cpu'][row] - r['ratio_cpu'][base]:+.2f}x)" for r in dense]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return lines


def _costs(costs: list[dict[str, Any]]) -> list[str]:
    if not costs:
        return []
    base = costs[0]["cpu_ms"]
    lines = ["", "What Pyro's own validation costs in the dense `Trainer.step` (Trace_ELBO; "
             f"{base:.2f} CPU ms with everything on): each piece switched off alone for this measurement "
             "(interleaved, medians), CPU ms saved per step:", "",
             "| switched off | CPU ms | saved |", "|---|---:|---:|"]
    lines += [f"| {c['check']} | {c['cpu_ms']:.2f} | {c['saved_ms']:+.2f} |" for c in costs[1:]]
    return lines


def _summary(rows: list[dict[str, Any]], source: str, profile: dict[str, list[dict[str, Any]]],
             costs: list[dict[str, Any]] | None = None) -> str:
    lines = [
        f"One training step of the VAE 784-200-200-50 (Bernoulli, batch {BATCH}, {source}, 1 torch thread, "
        "Adam 1e-3) against a hand-written PyTorch step of the same networks; medians of interleaved "
        "repetitions, per step; ratios to the hand-written step (CPU time of the process / wall-clock "
        "time). The library's input checks are on in every Pyro row but the attribution rows. Goals "
        "(issue 11): `Trainer.step` <= 1.25x dense, <= 1.15x conv.",
        "",
    ]
    lines += _table(rows) + [""] + _goals(rows) + [""] + _attribution(rows) + _costs(costs or [])
    if profile:
        lines += ["", "cProfile of `Trainer.step` (dense, Trace_ELBO, Pyro validation on; CPU ms per step, "
                  "profiler overhead included), top entries by own time and by cumulative time:", "",
                  "| function (own time) | calls/step | own ms |", "|---|---:|---:|"]
        lines += [f"| `{p['function']}` | {p['calls_per_step']:.0f} | {p['own_ms_per_step']:.3f} |"
                  for p in profile["own"]]
        lines += ["", "| function (cumulative) | calls/step | cumulative ms |", "|---|---:|---:|"]
        lines += [f"| `{p['function']}` | {p['calls_per_step']:.0f} | {p['cumulative_ms_per_step']:.3f} |"
                  for p in profile["cumulative"]]
    return "\n".join(lines)


def _previous_row(arch: str, estimator: str, k: int) -> dict[str, Any]:
    """The row of ``results/vae_step.json`` for this configuration, marked with that run's date
    (``$BENCH_VAE_STEP_ARCHS``, e.g. ``dense``, re-times only those architectures)."""
    previous = json.loads((Path(__file__).resolve().parent / "results" / "vae_step.json").read_text())
    row = next(r for r in previous["rows"]
               if (r["arch"], r["estimator"], r["num_particles"]) == (arch, estimator, k))
    return {**row, "from_run": row.get("from_run") or previous.get("machine", {}).get("date", "?")}


def run(quick: bool = False) -> dict[str, Any]:
    """Run the benchmark; returns a JSON-serialisable dict with a markdown ``"summary"``."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        x, source = mnist_batch()
        # (arch, estimator, K, repetitions, steps per repetition): the conv steps take 0.2-1.5 s
        configs = [("dense", "trace", 1, 25, 5), ("dense", "iwae", 5, 21, 3), ("conv", "trace", 1, 7, 2),
                   ("conv", "iwae", 5, 5, 1)]
        archs = os.environ.get("BENCH_VAE_STEP_ARCHS", "dense,conv").split(",")
        rows = [time_config(arch, estimator, k, x, 3 if quick else reps, 1 if quick else steps)
                if arch in archs else _previous_row(arch, estimator, k)
                for arch, estimator, k, reps, steps in configs]
        profile = profile_trainer_step(x, steps=20 if quick else 100)
        costs = (pyro_validation_costs(x, reps=3 if quick else 15, steps=1 if quick else 5)
                 if "dense" in archs else [])
    finally:
        torch.set_num_threads(previous)
        pyro.clear_param_store()
    return {"name": "vae_step", "quick": quick, "threads": 1, "data": source, "rows": rows,
            "profile_trainer_step": profile, "pyro_validation_costs": costs,
            "summary": _summary(rows, source, profile, costs)}


if __name__ == "__main__":
    result = run(quick="--quick" in sys.argv)
    print(result["summary"])
    print(json.dumps({k: v for k, v in result.items() if k in ("name", "quick", "threads", "data")}))
