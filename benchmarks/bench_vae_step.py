"""Overhead of a Pyro SVI step: our trainer's step on the VAE vs a hand-written PyTorch step.

Both sides use the SAME encoder and decoder networks (deep copies of the modules built by
``pyro_spvae.zoo.MODELS["vae"]``, same initial weights), the same batch of dynamically binarised
embedded-MNIST images, the same single-sample reparameterised ELBO (Monte Carlo
``log p(x|z) + log p(z) - log q(z|x)``, like ``Trace_ELBO``) divided by the batch size, and Adam
with the same hyper-parameters (``pyro.optim.Adam`` keeps one ``torch.optim.Adam`` per parameter;
the hand-written step uses one ``torch.optim.Adam`` over all parameters).

The Pyro side is :meth:`pyro_spvae.training.Trainer.step` (trace + ``Trace_ELBO.loss_and_grads``,
gradient scaling, NaN/Inf guard, optimiser), once with Pyro's argument validation on (the
default, including the model's input checks) and once with ``pyro.enable_validation(False)``.
Repetitions are interleaved (pyro, torch, pyro, torch, ...) and the ratio of medians is reported,
so that load from other processes on a shared machine hits both sides alike.

``run(quick=False) -> dict`` is called by ``benchmarks/run.py``; ``python benchmarks/bench_vae_step.py
[--quick]`` runs it stand-alone and prints the summary.
"""

from __future__ import annotations

import copy
import json
import statistics
import sys
import time

import pyro
import torch
import torch.nn.functional as F

from pyro_spvae.data import load_dataset
from pyro_spvae.training import Schedule, Trainer, make_elbo, make_optimizer
from pyro_spvae.zoo import MODELS

LOG_2PI = 1.8378770664093453


class _HandWritten:
    """The same VAE and ELBO in plain PyTorch."""

    def __init__(
        self, model: torch.nn.Module, guide: torch.nn.Module, z_dim: int, min_scale: float, lr: float
    ):
        self.enc = copy.deepcopy(guide.encoder)
        self.dec = copy.deepcopy(model.decoder)
        self.z_dim = z_dim
        self.min_scale = min_scale
        self.opt = torch.optim.Adam(list(self.enc.parameters()) + list(self.dec.parameters()), lr=lr)

    def step(self, x: torch.Tensor) -> float:
        out = self.enc(x)
        loc, scale = out[..., : self.z_dim], F.softplus(out[..., self.z_dim :]) + self.min_scale
        eps = torch.randn_like(loc)
        z = loc + scale * eps
        logits = self.dec(z)
        log_px = -F.binary_cross_entropy_with_logits(logits, x, reduction="none").flatten(1).sum(-1)
        log_pz = -0.5 * (z**2 + LOG_2PI).sum(-1)
        log_qz = (-0.5 * (eps**2 + LOG_2PI) - scale.log()).sum(-1)
        loss = -(log_px + log_pz - log_qz).sum() / x.shape[0]
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        return float(loss.detach())


def _bench(arch: str, batch: int, reps: int, steps_per_rep: int, validation: bool) -> dict:
    pyro.clear_param_store()
    pyro.enable_validation(validation)
    torch.manual_seed(0)
    data = load_dataset("embedded", "train", "binary-dynamic")
    x = data.batch(torch.arange(batch), torch.Generator().manual_seed(0))
    kw = {"z_dim": 50, "hidden": (200, 200), "arch": arch, "likelihood": "bernoulli"}
    model, guide = MODELS["vae"](tuple(data.event_shape), **kw)
    hand = _HandWritten(model, guide, kw["z_dim"], guide.min_scale, lr=1e-3)
    trainer = Trainer(
        model,
        guide,
        make_elbo("trace", max_plate_nesting=1),
        make_optimizer(1e-3),
        data,
        Schedule(batch_size=batch, steps=1),
        progress=False,
    )
    # Both sides start from the same weights: their first losses agree up to Monte Carlo noise.
    pyro_loss, hand_loss = trainer.step(x), hand.step(x)
    for _ in range(2):  # warm-up (allocations, Adam state creation)
        trainer.step(x)
        hand.step(x)
    t_pyro, t_torch = [], []
    for _ in range(reps):
        t = time.perf_counter()
        for _ in range(steps_per_rep):
            trainer.step(x)
        t_pyro.append((time.perf_counter() - t) / steps_per_rep)
        t = time.perf_counter()
        for _ in range(steps_per_rep):
            hand.step(x)
        t_torch.append((time.perf_counter() - t) / steps_per_rep)
    pyro.enable_validation(True)
    mp, mt = statistics.median(t_pyro), statistics.median(t_torch)
    return {
        "arch": arch,
        "batch": batch,
        "validation": validation,
        "reps": reps,
        "steps_per_rep": steps_per_rep,
        "first_loss_pyro": float(pyro_loss),
        "first_loss_torch": float(hand_loss),
        "pyro_step_ms": 1e3 * mp,
        "torch_step_ms": 1e3 * mt,
        "ratio": mp / mt,
        "pyro_step_ms_all": [1e3 * v for v in t_pyro],
        "torch_step_ms_all": [1e3 * v for v in t_torch],
    }


def run(quick: bool = False) -> dict:
    """Run the benchmark; returns a JSON-serialisable dict with a markdown ``"summary"``."""
    threads = 1
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        reps, steps = (5, 5) if quick else (15, 10)
        rows = [
            _bench(arch, 128, reps if arch == "dense" else max(3, reps // 3), steps, validation)
            for arch in ("dense", "conv")
            for validation in (True, False)
        ]
    finally:
        torch.set_num_threads(previous)
    lines = [
        f"One SVI step of the VAE (z=50, hidden 200-200, Bernoulli, batch 128) through "
        f"`Trainer.step` vs a hand-written PyTorch step of the same networks; {threads} torch thread, "
        "interleaved repetitions, medians.",
        "",
        "| arch | Pyro validation | Pyro step (ms) | PyTorch step (ms) | ratio |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['arch']} | {'on' if r['validation'] else 'off'} | {r['pyro_step_ms']:.2f} "
            f"| {r['torch_step_ms']:.2f} | {r['ratio']:.2f}x |"
        )
    return {"name": "vae_step", "quick": quick, "threads": threads, "rows": rows, "summary": "\n".join(lines)}


if __name__ == "__main__":
    result = run(quick="--quick" in sys.argv)
    print(result["summary"])
    print(json.dumps({k: v for k, v in result.items() if k != "summary"}, indent=1)[:2000])
