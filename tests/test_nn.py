"""Tests for pyro_spvae.nn: MLP, conv encoder/decoder and the stacked (batched) networks."""

import math

import pytest
import torch
from torch import nn

from pyro_spvae.nn import (
    MLP,
    ConvDecoder,
    ConvEncoder,
    StackedConvDecoder,
    StackedConvEncoder,
    StackedLinear,
    StackedMLP,
    conv_matrix,
    conv_spatial_sizes,
    conv_taps,
    get_activation,
)

DT = torch.float64


# ----------------------------------------------------------------------------- MLP
@pytest.mark.parametrize("activation", ["softplus", "relu", "tanh", "elu", "gelu", "silu", "identity"])
def test_mlp_shapes_and_leading_dims(activation):
    torch.manual_seed(0)
    mlp = MLP(5, (7, 3), 4, activation=activation)
    x = torch.randn(2, 3, 6, 5)
    y = mlp(x)
    assert y.shape == (2, 3, 6, 4)
    # leading dims are pure batch dims: same as applying row by row
    torch.testing.assert_close(y[1, 2, 3], mlp(x[1, 2, 3]))
    assert len(mlp.layers) == 3


def test_mlp_matches_manual_computation():
    torch.manual_seed(1)
    mlp = MLP(3, (4,), 2, activation="tanh").to(DT)
    x = torch.randn(5, 3, dtype=DT)
    l0, l1 = mlp.layers
    expected = torch.tanh(x @ l0.weight.T + l0.bias) @ l1.weight.T + l1.bias
    torch.testing.assert_close(mlp(x), expected, rtol=0, atol=1e-12)
    out_act = MLP(3, (), 2, activation="relu", output_activation="sigmoid")
    assert ((out_act(x.float()) > 0) & (out_act(x.float()) < 1)).all()


@pytest.mark.parametrize(
    "kwargs, err, match",
    [
        (dict(in_dim=0, hidden=(3,), out_dim=2), ValueError, "in_dim"),
        (dict(in_dim=3, hidden=(3, -1), out_dim=2), ValueError, r"hidden\[1\]"),
        (dict(in_dim=3, hidden=(3,), out_dim=2.5), TypeError, "out_dim"),
        (dict(in_dim=3, hidden="30", out_dim=2), TypeError, "hidden"),
        (dict(in_dim=3, hidden=(3,), out_dim=2, activation="swishy"), ValueError, "unknown activation"),
    ],
)
def test_mlp_bad_hyperparameters(kwargs, err, match):
    with pytest.raises(err, match=match):
        MLP(**kwargs)


def test_mlp_bad_input_shape():
    with pytest.raises(ValueError, match=r"expected \(\.\.\., 3\)"):
        MLP(3, (), 2)(torch.randn(4, 5))


def test_get_activation_passthrough_and_type_error():
    act = nn.ReLU()
    assert get_activation(act) is act
    with pytest.raises(TypeError, match="activation"):
        get_activation(3)


# ----------------------------------------------------------------------------- conv
@pytest.mark.parametrize("shape", [(1, 28, 28), (1, 7, 7), (3, 5, 6)])
def test_conv_encoder_decoder_shapes(shape):
    torch.manual_seed(0)
    enc = ConvEncoder(shape, 6, channels=(4, 8), hidden=(10,))
    dec = ConvDecoder(6, shape, out_channels=2 * shape[0], channels=(4, 8), hidden=(10,))
    x = torch.rand(2, 3, *shape)
    h = enc(x)
    assert h.shape == (2, 3, 6)
    out = dec(h)
    assert out.shape == (2, 3, 2 * shape[0], shape[1], shape[2])
    # leading dims are batch dims
    torch.testing.assert_close(enc(x[1]), h[1])
    torch.testing.assert_close(dec(h[0, 2]), out[0, 2])


def test_conv_spatial_sizes():
    assert conv_spatial_sizes(28, 2) == [28, 14, 7]
    assert conv_spatial_sizes(7, 2) == [7, 4, 2]
    assert conv_spatial_sizes(1, 2) == [1, 1, 1]


def test_conv_bad_arguments():
    with pytest.raises(ValueError, match=r"\(C, H, W\)"):
        ConvEncoder((784,), 4)
    with pytest.raises(ValueError, match="channels"):
        ConvDecoder(4, (1, 7, 7), 1, channels=())
    with pytest.raises(ValueError, match="out_channels"):
        ConvDecoder(4, (1, 7, 7), 0)
    with pytest.raises(ValueError, match="shape"):
        ConvEncoder((1, 7, 7), 4)(torch.rand(2, 1, 8, 8))
    with pytest.raises(ValueError, match="shape"):
        ConvDecoder(4, (1, 7, 7), 1)(torch.rand(2, 5))


# ----------------------------------------------------------------------------- stacked
def _grads(params):
    return [p.grad.clone() for p in params]


def test_stacked_linear_matches_loop_and_gradients():
    torch.manual_seed(0)
    n, d_in, d_out = 5, 4, 3
    linears = [nn.Linear(d_in, d_out).to(DT) for _ in range(n)]
    stacked = StackedLinear.from_modules(linears)
    x = torch.randn(2, 6, n, d_in, dtype=DT)
    y = stacked(x)
    assert y.shape == (2, 6, n, d_out)
    loop = torch.stack([linears[i](x[..., i, :]) for i in range(n)], dim=-2)
    torch.testing.assert_close(y, loop, rtol=0, atol=1e-12)

    g = torch.randn_like(y)
    (y * g).sum().backward()
    (loop * g).sum().backward()
    for i in range(n):
        torch.testing.assert_close(stacked.weight.grad[i], linears[i].weight.grad, rtol=0, atol=1e-12)
        torch.testing.assert_close(stacked.bias.grad[i], linears[i].bias.grad, rtol=0, atol=1e-12)


def test_stacked_linear_init_like_nn_linear():
    torch.manual_seed(0)
    n, d_in, d_out = 8, 30, 40
    stacked = StackedLinear(n, d_in, d_out)
    bound = 1 / math.sqrt(d_in)
    ref = nn.Linear(d_in, d_out)
    ref_bound = ref.weight.detach().abs().max()
    for w in (stacked.weight, stacked.bias):
        w = w.detach()
        assert w.abs().max() <= bound
        assert ref_bound <= bound
        # each net fills the whole interval U(-b, b): std b / sqrt(3)
        per_net_std = w.reshape(n, -1).std(dim=1)
        if w.dim() == 3:
            torch.testing.assert_close(per_net_std, torch.full((n,), bound / math.sqrt(3)), rtol=0.1, atol=0)
    # nets are not copies of one another
    assert not torch.allclose(stacked.weight[0], stacked.weight[1])


def test_stacked_mlp_matches_loop_and_gradients():
    torch.manual_seed(0)
    n = 4
    mlps = [MLP(6, (5, 5), 3, activation="softplus").to(DT) for _ in range(n)]
    stacked = StackedMLP.from_modules(mlps)
    x = torch.randn(3, n, 6, dtype=DT)
    y = stacked(x)
    loop = torch.stack([mlps[i](x[:, i]) for i in range(n)], dim=1)
    torch.testing.assert_close(y, loop, rtol=0, atol=1e-12)
    g = torch.randn_like(y)
    (y * g).sum().backward()
    (loop * g).sum().backward()
    for j, layer in enumerate(stacked.layers):
        for i in range(n):
            ref = mlps[i].layers[j]
            torch.testing.assert_close(layer.weight.grad[i], ref.weight.grad, rtol=0, atol=1e-12)
            torch.testing.assert_close(layer.bias.grad[i], ref.bias.grad, rtol=0, atol=1e-12)


def test_stacked_mlp_spvae_leaf_size_and_errors():
    # SPVAE reference code (Tan & Peharz 2019; docs/spvae.md): 32 leaf VAEs, softplus MLPs
    # (30, 30), nz = 25 on 7x7 patches
    enc = StackedMLP(32, 49, (30, 30), 2 * 25)
    dec = StackedMLP(32, 25, (30, 30), 49)
    x = torch.rand(5, 2, 32, 49)
    z = enc(x)[..., :25]
    assert dec(z).shape == (5, 2, 32, 49)
    with pytest.raises(ValueError, match=r"expected \(\.\.\., 32, 49\)"):
        enc(torch.rand(5, 31, 49))
    with pytest.raises(ValueError, match="num_nets"):
        StackedMLP(0, 49, (30,), 4)
    with pytest.raises(ValueError, match="identical widths"):
        StackedMLP.from_modules([MLP(3, (4,), 2), MLP(3, (5,), 2)])


@pytest.mark.parametrize("impl", ["conv", "matmul"])
@pytest.mark.parametrize("shape", [(1, 7, 7), (2, 6, 5)])
def test_stacked_conv_encoder_matches_loop_and_gradients(shape, impl):
    torch.manual_seed(0)
    n = 3
    encs = [ConvEncoder(shape, 4, channels=(3, 5), hidden=(6,), activation="softplus").to(DT)
            for _ in range(n)]
    stacked = StackedConvEncoder.from_modules(encs, impl=impl)
    assert stacked.use_matmul == (impl == "matmul")
    x = torch.randn(2, 4, n, *shape, dtype=DT)
    y = stacked(x)
    assert y.shape == (2, 4, n, 4)
    net_major = stacked.forward_net_major(x.reshape(8, n, -1).transpose(0, 1))
    torch.testing.assert_close(net_major.transpose(0, 1).reshape(y.shape), y, rtol=0, atol=1e-12)
    loop = torch.stack([encs[i](x[:, :, i]) for i in range(n)], dim=2)
    torch.testing.assert_close(y, loop, rtol=0, atol=1e-12)
    g = torch.randn_like(y)
    (y * g).sum().backward()
    (loop * g).sum().backward()
    for j, conv in enumerate(stacked.convs):
        w = conv.weight.grad.reshape(n, -1, *conv.weight.shape[1:])
        for i in range(n):
            torch.testing.assert_close(w[i], encs[i].convs[j].weight.grad, rtol=0, atol=1e-11)
    for i in range(n):
        torch.testing.assert_close(stacked.mlp.layers[0].weight.grad[i], encs[i].mlp.layers[0].weight.grad,
                                   rtol=0, atol=1e-11)


@pytest.mark.parametrize("impl", ["conv", "matmul"])
@pytest.mark.parametrize("shape", [(1, 7, 7), (1, 9, 6), (1, 28, 28)])
def test_stacked_conv_decoder_matches_loop_and_gradients(shape, impl):
    torch.manual_seed(0)
    n = 2
    decs = [ConvDecoder(4, shape, 2, channels=(3, 5), hidden=(6,), activation="tanh").to(DT)
            for _ in range(n)]
    stacked = StackedConvDecoder.from_modules(decs, impl=impl)
    z = torch.randn(3, n, 4, dtype=DT)
    y = stacked(z)
    assert y.shape == (3, n, 2, *shape[1:])
    net_major = stacked.forward_net_major(z.transpose(0, 1))
    torch.testing.assert_close(net_major.transpose(0, 1).reshape(y.shape), y, rtol=0, atol=1e-12)
    loop = torch.stack([decs[i](z[:, i]) for i in range(n)], dim=1)
    torch.testing.assert_close(y, loop, rtol=0, atol=1e-12)
    g = torch.randn_like(y)
    (y * g).sum().backward()
    (loop * g).sum().backward()
    for j, deconv in enumerate(stacked.deconvs):
        w = deconv.weight.grad.reshape(n, -1, *deconv.weight.shape[1:])
        b = deconv.bias.grad.reshape(n, -1)
        for i in range(n):
            torch.testing.assert_close(w[i], decs[i].deconvs[j].weight.grad, rtol=0, atol=1e-11)
            torch.testing.assert_close(b[i], decs[i].deconvs[j].bias.grad, rtol=0, atol=1e-11)
    w = stacked.out_conv.weight.grad.reshape(n, -1, *stacked.out_conv.weight.shape[1:])
    for i in range(n):
        torch.testing.assert_close(w[i], decs[i].out_conv.weight.grad, rtol=0, atol=1e-11)


@pytest.mark.parametrize("transposed", [False, True])
@pytest.mark.parametrize("stride,in_hw", [(1, (5, 4)), (2, (4, 3)), (2, (7, 7))])
def test_conv_matrix_equals_grouped_convolution(transposed, stride, in_hw):
    torch.manual_seed(0)
    n, c_in, c_out = 3, 2, 4
    if transposed:
        conv = nn.ConvTranspose2d(n * c_in, n * c_out, 3, stride=stride, padding=1,
                                  output_padding=stride - 1, groups=n).to(DT)
    else:
        conv = nn.Conv2d(n * c_in, n * c_out, 3, stride=stride, padding=1, groups=n).to(DT)
    x = torch.randn(5, n * c_in, *in_hw, dtype=DT)
    y = conv(x)
    taps = conv_taps(in_hw, conv).to(DT)
    assert taps.shape == (in_hw[0] * in_hw[1], y.shape[-2] * y.shape[-1], 9)
    assert set(taps.unique().tolist()) == {0.0, 1.0}
    matrix, bias = conv_matrix(conv, taps, n)
    xm = x.reshape(5, n, -1).transpose(0, 1)  # (N, M, C_in P)
    ym = torch.baddbmm(bias, xm, matrix)
    torch.testing.assert_close(ym.transpose(0, 1).reshape(y.shape), y, rtol=0, atol=1e-12)
    g = torch.randn_like(y)
    gw, gb = torch.autograd.grad((y * g).sum(), (conv.weight, conv.bias))
    gw2, gb2 = torch.autograd.grad((ym * g.reshape(5, n, -1).transpose(0, 1)).sum(), (conv.weight, conv.bias))
    torch.testing.assert_close(gw2, gw, rtol=0, atol=1e-11)
    torch.testing.assert_close(gb2, gb, rtol=0, atol=1e-11)


def test_stacked_conv_impl_auto_and_bad_impl():
    assert StackedConvDecoder(32, 25, (1, 7, 7), 1, channels=(8, 16)).use_matmul
    assert StackedConvEncoder(32, (1, 7, 7), 50, channels=(8, 16)).use_matmul
    assert not StackedConvDecoder(2, 4, (1, 28, 28), 1, channels=(16, 32)).use_matmul
    with pytest.raises(ValueError, match=r"unknown impl 'fft'; choose one of \['auto', 'conv', 'matmul'\]"):
        StackedConvDecoder(2, 4, (1, 7, 7), 1, impl="fft")


def test_stacked_conv_init_per_group_like_single_conv():
    torch.manual_seed(0)
    n = 6
    stacked = StackedConvEncoder(n, (1, 7, 7), 4, channels=(8, 16))
    single = ConvEncoder((1, 7, 7), 4, channels=(8, 16))
    for conv_s, conv_1 in zip(stacked.convs, single.convs):
        fan_in = conv_1.weight[0].numel()
        bound = 1 / math.sqrt(fan_in)
        w = conv_s.weight.detach().reshape(n, *conv_1.weight.shape)
        assert w.abs().max() <= bound and conv_1.weight.abs().max() <= bound
        assert (w.abs().amax(dim=(1, 2, 3, 4)) > 0.8 * bound).all()
    dec = StackedConvDecoder(n, 4, (1, 7, 7), 1, channels=(8, 16))
    single_dec = ConvDecoder(4, (1, 7, 7), 1, channels=(8, 16))
    for d_s, d_1 in zip(dec.deconvs, single_dec.deconvs):
        bound = 1 / math.sqrt(d_1.weight[0].numel())
        assert d_s.weight.abs().max() <= bound and d_1.weight.abs().max() <= bound
        assert d_s.weight.shape == (n * d_1.weight.shape[0], *d_1.weight.shape[1:])


def test_stacked_conv_bad_input():
    enc = StackedConvEncoder(3, (1, 7, 7), 4, channels=(4,))
    with pytest.raises(ValueError, match=r"expected \(\.\.\., 3, 1, 7, 7\)"):
        enc(torch.rand(2, 1, 7, 7))
    dec = StackedConvDecoder(3, 4, (1, 7, 7), 1, channels=(4,))
    with pytest.raises(ValueError, match=r"expected \(\.\.\., 3, 4\)"):
        dec(torch.rand(2, 2, 4))


# ----------------------------------------------------------------------------- reference options
# (the SPVAE reference code, Tan & Peharz 2019: stride-1 conv leaves, transposed-conv output heads,
# separate head networks and the TF1 initialisation; see docs/spvae.md)
def _count(module):
    return sum(p.numel() for p in module.parameters())


def test_conv_stride_and_spatial_sizes():
    assert conv_spatial_sizes(7, 2, stride=1) == [7, 7, 7]
    assert conv_spatial_sizes(32, 2) == [32, 16, 8]
    assert conv_spatial_sizes(28, 2, stride=3) == [28, 10, 4]
    with pytest.raises(ValueError, match="stride"):
        ConvEncoder((1, 7, 7), 4, (4,), stride=4)
    with pytest.raises(ValueError, match="out_layer"):
        ConvDecoder(3, (1, 7, 7), 1, (4,), out_layer="dense")


def test_reference_conv_leaf_networks():
    """The reference's conv leaf VAE on a 7x7 patch: conv 4 -> conv 8 at stride 1 (7x7 kept),
    dense 64, two heads of 25 (28,738 parameters); decoder dense 25 -> 392, transposed conv 8 -> 4
    and two transposed-conv heads (10,558)."""
    enc = ConvEncoder((1, 7, 7), 50, (4, 8), (64,), activation="softplus", stride=1, init="tf1")
    dec = ConvDecoder(25, (1, 7, 7), 2, (4, 8), (), activation="softplus", stride=1, out_layer="deconv",
                      init="tf1", heads=2)
    assert enc.flat_dim == 392 and _count(enc) == 28_738 and _count(dec) == 10_558
    assert dec.out_conv is None and dec.output_layer is dec.deconvs[-1]
    assert dec(torch.randn(3, 5, 25)).shape == (3, 5, 2, 7, 7)
    assert enc(torch.randn(3, 1, 7, 7)).shape == (3, 50)
    # the conv-VAE decoder: 7x7x64 -> 14x14x32 -> transposed-conv heads to 28x28, no out_conv
    vae_dec = ConvDecoder(200, (1, 28, 28), 2, (32, 64), (), out_layer="deconv")
    assert vae_dec(torch.randn(4, 200)).shape == (4, 2, 28, 28) and len(vae_dec.deconvs) == 2
    assert _count(vae_dec) == 649_378


@pytest.mark.parametrize("impl", ["matmul", "conv"])
@pytest.mark.parametrize("stride, out_layer", [(1, "deconv"), (2, "deconv"), (1, "conv")])
def test_stacked_conv_options_match_separate_networks(impl, stride, out_layer):
    torch.manual_seed(0)
    n, ev = 3, (1, 7, 7)
    encs = [ConvEncoder(ev, 6, (2, 3), (5,), "softplus", stride=stride).to(DT) for _ in range(n)]
    decs = [ConvDecoder(4, ev, 2, (2, 3), (5,), "softplus", stride=stride, out_layer=out_layer).to(DT)
            for _ in range(n)]
    s_enc = StackedConvEncoder.from_modules(encs, impl=impl)
    s_dec = StackedConvDecoder.from_modules(decs, impl=impl)
    assert s_enc.stride == s_dec.stride == stride and s_dec.out_layer == out_layer
    x, z = torch.rand(2, n, *ev, dtype=DT), torch.randn(2, n, 4, dtype=DT)
    y_enc, y_dec = s_enc(x), s_dec(z)
    for i in range(n):
        torch.testing.assert_close(y_enc[:, i], encs[i](x[:, i]), rtol=0, atol=1e-10)
        torch.testing.assert_close(y_dec[:, i], decs[i](z[:, i]), rtol=0, atol=1e-10)
    torch.testing.assert_close(s_dec.forward_net_major(z.transpose(0, 1)), y_dec.flatten(-3).transpose(0, 1))


def test_stacked_heads_concatenate_separate_stacked_networks():
    from pyro_spvae.nn.stacked import StackedHeads

    torch.manual_seed(0)
    heads = [StackedMLP(4, 5, (6,), 3), StackedMLP(4, 5, (2,), 3)]
    net = StackedHeads(heads, event_dims=1)
    x = torch.randn(2, 7, 4, 5)
    torch.testing.assert_close(net(x), torch.cat([h(x) for h in heads], -1))
    xn = x.reshape(-1, 4, 5).transpose(0, 1)
    a, b = net.forward_net_major_heads(xn)
    torch.testing.assert_close(a, heads[0].forward_net_major(xn))
    torch.testing.assert_close(net.forward_net_major(xn), torch.cat([a, b], -1))
    with pytest.raises(ValueError, match="same number of nets"):
        StackedHeads([StackedMLP(4, 5, (), 3), StackedMLP(3, 5, (), 3)])


def test_separate_head_builders():
    from pyro_spvae.nn.builders import SeparateHeads, build_decoder, build_encoder

    enc = build_encoder("dense", (1, 4, 4), 6, (5,), heads="separate", num_heads=2)
    assert isinstance(enc, SeparateHeads) and len(enc.nets) == 2
    x = torch.rand(3, 1, 4, 4)
    torch.testing.assert_close(enc(x), torch.cat([enc.nets[0](x), enc.nets[1](x)], -1))
    dec = build_decoder("conv", 5, (2, 8, 8), (), channels=(3,), heads="separate", num_heads=2,
                        out_layer="deconv")
    z = torch.randn(3, 5)
    assert dec(z).shape == (3, 2, 8, 8)
    torch.testing.assert_close(dec(z)[:, 1:], dec.nets[1](z))
    # a shared network's parameters do not depend on the number of (linear) heads
    assert _count(build_decoder("dense", 5, (2, 8, 8), (7,), num_heads=2)) == 5 * 7 + 7 + 7 * 128 + 128
    with pytest.raises(ValueError, match="equal blocks"):
        build_encoder("dense", (1, 4, 4), 5, heads="separate", num_heads=2)
    with pytest.raises(ValueError, match="unknown heads"):
        build_encoder("dense", (1, 4, 4), 6, heads="split")


def test_tf1_initialisation():
    """He-truncated-normal dense kernels (std sqrt(2.6 / fan_in) before the 2-sigma truncation),
    Glorot-uniform conv kernels (per group and head), zero biases; plain and stacked alike."""
    torch.manual_seed(0)
    stacked, layer = StackedLinear(8, 400, 300, init="tf1"), MLP(400, (300,), 10, init="tf1").layers[0]
    with torch.no_grad():
        for w, b in [(layer.weight, layer.bias), (stacked.weight, stacked.bias)]:
            std = math.sqrt(2.6 / 400)
            assert float(w.abs().max()) <= 2 * std and 0.8 * std < float(w.std()) < 0.95 * std
            assert not b.any()
    dec = StackedConvDecoder(4, 3, (1, 7, 7), 2, (5,), (), stride=1, out_layer="deconv", init="tf1", heads=2)
    dec.requires_grad_(False)
    head = dec.deconvs[-1]  # per net and head: 5 -> 1 channels, 3x3
    bound = math.sqrt(6 / (9 * 5 + 9 * 1))
    assert float(head.weight.abs().max()) <= bound and float(head.weight.abs().max()) > 0.9 * bound
    assert not head.bias.any() and not dec.mlp.layers[0].bias.any()
    with pytest.raises(ValueError, match="unknown init"):
        MLP(3, (), 2, init="keras")
