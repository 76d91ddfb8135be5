"""The report of ``scripts/reproduce_spvae.py``: the paper's numbers, the result rows (JSON) and the
markdown tables, both protocols side by side (Tan & Peharz, ICML 2019, Table 1; see ``docs/spvae.md``).

A row is one configuration run under one protocol:

- ``"paper"``: the ``paper-*`` presets (the reference code's architectures and training protocol);
- ``"matched"``: the ``{spvae,vae,conv-spvae,conv-vae}-*`` presets (VAE baselines with the SPVAE's
  parameter count; rows recorded before protocols existed are of this kind).

Rows are merged by ``(protocol, dataset, configuration [variant], fraction)``: a later run of the
same configuration replaces its row, others are kept.
"""

from __future__ import annotations

import fcntl
import json
import os
from pathlib import Path
from typing import Any

PROTOCOLS = ("paper", "matched")
FAMILIES = ("spvae", "vae", "conv-spvae", "conv-vae")
VARIANTS = ("continuous", "discrete")
#: The eight MNIST configurations of Table 1, in the report's order.
CONFIGS = tuple(f"{f}-{v}" for v in VARIANTS for f in FAMILIES)
DATASETS = ("mnist", "svhn", "cifar10")

#: Tan & Peharz 2019, Table 1 (the reference notebooks' 5000-sample IW bound on all test images,
#: nats per image): (dataset, configuration) -> value. SVHN-discrete Conv-VAE: the notebook cell
#: has no output, so there is no verified number.
PAPER: dict[tuple[str, str], float | None] = {
    ("mnist", "spvae-continuous"): 2819.2212, ("mnist", "vae-continuous"): 2598.132,
    ("mnist", "conv-spvae-continuous"): 2702.3499, ("mnist", "conv-vae-continuous"): 2907.411,
    ("mnist", "spvae-discrete"): -1532.25, ("mnist", "vae-discrete"): -2351.1892,
    ("mnist", "conv-spvae-discrete"): -926.5159, ("mnist", "conv-vae-discrete"): -2098.5525,
    ("svhn", "spvae-continuous"): 1936.39, ("cifar10", "spvae-continuous"): 1283.37,
    ("svhn", "spvae-discrete"): -3890.70, ("cifar10", "spvae-discrete"): -5543.07,
    ("svhn", "vae-continuous"): 1441.60, ("cifar10", "vae-continuous"): 895.63,
    ("svhn", "vae-discrete"): -4965.48, ("cifar10", "vae-discrete"): -7199.60,
    ("svhn", "conv-spvae-continuous"): 2101.41, ("cifar10", "conv-spvae-continuous"): 1397.37,
    ("svhn", "conv-spvae-discrete"): -3665.55, ("cifar10", "conv-spvae-discrete"): -4562.25,
    ("svhn", "conv-vae-continuous"): 1896.13, ("cifar10", "conv-vae-continuous"): 1190.64,
    ("svhn", "conv-vae-discrete"): None, ("cifar10", "conv-vae-discrete"): -6751.94,
}
#: The MNIST column (the keys the script's ``--configs`` take).
PAPER_TABLE1: dict[str, float] = {c: v for (d, c), v in PAPER.items() if d == "mnist" and v is not None}

#: The command that runs the four dense MNIST cells of the paper protocol on CPU, resumably.
DENSE_COMMAND = ("python scripts/reproduce_spvae.py --protocol paper --configs spvae-continuous "
                 "vae-continuous spvae-discrete vae-discrete --jobs 2 --threads 1")
#: The same for the four conv cells.
CONV_COMMAND = ("python scripts/reproduce_spvae.py --protocol paper --configs conv-spvae-continuous "
                "conv-vae-continuous conv-spvae-discrete conv-vae-discrete --jobs 2 --threads 1")


def protocol(row: dict[str, Any]) -> str:
    return row.get("protocol", "matched")


def dataset(row: dict[str, Any]) -> str:
    return row.get("dataset", "mnist")


def label(row: dict[str, Any]) -> str:
    """``config`` or ``config [variant]``: a row's name in the report."""
    return f"{row['config']} [{row['variant']}]" if row.get("variant") else row["config"]


def row_key(row: dict[str, Any]) -> tuple[str, str, str, float]:
    return protocol(row), dataset(row), label(row), float(row["fraction"])


def _sort_key(row: dict[str, Any]) -> tuple:
    config = row["config"]
    return (PROTOCOLS.index(protocol(row)), DATASETS.index(dataset(row)),
            CONFIGS.index(config) if config in CONFIGS else len(CONFIGS), row.get("variant", ""),
            float(row["fraction"]))


def curves(rows: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Rows by :func:`label`, sorted by training fraction, for labels run at several fractions."""
    out: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        out.setdefault(label(r), []).append(r)
    return {k: sorted(v, key=lambda r: r["fraction"]) for k, v in out.items() if len(v) > 1}


def _pairs() -> list[tuple[str, str]]:
    """(SPVAE, VAE-baseline) configuration pairs."""
    return [(f"{arch}spvae-{data}", f"{arch}vae-{data}") for data in VARIANTS for arch in ("", "conv-")]


def _verdict(row: dict[str, Any]) -> str:
    """Against the paper: ``yes``, ``match (within 1 s.e.)``, ``**no**``, or ``-`` while the row is
    not final (training or evaluation unfinished) or the paper has no number."""
    paper, bound = row.get("paper"), row.get("bound")
    if paper is None or bound is None or not row.get("final", True):
        return "-"
    if bound >= paper:
        return "yes"
    return "match (within 1 s.e.)" if paper - bound <= row["stderr"] else "**no**"


def _bound(row: dict[str, Any]) -> str:
    if row.get("bound") is None:
        return "not evaluated yet"
    return f"{row['bound']:.1f} ± {row['stderr']:.1f}"


def _steps(row: dict[str, Any]) -> str:
    out = f"{row['steps']} ({row['epochs']})"
    if row.get("stopped_early"):
        return out + " early stop"
    return out + ("" if row.get("trained", True) else " training")


def _wall(row: dict[str, Any]) -> str:
    train = row.get("train_elapsed_s", row.get("train_time_s", 0.0))
    return f"{train:.0f} + {row.get('eval_time_s', 0.0):.0f}"


def _paper_num(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f}"


def _in_progress(config: str, paper: str, prog: dict[str, Any]) -> str:
    """A table row for a configuration under way (see ``spvae_stages.progress``)."""
    best = (f"best validation bound {prog['best_valid_bound']:.1f} (K = 5) at step {prog['best_step']}"
            if prog.get("best_step") is not None else "no validation yet")
    if prog["trained"]:
        bound = (f"evaluating: {prog['eval_bound']:.1f} on the first {prog['eval_examples']} test images"
                 if prog["eval_examples"] else "trained, evaluation not started")
        steps = f"{prog['steps']} ({prog['epochs']}) trained"
    else:
        bound, steps = f"training: {best}", f"{prog['steps']} ({prog['epochs']}) training"
    return (f"| {config} | {bound} | {paper} | - | | {steps} | {prog.get('best_step', '')} "
            f"| {prog['eval_examples']} of 10000 | | | |")


def _paper_section(rows: list[dict[str, Any]],
                   progress: dict[str, dict[str, Any]] | None = None) -> list[str]:
    by_key = {(dataset(r), label(r)): r for r in rows if protocol(r) == "paper" and r["fraction"] == 1}
    lines = [
        "## Paper protocol (Table 1)",
        "",
        "The `paper-*` presets: the reference code's architectures (grid-searched baselines: dense VAE "
        "z=200 300x300, Conv-VAE z=200/100, SPVAE leaves z=25 30x30, Conv-SPVAE leaves conv 4/8), its "
        "Gaussian likelihood with sigmoid mean and precision 1 + g^2 predicted per example and pixel, its "
        "squeezed Binomial(255), one Adam rate for every parameter (1e-3 VAEs, 1e-2 SP models), batch 128, "
        "K = 5 (per leaf for SPVAEs), validation on all 10k validation images every 128 steps, stop after "
        "11 validations without a new best and evaluate the best; 5000 importance samples (per leaf) on "
        "all 10k test images. Deviation: we train on all 50k training images (the reference's input "
        "pipeline only ever sees its first ~17.4k).",
        "",
        "| configuration | bound (ours) | paper Table 1 | ours ≥ paper | params (model+guide) "
        "| steps (epochs) | best step | test images | samples | device | wall time train + eval (s) |",
        "|---|---:|---:|:---:|---:|---:|---:|---:|---:|---|---:|",
    ]
    for config in CONFIGS:
        keyed = [r for (d, lab), r in by_key.items() if d == "mnist" and r["config"] == config]
        if not keyed:
            paper = _paper_num(PAPER[("mnist", config)])
            prog = (progress or {}).get(config)
            lines.append(_in_progress(config, paper, prog) if prog else
                         f"| {config} | not run yet | {paper} | - | | | | | | | |")
        for r in keyed:
            lines.append(
                f"| {label(r)} | {_bound(r)} | {_paper_num(r.get('paper'))} | {_verdict(r)} "
                f"| {r['params']:,} | {_steps(r)} | {r.get('best_step', '')} "
                f"| {r['eval_examples']} of {r.get('eval_target', r['eval_examples'])} | {r['num_samples']} "
                f"| {r.get('device', 'cpu')} | {_wall(r)} |"
            )
    others = [r for (d, _), r in by_key.items() if d != "mnist"]
    lines += ["", "SVHN and CIFAR-10 (greyscale 32x32, `--data svhn|cifar10 --data-dir DIR`; the data sets "
              "are not reachable from this project's machines):", "",
              "| data set | configuration | bound (ours) | paper | ours ≥ paper | test images |",
              "|---|---|---:|---:|:---:|---:|"]
    for ds in DATASETS[1:]:
        for config in CONFIGS:
            done = [r for r in others if dataset(r) == ds and r["config"] == config]
            paper = _paper_num(PAPER[(ds, config)])
            lines += [f"| {ds} | {label(r)} | {_bound(r)} | {paper} | {_verdict(r)} | {r['eval_examples']} |"
                      for r in done] or [f"| {ds} | {config} | not run yet | {paper} | - | |"]
    lines += ["", "Commands (each resumes from its run directory and skips finished stages):", "",
              f"- dense cells, CPU: `{DENSE_COMMAND}`", f"- conv cells, CPU: `{CONV_COMMAND}`",
              "- all eight on one GPU in 10 minutes (device tool, see README): `bash scripts/gpu_table1.sh`",
              "- SVHN: `python scripts/reproduce_spvae.py --protocol paper --data svhn --data-dir DIR "
              "--jobs 2` (CIFAR-10: `--data cifar10`)", ""]
    return lines


def _matched_section(rows: list[dict[str, Any]]) -> list[str]:
    main = {label(r): r for r in rows if protocol(r) == "matched" and r["fraction"] == 1}
    lines = [
        "## Parameter-matched protocol",
        "",
        "The presets `pyro-spvae train --preset NAME`: VAE baselines with the SPVAE's parameter count (a "
        "comparison the paper never made), trained by `scripts/reproduce_spvae.py --protocol matched` for "
        "the step budget in the table (early stopping on the validation images could end a run sooner), "
        "evaluated with the number of samples (per leaf for SPVAEs) and the first test images given.",
        "",
        "| configuration | bound (ours) | paper Table 1 | ours ≥ paper | params (model+guide) "
        "| steps (epochs) | test images | samples | device | wall time train + eval (s) |",
        "|---|---:|---:|:---:|---:|---:|---:|---:|---|---:|",
    ]
    for name, r in main.items():
        lines.append(
            f"| {name} | {_bound(r)} | {_paper_num(r.get('paper'))} | {_verdict(r)} | {r['params']:,} "
            f"| {_steps(r)} | {r['eval_examples']} | {r['num_samples']} | {r.get('device', 'cpu')} "
            f"| {_wall(r)} |"
        )
    pairs = [(a, label(r)) for a, b in _pairs() if a in main for r in main.values() if r["config"] == b]
    pairs = [(a, b) for a, b in pairs if None not in (main[a].get("bound"), main[b].get("bound"))]
    if pairs:
        lines += ["", "SPVAE against the VAE baseline at equal parameter count (same step budget, same test "
                  "images):",
                  "", "| SPVAE | VAE | SPVAE − VAE (nats) | paper SPVAE − VAE |", "|---|---|---:|---:|"]
        lines += [f"| {a} | {b} | {main[a]['bound'] - main[b]['bound']:+.1f} "
                  f"| {main[a]['paper'] - main[b]['paper']:+.1f} |" for a, b in pairs]
    lines.append("")
    return lines


def write_markdown(rows: list[dict[str, Any]], path: Path,
                   progress: dict[str, dict[str, Any]] | None = None) -> None:
    """The report of ``rows``: the paper-protocol table (with ``not run yet`` rows, how far the
    configurations under way got (``progress``: MNIST configuration -> ``spvae_stages.progress``)
    and the commands that run them), the parameter-matched table, the data-efficiency table and the
    commands."""
    lines = ["# SPVAE reproduction (Tan & Peharz, ICML 2019, Table 1)", "",
             "Test-set importance-weighted bound on log p(x), nats per image (higher is better), ± its "
             "standard error over the evaluated test images. \"ours ≥ paper\": yes, or a match when the "
             "shortfall is within one standard error; `-` while a row is not final. Steps: optimisation "
             "steps (completed epochs), \"early stop\" when early stopping ended training, \"training\" "
             "while it is still under way. Run directories live outside the work tree "
             "(`~/.cache/pyro-spvae/table1` by default).", ""]
    lines += _paper_section(rows, progress)
    lines += _matched_section(rows)
    curve = curves([r for r in rows if protocol(r) == "matched"])
    if curve:
        lines += ["Data efficiency (test bound against the fraction of the 50k training images), "
                  "plotted in `spvae_data_efficiency.png`:", "",
                  "| configuration | fraction | training images | steps | bound | test images | samples |",
                  "|---|---:|---:|---:|---:|---:|---:|"]
        lines += [f"| {k} | {r['fraction']:g} | {r['train_examples']} | {r['steps']} "
                  f"| {_bound(r)} | {r['eval_examples']} | {r['num_samples']} |"
                  for k, v in curve.items() for r in v]
        lines.append("")
    if rows:
        lines += ["Commands of the recorded rows:", ""]
        lines += [f"- `{c}`" for c in dict.fromkeys(r["command"] for r in rows)]
        dates = sorted(r["date"] for r in rows)
        lines += ["", f"Runs from {dates[0]} to {dates[-1]}; each row records its device and torch threads "
                  "(the CPU rows ran on this project's 2-core machine, 1 thread per run, two runs side by "
                  "side).", ""]
    path.write_text("\n".join(lines))


def plot_efficiency(rows: list[dict[str, Any]], path: Path) -> None:
    """Test bound against the fraction of the training set, one line per configuration run at
    several fractions (nothing is written when there is none)."""
    data = {k: [(r["fraction"], r["bound"]) for r in v if r.get("bound") is not None]
            for k, v in curves([r for r in rows if protocol(r) == "matched"]).items()}
    if not data:  # no configuration was run at several fractions yet
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, pts in data.items():
        ax.plot([100 * f for f, _ in pts], [b for _, b in pts], marker="o", label=name)
    ax.set_xscale("log")
    ax.set_xlabel("% of the training set")
    ax.set_ylabel("test bound (nats / image)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def read_rows(out: Path) -> list[dict[str, Any]]:
    path = out.with_suffix(".json")
    return json.loads(path.read_text())["rows"] if path.exists() else []


def rewrite(out: Path, progress: dict[str, dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """Rewrite the markdown report and the plot from the JSON file; returns its rows."""
    rows = read_rows(out)
    write_markdown(rows, out, progress)
    plot_efficiency(rows, out.with_name("spvae_data_efficiency.png"))
    return rows


def record(row: dict[str, Any], out: Path, merge: bool = True,
           progress: dict[str, dict[str, Any]] | None = None) -> None:
    """Add ``row`` to ``out``'s JSON (replacing the row with the same :func:`row_key`), then rewrite
    the markdown report and the plot. Concurrent runs share ``out``: a file lock serialises them."""
    with open(out.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        path = out.with_suffix(".json")
        rows = read_rows(out) if merge else []
        rows = [r for r in rows if row_key(r) != row_key(row)]
        rows.append(row)
        rows.sort(key=_sort_key)
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps({"rows": rows}, indent=2, default=str))
        os.replace(tmp, path)
        write_markdown(rows, out, progress)
        plot_efficiency(rows, out.with_name("spvae_data_efficiency.png"))
