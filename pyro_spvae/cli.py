"""Command-line interface: ``pyro-spvae train | evaluate | sample`` (also ``python -m pyro_spvae``).

``train`` writes into ``--out RUN_DIR``: ``config.json``, ``checkpoint.pt`` (latest),
``best.pt`` (best validation), ``metrics.jsonl``, ``curve.png``, ``samples.png`` and
``reconstructions.png``. ``evaluate`` writes ``eval.json`` (importance-sampled test
log-likelihood, bits/dim, PSIS k-hat and ESS summaries). ``sample`` writes an image grid.

Run directories: ``train --resume`` continues a run with its stored ``config.json`` (only the
learning rates, the length of training, the intervals and early stopping may change; any other
override is refused, naming it); a new ``train`` into a directory holding files of an earlier run
is refused unless ``--overwrite`` asks to delete them (see :mod:`pyro_spvae.training.session`).
Every command checks what it reads and that it can write before it starts working, so a refused
command leaves the run directory as it was; every file is written atomically.

Model families: ``--preset`` names a family's configuration (``dlgmm-a``, ``vhp-vae``, ``mivae-mi``,
...: :mod:`pyro_spvae.training.presets`); the options of the Lagrange multiplier (``--constraint
{mse,nll} --kappa K --geco-rule {geco,vhp} ...``), the MI regulariser (``--mi-sites c,z[0]
--mi-weight W``), the capacity objective (``--elbo capacity --capacity-max ...``) and the temperature
annealing (``--temperature-start ...``) set the run's configuration fields of the same names
(:mod:`pyro_spvae.training.arguments`); their per-step state is logged as ``geco/lambda``, ... and
checkpointed (:mod:`pyro_spvae.training.hooks`).

Data-parallel: ``torchrun --nproc_per_node=N -m pyro_spvae train ...`` (gloo on CPU, nccl on GPU);
``evaluate`` also shards its examples across processes. Bad input (arguments, damaged run files or
data, an unwritable or full disk, settings estimated to exceed ``--memory-budget``) ends with one
line ``pyro-spvae <command>: error: <message>`` and exit status 2, without a traceback.

This module only parses arguments, calls the Python API (:func:`pyro_spvae.training.plan_training`,
:class:`pyro_spvae.training.TrainingSession`, :func:`pyro_spvae.evaluation.evaluate_run`,
:func:`pyro_spvae.training.restore_run`) and prints or writes the results. The parser,
:func:`build_parser`, is built in :mod:`pyro_spvae.training.cli_parser` (next to the option values
of :mod:`pyro_spvae.training.arguments`).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

import torch

from pyro_spvae.training.arguments import FAMILY_OPTIONS, MODEL_OPTIONS, option_dest
from pyro_spvae.training.cli_parser import build_parser

__all__ = ["build_parser", "main"]

EXIT_USAGE = 2
EXIT_FAILURE = 1


class CLIError(Exception):
    """A user error reported as ``error: <message>`` with exit status 2."""


# ---------------------------------------------------------------------------- building blocks
def _init(backend: str | None, device: str, threads: int | None = None) -> Any:
    """Process group from torchrun's environment (device per local rank) or a single process on
    ``device``; ``threads`` sets torch's intra-op thread count."""
    import dataclasses

    from pyro_spvae.training import init_distributed

    if threads is not None:
        torch.set_num_threads(threads)
    try:
        ctx = init_distributed(backend)
    except (ValueError, RuntimeError) as e:
        raise CLIError(f"cannot initialise torch.distributed: {e}") from None
    if not ctx.enabled and device == "cuda":
        if not torch.cuda.is_available():
            raise CLIError("--device cuda requested but CUDA is not available")
        ctx = dataclasses.replace(ctx, device=torch.device("cuda"))
    return ctx


def _train_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The ``TrainConfig`` fields given on the command line."""
    names = ("model", "data", "data_dir", "transform", "elbo", "num_particles", "alpha", "batch_size", "lr",
             "clip_norm", "eval_every", "valid_max_examples", "log_every", "checkpoint_every", "seed",
             "shards", "on_nonfinite", "lr_decay", "lr_patience", "min_rel_improvement",
             *(d for d in map(option_dest, (o[0] for o in FAMILY_OPTIONS)) if d not in MODEL_OPTIONS))
    over: dict[str, Any] = {k: getattr(args, k) for k in names if getattr(args, k) is not None}
    if args.steps is not None:
        over["steps"], over["epochs"] = args.steps, None
    if args.epochs is not None:
        over["epochs"], over["steps"] = args.epochs, None
    if args.patience is not None:
        over["patience"] = args.patience or None
    model_kwargs = {k: getattr(args, k) for k in ("z_dim", "hidden", "arch", "likelihood", *MODEL_OPTIONS)}
    model_kwargs = {k: v for k, v in model_kwargs.items() if v is not None}
    if model_kwargs:
        over["model_kwargs"] = model_kwargs
    if args.group_lr:
        over["group_lrs"] = dict(args.group_lr)
    return over


def _warn(command: str, message: str) -> None:
    print(f"pyro-spvae {command}: warning: {message}", file=sys.stderr)


def _budget(args: argparse.Namespace) -> int | None:
    from pyro_spvae.training.memory import memory_budget

    if args.memory_budget is not None:
        return None if args.memory_budget == 0 else args.memory_budget
    try:
        return memory_budget(args.device)
    except ValueError as e:
        raise CLIError(str(e)) from None


def _check_memory(command: str, estimate: tuple[int, str], args: argparse.Namespace) -> None:
    from pyro_spvae.training.memory import check_memory

    note = check_memory(*estimate, _budget(args))
    if note is not None:
        _warn(command, note)


# ---------------------------------------------------------------------------- commands
def _cmd_train(args: argparse.Namespace) -> int:
    from pyro_spvae.training import load_data, plan_training, shutdown_distributed
    from pyro_spvae.training.memory import estimate_train_bytes

    plan = plan_training(args.out, _train_overrides(args), preset=args.preset, resume=args.resume,
                         overwrite=args.overwrite)
    train, valid = load_data(plan.config, "train"), load_data(plan.config, "valid")
    _check_memory("train", estimate_train_bytes(plan.config, train), args)
    ctx = _init(args.backend, args.device, args.threads)
    try:
        return _train(args, plan, train, valid, ctx)
    finally:
        shutdown_distributed()


def _train(args: argparse.Namespace, plan: Any, train: Any, valid: Any, ctx: Any) -> int:
    """Load (reads only: every refusal happens before :meth:`TrainingSession.start`), then write
    and train."""
    from pyro_spvae.training import NonFiniteError, TrainingSession

    try:
        session = TrainingSession(plan, train, valid, progress=False if args.no_progress else None,
                                  distributed=ctx)
    except ValueError as e:  # RunError and MetricsError included
        raise CLIError(f"cannot resume from {plan.out}: {e}" if plan.resume else str(e)) from None
    session.start()
    if ctx.is_main and plan.resume:
        _report_resume(plan, session.point)
    try:
        result = session.fit()
    except NonFiniteError as e:
        print(f"pyro-spvae train: training stopped: {e}", file=sys.stderr)
        return EXIT_FAILURE
    except ValueError as e:  # input validation by the model/guide/likelihood on the first batch
        message = str(e).split("\nTrace Shapes:")[0].strip()  # drop Pyro's appended shape table
        raise CLIError(f"training failed: {message}") from None
    if ctx.is_main:
        _finish_training(plan, session.trainer, valid, result)
    return 0


def _report_resume(plan: Any, point: Any) -> None:
    for problem in point.problems if point is not None else ():
        _warn("train", f"{problem}; resuming from {point.path.name} instead")
    if plan.changes:
        shown = ", ".join(f"{k} {old!r} -> {new!r}" for k, (old, new) in plan.changes.items())
        print(f"applying on resume: {shown}")
    print(f"resumed from step {point.step}" if point is not None else
          f"no checkpoint in {plan.out}: training from step 0 with its config.json")


def _finish_training(plan: Any, trainer: Any, valid: Any, result: Any) -> None:
    """Plots of the best model (``curve.png``, ``samples.png``, ``reconstructions.png``) and the
    run's summary line on stdout."""
    from pyro_spvae.plots import save_run_figures
    from pyro_spvae.training import (
        BEST_NAME,
        METRICS_NAME,
        CheckpointError,
        load_checkpoint_or_previous,
        read_metrics,
    )

    out, config, model, guide = plan.out, plan.config, trainer.model, trainer.guide
    try:
        state = load_checkpoint_or_previous(out / BEST_NAME).state
        model.load_state_dict(state["model"])
        guide.load_state_dict(state["guide"])
    except CheckpointError:  # no readable best.pt: plot the final state
        pass
    model.eval()  # inference: e.g. the hard one-hot codes of a relaxed MIVAE
    guide.eval()
    records = read_metrics(out / METRICS_NAME) if (out / METRICS_NAME).exists() else []
    save_run_figures(out, model.cpu(), guide.cpu(), valid, seed=config.seed,
                     title=f"{config.model} ({config.elbo})", records=records)
    summary = {"run": str(out), "steps": result.step, "epochs": result.epoch, "train_loss": result.train_loss,
               "best_valid_loss": result.best_valid_loss, "best_step": result.best_step,
               "stopped_early": result.stopped_early, "skipped_steps": result.skipped_steps}
    finite = {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in summary.items()}
    print(json.dumps(finite))


def _output_for(args: argparse.Namespace, default: str) -> Path:
    """The output file of ``evaluate``/``sample`` (``--out``, else ``RUN/default``), after checking
    that the run can be read and the output written (before any long computation)."""
    from pyro_spvae.training import check_output_file, load_run_config

    load_run_config(args.run)
    return check_output_file(Path(args.out) if args.out else Path(args.run) / default)


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from pyro_spvae.evaluation import evaluate_run, write_report
    from pyro_spvae.training import shutdown_distributed

    out = _output_for(args, "eval.json")
    budget = _budget(args)
    ctx = _init(args.backend, args.device, args.threads)
    try:
        report = evaluate_run(
            args.run, which=args.checkpoint, split=args.split, num_samples=args.num_samples,
            batch_size=args.batch_size, chunk_size=args.chunk_size, max_examples=args.max_examples,
            seed=args.seed, progress=not args.no_progress and sys.stderr.isatty(), distributed=ctx,
            memory_budget=budget, notify=partial(_warn, "evaluate") if ctx.is_main else None,
        )
        if ctx.is_main:
            write_report(report, out)
            print(report.describe(), file=sys.stderr)  # the human summary; stdout keeps the JSON alone
            print(json.dumps(report.summary()))
        return 0
    finally:
        shutdown_distributed()


def _cmd_sample(args: argparse.Namespace) -> int:
    from pyro_spvae.plots import model_samples, save_image_grid
    from pyro_spvae.training import restore_run, seed_everything
    from pyro_spvae.training.memory import estimate_sample_bytes

    out = _output_for(args, "samples.png")
    run = restore_run(args.run, args.checkpoint, "valid")
    for problem in run.problems:
        _warn("sample", f"{problem}; using {run.checkpoint.name} instead")
    event_shape = tuple(run.data.event_shape)
    _check_memory("sample", estimate_sample_bytes(event_shape, args.num), args)
    seed_everything(args.seed)
    images = model_samples(run.model, event_shape, args.num, mean=args.mode == "mean")
    save_image_grid(images, out, title=f"{run.config.model} samples")
    print(str(out))
    return 0


def _one_line(error: BaseException) -> str:
    """The message of ``error`` on one line (an ``OSError`` as ``what: reason``)."""
    if isinstance(error, OSError) and error.strerror:
        text = error.strerror
        if error.filename and str(error.filename) not in text:
            text = f"{error.filename}: {text}"
    else:
        text = str(error)
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``pyro-spvae`` console script.

    Every refusal (bad arguments, an unusable run directory, data or checkpoint, a full or
    read-only disk, settings beyond the memory budget) ends with one line
    ``pyro-spvae <command>: error: <message>`` on stderr and exit status 2, without a traceback.

    :returns: the exit status (0 success, 1 training stopped by the NaN/Inf guard, 2 usage/input
        error).
    """
    from pyro_spvae.training import CheckpointError, RunError

    parser = build_parser()
    args = parser.parse_args(argv)
    commands = {"train": _cmd_train, "evaluate": _cmd_evaluate, "sample": _cmd_sample}
    try:
        return commands[args.command](args)
    except (CLIError, RunError, CheckpointError, OSError, MemoryError) as e:
        print(f"pyro-spvae {args.command}: error: {_one_line(e)}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"pyro-spvae {args.command}: interrupted", file=sys.stderr)
        return 130
