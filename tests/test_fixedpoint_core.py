"""The integer core and the float path against the Python-int reference of the contract."""
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, strategies as st
from strategies import dyadic_floats, edge_ints, formats, int_arrays, overflows, roundings, u32_words

from wageubn_sim.fixedpoint.arrays import requantize_flagged
from wageubn_sim.fixedpoint.floats import quantize_events
from wageubn_sim.fixedpoint import (Format, Overflow, Rounding, quantize, quantize_to_grid,
                                    reference as ref, requantize, requantize_scalar)

MODES = list(Rounding)


def ref_requantize_all(q, frac_in, fmt, rounding, overflow, u):
    words = [None] * len(q) if u is None else [int(w) for w in u]
    return [ref.requantize(int(v), frac_in, fmt, rounding, overflow, w) for v, w in zip(q, words)]


@given(data=st.data(), q=int_arrays(), frac_in=st.integers(-8, 70), fmt=formats(),
       rounding=roundings, overflow=overflows)
def test_requantize_equals_reference(data, q, frac_in, fmt, rounding, overflow):
    u = data.draw(u32_words(len(q))) if rounding == Rounding.STOCHASTIC else None
    got = requantize(q, frac_in, fmt, rounding, overflow, u)
    assert got.dtype == np.int64 and got.shape == q.shape
    assert got.tolist() == ref_requantize_all(q, frac_in, fmt, rounding, overflow, u)


@pytest.mark.parametrize("rounding", MODES)
@pytest.mark.parametrize("shift", [1, 2, 7, 31, 32, 33, 61, 62, 63, 64, 100])
def test_exact_ties_and_neighbours(rounding, shift):
    """q = (2j+1) * 2**(shift-1) +- 1 around every tie, for several j of both signs."""
    fmt = Format(None, 0)
    base = [(2 * j + 1) << (shift - 1) for j in (-3, -2, -1, 0, 1, 2)] if shift < 60 else [1 << 59]
    q = np.array([b + d for b in base for d in (-1, 0, 1) if abs(b + d) < 2**61], dtype=np.int64)
    u = np.full(q.shape, 2**31, dtype=np.uint32)  # u = 1/2: SR ties on exact halves
    got = requantize(q, shift, fmt, rounding, Overflow.SAT, u if rounding == Rounding.STOCHASTIC else None)
    want = ref_requantize_all(q, shift, fmt, rounding, Overflow.SAT,
                              u if rounding == Rounding.STOCHASTIC else None)
    assert got.tolist() == want


def test_half_even_ties_concrete():
    # 0.5 -> 0, 1.5 -> 2, 2.5 -> 2, -0.5 -> 0, -1.5 -> -2, -2.5 -> -2
    q = np.array([1, 3, 5, -1, -3, -5])
    assert requantize(q, 1, Format(None, 0)).tolist() == [0, 2, 2, 0, -2, -2]
    assert requantize(q, 1, Format(None, 0), "HALF_UP").tolist() == [1, 2, 3, 0, -1, -2]
    assert requantize(q, 1, Format(None, 0), "HALF_AWAY").tolist() == [1, 2, 3, -1, -2, -3]
    assert requantize(q, 1, Format(None, 0), "FLOOR").tolist() == [0, 1, 2, -1, -2, -3]
    assert requantize(q, 1, Format(None, 0), "TOWARD_ZERO").tolist() == [0, 1, 2, 0, -1, -2]


@pytest.mark.parametrize("bits", [2, 8, 16, 32, 62])
@pytest.mark.parametrize("overflow", list(Overflow))
def test_most_negative_and_extremes(bits, overflow):
    fmt = Format(bits, 0)
    lo, hi = fmt.min_int, fmt.max_int
    q = np.array([lo, lo - 1, lo + 1, hi, hi + 1, 0, -1], dtype=np.int64)
    q = q[(q >= -2**61) & (q < 2**61)]  # the domain: the range of s62
    got = requantize(q, 0, fmt, "HALF_EVEN", overflow)
    assert got.tolist() == ref_requantize_all(q, 0, fmt, Rounding.HALF_EVEN, overflow, None)
    if overflow == Overflow.SAT_SYM:
        assert got.min() >= -hi  # the most negative value is never produced
    if overflow == Overflow.WRAP and bits < 61:
        assert got.tolist()[:2] == [lo, hi]  # lo - 1 wraps to the top


@pytest.mark.parametrize("overflow", list(Overflow))
@given(q=edge_ints(), shift=st.sampled_from([0, 1, 8, 31, 32, 61, 62, 63, 64, 200]), fmt=formats())
def test_left_shift_saturates_beyond_int64(overflow, q, shift, fmt):
    got = requantize_scalar(q, -shift, fmt.bits, fmt.signed, 0, int(overflow), 0)
    want = ref.requantize(q, 0, Format(fmt.bits, shift, fmt.signed), Rounding.HALF_EVEN, overflow)
    assert got == want


def test_unbounded_left_shift_out_of_domain_raises():
    with pytest.raises(OverflowError):
        requantize(np.array([3]), -60, Format(None, 0))


def test_empty_and_zero_tensors():
    assert requantize(np.zeros(0, np.int64), 5, Format(8, 0)).shape == (0,)
    assert requantize(np.zeros((2, 3), np.int64), 70, Format(8, 0), "FLOOR").tolist() == [[0] * 3] * 2
    assert quantize(np.zeros(0), Format(8, 7)).shape == (0,)


@given(x=dyadic_floats(), fmt=formats(unbounded=True), rounding=roundings, overflow=overflows,
       data=st.data())
def test_quantize_float_equals_reference(x, fmt, rounding, overflow, data):
    u = data.draw(u32_words(len(x))) if rounding == Rounding.STOCHASTIC else None
    words = [None] * len(x) if u is None else [int(w) for w in u]
    want = [ref.quantize(float(v), fmt, rounding, overflow, w) for v, w in zip(x, words)]
    if any(abs(v) >= 2**61 for v in want):  # outside the core's domain (unbounded formats)
        with pytest.raises(OverflowError, match="62 bits"):
            quantize(x, fmt, rounding, overflow, u)
    else:
        assert quantize(x, fmt, rounding, overflow, u).tolist() == want


@given(q=int_arrays(limit_bits=52), frac_in=st.integers(-8, 40), fmt=formats(),
       rounding=roundings, overflow=overflows, data=st.data())
def test_float_grid_equals_integer_requantize(q, frac_in, fmt, rounding, overflow, data):
    """The float path (what torch runs) on q * 2**-frac_in equals the integer requantize."""
    u = data.draw(u32_words(len(q))) if rounding == Rounding.STOCHASTIC else None
    x = q.astype(np.float64) * 2.0 ** -frac_in
    grid = quantize_to_grid(x, fmt, rounding, overflow, u)
    assert grid.tolist() == requantize(q, frac_in, fmt, rounding, overflow, u).tolist()


@given(q=int_arrays(limit_bits=52), frac_in=st.integers(-8, 40), fmt=formats(),
       rounding=roundings, overflow=overflows, out_frac=st.integers(-4, 40),
       clip=st.sampled_from([None, (-128, 128), (-3, 0)]),
       dtype=st.sampled_from([np.float64, np.float32]), on_torch=st.booleans(), data=st.data())
def test_fake_quantize_equals_the_float_path(q, frac_in, fmt, rounding, overflow, out_frac, clip,
                                             dtype, on_torch, data):
    """The fused pass (numpy or torch, float32 or float64) equals quantize_to_grid, clamped,
    scaled by 2**-out_frac and cast to the input's dtype, value for value."""
    import torch
    from wageubn_sim.fixedpoint.floats import fake_quantize
    u = data.draw(u32_words(len(q))) if rounding == Rounding.STOCHASTIC else None
    x = (q.astype(np.float64) * 2.0 ** -frac_in).astype(dtype)
    if len(x) > 2:  # the values the fused pass hands to the general path: inf and huge ones
        x[0], x[1] = data.draw(st.sampled_from([np.inf, -np.inf, np.finfo(dtype).max, x[0]])), -x[1]
    with np.errstate(invalid="ignore", over="ignore"):  # inf - floor(inf) in the float path
        n = quantize_to_grid(x, fmt, rounding, overflow, u)
        if clip is not None:
            n = np.clip(n, *clip)
        want = (n * 2.0 ** -out_frac).astype(dtype)
        got = fake_quantize(torch.from_numpy(x) if on_torch else x, fmt, rounding, overflow, u,
                            out_frac=out_frac, clip=clip)
    got = got.numpy() if on_torch else got
    assert got.dtype == dtype and got.shape == x.shape
    np.testing.assert_array_equal(got, want)


def test_fake_quantize_refuses_what_the_float_path_refuses():
    from wageubn_sim.fixedpoint.floats import fake_quantize
    tiny = np.array([0.0, 2.0 ** -1000], np.float64)  # scaled by 2**-40: below the normal range
    for fn in (quantize_to_grid, fake_quantize):
        with pytest.raises(ValueError, match="normal range"):
            fn(tiny, Format(None, -40))
    with pytest.raises(ValueError, match="random words"):
        fake_quantize(np.ones(2), Format(8, 2), "STOCHASTIC")


def test_stochastic_rounding_frequency_tracks_fraction():
    from wageubn_sim.fixedpoint import random_u32
    n = 40000
    q = np.full(n, 3 * 4 + 1, dtype=np.int64)  # 3.25 at frac 2
    up = requantize(q, 2, Format(None, 0), "STOCHASTIC", u=random_u32(7, 0, n))
    assert set(up.tolist()) == {3, 4}
    assert abs((up == 4).mean() - 0.25) < 0.01
    neg = requantize(-q, 2, Format(None, 0), "STOCHASTIC", u=random_u32(7, 0, n))
    assert neg.tolist() == (-up).tolist()  # sign-magnitude: symmetric


def test_stochastic_rounding_equal_word_goes_to_even():
    # 2.5 and 3.5 with u = 1/2 exactly: to even (2 and 4), like the official +0.5 then RNE
    u = np.array([2**31, 2**31], dtype=np.uint32)
    assert requantize(np.array([5, 7]), 1, Format(None, 0), "STOCHASTIC", u=u).tolist() == [2, 4]
    # an exact integer never moves, whatever the word
    assert requantize(np.array([12]), 1, Format(None, 0), "STOCHASTIC",
                      u=np.array([0], np.uint32)).tolist() == [6]


@pytest.mark.parametrize("bad", [
    lambda: Format(0, 0), lambda: Format(1, 0, True), lambda: Format(63, 0),
    lambda: Format(8, 2000), lambda: Format(8.0, 3), lambda: Format.from_seed(0, 8),
    lambda: Format.from_seed(8, 0),
])
def test_bad_formats_raise_clear_errors(bad):
    with pytest.raises((ValueError, TypeError), match="bits|k_dec|k_all|frac_bits"):
        bad()


def test_bad_modes_and_inputs():
    with pytest.raises(ValueError, match="unknown rounding mode 'nearest'.*HALF_EVEN"):
        Rounding.parse("nearest")
    with pytest.raises(ValueError, match="unknown overflow mode"):
        Overflow.parse("clip")
    with pytest.raises(ValueError, match="NaN or Inf"):
        quantize(np.array([1.0, np.nan]), Format(8, 7))
    with pytest.raises(ValueError, match="random words"):
        requantize(np.array([1]), 1, Format(8, 0), "STOCHASTIC")
    with pytest.raises(ValueError, match="shape"):
        requantize(np.array([1, 2]), 1, Format(8, 0), "STOCHASTIC", u=np.zeros(3, np.uint32))
    with pytest.raises(TypeError, match="integers"):
        requantize(np.array([1.5]), 1, Format(8, 0))
    with pytest.raises(OverflowError, match="2\\*\\*61"):
        requantize(np.array([2**62]), 1, Format(8, 0))


def test_mode_aliases_and_table():
    from wageubn_sim.fixedpoint import MODE_NAMES
    assert Rounding.parse("AP_RND_CONV") is Rounding.HALF_EVEN
    assert Rounding.parse("trn_zero") is Rounding.TOWARD_ZERO
    assert Overflow.parse("AP_SAT_SYM") is Overflow.SAT_SYM
    assert set(MODE_NAMES[Rounding]) == set(Rounding)
    assert set(MODE_NAMES[Overflow]) == set(Overflow)
    for table in MODE_NAMES.values():
        assert all(set(v) == {"ap_fixed", "APyTypes", "MATLAB", "QONNX"} for v in table.values())


def test_qonnx_names_follow_qonnx_rounding_table():
    """The rounding table of QONNX's Quant op (its docs/qonnx-custom-ops/quant_op.md): each of our
    modes named there gives that column."""
    from fractions import Fraction

    from wageubn_sim.fixedpoint import MODE_NAMES
    from wageubn_sim.fixedpoint.reference import round_fraction
    values = ["5.5", "2.5", "1.6", "1.1", "1.0", "-1.0", "-1.1", "-1.6", "-2.5", "-5.5"]
    qonnx = {"ROUND": [6, 2, 2, 1, 1, -1, -1, -2, -2, -6],
             "FLOOR": [5, 2, 1, 1, 1, -1, -2, -2, -3, -6],
             "DOWN": [5, 2, 1, 1, 1, -1, -1, -1, -2, -5],
             "HALF_UP": [6, 3, 2, 1, 1, -1, -1, -2, -3, -6]}
    named = {names["QONNX"]: mode for mode, names in MODE_NAMES[Rounding].items() if names["QONNX"]}
    assert set(named) == set(qonnx)
    for name, column in qonnx.items():
        assert [round_fraction(Fraction(v), named[name]) for v in values] == column, name
    # ap_fixed's AP_RND (our HALF_UP) differs from QONNX's HALF_UP at -2.5: no QONNX name
    assert round_fraction(Fraction("-2.5"), Rounding.HALF_UP) == -2


def test_seed_widths_map_to_formats():
    fmt = Format.from_seed(8, 12)
    assert (fmt.bits, fmt.frac_bits, fmt.signed, fmt.int_bits) == (12, 7, True, 5)
    assert Format.from_seed(8).bits is None
    assert ref.quantize(Fraction(5, 256), Format.from_seed(8, 8), Rounding.HALF_EVEN,
                        Overflow.SAT_SYM) == 2  # 2.5 LSB -> 2


@given(q=int_arrays(), frac_in=st.integers(-70, 70), fmt=formats(), overflow=overflows,
       rounding=st.sampled_from([r for r in Rounding if r != Rounding.STOCHASTIC]))
def test_flags_and_counts_mark_ties_overflow_and_underflow(q, frac_in, fmt, overflow, rounding):
    from fractions import Fraction as Fr

    from wageubn_sim.fixedpoint.scalar import OVERFLOWED, TIE
    from wageubn_sim.fixedpoint.arrays import requantize_counted
    out, flags, counts = requantize_counted(q, frac_in, fmt, rounding, overflow)
    ties = overflowed = underflows = 0
    for v, o, f in zip(q.tolist(), out.tolist(), flags.tolist()):
        exact = Fr(v) * Fr(2) ** (fmt.frac_bits - frac_in)
        tie = exact - (exact.numerator // exact.denominator) == Fr(1, 2)
        assert bool(f & TIE) == tie
        rounded = ref.round_fraction(exact, rounding)
        over = (ref.overflow_int(rounded, fmt, overflow) != rounded
                or (overflow == Overflow.SAT_SYM and fmt.signed and rounded == fmt.min_int))
        assert bool(f & OVERFLOWED) == over
        assert o == ref.overflow_int(rounded, fmt, overflow)
        ties, overflowed = ties + tie, overflowed + over
        underflows += o == 0 and v != 0 and not over
    assert counts == {"ties": ties, "overflowed": overflowed, "underflows": underflows}


def test_value_range_edges():
    from wageubn_sim.fixedpoint.arrays import magnitude_max, value_range
    assert value_range(np.zeros(0, np.int64)) == (0, 0) and magnitude_max(np.zeros((0, 3))) == 0
    most_negative = np.array([5, -2**63, 7], np.int64)
    assert value_range(most_negative) == (-2**63, 7)
    assert magnitude_max(most_negative) == 2**63  # a Python int: no int64 wrap
    assert magnitude_max(np.array([[-3], [2]], np.int8)) == 3


def test_float_parity_edges_numpy_and_torch():
    import torch
    from wageubn_sim.fixedpoint.floats import is_odd
    values = [0.0, -0.0, 1.0, -1.0, 2.0, -3.0, 2.0**52 - 1, 2.0**52, 2.0**53 - 1, -(2.0**53 - 1),
              2.0**53, 2.0**60, -(2.0**62)]
    want = [abs(int(v)) % 2 == 1 for v in values]
    assert is_odd(np.array(values)).tolist() == want
    assert is_odd(torch.tensor(values, dtype=torch.float64)).tolist() == want


@given(p=edge_ints(60), d=st.integers(1, 2**60), rounding=st.sampled_from(
    [r for r in Rounding if r != Rounding.STOCHASTIC]))
def test_divide_rounded_equals_reference(p, d, rounding):
    from wageubn_sim.fixedpoint.division import divide_rounded
    assert divide_rounded(p, d, int(rounding)) == ref.round_fraction(Fraction(p, d), rounding)


@given(x=dyadic_floats(mant_bits=52, exp_range=(-60, 960)),
       fmt=formats(max_bits=62, min_frac=-40, max_frac=70), rounding=roundings,
       overflow=overflows, data=st.data())
def test_quantize_is_exact_in_every_width(x, fmt, rounding, overflow, data):
    """Formats up to 62 bits (float64 cannot hold their rails beyond 54), values up to 2**1012
    once scaled (beyond float64's range: they must still saturate and wrap exactly)."""
    u = data.draw(u32_words(len(x))) if rounding == Rounding.STOCHASTIC else None
    words = [None] * len(x) if u is None else [int(w) for w in u]
    with np.errstate(all="raise"):  # no overflow or invalid value on the way
        got = quantize(x, fmt, rounding, overflow, u).tolist()
    assert got == [ref.quantize(float(v), fmt, rounding, overflow, w) for v, w in zip(x, words)]


def test_quantize_wide_formats_at_the_rails():
    """The issue's cases: s55 saturated 2**54 (above its maximum), s62 raised OverflowError."""
    assert quantize(np.array([1e30]), Format(55, 0), "HALF_EVEN", "SAT").tolist() == [2**54 - 1]
    assert quantize(np.array([1e30, -1e30]), Format(62, 0), "HALF_EVEN", "SAT").tolist() == [2**61 - 1, -2**61]
    assert quantize(np.array([-1e30]), Format(62, 0), "HALF_EVEN", "SAT_SYM").tolist() == [-2**61 + 1]
    assert quantize(np.array([1e30]), Format(61, 0, False), "HALF_EVEN", "SAT").tolist() == [2**61 - 1]
    assert quantize(np.array([-1.0]), Format(61, 0, False), "HALF_EVEN", "WRAP").tolist() == [2**61 - 1]
    # 1e308 * 2**20 is beyond float64: a multiple of 2**63, so it saturates and wraps to 0
    assert quantize(np.array([1e308]), Format(16, 20), "HALF_EVEN", "WRAP").tolist() == [0]
    assert quantize(np.array([-1e308]), Format(16, 20), "HALF_EVEN", "SAT").tolist() == [-2**15]
    with pytest.raises(OverflowError, match="more than 62 bits"):
        quantize(np.array([1e308]), Format(None, 20))
    assert quantize(np.array([-2.0**61]), Format(None, 0)).tolist() == [-2**61]  # in the domain
    with pytest.raises(OverflowError):
        quantize(np.array([2.0**61]), Format(None, 0))


def test_the_domain_is_the_range_of_s62():
    assert requantize(np.array([-2**61, 2**61 - 1]), 0, Format(62, 0)).tolist() == [-2**61, 2**61 - 1]
    assert requantize(np.array([-2**61]), 3, Format(None, 0), "FLOOR").tolist() == [-2**58]
    for outside in (-2**61 - 1, 2**61):
        with pytest.raises(OverflowError, match="2\\*\\*61"):
            requantize(np.array([outside]), 0, Format(62, 0))
    assert requantize_scalar(-2**60, -1, 0, True, 0, int(Overflow.SAT), 0) == -2**61  # unbounded
    with pytest.raises(ValueError, match="unsigned format needs 1 to 61 bits"):
        Format(62, 0, signed=False)
    with pytest.raises(TypeError, match="signed"):
        Format(8, 0, signed=1)


@pytest.mark.parametrize("fmt,ok", [(Format(54, 0), True), (Format(55, 0), False),
                                    (Format(53, 0, False), True), (Format(54, 0, False), False),
                                    (Format(None, 0), True)])
def test_float_path_refuses_formats_it_cannot_hold(fmt, ok):
    import torch
    x = np.array([1e300, -1e300, 2.0**52 + 1, -3.0])
    for arr in (x, torch.from_numpy(x)):
        if ok:
            want = quantize(np.clip(x, -2.0**60, 2.0**60), fmt, "HALF_EVEN", "WRAP")
            got = quantize_to_grid(np.clip(x, -2.0**60, 2.0**60), fmt, "HALF_EVEN", "WRAP")
            assert got.tolist() == want.tolist()
        else:
            with pytest.raises(ValueError, match="float path is exact up to s54 and u53"):
                quantize_to_grid(arr, fmt)


def test_subnormal_scaled_values_raise():
    """x * 2**f below 2**-1022 may have been rounded by the scaling: FLOOR of -2**-1075 would
    give 0 instead of -1. Refused, in the integer and the float path; zeros are fine."""
    import torch
    tiny = np.array([-2.0**-1074])
    for fn in (quantize, quantize_to_grid):
        with pytest.raises(ValueError, match="normal range"):
            fn(tiny, Format(8, -1), "FLOOR")
        with pytest.raises(ValueError, match="normal range"):
            fn(np.array([0.0, 1e-300]), Format(8, -30))
        assert fn(np.array([0.0, -0.0]), Format(8, -30)).tolist() == [0, 0]
    with pytest.raises(ValueError, match="normal range"):
        quantize_to_grid(torch.tensor([1e-300], dtype=torch.float64), Format(8, -30))
    # a subnormal x scaled up into the normal range is exact, and kept
    assert quantize(np.array([-2.0**-1073, 2.0**-1073]), Format(None, 1000), "FLOOR").tolist() == [-1, 0]


@pytest.mark.parametrize("rounding", MODES)
def test_most_negative_domain_value_at_every_large_shift(rounding):
    """-2**61 (in the domain: s62's minimum) shifted by 62 is exactly -1/2, a tie."""
    q = np.array([-2**61, -2**61 + 1, 2**61 - 1], dtype=np.int64)
    u = np.array([0, 2**31, 2**32 - 1], np.uint32) if rounding == Rounding.STOCHASTIC else None
    for shift in (59, 60, 61, 62, 63, 64):
        got, flags = requantize_flagged(q, shift, Format(None, 0), rounding, Overflow.SAT, u)
        assert got.tolist() == ref_requantize_all(q, shift, Format(None, 0), rounding, Overflow.SAT, u)
        assert bool(flags[0] & 1) == (shift == 62)  # the tie (SR flags it too: an exact half)


@pytest.mark.parametrize("fmt", [Format(54, 0), Format(53, 0, signed=False), Format(8, 0), Format(2, 0)])
def test_the_one_pass_wrap_is_exact_at_the_widest_formats(fmt):
    """WRAP in the fused float pass (`quantize`, `fake_quantize`) at the widest formats the float
    path holds: remainders near the modulus, the rails, their neighbours, multiples."""
    m = 1 << fmt.bits
    ints = [0, 1, -1, -3, 3, m // 2 - 1, m // 2, -(m // 2), -(m // 2) - 1, m - 2, m, -m + 2,
            3 * m, -5 * m + 4, 2**53, -(2**53), 2**60 + 2**8]
    x = np.array(ints, dtype=np.float64)
    exact = [v for v in ints if float(v) == v]  # those a float64 holds
    want = [ref.quantize(float(v), fmt, Rounding.HALF_EVEN, Overflow.WRAP) for v in exact]
    got = quantize(np.array(exact, np.float64), fmt, "HALF_EVEN", "WRAP")
    assert got.tolist() == want
    from wageubn_sim.fixedpoint.floats import fake_quantize
    assert fake_quantize(x, fmt, "HALF_EVEN", "WRAP", out_frac=0).tolist() == \
        quantize_to_grid(x, fmt, "HALF_EVEN", "WRAP").tolist()


# ---- quantize_events: what the input register meets, before its fit ---------------------------

def _events_reference(x, fmt, rounding):
    """Per value, in exact rationals: the rounded integer, a tie, an overflow, an underflow."""
    out = []
    for v in x.tolist():
        scaled = Fraction(v) * Fraction(2) ** fmt.frac_bits
        r = ref.round_fraction(scaled, rounding)
        tie = scaled - (scaled.numerator // scaled.denominator) == Fraction(1, 2)
        over = fmt.bounded and not fmt.min_int <= r <= fmt.max_int
        out.append((max(-2**61, min(2**61 - 1, r)), tie, over, r == 0 and v != 0))
    return out


@given(x=dyadic_floats(mant_bits=52, exp_range=(-60, 70)), fmt=formats(max_bits=62, unbounded=True),
       rounding=st.sampled_from([r for r in Rounding if r != Rounding.STOCHASTIC]))
def test_quantize_events_equal_their_definition(x, fmt, rounding):
    """The values before the fit (clipped to the 62-bit domain), ties, overflows and underflows,
    against exact rationals, in every width: the rails of s62 included."""
    rounded, counts = quantize_events(x, fmt, rounding)
    want = _events_reference(x, fmt, rounding)
    assert rounded.tolist() == [r for r, *_ in want]
    assert counts == {"ties": sum(t for _, t, _, _ in want), "overflowed": sum(o for _, _, o, _ in want),
                      "underflows": sum(u for *_, u in want)}


def test_quantize_events_at_the_edges():
    fmt = Format(8, 0)  # -128 .. 127
    rounded, counts = quantize_events(np.array([127.5, 126.5, -128.5, -128.0, 0.5, -0.5, 0.0, 1e300]), fmt)
    # 127.5 rounds to 128 (even): beyond the rail; 126.5 to 126; -128.5 to -128 (even): inside
    assert rounded.tolist() == [128, 126, -128, -128, 0, 0, 0, 2**61 - 1]
    assert counts == {"ties": 5, "overflowed": 2, "underflows": 2}
    assert quantize_events(np.zeros((0, 3)), fmt)[1] == {"ties": 0, "overflowed": 0, "underflows": 0}
    assert quantize_events(np.zeros((2, 3)), fmt)[1] == {"ties": 0, "overflowed": 0, "underflows": 0}
    with pytest.raises(ValueError, match="NaN or Inf"):
        quantize_events(np.array([np.inf]), fmt)
    with pytest.raises(ValueError, match="random words"):
        quantize_events(np.array([1.0]), fmt, "STOCHASTIC")
