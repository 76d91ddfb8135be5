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
  49-30-30-25, Gaussian likelihood with a learnt log-scale) on ``spvae-continuous`` images. The loop
  (:class:`HandSPVAE`) runs the 32 leaf encoders and decoders as batched matmuls over the leaf axis
  (one ``baddbmm`` per layer, the fastest plain-PyTorch form; a Python loop over leaves is several
  times slower), keeps a running per-leaf ``logsumexp`` and pushes the leaf estimates through the
  model's SPN once. It also handles the paper's Table 1 model (``paper-spvae-continuous``:
  separate mean and precision networks, predicted precision ``1 + g^2``, sigmoid mean), which
  ``bench_evaluator_table1.py`` times as ``scripts/reproduce_spvae.py`` calls it.

Both loops use the pass shape the library chose (``K`` samples for ``B`` images per pass,
:func:`pyro_spvae.infer.log_likelihood.pass_shape`); ``--hand-shapes`` adds loops at other shapes.
Untrained weights (seed 0): the timings do not depend on them. Before timing, each loop is checked
against the library's networks (encoder outputs and per-leaf / per-image log-joint densities for
fixed latents).

Time: each repetition is a fresh process (1 torch thread) that sets up the model once, warms every
variant up and then runs the variants in turn on ten slices of the images, alternating the order,
so that load from other processes hits all of them alike; the times are sums over the slices and
every ratio is taken within one process (median over the repetitions). The timed processes keep
freed memory in glibc's heap (``MALLOC_TRIM_THRESHOLD_=2**30``, ``MALLOC_MMAP_THRESHOLD_=2**25``):
with the default settings every pass returns its big tensors to the OS and faults them in again
(about a quarter of either loop's time), and how much depends on what ran before in the process.
The setting shrinks the loops' time and therefore enlarges the library's relative overhead.

Memory: one run of each variant alone in a fresh process, on the first 8 images (the same pass
shape; the previous version: up to 100 images, its default batch), with
``MALLOC_MMAP_THRESHOLD_=131072`` so that freed tensors leave the resident set at once; the peak
growth is ``VmHWM - VmRSS`` over the run after resetting the peak through
``/proc/self/clear_refs`` (every allocation torch makes on the CPU counts; ``tracemalloc`` does not
see them).

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
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

EVENT_SHAPE = (1, 28, 28)
NUM_IMAGES, NUM_SAMPLES = 200, 5000
LOG_2PI = math.log(2 * math.pi)
GOAL_TIME, GOAL_MEMORY = 1.1, 2.0
MEMORY_IMAGES, MMAP_THRESHOLD = 8, 128 * 1024
#: The SPVAE timed here (the paper's Table 1 model, ``paper-spvae-continuous``, is timed by
#: ``bench_evaluator_table1.py`` with the same :class:`HandSPVAE`).
SPVAE_PRESET = "spvae-continuous"
#: glibc settings of the timed processes: keep freed memory in the heap (see the module docstring)
TIMING_MALLOC = {"MALLOC_TRIM_THRESHOLD_": str(2**30), "MALLOC_MMAP_THRESHOLD_": str(2**25)}


NOTES = """\
Where the library's time goes (profiles of one pass, 1000 particles x 4 images, torch.profiler and
cProfile, 1 thread). The tensor operations are the loop's: the decoder's `addmm` with its bias copy
and the Bernoulli cross-entropy (`log_sigmoid`, `fill`, `sub`, `mul`) take ~90 % of either, with
equal operator time (1.76 s vs 1.85 s over 10 passes in one profile). What the library adds is
~3 ms per pass outside the operators: Pyro's trace and replay of model and guide (plates,
messengers, `pyro.module`/`pyro.param` lookups of `PyroModule` parameters: ~60 %), the model's and
guide's own input checks (in the first pass of a batch), the per-site
reduction of the log-densities, and two `Normal` log-densities where the loop forms
`-z^2/2 + eps^2/2 + sum log scale`; at 4000 rows per pass that is ~5-10 % of a pass (timed on a
quiet machine with 2-image passes, where the operators cost nothing: 3.0 ms per pass for the
library against 0.3 ms for the loop). The pass shape is the library's best on this machine
(1000 x 4: 2000 x 4 costs ~30 % more per row for both; smaller ones multiply the per-pass cost).
The loop alone is ~5 % faster with passes of 1000-2000 rows (`loop @ 250 x 4`, `500 x 4`,
`1000 x 1`), where the library's per-pass cost would be 10-20 %; against those loops the gap is
the per-pass cost above, which lives in Pyro and in the model and guide (`models/`, `guides/`), not
in the evaluator. The model's and guide's input checks run in the first pass of each batch only
(`pyro_spvae.validation_memo.checks_once`). The SPVAE's guide draws its noise leaf-major, the
layout its decoder reads (no `(K, B, L, z)` copy per pass: -10 % on `spn_log_likelihood`).
The evaluator validates the data once (a one-particle pass with Pyro's validation as set by the
user) and draws with
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


def _stacked_nets(module: Any) -> list[list[tuple[torch.Tensor, torch.Tensor]]]:
    """The ``(weight, bias)`` layers of each stacked network: one per head of a ``StackedHeads``."""
    nets = list(module.nets) if hasattr(module, "nets") else [module]
    return [_linears(net, True) for net in nets]


class HandSPVAE:
    """The SPVAE's bound (b) in plain PyTorch: stacked leaf networks, per-leaf running logsumexp.

    Two leaf likelihoods: a Gaussian with a learnt log-scale per leaf and pixel (one decoder) or the
    paper's Gaussian with a predicted precision ``1 + g^2`` and a ``sigmoid`` mean (two decoders,
    ``decoder_heads="separate"``); the encoders give ``loc`` and a raw scale (one network split in
    two, or two networks) mapped by ``softplus + 1e-4`` or the paper's ``1 / sqrt(1 + raw^2)``.
    """

    def __init__(self, model: Any, guide: Any) -> None:
        self.enc, self.dec = _stacked_nets(guide.encoder), _stacked_nets(model.decoder)
        self.z_dim, self.spn = model.z_dim, model.spn_log_value
        if not bool(model.scopes.mask.all()) or model.event_shape[0] != 1:
            raise ValueError("the hand-written SPVAE loop handles one channel and equal leaf regions")
        self.index = model.scopes.index.repeat_interleave(model.leaf_k, 0)  # (L, P): leaf -> pixels
        self.precision_scale = guide.posterior_scale == "precision"
        self.sigmoid_loc = model.leaf_likelihood.options.get("loc") == "sigmoid"
        self.predicted_precision = model.leaf_likelihood.num_params == 2
        self.const = torch.tensor(-0.5 * self.index.shape[1] * LOG_2PI - 0.5 * self.z_dim * LOG_2PI)
        if not self.predicted_precision:
            log_scale = model.log_scale.detach().reshape(self.index.shape)  # (L, P)
            self.inv_scale = torch.exp(-log_scale).unsqueeze(1).unsqueeze(1)  # (L, 1, 1, P)
            self.const = self.const - log_scale.sum(-1)[:, None, None]  # (L, 1, 1)

    def encode(self, p: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if len(self.enc) == 2:
            loc, raw = _mlp(self.enc[0], p, True), _mlp(self.enc[1], p, True)  # (L, B, z_dim) each
        else:
            h = _mlp(self.enc[0], p, True)  # (L, B, 2 z_dim)
            loc, raw = h[..., : self.z_dim], h[..., self.z_dim :]
        return loc, torch.rsqrt(1.0 + raw * raw) if self.precision_scale else F.softplus(raw) + 1e-4

    def log_joint(self, p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """``log p(x_l, z_l)`` ``(L, k, B)`` for patches ``p`` ``(L, B, P)`` and ``z`` ``(L, k, B, z)``."""
        lk, k, b, _ = z.shape
        flat = z.reshape(lk, k * b, self.z_dim)
        mu = _mlp(self.dec[0], flat, True).view(lk, k, b, -1)
        mu = torch.sigmoid(mu) if self.sigmoid_loc else mu
        r = p.unsqueeze(1) - mu
        if self.predicted_precision:  # sum_d 1/2 log(tau_d) - tau_d r_d^2 / 2, tau = 1 + g^2
            g2 = _mlp(self.dec[1], flat, True).view(lk, k, b, -1).square()
            ll = 0.5 * (torch.log1p(g2) - (1.0 + g2) * (r * r)).sum(-1)
        else:
            r = r * self.inv_scale
            ll = -0.5 * (r * r).sum(-1)
        return self.const + ll - 0.5 * (z * z).sum(-1)

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
        model, guide = MODELS["spvae"](EVENT_SHAPE, **PRESETS[SPVAE_PRESET]["model_kwargs"])
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


def _runner(case: str, variant: str, model: Any, guide: Any) -> Callable[[torch.Tensor, int], torch.Tensor]:
    """``run(x, num_samples) -> log p(x)`` of one variant: ``"hand"`` (the library's pass shape),
    ``"hand@KxB"``, ``"lib"`` or ``"before"`` (the library found first on ``sys.path``)."""
    if variant.startswith("hand"):
        hand = (_HandVAE if case == "vae" else HandSPVAE)(model, guide)
        shape = tuple(int(v) for v in variant.partition("@")[2].split("x")) if "@" in variant else None

        def run(x: torch.Tensor, s: int) -> torch.Tensor:
            chunk, batch = shape or _library_pass_shape(case, x, s)
            return hand.log_px(x, s, min(chunk, s), batch)
        return run
    from pyro_spvae.infer import log_marginal_likelihood, spn_log_likelihood

    if case == "vae":
        return lambda x, s: log_marginal_likelihood(model, guide, x, num_samples=s, progress=False).log_px
    return lambda x, s: spn_log_likelihood(model, guide, x, num_samples=s)


def _pass_shape(case: str, variant: str, x: torch.Tensor, num_samples: int) -> list[int] | None:
    if variant.startswith("hand@"):
        return [int(v) for v in variant.partition("@")[2].split("x")]
    return None if variant == "before" else list(_library_pass_shape(case, x, num_samples))


def _worker(case: str, variants: list[str], num_images: int, num_samples: int, rounds: int,
            memory: bool) -> dict[str, Any]:
    """Time the ``variants`` in this (fresh) process on ``rounds`` slices of the images, in turn
    (alternating the order), or (``memory``) measure the peak memory growth of one variant."""
    torch.set_num_threads(1)
    model, guide, x = _setup(case, num_images)
    runners = {v: _runner(case, v, model, guide) for v in variants}
    slices = x.tensor_split(rounds)
    shapes = {v: _pass_shape(case, v, x, num_samples) for v in variants}
    if any(shape and shape[1] > min(len(xs) for xs in slices) for shape in shapes.values()):
        raise ValueError(f"{case}: a pass shape holds more images than a slice ({num_images} / {rounds})")
    if any(_pass_shape(case, v, xs, num_samples) != shapes[v] for v in variants for xs in slices):
        raise RuntimeError(f"{case}: a slice of the images gets another pass shape than all of them")
    out = {v: {"pass_shape": shapes[v], "wall_s": [], "cpu_s": [], "log_px": []} for v in variants}
    with torch.no_grad():
        for v in variants:
            if v.startswith("hand"):  # the loop computes what the library computes
                (_HandVAE if case == "vae" else HandSPVAE)(model, guide).check(model, guide, x[:8])
            runners[v](x[:4], 50)  # warm-up: lazy imports and first-call initialisation
        if memory:
            with open("/proc/self/clear_refs", "w") as f:  # reset the peak RSS to the current RSS
                f.write("5")
            base = _status_mib("VmRSS")
        for r, xs in enumerate(slices):
            for v in variants if r % 2 == 0 else variants[::-1]:
                t0, c0 = time.perf_counter(), time.process_time()
                log_px = runners[v](xs, num_samples)
                out[v]["wall_s"].append(time.perf_counter() - t0)
                out[v]["cpu_s"].append(time.process_time() - c0)
                out[v]["log_px"] += log_px.double().tolist()
    for v in variants:
        out[v]["mean_log_px"] = statistics.fmean(out[v].pop("log_px"))
        if memory:
            out[v]["peak_mib"] = _status_mib("VmHWM") - base
    return out


def _memory_images(variant: str, num_images: int) -> int:
    """Images of the live-memory run: few, with the pass shape of the timed run (checked), except
    for the previous version, which batched up to 100 images per pass."""
    if variant == "before":
        return min(num_images, 100)
    if variant.startswith("hand@"):
        return min(num_images, max(MEMORY_IMAGES, int(variant.split("x")[-1])))
    return min(num_images, MEMORY_IMAGES)


def _spawn(case: str, variants: list[str], num_images: int, num_samples: int, rounds: int,
           path: str | None, memory: bool = False) -> dict[str, Any]:
    env = dict(os.environ)
    if path is not None:
        env["PYTHONPATH"] = os.pathsep.join([path] + [p for p in [env.get("PYTHONPATH")] if p])
    if memory:  # a fixed mmap threshold: freed big blocks go back to the OS at once
        env["MALLOC_MMAP_THRESHOLD_"] = str(MMAP_THRESHOLD)
    else:
        env.update(TIMING_MALLOC)
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", case, ",".join(variants), str(num_images),
           str(num_samples), str(rounds), str(int(memory))]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=1800, env=env, cwd=path or os.getcwd())
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[2:])} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _case_summary(reps: list[dict[str, Any]], memory: dict[str, dict[str, Any]],
                  num_images: int) -> dict[str, Any]:
    """Medians over the repetitions; each ratio is taken within one process (one repetition)."""
    out: dict[str, Any] = {"num_images": num_images, "variants": {}}
    for name in (n for n in reps[0] if not n.startswith("hand#")):
        rs = [rep[name] for rep in reps]
        mem = memory[name]
        if mem["pass_shape"] != rs[0]["pass_shape"]:
            raise RuntimeError(f"{name}: the live-memory run has another pass shape than the timed runs")
        # against the loop at the library's pass shape in the same process; a loop at another shape:
        # the library against it
        num, den = ("lib", name) if name.startswith("hand@") else (name, "hand")
        den = "hand#before" if name == "before" else den
        ratio = {key: statistics.median(sum(rep[num][key]) / sum(rep[den][key]) for rep in reps)
                 for key in ("wall_s", "cpu_s")}
        out["variants"][name] = {
            "pass_shape": rs[0]["pass_shape"],
            "wall_s": statistics.median(sum(r["wall_s"]) for r in rs),
            "cpu_s": statistics.median(sum(r["cpu_s"]) for r in rs),
            "time_ratio": ratio["wall_s"], "cpu_ratio": ratio["cpu_s"],
            "live_peak_mib": mem["peak_mib"],
            "memory_ratio": memory[num]["peak_mib"] / max(memory[den.partition("#")[0]]["peak_mib"], 1e-9),
            "mean_log_px": statistics.fmean(r["mean_log_px"] for r in rs), "runs": rs, "memory_run": mem,
        }
    return out


_LABELS = {"hand": "hand-written loop", "lib": "**library**", "before": "library before (`--before`)"}
_CASE_NAMES = {"vae": "`log_marginal_likelihood`, VAE", "spvae": "`spn_log_likelihood`, SPVAE"}


def _summary(cases: dict[str, Any], num_samples: int, reps: int, rounds: int, loads: list[float]) -> str:
    lines = [
        f"{num_samples} importance samples per MNIST test image, library defaults (PSIS on for the VAE) "
        "against a hand-written PyTorch loop with the same networks at the library's pass shape (K "
        f"samples x B images); 1 torch thread. Each repetition is a fresh process that runs the "
        f"variants in turn on {rounds} slices of the images (alternating the order); times are the "
        f"sums over the slices, medians over {reps} repetitions, and each ratio is the median of the "
        f"per-process ratios. Goals: time <= {GOAL_TIME}x, peak memory growth <= {GOAL_MEMORY:g}x the "
        "loop's. Ratios: variant / loop; for a loop at another shape (`loop @ K x B`), library / that loop.",
        "",
        "| evaluation | images | variant | pass (K x B) | wall (s) | CPU (s) | time ratio (wall / CPU) "
        "| live peak (MiB) | memory ratio | mean log p(x) |",
        "|---|---:|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for case, res in cases.items():
        for name, v in res["variants"].items():
            plain = name == "hand"
            ratio = "1" if plain else f"{v['time_ratio']:.2f}x / {v['cpu_ratio']:.2f}x"
            mem = "1" if plain else f"{v['memory_ratio']:.2f}x"
            shape = "old defaults" if v["pass_shape"] is None else " x ".join(map(str, v["pass_shape"]))
            lines.append(f"| {_CASE_NAMES[case]} | {res['num_images']} | {_LABELS[name.partition('@')[0]]} "
                         f"| {shape} | {v['wall_s']:.2f} | {v['cpu_s']:.2f} | {ratio} "
                         f"| {v['live_peak_mib']:.1f} | {mem} | {v['mean_log_px']:.2f} |")
    lines += [
        "",
        f"1-minute load average before the processes: {min(loads):.2f} to {max(loads):.2f} "
        f"({os.cpu_count()} cores shared with other work). The timed processes keep freed memory in "
        "glibc's heap (`MALLOC_TRIM_THRESHOLD_=2**30`): with the default settings each pass faults "
        "its tensors in again, about a quarter of either loop's time. The library's per-call costs "
        "(the guess of `max_plate_nesting`, the one-particle validation pass) are paid once per "
        "slice. Live peak: `VmHWM - VmRSS` over one run of the variant alone in a fresh process, on the "
        f"first {MEMORY_IMAGES} images (same pass shape; the previous version: up to 100 images, its "
        f"default batch), with `MALLOC_MMAP_THRESHOLD_={MMAP_THRESHOLD}` so that freed tensors leave the "
        "resident set at once (with glibc's adaptive threshold the resident set keeps freed blocks: the "
        "same loop measured anywhere from 44 to 583 MiB).",
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
    reps, rounds = (1, 2) if quick else (3, 10)
    num_samples = 1000 if quick else NUM_SAMPLES
    images = {"vae": 20 if quick else NUM_IMAGES, "spvae": 20 if quick else (NUM_IMAGES if full else 50)}
    groups: dict[str, list[tuple[list[str], str | None]]] = {}
    for case, n in images.items():
        main = ["hand", "lib"]
        for spec in filter(None, (s.strip() for s in hand_shapes.split(","))):  # "KxB" or "case:KxB"
            c, _, shape = spec.rpartition(":")
            main += [f"hand@{shape}"] if c in ("", case) else []
        # the previous version runs beside its own loop at the current library's pass shape
        k, b = _library_pass_shape(case, torch.empty(n, *EVENT_SHAPE), num_samples)
        groups[case] = [(main, None)] + ([([f"hand@{k}x{b}", "before"], before)] if before else [])
    timed: dict[str, list[dict[str, Any]]] = {case: [{} for _ in range(reps)] for case in images}
    loads = []
    for rep in range(reps):
        for case, case_groups in groups.items():
            for variants, path in case_groups:
                loads.append(os.getloadavg()[0])
                res = _spawn(case, variants, images[case], num_samples, rounds, path)
                if path is not None:
                    res = {"before": res["before"], "hand#before": res[variants[0]]}
                timed[case][rep].update(res)
    memory: dict[str, dict[str, Any]] = {case: {} for case in images}
    for case, case_groups in groups.items():
        for variants, path in case_groups:
            for v in variants if path is None else ["before"]:
                n = _memory_images(v, images[case])
                res = _spawn(case, [v], n, num_samples, 1, path, memory=True)
                memory[case][v] = {**res[v], "num_images": n}
    cases = {case: _case_summary(timed[case], memory[case], images[case]) for case in images}
    return {"name": "evaluator", "quick": quick, "threads": 1, "num_samples": num_samples, "reps": reps,
            "rounds": rounds, "before": before, "cases": cases,
            "summary": _summary(cases, num_samples, reps, rounds, loads)}


def _option(flag: str) -> str | None:
    return sys.argv[sys.argv.index(flag) + 1] if flag in sys.argv else None


if __name__ == "__main__":
    if len(sys.argv) == 8 and sys.argv[1] == "--worker":
        case, variants, n, s, rounds, memory = sys.argv[2:]
        print(json.dumps(_worker(case, variants.split(","), int(n), int(s), int(rounds), memory == "1")))
        sys.exit(0)
    result = run(quick="--quick" in sys.argv, before=_option("--before"),
                 hand_shapes=_option("--hand-shapes"), full="--full" in sys.argv)
    print(result["summary"])
    if _option("--json"):
        with open(_option("--json"), "w") as f:
            json.dump(result, f, indent=1)
