"""Reproduce Table 1 of Tan & Peharz (ICML 2019): SPVAE, VAE, Conv-SPVAE and Conv-VAE on MNIST.

Two protocols (see ``docs/spvae.md`` and :mod:`pyro_spvae.training.presets`):

- ``--protocol paper`` (default): the ``paper-*`` presets, the reference code's architectures and
  training protocol (K = 5, learning rates 1e-3/1e-2, validation on all 10k validation images every
  128 steps, patience 11, best checkpoint restored), evaluated with 5000 importance samples (per leaf
  for SPVAEs) on all 10k test images; ``--data svhn|cifar10`` runs the 32x32 columns;
- ``--protocol matched``: the ``{spvae,vae,conv-spvae,conv-vae}-*`` presets, VAE baselines with the
  SPVAE's parameter count (``--fractions`` gives the data-efficiency curve).

Each configuration trains in its own run directory (default ``~/.cache/pyro-spvae/table1/<preset>``,
outside the work tree; ``--run-dir``) with :class:`pyro_spvae.training.TrainingSession` and is
evaluated with :func:`pyro_spvae.evaluation.evaluate`. Both stages resume: training continues from
``checkpoint.pt`` exactly, evaluation from the per-image results saved in ``test_log_px.pt``, and a
finished stage is skipped (``reproduce_state.json`` records them), so a run can be continued in a
later session or on another machine by running the same command again. ``--time-budget`` bounds an
invocation's wall clock (training stops at a validation boundary, evaluation between blocks of test
images); ``--jobs N`` runs the configurations as N concurrent processes (e.g. the eight on one GPU
with ``--device cuda``, see ``scripts/gpu_table1.sh``). Every invocation merges its rows into the
report (``benchmarks/results/spvae_reproduction.md`` and its JSON).

Examples::

    python scripts/reproduce_spvae.py --configs spvae-discrete vae-discrete --jobs 2 --threads 1
    python scripts/reproduce_spvae.py --protocol matched --configs spvae-discrete --fractions 0.01 0.1 1
    python scripts/reproduce_spvae.py --report-only
"""

from __future__ import annotations

import time

_START = time.time()  # --time-budget counts from here, before the heavy imports

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import platformdirs  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import spvae_report as report  # noqa: E402  (a sibling module of this script)
from spvae_stages import Subset, evaluate_stage, progress, train_stage  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
PAPER_TABLE1 = report.PAPER_TABLE1
CONFIGS = report.CONFIGS
#: Default root of the run directories (outside the work tree, so that a new checkout keeps them).
DEFAULT_RUN_ROOT = Path(platformdirs.user_cache_dir("pyro-spvae")) / "table1"

__all__ = ["CONFIGS", "PAPER_TABLE1", "Subset", "main", "preset_name"]


def preset_name(protocol: str, data: str, config: str) -> str:
    """The preset of ``config`` under ``protocol`` for ``--data data``."""
    if protocol == "matched":
        return config
    return f"paper-{config}" + ("" if data in ("mnist", "embedded") else f"-{data}")


def run_dir_for(args: argparse.Namespace, config: str, fraction: float) -> Path:
    stem = preset_name(args.protocol, args.data, config)
    stem += "-embedded" if args.data == "embedded" else ""
    stem += f"-{args.variant}" if args.variant else ""
    stem += "" if fraction == 1 else f"-frac{fraction:g}"
    return Path(args.run_dir).expanduser() / stem


def paper_progress(args: argparse.Namespace) -> dict[str, dict]:
    """How far each MNIST paper-protocol configuration got in its run directory (for the report's
    rows of configurations not finished yet)."""
    paper = argparse.Namespace(**{**vars(args), "protocol": "paper", "data": "mnist", "variant": None})
    found = {config: progress(run_dir_for(paper, config, 1.0)) for config in CONFIGS}
    return {config: prog for config, prog in found.items() if prog is not None}


def run_config(config: str, args: argparse.Namespace, fraction: float, command: str) -> dict:
    """Train (unless finished), evaluate (unless finished) and return the report row."""
    run_dir = run_dir_for(args, config, fraction)
    preset = preset_name(args.protocol, args.data, config)
    device = torch.device(args.device)
    trained = train_stage(run_dir, preset, args, fraction, device, args.train_deadline)
    # a budgeted invocation evaluates the best checkpoint so far even when training goes on later
    evaluate_now = trained["trained"] or args.deadline is not None
    row = evaluate_stage(run_dir, args, device, args.deadline) if evaluate_now else {}
    column = "mnist" if args.data == "embedded" else args.data
    evaluated = row.get("eval_examples", 0)
    return {
        "protocol": args.protocol, "dataset": column, "config": config, "variant": args.variant,
        "fraction": fraction, "preset": preset, "data": args.data, "run_dir": str(run_dir),
        "bound": row.get("bound"), "stderr": row.get("stderr"), "paper": report.PAPER.get((column, config)),
        "final": bool(trained["trained"] and row.get("complete")), **trained,
        "eval_examples": evaluated, "eval_target": row.get("eval_target", args.eval_examples),
        "eval_time_s": row.get("eval_time_s", 0.0), "num_samples": args.num_samples,
        "device": device.type if device.type != "cuda" else torch.cuda.get_device_name(device),
        "threads": torch.get_num_threads(), "torch": torch.__version__, "max_steps": args.max_steps,
        "overrides": args.override,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "command": command,
    }


def _child_argv(argv: list[str], config: str, fraction: float, args: argparse.Namespace) -> list[str]:
    """``argv`` for one configuration: without ``--configs``/``--fractions``/``--jobs``, with the
    parent's deadlines and threads."""
    out, skip = [], False
    for token in argv:
        if token in ("--configs", "--fractions", "--jobs"):
            skip = True
            continue
        if skip and (not token.startswith("--") or token.lstrip("-").replace(".", "").isdigit()):
            continue
        skip = False
        if not token.startswith(("--jobs=", "--configs=", "--fractions=")):
            out.append(token)
    out += ["--configs", config, "--fractions", f"{fraction:g}", "--threads", str(args.threads)]
    for name in ("deadline", "train_deadline"):
        if getattr(args, name) is not None:
            out += [f"--{name.replace('_', '-')}", repr(getattr(args, name))]
    return out


def run_jobs(args: argparse.Namespace, argv: list[str]) -> int:
    """Run every (configuration, fraction) as its own process, ``args.jobs`` at a time; each merges
    its row into the report. Returns the number of failed processes."""
    tasks = [(c, f) for c in args.configs for f in args.fractions]
    running: list[tuple[str, subprocess.Popen]] = []
    failed = 0
    while tasks or running:
        while tasks and len(running) < args.jobs:
            config, fraction = tasks.pop(0)
            cmd = [sys.executable, __file__, *_child_argv(argv, config, fraction, args)]
            running.append((config, subprocess.Popen(cmd)))
        time.sleep(0.2)
        for item in [r for r in running if r[1].poll() is not None]:
            running.remove(item)
            if item[1].returncode:
                failed += 1
                print(f"[reproduce_spvae] {item[0]} failed (exit {item[1].returncode})", flush=True)
    return failed


def parse_args(argv: list[str], start: float) -> argparse.Namespace:
    """The options; ``start`` is when ``--time-budget`` starts counting."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--protocol", choices=report.PROTOCOLS, default="paper")
    p.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=CONFIGS)
    p.add_argument("--data", default="mnist", choices=("mnist", "embedded", "svhn", "cifar10"),
                   help="embedded: the packaged MNIST subset (smoke runs)")
    shared = REPO.parent / "shared" / "data" / "mnist"
    p.add_argument("--data-dir", default=None, help="data directory (MNIST default: ../shared/data/mnist "
                   "when it exists, else the package's MNIST location)")
    p.add_argument("--run-dir", "--out-root", dest="run_dir", default=str(DEFAULT_RUN_ROOT),
                   help="root of the run directories (default: %(default)s)")
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "spvae_reproduction.md"))
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--jobs", type=int, default=1, help="configurations run as concurrent processes")
    p.add_argument("--threads", type=int, default=None, help="torch threads per run (default with --jobs: "
                   "cores / jobs)")
    p.add_argument("--time-budget", type=float, default=None, help="wall-clock seconds for this invocation")
    p.add_argument("--train-share", type=float, default=0.6, help="share of --time-budget for training")
    p.add_argument("--max-steps", type=int, default=None, help="cap training steps")
    p.add_argument("--num-samples", type=int, default=5000, help="importance samples (per leaf)")
    p.add_argument("--chunk-size", type=int, default=None,
                   help="importance samples per pass (default: the evaluator's, from a memory budget)")
    p.add_argument("--eval-examples", type=int, default=10000)
    p.add_argument("--eval-batch", type=int, default=100, help="test images per evaluation block")
    p.add_argument("--valid-examples", type=int, default=None)
    p.add_argument("--fractions", type=float, nargs="+", default=[1.0],
                   help="training-set fractions (data-efficiency curve, e.g. 0.01 0.1 1)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--progress", action="store_true")
    p.add_argument("--set", dest="override", action="append", default=[], metavar="KEY=JSON",
                   help="override a preset field, e.g. --set lr=3e-3 --set num_particles=1")
    p.add_argument("--variant", default="", help="name of a non-default setting (with --set)")
    p.add_argument("--restart", action="store_true", help="delete the runs' files and start them again")
    p.add_argument("--report-only", action="store_true", help="rewrite the report from its JSON file")
    p.add_argument("--fresh", action="store_true", help="start the report afresh instead of merging")
    p.add_argument("--deadline", type=float, default=None, help=argparse.SUPPRESS)
    p.add_argument("--train-deadline", type=float, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    try:
        args.override = {k: json.loads(v) for k, v in (item.split("=", 1) for item in args.override)}
    except ValueError as e:
        p.error(f"--set takes KEY=JSON: {e}")
    if args.protocol == "matched" and args.data in ("svhn", "cifar10"):
        p.error("--protocol matched has MNIST presets only")
    if args.data_dir is None and args.data == "mnist" and shared.exists():
        args.data_dir = str(shared)
    if args.time_budget is not None and args.deadline is None:
        args.deadline = start + args.time_budget
        args.train_deadline = start + args.train_share * args.time_budget
    if args.threads is None and args.jobs > 1:
        args.threads = max(1, (os.cpu_count() or 1) // args.jobs)
    return args


def main(argv: list[str] | None = None) -> int:
    raw = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(raw, _START if argv is None else time.time())  # main(argv): from the call
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if args.report_only:
        rows = report.rewrite(out, paper_progress(args))
        print(f"[reproduce_spvae] wrote {out} from {len(rows)} rows")
        return 0
    if args.jobs > 1 and len(args.configs) * len(args.fractions) > 1:
        failed = run_jobs(args, raw)
        report.rewrite(out, paper_progress(args))
        print(f"[reproduce_spvae] wrote {out}" + (f"; {failed} run(s) failed" if failed else ""))
        return 1 if failed else 0
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    command = " ".join(["python scripts/reproduce_spvae.py", *raw])
    for config in args.configs:
        for fraction in args.fractions:
            print(f"[reproduce_spvae] {config} (fraction {fraction:g}) ...", flush=True)
            row = run_config(config, args, fraction, command)
            bound = row["bound"]
            shown = "not evaluated" if bound is None else f"bound {bound:.1f} ± {row['stderr']:.1f}"
            print(f"[reproduce_spvae] {config} (fraction {fraction:g}): {shown} on {row['eval_examples']} "
                  f"test images (paper {row['paper']}), {row['params']:,} params, step {row['steps']}"
                  f"{' (early stop)' if row['stopped_early'] else ''}", flush=True)
            report.record(row, out, merge=not args.fresh, progress=paper_progress(args))
    print(f"[reproduce_spvae] wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
