"""The ``paper-*`` presets: the architectures and training settings of the SPVAE reference code
(Tan & Peharz 2019, Table 1; see ``docs/spvae.md``), checked through their parameter counts, which
must equal the ``num_weights`` the reference printed for the selected runs."""

from __future__ import annotations

import math

import pytest
import torch

from pyro_spvae.data import DATASETS
from pyro_spvae.infer import SPNLeafIWELBO, TraceIWAE_ELBO
from pyro_spvae.training import PRESETS, preset_config
from pyro_spvae.training.presets import PAPER_ARCHITECTURES, paper_preset_name
from pyro_spvae.zoo import MODELS

#: The reference's parameter counts (model + guide, its ``num_weights``), by (family, data set, variant).
REFERENCE_COUNTS: dict[tuple[str, str, str], int] = {
    ("vae", "mnist", "continuous"): 1_545_168,
    ("vae", "mnist", "discrete"): 1_158_584,
    ("conv-vae", "mnist", "continuous"): 894_962,
    ("conv-vae", "mnist", "discrete"): 568_073,
    ("spvae", "mnist", "continuous"): 413_352,
    ("spvae", "mnist", "discrete"): 310_024,
    ("conv-spvae", "mnist", "continuous"): 1_259_048,
    ("conv-spvae", "mnist", "discrete"): 1_257_864,
    ("vae", "svhn", "continuous"): 1_713_448,
    ("vae", "svhn", "discrete"): 3_108_024,
    ("vae", "cifar10", "continuous"): 1_653_348,
    ("vae", "cifar10", "discrete"): 3_288_224,
    ("spvae", "svhn", "continuous"): 511_080,
    ("spvae", "svhn", "discrete"): 2_080_424,
    ("spvae", "cifar10", "continuous"): 511_080,
    ("spvae", "cifar10", "discrete"): 353_704,
    ("conv-vae", "svhn", "continuous"): 1_219_470,
    ("conv-vae", "svhn", "discrete"): 1_005_169,
    ("conv-vae", "cifar10", "continuous"): 1_219_470,
    ("conv-vae", "cifar10", "discrete"): 1_219_181,
    ("conv-spvae", "svhn", "continuous"): 1_604_648,
    ("conv-spvae", "svhn", "discrete"): 1_603_464,
    ("conv-spvae", "cifar10", "continuous"): 1_028_136,
    ("conv-spvae", "cifar10", "discrete"): 1_026_952,
}
#: The reference's SPN: 1,576 sum weights, ``4 P K_out`` per internal region (P partitions, 2x2
#: products each, K_out = 2 sums, 1 at the root) on the 4x4 grid of cells (28x28 and 32x32 alike).
REFERENCE_SUM_WEIGHTS = 1_576
#: Our SPN factorises each sum's weights over (partition, product) into einsum logits (the
#: reference's 1,576) and mixing logits over the partitions of the regions that have several.
MIXING_LOGITS = 346

EVENT_SHAPES = {"mnist": (1, 28, 28), "svhn": (1, 32, 32), "cifar10": (1, 32, 32)}


def _build(key):
    preset = PRESETS[paper_preset_name(*key)]
    kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in preset["model_kwargs"].items()}
    torch.manual_seed(0)
    return MODELS[preset["model"]](EVENT_SHAPES[key[1]], **kwargs)


def _count(*modules, where=lambda name: True) -> int:
    return sum(p.numel() for m in modules for n, p in m.named_parameters() if where(n))


def test_every_reference_run_has_a_preset():
    assert set(PAPER_ARCHITECTURES) == set(REFERENCE_COUNTS)
    assert all(paper_preset_name(*k) in PRESETS for k in REFERENCE_COUNTS)
    assert paper_preset_name("vae", "mnist", "discrete") == "paper-vae-discrete"
    assert paper_preset_name("spvae", "svhn", "continuous") == "paper-spvae-continuous-svhn"
    # today's parameter-matched presets keep their names
    for name in ("spvae-continuous", "vae-discrete", "conv-spvae-discrete", "conv-vae-continuous"):
        assert PRESETS[name]["model_kwargs"]["arch"] in ("dense", "conv")


@pytest.mark.parametrize("key", [k for k in REFERENCE_COUNTS if "spvae" not in k[0]], ids="-".join)
def test_vae_preset_has_the_reference_parameter_count(key):
    model, guide = _build(key)
    assert _count(model, guide) == REFERENCE_COUNTS[key]


@pytest.mark.parametrize("key", [k for k in REFERENCE_COUNTS if "spvae" in k[0]], ids="-".join)
def test_spvae_preset_has_the_reference_parameter_count(key):
    """The leaf VAEs and the SPN's einsum logits equal the reference's count exactly; the SPN adds
    its 346 mixing logits, redundant under the softmax (same degrees of freedom, 4P - 1 per sum)."""
    model, guide = _build(key)
    not_mixing = _count(model, guide, where=lambda n: ".mixing." not in n)
    assert not_mixing == REFERENCE_COUNTS[key]
    assert _count(model.spn, where=lambda n: ".einsum." in n) == REFERENCE_SUM_WEIGHTS
    assert _count(model.spn, where=lambda n: ".mixing." in n) == MIXING_LOGITS
    assert _count(model, guide) == REFERENCE_COUNTS[key] + MIXING_LOGITS
    assert model.num_leaves == 32 and model.scopes.max_size == {"mnist": 49}.get(key[1], 64)


@pytest.mark.parametrize("key", [k for k in REFERENCE_COUNTS if k[1] == "mnist"], ids="-".join)
def test_mnist_preset_trains_with_the_reference_protocol(key):
    """Settings of the reference's hptune scripts: one Adam rate for every parameter, batch 128,
    K = 5, validation every 128 steps on all validation images, 11 checks of patience."""
    cfg = preset_config(paper_preset_name(*key))
    sp = "spvae" in key[0]
    assert cfg.lr == (1e-2 if sp else 1e-3) and cfg.group_lrs == {} and cfg.lr_decay is None
    assert cfg.batch_size == 128 and cfg.num_particles == 5 and cfg.eval_every == 128
    assert cfg.patience == 11 and cfg.min_rel_improvement == 0.0 and cfg.valid_max_examples is None
    assert cfg.elbo == ("spn-leaf-iw" if sp else "iwae") and cfg.transform == f"spvae-{key[2]}"
    assert cfg.steps is None and cfg.epochs == 1000 and cfg.data == "mnist"


@pytest.mark.parametrize("dataset", ["svhn", "cifar10"])
def test_32x32_presets_name_their_data_set(dataset):
    for key in (k for k in REFERENCE_COUNTS if k[1] == dataset):
        preset = PRESETS[paper_preset_name(*key)]
        assert preset["data"] == dataset and preset["transform"] == f"spvae-{key[2]}"
        if dataset in DATASETS:  # the loaders are registered by pyro_spvae.data
            assert preset_config(paper_preset_name(*key)).data == dataset


@pytest.mark.parametrize("key", [k for k in REFERENCE_COUNTS if k[1] == "mnist"], ids="-".join)
def test_mnist_preset_takes_one_training_step(key):
    model, guide = _build(key)
    k = torch.randint(0, 256, (3, 1, 28, 28), generator=torch.Generator().manual_seed(0))
    x = k.float() / 255 if key[2] == "discrete" else (k.float() + 0.5) / 256
    elbo = SPNLeafIWELBO(5) if "spvae" in key[0] else TraceIWAE_ELBO(5, max_plate_nesting=1)
    loss = elbo.differentiable_loss(model, guide, x)
    loss.backward()
    assert math.isfinite(float(loss.detach()))
    assert all(p.grad is not None for p in guide.parameters())


def test_reference_initialisation():
    """Dense kernels He-truncated-normal (std sqrt(2.6 / fan_in) before truncation at 2 std),
    convolution kernels Glorot-uniform, biases zero."""
    model, guide = _build(("conv-vae", "mnist", "continuous"))
    model.requires_grad_(False), guide.requires_grad_(False)
    dense = guide.encoder.mlp.layers[0]  # 3136 -> 64
    std = math.sqrt(1.3 * 2 / 3136)
    assert dense.weight.abs().max() <= 2 * std + 1e-7
    assert 0.8 * std < float(dense.weight.std()) < 0.95 * std  # 2-sigma truncation shrinks it (x0.88)
    conv = guide.encoder.convs[1]  # 32 -> 64, 3x3
    bound = math.sqrt(6 / (9 * 32 + 9 * 64))
    assert conv.weight.abs().max() <= bound and float(conv.weight.abs().max()) > 0.95 * bound
    head = model.decoder.output_layer  # two 32 -> 1 transposed-conv heads
    assert head.weight.abs().max() <= math.sqrt(6 / (9 * 32 + 9 * 1))
    biases = [p for n, p in [*model.named_parameters(), *guide.named_parameters()] if n.endswith("bias")]
    assert biases and all(bool((b == 0).all()) for b in biases)
