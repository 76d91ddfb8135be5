"""Test log-likelihood and clustering accuracy of the DLGMM families against a VAE on MNIST.

Nalisnick, Hertel & Smyth (2016) (see ``docs/mixtures.md``): every model has the same encoder and
decoder widths (784-200-200, ``z_dim = 50``, dense, Bernoulli likelihood), is trained for the same
number of Adam steps (``--steps``, default 600; batch 128, lr 2e-3) on dynamically binarised MNIST
(50k training images), and is evaluated with ``--num-samples`` (5000) importance samples from its
guide on a fixed subset of test images (the first ``--num-test``, default 100, binarised once with a
fixed seed; the per-image values are kept, so the comparison with the VAE is paired), with
:func:`pyro_spvae.infer.log_marginal_likelihood`. The mixture models also get the unsupervised
clustering accuracy (:func:`pyro_spvae.mixtures.clustering_accuracy`, Hungarian matching of the
components to the digits) on all 70k MNIST images (train, validation and test, as VaDE reports).

Models (``K = T = 10`` components):

- ``vae``: :func:`~pyro_spvae.zoo.build_vae`, ``Trace_ELBO``;
- ``finite-a``: finite mixture, learnt global weights, pathwise mixture guide (a), ``Trace_ELBO``;
- ``finite-b``: the same prior with the component index enumerated in the guide (b),
  ``TraceEnum_ELBO``; evaluated as the marginal pair (the same networks with the component summed
  out, a lower-variance importance sampler of the same ``log p(x)``);
- ``finite-c``: guide (a) trained with the paper's per-component estimator (c),
  :class:`~pyro_spvae.infer.MixtureELBO`;
- ``dp-d``: truncated DP (``alpha = 1``), per-data-point sticks with Kumaraswamy posteriors (d)
  and the pathwise mixture for ``z``, ``TraceMeanField_ELBO`` (analytic stick KL);
- ``dp-global-a``: truncated DP with one set of sticks for all data (global Kumaraswamy posterior)
  and the per-data-point mixture posterior of guide (a) for ``z``, ``TraceMeanField_ELBO``.

Each model's result is written to ``benchmarks/results/dlgmm_results_<model>.json`` as soon as it
is done (a rerun with the same settings skips it, so a kill loses one model at most); the summary
``dlgmm_results.json`` and the table ``dlgmm_results.md`` are rewritten after every model.

The defaults took 31 minutes of wall time on one thread of a heavily shared two-core machine
(``train s`` in the table); ``--steps 1500 --num-test 500`` is a closer look at about three times
the cost.

Usage::

    OMP_NUM_THREADS=1 .venv/bin/python scripts/dlgmm_results.py
    .venv/bin/python scripts/dlgmm_results.py --steps 20 --num-test 4 --num-samples 50 --out-dir /tmp/x
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time
from collections.abc import Callable
from pathlib import Path

import pyro
import torch
from pyro.infer import SVI, Trace_ELBO, TraceEnum_ELBO, TraceMeanField_ELBO

from pyro_spvae.data import load_dataset
from pyro_spvae.infer import MixtureELBO, log_marginal_likelihood
from pyro_spvae.mixtures import clustering_accuracy, components_in_use, mixture_weights, responsibilities
from pyro_spvae.training import atomic_write_text
from pyro_spvae.zoo import build_dlgmm, build_dlgmm_dp, build_vae

REPO = Path(__file__).resolve().parents[1]
VADE_ACCURACY = 0.9446  # Jiang et al. (2017), Table 2, MNIST (all 70k images)
NET = {"z_dim": 50, "hidden": (200, 200)}
K = 10

#: name -> (description, builder of (model, guide), ELBO factory)
MODELS: dict[str, tuple[str, Callable, Callable]] = {
    "vae": ("VAE, Gaussian prior and guide", lambda s: build_vae(s, **NET), Trace_ELBO),
    "finite-a": ("finite mixture, guide (a) pathwise mixture, Trace_ELBO",
                 lambda s: build_dlgmm(s, guide="a", num_components=K, **NET), Trace_ELBO),
    "finite-b": ("finite mixture, guide (b) enumerated component, TraceEnum_ELBO",
                 lambda s: build_dlgmm(s, guide="b", num_components=K, **NET),
                 lambda: TraceEnum_ELBO(max_plate_nesting=1)),
    "finite-c": ("finite mixture, guide (a) with the per-component estimator (c), MixtureELBO",
                 lambda s: build_dlgmm(s, guide="c", num_components=K, **NET),
                 lambda: MixtureELBO(max_plate_nesting=1)),
    "dp-d": ("truncated DP, local Kumaraswamy sticks (d) + pathwise mixture, TraceMeanField_ELBO",
             lambda s: build_dlgmm_dp(s, guide="d", num_components=K, **NET), TraceMeanField_ELBO),
    "dp-global-a": ("truncated DP, global Kumaraswamy sticks + mixture guide (a), TraceMeanField_ELBO",
                    lambda s: build_dlgmm_dp(s, guide="d", weights="global", num_components=K, **NET),
                    TraceMeanField_ELBO),
}


def _eval_pair(name: str, model, guide, event_shape):
    """The pair importance sampling uses: for ``finite-b`` the marginal pair with the same weights."""
    if name != "finite-b":
        return model, guide
    m, g = build_dlgmm(event_shape, guide="a", num_components=K, **NET)
    m.load_state_dict(model.state_dict())
    g.load_state_dict(guide.state_dict())
    return m, g


def train(name: str, args, data) -> tuple:
    """Train ``name`` for ``args.steps`` steps; returns ``(model, guide, info)``."""
    _, build, make_elbo = MODELS[name]
    pyro.clear_param_store()
    pyro.set_rng_seed(args.seed)
    model, guide = build(data.event_shape)
    svi = SVI(model, guide, pyro.optim.Adam({"lr": args.lr}), make_elbo())
    gen = torch.Generator().manual_seed(args.seed)
    losses, t0 = [], time.perf_counter()
    for step in range(args.steps):
        x = data.batch(torch.randint(len(data), (args.batch,), generator=gen), gen)
        losses.append(svi.step(x) / args.batch)
        if (step + 1) % 500 == 0:
            recent = losses[-100:]
            print(f"  {name} step {step + 1}: bound {-sum(recent) / len(recent):.2f}", flush=True)
    seconds = time.perf_counter() - t0
    tail = losses[-min(100, len(losses)):]
    params = sum(p.numel() for m in (model, guide) for p in m.parameters())
    return model, guide, {"train_seconds": seconds, "train_bound_last100": -sum(tail) / len(tail),
                          "parameters": params}


def evaluate(name: str, model, guide, args, test, everything) -> dict:
    """5000-sample log-likelihood on the test subset; clustering on all images for mixtures."""
    x = test.batch(torch.arange(args.num_test), torch.Generator().manual_seed(args.seed))
    m, g = _eval_pair(name, model, guide, test.event_shape)
    pyro.set_rng_seed(args.seed)
    t0 = time.perf_counter()
    with torch.no_grad():
        res = log_marginal_likelihood(m, g, x, num_samples=args.num_samples, chunk_size=500,
                                      batch_size=min(100, args.num_test), progress=False, max_plate_nesting=1)
    se = float(res.log_px.std() / math.sqrt(args.num_test)) if args.num_test > 1 else None
    out = {"test_log_px": float(res.log_px.mean()), "test_log_px_se": se,
           "khat_over_0.7": float((res.khat > 0.7).double().mean()), "khat_images": args.num_test,
           "eval_seconds": time.perf_counter() - t0, "eval_images": args.num_test,
           "log_px_per_image": [round(float(v), 4) for v in res.log_px]}
    if name != "vae":
        images, labels = everything
        r = responsibilities(m, g, images, num_samples=16)
        weights = mixture_weights(m, g, images[:5000]) if m.stick_site else mixture_weights(m)
        out |= {"clustering_accuracy": clustering_accuracy(labels, r.argmax(-1)).accuracy,
                "clustering_images": int(labels.numel()),
                "mixture_weights": [round(float(w), 4) for w in weights],
                "components_in_use": components_in_use(weights, 0.01),
                "components_assigned": int(r.argmax(-1).unique().numel())}
    return out


def _settings(args) -> dict:
    return {k: getattr(args, k) for k in ("steps", "batch", "lr", "num_test", "num_samples", "seed",
                                          "clustering_limit")}


def _all_images(args) -> tuple[torch.Tensor, torch.Tensor]:
    """All MNIST images (train, valid, test) binarised once with a fixed seed, and their labels."""
    xs, ys = [], []
    for split in ("train", "valid", "test"):
        ds = load_dataset("mnist", split, "binary-dynamic", root=args.data_dir, download=False)
        n = len(ds) if args.clustering_limit is None else min(len(ds), args.clustering_limit)
        xs.append(ds.batch(torch.arange(n), torch.Generator().manual_seed(args.seed)))
        ys.append(ds.labels[:n])
    return torch.cat(xs), torch.cat(ys)


def _paired(results: dict, name: str) -> tuple[float, float] | None:
    """Mean and standard error of ``log p(x)`` of ``name`` minus the VAE's, image by image."""
    if "vae" not in results or name == "vae":
        return None
    d = torch.tensor(results[name]["log_px_per_image"]) - torch.tensor(results["vae"]["log_px_per_image"])
    return float(d.mean()), float(d.std() / math.sqrt(d.numel())) if d.numel() > 1 else float("nan")


def write_summary(results: dict, args, out_dir: Path) -> None:
    """``dlgmm_results.json`` (without per-image values) and the Markdown table ``dlgmm_results.md``."""
    rows = ["| model | test log p(x) (nats) | vs VAE (paired) | k-hat > 0.7 | train bound | train s "
            "| clustering acc. | components used / assigned |", "|---|---|---|---|---|---|---|---|"]
    summary = {}
    for name, r in results.items():
        summary[name] = {k: v for k, v in r.items() if k != "log_px_per_image"}
        diff = _paired(results, name)
        summary[name]["vs_vae"] = diff
        se = f" ± {r['test_log_px_se']:.2f}" if r["test_log_px_se"] is not None else ""
        acc = f"{100 * r['clustering_accuracy']:.2f}%" if "clustering_accuracy" in r else "-"
        used = f"{r['components_in_use']} / {r['components_assigned']}" if "components_in_use" in r else "-"
        rows.append(f"| {name}: {MODELS[name][0]} | {r['test_log_px']:.2f}{se} | "
                    + (f"{diff[0]:+.2f} ± {diff[1]:.2f}" if diff else "-")
                    + f" | {100 * r['khat_over_0.7']:.0f}% | {r['train_bound_last100']:.2f} "
                    f"| {r['train_seconds']:.0f} | {acc} | {used} |")
    rows.append("| VaDE (Jiang et al. 2017, pretrained, 300 epochs) | - | - | - | - | - "
                f"| {100 * VADE_ACCURACY:.2f}% | - |")
    note = (f"\n{args.steps} Adam steps (batch {args.batch}, lr {args.lr}) per model on dynamically "
            f"binarised MNIST; test log p(x): {args.num_samples} importance samples on the first "
            f"{args.num_test} test images (± standard error over images; 'vs VAE' is the paired "
            "difference on the same images). Clustering: Hungarian matching of argmax responsibilities "
            "on all MNIST images; components used: mixture weight > 0.01 (of K = T = 10); assigned: "
            "components that are the argmax for at least one image. k-hat: share of test images whose "
            "PSIS k-hat exceeds 0.7 (importance weights too heavy-tailed for a reliable estimate; the "
            "value is then still a stochastic lower bound). One torch thread; 'train s' is wall time "
            "on a shared machine.\n")
    meta = {"settings": _settings(args), "torch": torch.__version__, "pyro": pyro.__version__,
            "machine": platform.machine(), "vade_accuracy": VADE_ACCURACY, "models": summary}
    atomic_write_text(out_dir / "dlgmm_results.json", json.dumps(meta, indent=2) + "\n")
    atomic_write_text(out_dir / "dlgmm_results.md", "\n".join(rows) + "\n" + note)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--num-test", type=int, default=100)
    p.add_argument("--num-samples", type=int, default=5000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--clustering-limit", type=int, default=None, help="images per split for clustering")
    p.add_argument("--data-dir", default=str(REPO.parent / "shared" / "data" / "mnist"))
    p.add_argument("--out-dir", type=Path, default=REPO / "benchmarks" / "results")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    train_set = load_dataset("mnist", "train", "binary-dynamic", root=args.data_dir, download=False)
    test = load_dataset("mnist", "test", "binary-dynamic", root=args.data_dir, download=False)
    everything = _all_images(args)
    results = {}
    for name in args.models:
        path = args.out_dir / f"dlgmm_results_{name}.json"
        if path.exists() and json.loads(path.read_text()).get("settings") == _settings(args):
            results[name] = json.loads(path.read_text())["result"]
            print(f"{name}: done before, skipped", flush=True)
        else:
            model, guide, info = train(name, args, train_set)
            results[name] = info | evaluate(name, model, guide, args, test, everything)
            atomic_write_text(path, json.dumps({"settings": _settings(args), "result": results[name]}) + "\n")
            r = results[name]
            print(f"{name}: log p(x) {r['test_log_px']:.2f}, trained {r['train_seconds']:.0f} s, "
                  f"evaluated {r['eval_seconds']:.0f} s", flush=True)
        write_summary(results, args, args.out_dir)
    return results


if __name__ == "__main__":
    main()
