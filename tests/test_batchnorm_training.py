"""BatchNorm's training-mode forward on integers: exact batch statistics, the rounded square
root, and the torch path computing the same values."""
from fractions import Fraction

import numpy as np
import pytest
import torch
from hypothesis import given, strategies as st

from wageubn_sim import function as F
from wageubn_sim.engine.ops.batchnorm import BatchNormParams, batch_statistics, batchnorm2d
from wageubn_sim.fixedpoint import Format, Rounding, reference as ref
from wageubn_sim.fixedpoint.division import sqrt_rounded


@given(num=st.integers(0, 2**200), den=st.integers(1, 2**100))
def test_sqrt_rounded_equals_reference(num, den):
    assert sqrt_rounded(num, den) == ref.round_sqrt(Fraction(num, den))


@pytest.mark.parametrize("n", [0, 1, 2, 3, 4, 5, 6, 100])
def test_sqrt_ties_go_to_even(n):
    tie = Fraction(2 * n + 1, 2) ** 2  # sqrt is exactly n + 1/2
    want = n if n % 2 == 0 else n + 1
    assert sqrt_rounded(tie.numerator, tie.denominator) == want == ref.round_sqrt(tie)
    assert sqrt_rounded(n * n, 1) == n


@given(seed=st.integers(0, 2**31), frac=st.integers(0, 16), bits=st.integers(4, 24),
       n=st.integers(1, 4))
def test_batch_statistics_equal_exact_rationals(seed, frac, bits, n):
    x = np.random.default_rng(seed).integers(-2**bits, 2**bits, (n, 3, 4, 4))
    mean_q, std_q = batch_statistics(x, frac, Format(24, 15), Format(24, 15), eps_lsbs=1)
    for c in range(3):
        vals = [Fraction(int(v), 2**frac) for v in x[:, c].ravel()]
        mean = sum(vals) / len(vals)
        var = sum(v * v for v in vals) / len(vals) - mean * mean
        assert mean_q[c] == ref.quantize(mean, Format(24, 15), Rounding.HALF_EVEN, "SAT_SYM")
        assert std_q[c] == min(ref.round_sqrt(var * 2**30), 2**23 - 1) + 1


@given(seed=st.integers(0, 2**31), frac=st.integers(0, 20), bits=st.integers(4, 26),
       n=st.integers(1, 3), iostrict=st.booleans())
def test_torch_training_forward_equals_engine(seed, frac, bits, n, iostrict):
    """Also where float statistics would not be exact (sums of squares beyond 2**53)."""
    x = np.random.default_rng(seed).integers(-2**bits, 2**bits, (n, 2, 5, 5))
    bn = F.BatchNorm2d(2, iostrict=iostrict, input_all_bit_width=40).double().train()
    with torch.no_grad():
        bn.weight.copy_(torch.tensor([1.25, -0.5]))
        bn.bias.copy_(torch.tensor([0.125, 0.0]))
    got = bn(torch.from_numpy(x * 2.0 ** -frac)).detach().numpy()
    p = BatchNormParams(Format.from_seed(16, 24), Format(None, 15),
                        Format.from_seed(8, 16) if iostrict else Format(None, 7),
                        Format.from_seed(8, 16), Format.from_seed(8, 16),
                        input_register=Format.from_seed(12, 40) if iostrict else None,
                        out_fmt=Format.from_seed(8, 16) if iostrict else None)
    x_in, f_in = x, frac
    if iostrict:
        from wageubn_sim.fixedpoint import requantize
        x_in, f_in = requantize(x, frac, Format.from_seed(12, 40), "HALF_EVEN", "SAT_SYM"), 11
    mean_q, std_q = batch_statistics(x_in, f_in, Format.from_seed(16, 24), Format.from_seed(16, 24), 1)
    out = batchnorm2d(x_in, f_in, mean_q, std_q, np.array([160, -64]), np.array([16, 0]), p)
    assert np.array_equal(got, out.q * 2.0 ** -out.fmt.frac_bits)


def test_training_gradients_still_flow():
    bn = F.BatchNorm2d(2).double().train()
    x = torch.randn(4, 2, 3, 3, dtype=torch.float64, requires_grad=True)
    bn(x).pow(2).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


@given(seed=st.integers(0, 2**31), affine=st.booleans())
def test_batchnorm_backward_equals_exact_rational_formula(seed, affine):
    from wageubn_sim.engine.ops.batchnorm import DX_BITS, batchnorm2d_backward
    from wageubn_sim.fixedpoint import scale_exponent_of_ints
    from wageubn_sim.fixedpoint import FixedArray
    rng = np.random.default_rng(seed)
    x = FixedArray(rng.integers(-2**14, 2**14, (2, 2, 3, 3)), 14)
    e = FixedArray(rng.integers(-200, 200, (2, 2, 3, 3)), 11)
    mean = FixedArray(rng.integers(-2**12, 2**12, 2), 15)
    std = FixedArray(rng.integers(2**12, 2**16, 2), 15)
    xhat = FixedArray(rng.integers(-300, 300, (2, 2, 3, 3)), 7)
    gamma = FixedArray(rng.integers(-200, 200, 2), 7) if affine else None
    dx, dg, db = batchnorm2d_backward(x, e, mean, std, xhat, gamma)
    m = 18
    for c in range(2):
        gam = Fraction(int(gamma.q[c]), 2**7) if affine else Fraction(1)
        g = [Fraction(int(v), 2**11) * gam for v in e.q[:, c].ravel()]
        d = [Fraction(int(v), 2**14) - Fraction(int(mean.q[c]), 2**15) for v in x.q[:, c].ravel()]
        s = Fraction(int(std.q[c]), 2**15)
        mean_g = sum(g) / m
        mean_gd = sum(gi * di / s for gi, di in zip(g, d)) / m
        want = [ref.quantize((gi - mean_g - di / s * mean_gd) / s, Format(None, dx.frac_bits),
                             Rounding.HALF_EVEN, "SAT") for gi, di in zip(g, d)]
        assert dx.q[:, c].ravel().tolist() == want
        assert db.q[c] == e.q[:, c].sum() and db.frac_bits == 11
        assert dg.q[c] == int((e.q[:, c] * xhat.q[:, c]).sum()) and dg.frac_bits == 18
    assert dx.frac_bits == (7 if affine else 0) + DX_BITS - scale_exponent_of_ints(e.q, 11)


@given(seed=st.integers(0, 2**31), fx=st.integers(4, 16), fe=st.integers(0, 20),
       pow2_std=st.booleans(), n=st.integers(1, 4), affine=st.booleans())
def test_batchnorm_backward_fast_path_equals_the_exact_one(seed, fx, fe, pow2_std, n, affine):
    """The float estimate decides only where no half-integer is near (docs §10); everything else
    goes the exact way: the results equal computing every element on Python integers. Powers of
    two in std make exact ties common."""
    from wageubn_sim.engine.ops.batchnorm import batchnorm2d_backward
    from wageubn_sim.fixedpoint import FixedArray
    rng = np.random.default_rng(seed)
    shape = (n, 3, 4, 4)
    x = FixedArray(rng.integers(-2**14, 2**14, shape), fx)
    e = FixedArray(rng.integers(-256, 257, shape), fe)
    mean = FixedArray(rng.integers(-2**12, 2**12, 3), 15)
    std = FixedArray(2 ** rng.integers(4, 16, 3) if pow2_std else rng.integers(16, 2**16, 3), 15)
    xhat = FixedArray(rng.integers(-300, 300, shape), 7)
    gamma = FixedArray(rng.integers(-200, 200, 3), 7) if affine else None
    try:
        fast = batchnorm2d_backward(x, e, mean, std, xhat, gamma)
    except OverflowError:  # a dx beyond the domain (tiny std): both ways refuse it
        with pytest.raises(OverflowError):
            batchnorm2d_backward(x, e, mean, std, xhat, gamma, always_exact=True)
        return
    exact = batchnorm2d_backward(x, e, mean, std, xhat, gamma, always_exact=True)
    for a, b in zip(fast, exact):
        assert a.frac_bits == b.frac_bits and np.array_equal(a.q, b.q)


def test_batchnorm_backward_rounds_an_exact_tie_to_even():
    """x = (-17, -57) * 2**-4, error (-1, 2), mean 8 * 2**-4, std 64 * 2**-4: the first dx is
    exactly -14913/2 LSBs, a tie, which goes to the even -7456."""
    from wageubn_sim.engine.ops.batchnorm import batchnorm2d_backward
    from wageubn_sim.fixedpoint import FixedArray
    x = FixedArray(np.array([-17, -57]).reshape(2, 1, 1, 1), 4)
    e = FixedArray(np.array([-1, 2]).reshape(2, 1, 1, 1), 0)
    dx = batchnorm2d_backward(x, e, FixedArray(np.array([8]), 4), FixedArray(np.array([64]), 4),
                              FixedArray(np.zeros((2, 1, 1, 1), np.int64), 0))[0]
    assert dx.q[0, 0, 0, 0] == -7456


@given(num=st.integers(-2**130, 2**130), den=st.integers(1, 2**70))
def test_ratio_rounded_equals_reference(num, den):
    from wageubn_sim.fixedpoint.division import ratio_rounded
    assert ratio_rounded(num, den) == ref.round_fraction(Fraction(num, den), Rounding.HALF_EVEN)
    assert ratio_rounded(2 * num + den, 2 * den) == ref.round_fraction(Fraction(2 * num + den, 2 * den),
                                                                      Rounding.HALF_EVEN)  # ties


def _coarsest_grid(v):
    """The definition, searched: the first f in 0..60 on which every value is an integer,
    with the largest below 2**53 there."""
    if v.size == 0 or not np.all(np.isfinite(v)):
        return None
    for f in range(61):
        scaled = v * 2.0 ** f
        if np.abs(scaled).max() >= 2.0 ** 53:
            return None
        if np.array_equal(scaled, np.round(scaled)):
            return f
    return None


@given(q=st.lists(st.integers(-2**40, 2**40), min_size=1, max_size=20), shift=st.integers(-10, 70),
       odd=st.sampled_from([None, 2.0**-1074, 2.0**60, float("nan")]),
       dtype=st.sampled_from([np.float64, np.float32]))
def test_grid_integers_finds_the_coarsest_grid(q, shift, odd, dtype):
    from wageubn_sim.function.batchnorm import grid_integers
    v = np.array(q, np.float64) * 2.0 ** -shift
    if odd is not None:
        v[0] = odd
    v = v.astype(dtype).astype(np.float64)  # a float32 tensor holds the float32 values
    got, want = grid_integers(torch.from_numpy(v.astype(dtype))), _coarsest_grid(v)
    assert (got is None) == (want is None)
    if got is not None:
        ints, f = got
        assert f == want and ints.dtype == np.int64 and np.array_equal(ints * 2.0 ** -f, v)


@pytest.mark.parametrize("bits", [3, 31, 32, 40, 53, 61, 62])
def test_channel_sums_equal_python_integers_at_every_width(bits):
    """Sums and sums of products per channel, 128-bit or from 31-bit limbs where a product may
    leave int64, against Python integers; the rails of each width and the most negative value."""
    from wageubn_sim.engine.ops.batchnorm import channel_sums
    rng = np.random.default_rng(bits)
    limit = (1 << bits) - 1
    a = rng.integers(-limit, limit, (3, 4, 5, 6), dtype=np.int64, endpoint=True)
    b = rng.integers(-limit, limit, (3, 4, 5, 6), dtype=np.int64, endpoint=True)
    a[0, 0], b[0, 0] = -limit, -limit  # a channel of rails: the largest products
    a[0, 1], b[0, 1] = limit, -limit
    if bits >= 62:
        a[1, 2], b[1, 2] = -(1 << 61), -(1 << 61)
    sums, products = channel_sums(a, b)
    ao, bo = a.astype(object), b.astype(object)
    assert sums == [int(v) for v in ao.sum(axis=(0, 2, 3))]
    assert products == [int(v) for v in (ao * bo).sum(axis=(0, 2, 3))]


def test_channel_sums_refuse_values_beyond_two_limbs():
    from wageubn_sim.engine.ops.batchnorm import channel_sums
    a = np.zeros((1, 2, 1, 1), np.int64)
    a[0, 1] = 1 << 62
    with pytest.raises(OverflowError, match="2\\*\\*62"):
        channel_sums(a, a)
    assert channel_sums(np.zeros((0, 3, 2, 2), np.int64), np.zeros((0, 3, 2, 2), np.int64)) == ([0] * 3, [0] * 3)


def test_batchnorm_backward_of_an_empty_batch_is_empty():
    from wageubn_sim.engine.ops.batchnorm import batchnorm2d_backward
    from wageubn_sim.fixedpoint import FixedArray
    empty = FixedArray(np.zeros((0, 3, 4, 4), np.int64), 7)
    per_channel = FixedArray(np.ones(3, np.int64), 15)
    dx, d_gamma, d_beta = batchnorm2d_backward(empty, empty, per_channel, per_channel, empty, per_channel)
    assert dx.q.shape == (0, 3, 4, 4) and d_gamma.q.tolist() == d_beta.q.tolist() == [0, 0, 0]
