"""The WAGEUBN quantizers: integer scheme == torch path == the official formulas."""
import numpy as np
import pytest
import torch
from hypothesis import assume, given, strategies as st
from strategies import u32_words

import official
from wageubn_sim import function as F
from wageubn_sim.fixedpoint import FixedArray, scale_exponent_of_ints
from wageubn_sim.scheme import (activation_quantize, e1_quantize, e2_quantize, g_quantize,
                                gbn_quantize, lr_quantize, weight_quantize)


@st.composite
def fixed_tensors(draw, max_size=30, value_bits=24):
    n = draw(st.integers(1, max_size))
    q = draw(st.lists(st.integers(-(1 << value_bits), 1 << value_bits), min_size=n, max_size=n))
    frac = draw(st.integers(-4, 30))
    return FixedArray(np.array(q, dtype=np.int64), frac)


def official_shift_is_exact(t: FixedArray):
    """The official float Shift() agrees with the exact R (it can differ within float error
    of the sqrt(2) boundary, where the contract is the exact rule)."""
    m = float(np.abs(t.to_float()).max())
    return m == 0 or float(official.Shift(m)) == 2.0 ** scale_exponent_of_ints(t.q, t.frac_bits)


def torch_of(t: FixedArray):
    return torch.from_numpy(t.to_float())


@given(t=fixed_tensors(), k=st.integers(2, 12))
def test_weight(t, k):
    want = official.fw(t.to_float(), k)
    got = weight_quantize(t, k)
    assert np.array_equal(got.to_float(), want)
    assert np.array_equal(F.weightquant(torch_of(t), k).numpy(), want)


@given(t=fixed_tensors(), k=st.integers(1, 12))
def test_activation(t, k):
    want = official.fa(t.to_float(), k)
    assert np.array_equal(activation_quantize(t, k).to_float(), want)
    assert np.array_equal(F.directquant(torch_of(t), k).numpy(), want)


@given(t=fixed_tensors(), k=st.integers(2, 10))
def test_e1(t, k):
    assume(np.any(t.q) and official_shift_is_exact(t))
    want = official.fe1(t.to_float(), k)
    got = e1_quantize(t, k)
    assert np.array_equal(got.to_float(), want)
    assert np.abs(got.q).max() <= 1 << (k - 1)
    assert np.array_equal(F.e1quant(torch_of(t), k).numpy(), want)


@given(t=fixed_tensors(), k=st.integers(2, 10))
def test_e2(t, k):
    assume(np.any(t.q) and official_shift_is_exact(t))
    want = official.fe2(t.to_float(), k)
    got = e2_quantize(t, k)
    assert np.array_equal(got.to_float(), want)
    assert np.array_equal(F.errquant(torch_of(t), k).numpy(), want)


@given(t=fixed_tensors(value_bits=20), data=st.data(), k_dr=st.integers(2, 9))
def test_g_with_the_same_random_bits(t, data, k_dr):
    assume(np.any(t.q) and official_shift_is_exact(t))
    # u = 0 on an exact value is the one case the contract leaves the official code (docs §2).
    u = data.draw(u32_words(t.q.size)).clip(1, None)
    want = official.fg(t.to_float(), u / 2.0**32, g_scale=2.0 ** (k_dr - 1), bitsG=8)
    got = g_quantize(t, u, k_dr=k_dr, k=15)
    assert np.array_equal(got.to_float(), want)
    assert np.array_equal(F.constquant(torch_of(t), k_dr, 15, u=u).numpy(), want)


@given(t=fixed_tensors())
def test_gbn(t):
    want = official.fgBN(t.to_float())
    assert np.array_equal(gbn_quantize(t).to_float(), want)


@pytest.mark.parametrize("lr,want", [(0.05, 26), (0.006, 3), (0.003, 2), (0.0015, 1), (5.0, 511),
                                     (-5.0, -511)])
def test_lr(lr, want):
    # the base rates 0.05 * [1, .12, .06, .03] become 26, 3, 2, 1 LSBs of 2**-9
    assert lr_quantize(lr).q.item() == want
    assert F.lrquant(lr) == official.flr(lr) == want / 512


def test_zero_tensors_give_zeros_not_nan():
    z = FixedArray(np.zeros(4, np.int64), 7)
    u = np.zeros(4, np.uint32)
    for got in (e1_quantize(z), e2_quantize(z), g_quantize(z, u), gbn_quantize(z)):
        assert not got.q.any()
    zt = torch.zeros(4)
    for fn in (lambda x: F.shiftquant(x, 8), F.e1quant, F.errquant,
               lambda x: F.constquant(x, 8, 15)):
        out = fn(zt)
        assert not torch.isnan(out).any() and not out.any()
    with np.errstate(invalid="ignore", divide="ignore"):
        assert np.isnan(official.fe1(np.zeros(4))).all()  # what the official code does


def test_e1_keeps_257_levels_and_shiftquant_255():
    t = torch.tensor([1.0, -1.0, 0.999, -0.9995, 0.5])
    assert F.e1quant(t, 8).abs().max().item() == 1.0  # 128 / 128
    assert F.shiftquant(t, 8).abs().max().item() == 127 / 128


def test_e2_branches_overlap_at_one_step():
    # R = 1, ds = 2**-7: |e| just below ds takes the fine branch (n <= 128), at ds the coarse one
    e = FixedArray(np.array([2**14, (2**7) - 1, 2**7, 3 * 2**7 + 2**6], dtype=np.int64), 14)
    got = e2_quantize(e, 8)
    assert got.frac_bits == 14
    assert got.q.tolist()[1:] == [127, 128, 128 * 4]  # 3.5 steps -> RNE(3.5) = 4
    assert got.q.tolist()[0] == 127 * 128  # the max, 128 steps, is clipped to 127


def test_g_is_reproducible_and_bounded():
    g = FixedArray(np.arange(-500, 500, dtype=np.int64), 10)
    u1 = np.random.default_rng(0).integers(0, 2**32, g.q.size, dtype=np.uint32)
    a, b = g_quantize(g, u1), g_quantize(g, u1)
    assert np.array_equal(a.q, b.q)
    assert np.abs(a.q).max() <= 127
    # unbiased: the mean of n tracks the mean of 128 * g / R
    e = scale_exponent_of_ints(g.q, g.frac_bits)
    exact = g.q * 2.0 ** (-g.frac_bits - e + 7)
    assert abs(a.q.mean() - np.clip(exact, -127, 127).mean()) < 1.0


def test_e1_worked_example():
    # [0.3, -0.05]: max 0.3, log2 = -1.74 -> R = 2**-2; 0.3/R*128 = 153.6 -> clipped to 128,
    # -0.05/R*128 = -25.6 -> -26; grid R * 2**-7 = 2**-9.
    t = FixedArray(np.array([round(0.3 * 2**20), round(-0.05 * 2**20)]), 20)
    got = e1_quantize(t, 8)
    assert (got.frac_bits, got.q.tolist()) == (9, [128, -26])
