"""Each module's float64 forward equals the integer contract computed with int64 numpy."""
import math
from fractions import Fraction

import numpy as np
import pytest
import torch
import torch.nn.functional as TF
from hypothesis import given, strategies as st
from int_reference import align, int_adder2d, int_conv2d

from wageubn_sim import function as F
from wageubn_sim.fixedpoint import Format, Rounding, quantize, reference as ref, requantize

SAT_SYM = "SAT_SYM"


def seeded(seed, *shape, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.float64) * scale


def register(x, dec, all_):
    return quantize(np.asarray(x, dtype=np.float64), Format.from_seed(dec, all_), "HALF_EVEN", SAT_SYM)


@st.composite
def conv_configs(draw):
    groups = draw(st.sampled_from([1, 2]))
    cin = groups * draw(st.integers(1, 3))
    cout = groups * draw(st.integers(1, 3))
    k = draw(st.integers(1, 3))
    return dict(cin=cin, cout=cout, k=k, stride=draw(st.integers(1, 2)),
                padding=draw(st.integers(0, 2)), dilation=draw(st.integers(1, 2)), groups=groups,
                bias=draw(st.booleans()), size=draw(st.integers(k * 2 + 1, 8)),
                w_dec=draw(st.integers(2, 9)), b_dec=draw(st.integers(2, 16)),
                in_dec=draw(st.integers(2, 9)), out_dec=draw(st.integers(2, 16)),
                out_all=draw(st.integers(6, 24)), seed=draw(st.integers(0, 2**16)))


@given(cfg=conv_configs())
def test_conv2d_iostrict_equals_integer_datapath(cfg):
    conv = F.Conv2d(cfg["cin"], cfg["cout"], cfg["k"], cfg["stride"], cfg["padding"],
                    cfg["dilation"], cfg["groups"], cfg["bias"], iostrict=True,
                    weight_dec_bit_width=cfg["w_dec"], weight_all_bit_width=cfg["w_dec"],
                    bias_dec_bit_width=cfg["b_dec"], bias_all_bit_width=20,
                    input_dec_bit_width=cfg["in_dec"], input_all_bit_width=12,
                    output_dec_bit_width=cfg["out_dec"], output_all_bit_width=cfg["out_all"]).double()
    x = seeded(cfg["seed"], 2, cfg["cin"], cfg["size"], cfg["size"], scale=3.0)
    got = conv(x).detach().numpy()

    qx = register(x, cfg["in_dec"], 12)
    qw = register(conv.weight.detach(), cfg["w_dec"], cfg["w_dec"])
    acc = int_conv2d(qx, qw, cfg["stride"], cfg["padding"], cfg["dilation"], cfg["groups"])
    acc_frac = cfg["in_dec"] - 1 + cfg["w_dec"] - 1
    total_frac = max(acc_frac, cfg["b_dec"] - 1)
    acc = align(acc, acc_frac, total_frac)
    if cfg["bias"]:
        qb = register(conv.bias.detach(), cfg["b_dec"], 20)
        acc = acc + align(qb, cfg["b_dec"] - 1, total_frac)[None, :, None, None]
    out = requantize(acc, total_frac, Format.from_seed(cfg["out_dec"], cfg["out_all"]),
                     "HALF_EVEN", SAT_SYM)
    assert np.array_equal(got, out * 2.0 ** -(cfg["out_dec"] - 1))


@given(seed=st.integers(0, 2**16), n_in=st.integers(1, 20), n_out=st.integers(1, 6),
       bias=st.booleans())
def test_linear_equals_integer_datapath(seed, n_in, n_out, bias):
    lin = F.Linear(n_in, n_out, bias).double()
    qx = quantize(seeded(seed, 3, n_in, scale=4.0).numpy(), Format(None, 0))  # integer inputs
    x_int = torch.from_numpy(qx.astype(np.float64))
    got = lin(x_int).detach().numpy()
    qw = register(lin.weight.detach(), 8, 8)
    acc = qx @ qw.T  # frac 7
    if bias:
        acc = acc + register(lin.bias.detach(), 8, 16)
    assert np.array_equal(got, acc * 2.0 ** -7)


@given(seed=st.integers(0, 2**16), k=st.integers(1, 3), stride=st.integers(1, 2),
       padding=st.integers(0, 1))
def test_adder2d_equals_integer_datapath(seed, k, stride, padding):
    layer = F.Adder2d(2, 3, k, stride, padding, iostrict=True).double()
    x = seeded(seed, 2, 2, 5, 5, scale=2.0)
    got = layer(x).detach().numpy()
    qx = register(x, 8, 16)
    qw = register(layer.weight.detach(), 8, 8)
    out = requantize(int_adder2d(qx, qw, stride, padding), 7, Format.from_seed(12, 24),
                     "HALF_EVEN", SAT_SYM)
    assert np.array_equal(got, out * 2.0 ** -11)


@given(seed=st.integers(0, 2**16), six=st.booleans(), iostrict=st.booleans())
def test_activations(seed, six, iostrict):
    act = (F.ReLU6 if six else F.ReLU)(iostrict=iostrict, acti_all_bit_width=10)
    x = seeded(seed, 50, scale=6.0)
    got = act(x).numpy()
    y = np.clip(x.numpy(), 0, 6 if six else None)
    fmt = Format.from_seed(8, 10) if iostrict else Format.from_seed(8)
    if iostrict:
        y = register(x, 8, 16) * 2.0 ** -7  # the input register first
        y = np.clip(y, 0, 6 if six else None)
    assert np.array_equal(got, quantize(y, fmt, "HALF_EVEN", SAT_SYM) * 2.0 ** -7)


@given(seed=st.integers(0, 2**16), k=st.integers(2, 4), out_dec=st.integers(1, 12))
def test_avgpool_is_a_rounding_division(seed, k, out_dec):
    pool = F.AvgPool2d(k, output_dec_bit_width=out_dec)
    qx = quantize(seeded(seed, 1, 2, 6, 6, scale=3.0).numpy(), Format(None, 7))
    got = pool(torch.from_numpy(qx * 2.0 ** -7)).numpy()
    sums = sum(qx[:, :, i::k, j::k][:, :, :6 // k, :6 // k] for i in range(k) for j in range(k))
    want = [ref.quantize(Fraction(int(s), k * k * 2**7), Format(None, out_dec - 1),
                         Rounding.HALF_EVEN, "SAT") for s in sums.ravel()]
    assert (got.ravel() * 2.0 ** (out_dec - 1)).tolist() == want


def test_add_iostrict_saturates():
    add = F.Add(iostrict=True, output_dec_bit_width=8, output_all_bit_width=8)
    a, b = torch.tensor([0.5, 0.9]), torch.tensor([0.25, 0.9])
    assert add(a, b).tolist() == [0.75, 127 / 128]
    assert F.Add()(a, b).tolist() == (a + b).tolist()


def _bn_reference(x, mean, var, gamma, beta, eps, k_mean=16, k_var=16, k_xhat=8):
    """The UBN forward of docs/arithmetic.md §8 with Fractions, per channel."""
    c = x.shape[1]
    out = np.empty_like(x)
    eps_q = max(ref.quantize(eps, Format(None, k_var - 1), Rounding.HALF_EVEN, "SAT"), 1)
    for ch in range(c):
        mean_q = Fraction(ref.quantize(mean[ch], Format.from_seed(k_mean, 24), Rounding.HALF_EVEN,
                                       "SAT_SYM"), 2 ** (k_mean - 1))
        std_int = ref.quantize(var[ch], Format.from_seed(k_var, 24), Rounding.HALF_EVEN, "SAT_SYM")
        std_q = Fraction(std_int + eps_q, 2 ** (k_var - 1))
        g = Fraction(ref.quantize(gamma[ch], Format.from_seed(8, 16), Rounding.HALF_EVEN, "SAT_SYM"), 128)
        b = Fraction(ref.quantize(beta[ch], Format.from_seed(8, 16), Rounding.HALF_EVEN, "SAT_SYM"), 128)
        for idx in np.ndindex(x[:, ch].shape):
            v = Fraction(float(x[:, ch][idx]))
            xhat = Fraction(ref.quantize((v - mean_q) / std_q, Format(None, k_xhat - 1),
                                         Rounding.HALF_EVEN, "SAT"), 2 ** (k_xhat - 1))
            out[(idx[0], ch) + idx[1:]] = float(xhat * g + b)
    return out


def _sqrt_half_even(v: Fraction) -> Fraction:
    """RNE(sqrt(v) * 2**15) / 2**15, exactly, with integer square roots."""
    w = v * 2**30
    t = math.isqrt(math.floor(4 * w))  # floor(2 sqrt(w))
    n = t // 2
    if t % 2 == 1:  # sqrt(w) in [n + 1/2, n + 1)
        tie = Fraction(t * t, 4) == w
        n = n + (1 if not tie or n % 2 == 1 else 0)
    return Fraction(n, 2**15)


def test_batchnorm_eval_equals_contract():
    bn = F.BatchNorm2d(3).double().eval()
    with torch.no_grad():
        bn.running_mean.copy_(torch.tensor([0.1, -0.3, 2.0]))
        bn.running_var.copy_(torch.tensor([0.5, 2.0, 0.001]))
        bn.weight.copy_(torch.tensor([1.2, 0.7, -0.5]))
        bn.bias.copy_(torch.tensor([0.1, 0.0, -0.2]))
    qx = quantize(seeded(1, 4, 3, 3, 3, scale=2.0).numpy(), Format(None, 12)) * 2.0 ** -12
    got = bn(torch.from_numpy(qx)).detach().numpy()
    want = _bn_reference(qx, bn.running_mean.numpy(), np.sqrt(bn.running_var.numpy()),
                         bn.weight.detach().numpy(), bn.bias.detach().numpy(), bn.eps)
    assert np.array_equal(got, want)


@given(seed=st.integers(0, 2**16), n=st.integers(1, 4))
def test_batchnorm_training_statistics_equal_exact_contract(seed, n):
    bn = F.BatchNorm2d(2).double().train()
    qx = quantize(seeded(seed, n, 2, 3, 3, scale=2.0).numpy(), Format(None, 10))
    x = qx * 2.0 ** -10
    got = bn(torch.from_numpy(x)).detach().numpy()
    means, stds = [], []
    for ch in range(2):
        vals = [Fraction(int(v), 2**10) for v in qx[:, ch].ravel()]
        mean = sum(vals) / len(vals)
        var = sum((v - mean) ** 2 for v in vals) / len(vals)
        means.append(mean)
        stds.append(_sqrt_half_even(max(var, Fraction(0))))
    want = _bn_reference(x, means, stds, [1.0, 1.0], [0.0, 0.0], bn.eps)
    assert np.array_equal(got, want)


def test_batchnorm_eps_momentum_and_modes():
    x = seeded(0, 8, 2, 4, 4)
    a = F.BatchNorm2d(2, eps=1e-5).double().eval()
    b = F.BatchNorm2d(2, eps=1.0).double().eval()
    assert not torch.equal(a(x), b(x))  # eps is honoured (the seed ignored it)
    assert a.quantized_eps() == 2.0 ** -15 and b.quantized_eps() == 1.0

    bn = F.BatchNorm2d(2, momentum=0.5).double().train()
    bn(x)
    assert torch.allclose(bn.running_mean, 0.5 * x.mean((0, 2, 3)))
    assert bn.num_batches_tracked.item() == 1
    y_train = bn(x)
    bn.eval()
    assert not torch.equal(bn(x), y_train)  # eval uses the running statistics

    free = F.BatchNorm2d(2, track_running_stats=False).double().eval()
    out = free(x)  # batch statistics in eval too; the seed crashed on None
    assert out.shape == x.shape and abs(out.mean().item()) < 0.1

    small = F.BatchNorm2d(1).double().eval()
    small.running_var.fill_(0.001)
    # std = Q16(sqrt(0.001)): 0.05 / 0.0316 = 1.58 -> Q8 1.578125 (the seed gave 15.81)
    assert small(torch.full((1, 1, 1, 1), 0.05, dtype=torch.float64)).item() == 202 / 128


def test_batchnorm_rejects_empty_training_batch():
    with pytest.raises(ValueError, match="empty batch"):
        F.BatchNorm2d(2).train()(torch.zeros(0, 2, 3, 3))
    assert F.BatchNorm2d(2).eval()(torch.zeros(0, 2, 3, 3)).shape == (0, 2, 3, 3)


def test_conv_padding_mode_is_honoured():
    conv = F.Conv2d(1, 1, 3, padding=1, padding_mode="reflect", bias=False).double()
    x = seeded(2, 1, 1, 5, 5)
    wq = F.weightquant(conv.weight.detach(), 8)
    want = TF.conv2d(TF.pad(x, (1, 1, 1, 1), mode="reflect"), wq)
    assert torch.equal(conv(x), want)
