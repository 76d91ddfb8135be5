"""Data-parallel training throughput: 1 vs 2 processes (``torchrun``, gloo, CPU) on this machine.

Each configuration runs the real CLI job (``pyro-spvae train``, default dense VAE on the embedded
dataset, global batch 128) in fresh processes and reads the training throughput (examples/s,
global) that the trainer records in ``metrics.jsonl``; start-up, validation and the final plots
are excluded, and the first logging window (warm-up) is dropped. The CPU time of rank 0 per step
(also recorded in ``metrics.jsonl``) gives a second, load-independent estimate. Configurations:

- ``1 proc x 1 thread``: the single-process baseline on one core;
- ``2 procs x 1 thread``: ``torchrun --nproc_per_node=2``, each process one core, gradients
  all-reduced every step;
- ``1 proc x 2 threads``: the alternative use of the same two cores (intra-op parallelism);
- the first two again with global batch 1024, where per-example compute outweighs the fixed
  per-step costs that every process repeats (Pyro tracing, the replicated optimiser update).

Scaling efficiency = throughput(2 procs) / (2 x throughput(1 proc x 1 thread)). Repetitions
alternate between configurations; medians are reported. The machine is shared with other work,
so the load average is recorded by the runner.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from pyro_spvae.training import launch_command

REPO = Path(__file__).resolve().parents[1]

CONFIGS = {
    "1 proc x 1 thread": {"nproc": 1, "threads": 1, "batch": 128},
    "2 procs x 1 thread": {"nproc": 2, "threads": 1, "batch": 128},
    "1 proc x 2 threads": {"nproc": 1, "threads": 2, "batch": 128},
    "1 proc x 1 thread, batch 1024": {"nproc": 1, "threads": 1, "batch": 1024},
    "2 procs x 1 thread, batch 1024": {"nproc": 2, "threads": 1, "batch": 1024},
}


def _train(out: Path, nproc: int, threads: int, batch: int, steps: int) -> dict:
    args = [
        "train", "--out", str(out), "--steps", str(steps), "--eval-every", str(steps),
        "--log-every", "20", "--valid-max-examples", "128", "--batch-size", str(batch), "--no-progress",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    cmd = launch_command(args, nproc)
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=1800)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    rates = [r["examples_per_s"] for r in records[1:]]  # drop the warm-up window
    first, last = records[0], records[-1]
    cpu_per_step = (last["cpu_time"] - first["cpu_time"]) / (last["step"] - first["step"])
    return {
        "examples_per_s": statistics.median(rates),
        "windows": len(rates),
        "train_time_s": last["wall_time"],
        "rank0_cpu_s_per_step": cpu_per_step,
    }


def run(quick: bool = False) -> dict:
    """Run the benchmark; returns a JSON-serialisable dict with a markdown ``"summary"``."""
    steps = 100 if quick else 300
    reps = 1 if quick else 2
    samples: dict[str, list[dict]] = {name: [] for name in CONFIGS}
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(reps):
            order = list(CONFIGS) if rep % 2 == 0 else list(reversed(CONFIGS))
            for name in order:
                cfg = CONFIGS[name]
                out = Path(tmp) / f"{name.replace(' ', '_')}_{rep}"
                samples[name].append(
                    _train(out, cfg["nproc"], cfg["threads"], cfg["batch"], steps // (cfg["batch"] // 128))
                )
    rows = []
    for name, runs in samples.items():
        cpu = statistics.median(r["rank0_cpu_s_per_step"] for r in runs)
        rows.append(
            {
                "config": name,
                **CONFIGS[name],
                "examples_per_s": statistics.median(r["examples_per_s"] for r in runs),
                "rank0_cpu_ms_per_step": 1e3 * cpu,
                # Throughput if each process had its cores to itself: batch / CPU time per step.
                "cpu_projected_examples_per_s": CONFIGS[name]["batch"] / cpu,
                "runs": runs,
            }
        )
    base = rows[0]["examples_per_s"]
    efficiency = rows[1]["examples_per_s"] / (2 * base)
    cpu_efficiency = rows[0]["rank0_cpu_ms_per_step"] / (2 * rows[1]["rank0_cpu_ms_per_step"])
    efficiency_1024 = rows[4]["examples_per_s"] / (2 * rows[3]["examples_per_s"])
    cpu_efficiency_1024 = rows[3]["rank0_cpu_ms_per_step"] / (2 * rows[4]["rank0_cpu_ms_per_step"])
    lines = [
        f"Training throughput of the default CLI job (dense VAE, embedded MNIST, global batch 128 unless "
        f"stated, {steps} steps at batch 128 and {steps // 8} at 1024, median of {reps} run(s) per "
        "configuration), examples/s summed over processes; speed-up relative to the first row.",
        "",
        "| configuration | examples/s (wall) | speed-up | rank-0 CPU ms/step | CPU-projected examples/s |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['config']} | {r['examples_per_s']:.0f} | {r['examples_per_s'] / base:.2f}x "
            f"| {r['rank0_cpu_ms_per_step']:.1f} | {r['cpu_projected_examples_per_s']:.0f} |"
        )
    lines += [
        "",
        f"Scaling efficiency of 2 processes, wall clock: {100 * efficiency:.0f}% at batch 128, "
        f"{100 * efficiency_1024:.0f}% at batch 1024 (throughput(2 procs) / (2 x throughput(1 proc x 1 "
        "thread))).",
        f"CPU-time efficiency: {100 * cpu_efficiency:.0f}% at batch 128, {100 * cpu_efficiency_1024:.0f}% at "
        "batch 1024 (CPU per step of 1 process / (2 x CPU per step "
        "of rank 0 of 2 processes)): an upper estimate for two otherwise idle cores. CPU time leaves out "
        "the time a process waits for a core held by other work, and also time blocked waiting for the "
        "peer in the all-reduce; the all-reduce's own work (copies, sums, sockets) is included. On a "
        "loaded shared machine the wall-clock figure mostly measures the load.",
    ]
    return {
        "name": "distributed",
        "quick": quick,
        "steps": steps,
        "reps": reps,
        "rows": rows,
        "scaling_efficiency": efficiency,
        "cpu_time_scaling_efficiency": cpu_efficiency,
        "scaling_efficiency_batch_1024": efficiency_1024,
        "cpu_time_scaling_efficiency_batch_1024": cpu_efficiency_1024,
        "cpu_count": os.cpu_count(),
        "summary": "\n".join(lines),
    }


if __name__ == "__main__":
    result = run(quick="--quick" in sys.argv)
    print(result["summary"])
