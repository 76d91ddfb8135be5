"""VHP-VAE against a VAE and an IWAE on dynamically binarised MNIST (issue 14, results).

Three models with the same dense encoder/decoder (784-200-200-z, softplus, Bernoulli likelihood),
the same mini-batches (one seeded generator each) and the same number of Adam steps:

- ``vae``: :func:`~pyro_spvae.zoo.build_vae` with ``Trace_ELBO`` (standard normal prior);
- ``iwae``: the same VAE with :class:`~pyro_spvae.infer.TraceIWAE_ELBO` (``K = 5``);
- ``vhp``: :func:`~pyro_spvae.zoo.build_vhp_vae` (learnt hierarchical prior with ``K`` importance
  samples of ``zeta``, Klushyn et al. 2019) trained with ``Trace_ELBO`` wrapped in
  :class:`~pyro_spvae.infer.GECO` (``rule="vhp"``, constraint ``"nll"`` in nats per pixel, so
  :math:`\\kappa^2` is the reconstruction error per pixel that the constraint asks for).

Each trained model is evaluated on a fixed random subset of test images (one seeded binarisation)
with the 5000-sample importance-sampling estimate of ``log p(x)``
(:func:`~pyro_spvae.infer.log_marginal_likelihood`; for the VHP-VAE with ``--eval-prior-samples``
importance samples of ``zeta`` inside ``log p(z)``, still a lower bound, ``docs/hierarchical_priors.md``
§2), its standard error over images, the reconstruction constraint on the same images
(:math:`\\mathbb E_{q(z|x)}[-\\log p(x \\mid z)] / 784`, 10 draws) and, for the VHP-VAE, the final
multiplier and moving average of the training constraint. Each model's result is written to the
JSON file as soon as it is done (``--models`` reruns a subset and keeps the others), and the
Markdown table is rewritten from the JSON.

Each model is seeded on its own (initial weights, mini-batches, evaluation), so a subset run with
``--models`` gives the same numbers for its models as the full run; ``--merge`` joins the file of
such a run into ``--out``. Usage (recorded run: 11-15 min of training and 1-6 min of evaluation per
model, wall clock on one thread of a loaded machine)::

    OMP_NUM_THREADS=1 .venv/bin/python scripts/vhp_results.py
    # or in two processes, then merged:
    OMP_NUM_THREADS=1 .venv/bin/python scripts/vhp_results.py --models vae iwae
    OMP_NUM_THREADS=1 .venv/bin/python scripts/vhp_results.py --models vhp --out vhp_only.json
    .venv/bin/python scripts/vhp_results.py --merge vhp_only.json
    .venv/bin/python scripts/vhp_results.py --tiny --out /tmp/vhp.json   # a quick check
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path

import pyro
import torch
from pyro.infer import SVI, Trace_ELBO

from pyro_spvae.data import load_dataset
from pyro_spvae.infer import GECO, TraceIWAE_ELBO, log_marginal_likelihood
from pyro_spvae.zoo import build_vae, build_vhp_vae

ROOT = Path(__file__).resolve().parents[1]
SHARED_MNIST = ROOT.parent / "shared" / "data" / "mnist"
MODELS = ("vae", "iwae", "vhp")
LABELS = {"vae": "VAE (ELBO)", "iwae": "IWAE (K = 5)", "vhp": "VHP-VAE (GECO, VHP rule)"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    p.add_argument("--steps", type=int, default=2500, help="Adam steps per model")
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--z-dim", type=int, default=32)
    p.add_argument("--hidden", type=int, nargs="+", default=[200, 200])
    p.add_argument("--prior-hidden", type=int, nargs="+", default=[100, 100])
    p.add_argument("--prior-samples", type=int, default=5, help="K of log p(z) in training")
    p.add_argument("--eval-prior-samples", type=int, default=10, help="K of log p(z) in evaluation")
    p.add_argument("--kappa", type=float, default=0.34, help="kappa (kappa^2 in nats per pixel)")
    p.add_argument("--geco-warmup", type=int, default=200, help="steps before the first lambda update")
    p.add_argument("--geco-every", type=int, default=10, help="steps between lambda updates")
    p.add_argument("--num-test", type=int, default=100, help="test images evaluated")
    p.add_argument("--num-samples", type=int, default=5000, help="importance samples per image")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--data-dir", default=None,
                   help="MNIST directory (default: $PYRO_SPVAE_DATA, else ../shared/data/mnist)")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "vhp_results.json")
    p.add_argument("--tiny", action="store_true", help="a quick check: 200 steps, 20 images, 200 samples")
    p.add_argument("--merge", type=Path, default=None,
                   help="only merge the models of this results file (same configuration) into --out")
    args = p.parse_args(argv)
    if args.tiny:
        args.steps, args.num_test, args.num_samples = 200, 20, 200
    return args


def load_data(args: argparse.Namespace):
    """Training split (dynamic binarisation) and the fixed binarised test subset with its labels."""
    root = args.data_dir or os.environ.get("PYRO_SPVAE_DATA") or (str(SHARED_MNIST) if SHARED_MNIST.is_dir()
                                                                   else None)
    train = load_dataset("mnist", "train", "binary-dynamic", root=root, download=False)
    test = load_dataset("mnist", "test", "binary-dynamic", root=root, download=False)
    gen = torch.Generator().manual_seed(1000 + args.seed)
    idx = torch.randperm(len(test), generator=gen)[: args.num_test].sort().values
    return train, test.batch(idx, gen), test.labels[idx]


def build(name: str, args: argparse.Namespace):
    """``(model, guide, elbo)`` of one model; the seed fixes the initial weights."""
    pyro.set_rng_seed(args.seed)
    net = {"z_dim": args.z_dim, "hidden": tuple(args.hidden), "likelihood": "bernoulli", "arch": "dense"}
    if name == "vhp":
        model, guide = build_vhp_vae((1, 28, 28), prior_hidden=tuple(args.prior_hidden),
                                     num_prior_samples=args.prior_samples, **net)
        return model, guide, GECO(Trace_ELBO(), "nll", kappa=args.kappa, rule="vhp",
                                   warmup=args.geco_warmup, update_every=args.geco_every)
    model, guide = build_vae((1, 28, 28), **net)
    return model, guide, (TraceIWAE_ELBO(num_particles=5) if name == "iwae" else Trace_ELBO())


def train(name: str, model, guide, elbo, data, args: argparse.Namespace) -> dict:
    """``args.steps`` Adam steps on random mini-batches; returns the training record."""
    pyro.clear_param_store()
    svi = SVI(model, guide, pyro.optim.Adam({"lr": args.lr}), elbo)
    gen = torch.Generator().manual_seed(2000 + args.seed)
    t0, losses, trace = time.perf_counter(), [], []
    for step in range(args.steps):
        x = data.batch(torch.randint(len(data), (args.batch_size,), generator=gen), gen)
        with pyro.validation_enabled(False):
            losses.append(svi.step(x) / args.batch_size)
        if isinstance(elbo, GECO) and (step % 100 == 0 or step == args.steps - 1):
            trace.append([step, elbo.multiplier, elbo.constraint_ma])
        if step % 1000 == 0 or step == args.steps - 1:
            tail = sum(losses[-100:]) / len(losses[-100:])
            elapsed = time.perf_counter() - t0
            print(f"[{name}] step {step:6d}  loss {tail:8.2f}  ({elapsed:.0f} s)", flush=True)
    record = {"train_seconds": time.perf_counter() - t0,
              "final_train_loss": sum(losses[-500:]) / len(losses[-500:])}
    if isinstance(elbo, GECO):
        record.update({"final_lambda": elbo.multiplier, "train_constraint_ma": elbo.constraint_ma,
                       "kappa": elbo.kappa, "kappa_sq": elbo.threshold, "lambda_trace": trace})
    return record


@torch.no_grad()
def reconstruction(model, guide, x: torch.Tensor, draws: int = 10) -> torch.Tensor:
    """Per-image :math:`\\mathbb E_{q(z|x)}[-\\log p(x \\mid z)]` in nats per pixel (``draws`` z's)."""
    loc, scale = guide.encode(x)
    z = loc + scale * torch.randn((draws, *loc.shape))
    return -model.decode(z).log_prob(x).mean(0) / x[0].numel()


@torch.no_grad()
def test_elbo(model, guide, x: torch.Tensor, draws: int = 10) -> float:
    """Mean single-sample ELBO per image over ``draws`` draws (nats), in batches of 100 images."""
    elbo = Trace_ELBO(num_particles=draws, vectorize_particles=True, max_plate_nesting=1)
    return -sum(elbo.loss(model, guide, x[i:i + 100]) for i in range(0, len(x), 100)) / len(x)


def prior_sensitivity(model, guide, x: torch.Tensor, args: argparse.Namespace) -> dict:
    """log p(x) on the first 20 images with 1000 samples, for K = eval K and 50 samples of zeta
    (how much a larger K would tighten the VHP-VAE's bound); restores the training K."""
    out = {}
    for k in sorted({args.eval_prior_samples, 50}):
        model.num_prior_samples = k
        pyro.set_rng_seed(4000 + args.seed)
        res = log_marginal_likelihood(model, guide, x[:20], num_samples=1000, progress=False)
        out[str(k)] = float(res.log_px.mean())
    model.num_prior_samples = args.prior_samples
    return {"prior_k_sensitivity_20img_1000s": out}


def evaluate(name: str, model, guide, x: torch.Tensor, args: argparse.Namespace) -> dict:
    """5000-sample log-likelihood, its standard error, the reconstruction constraint and the ELBO."""
    if name == "vhp":
        model.num_prior_samples = args.eval_prior_samples
    pyro.set_rng_seed(3000 + args.seed)
    t0 = time.perf_counter()
    res = log_marginal_likelihood(model, guide, x, num_samples=args.num_samples, progress=False)
    n = len(x)
    recon = reconstruction(model, guide, x)
    elbo = test_elbo(model, guide, x)
    extra = prior_sensitivity(model, guide, x, args) if name == "vhp" else {}
    return extra | {"log_px": float(res.log_px.mean()), "log_px_se": float(res.log_px.std()) / math.sqrt(n),
            "num_images": n, "num_samples": args.num_samples, "max_khat": float(res.khat.max()),
            "frac_khat_gt_0.7": float(res.unreliable.float().mean()),
            "test_constraint": float(recon.mean()), "test_constraint_se": float(recon.std()) / math.sqrt(n),
            "test_elbo": elbo, "eval_seconds": time.perf_counter() - t0,
            "per_image_log_px": [round(v, 4) for v in res.log_px.tolist()]}


def write_table(results: dict, path: Path) -> None:
    """The Markdown table of the JSON's models."""
    cfg = results["config"]
    lines = ["# VHP-VAE against VAE and IWAE on dynamically binarised MNIST", "",
             f"Command: `{cfg['command']}`. Dense 784-{'-'.join(map(str, cfg['hidden']))}-z "
             f"(z = {cfg['z_dim']}), Bernoulli likelihood, Adam lr {cfg['lr']}, batch {cfg['batch_size']}, "
             f"{cfg['steps']} steps per model, one CPU thread. Test log-likelihood: "
             f"{cfg['num_samples']}-sample importance-sampling estimate on {cfg['num_test']} fixed test "
             "images (one seeded binarisation), "
             f"mean ± standard error over images; VHP-VAE prior with K = {cfg['eval_prior_samples']} "
             "samples of zeta in evaluation. Constraint: reconstruction NLL per pixel "
             "E_q[-log p(x|z)] / 784 on the same images (10 draws). Times: wall-clock seconds, which "
             "depend on the machine's load.", "",
             "| model | test log p(x) (nats) | paired diff. vs VAE | test ELBO | constraint (test) | "
             "kappa^2 | final lambda | constraint MA (train) | k-hat > 0.7 (max) | train + eval (s) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    base = results["models"].get("vae")
    for name in MODELS:
        r = results["models"].get(name)
        if r is None:
            continue
        diff = "-"
        if base is not None and name != "vae":
            d = torch.tensor(r["per_image_log_px"]) - torch.tensor(base["per_image_log_px"])
            diff = f"{float(d.mean()):+.2f} ± {float(d.std()) / math.sqrt(len(d)):.2f}"
        kappa_sq, lam, c_ma = (f"{r[k]:.4f}" if k in r else "-"
                               for k in ("kappa_sq", "final_lambda", "train_constraint_ma"))
        lines.append(f"| {LABELS[name]} | {r['log_px']:.2f} ± {r['log_px_se']:.2f} | {diff} | "
                     f"{r['test_elbo']:.2f} | {r['test_constraint']:.4f} | {kappa_sq} | {lam} | {c_ma} | "
                     f"{r['frac_khat_gt_0.7']:.0%} ({r['max_khat']:.2f}) | "
                     f"{r['train_seconds']:.0f} + {r['eval_seconds']:.0f} |")
    path.write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    config = {k: v for k, v in vars(args).items() if k not in ("out", "models", "data_dir", "merge")}
    config["command"] = ("OMP_NUM_THREADS=1 .venv/bin/python scripts/vhp_results.py"
                         + (" --tiny" if args.tiny else ""))
    results = {"config": config, "models": {}}
    if args.out.exists():
        old = json.loads(args.out.read_text())
        if old.get("config") == config:
            results["models"] = old["models"]
    if args.merge is not None:
        other = json.loads(args.merge.read_text())
        if other.get("config") != config:
            raise ValueError(f"{args.merge} was run with another configuration")
        results["models"].update(other["models"])
        args.out.write_text(json.dumps(results, indent=1) + "\n")
        write_table(results, args.out.with_suffix(".md"))
        return 0
    train_data, x_test, _ = load_data(args)
    for name in args.models:
        model, guide, elbo = build(name, args)
        record = train(name, model, guide, elbo, train_data, args)
        record.update(evaluate(name, model, guide, x_test, args))
        print(f"[{name}] test log p(x) {record['log_px']:.2f} ± {record['log_px_se']:.2f}  "
              f"ELBO {record['test_elbo']:.2f}  constraint {record['test_constraint']:.4f}", flush=True)
        results["models"][name] = record
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=1) + "\n")
        write_table(results, args.out.with_suffix(".md"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
