"""The ``pyro-spvae`` argument parser (:func:`build_parser`): the sub-commands ``train``,
``evaluate`` and ``sample`` and their options, read by :mod:`pyro_spvae.cli` and rendered in the
documentation's command-line reference.

``train`` takes the run configuration (preset, model, data, estimator, optimiser), its length,
validation, early stopping, checkpoints and steps, and the options of the model families, the
Lagrange multiplier, the MI regulariser, the capacity objective and the temperature annealing
(:data:`~pyro_spvae.training.arguments.FAMILY_OPTIONS`); ``evaluate`` and ``sample`` take a run
directory. The values are parsed and checked by the ``type`` parsers of
:mod:`pyro_spvae.training.arguments`.
"""

from __future__ import annotations

import argparse

from pyro_spvae import __version__
from pyro_spvae.training.arguments import (
    FAMILY_OPTIONS,
    finite_float,
    group_lr,
    int_list,
    memory_size,
    nonnegative_int,
    positive_float,
    positive_int,
)

__all__ = ["build_parser"]


def build_parser() -> argparse.ArgumentParser:
    """The ``pyro-spvae`` argument parser (sub-commands ``train``, ``evaluate``, ``sample``)."""
    parser = argparse.ArgumentParser(
        prog="pyro-spvae", description="Train, evaluate and sample structured VAEs built on Pyro."
    )
    parser.add_argument("--version", action="version", version=f"pyro-spvae {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="{train,evaluate,sample}")
    sub.required = True
    helps = {
        "train": "train a model (resumable; data-parallel under torchrun)",
        "evaluate": "importance-sampled log-likelihood of a trained run",
        "sample": "image grid of samples from a trained run",
    }
    _add_train_parser(sub.add_parser("train", help=helps["train"]))
    _add_evaluate_parser(sub.add_parser("evaluate", help=helps["evaluate"]))
    _add_sample_parser(sub.add_parser("sample", help=helps["sample"]))
    return parser


def _add_train_parser(t: argparse.ArgumentParser) -> None:
    """``train``: the run configuration (preset, model, data, estimator, optimiser) ..."""
    from pyro_spvae.data import DATASETS, TRANSFORMS
    from pyro_spvae.training import ELBO_NAMES

    t.add_argument("--preset", default=None, help="named configuration (default: vae-binary)")
    t.add_argument("--model", default=None, help="model family (a key of pyro_spvae.zoo.MODELS)")
    t.add_argument("--data", choices=DATASETS, default=None, help="dataset")
    t.add_argument("--data-dir", default=None, help="existing MNIST directory (files are downloaded into it)")
    t.add_argument("--transform", choices=sorted(TRANSFORMS), default=None, help="data transform")
    t.add_argument("--likelihood", default=None, help="likelihood head (default: the transform's own)")
    t.add_argument("--z-dim", type=positive_int, default=None, help="latent dimension")
    t.add_argument("--hidden", type=int_list, default=None, help="hidden widths, e.g. 200,200")
    t.add_argument("--arch", choices=("dense", "conv"), default=None, help="network architecture")
    t.add_argument("--elbo", choices=ELBO_NAMES, default=None, help="estimator")
    t.add_argument("--num-particles", type=positive_int, default=None, help="samples per data point")
    t.add_argument("--alpha", type=finite_float, default=None, help="Renyi alpha (--elbo renyi)")
    t.add_argument("--batch-size", type=positive_int, default=None, help="global batch size")
    t.add_argument("--lr", type=positive_float, default=None, help="Adam learning rate")
    t.add_argument("--group-lr", type=group_lr, action="append", default=None, metavar="PATTERN=LR",
                   help="learning rate for parameters whose names match the regex (repeatable)")
    t.add_argument("--clip-norm", type=positive_float, default=None,
                   help="clip gradient norms (ClippedAdam)")
    _add_schedule_args(t)
    _add_family_args(t)
    t.add_argument("--out", default="runs/demo", help="run directory (default: runs/demo)")
    again = t.add_mutually_exclusive_group()
    again.add_argument("--resume", action="store_true",
                       help="continue from RUN_DIR/checkpoint.pt with RUN_DIR/config.json (only --lr, "
                       "--group-lr, length, interval and early-stopping options may change)")
    again.add_argument("--overwrite", action="store_true",
                       help="delete the files of an earlier run in RUN_DIR and start again")
    _add_process_args(t)


def _add_schedule_args(t: argparse.ArgumentParser) -> None:
    """... and its length, validation, early stopping, checkpoints and steps."""
    from pyro_spvae.training.settings import NONFINITE_POLICIES

    stop = t.add_mutually_exclusive_group()
    stop.add_argument("--steps", type=positive_int, default=None, help="number of optimisation steps")
    stop.add_argument("--epochs", type=positive_int, default=None, help="number of epochs")
    t.add_argument("--eval-every", type=positive_int, default=None, help="validate every N steps")
    t.add_argument("--patience", type=nonnegative_int, default=None, help="early-stopping patience (0: off)")
    t.add_argument("--lr-decay", type=positive_float, default=None,
                   help="multiply the learning rates by this factor in (0, 1) on a validation plateau")
    t.add_argument("--lr-patience", type=positive_int, default=None,
                   help="validations without improvement before each learning-rate decay (default 5)")
    t.add_argument("--min-rel-improvement", type=float, default=None,
                   help="relative validation gain that counts as an improvement (default 0: any)")
    t.add_argument("--valid-max-examples", type=positive_int, default=None, help="cap validation examples")
    t.add_argument("--log-every", type=positive_int, default=None, help="metrics line every N steps")
    t.add_argument("--checkpoint-every", type=positive_int, default=None, help="checkpoint every N steps")
    t.add_argument("--seed", type=nonnegative_int, default=None, help="master seed")
    t.add_argument("--shards", type=positive_int, default=None,
                   help="micro-batches per step (default: #procs)")
    t.add_argument("--on-nonfinite", choices=NONFINITE_POLICIES, default=None,
                   help="NaN/Inf loss or gradients")


def _add_family_args(t: argparse.ArgumentParser) -> None:
    """... the options of the model families, the Lagrange multiplier (GECO), the MI regulariser,
    the capacity objective and the temperature annealing ..."""
    for flag, kind, text in FAMILY_OPTIONS:
        kind_kw = {"choices": kind} if isinstance(kind, tuple) else {"type": kind}
        t.add_argument(flag, default=None, help=text, **kind_kw)


def _add_process_args(p: argparse.ArgumentParser) -> None:
    """Progress bar, process group and threads (``train`` and ``evaluate``)."""
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--backend", choices=("gloo", "nccl"), default=None, help="torch.distributed backend")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="device of a single-process run")
    p.add_argument("--threads", type=positive_int, default=None,
                   help="torch intra-op threads per process (default: torch's; use 1 on a busy shared "
                   "machine)")
    _add_memory_arg(p)


def _add_memory_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--memory-budget", type=memory_size, default=None, metavar="SIZE",
                   help="refuse settings estimated to need more memory, e.g. 16G or 'off' (default: "
                   "$PYRO_SPVAE_MEMORY_BUDGET, else 80%% of the physical memory)")


def _add_evaluate_parser(e: argparse.ArgumentParser) -> None:
    from pyro_spvae.training.rundir import CHECKPOINTS

    e.add_argument("--run", "--run-dir", dest="run", required=True,
                   help="run directory written by 'train' (under torchrun spell it --run-dir: torchrun "
                   "claims --run*)")
    e.add_argument("--num-samples", type=positive_int, default=5000, help="importance samples per example")
    e.add_argument("--split", choices=("train", "valid", "test"), default="test")
    e.add_argument("--max-examples", type=positive_int, default=None, help="evaluate the first N examples")
    e.add_argument("--batch-size", type=positive_int, default=100, help="examples per pass")
    e.add_argument("--chunk-size", type=positive_int, default=None,
                   help="importance samples per pass (default: from a per-pass memory budget)")
    e.add_argument("--checkpoint", choices=CHECKPOINTS, default="best")
    e.add_argument("--seed", type=nonnegative_int, default=0, help="seed for data noise and sampling")
    e.add_argument("--out", default=None, help="output JSON (default: RUN/eval.json)")
    _add_process_args(e)


def _add_sample_parser(s: argparse.ArgumentParser) -> None:
    from pyro_spvae.training.rundir import CHECKPOINTS

    s.add_argument("--run", "--run-dir", dest="run", required=True, help="run directory written by 'train'")
    s.add_argument("--num", type=positive_int, default=64, help="number of samples")
    s.add_argument("--out", default=None, help="output PNG (default: RUN/samples.png)")
    s.add_argument("--checkpoint", choices=CHECKPOINTS, default="best")
    s.add_argument("--mode", choices=("mean", "sample"), default="mean", help="mean of p(x|z) or a draw")
    s.add_argument("--seed", type=nonnegative_int, default=0)
    s.add_argument("--device", choices=("cpu",), default="cpu", help=argparse.SUPPRESS)
    _add_memory_arg(s)
