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
             batch_size: int) -> torch.Tensor:
    """Per-image test bounds (nats, float64, shape ``(n,)``) of the first ``num_examples`` examples."""
    n = min(num_examples, len(data))
    gen = torch.Generator().manual_seed(1234)
    out = []
    for start in range(0, n, batch_size):
        x = data.batch(torch.arange(start, min(n, start + batch_size)), gen)
        if hasattr(model, "spn_log_value"):
            est = spn_log_likelihood(model, guide, x, num_samples=num_samples, chunk_size=chunk_size)
        else:
            est = log_marginal_likelihood(model, guide, x, num_samples=num_samples, chunk_size=chunk_size,
                                          batch_size=batch_size, progress=False, psis=False,
                                          max_plate_nesting=1).log_px
        out.append(est.double().reshape(-1))
    return torch.cat(out)


def run_config(name: str, args: argparse.Namespace, fraction: float = 1.0) -> dict[str, Any]:
    cfg = preset_config(name, **args.override)
    root = args.data_dir
    train = load_dataset(args.data, "train", cfg.transform, root=root)
    valid = load_dataset(args.data, "valid", cfg.transform, root=root)
    test = load_dataset(args.data, "test", cfg.transform, root=root)
    if fraction < 1:
        train = Subset(train, fraction, seed=args.seed)
    torch.manual_seed(args.seed)
    model, guide = MODELS[cfg.model](train.event_shape, **cfg.model_kwargs)
    stem = f"{name}-{args.variant}" if args.variant else name
    run_dir = Path(args.run_dir) / (stem if fraction == 1 else f"{stem}-frac{fraction:g}")
    batch_size = min(cfg.batch_size, len(train))
    trainer = Trainer(
        model, guide, make_estimator(cfg.elbo, cfg.num_particles),
        make_optimizer(cfg.lr, group_lrs=cfg.group_lrs), train, batch_size=batch_size, valid_data=valid,
        max_steps=args.max_steps if args.max_steps is not None else cfg.steps,
        max_epochs=cfg.epochs, eval_every=cfg.eval_every, patience=cfg.patience,
        lr_decay=cfg.lr_decay, lr_patience=cfg.lr_patience, min_rel_improvement=cfg.min_rel_improvement,
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
    per_image = evaluate(model, guide, test, args.eval_examples, args.num_samples, args.chunk_size,
                         args.eval_batch)
    return {
        "config": name,
        "fraction": fraction,
        "bound": float(per_image.mean()),
        "stderr": float(per_image.std() / math.sqrt(per_image.numel())) if len(per_image) > 1 else math.nan,
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
        "max_steps": args.max_steps,
        "overrides": args.override,
        "variant": args.variant,
        "train_examples": len(train),
        "threads": torch.get_num_threads(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }


def _label(row: dict[str, Any]) -> str:
    """``config`` or ``config [variant]``: a row's name in the report."""
    return f"{row['config']} [{row['variant']}]" if row.get("variant") else row["config"]


def _curves(rows: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Rows by :func:`_label`, sorted by training fraction, for labels run at several fractions."""
    out: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        out.setdefault(_label(r), []).append(r)
    return {k: sorted(v, key=lambda r: r["fraction"]) for k, v in out.items() if len(v) > 1}


def _pairs() -> list[tuple[str, str]]:
    """(SPVAE, VAE-baseline) configuration pairs at equal parameter budget."""
    return [(f"{arch}spvae-{data}", f"{arch}vae-{data}") for data in ("continuous", "discrete")
            for arch in ("", "conv-")]


def write_markdown(rows: list[dict[str, Any]], path: Path) -> None:
    """The report of ``rows`` (each row states its own training and evaluation protocol)."""
    main = {_label(r): r for r in rows if r["fraction"] == 1}
    lines = [
        "# SPVAE reproduction (Tan & Peharz, ICML 2019, Table 1)",
        "",
        "Test-set importance-weighted bound on log p(x), nats per image (higher is better), "
        "± its standard error over the evaluated test images. Paper: 5000 importance samples (per leaf "
        "for SPVAEs), full MNIST test set, training to early stopping. Ours: the presets "
        "`pyro-spvae train --preset NAME` trained by `scripts/reproduce_spvae.py` for the step budget in "
        "the table (early stopping on 1000 validation images could end a run sooner), evaluated with the "
        "number of samples (per leaf for SPVAEs) and the first test images given in the table.",
        "",
        "| configuration | bound (ours) | paper Table 1 | ours ≥ paper | params (model+guide) "
        "| steps (epochs) | train time (s) | test images | samples |",
        "|---|---:|---:|:---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in main.items():
        lines.append(
            f"| {name} | {r['bound']:.1f} ± {r['stderr']:.1f} | {r['paper']:.1f} "
            f"| {'yes' if r['bound'] >= r['paper'] else '**no**'} | {r['params']:,} "
            f"| {r['steps']} ({r['epochs']}){' early stop' if r['stopped_early'] else ''} "
            f"| {r['train_time_s']:.0f} | {r['eval_examples']} | {r['num_samples']} |"
        )
    pairs = [(a, _label(r)) for a, b in _pairs() if a in main for r in main.values() if r["config"] == b]
    if pairs:
        lines += ["", "SPVAE against the VAE baseline at equal parameter count (same step budget, same test "
                  "images):",
                  "", "| SPVAE | VAE | SPVAE − VAE (nats) | paper SPVAE − VAE |", "|---|---|---:|---:|"]
        lines += [f"| {a} | {b} | {main[a]['bound'] - main[b]['bound']:+.1f} "
                  f"| {main[a]['paper'] - main[b]['paper']:+.1f} |" for a, b in pairs]
    curves = _curves(rows)
    if curves:
        lines += ["", "Data efficiency (test bound against the fraction of the 50k training images), "
                  "plotted in `spvae_data_efficiency.png`:", "",
                  "| configuration | fraction | training images | steps | bound | test images | samples |",
                  "|---|---:|---:|---:|---:|---:|---:|"]
        lines += [f"| {k} | {r['fraction']:g} | {r['train_examples']} | {r['steps']} "
                  f"| {r['bound']:.1f} ± {r['stderr']:.1f} | {r['eval_examples']} | {r['num_samples']} |"
                  for k, v in curves.items() for r in v]
    lines += ["", "Commands:", ""]
    lines += [f"- `{c}`" for c in dict.fromkeys(r["command"] for r in rows)]
    dates = sorted(r["date"] for r in rows)
    lines += [
        "",
        f"Machine: {os.cpu_count()} CPU cores, {rows[0]['threads']} torch thread(s) per run with two runs "
        f"side by side, torch {torch.__version__}; runs from {dates[0]} to {dates[-1]}.",
        "",
    ]
    path.write_text("\n".join(lines))


def plot_efficiency(rows: list[dict[str, Any]], path: Path) -> None:
    """Test bound against the fraction of the training set, one line per configuration run at
    several fractions (nothing is written when there is none)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = {k: [(r["fraction"], r["bound"]) for r in v] for k, v in _curves(rows).items()}
    if not curves:  # no configuration was run at several fractions yet
        return
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, pts in curves.items():
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
    parser.add_argument("--fractions", type=float, nargs="+", default=[1.0],
                        help="training-set fractions to run (data-efficiency curve: e.g. 0.01 0.1 1)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--run-dir", default=str(REPO / "runs" / "spvae_reproduction"))
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "spvae_reproduction.md"))
    parser.add_argument("--progress", action="store_true")
    parser.add_argument("--set", dest="override", action="append", default=[], metavar="KEY=JSON",
                        help="override a preset field, e.g. --set lr=3e-3 --set num_particles=1")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--variant", default="",
                        help="name of a non-default setting (with --set): its rows sit beside the preset's")
    parser.add_argument("--report-only", action="store_true",
                        help="rewrite the markdown report and the plot from the JSON file, train nothing")
    parser.add_argument("--fresh", action="store_true",
                        help="start the report afresh instead of merging into the existing JSON")
    args = parser.parse_args(argv)
    try:
        args.override = {k: json.loads(v) for k, v in (item.split("=", 1) for item in args.override)}
    except ValueError as e:
        parser.error(f"--set takes KEY=JSON: {e}")
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    command = " ".join(["python scripts/reproduce_spvae.py", *sys.argv[1:]] if argv is None else argv)
    if args.report_only:
        rows = json.loads(out.with_suffix(".json").read_text())["rows"]
        write_markdown(rows, out)
        plot_efficiency(rows, out.with_name("spvae_data_efficiency.png"))
        print(f"[reproduce_spvae] wrote {out} from {len(rows)} rows")
        return 0
    ok = True
    for name in args.configs:
        for fraction in args.fractions:
            print(f"[reproduce_spvae] {name} (fraction {fraction:g}) ...", flush=True)
            row = run_config(name, args, fraction)
            row["command"] = command
            ok &= math.isfinite(row["bound"])
            print(f"[reproduce_spvae] {name} (fraction {fraction:g}): bound {row['bound']:.1f} "
                  f"± {row['stderr']:.1f} (paper {row['paper']:.1f}), {row['params']:,} params, "
                  f"{row['train_time_s']:.0f} s training", flush=True)
            record(row, out, merge=not args.fresh)
    print(f"[reproduce_spvae] wrote {out}")
    return 0 if ok else 1


def record(row: dict[str, Any], out: Path, merge: bool) -> None:
    """Add ``row`` to ``out``'s JSON (replacing the same configuration and fraction), then rewrite the
    markdown report and the data-efficiency plot. Several runs may share ``out``: a file lock
    serialises them."""
    import fcntl

    with open(out.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        path = out.with_suffix(".json")
        rows = json.loads(path.read_text())["rows"] if merge and path.exists() else []
        rows = [r for r in rows if (_label(r), r["fraction"]) != (_label(row), row["fraction"])]
        rows.append(row)
        rows.sort(key=lambda r: (CONFIGS.index(r["config"]), r.get("variant", ""), r["fraction"]))
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps({"rows": rows}, indent=2, default=str))
        os.replace(tmp, path)
        write_markdown(rows, out)
        plot_efficiency(rows, out.with_name("spvae_data_efficiency.png"))


if __name__ == "__main__":
    sys.exit(main())
