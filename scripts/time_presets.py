"""Time the SPVAE reproduction presets on this machine and estimate the cost of the paper protocol.

For each preset (default: the eight ``paper-*`` MNIST presets): the median CPU time of one training step
(:meth:`pyro_spvae.training.Trainer.step`, batch 128, the preset's estimator at K = 5, after warm-up),
of one validation batch (the same bound, no gradients; a full validation pass is 79 batches of 128
over the 10k validation images) and of the 5000-sample evaluation of a few test images
(:func:`pyro_spvae.evaluation.evaluate`, scaled to the 10k test images). With the reference's
best-checkpoint steps (early stopping stops 11 validations = 1,408 steps later; Tan & Peharz 2019,
see ``docs/spvae.md``) it prints the estimated hours to early stopping and for the evaluation.
Images are real MNIST digits from the embedded subset.

    python scripts/time_presets.py --threads 1                 # the eight paper presets
    python scripts/time_presets.py spvae-continuous --steps 20  # any presets
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time

import torch

from pyro_spvae.data import load_dataset
from pyro_spvae.evaluation import evaluate
from pyro_spvae.training import Trainer, build_model, preset_config

#: The reference's best-checkpoint steps (``Restoring ... model.ckpt-N`` in its 5000elbo notebooks).
BEST_STEP = {
    "vae-continuous": 14_080, "vae-discrete": 16_896, "spvae-continuous": 12_288, "spvae-discrete": 18_432,
    "conv-vae-continuous": 23_808, "conv-vae-discrete": 22_144, "conv-spvae-continuous": 20_480,
    "conv-spvae-discrete": 26_880,
}
VALID_BATCHES = math.ceil(10_000 / 128)
PATIENCE_STEPS = 11 * 128


def _median_time(fn, n: int) -> float:
    """Median CPU time of this process over ``n`` calls (with one thread this is the wall time of an
    idle machine, and it is much less disturbed than the wall time by other processes on a shared one)."""
    times = []
    for _ in range(n):
        t0 = time.process_time()
        fn()
        times.append(time.process_time() - t0)
    return statistics.median(times)


def time_preset(name: str, steps: int, eval_images: int, num_samples: int, chunk: int) -> dict:
    cfg = preset_config(name, data="embedded")
    data = load_dataset("embedded", "train", cfg.transform)
    torch.manual_seed(0)
    model, guide = build_model(cfg, data)
    trainer = Trainer.from_config(cfg, model, guide, data)
    x = data.batch(torch.arange(128))
    for _ in range(3):
        trainer.step(x)
    step = _median_time(lambda: trainer.step(x), steps)
    model.eval(), guide.eval()

    def valid_batch():
        with torch.no_grad():
            trainer.valid_elbo.loss(model, guide, x)

    valid_batch()
    valid = _median_time(valid_batch, max(3, steps // 4))
    test = load_dataset("embedded", "test", cfg.transform).batch(torch.arange(eval_images))
    t0 = time.process_time()
    evaluate(model, guide, test, num_samples=num_samples, batch_size=eval_images, chunk_size=chunk,
             psis=False)
    per_image = (time.process_time() - t0) / eval_images * 5000 / num_samples
    key = name.removeprefix("paper-")
    row = {"preset": name, "params": sum(p.numel() for m in (model, guide) for p in m.parameters()),
           "step_ms": 1e3 * step, "valid_pass_s": valid * VALID_BATCHES,
           "eval_10k_h": per_image * 10_000 / 3600}
    if key in BEST_STEP:
        total = BEST_STEP[key] + PATIENCE_STEPS
        row["steps_to_stop"] = total
        row["train_h"] = (total * step + total // 128 * row["valid_pass_s"]) / 3600
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("presets", nargs="*", default=[f"paper-{k}" for k in BEST_STEP])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--steps", type=int, default=20, help="timed training steps (median)")
    p.add_argument("--eval-images", type=int, default=2)
    p.add_argument("--num-samples", type=int, default=5000)
    p.add_argument("--chunk-size", type=int, default=500)
    p.add_argument("--json", default=None, help="also write the rows to this file")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    print("| preset | params | step (ms) | validation pass, 10k (s) | steps to early stop | train (h) "
          "| eval 10k x 5000 (h) |\n|---|---:|---:|---:|---:|---:|---:|")
    for name in args.presets:
        r = time_preset(name, args.steps, args.eval_images, args.num_samples, args.chunk_size)
        rows.append(r)
        print(f"| {name} | {r['params']:,} | {r['step_ms']:.0f} | {r['valid_pass_s']:.1f} "
              f"| {r.get('steps_to_stop', '')} | {r.get('train_h', math.nan):.1f} | {r['eval_10k_h']:.1f} |",
              flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"threads": args.threads, "torch": torch.__version__, "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
