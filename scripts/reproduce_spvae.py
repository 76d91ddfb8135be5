"""Reproduce Table 1 of Tan & Peharz (ICML 2019): SPVAE, VAE, Conv-SPVAE and Conv-VAE on MNIST.

Trains the eight presets ``{spvae, vae, conv-spvae, conv-vae}-{continuous, discrete}`` of
:mod:`pyro_spvae.training.presets` (DESIGN §3) and evaluates each on the test set with the
5000-sample importance-weighted bound (SPVAEs: :func:`pyro_spvae.infer.spn_log_likelihood`, the
paper's leaf-averaged bound with 5000 samples per leaf; VAEs:
:func:`pyro_spvae.infer.log_marginal_likelihood`). Writes a markdown table (bound next to the
paper's value, parameter count, training time) and a JSON file with the raw figures; with
``--fractions`` also the data-efficiency curve (test bound against the fraction of the training
set) as a plot.

Full run (many CPU-hours)::

    python scripts/reproduce_spvae.py

Smoke run (checks the pipeline end to end, figures are NOT a reproduction)::

    python scripts/reproduce_spvae.py --max-steps 50 --num-samples 100 --eval-examples 100 \\
        --valid-examples 500
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch

from pyro_spvae.data import load_dataset
from pyro_spvae.infer import (
    SPNLeafELBO,
    SPNLeafIWELBO,
    SPNRootIWELBO,
    log_marginal_likelihood,
    spn_log_likelihood,
)
from pyro_spvae.models import MODELS
from pyro_spvae.training.checkpoint import load_checkpoint
from pyro_spvae.training.factory import make_elbo, make_optimizer
from pyro_spvae.training.presets import preset_config
from pyro_spvae.training.trainer import Trainer

REPO = Path(__file__).resolve().parents[1]

#: Tan & Peharz 2019, Table 1: 5000-sample IW bound on the MNIST test set, nats per image.
PAPER_TABLE1: dict[str, float] = {
    "spvae-continuous": 2819.2,
    "vae-continuous": 2598.1,
    "conv-spvae-continuous": 2702.3,
    "conv-vae-continuous": 2907.4,
    "spvae-discrete": -1532.3,
    "vae-discrete": -2351.2,
    "conv-spvae-discrete": -926.5,
    "conv-vae-discrete": -2098.6,
}
CONFIGS = tuple(PAPER_TABLE1)

#: SPN-aware estimators by configuration name (the CLI factory knows Pyro's and the IWAE ones).
SPN_ELBOS = {"spn-leaf": SPNLeafELBO, "spn-leaf-iw": SPNLeafIWELBO, "spn-root-iw": SPNRootIWELBO}


class Subset:
    """The first ``n`` examples (in a fixed random order) of a dataset with ``batch(idx, gen)``."""

    def __init__(self, base: Any, fraction: float, seed: int = 0) -> None:
        if not 0 < fraction <= 1:
            raise ValueError(f"fraction must be in (0, 1], got {fraction}")
        n = max(1, int(round(fraction * len(base))))
        perm = torch.randperm(len(base), generator=torch.Generator().manual_seed(seed))
        self.base, self.index = base, perm[:n]
        self.event_shape, self.likelihood = base.event_shape, base.likelihood

    def __len__(self) -> int:
        return int(self.index.numel())

    def batch(self, idx: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.base.batch(self.index[idx], generator)


def make_estimator(name: str, num_particles: int):
    """SPN-aware bounds by name, else :func:`pyro_spvae.training.factory.make_elbo`."""
    if name in SPN_ELBOS:
        return SPN_ELBOS[name](num_particles)
    return make_elbo(name, num_particles, max_plate_nesting=1)


def count_params(*modules: torch.nn.Module) -> int:
    return sum(p.numel() for m in modules for p in m.parameters())


@torch.no_grad()
def evaluate(model, guide, data, num_examples: int, num_samples: int, chunk_size: int,
             batch_size: int) -> float:
    """Mean test bound (nats per image) over the first ``num_examples`` examples."""
    n = min(num_examples, len(data))
    gen = torch.Generator().manual_seed(1234)
    total = 0.0
    for start in range(0, n, batch_size):
        x = data.batch(torch.arange(start, min(n, start + batch_size)), gen)
        if hasattr(model, "spn_log_value"):
            est = spn_log_likelihood(model, guide, x, num_samples=num_samples, chunk_size=chunk_size)
        else:
            est = log_marginal_likelihood(model, guide, x, num_samples=num_samples, chunk_size=chunk_size,
                                          batch_size=batch_size, progress=False, psis=False,
                                          max_plate_nesting=1).log_px
        total += float(est.double().sum())
    return total / n


def run_config(name: str, args: argparse.Namespace, fraction: float = 1.0) -> dict[str, Any]:
    cfg = preset_config(name)
    root = args.data_dir
    train = load_dataset(args.data, "train", cfg.transform, root=root)
    valid = load_dataset(args.data, "valid", cfg.transform, root=root)
    test = load_dataset(args.data, "test", cfg.transform, root=root)
    if fraction < 1:
        train = Subset(train, fraction, seed=args.seed)
    torch.manual_seed(args.seed)
    model, guide = MODELS[cfg.model](train.event_shape, **cfg.model_kwargs)
    run_dir = Path(args.run_dir) / (name if fraction == 1 else f"{name}-frac{fraction:g}")
    batch_size = min(cfg.batch_size, len(train))
    trainer = Trainer(
        model, guide, make_estimator(cfg.elbo, cfg.num_particles),
        make_optimizer(cfg.lr, group_lrs=cfg.group_lrs), train, batch_size=batch_size, valid_data=valid,
        max_steps=args.max_steps if args.max_steps is not None else cfg.steps,
        max_epochs=cfg.epochs, eval_every=cfg.eval_every, patience=cfg.patience,
        valid_max_examples=args.valid_examples, seed=args.seed, out_dir=run_dir, progress=args.progress,
        config=cfg.to_dict(),
    )
    t0 = time.perf_counter()
    result = trainer.fit()
    train_time = trainer.wall_time
    best = run_dir / "best.pt"
    if best.exists():  # evaluate the early-stopping choice
        state = load_checkpoint(best)
        model.load_state_dict(state["model"])
        guide.load_state_dict(state["guide"])
    model.eval(), guide.eval()
    t1 = time.perf_counter()
    bound = evaluate(model, guide, test, args.eval_examples, args.num_samples, args.chunk_size,
                     args.eval_batch)
    return {
        "config": name,
        "fraction": fraction,
        "bound": bound,
        "paper": PAPER_TABLE1[name],
        "params": count_params(model, guide),
        "train_time_s": train_time,
        "total_time_s": time.perf_counter() - t0,
        "eval_time_s": time.perf_counter() - t1,
        "steps": result.step,
        "epochs": result.epoch,
        "stopped_early": result.stopped_early,
        "best_valid_loss": result.best_valid_loss,
        "eval_examples": min(args.eval_examples, len(test)),
        "num_samples": args.num_samples,
    }


def write_markdown(rows: list[dict[str, Any]], args: argparse.Namespace, path: Path) -> None:
    full = args.max_steps is None and args.num_samples >= 5000 and args.eval_examples >= 10000
    lines = [
        "# SPVAE reproduction (Tan & Peharz, ICML 2019, Table 1)",
        "",
        "Test-set importance-weighted bound on log p(x), nats per image (higher is better); paper: 5000 "
        "samples (per leaf for SPVAEs), full MNIST test set.",
        "",
    ]
    if not full:
        lines += [
            "**SMOKE FIGURES, NOT A REPRODUCTION.** This run used a tiny budget "
            f"(max steps {args.max_steps}, {args.num_samples} importance samples, "
            f"{args.eval_examples} test images, data {args.data!r}); it only verifies the pipeline end "
            "to end. The full run is `python scripts/reproduce_spvae.py` (many CPU-hours).",
            "",
        ]
    lines += [
        f"Command: `{' '.join([Path(sys.argv[0]).name, *sys.argv[1:]])}`",
        "",
        "| configuration | bound (ours) | paper Table 1 | params (model+guide) | train time (s) | steps | "
        "early stop |",
        "|---|---:|---:|---:|---:|---:|:---:|",
    ]
    for r in rows:
        if r["fraction"] != 1:
            continue
        lines.append(
            f"| {r['config']} | {r['bound']:.1f} | {r['paper']:.1f} | {r['params']:,} "
            f"| {r['train_time_s']:.0f} | {r['steps']} | {'yes' if r['stopped_early'] else 'no'} |"
        )
    fr = [r for r in rows if r["fraction"] != 1]
    if fr:
        lines += ["", "Data efficiency (test bound vs fraction of the training set): "
                  "`spvae_data_efficiency.png`", "", "| configuration | fraction | bound |",
                  "|---|---:|---:|"]
        lines += [f"| {r['config']} | {r['fraction']:g} | {r['bound']:.1f} |" for r in rows
                  if len({q['fraction'] for q in rows if q['config'] == r['config']}) > 1]
    lines += [
        "",
        f"Machine: {os.cpu_count()} CPU cores (load average {os.getloadavg()[0]:.1f} at the end: training "
        f"times on a shared machine are inflated), torch {torch.__version__}, "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.",
        "",
    ]
    path.write_text("\n".join(lines))


def plot_efficiency(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name in dict.fromkeys(r["config"] for r in rows):
        pts = sorted((r["fraction"], r["bound"]) for r in rows if r["config"] == name)
        if len(pts) > 1:
            ax.plot([100 * f for f, _ in pts], [b for _, b in pts], marker="o", label=name)
    ax.set_xscale("log")
    ax.set_xlabel("% of the training set")
    ax.set_ylabel("test bound (nats / image)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=CONFIGS)
    parser.add_argument("--data", default="mnist", choices=("mnist", "embedded"))
    default_dir = REPO.parent / "shared" / "data" / "mnist"
    parser.add_argument("--data-dir", default=str(default_dir) if default_dir.exists() else None)
    parser.add_argument("--max-steps", type=int, default=None, help="cap training steps (smoke runs)")
    parser.add_argument("--num-samples", type=int, default=5000, help="importance samples (per leaf)")
    parser.add_argument("--chunk-size", type=int, default=100)
    parser.add_argument("--eval-examples", type=int, default=10000)
    parser.add_argument("--eval-batch", type=int, default=100)
    parser.add_argument("--valid-examples", type=int, default=None)
    parser.add_argument("--fractions", type=float, nargs="*", default=[],
                        help="extra training-set fractions for the data-efficiency curve, e.g. 0.01 0.1")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--run-dir", default=str(REPO / "runs" / "spvae_reproduction"))
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "spvae_reproduction.md"))
    parser.add_argument("--progress", action="store_true")
    args = parser.parse_args(argv)

    rows = []
    for name in args.configs:
        for fraction in [1.0, *args.fractions]:
            print(f"[reproduce_spvae] {name} (fraction {fraction:g}) ...", flush=True)
            row = run_config(name, args, fraction)
            print(f"[reproduce_spvae] {name}: bound {row['bound']:.1f} (paper {row['paper']:.1f}), "
                  f"{row['params']:,} params, {row['train_time_s']:.0f} s training", flush=True)
            rows.append(row)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_markdown(rows, args, out)
    out.with_suffix(".json").write_text(json.dumps({"args": vars(args), "rows": rows}, indent=2, default=str))
    if args.fractions:
        plot_efficiency(rows, out.with_name("spvae_data_efficiency.png"))
    print(f"[reproduce_spvae] wrote {out}")
    return 0 if all(math.isfinite(r["bound"]) for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
