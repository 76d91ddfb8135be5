"""The two resumable stages of ``scripts/reproduce_spvae.py``: training and test evaluation of one
configuration in its run directory.

- :func:`train_stage` trains with :class:`pyro_spvae.training.TrainingSession` (a new run from its
  preset, or the exact continuation of ``checkpoint.pt``), in chunks of one validation interval
  when a deadline bounds it, until early stopping or the step cap;
- :func:`evaluate_stage` restores ``best.pt`` (:func:`pyro_spvae.training.restore_run`) and
  evaluates the test images block by block with :func:`pyro_spvae.evaluation.evaluate` (each block
  seeded by its position, so a resumed evaluation gives the numbers of an uninterrupted one),
  saving the per-image bounds in ``test_log_px.pt`` after every block.

``reproduce_state.json`` in the run directory records what is finished, so that a later
invocation skips it.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from pathlib import Path
from typing import Any

import torch

from pyro_spvae.evaluation import evaluate
from pyro_spvae.training import (
    CONFIG_NAME,
    DistributedContext,
    Trainer,
    TrainingSession,
    atomic_write,
    atomic_write_text,
    load_data,
    load_run_config,
    plan_training,
    preset_config,
    remove_run_files,
    restore_run,
)

STATE_NAME = "reproduce_state.json"
EVAL_NAME = "test_log_px.pt"


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


def load_state(run_dir: Path) -> dict[str, Any]:
    path = run_dir / STATE_NAME
    return json.loads(path.read_text()) if path.exists() else {}


def save_state(run_dir: Path, state: dict[str, Any]) -> None:
    atomic_write_text(run_dir / STATE_NAME, json.dumps(state, indent=2) + "\n")


def restart(run_dir: Path) -> None:
    """Delete a run's files (training and evaluation) so that it starts again."""
    if run_dir.is_dir():
        remove_run_files(run_dir)
        for name in (STATE_NAME, EVAL_NAME):
            (run_dir / name).unlink(missing_ok=True)


def fit_within(trainer: Trainer, deadline: float | None) -> bool:
    """Train until early stopping or the trainer's length, or until ``deadline`` (UNIX time) would
    be passed: then in chunks of one validation interval, each ending with a validation and a
    checkpoint (so the run resumes exactly and follows the trajectory of an uninterrupted one). The
    first chunk always runs (every invocation makes progress); no later one starts that the previous
    one says would end after the deadline.

    :returns: whether training is finished (early stopping or the step cap).
    """
    cap = trainer.total_steps
    if deadline is None:
        trainer.fit()
        return True
    chunk, last = trainer.schedule.eval_every, None
    try:
        while trainer.step_count < cap and not trainer.plateau.stopped_early:
            start = time.time()
            if last is not None and start + last > deadline:
                break
            trainer.total_steps = min(cap, (trainer.step_count // chunk + 1) * chunk)
            trainer.fit()
            last = time.time() - start
    finally:
        trainer.total_steps = cap
    return trainer.step_count >= cap or trainer.plateau.stopped_early


def _overrides(args: Any) -> dict[str, Any]:
    over = {**args.override, "data": args.data, "data_dir": args.data_dir, "seed": args.seed,
            "valid_max_examples": args.valid_examples}
    if args.max_steps is not None:
        over["steps"] = args.max_steps
    return over


def train_stage(run_dir: Path, preset: str, args: Any, fraction: float, device: torch.device,
                deadline: float | None) -> dict[str, Any]:
    """Train ``preset`` in ``run_dir`` unless that is finished; returns the training summary."""
    if args.restart:
        restart(run_dir)
    state = load_state(run_dir)
    done = state.get("train", {})
    capped = args.max_steps is not None and done.get("steps", -1) >= args.max_steps
    if done.get("trained") and (done["stopped_early"] or capped):
        return done  # finished: early stopping, or the step cap asked for now
    overrides = _overrides(args)
    resume = (run_dir / CONFIG_NAME).exists()
    first = load_run_config(run_dir) if resume else preset_config(preset, **overrides)
    train = load_data(dataclasses.replace(first, data_dir=args.data_dir), "train")
    if fraction < 1:
        train = Subset(train, fraction, seed=args.seed)
        if not resume and first.batch_size > len(train):
            overrides["batch_size"] = len(train)
    plan = plan_training(run_dir, overrides, preset=None if resume else preset, resume=resume,
                         overwrite=not resume)
    valid = load_data(plan.config, "valid")
    session = TrainingSession(plan, train, valid, progress=args.progress,
                              distributed=DistributedContext(device=device))
    session.start()
    trainer, start = session.trainer, time.time()
    finished = fit_within(trainer, deadline)
    p = trainer.plateau
    summary = {
        "trained": bool(finished), "steps": trainer.step_count, "epochs": trainer.sampler.epoch,
        "best_step": p.best_step, "best_valid_loss": p.best_valid_loss, "stopped_early": p.stopped_early,
        "params": sum(q.numel() for m in (trainer.model, trainer.guide) for q in m.parameters()),
        "train_examples": len(train), "train_time_s": trainer.wall_time,
        "train_elapsed_s": state.get("train", {}).get("train_elapsed_s", 0.0) + time.time() - start,
    }
    save_state(run_dir, {**state, "train": summary})
    return summary


def _test_images(data: Any, n: int, batch: int) -> torch.Tensor:
    """The first ``n`` test images (transform noise from a generator seeded with 1234, drawn batch
    by batch): the same tensor in every session."""
    gen = torch.Generator().manual_seed(1234)
    return torch.cat([data.batch(torch.arange(s, min(n, s + batch)), gen) for s in range(0, n, batch)])


def _summary(done: torch.Tensor, target: int, elapsed: float) -> dict[str, Any]:
    n = done.numel()
    return {"bound": float(done.mean()) if n else None,
            "stderr": float(done.std() / math.sqrt(n)) if n > 1 else (math.nan if n else None),
            "eval_examples": n, "eval_target": target, "complete": n >= target, "eval_time_s": elapsed}


def evaluate_stage(run_dir: Path, args: Any, device: torch.device, deadline: float | None) -> dict[str, Any]:
    """Evaluate ``best.pt`` on the first ``args.eval_examples`` test images with ``args.num_samples``
    samples, continuing from ``test_log_px.pt``; returns the evaluation summary."""
    state = load_state(run_dir)
    train = state["train"]  # the evaluation is of this training state's best.pt
    settings = {"num_samples": args.num_samples, "seed": args.seed, "steps": train["steps"],
                "best_step": train["best_step"]}
    ev = state.get("eval", {})
    path = run_dir / EVAL_NAME
    done = torch.zeros(0, dtype=torch.float64)
    if path.exists() and ev.get("settings") == settings:
        done = torch.load(path, weights_only=True)
    elapsed = ev.get("eval_time_s", 0.0) if ev.get("settings") == settings else 0.0
    available = ev.get("available", math.inf)
    if ev.get("settings") == settings and done.numel() >= min(args.eval_examples, available):
        n = min(args.eval_examples, done.numel())
        return _summary(done[:n], n, elapsed)
    if args.data_dir is not None and load_run_config(run_dir).data_dir != args.data_dir:
        config = dataclasses.replace(load_run_config(run_dir), data_dir=args.data_dir)
        config.save(run_dir / CONFIG_NAME)  # data_dir may change: the data moved with the run
    restored = restore_run(run_dir, "best", "test")
    model, guide = restored.model.to(device).eval(), restored.guide.to(device).eval()
    n = min(args.eval_examples, len(restored.data))
    x = _test_images(restored.data, n, args.eval_batch)
    ctx, last = DistributedContext(device=device), None
    while done.numel() < n:
        start = time.time()
        if deadline is not None and last is not None and start + last > deadline:
            break  # the first block always runs: every invocation makes progress
        s = done.numel()
        block = evaluate(model, guide, x[s: s + args.eval_batch], num_samples=args.num_samples,
                         batch_size=args.eval_batch, chunk_size=args.chunk_size, psis=False,
                         seed=args.seed + s, distributed=ctx)
        done = torch.cat([done, block.log_px.to(torch.float64)])
        atomic_write(path, lambda f, t=done: torch.save(t, f))
        last = time.time() - start
        elapsed += last
        save_state(run_dir, {**state, "eval": {"settings": settings, "done": done.numel(),
                                               "available": len(restored.data), "eval_time_s": elapsed}})
    return _summary(done[:n], n, elapsed)


def progress(run_dir: Path) -> dict[str, Any] | None:
    """How far an unfinished configuration got, read from its run directory (``None`` when it has
    not started): the last logged step and epoch, the best validation bound and its step (from
    ``metrics.jsonl``; the bound is minus the validation loss), whether training ended, and the test
    images evaluated so far with their mean bound."""
    metrics = run_dir / "metrics.jsonl"
    if not metrics.exists():
        return None
    last, best = None, None
    for line in metrics.read_text().splitlines():
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:  # a line being written
            continue
        last = entry
        valid = entry.get("valid_loss")
        if valid is not None and (best is None or valid < best[0]):
            best = (valid, entry["step"])
    if last is None:
        return None
    state = load_state(run_dir) if (run_dir / STATE_NAME).exists() else {}
    out: dict[str, Any] = {"steps": last["step"], "epochs": int(last.get("epoch") or 0),
                           "trained": "train" in state, "eval_examples": 0, "eval_bound": None}
    if best is not None:
        out.update(best_valid_bound=-best[0], best_step=best[1])
    done_path = run_dir / EVAL_NAME
    if out["trained"] and done_path.exists():
        done = torch.load(done_path, weights_only=True)
        out.update(eval_examples=int(done.numel()), eval_bound=float(done.mean()) if done.numel() else None)
    return out

