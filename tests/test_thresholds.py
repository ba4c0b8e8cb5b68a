"""Float chains as hardware computes them (docs/arithmetic.md section 12): integer thresholds
against the chain's exact evaluation at every integer of a range, the thresholds op against its
definition, the fixed-point rescale (single and TFLite's double rounding) against Python-int
references, gemmlowp's primitives at their edges."""
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from wageubn_sim.engine.ops.rescale import RescaleParams, rescale, rescale_reference
from wageubn_sim.engine.ops.thresholds import ThresholdsParams, count_levels, prepared_rows, thresholds
from wageubn_sim.fixedpoint import Format, Overflow, Rounding
from wageubn_sim.fixedpoint import reference as ref
from wageubn_sim.fixedpoint.chains import (Affine, Clamp, Normalize, Quantizer, direction, evaluate,
                                           float_thresholds, level_boundary, thresholds_of_reals,
                                           thresholds as chain_thresholds)
from wageubn_sim.fixedpoint.scalar import rounding_divide_by_pot, saturating_rounding_doubling_high_mul

ROUNDINGS = [Rounding.HALF_EVEN, Rounding.HALF_UP, Rounding.HALF_AWAY, Rounding.FLOOR, Rounding.TOWARD_ZERO]
SLOW = settings(max_examples=max(10, settings.default.max_examples // 3), deadline=None)


def f32(x) -> Fraction:
    """A float32 parameter as the exact binary fraction it is."""
    return Fraction(float(np.float32(x)))


@st.composite
def float32s(draw, low=-20, high=20, signed=True):
    exponent = draw(st.floats(low, high))
    mantissa = draw(st.floats(1, 2, exclude_max=True))
    sign = draw(st.sampled_from([-1, 1])) if signed else 1
    return f32(sign * mantissa * 2.0 ** exponent)


@st.composite
def chains(draw):
    """(stages, quantizer, lo, hi): a random monotone chain over the integers lo..hi whose
    quantizer's scale is set so that the range crosses its levels (a dyadic scale now and then,
    so that boundaries land on integers and ties happen)."""
    lo = draw(st.integers(-2000, 0))
    hi = lo + draw(st.integers(0, 3000))
    stages = []
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["affine", "affine", "normalize", "relu", "clip"]))
        if kind == "affine":
            dyadic = draw(st.booleans())
            a = draw(st.sampled_from([-1, 1])) * Fraction(2) ** -draw(st.integers(-3, 6)) if dyadic else draw(float32s())
            b = Fraction(draw(st.integers(-64, 64)), 8) if dyadic else draw(float32s())
            stages.append(Affine((a,), (b * draw(st.sampled_from([0, 1])),)))
        elif kind == "normalize" and not any(isinstance(s, Normalize) for s in stages):
            square = draw(st.booleans())  # a square denominator keeps the chain rational
            d = Fraction(draw(st.integers(1, 12)) ** 2, 4) if square else draw(float32s(-8, 8, signed=False))
            stages.append(Normalize((draw(float32s()),), (draw(float32s(-4, 4)),), (draw(float32s()),), (d,)))
        elif kind == "relu":
            stages.append(Clamp(Fraction(0), None))
        else:
            bound = draw(float32s(-6, 6, signed=False))
            stages.append(Clamp(-bound if draw(st.booleans()) else Fraction(0), bound))
    bits = draw(st.integers(1, 8))
    signed = draw(st.booleans()) and bits >= 2
    narrow = signed and draw(st.booleans())
    q_min = (-(1 << (bits - 1)) + narrow) if signed else 0
    q_max = (1 << (bits - 1)) - 1 if signed else (1 << bits) - 1
    values = [_real(stages, x) for x in np.linspace(lo, hi, 33)]
    span = max(max(values) - min(values), 1e-30)
    levels = max(q_max - q_min, 1)
    if draw(st.booleans()):
        scale = Fraction(2) ** round(np.log2(span / levels))
    else:
        scale = f32(span / levels * draw(st.floats(0.25, 4)))
    # a zero point that puts the values' range on the levels (now and then none)
    zero = int(np.clip(q_min - round(min(values) / float(scale)), -2**20, 2**20)) if draw(st.booleans()) else 0
    rounding = draw(st.sampled_from(ROUNDINGS))
    return stages, Quantizer((scale,), (zero,), q_min, q_max, rounding), lo, hi


def _real(stages, x) -> float:
    """The chain's value at x in float64 (to pick a quantizer that the range crosses)."""
    y = float(x)
    for stage in stages:
        if isinstance(stage, Affine):
            y = float(stage.a[0]) * y + float(stage.b[0])
        elif isinstance(stage, Normalize):
            y = (y - float(stage.mean[0])) * float(stage.gamma[0]) / float(stage.denominator[0]) ** 0.5 \
                + float(stage.beta[0])
        else:
            y = max(y, float(stage.lo)) if stage.lo is not None else y
            y = min(y, float(stage.hi)) if stage.hi is not None else y
    return y


@SLOW
@given(case=chains())
def test_thresholds_equal_the_exact_chain_at_every_integer(case):
    stages, quantizer, lo, hi = case
    sign, table = chain_thresholds(stages, quantizer, 0, lo, hi)
    assert sign == direction(stages, 0) and table == sorted(table)
    xs = np.arange(lo, hi + 1)
    got = quantizer.q_min + np.searchsorted(np.array(table), sign * xs, side="right")
    want = [evaluate(stages, quantizer, 0, int(x)) for x in xs]
    assert got.tolist() == want


def test_level_boundaries_follow_each_rounding_at_its_ties():
    for level in range(-4, 5):
        for rounding in ROUNDINGS:
            u, strict = level_boundary(level, rounding)
            for v in (u - Fraction(1, 1000), u, u + Fraction(1, 1000)):
                reached = ref.round_fraction(v, rounding) >= level
                assert reached == (v > u or (v == u and not strict)), (level, rounding, v)


def test_a_batchnorm_square_root_is_kept_exact():
    """gamma / sqrt(2) puts each boundary on an irrational point: no integer is a tie, and the
    thresholds fall where exact arithmetic puts them (float64 of sqrt(2) would move none here,
    but the exact comparison is what decides)."""
    stages = [Normalize((0,), (1,), (0,), (2,))]
    quantizer = Quantizer((Fraction(1, 10),), (0,), -128, 127, Rounding.HALF_EVEN)
    sign, table = chain_thresholds(stages, quantizer, 0, -200, 200)
    for x in range(-200, 201):
        assert -128 + sum(sign * x >= t for t in table) == evaluate(stages, quantizer, 0, x)
    with pytest.raises(ValueError, match="two square roots"):
        chain_thresholds(stages * 2, quantizer, 0, -5, 5)


@given(seed=st.integers(0, 2**31), channels=st.integers(1, 5), levels=st.integers(0, 20),
       batch=st.integers(0, 3), shared=st.booleans(), step=st.sampled_from([1, 2, 3]))
def test_the_thresholds_op_counts_the_thresholds_reached(seed, channels, levels, batch, shared, step):
    rng = np.random.default_rng(seed)
    rows = 1 if shared else channels
    table = np.sort(rng.integers(-2**61, 2**61, (rows, levels)), axis=1)
    table[:, : levels // 2] = np.sort(rng.integers(-50, 50, (rows, levels // 2)), axis=1)
    table = np.sort(table, axis=1)
    signs = rng.choice([-1, 1], rows)
    x = rng.integers(-60, 60, (batch, channels, 3, 2))
    x.reshape(-1)[:2] = [-2**61, 2**61 - 1][: x.size]  # the domain's ends
    p = ThresholdsParams(Format(8, 0), -100, 3, step)
    out = thresholds(x, 3, table, signs, p, trace=True)
    for idx in np.ndindex(x.shape):
        row = 0 if shared else idx[1]
        assert out.q[idx] == -100 + step * int(np.count_nonzero(signs[row] * int(x[idx]) >= table[row]))
    assert out.fmt == p.out_fmt and out.q.shape == x.shape


@given(seed=st.integers(0, 2**31), levels=st.integers(1, 40), spread=st.sampled_from([1, 3, 50, 10**6]),
       repeats=st.booleans(), shift=st.sampled_from([0, 2**40, -2**60]))
def test_bucketed_rows_count_as_the_search_does(seed, levels, spread, repeats, shift):
    """A prepared row's buckets (at most one distinct threshold each) give the count a search
    gives, at the thresholds, between them, far beyond both ends, with repeated thresholds."""
    rng = np.random.default_rng(seed)
    row = np.sort(rng.integers(0, spread * levels + 1, levels)) + shift
    if repeats and levels > 2:
        row[1] = row[0]
        row[-2] = row[-1]
    blocks, starts = prepared_rows(row[None, :])
    if np.unique(row).size >= 2 and spread * levels < 4000:
        assert blocks[0] > 0  # buckets, not a search
    x = np.concatenate([row, row - 1, row + 1, rng.integers(row[0] - 5 * spread, row[-1] + 5 * spread, 50),
                        [-2**61, 2**61 - 1]]).reshape(1, 1, -1)
    for sign in (1, -1):
        got = count_levels(x, row[None, :], np.array([sign]), 7)
        want = 7 + np.searchsorted(row, sign * x, side="right")
        assert np.array_equal(got, want)


def test_the_thresholds_op_refuses_what_it_cannot_compute():
    p = ThresholdsParams(Format(4, 0), 0, 0)
    x = np.zeros((1, 2, 2))
    with pytest.raises(ValueError, match="must not decrease"):
        thresholds(x, 0, np.array([[3, 1]]), np.array([1]), p)
    with pytest.raises(ValueError, match="made for 2\\*\\*-0"):
        thresholds(x, 2, np.array([[1, 3]]), np.array([1]), p)
    with pytest.raises(ValueError, match="leave out_fmt s4.0"):
        thresholds(x, 0, np.zeros((1, 8), np.int64), np.array([1]), p)
    with pytest.raises(ValueError, match="must be a bounded format"):
        ThresholdsParams(Format(None, 0), 0, 0)
    with pytest.raises(ValueError, match="step=0 must be positive"):
        ThresholdsParams(Format(4, 0), 0, 0, 0)
    with pytest.raises(ValueError, match="4 levels above -7 leave out_fmt s4.0"):  # -7 + 4 * 4 = 9 > 7
        thresholds(x, 0, np.zeros((1, 4), np.int64), np.array([1]), ThresholdsParams(Format(4, 0), -7, 0, 4))


# ---- the fixed-point rescale ----------------------------------------------------------------

EDGES = [0, 1, -1, 2**31 - 1, -2**31, 2**30, -2**30, 12345, -12345]


def test_gemmlowp_primitives_at_their_edges():
    for a in EDGES:
        for b in EDGES:
            assert saturating_rounding_doubling_high_mul(a, b) == ref.saturating_rounding_doubling_high_mul(a, b)
    assert ref.saturating_rounding_doubling_high_mul(-2**31, -2**31) == 2**31 - 1  # the one overflow
    assert ref.saturating_rounding_doubling_high_mul(1, 2**30) == 1  # 0.5 -> 1, -0.5 -> 0: ties up
    assert ref.saturating_rounding_doubling_high_mul(-1, 2**30) == 0
    assert ref.saturating_rounding_doubling_high_mul(-3, 2**30) == -1  # -1.5 -> -1
    for x in EDGES + [3, -3, 5, -5, 6, -6]:
        for e in (0, 1, 2, 3, 30, 31):
            assert rounding_divide_by_pot(x, e) == ref.rounding_divide_by_pot(x, e)
    assert [ref.rounding_divide_by_pot(v, 1) for v in (3, -3, 1, -1)] == [2, -2, 1, -1]  # ties away


@given(seed=st.integers(0, 2**31), channels=st.integers(1, 4), bits=st.integers(2, 31),
       out_bits=st.integers(2, 20), rounding=st.sampled_from(ROUNDINGS),
       overflow=st.sampled_from(list(Overflow)), batch=st.integers(0, 2))
def test_single_rounding_rescale_equals_its_python_int_reference(seed, channels, bits, out_bits, rounding,
                                                                   overflow, batch):
    rng = np.random.default_rng(seed)
    lim = 1 << (bits - 1)
    mult = rng.integers(-lim, lim, channels)
    shift = rng.integers(0, 40, channels)
    offset = rng.integers(-2**20, 2**20, channels)
    x = rng.integers(-2**20, 2**20, (batch, channels, 3))
    p = RescaleParams(Format(out_bits, 0), bits, 4, rounding, overflow)
    out = rescale(x, 4, mult, offset, shift, p)
    for idx in np.ndindex(x.shape):
        c = idx[1]
        assert out.q[idx] == rescale_reference(int(x[idx]), int(mult[c]), int(offset[c]), int(shift[c]), p)


@given(seed=st.integers(0, 2**31), channels=st.integers(1, 4), out_bits=st.integers(2, 32))
def test_tflite_double_rounding_equals_multiply_by_quantized_multiplier(seed, channels, out_bits):
    rng = np.random.default_rng(seed)
    mult = rng.integers(2**30, 2**31, channels)  # a normalised Q31
    mult[0] = rng.choice([0, 2**31 - 1, 2**30])
    shift = rng.integers(-3, 32, channels)
    offset = rng.integers(-128, 128, channels)
    x = rng.integers(-2**27, 2**27, (2, channels, 5))
    x.reshape(-1)[:2] = [-2**27, 2**27 - 1]
    p = RescaleParams(Format(out_bits, 0), 32, 0, Rounding.HALF_AWAY, Overflow.SAT, "double")
    out = rescale(x, 0, mult, offset, shift, p)
    for idx in np.ndindex(x.shape):
        c = idx[1]
        want = ref.overflow_int(ref.multiply_by_quantized_multiplier(int(x[idx]), int(mult[c]), int(shift[c]))
                                + int(offset[c]), p.out_fmt, Overflow.SAT)
        assert out.q[idx] == want


def test_rescale_refuses_what_it_cannot_compute():
    p = RescaleParams(Format(8, 0), 32, 0, Rounding.HALF_AWAY, Overflow.SAT, "double")
    with pytest.raises(OverflowError, match="int32 accumulator"):
        rescale(np.array([[2**31]]), 0, np.array([2**30]), np.array([0]), np.array([0]), p)
    with pytest.raises(ValueError, match="Q31"):
        rescale(np.array([[1]]), 0, np.array([2**31]), np.array([0]), np.array([0]), p)
    with pytest.raises(ValueError, match="double mode"):
        RescaleParams(Format(8, 0), 16, 0, Rounding.HALF_EVEN, Overflow.SAT, "double")
    single = RescaleParams(Format(8, 0), 16, 0)
    with pytest.raises(OverflowError, match="62-bit domain"):
        rescale(np.array([[2**50]]), 0, np.array([2**15]), np.array([0]), np.array([3]), single)
    with pytest.raises(ValueError, match="right shift of 0..62"):
        rescale(np.array([[1]]), 0, np.array([3]), np.array([0]), np.array([-1]), single)


# ---- the float input's own thresholds ------------------------------------------------------------

@SLOW
@given(case=chains(), seed=st.integers(0, 2**31))
def test_float_input_thresholds_equal_the_exact_chain_at_every_float(case, seed):
    """The input's quantization by float64 thresholds equals the exact chain at float values
    anywhere, at each threshold and at the float just below it (the edges)."""
    stages, quantizer, lo, hi = case
    sign, table = float_thresholds(stages, quantizer, 0)
    assert table == sorted(table)
    finite = [t for t in table if np.isfinite(t)]
    xs = np.random.default_rng(seed).uniform(lo - 1, hi + 1, 64).tolist()
    xs += [v for t in finite for v in (t, np.nextafter(t, -np.inf))]
    xs = [x for x in xs if lo - 2 <= x * sign <= hi + 2 or abs(x) < 2**60]
    got = quantizer.q_min + np.searchsorted(np.array(table), sign * np.array(xs, np.float64), side="right")
    want = [evaluate(stages, quantizer, 0, Fraction(x)) for x in xs]
    assert got.tolist() == want


def test_input_levels_quantize_floats_and_refuse_nan():
    from wageubn_sim.graph.ir import GraphInput, InputLevels
    levels = InputLevels(-1, (1, -1), ((0.0, 0.5), (-1.0, float("inf"))))
    spec = GraphInput("x", (2, 1), Format(3, 0), levels)
    x = np.array([[[0.5], [0.9]], [[-0.1], [-1.0]]], np.float32)
    assert spec.quantize(x)[:, :, 0].tolist() == [[1, 0], [-1, 0]]  # -1 + #{sign * x >= T}
    with pytest.raises(ValueError, match="NaN or Inf"):
        spec.quantize(np.full((1, 2, 1), np.nan))
    assert InputLevels.from_json(levels.to_json()) == levels
    with pytest.raises(ValueError, match="non-decreasing"):
        InputLevels(0, (1,), ((1.0, 0.0),))
    with pytest.raises(ValueError, match="leave its format"):
        GraphInput("x", (2, 1), Format(2, 0), InputLevels(0, (1,), ((0.0, 1.0, 2.0),)))


def test_thresholds_of_reals_pull_a_multithreshold_back_to_the_integers():
    """FINN's MultiThreshold on x * 0.3 - 1 (x integers): y >= b exactly when x >= ceil((b + 1) / 0.3)."""
    stages = [Affine((f32(0.3),), (Fraction(-1),))]
    bounds = [-1.0, -0.5, 0.0, 0.25, 2.0]
    sign, table = thresholds_of_reals(stages, 0, bounds, -100, 100)
    for x in range(-100, 101):
        y = f32(0.3) * x - 1
        assert sum(sign * x >= t for t in table) == sum(y >= Fraction(b) for b in bounds)
    sign, table = thresholds_of_reals([Affine((Fraction(-2),), (Fraction(0),))], 0, [0.0, 3.0], -5, 5)
    assert sign == -1 and table == [0, 2]  # -2x >= 0 at x <= 0; -2x >= 3 at x <= -2


@given(p=st.fractions(max_denominator=10**6), q=st.fractions(max_denominator=10**6),
       d=st.one_of(st.fractions(0, 10**6, max_denominator=10**4), st.integers(0, 400).map(lambda k: Fraction(k * k, 9))))
def test_a_surds_floor_lies_at_or_below_it_and_the_next_integer_above(p, q, d):
    """The closed-form floor of p + q sqrt(d) against the exact comparisons (squares of both
    sides, signs apart): floor <= value < floor + 1, perfect squares and negative q included."""
    from wageubn_sim.fixedpoint.chains import Surd
    value = Surd(p, q, d)
    k = value.floor()
    assert value.sign_minus(Fraction(k)) >= 0 and value.sign_minus(Fraction(k + 1)) < 0
