"""``make demo``: an SPVAE and a VAE of the same size, trained and evaluated the same way.

Both come from the parameter-matched presets of the SPVAE reproduction (``spvae-continuous`` and
``vae-continuous`` by default: ~234k parameters each, model + guide; Tan & Peharz 2019, see
``docs/spvae.md``), trained on the embedded MNIST subset (no download) for the same number of
steps with the same batch size, seed and K = 5 importance-weighted training bound, then evaluated
on the same test images with 5000 importance samples (:func:`pyro_spvae.evaluation.evaluate_run`:
per leaf for the SPVAE, the paper's evaluation; per image, with PSIS k-hat, for the VAE).

Writes ``OUT/spvae/`` and ``OUT/vae/`` (the files of ``pyro-spvae train`` plus ``eval.json``),
``OUT/comparison.png`` (training curves, samples, reconstructions side by side) and
``OUT/comparison.json``, and prints one table::

    python scripts/demo.py --out runs/demo
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch

from pyro_spvae import cli
from pyro_spvae.evaluation import EvaluationReport, evaluate_run, write_report
from pyro_spvae.plots import image_grid, model_samples, reconstructions
from pyro_spvae.training import METRICS_NAME, read_metrics, restore_run, seed_everything

#: (label, preset) of the two models, per data variant.
PAIRS = {v: (("SPVAE", f"spvae-{v}"), ("VAE", f"vae-{v}")) for v in ("continuous", "discrete")}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/demo"), help="output directory")
    parser.add_argument("--variant", choices=sorted(PAIRS), default="continuous",
                        help="data variant of the presets (continuous: Gaussian leaves, cheaper)")
    parser.add_argument("--steps", type=int, default=400, help="training steps of each model")
    parser.add_argument("--eval-every", type=int, default=100, help="validate every N steps")
    parser.add_argument("--valid-examples", type=int, default=200, help="validation images")
    parser.add_argument("--test-examples", type=int, default=100, help="test images evaluated")
    parser.add_argument("--num-samples", type=int, default=5000, help="importance samples of the bound")
    parser.add_argument("--jobs", type=int, choices=(1, 2), default=2,
                        help="train and evaluate the two models in parallel processes (2, one thread each) "
                             "or one after the other (1)")
    return parser.parse_args(argv)


def train(run_dir: Path, preset: str, args: argparse.Namespace) -> float:
    """``pyro-spvae train`` of ``preset`` on the embedded data into ``run_dir``; the wall time (s)."""
    argv = ["train", "--preset", preset, "--data", "embedded", "--steps", str(args.steps),
            "--eval-every", str(args.eval_every), "--valid-max-examples", str(args.valid_examples),
            "--patience", "0", "--out", str(run_dir), "--overwrite", "--no-progress"]
    if args.jobs == 2:
        argv += ["--threads", "1"]
    start = time.perf_counter()
    status = cli.main(argv)
    if status != 0:
        raise SystemExit(f"demo: training {preset} failed (exit status {status})")
    return time.perf_counter() - start


def evaluate(run_dir: Path, args: argparse.Namespace) -> tuple[EvaluationReport, float]:
    """The ``args.num_samples``-sample bound on the first ``args.test_examples`` test images of the
    best checkpoint, written to ``run_dir/eval.json``; the report and the wall time (s)."""
    start = time.perf_counter()
    report = evaluate_run(run_dir, num_samples=args.num_samples, max_examples=args.test_examples)
    write_report(report, run_dir / "eval.json")
    return report, time.perf_counter() - start


def row(label: str, preset: str, run_dir: Path, report: EvaluationReport, times: tuple[float, float]) -> dict:
    """One column of the comparison table."""
    run = restore_run(run_dir, "best", "test")
    params = sum(p.numel() for m in (run.model, run.guide) for p in m.parameters())
    khat = report.khat_summary()
    return {"model": label, "preset": preset, "parameters": params, "steps": run.config.steps,
            "best_step": int(run.state["step"]), "train_seconds": round(times[0], 1),
            "log_px_nats": report.log_likelihood_nats, "stderr_nats": report.log_likelihood_stderr,
            "bits_per_dim": report.bits_per_dim, "estimator": report.estimator,
            "khat_above_0.7": None if khat is None else khat["fraction_above_threshold"],
            "eval_seconds": round(times[1], 1), "test_images": report.num_examples,
            "num_samples": report.num_samples}


def table(rows: list[dict]) -> str:
    """The rows side by side, one model per column."""
    lines = [
        ("", [r["model"] for r in rows]),
        ("preset", [r["preset"] for r in rows]),
        ("parameters (model + guide)", [f"{r['parameters']:,}" for r in rows]),
        ("training steps (best)", [f"{r['steps']} ({r['best_step']})" for r in rows]),
        ("training time (s)", [f"{r['train_seconds']:.0f}" for r in rows]),
        (f"test log p(x), nats ({rows[0]['num_samples']} samples)",
         [f"{r['log_px_nats']:.1f} +- {r['stderr_nats']:.1f}" for r in rows]),
        ("bits/dim", [f"{r['bits_per_dim']:.3f}" for r in rows]),
        ("estimator", [r["estimator"] for r in rows]),
        ("PSIS k-hat > 0.7", ["n/a (per-leaf weights)" if r["khat_above_0.7"] is None
                              else f"{r['khat_above_0.7']:.1%} of images" for r in rows]),
        ("evaluation time (s)", [f"{r['eval_seconds']:.0f}" for r in rows]),
        ("CPU time, training + evaluation (s)", [f"{r['cpu_seconds']:.0f}" for r in rows]),
    ]
    width = max(len(name) for name, _ in lines)
    cols = [max(len(cells[i]) for _, cells in lines) for i in range(len(rows))]
    return "\n".join(f"{name:<{width}}  " + "  ".join(f"{c:>{w}}" for c, w in zip(cells, cols))
                     for name, cells in lines)


def comparison_figure(runs: list[tuple[str, Path]], path: Path, seed: int = 0) -> Path:
    """Training curves, 32 samples and 8 test reconstructions of each model in one figure."""
    import matplotlib.pyplot as plt

    fig = plt.figure(figsize=(11, 8), layout="constrained")
    grid = fig.add_gridspec(3, len(runs), height_ratios=[1.0, 1.0, 0.55])
    curve = fig.add_subplot(grid[0, :])
    for i, (label, run_dir) in enumerate(runs):
        records = read_metrics(run_dir / METRICS_NAME)
        for key, style in (("train_loss", "-"), ("valid_loss", "o--")):
            pts = [(r["step"], r[key]) for r in records if r.get(key) is not None]
            if pts:
                curve.plot(*zip(*pts), style, color=f"C{i}", label=f"{label} {key.split('_')[0]}")
        run = restore_run(run_dir, "best", "test")
        seed_everything(seed)
        shape = tuple(run.data.event_shape)
        samples = model_samples(run.model, shape, 32).clamp(0, 1)
        x = run.data.batch(torch.arange(8), torch.Generator().manual_seed(seed))
        pairs = torch.cat([x, reconstructions(run.model, run.guide, x).clamp(0, 1)])
        for r, (images, title) in enumerate(((samples, "samples"), (pairs, "test images | reconstructions"))):
            ax = fig.add_subplot(grid[r + 1, i])
            ax.imshow(image_grid(images, nrow=8).squeeze(-1).numpy(), cmap="gray",
                      vmin=0, vmax=1)
            ax.set_title(f"{label}: {title}")
            ax.axis("off")
    curve.set_xlabel("step")
    curve.set_ylabel("loss per image (nats)")
    curve.grid(alpha=0.3)
    curve.legend(ncol=2)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def run_one(label: str, preset: str, args: argparse.Namespace) -> tuple[dict, str]:
    """Train and evaluate one model (in a worker process with ``--jobs 2``): its table row and the
    evaluation's summary."""
    if args.jobs == 2:
        torch.set_num_threads(1)
    run_dir = args.out / label.lower()
    cpu = time.process_time()
    train_time = train(run_dir, preset, args)
    report, eval_time = evaluate(run_dir, args)
    result = row(label, preset, run_dir, report, (train_time, eval_time))
    result["cpu_seconds"] = round(time.process_time() - cpu, 1)
    return result, report.describe()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    pairs = PAIRS[args.variant]
    print(f"training {' and '.join(f'{label} ({preset})' for label, preset in pairs)} on the embedded MNIST "
          f"subset for {args.steps} steps each, then the {args.num_samples}-sample bound on "
          f"{args.test_examples} test images" + (" (in parallel)" if args.jobs == 2 else ""), flush=True)
    if args.jobs == 2:
        context = multiprocessing.get_context("spawn")  # no torch thread pool inherited through fork
        with ProcessPoolExecutor(max_workers=2, mp_context=context) as pool:
            results = list(pool.map(run_one, *zip(*pairs), [args] * len(pairs)))
    else:
        results = [run_one(label, preset, args) for label, preset in pairs]
    for (label, _), (_, summary) in zip(pairs, results):
        print(f"\n{label}: {summary}")
    rows = [r for r, _ in results]
    runs = [(label, args.out / label.lower()) for label, _ in pairs]
    figure = comparison_figure(runs, args.out / "comparison.png")
    (args.out / "comparison.json").write_text(json.dumps(rows, indent=2) + "\n")
    print()
    print(table(rows))
    print(f"\nwrote {figure} and {args.out / 'comparison.json'} (run files in {runs[0][1]} and {runs[1][1]})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
