"""Importance-weighted estimators and the streaming log-likelihood evaluator on an MNIST VAE.

Three measurements (issue 3):

1. **Bound versus K for each estimator.** One dense VAE (784-200-200-z, Bernoulli likelihood,
   dynamically binarised MNIST) is trained per gradient estimator from the same initial weights
   and the same mini-batches: ``Trace_ELBO`` (K = 1), ``TraceIWAE_ELBO(K=5)`` with the IWAE
   gradient, with STL and with DReG. Each trained model is then evaluated on the same test images
   with the K-sample importance-weighted bound ``mean_i log (1/K) sum_k w_ik`` for several K
   (computed by :func:`~pyro_spvae.infer.log_marginal_likelihood` with ``num_samples=K``, which is
   that bound), and with the 5000-sample estimate of ``log p(x)`` (nats per image; PSIS k-hat).
2. **Evaluator throughput** against a hand-written batched PyTorch importance-sampling loop over
   the same encoder/decoder networks, the same chunking (particles x images) and the same running
   log-sum-exp; both with Pyro validation off, one torch thread. Repetitions are interleaved and
   the ratio of median times is reported (goal: within 10 %).
3. **Peak memory** of the evaluator at ``num_samples = 500`` and ``5000`` (same chunk size), each
   in a fresh subprocess: increase of the peak resident set size (``VmHWM`` of
   ``/proc/self/status``, reset through ``/proc/self/clear_refs`` after a 2-particle warm-up) during
   the call. A one-shot evaluation (``chunk_size = num_samples``) at 500 is
   shown for contrast (goal: flat in K when streaming).

MNIST is read with ``pyro_spvae.data.load_dataset("mnist", ...)`` from ``$PYRO_SPVAE_DATA`` or
``../shared/data/mnist``; when absent the embedded MNIST subset is used (recorded in the result).
``run(quick=False) -> dict`` is called by ``benchmarks/run.py``; ``python
benchmarks/bench_estimators.py [--quick]`` runs it stand-alone.
"""

from __future__ import annotations

import json
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pyro
import torch
import torch.nn.functional as F

from pyro_spvae.data import load_dataset
from pyro_spvae.infer import TraceIWAE_ELBO, log_marginal_likelihood
from pyro_spvae.zoo import MODELS

ROOT = Path(__file__).resolve().parents[1]
SHARED_MNIST = ROOT.parent / "shared" / "data" / "mnist"
LOG_2PI = 1.8378770664093453
VAE_KW = {"hidden": (200, 200), "likelihood": "bernoulli", "arch": "dense"}


def _load(split: str, n: int, seed: int) -> tuple[torch.Tensor, str]:
    root = os.environ.get("PYRO_SPVAE_DATA") or (str(SHARED_MNIST) if SHARED_MNIST.exists() else None)
    try:
        data = load_dataset("mnist", split, "binary-dynamic", root=root, download=False)
        name = "mnist"
    except (FileNotFoundError, OSError, ValueError):
        data = load_dataset("embedded", split, "binary-dynamic")
        name = "embedded"
    n = min(n, len(data))
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(data), generator=g)[:n]
    return data.batch(idx, torch.Generator().manual_seed(seed + 1)), name


def _estimators() -> dict:
    return {
        "Trace_ELBO": lambda: pyro.infer.Trace_ELBO(),
        "IWAE (K=5)": lambda: TraceIWAE_ELBO(num_particles=5),
        "IWAE+STL (K=5)": lambda: TraceIWAE_ELBO(num_particles=5, stl=True),
        "DReG (K=5)": lambda: TraceIWAE_ELBO(num_particles=5, estimator="dreg"),
    }


def _train(make_elbo, x_train: torch.Tensor, z_dim: int, steps: int, batch: int):
    pyro.clear_param_store()
    torch.manual_seed(0)
    model, guide = MODELS["vae"]((1, 28, 28), z_dim=z_dim, **VAE_KW)
    svi = pyro.infer.SVI(model, guide, pyro.optim.Adam({"lr": 1e-3}), make_elbo())
    g = torch.Generator().manual_seed(1)
    for _ in range(steps):
        idx = torch.randint(0, x_train.shape[0], (batch,), generator=g)
        xb = x_train[idx]
        xb = torch.bernoulli(xb, generator=g)  # dynamic re-binarisation of the binary batch (no-op)
        svi.step(xb)
    return model, guide


class _HandWritten:
    """Batched importance sampling for the same VAE in plain PyTorch (no Pyro)."""

    def __init__(self, model, guide):
        self.enc, self.dec = guide.encoder, model.decoder
        self.z_dim, self.min_scale = guide.z_dim, guide.min_scale

    @torch.no_grad()
    def __call__(self, x: torch.Tensor, num_samples: int, chunk: int, batch: int) -> torch.Tensor:
        out = torch.empty(x.shape[0], dtype=torch.float64)
        for s in range(0, x.shape[0], batch):
            xb = x[s : s + batch]
            lse = torch.full((xb.shape[0],), -math.inf, dtype=torch.float64)
            done = 0
            while done < num_samples:
                k = min(chunk, num_samples - done)
                h = self.enc(xb)
                loc, scale = h[..., : self.z_dim], F.softplus(h[..., self.z_dim :]) + self.min_scale
                eps = torch.randn((k,) + loc.shape)
                z = loc + scale * eps
                logits = self.dec(z)
                log_px = -F.binary_cross_entropy_with_logits(
                    logits, xb.expand_as(logits), reduction="none"
                ).flatten(2).sum(-1)
                log_pz = -0.5 * (z**2 + LOG_2PI).sum(-1)
                log_qz = (-0.5 * (eps**2 + LOG_2PI) - scale.log()).sum(-1)
                lw = (log_px + log_pz - log_qz).double()
                lse = torch.logaddexp(lse, torch.logsumexp(lw, 0))
                done += k
            out[s : s + batch] = lse - math.log(num_samples)
        return out


def _throughput(model, guide, x, num_samples: int, chunk: int, batch: int, reps: int) -> dict:
    hand = _HandWritten(model, guide)
    pyro.enable_validation(False)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one thread: less sensitive to other processes on a shared machine
    times = {"hand-written torch": [], "pyro_spvae (psis=False)": [], "pyro_spvae (psis=True)": []}
    try:
        kw = {"num_samples": num_samples, "chunk_size": chunk, "batch_size": batch, "progress": False}
        a = log_marginal_likelihood(model, guide, x, psis=False, **kw).log_px
        b = hand(x, num_samples, chunk, batch)
        for _ in range(reps):
            t = time.perf_counter()
            hand(x, num_samples, chunk, batch)
            times["hand-written torch"].append(time.perf_counter() - t)
            t = time.perf_counter()
            log_marginal_likelihood(model, guide, x, psis=False, **kw)
            times["pyro_spvae (psis=False)"].append(time.perf_counter() - t)
            t = time.perf_counter()
            log_marginal_likelihood(model, guide, x, psis=True, **kw)
            times["pyro_spvae (psis=True)"].append(time.perf_counter() - t)
    finally:
        pyro.enable_validation(True)
        torch.set_num_threads(threads)
    med = {k: statistics.median(v) for k, v in times.items()}
    n = x.shape[0] * num_samples
    return {
        "num_images": x.shape[0],
        "num_samples": num_samples,
        "chunk_size": chunk,
        "batch_size": batch,
        "reps": reps,
        "threads": 1,
        "seconds": times,
        "median_seconds": med,
        "weights_per_second": {k: n / v for k, v in med.items()},
        "ratio_psis_false": med["pyro_spvae (psis=False)"] / med["hand-written torch"],
        "ratio_psis_true": med["pyro_spvae (psis=True)"] / med["hand-written torch"],
        "mean_abs_diff_log_px_nats": float((a - b).abs().mean()),
    }


_MEMORY_SCRIPT = r"""
import json, resource, sys, torch, pyro
from pyro_spvae.infer import log_marginal_likelihood
from pyro_spvae.zoo import MODELS
torch.set_num_threads(1)
pyro.enable_validation(False)
S, chunk, batch, n, psis = (int(a) for a in sys.argv[1:6])
torch.manual_seed(0)
model, guide = MODELS["vae"]((1, 28, 28), z_dim=20, hidden=(200, 200), likelihood="bernoulli")
x = torch.bernoulli(torch.full((n, 1, 28, 28), 0.2))
# warm-up with 2 particles: loads every code path without allocating evaluation-sized buffers
log_marginal_likelihood(model, guide, x, num_samples=2, chunk_size=2, batch_size=batch, progress=False)
def hwm_kib():
    # peak RSS of this process; ru_maxrss would include the parent's peak inherited through fork
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
try:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the peak-RSS high-water mark to the current RSS
except OSError:
    pass
before = hwm_kib()
log_marginal_likelihood(model, guide, x, num_samples=S, chunk_size=chunk, batch_size=batch, progress=False,
                        psis=bool(psis))
after = hwm_kib()
print(json.dumps({"peak_increase_mib": (after - before) / 1024, "peak_rss_mib": after / 1024}))
"""


def _memory(num_samples: int, chunk: int, batch: int, n: int, psis: bool) -> dict:
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    args = [str(num_samples), str(chunk), str(batch), str(n), str(int(psis))]
    out = subprocess.run(
        [sys.executable, "-c", _MEMORY_SCRIPT, *args],
        capture_output=True,
        text=True,
        check=True,
        env=env,
        cwd=str(ROOT),
    )
    res = json.loads(out.stdout.strip().splitlines()[-1])
    res.update({"num_samples": num_samples, "chunk_size": chunk, "batch_size": batch, "psis": psis})
    return res


def _config(quick: bool) -> dict:
    return {
        "z_dim": 20,
        "train_steps": 200 if quick else 2000,
        "train_batch": 100,
        "num_train": 10000 if quick else 50000,
        "num_eval": 100 if quick else 500,
        "bound_K": [1, 5, 50, 500] if quick else [1, 5, 50, 500, 5000],
        "num_ll": 100 if quick else 500,
        "ll_samples": 5000,
        "throughput_samples": 500 if quick else 2000,
        "throughput_images": 50 if quick else 100,
        "throughput_reps": 5 if quick else 7,
    }


def _train_and_evaluate(cfg: dict, x_train: torch.Tensor, x_eval: torch.Tensor, x_ll: torch.Tensor) -> dict:
    """Measurement 1: train one VAE per estimator, then its K-sample bounds and 5000-sample log p(x)."""
    out: dict[str, dict] = {"bounds": {}, "ll": {}, "train_seconds": {}, "trained": {}}
    for name, make in _estimators().items():
        t = time.perf_counter()
        model, guide = _train(make, x_train, cfg["z_dim"], cfg["train_steps"], cfg["train_batch"])
        out["train_seconds"][name] = time.perf_counter() - t
        out["trained"][name] = (model, guide)
        pyro.set_rng_seed(2)
        out["bounds"][name] = {
            str(K): float(
                log_marginal_likelihood(
                    model, guide, x_eval, num_samples=K, chunk_size=250, progress=False, psis=False
                ).log_px.mean()
            )
            for K in cfg["bound_K"]
        }
        res = log_marginal_likelihood(
            model, guide, x_ll, num_samples=cfg["ll_samples"], chunk_size=500, progress=False
        )
        out["ll"][name] = {
            "nats": res.nats,
            "bits_per_dim": res.bits_per_dim,
            "khat_mean": float(res.khat.mean()),
            "frac_khat_gt_0.7": float(res.unreliable.double().mean()),
            "ess_median": float(res.ess.median()),
        }
    return out


def _summary(cfg: dict, dataset: str, bounds: dict, ll: dict, tp: dict, memory: list[dict]) -> str:
    lines = [
        f"Dense VAE 784-200-200-{cfg['z_dim']} (Bernoulli, dynamically binarised {dataset}), "
        f"{cfg['train_steps']} Adam steps (batch {cfg['train_batch']}, lr 1e-3) per estimator, "
        f"same initial weights and batches.",
        "",
        f"Mean K-sample bound (nats/image, {cfg['num_eval']} test images) and 5000-sample "
        f"log-likelihood ({cfg['num_ll']} images):",
        "",
        "| trained with | "
        + " | ".join(f"K={K}" for K in cfg["bound_K"])
        + " | log p(x) (5000) | k-hat>0.7 |",
        "|---" * (len(cfg["bound_K"]) + 3) + "|",
    ]
    for name in bounds:
        row = " | ".join(f"{bounds[name][str(K)]:.2f}" for K in cfg["bound_K"])
        lines.append(f"| {name} | {row} | {-ll[name]['nats']:.2f} | {ll[name]['frac_khat_gt_0.7']:.0%} |")
    lines += [
        "",
        f"Evaluator throughput ({tp['num_images']} images x {tp['num_samples']} samples, chunk "
        f"{tp['chunk_size']}, batch {tp['batch_size']}, 1 thread, median of {tp['reps']}): "
        f"hand-written torch {tp['median_seconds']['hand-written torch']:.2f} s, pyro_spvae "
        f"{tp['median_seconds']['pyro_spvae (psis=False)']:.2f} s (ratio {tp['ratio_psis_false']:.2f}; "
        f"with PSIS {tp['ratio_psis_true']:.2f}); mean |difference| of log p(x) "
        f"{tp['mean_abs_diff_log_px_nats']:.3f} nats (independent draws).",
        "",
        "Peak RSS increase during evaluation (50 images, batch 50):",
        "",
        "| num_samples | chunk | PSIS | peak increase (MiB) |",
        "|---|---|---|---|",
    ]
    for m in memory:
        lines.append(
            f"| {m['num_samples']} | {m['chunk_size']} | {m['psis']} | {m['peak_increase_mib']:.1f} |"
        )
    return "\n".join(lines)


def run(quick: bool = False) -> dict:
    """Run the three measurements; ``quick`` trains and evaluates less (see ``config``)."""
    cfg = _config(quick)
    torch.manual_seed(0)
    x_train, dataset = _load("train", cfg["num_train"], seed=0)
    x_test, _ = _load("test", max(cfg["num_eval"], cfg["num_ll"]), seed=1)
    x_eval, x_ll = x_test[: cfg["num_eval"]], x_test[: cfg["num_ll"]]
    res = _train_and_evaluate(cfg, x_train, x_eval, x_ll)

    model, guide = res["trained"]["IWAE (K=5)"]
    x_tp = x_test[: cfg["throughput_images"]]
    throughput = _throughput(model, guide, x_tp, cfg["throughput_samples"], 250, 50, cfg["throughput_reps"])
    memory = [
        _memory(500, 250, 50, 50, psis=True),
        _memory(5000, 250, 50, 50, psis=True),
        _memory(5000, 250, 50, 50, psis=False),
        _memory(500, 500, 50, 50, psis=False),
    ]
    return {
        "config": cfg,
        "dataset": dataset,
        "bound_vs_K": res["bounds"],
        "log_likelihood_5000": res["ll"],
        "train_seconds": res["train_seconds"],
        "throughput": throughput,
        "memory": memory,
        "summary": _summary(cfg, dataset, res["bounds"], res["ll"], throughput, memory),
    }


if __name__ == "__main__":
    result = run(quick="--quick" in sys.argv)
    print(result["summary"])
