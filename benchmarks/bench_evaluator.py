"""Log-likelihood evaluators against hand-written PyTorch loops (time and peak memory).

Two evaluations of ``S = 5000`` importance samples for each of 200 real MNIST test images (the
embedded subset), each against a plain-PyTorch loop computing the same estimate with the same
networks (the library's modules' weights, read once):

- ``vae``: :func:`pyro_spvae.infer.log_marginal_likelihood` with its defaults (automatic pass
  shape, PSIS k-hat on) on the dense VAE 784-200-200-50 with a Bernoulli likelihood on statically
  binarised images. The loop (:class:`_HandVAE`) encodes each batch of images once, then per chunk
  draws ``K`` samples, decodes, forms ``log p(x|z) + log p(z) - log q(z|x)`` (the Bernoulli term as
  ``-BCE-with-logits`` summed per image) and folds a running ``logsumexp``; no PSIS.
- ``spvae``: :func:`pyro_spvae.infer.spn_log_likelihood` with its defaults (bound (b), the
  paper's evaluation) on the dense SPVAE of the ``spvae-continuous`` preset (32 leaf VAEs
  49-30-30-25, Gaussian likelihood) on ``spvae-continuous`` images. The loop (:class:`_HandSPVAE`)
  runs the 32 leaf encoders and decoders as batched matmuls over the leaf axis (one ``baddbmm``
  per layer, the fastest plain-PyTorch form; a Python loop over leaves is several times slower),
  keeps a running per-leaf ``logsumexp`` and pushes the leaf estimates through the model's SPN once.

Both loops use the pass shape the library chose (``K`` samples for ``B`` images per pass,
:func:`pyro_spvae.infer.log_likelihood.pass_shape`), near the loops' own best on this machine
(see ``benchmarks/RESULTS.md``). Untrained weights (seed 0): the timings do not depend on them.
Before timing, each loop is checked against the library's networks (encoder outputs and
per-leaf / per-image log-joint densities for fixed latents).

Measurement: every (case, variant) run is a fresh subprocess with 1 torch thread: setup and a
small warm-up run, then one timed run (wall-clock and process CPU time). Peak memory growth is
``VmHWM - VmRSS`` over the timed run after resetting the peak through ``/proc/self/clear_refs``
(every allocation torch makes on the CPU counts; ``tracemalloc`` does not see them). Runs are
interleaved (loop, library, loop, ... in alternating order per repetition), ratios are of
medians, and the load average is recorded before each run.

The default run times the VAE on 200 images and the SPVAE on 50 (``--full``: 200; about a
third of a second of loop time per image). ``python benchmarks/bench_evaluator.py [--quick]
[--full] [--before DIR] [--hand-shapes KxB,...] [--json PATH]``: ``--before`` adds a variant run
with ``DIR`` first on ``sys.path`` (a checkout holding another ``pyro_spvae``, e.g. a ``git
worktree`` of the previous commit), with that version's defaults; ``--hand-shapes`` adds loops at
other pass shapes (their ratios are library / loop). ``benchmarks/run.py evaluator`` reads the same
options from ``$BENCH_EVALUATOR_BEFORE`` and ``$BENCH_EVALUATOR_HAND_SHAPES``.
"""

from __future__ import annotations

import json
import math
import os
import statistics
import subprocess
import sys
import time
from typing import Any

import torch
import torch.nn.functional as F

EVENT_SHAPE = (1, 28, 28)
NUM_IMAGES, NUM_SAMPLES = 200, 5000
LOG_2PI = math.log(2 * math.pi)
GOAL_TIME, GOAL_MEMORY = 1.1, 2.0
MEMORY_IMAGES, MMAP_THRESHOLD = 8, 128 * 1024


NOTES = """\
Where the library's time goes (profiles of one pass, 1000 particles x 4 images, torch.profiler and
cProfile, 1 thread). The tensor operations are the loop's: the decoder's `addmm` with its bias copy
and the Bernoulli cross-entropy (`log_sigmoid`, `fill`, `sub`, `mul`) take ~90 % of either, with
equal operator time (1.76 s vs 1.85 s over 10 passes in one profile). What the library adds is
~3 ms per pass outside the operators: Pyro's trace and replay of model and guide (plates,
messengers, `pyro.module`/`pyro.param` lookups of `PyroModule` parameters: ~60 %), the model's and
guide's own input checks (`isfinite` and the support check on the pass's images), the per-site
reduction of the log-densities, and two `Normal` log-densities where the loop forms
`-z^2/2 + eps^2/2 + sum log scale`; at 4000 rows per pass that is ~5-10 % of a pass. The pass
shape is the library's best on this machine (1000 x 4: fewer, larger passes fall out of the cache,
2000 x 4 costs ~30 % more per row for both; smaller ones multiply the per-pass cost). The loop
alone is fastest with smaller passes (`loop @ 250 x 4`, where the library's per-pass cost would be
~15 %); against that loop the remaining gap is the per-pass cost above, which lives in Pyro and in
the model and guide (`models/`, `guides/`), not in the evaluator. The evaluator now validates the
data once (a one-particle pass with Pyro's validation as set by the user) and draws with
validation off, computes the Bernoulli and Normal log-densities without the per-element negation
and without `scale**2`/`log(scale)` on particle-broadcast tensors (same numbers), takes PSIS k-hat
from the weights it holds with a vectorised fit (no ArviZ import, ~90 ms for 200 x 5000 weights),
and evaluates the SPN once for all images.
"""


def _linears(module: torch.nn.Module, stacked: bool) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``(weight, bias)`` of the module's (stacked: 3-D weights) linear layers in registration order."""
    return [(m.weight.detach(), m.bias.detach()) for m in module.modules()
            if getattr(m, "weight", None) is not None and m.weight.dim() == (3 if stacked else 2)]


def _mlp(layers: list[tuple[torch.Tensor, torch.Tensor]], h: torch.Tensor, stacked: bool) -> torch.Tensor:
    """Softplus MLP: ``F.linear`` (or ``baddbmm`` over a leading net axis when ``stacked``)."""
    for i, (w, b) in enumerate(layers):
        h = torch.baddbmm(b.unsqueeze(1), h, w.transpose(1, 2)) if stacked else F.linear(h, w, b)
        if i < len(layers) - 1:
            h = F.softplus(h)
    return h


class _HandVAE:
    """The VAE's importance-sampling estimate in plain PyTorch (see the module docstring)."""

    def __init__(self, model: Any, guide: Any) -> None:
        self.enc, self.dec = _linears(guide.encoder, False), _linears(model.decoder, False)
        self.z_dim, self.min_scale = guide.z_dim, guide.min_scale

    def encode(self, xf: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = _mlp(self.enc, xf, False)
        return h[..., : self.z_dim], F.softplus(h[..., self.z_dim :]) + self.min_scale

    def log_lik(self, xf: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        logits = _mlp(self.dec, z, False)
        return -F.binary_cross_entropy_with_logits(logits, xf.expand_as(logits), reduction="none").sum(-1)

    def check(self, model: Any, guide: Any, x: torch.Tensor) -> None:
        loc, scale = guide.encode(x)
        mine = self.encode(x.flatten(1))
        torch.testing.assert_close(mine, (loc, scale), msg="hand-written VAE encoder != guide")
        z = torch.randn(3, *loc.shape)
        torch.testing.assert_close(self.log_lik(x.flatten(1), z), model.decode(z).log_prob(x), rtol=1e-4,
                                   atol=1e-2, msg="hand-written VAE log p(x|z) != model")

    def log_px(self, x: torch.Tensor, num_samples: int, chunk: int, batch: int) -> torch.Tensor:
        out = []
        for xb in x.split(batch):
            xf = xb.flatten(1)
            loc, scale = self.encode(xf)
            log_det = scale.log().sum(-1)  # log p(z) - log q(z|x) = -z^2/2 + eps^2/2 + sum log scale
            lse = torch.full((xb.shape[0],), -math.inf, dtype=torch.float64)
            for done in range(0, num_samples, chunk):
                eps = torch.randn(min(chunk, num_samples - done), *loc.shape)
                z = loc + scale * eps
                lw = self.log_lik(xf, z) - 0.5 * (z * z).sum(-1) + 0.5 * (eps * eps).sum(-1) + log_det
                lse = torch.logaddexp(lse, torch.logsumexp(lw.double(), 0))
            out.append(lse - math.log(num_samples))
        return torch.cat(out)


class _HandSPVAE:
    """The SPVAE's bound (b) in plain PyTorch: stacked leaf networks, per-leaf running logsumexp."""

    def __init__(self, model: Any, guide: Any) -> None:
        self.enc, self.dec = _linears(guide.encoder, True), _linears(model.decoder, True)
        self.z_dim, self.spn = model.z_dim, model.spn_log_value
        if not bool(model.scopes.mask.all()) or model.event_shape[0] != 1:
            raise ValueError("the hand-written SPVAE loop handles one channel and equal leaf regions")
        self.index = model.scopes.index.repeat_interleave(model.leaf_k, 0)  # (L, P): leaf -> pixels
        log_scale = model.log_scale.detach().reshape(self.index.shape)  # (L, P)
        self.inv_scale = torch.exp(-log_scale).unsqueeze(1).unsqueeze(1)  # (L, 1, 1, P)
        self.const = (-log_scale - 0.5 * LOG_2PI).sum(-1)[:, None, None]  # (L, 1, 1)

    def encode(self, p: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = _mlp(self.enc, p, True)  # (L, B, 2 z_dim)
        return h[..., : self.z_dim], F.softplus(h[..., self.z_dim :]) + 1e-4

    def log_joint(self, p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """``log p(x_l, z_l)`` ``(L, k, B)`` for patches ``p`` ``(L, B, P)`` and ``z`` ``(L, k, B, z)``."""
        lk, k, b, _ = z.shape
        mu = _mlp(self.dec, z.reshape(lk, k * b, self.z_dim), True).view(lk, k, b, -1)
        r = (p.unsqueeze(1) - mu) * self.inv_scale
        return self.const - 0.5 * (r * r).sum(-1) - 0.5 * (z * z).sum(-1) - 0.5 * self.z_dim * LOG_2PI

    def check(self, model: Any, guide: Any, x: torch.Tensor) -> None:
        p = x.flatten(1)[:, self.index].transpose(0, 1)  # (L, B, P)
        loc, scale = self.encode(p)
        q = guide.leaf_posterior(x)
        torch.testing.assert_close((loc.transpose(0, 1), scale.transpose(0, 1)), (q.mean, q.stddev),
                                   msg="hand-written SPVAE encoders != guide")
        z = torch.randn(loc.shape[0], 2, *loc.shape[1:])  # (L, 2, B, z)
        lib = model.leaf_log_joint(x, z.permute(1, 2, 0, 3)).permute(2, 0, 1)
        torch.testing.assert_close(self.log_joint(p, z), lib, rtol=1e-4, atol=1e-2,
                                   msg="hand-written SPVAE leaf log-joint != model")

    def log_px(self, x: torch.Tensor, num_samples: int, chunk: int, batch: int) -> torch.Tensor:
        leaves = []
        for xb in x.split(batch):
            p = xb.flatten(1)[:, self.index].transpose(0, 1)  # (L, B, P)
            loc, scale = self.encode(p)
            log_det = (scale.log().sum(-1) + 0.5 * self.z_dim * LOG_2PI).unsqueeze(1)  # (L, 1, B)
            lse = torch.full(loc.shape[:2], -math.inf)  # (L, B)
            for done in range(0, num_samples, chunk):
                eps = torch.randn(loc.shape[0], min(chunk, num_samples - done), *loc.shape[1:])
                z = loc.unsqueeze(1) + scale.unsqueeze(1) * eps
                lw = self.log_joint(p, z) + 0.5 * (eps * eps).sum(-1) + log_det  # (L, k, B)
                lse = torch.logaddexp(lse, torch.logsumexp(lw, 1))
            leaves.append((lse - math.log(num_samples)).T)
        return self.spn(torch.cat(leaves))  # the SPN once, for all images


def _setup(case: str, num_images: int) -> tuple[Any, Any, torch.Tensor]:
    from pyro_spvae.data import load_dataset
    from pyro_spvae.training.presets import PRESETS
    from pyro_spvae.zoo import MODELS

    torch.manual_seed(0)
    if case == "vae":
        model, guide = MODELS["vae"](EVENT_SHAPE, z_dim=50, hidden=(200, 200), likelihood="bernoulli")
        data = load_dataset("embedded", "test", "binary-static")
    else:
        model, guide = MODELS["spvae"](EVENT_SHAPE, **PRESETS["spvae-continuous"]["model_kwargs"])
        data = load_dataset("embedded", "test", "spvae-continuous")
    return model, guide, data.batch(torch.arange(num_images), torch.Generator().manual_seed(0))


def _library_pass_shape(case: str, x: torch.Tensor, num_samples: int) -> tuple[int, int]:
    """The ``(chunk, images per pass)`` the library's evaluator picks with its defaults."""
    from pyro_spvae.infer.log_likelihood import pass_budget, pass_shape
    from pyro_spvae.infer.spn_bounds import LEAF_PASS_BUDGET_FRACTION

    n, row = x.shape[0], x[0].numel() * x.element_size()
    if case == "vae":  # log_marginal_likelihood's default batch_size is 100
        return pass_shape(n, num_samples, row, max_examples=100, budget=pass_budget(x.device))
    budget = int(pass_budget(x.device) * LEAF_PASS_BUDGET_FRACTION)
    return pass_shape(n, num_samples, row, max_examples=n, budget=budget)


def _status_mib(key: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024.0  # kB
    raise KeyError(key)


def _worker(case: str, variant: str, num_images: int, num_samples: int) -> dict[str, Any]:
    """One timed evaluation in this (fresh) process; see the module docstring. ``variant``: ``"hand"``
    (the library's pass shape), ``"hand@KxB"``, ``"lib"`` or ``"before"``."""
    torch.set_num_threads(1)
    model, guide, x = _setup(case, num_images)
    info: dict[str, Any] = {}
    if variant.startswith("hand"):
        hand = (_HandVAE if case == "vae" else _HandSPVAE)(model, guide)
        with torch.no_grad():
            hand.check(model, guide, x[:8])
        if "@" in variant:
            chunk, batch = (int(v) for v in variant.partition("@")[2].split("x"))
        else:
            chunk, batch = _library_pass_shape(case, x, num_samples)
        info["pass_shape"] = [chunk, batch]

        def run(xx: torch.Tensor, s: int) -> torch.Tensor:
            return hand.log_px(xx, s, min(chunk, s), batch)
    else:
        if variant == "lib":
            info["pass_shape"] = list(_library_pass_shape(case, x, num_samples))
        from pyro_spvae.infer import log_marginal_likelihood, spn_log_likelihood

        def run(xx: torch.Tensor, s: int) -> torch.Tensor:
            if case == "vae":
                return log_marginal_likelihood(model, guide, xx, num_samples=s, progress=False).log_px
            return spn_log_likelihood(model, guide, xx, num_samples=s)

    with torch.no_grad():
        run(x[:4], 50)  # warm-up: lazy imports and first-call initialisation
        with open("/proc/self/clear_refs", "w") as f:  # reset the peak RSS to the current RSS
            f.write("5")
        base = _status_mib("VmRSS")
        t0, c0 = time.perf_counter(), time.process_time()
        log_px = run(x, num_samples)
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    return {**info, "wall_s": wall, "cpu_s": cpu, "peak_mib": _status_mib("VmHWM") - base,
            "mean_log_px": float(log_px.double().mean())}


def _memory_images(variant: str, num_images: int) -> int:
    """Images of the live-memory run: few, with the pass shape of the timed run (checked by the
    worker for the library's shape; the previous version batched up to 100 images per pass)."""
    if variant == "before":
        return min(num_images, 100)
    if variant.startswith("hand@"):
        return min(num_images, max(MEMORY_IMAGES, int(variant.split("x")[-1])))
    return min(num_images, MEMORY_IMAGES)


def _spawn(case: str, variant: str, num_images: int, num_samples: int, path: str | None,
           live_memory: bool = False) -> dict[str, Any]:
    env = dict(os.environ)
    if path is not None:
        env["PYTHONPATH"] = os.pathsep.join([path] + [p for p in [env.get("PYTHONPATH")] if p])
    if live_memory:  # a fixed mmap threshold: freed big blocks go back to the OS at once
        env["MALLOC_MMAP_THRESHOLD_"] = str(MMAP_THRESHOLD)
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", case, variant, str(num_images),
           str(num_samples)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=1200, env=env, cwd=path or os.getcwd())
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[2:])} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _median(runs: list[dict[str, Any]], key: str) -> float:
    return statistics.median(r[key] for r in runs)


def _case_summary(runs: dict[str, list[dict[str, Any]]], memory: dict[str, dict[str, Any]],
                  num_images: int) -> dict[str, Any]:
    out: dict[str, Any] = {"num_images": num_images, "pass_shape": runs["hand"][0].get("pass_shape"),
                           "variants": {}}
    for name, rs in runs.items():
        if memory[name].get("pass_shape") != rs[0].get("pass_shape"):
            raise RuntimeError(f"{name}: the live-memory run has another pass shape than the timed runs")
        # against the loop at the library's pass shape; a loop at another shape against the library
        num, den = ("lib", name) if name.startswith("hand@") else (name, "hand")
        out["variants"][name] = {
            "wall_s": _median(rs, "wall_s"), "cpu_s": _median(rs, "cpu_s"),
            "time_ratio": _median(runs[num], "wall_s") / _median(runs[den], "wall_s"),
            "cpu_ratio": _median(runs[num], "cpu_s") / _median(runs[den], "cpu_s"),
            "live_peak_mib": memory[name]["peak_mib"],
            "memory_ratio": memory[num]["peak_mib"] / max(memory[den]["peak_mib"], 1e-9),
            "rss_peak_mib": [min(r["peak_mib"] for r in rs), max(r["peak_mib"] for r in rs)],
            "mean_log_px": statistics.fmean(r["mean_log_px"] for r in rs),
            "runs": rs, "memory_run": memory[name],
        }
    return out


_LABELS = {"hand": "hand-written loop", "lib": "**library**", "before": "library before (`--before`)"}
_CASE_NAMES = {"vae": "`log_marginal_likelihood`, VAE", "spvae": "`spn_log_likelihood`, SPVAE"}


def _summary(cases: dict[str, Any], num_samples: int, reps: int) -> str:
    lines = [
        f"{num_samples} importance samples per MNIST test image, library defaults (PSIS on for the VAE) "
        "against a hand-written PyTorch loop with the same networks at the library's pass shape (K "
        f"samples x B images); 1 torch thread, a fresh process per run, {reps} interleaved repetitions, "
        f"medians. Goals: time <= {GOAL_TIME}x, peak memory growth <= {GOAL_MEMORY:g}x the loop's. Ratios: "
        "variant / loop; for a loop at another shape (`loop @ K x B`), library / that loop.",
        "",
        "| evaluation | images | variant | pass (K x B) | wall (s) | CPU (s) | time ratio (wall / CPU) "
        "| live peak (MiB) | memory ratio | RSS peak growth (MiB) | mean log p(x) |",
        "|---|---:|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for case, res in cases.items():
        k, b = res["pass_shape"]
        for name, v in res["variants"].items():
            plain = name == "hand"
            ratio = "1" if plain else f"{v['time_ratio']:.2f}x / {v['cpu_ratio']:.2f}x"
            mem = "1" if plain else f"{v['memory_ratio']:.2f}x"
            label, _, shape = name.partition("@")
            shape = shape.replace("x", " x ") or ("old defaults" if name == "before" else f"{k} x {b}")
            lo, hi = v["rss_peak_mib"]
            lines.append(f"| {_CASE_NAMES[case]} | {res['num_images']} | {_LABELS[label]} | {shape} "
                         f"| {v['wall_s']:.2f} | {v['cpu_s']:.2f} | {ratio} | {v['live_peak_mib']:.1f} "
                         f"| {mem} | {lo:.0f} to {hi:.0f} | {v['mean_log_px']:.2f} |")
    loads = [r["load"][0] for res in cases.values() for v in res["variants"].values() for r in v["runs"]]
    lines += [
        "",
        f"1-minute load average before the timed runs: {min(loads):.2f} to {max(loads):.2f} "
        f"({os.cpu_count()} cores shared with other work). Live peak: `VmHWM - VmRSS` over one run on "
        f"the first {MEMORY_IMAGES} images (same pass shape; the previous version: up to 100 images, its "
        f"default batch) with `MALLOC_MMAP_THRESHOLD_={MMAP_THRESHOLD}`, "
        "so that freed tensors leave the resident set at once; RSS peak growth: the same over the timed "
        "runs with glibc's default allocator, whose adaptive mmap threshold keeps freed blocks in the "
        "heap (the range over the repetitions; it depends on the allocation order more than on the "
        "evaluator).",
        "",
        NOTES,
    ]
    return "\n".join(lines)


def run(quick: bool = False, before: str | None = None, hand_shapes: str | None = None,
        full: bool = False) -> dict[str, Any]:
    """Run the benchmark; returns a JSON-serialisable dict with a markdown ``"summary"``.

    :param before: a checkout to compare with (default: ``$BENCH_EVALUATOR_BEFORE``).
    :param hand_shapes: extra loop pass shapes ``"KxB,vae:KxB,spvae:KxB"`` (default:
        ``$BENCH_EVALUATOR_HAND_SHAPES``).
    :param full: the SPVAE on 200 images too (default: 50 images, to keep the run near 3 minutes).
    """
    before = before or os.environ.get("BENCH_EVALUATOR_BEFORE") or None
    hand_shapes = hand_shapes or os.environ.get("BENCH_EVALUATOR_HAND_SHAPES") or ""
    reps = 1 if quick else 3
    num_samples = 1000 if quick else NUM_SAMPLES
    images = {"vae": 20 if quick else NUM_IMAGES, "spvae": 20 if quick else (NUM_IMAGES if full else 50)}
    variants = ["hand", "lib"] + (["before"] if before else [])
    runs: dict[str, dict[str, list]] = {case: {v: [] for v in variants} for case in images}
    for spec in filter(None, (s.strip() for s in hand_shapes.split(","))):  # "KxB" or "case:KxB"
        case, _, shape = spec.rpartition(":")
        for c in [case] if case else list(runs):
            runs[c][f"hand@{shape}"] = []
    order = [(case, v) for case in runs for v in runs[case]]
    for rep in range(reps):
        for case, v in order if rep % 2 == 0 else order[::-1]:  # alternate the order: drift hits both
            load = os.getloadavg()
            res = _spawn(case, v, images[case], num_samples, before if v == "before" else None)
            runs[case][v].append({**res, "load": [round(a, 2) for a in load]})
    memory: dict[str, dict[str, Any]] = {case: {} for case in runs}
    for case, v in order:
        n = _memory_images(v, images[case])
        memory[case][v] = {**_spawn(case, v, n, num_samples, before if v == "before" else None,
                                    live_memory=True), "num_images": n}
    cases = {case: _case_summary(r, memory[case], images[case]) for case, r in runs.items()}
    return {"name": "evaluator", "quick": quick, "threads": 1, "num_samples": num_samples, "reps": reps,
            "before": before, "cases": cases, "summary": _summary(cases, num_samples, reps)}


def _option(flag: str) -> str | None:
    return sys.argv[sys.argv.index(flag) + 1] if flag in sys.argv else None


if __name__ == "__main__":
    if len(sys.argv) == 6 and sys.argv[1] == "--worker":
        print(json.dumps(_worker(sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]))))
        sys.exit(0)
    result = run(quick="--quick" in sys.argv, before=_option("--before"),
                 hand_shapes=_option("--hand-shapes"), full="--full" in sys.argv)
    print(result["summary"])
    if _option("--json"):
        with open(_option("--json"), "w") as f:
            json.dump(result, f, indent=1)
