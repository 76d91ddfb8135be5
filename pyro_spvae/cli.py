"""Command-line interface: ``pyro-spvae train | evaluate | sample`` (also ``python -m pyro_spvae``).

``train`` writes into ``--out RUN_DIR``: ``config.json``, ``checkpoint.pt`` (latest),
``best.pt`` (best validation), ``metrics.jsonl``, ``curve.png``, ``samples.png`` and
``reconstructions.png``. ``evaluate`` writes ``eval.json`` (importance-sampled test
log-likelihood, bits/dim, PSIS k-hat and ESS summaries). ``sample`` writes an image grid.

Data-parallel: ``torchrun --nproc_per_node=N -m pyro_spvae train ...`` (gloo on CPU, nccl on GPU);
``evaluate`` also shards its examples across processes. Bad input ends with
``pyro-spvae <command>: error: <message>`` and exit status 2, without a traceback.
"""

from __future__ import annotations

import argparse
import inspect
import json
import math
import platform
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from pyro_spvae import __version__

__all__ = ["build_parser", "main"]

EXIT_USAGE = 2
EXIT_FAILURE = 1


class CLIError(Exception):
    """A user error reported as ``error: <message>`` with exit status 2."""


# ---------------------------------------------------------------------------- argument types
def _int_at_least(text: str, minimum: int, expected: str) -> int:
    """``int(text)`` if it is ``>= minimum``; otherwise ``expected {expected}, got {text!r}``."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
    if value < minimum:
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
    return value


def _positive_int(text: str) -> int:
    return _int_at_least(text, 1, "a positive integer")


def _nonnegative_int(text: str) -> int:
    return _int_at_least(text, 0, "a non-negative integer")


def _parse_float(text: str, expected: str) -> float:
    """``float(text)``; otherwise ``expected {expected}, got {text!r}``."""
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None


def _positive_float(text: str) -> float:
    value = _parse_float(text, "a positive number")
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"expected a positive finite number, got {text!r}")
    return value


def _finite_float(text: str) -> float:
    value = _parse_float(text, "a number")
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def _int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated positive integers, got {text!r}"
        ) from None
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"expected comma-separated positive integers, got {text!r}")
    return values


def _group_lr(text: str) -> tuple[str, float]:
    pattern, sep, lr = text.rpartition("=")
    if not sep or not pattern:
        raise argparse.ArgumentTypeError(f"expected PATTERN=LR (e.g. 'sum_logits=1e-2'), got {text!r}")
    return pattern, _positive_float(lr)


# ---------------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    """The ``pyro-spvae`` argument parser (sub-commands ``train``, ``evaluate``, ``sample``)."""
    from pyro_spvae.data import DATASETS, TRANSFORMS
    from pyro_spvae.training.factory import ELBO_NAMES

    parser = argparse.ArgumentParser(
        prog="pyro-spvae", description="Train, evaluate and sample structured VAEs built on Pyro."
    )
    parser.add_argument("--version", action="version", version=f"pyro-spvae {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="{train,evaluate,sample}")
    sub.required = True

    t = sub.add_parser("train", help="train a model (resumable; data-parallel under torchrun)")
    t.add_argument("--preset", default=None, help="named configuration (default: vae-binary)")
    t.add_argument("--model", default=None, help="model family (a key of pyro_spvae.models.MODELS)")
    t.add_argument("--data", choices=DATASETS, default=None, help="dataset")
    t.add_argument("--data-dir", default=None, help="existing MNIST directory (files are downloaded into it)")
    t.add_argument("--transform", choices=sorted(TRANSFORMS), default=None, help="data transform")
    t.add_argument("--likelihood", default=None, help="likelihood head (default: the transform's own)")
    t.add_argument("--z-dim", type=_positive_int, default=None, help="latent dimension")
    t.add_argument("--hidden", type=_int_list, default=None, help="hidden widths, e.g. 200,200")
    t.add_argument("--arch", choices=("dense", "conv"), default=None, help="network architecture")
    t.add_argument("--elbo", choices=ELBO_NAMES, default=None, help="estimator")
    t.add_argument("--num-particles", type=_positive_int, default=None, help="samples per data point")
    t.add_argument("--alpha", type=_finite_float, default=None, help="Renyi alpha (--elbo renyi)")
    t.add_argument("--batch-size", type=_positive_int, default=None, help="global batch size")
    t.add_argument("--lr", type=_positive_float, default=None, help="Adam learning rate")
    t.add_argument(
        "--group-lr",
        type=_group_lr,
        action="append",
        default=None,
        metavar="PATTERN=LR",
        help="learning rate for parameters whose names match the regex (repeatable)",
    )
    t.add_argument(
        "--clip-norm", type=_positive_float, default=None, help="clip gradient norms (ClippedAdam)"
    )
    stop = t.add_mutually_exclusive_group()
    stop.add_argument("--steps", type=_positive_int, default=None, help="number of optimisation steps")
    stop.add_argument("--epochs", type=_positive_int, default=None, help="number of epochs")
    t.add_argument("--eval-every", type=_positive_int, default=None, help="validate every N steps")
    t.add_argument("--patience", type=_nonnegative_int, default=None, help="early-stopping patience (0: off)")
    t.add_argument("--lr-decay", type=_positive_float, default=None,
                   help="multiply the learning rates by this factor in (0, 1) on a validation plateau")
    t.add_argument("--lr-patience", type=_positive_int, default=None,
                   help="validations without improvement before each learning-rate decay (default 5)")
    t.add_argument("--min-rel-improvement", type=float, default=None,
                   help="relative validation gain that counts as an improvement (default 0: any)")
    t.add_argument("--valid-max-examples", type=_positive_int, default=None, help="cap validation examples")
    t.add_argument("--log-every", type=_positive_int, default=None, help="metrics line every N steps")
    t.add_argument("--checkpoint-every", type=_positive_int, default=None, help="checkpoint every N steps")
    t.add_argument("--seed", type=_nonnegative_int, default=None, help="master seed")
    t.add_argument(
        "--shards", type=_positive_int, default=None, help="micro-batches per step (default: #procs)"
    )
    t.add_argument(
        "--on-nonfinite", choices=("raise", "skip"), default=None, help="NaN/Inf loss or gradients"
    )
    t.add_argument("--out", default="runs/demo", help="run directory (default: runs/demo)")
    t.add_argument("--resume", action="store_true", help="continue from RUN_DIR/checkpoint.pt")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    t.add_argument("--backend", choices=("gloo", "nccl"), default=None, help="torch.distributed backend")
    t.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="device of a single-process run")
    t.add_argument(
        "--threads",
        type=_positive_int,
        default=None,
        help="torch intra-op threads per process (default: torch's; use 1 on a busy shared machine)",
    )

    e = sub.add_parser("evaluate", help="importance-sampled log-likelihood of a trained run")
    e.add_argument(
        "--run",
        "--run-dir",
        dest="run",
        required=True,
        help="run directory written by 'train' (under torchrun spell it --run-dir: torchrun claims --run*)",
    )
    e.add_argument("--num-samples", type=_positive_int, default=5000, help="importance samples per example")
    e.add_argument("--split", choices=("train", "valid", "test"), default="test")
    e.add_argument("--max-examples", type=_positive_int, default=None, help="evaluate the first N examples")
    e.add_argument("--batch-size", type=_positive_int, default=100, help="examples per pass")
    e.add_argument("--chunk-size", type=_positive_int, default=500, help="importance samples per pass")
    e.add_argument("--checkpoint", choices=("best", "last"), default="best")
    e.add_argument("--seed", type=_nonnegative_int, default=0, help="seed for data noise and sampling")
    e.add_argument("--out", default=None, help="output JSON (default: RUN/eval.json)")
    e.add_argument("--no-progress", action="store_true")
    e.add_argument("--backend", choices=("gloo", "nccl"), default=None)
    e.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="device of a single-process run")
    e.add_argument("--threads", type=_positive_int, default=None, help="torch intra-op threads per process")

    s = sub.add_parser("sample", help="image grid of samples from a trained run")
    s.add_argument("--run", "--run-dir", dest="run", required=True, help="run directory written by 'train'")
    s.add_argument("--num", type=_positive_int, default=64, help="number of samples")
    s.add_argument("--out", default=None, help="output PNG (default: RUN/samples.png)")
    s.add_argument("--checkpoint", choices=("best", "last"), default="best")
    s.add_argument("--mode", choices=("mean", "sample"), default="mean", help="mean of p(x|z) or a draw")
    s.add_argument("--seed", type=_nonnegative_int, default=0)
    return parser


# ---------------------------------------------------------------------------- building blocks
def _load_data(config: Any, split: str) -> Any:
    from pyro_spvae.data import load_dataset

    root = config.data_dir
    if config.data == "mnist" and root is not None and not Path(root).expanduser().is_dir():
        raise CLIError(
            f"data directory {root} does not exist (create it, or omit --data-dir to use the default)"
        )
    try:
        return load_dataset(config.data, split, config.transform, root=root)
    except FileNotFoundError as e:
        raise CLIError(str(e)) from None


def _build_model(config: Any, dataset: Any) -> tuple[torch.nn.Module, torch.nn.Module]:
    from pyro_spvae.models import MODELS

    if config.model not in MODELS:
        raise CLIError(f"unknown model {config.model!r}; choose one of {', '.join(sorted(MODELS))}")
    builder = MODELS[config.model]
    kwargs = dict(config.model_kwargs)
    try:
        accepted = inspect.signature(builder).parameters
    except (TypeError, ValueError):  # pragma: no cover - builtins
        accepted = {}
    if "likelihood" in accepted and kwargs.get("likelihood") is None:
        kwargs["likelihood"] = dataset.likelihood
    if kwargs.get("likelihood") is None:
        kwargs.pop("likelihood", None)
    for key, value in kwargs.items():
        if isinstance(value, list):
            kwargs[key] = tuple(value)
    has_var_kw = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in accepted.values())
    unknown = [k for k in kwargs if k not in accepted] if accepted and not has_var_kw else []
    if unknown:
        raise CLIError(f"model {config.model!r} does not take option(s) {unknown}")
    try:
        return builder(tuple(dataset.event_shape), **kwargs)
    except (ValueError, TypeError, KeyError) as e:
        raise CLIError(f"cannot build model {config.model!r}: {e}") from None


def _init(backend: str | None, device: str, threads: int | None = None) -> Any:
    """Process group from torchrun's environment (device per local rank) or a single process on
    ``device``; ``threads`` sets torch's intra-op thread count."""
    import dataclasses

    if threads is not None:
        torch.set_num_threads(threads)

    from pyro_spvae.training import init_distributed

    try:
        ctx = init_distributed(backend)
    except (ValueError, RuntimeError) as e:
        raise CLIError(f"cannot initialise torch.distributed: {e}") from None
    if not ctx.enabled and device == "cuda":
        if not torch.cuda.is_available():
            raise CLIError("--device cuda requested but CUDA is not available")
        ctx = dataclasses.replace(ctx, device=torch.device("cuda"))
    return ctx


def _max_plate_nesting(model: Any) -> int:
    """The model's ``max_plate_nesting`` attribute, else 1 (the model contract's default)."""
    value = getattr(model, "max_plate_nesting", None)
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 1 else 1


def _train_overrides(args: argparse.Namespace) -> dict[str, Any]:
    over: dict[str, Any] = {}
    simple = {
        "model": args.model,
        "data": args.data,
        "data_dir": args.data_dir,
        "transform": args.transform,
        "elbo": args.elbo,
        "num_particles": args.num_particles,
        "alpha": args.alpha,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "clip_norm": args.clip_norm,
        "eval_every": args.eval_every,
        "valid_max_examples": args.valid_max_examples,
        "log_every": args.log_every,
        "checkpoint_every": args.checkpoint_every,
        "seed": args.seed,
        "shards": args.shards,
        "on_nonfinite": args.on_nonfinite,
        "lr_decay": args.lr_decay,
        "lr_patience": args.lr_patience,
        "min_rel_improvement": args.min_rel_improvement,
    }
    over.update({k: v for k, v in simple.items() if v is not None})
    if args.steps is not None:
        over["steps"], over["epochs"] = args.steps, None
    if args.epochs is not None:
        over["epochs"], over["steps"] = args.epochs, None
    if args.patience is not None:
        over["patience"] = args.patience or None
    model_kwargs = {
        "z_dim": args.z_dim,
        "hidden": args.hidden,
        "arch": args.arch,
        "likelihood": args.likelihood,
    }
    model_kwargs = {k: v for k, v in model_kwargs.items() if v is not None}
    if model_kwargs:
        over["model_kwargs"] = model_kwargs
    if args.group_lr:
        over["group_lrs"] = dict(args.group_lr)
    return over


def _checkpoint_path(run: Path, which: str) -> Path:
    from pyro_spvae.training.trainer import BEST_NAME, CHECKPOINT_NAME

    best, last = run / BEST_NAME, run / CHECKPOINT_NAME
    path = best if which == "best" and best.exists() else last
    if not path.exists():
        raise CLIError(f"no checkpoint in {run} (expected {BEST_NAME} or {CHECKPOINT_NAME}); train first")
    return path


def _restore(run: Path, which: str, split: str) -> tuple[Any, Any, Any, Any, dict[str, Any]]:
    from pyro_spvae.training import CheckpointError, load_checkpoint
    from pyro_spvae.training.config import TrainConfig

    if not run.is_dir():
        raise CLIError(f"run directory {run} does not exist")
    try:
        config = TrainConfig.load(run / "config.json")
    except (FileNotFoundError, ValueError) as e:
        raise CLIError(str(e)) from None
    data = _load_data(config, split)
    model, guide = _build_model(config, data)
    path = _checkpoint_path(run, which)
    try:
        state = load_checkpoint(path)
        model.load_state_dict(state["model"])
        guide.load_state_dict(state["guide"])
    except (CheckpointError, RuntimeError, KeyError) as e:
        raise CLIError(f"cannot restore {path}: {e}") from None
    _clear_shadowing_params(model, guide)
    return config, data, model, guide, state


def _clear_shadowing_params(*modules: torch.nn.Module) -> None:
    from pyro_spvae.training.trainer import release_foreign_params

    release_foreign_params(*modules)


# ---------------------------------------------------------------------------- commands
def _cmd_train(args: argparse.Namespace) -> int:
    from pyro_spvae.models import MODELS
    from pyro_spvae.training import (
        Trainer,
        make_elbo,
        make_optimizer,
        seed_everything,
        shutdown_distributed,
    )
    from pyro_spvae.training.config import TrainConfig
    from pyro_spvae.training.presets import DEFAULT_PRESET, preset_config
    from pyro_spvae.training.trainer import BEST_NAME, CHECKPOINT_NAME, METRICS_NAME, NonFiniteError

    out = Path(args.out)
    over = _train_overrides(args)
    config_path = out / "config.json"
    try:
        if args.resume and config_path.exists():
            if args.preset is not None:
                raise CLIError("--preset cannot be combined with --resume (the run's config.json is used)")
            base = TrainConfig.load(config_path).to_dict()
            kw = over.pop("model_kwargs", {})
            base["model_kwargs"].update(kw)
            base.update(over)
            config = TrainConfig.from_dict(base)
        else:
            config = preset_config(args.preset or DEFAULT_PRESET, **over)
    except ValueError as e:
        raise CLIError(str(e)) from None
    if config.model not in MODELS:
        raise CLIError(f"unknown model {config.model!r}; choose one of {', '.join(sorted(MODELS))}")
    if not args.resume and (out / CHECKPOINT_NAME).exists():
        raise CLIError(
            f"{out} already holds a training run; pass --resume to continue it or choose another --out"
        )

    ctx = _init(args.backend, args.device, args.threads)
    try:
        seed_everything(config.seed)  # identical initialisation on every rank
        train = _load_data(config, "train")
        valid = _load_data(config, "valid")
        model, guide = _build_model(config, train)
        model.to(ctx.device)
        guide.to(ctx.device)
        try:
            elbo = make_elbo(
                config.elbo,
                config.num_particles,
                alpha=config.alpha,
                max_plate_nesting=_max_plate_nesting(model),
            )
            optim = make_optimizer(config.lr, group_lrs=config.group_lrs, clip_norm=config.clip_norm)
            trainer = Trainer(
                model,
                guide,
                elbo,
                optim,
                train,
                batch_size=config.batch_size,
                valid_data=valid,
                max_steps=config.steps,
                max_epochs=config.epochs,
                eval_every=config.eval_every,
                patience=config.patience,
                lr_decay=config.lr_decay,
                lr_patience=config.lr_patience,
                min_rel_improvement=config.min_rel_improvement,
                valid_max_examples=config.valid_max_examples,
                seed=config.seed,
                out_dir=out,
                checkpoint_every=config.checkpoint_every,
                log_every=config.log_every,
                on_nonfinite=config.on_nonfinite,
                progress=False if args.no_progress else None,
                num_shards=config.shards,
                config=config.to_dict(),
                distributed=ctx,
            )
        except ValueError as e:
            raise CLIError(str(e)) from None
        if ctx.is_main:
            out.mkdir(parents=True, exist_ok=True)
            config.save(config_path)
        if args.resume:
            from pyro_spvae.training import CheckpointError

            try:
                resumed = trainer.resume()
            except (CheckpointError, ValueError) as e:
                raise CLIError(f"cannot resume from {out}: {e}") from None
            if ctx.is_main:
                print(
                    f"resumed from step {trainer.step_count}"
                    if resumed
                    else "no checkpoint found: starting fresh"
                )
        try:
            result = trainer.fit()
        except NonFiniteError as e:
            print(f"pyro-spvae train: training stopped: {e}", file=sys.stderr)
            return EXIT_FAILURE
        except ValueError as e:  # input validation by the model/guide/likelihood on the first batch
            message = str(e).split("\nTrace Shapes:")[0].strip()  # drop Pyro's appended shape table
            raise CLIError(f"training failed: {message}") from None
        if ctx.is_main:
            _finish_training(out, config, model, guide, valid, result, BEST_NAME, METRICS_NAME)
        return 0
    finally:
        shutdown_distributed()


def _finish_training(out, config, model, guide, valid, result, best_name, metrics_name) -> None:
    from pyro_spvae.plots import model_samples, reconstructions, save_image_grid, save_training_curve
    from pyro_spvae.training import load_checkpoint, read_metrics, seed_everything

    if (out / best_name).exists():
        state = load_checkpoint(out / best_name)
        model.load_state_dict(state["model"])
        guide.load_state_dict(state["guide"])
    model.cpu()
    guide.cpu()
    records = read_metrics(out / metrics_name)
    if records:
        save_training_curve(records, out / "curve.png", title=f"{config.model} ({config.elbo})")
    seed_everything(config.seed)
    event_shape = tuple(valid.event_shape)
    save_image_grid(model_samples(model, event_shape, 64), out / "samples.png", title="samples")
    n = min(32, len(valid))
    x = valid.batch(torch.arange(n), torch.Generator().manual_seed(config.seed))
    recon = reconstructions(model, guide, x)
    pairs = torch.stack([x, recon], 1).reshape(2 * n, *event_shape)
    save_image_grid(pairs, out / "reconstructions.png", nrow=8, title="data | reconstruction")
    summary = {
        "run": str(out),
        "steps": result.step,
        "epochs": result.epoch,
        "train_loss": result.train_loss,
        "best_valid_loss": result.best_valid_loss,
        "best_step": result.best_step,
        "stopped_early": result.stopped_early,
        "skipped_steps": result.skipped_steps,
    }
    print(
        json.dumps(
            {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in summary.items()}
        )
    )


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from pyro_spvae.infer.log_likelihood import KHAT_THRESHOLD, log_marginal_likelihood
    from pyro_spvae.infer.spn_bounds import spn_log_likelihood
    from pyro_spvae.training import (
        gather_concat,
        rank_slice,
        seed_everything,
        shutdown_distributed,
    )

    run = Path(args.run)
    ctx = _init(args.backend, args.device, args.threads)
    try:
        config, data, model, guide, state = _restore(run, args.checkpoint, args.split)
        model.to(ctx.device)
        guide.to(ctx.device)
        n = len(data) if args.max_examples is None else min(args.max_examples, len(data))
        x_all = data.batch(torch.arange(n), torch.Generator().manual_seed(args.seed))
        mine = x_all[rank_slice(n, ctx)].to(ctx.device)
        seed_everything(args.seed + ctx.rank)
        fields = torch.zeros(0, 3, dtype=torch.float64, device=ctx.device)
        spn_bound = hasattr(model, "spn_log_value")
        if mine.shape[0] and spn_bound:
            # SPN-of-VAEs (SPVAE): the paper's evaluation, leaf-averaged importance weights with
            # num_samples per leaf pushed through the SPN (Tan & Peharz 2019, Table 1). It has no
            # single weight vector per example, so k-hat and ESS are not defined (NaN).
            with torch.no_grad():
                log_px = torch.cat(
                    [
                        spn_log_likelihood(
                            model, guide, xb, num_samples=args.num_samples, chunk_size=args.chunk_size
                        )
                        for xb in mine.split(args.batch_size)
                    ]
                )
            nan = torch.full_like(log_px, float("nan"))
            fields = torch.stack([log_px, nan, nan], -1).to(torch.float64).to(ctx.device)
        elif mine.shape[0]:
            res = log_marginal_likelihood(
                model,
                guide,
                mine,
                num_samples=args.num_samples,
                chunk_size=args.chunk_size,
                batch_size=args.batch_size,
                progress=not args.no_progress and ctx.is_main and sys.stderr.isatty(),
                max_plate_nesting=_max_plate_nesting(model),
            )
            fields = torch.stack([res.log_px, res.khat, res.ess], -1).to(torch.float64).to(ctx.device)
        fields = gather_concat(fields, ctx).cpu()
        if not ctx.is_main:
            return 0
        log_px, khat, ess = fields.unbind(-1)
        d = int(torch.tensor(data.event_shape).prod())
        mean = float(log_px.mean())
        stderr = float(log_px.std() / math.sqrt(n)) if n > 1 else float("nan")
        finite_khat = khat[torch.isfinite(khat)]
        report = {
            "run": str(run),
            "checkpoint": _checkpoint_path(run, args.checkpoint).name,
            "step": int(state["step"]),
            "split": args.split,
            "num_examples": n,
            "num_samples": args.num_samples,
            "log_likelihood_nats": mean,
            "log_likelihood_stderr": stderr,
            "nll_nats": -mean,
            "bits_per_dim": -mean / (d * math.log(2)),
            "khat": {
                "mean": float(finite_khat.mean()) if finite_khat.numel() else None,
                "median": float(finite_khat.median()) if finite_khat.numel() else None,
                "max": float(finite_khat.max()) if finite_khat.numel() else None,
                "num_nonfinite": int((~torch.isfinite(khat)).sum()),
                "threshold": KHAT_THRESHOLD,
                "fraction_above_threshold": float((khat > KHAT_THRESHOLD).double().mean()),
            },
            "estimator": "spn-leaf-iw" if spn_bound else "iwae",
            "ess": {"mean": float(ess.mean()), "min": float(ess.min()), "median": float(ess.median())},
            "processes": ctx.world_size,
            "torch": torch.__version__,
            "python": platform.python_version(),
        }
        if spn_bound:  # no per-example weight vector: PSIS k-hat and ESS are undefined
            report["khat"] = report["ess"] = None
        out = Path(args.out) if args.out else run / "eval.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2) + "\n")
        print(json.dumps({k: report[k] for k in ("log_likelihood_nats", "nll_nats", "bits_per_dim")}))
        return 0
    finally:
        shutdown_distributed()


def _cmd_sample(args: argparse.Namespace) -> int:
    from pyro_spvae.plots import model_samples, save_image_grid
    from pyro_spvae.training import seed_everything

    run = Path(args.run)
    config, data, model, guide, _ = _restore(run, args.checkpoint, "valid")
    seed_everything(args.seed)
    images = model_samples(model, tuple(data.event_shape), args.num, mean=args.mode == "mean")
    out = Path(args.out) if args.out else run / "samples.png"
    save_image_grid(images, out, title=f"{config.model} samples")
    print(str(out))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``pyro-spvae`` console script.

    :returns: the exit status (0 success, 1 training failure, 2 usage/input error).
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    commands = {"train": _cmd_train, "evaluate": _cmd_evaluate, "sample": _cmd_sample}
    try:
        return commands[args.command](args)
    except CLIError as e:
        print(f"pyro-spvae {args.command}: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"pyro-spvae {args.command}: interrupted", file=sys.stderr)
        return 130
