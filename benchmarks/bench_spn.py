"""SPN ``log_prob`` throughput and peak memory: vectorised einsum layers vs a naive per-node reference.

Graph: the SPVAE Poon-Domingos graph over 28x28 images (coarse step 7: 100 regions, 200 partitions;
Tan & Peharz 2019), with ``K = num_sums = num_leaf_components`` in 2..10 and Bernoulli or Normal leaves.
The vectorised network (Einsum-Network style layers, Peharz et al. 2020) is compared with
:func:`pyro_spvae.spn.naive_log_prob` + :func:`pyro_spvae.spn.naive_leaf_log_prob`, a Python loop over
every leaf, product and sum node with the same parameters (the evaluation strategy of the SPVAE
reference code); results are asserted equal before timing.

``run(quick=False) -> dict`` is called by ``benchmarks/run.py``; ``python benchmarks/bench_spn.py
[--quick]`` runs it stand-alone and writes ``benchmarks/results/spn.json``.  Times are CPU (process) times
of single-threaded runs, robust to other load on a shared machine.  Peak memory is the peak of the
tensor storages allocated by torch ops during one call on the benchmark batch (inputs and parameters
excluded; a ``TorchDispatchMode`` tracks each storage until it is freed), for inference
(``no_grad``) and for a training step (forward + backward).
"""

from __future__ import annotations

import json
import statistics
import sys
import time
import weakref
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from pyro_spvae.spn import SPN, naive_leaf_log_prob, naive_log_prob, poon_domingos

ROOT = Path(__file__).resolve().parent


def _make(leaves: str, K: int, batch: int, seed: int = 0) -> tuple[SPN, torch.Tensor]:
    torch.manual_seed(seed)
    spn = SPN(poon_domingos((28, 28), 7), num_sums=K, leaves=leaves)
    if leaves == "bernoulli":
        x = torch.bernoulli(torch.full((batch, 28, 28), 0.3))
    else:
        x = torch.randn(batch, 28, 28)
    return spn, x


def _time(fn, repeats: int) -> float:
    """Median CPU time of ``fn`` (process time: robust to other processes on a shared machine;
    equal to wall time for a single-threaded run on an idle core)."""
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t = time.process_time()
        fn()
        times.append(time.process_time() - t)
    return statistics.median(times)


class _PeakTensorMemory(TorchDispatchMode):
    """Tracks the bytes of tensor storages allocated by torch ops while active, and their peak.

    Storages that exist before entering (inputs, parameters) are excluded; a storage counts until it
    is freed (its Python object is preserved by torch while the storage lives).
    """

    def __init__(self, exclude: list[torch.Tensor]) -> None:
        super().__init__()
        self.live = 0
        self.peak = 0
        self.sizes: dict[int, int] = {}
        self.exclude = {t.untyped_storage().data_ptr() for t in exclude}

    def _free(self, key: int, nbytes: int) -> None:
        self.live -= nbytes
        self.sizes.pop(key, None)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                storage = t.untyped_storage()
                key = storage.data_ptr()
                if key == 0 or key in self.sizes or key in self.exclude:
                    continue  # empty, a view of a tracked storage, or an input
                nbytes = storage.nbytes()
                self.sizes[key] = nbytes
                self.live += nbytes
                self.peak = max(self.peak, self.live)
                weakref.finalize(storage, self._free, key, nbytes)
        return out


def _peak_mib(fn, spn: SPN, x: torch.Tensor) -> float:
    """Peak MiB of tensor memory allocated during one call of ``fn`` (inputs and parameters excluded)."""
    exclude = [x, *spn.parameters(), *spn.buffers()]
    with _PeakTensorMemory(exclude) as tracker:
        fn()
    return tracker.peak / 2**20


def _bench_config(leaves: str, K: int, batch: int, reps_fast: int, reps_naive: int) -> dict:
    spn, x = _make(leaves, K, batch)
    with torch.no_grad():
        fast = spn.log_prob(x)
        slow = naive_log_prob(spn, naive_leaf_log_prob(spn, x))
    err = float((fast - slow).abs().max())
    # float32 log-densities of ~1e3 nats: agree to float32 rounding
    assert torch.allclose(fast, slow, rtol=1e-5, atol=1e-3), f"vectorised != naive (max err {err})"

    def vec():
        with torch.no_grad():
            spn.log_prob(x)

    def train():
        spn.zero_grad(set_to_none=True)
        spn.log_prob(x).mean().backward()

    t_vec = _time(vec, reps_fast)
    t_train = _time(train, reps_fast)

    def naive():
        naive_log_prob(spn, naive_leaf_log_prob(spn, x))

    t_naive = _time(naive, reps_naive)
    return dict(
        leaves=leaves,
        K=K,
        batch=batch,
        num_params=sum(p.numel() for p in spn.parameters()),
        sum_nodes=spn.num_sum_nodes,
        product_nodes=spn.num_product_nodes,
        leaf_nodes=spn.num_leaf_nodes,
        max_abs_diff=err,
        vectorised_examples_per_s=batch / t_vec,
        vectorised_train_examples_per_s=batch / t_train,
        naive_examples_per_s=batch / t_naive,
        speedup=t_naive / t_vec,
        peak_mem_mib_vectorised=_peak_mib(vec, spn, x),
        peak_mem_mib_vectorised_train=_peak_mib(train, spn, x),
        peak_mem_mib_naive=_peak_mib(naive, spn, x),
    )


def run(quick: bool = False) -> dict:
    """Run the benchmark; returns a JSON-serialisable dict with a markdown ``"summary"``.

    Runs single-threaded (both implementations), which is the reproducible setting on a shared CPU.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _run(quick)
    finally:
        torch.set_num_threads(threads)


def _run(quick: bool) -> dict:
    Ks = [2, 10] if quick else [2, 4, 6, 8, 10]
    batches = [128] if quick else [128, 512]  # 128 = SPVAE's training batch size
    reps_fast, reps_naive = (3, 1) if quick else (7, 2)
    rows = [
        _bench_config(leaves, K, batch, reps_fast, reps_naive)
        for batch in batches
        for leaves in ("bernoulli", "normal")
        for K in Ks
    ]
    lines = [
        "SPN log_prob on the 28x28 Poon-Domingos graph (step 7), K = sums per region = leaf components, "
        f"{torch.get_num_threads()} CPU thread(s) (CPU time), torch {torch.__version__}. "
        "ex/s = examples per second; train = forward + backward; naive = Python loop over nodes.",
        "",
        "| batch | leaves | K | sums | products | vectorised ex/s | train ex/s | naive per-node ex/s "
        "| speed-up | peak MiB vec / train / naive |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['batch']} | {r['leaves']} | {r['K']} | {r['sum_nodes']} | {r['product_nodes']} "
            f"| {r['vectorised_examples_per_s']:.0f} | {r['vectorised_train_examples_per_s']:.0f} "
            f"| {r['naive_examples_per_s']:.0f} | {r['speedup']:.0f}x "
            f"| {r['peak_mem_mib_vectorised']:.1f} / {r['peak_mem_mib_vectorised_train']:.1f} "
            f"/ {r['peak_mem_mib_naive']:.1f} |"
        )
    return {
        "name": "spn",
        "quick": quick,
        "device": "cpu",
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "graph": "poon_domingos((28, 28), 7)",
        "rows": rows,
        "summary": "\n".join(lines),
    }


if __name__ == "__main__":
    result = run(quick="--quick" in sys.argv)
    out = ROOT / "results" / "spn.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(result["summary"])
