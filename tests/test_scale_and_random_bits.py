"""R(x) at its boundary and on zeros; the SR bit source against SplitMix64."""
import math
from fractions import Fraction

import numpy as np
import pytest
import torch
from hypothesis import given, strategies as st
from strategies import dyadic_floats, int_arrays

from wageubn_sim.fixedpoint import (BitSource, random_u32, random_u32_reference,
                                    reference as ref, scale_exponent_of_floats,
                                    scale_exponent_of_ints)
from wageubn_sim.fixedpoint.scale import ROUND_UP_FROM, SQRT_HALF_CEIL


@given(q=int_arrays(), frac=st.integers(-20, 60))
def test_int_scale_equals_reference(q, frac):
    m = int(np.abs(q).max()) if q.size else 0
    want = ref.shift_exponent(m) - frac if m else 0
    assert scale_exponent_of_ints(q, frac) == want


@given(x=dyadic_floats(mant_bits=52, exp_range=(-200, 200)))
def test_float_scale_equals_reference(x):
    m = float(np.abs(x).max()) if x.size else 0.0
    assert scale_exponent_of_floats(x) == ref.shift_exponent(m)
    assert scale_exponent_of_floats(torch.from_numpy(x)) == ref.shift_exponent(m)


@pytest.mark.parametrize("e", [0, 1, 7, 20, 40, 59, 60])
def test_int_boundary_is_sqrt2(e):
    t = int(ROUND_UP_FROM[e])
    assert (t - 1) ** 2 < 2 ** (2 * e + 1) <= t * t
    assert scale_exponent_of_ints(np.array([t - 1]), 0) == e
    assert scale_exponent_of_ints(np.array([t]), 0) == e + 1
    assert scale_exponent_of_ints(np.array([-t]), 0) == e + 1  # max of |x|


def test_float_boundary_is_sqrt2():
    assert Fraction(SQRT_HALF_CEIL) ** 2 >= Fraction(1, 2)
    below = math.nextafter(SQRT_HALF_CEIL, 0)
    assert Fraction(below) ** 2 < Fraction(1, 2)
    for p in (-30, 0, 7, 100):
        assert scale_exponent_of_floats(np.array([math.ldexp(SQRT_HALF_CEIL, p)])) == p
        assert scale_exponent_of_floats(np.array([math.ldexp(below, p)])) == p - 1


def test_zero_and_empty_tensors_scale_to_one():
    assert scale_exponent_of_ints(np.zeros(5, np.int64), 9) == 0
    assert scale_exponent_of_ints(np.zeros(0, np.int64), 9) == 0
    assert scale_exponent_of_floats(np.zeros(3)) == 0
    assert scale_exponent_of_floats(torch.zeros(0)) == 0
    with pytest.raises(ValueError, match="NaN or Inf"):
        scale_exponent_of_floats(np.array([1.0, np.inf]))


def test_bits_are_splitmix64():
    # The first outputs of SplitMix64 seeded with 0 (Vigna's reference), top 32 bits.
    published = [0xE220A8397B1DCDAF, 0x6E789E6AA1B965F4, 0x06C45D188009454F]
    assert random_u32(0, 0, 3).tolist() == [v >> 32 for v in published]


@given(seed=st.integers(0, 2**64 - 1), stream=st.integers(0, 2**32 - 1), n=st.integers(0, 20))
def test_vectorised_bits_equal_reference(seed, stream, n):
    got = random_u32(seed, stream, n)
    assert got.dtype == np.uint32
    assert got.tolist() == [random_u32_reference(seed, stream, i) for i in range(n)]


def test_bits_are_deterministic_and_streams_differ():
    a = random_u32(5, 3, 1000)
    assert np.array_equal(a, random_u32(5, 3, 1000))
    assert not np.array_equal(a, random_u32(5, 4, 1000))
    assert not np.array_equal(a, random_u32(6, 3, 1000))
    src = BitSource(5)
    assert np.array_equal(src.draw((10, 100))[3], random_u32(5, 0, 1000).reshape(10, 100)[3])
    assert np.array_equal(src.draw((7,)), random_u32(5, 1, 7))
    # roughly uniform: the mean of u / 2**32 is near 1/2
    assert abs(random_u32(1, 0, 100000).mean() / 2**32 - 0.5) < 0.01


@pytest.mark.parametrize("args", [(-1, 0, 1), (0, 2**32, 1), (0, 0, -1), (1.5, 0, 1)])
def test_bad_bit_source_arguments(args):
    with pytest.raises((ValueError, TypeError)):
        random_u32(*args)


def test_int_scale_of_the_most_negative_domain_value():
    assert scale_exponent_of_ints(np.array([-2**61]), 0) == 61  # |q| = 2**61 exactly
    assert scale_exponent_of_ints(np.array([-2**61, 2**61 - 1]), 3) == 58
