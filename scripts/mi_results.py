"""Mutual information of MIVAE codes on MNIST, with and without the MI regulariser, beside the
JointVAE capacity baseline trained in the same budget (issue 15; maths in
``docs/mutual_information.md``).

Four models, the same networks (:func:`pyro_spvae.zoo.build_mivae_relaxed`: ``--z-dim`` continuous
dims (default 10, as JointVAE), a 10-way Gumbel-softmax code, dense encoder and decoder of hidden
widths ``--hidden`` (default 200, 200), Bernoulli likelihood), the
same optimiser (Adam, learning rate 1e-3), batch size and number of steps on dynamically binarised
MNIST (50,000 training images):

- ``mivae``: the plain ELBO (``Trace_ELBO``), temperature annealed from 1 to 0.3
  (:class:`~pyro_spvae.infer.ExponentialSchedule`, 0.3 reached at 60 % of the steps; Serdega &
  Kim 2020 anneal to 0.3);
- ``mivae-mi``: the same plus the MI bound of the code (:class:`~pyro_spvae.infer.MIRegularizedELBO`,
  ``q="guide"``: the guide's ``q(c | x)`` is ``Q``; ``x="mean"``, weight ``--weight`` per data
  point);
- ``mivae-mi-q``: the same with its own ``Q`` network (:func:`~pyro_spvae.infer.code_posterior_for`,
  one hidden layer of 256 units), which the ELBO's KL does not hold flat. The continuous dims are
  not regularised: read through the decoder mean their bound is unbounded and swamps the code's
  (``docs/mutual_information.md`` section 4);
- ``jointvae``: :class:`~pyro_spvae.infer.CapacityELBO` with JointVAE's gamma 30, capacities
  0 -> 5 nats (the discrete one capped at ln 10) and temperature 0.67 (Dupont 2018). JointVAE
  raises the capacities over 25,000 iterations; here the ramp is scaled to half of the step budget
  (``--steps / 2``), so that the capacities are reached as in a full-length run.

Each trained model (eval mode: hard one-hot codes, so the relaxed model is the categorical one) is
measured by

- the MI lower bound (nats) of ``c`` and of each ``z[i]`` with the data, from a fresh
  :class:`~pyro_spvae.nn.code_posterior.CodePosteriorNet` fitted on generated pairs
  (:func:`~pyro_spvae.infer.mutual_information_bound`, ``x="sample"``);
- the unsupervised accuracy of ``argmax q(c | x)`` against the digit labels of the 10,000 test
  images (Hungarian matching, :func:`pyro_spvae.mixtures.clustering_accuracy`);
- the 5000-sample importance-sampled test log-likelihood (:func:`pyro_spvae.evaluation.evaluate`)
  on the first ``--eval-images`` test images (fixed binarisation seed), with its standard error.

Each model's result is merged into the JSON as soon as it is done, and the Markdown table is
rewritten from it, so a killed run loses at most the model in progress (``--models`` reruns some).

Examples (20-40 minutes each on one thread of a loaded 2-core machine)::

    OMP_NUM_THREADS=1 .venv/bin/python scripts/mi_results.py
    OMP_NUM_THREADS=1 .venv/bin/python scripts/mi_results.py --z-dim 4 --hidden 256 \
        --out benchmarks/results/mi_results_z4.json
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time
from pathlib import Path

import pyro
import torch
from pyro.infer import SVI, Trace_ELBO
from pyro.optim import Adam

from pyro_spvae.data import load_dataset
from pyro_spvae.evaluation import evaluate
from pyro_spvae.infer import (
    CapacityELBO,
    ExponentialSchedule,
    LinearSchedule,
    MIRegularizedELBO,
    code_posterior_for,
    mutual_information_bound,
)
from pyro_spvae.mixtures import clustering_accuracy
from pyro_spvae.zoo import build_mivae_relaxed

REPO = Path(__file__).resolve().parents[1]
MODELS = ("mivae", "mivae-mi", "mivae-mi-q", "jointvae")
SITES = ["c"]  # the regularised code


def _objective(name: str, args: argparse.Namespace, model, x_like: torch.Tensor):
    """``(ELBO, temperature schedule)`` of a model name."""
    if name == "jointvae":
        ramp = LinearSchedule(0.0, 5.0, args.steps // 2)
        return CapacityELBO({"z": ramp, "c": ramp}, gamma=30.0, max_plate_nesting=1), (lambda t: 0.67)
    anneal = ExponentialSchedule(1.0, 0.3, math.log(1 / 0.3) / (0.6 * args.steps))
    if name == "mivae":
        return Trace_ELBO(max_plate_nesting=1), anneal
    q = "guide" if name == "mivae-mi" else code_posterior_for(model, x_like, SITES, hidden=(256,))
    return MIRegularizedELBO(Trace_ELBO(max_plate_nesting=1), SITES, q=q, weight=args.weight), anneal


def train(name: str, args: argparse.Namespace, data) -> tuple:
    """Train one model; returns ``(model, guide, seconds, final training losses)``."""
    pyro.clear_param_store()
    pyro.set_rng_seed(args.seed)
    model, guide = build_mivae_relaxed((1, 28, 28), z_dim=args.z_dim, hidden=tuple(args.hidden))
    elbo, temperature = _objective(name, args, model, data.batch(torch.arange(args.batch_size)))
    svi = SVI(model, guide, Adam({"lr": args.lr}), elbo)
    gen = torch.Generator().manual_seed(args.seed)
    start, losses = time.time(), []
    for step in range(args.steps):
        model.set_temperature(temperature(step))  # the guide shares the buffer
        x = data.batch(torch.randint(len(data), (args.batch_size,), generator=gen), gen)
        losses.append(svi.step(x) / args.batch_size)
        if step % 250 == 0 or step == args.steps - 1:
            recent = sum(losses[-100:]) / len(losses[-100:])
            mi = elbo.mutual_information(model, guide, x) if name.startswith("mivae-mi") else {}
            print(f"[{name}] step {step:5d}  tau {float(model.temperature):.3f}  loss/image {recent:8.2f}  "
                  f"{mi}", flush=True)
    model.eval()
    guide.eval()
    return model, guide, time.time() - start, sum(losses[-500:]) / len(losses[-500:])


def measure(model, guide, args: argparse.Namespace, test) -> dict:
    """MI bounds, code accuracy against labels and test log-likelihood of a trained model."""
    gen = torch.Generator().manual_seed(1)
    x_test = test.batch(torch.arange(len(test)), gen)  # one fixed binarisation of the test set
    pyro.set_rng_seed(args.seed + 1)
    sites = ["c"] + [f"z[{i}]" for i in range(model.z_dim)]
    start = time.time()
    mi = mutual_information_bound(model, None, sites, x_test[:args.mi_batch], num_samples=args.mi_samples,
                                  steps=args.mi_steps, lr=1e-3, x="sample", q_kwargs={"hidden": (256,)})
    mi_seconds = time.time() - start
    with torch.no_grad():
        clusters = torch.cat([guide.encode(xb)[2].argmax(-1) for xb in x_test.split(1000)])
    acc = clustering_accuracy(test.labels, clusters)
    used = torch.bincount(clusters, minlength=model.n_categories)
    start = time.time()
    report = evaluate(model, guide, x_test[:args.eval_images], num_samples=args.num_samples, batch_size=10,
                      chunk_size=1000, seed=args.seed)
    return {
        "mi_nats": {k: {"bound": v.bound, "stderr": v.stderr, "entropy": v.entropy} for k, v in mi.items()},
        "mi_seconds": mi_seconds,
        "code_accuracy": acc.accuracy,
        "code_mapping": acc.mapping,
        "codes_used": int((used > 0).sum()),
        "test_log_likelihood": report.log_likelihood_nats,
        "test_log_likelihood_stderr": report.log_likelihood_stderr,
        "eval_images": report.num_examples,
        "test_log_px": [round(float(v), 4) for v in report.log_px],
        "eval_seconds": time.time() - start,
    }


def _config(args: argparse.Namespace) -> dict:
    return {"z_dim": args.z_dim, "hidden": list(args.hidden), "steps": args.steps,
            "batch_size": args.batch_size, "lr": args.lr, "weight": args.weight,
            "regularised_sites": SITES, "num_samples": args.num_samples, "eval_images": args.eval_images,
            "mi_samples": args.mi_samples, "mi_steps": args.mi_steps, "seed": args.seed,
            "data": "MNIST, dynamically binarised, 50k training / 10k test images",
            "torch_threads": torch.get_num_threads(), "platform": platform.platform()}


def _stored(out: Path, args: argparse.Namespace) -> dict:
    """The models already in ``out`` when it was written with the same settings, else ``{}``."""
    if not out.exists():
        return {}
    stored = json.loads(out.read_text())
    ignore = {"platform": None, "torch_threads": None}
    return stored.get("models", {}) if stored.get("config", {}) | ignore == _config(args) | ignore else {}


def _paired(row: dict, base: dict | None) -> str:
    """Mean and standard error of the per-image log-likelihood difference to ``base`` (same images)."""
    if base is None or row is base or len(row["test_log_px"]) != len(base["test_log_px"]):
        return "-"
    d = torch.tensor(row["test_log_px"], dtype=torch.float64) - torch.tensor(base["test_log_px"],
                                                                             dtype=torch.float64)
    return f"{float(d.mean()):+.2f} +- {float(d.std() / math.sqrt(len(d))):.2f}"


def write_markdown(results: dict, path: Path) -> None:
    """The Markdown table of ``results`` (the JSON's content)."""
    cfg = results["config"]
    z_dim, hidden = cfg.get("z_dim", 10), cfg.get("hidden", [200, 200])  # the defaults of older files
    lines = [
        f"# Mutual information of MIVAE codes on MNIST ({z_dim} continuous dims), with the JointVAE baseline",
        "",
        f"MNIST (dynamically binarised), {z_dim} continuous dims and a 10-way code, dense networks of "
        f"hidden widths {tuple(hidden)}, {cfg['steps']} steps of batch {cfg['batch_size']} per model; "
        f"MI in nats (lower bounds, `x=\"sample\"`, H(c) = ln 10 = 2.303, H(z_i) = 1.419); test "
        f"log-likelihood with {cfg['num_samples']} importance samples on the first "
        f"{cfg['eval_images']} test images (+- standard error); accuracy of argmax q(c|x) against "
        "the labels of all 10,000 test images (Hungarian matching); codes used: categories that are "
        "argmax q(c|x) of at least one test image; paired: mean difference of log p(x) to mivae on the "
        "same images (scripts/mi_results.py; docs/mutual_information.md).",
        "",
        f"| model | MI c | MI z[0] | MI z[1] | MI z[2..{z_dim - 1}] (mean) | code accuracy | codes used | "
        "test log p(x) | vs mivae (paired) | training wall s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name in MODELS:
        r = results["models"].get(name)
        if r is None:
            continue
        mi = r["mi_nats"]
        rest = [v["bound"] for k, v in mi.items() if k not in ("c", "z[0]", "z[1]")]
        lines.append(
            f"| {name} | {mi['c']['bound']:.3f} | {mi['z[0]']['bound']:.3f} | {mi['z[1]']['bound']:.3f} | "
            f"{sum(rest) / len(rest):.3f} | {r['code_accuracy']:.3f} | {r['codes_used']} | "
            f"{r['test_log_likelihood']:.2f} +- {r['test_log_likelihood_stderr']:.2f} | "
            f"{_paired(r, results['models'].get('mivae'))} | {r['train_seconds']:.0f} |")
    path.write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    p.add_argument("--z-dim", type=int, default=10)
    p.add_argument("--hidden", type=int, nargs="+", default=[200, 200], help="encoder and decoder widths")
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--weight", type=float, default=10.0, help="MI weight per data point (mivae-mi)")
    p.add_argument("--num-samples", type=int, default=5000, help="importance samples per test image")
    p.add_argument("--eval-images", type=int, default=64)
    p.add_argument("--mi-samples", type=int, default=4000)
    p.add_argument("--mi-steps", type=int, default=300)
    p.add_argument("--mi-batch", type=int, default=250)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--data-dir", default=str(REPO.parent / "shared" / "data" / "mnist"))
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "mi_results.json"))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    train_data = load_dataset("mnist", "train", "binary-dynamic", root=args.data_dir, download=False)
    test = load_dataset("mnist", "test", "binary-dynamic", root=args.data_dir, download=False)
    out = Path(args.out)
    results = {"config": _config(args), "models": _stored(out, args)}
    for name in args.models:
        model, guide, seconds, final_loss = train(name, args, train_data)
        row = {"train_seconds": seconds, "final_train_loss": final_loss, **measure(model, guide, args, test)}
        results["models"] = {**_stored(out, args), name: row}  # what another invocation wrote meanwhile
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(results, indent=1) + "\n")
        write_markdown(results, out.with_suffix(".md"))
        print(json.dumps({name: row}, indent=1), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
