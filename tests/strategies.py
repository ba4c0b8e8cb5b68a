"""Hypothesis strategies aimed at the edges of the contract."""
from __future__ import annotations

import numpy as np
from hypothesis import strategies as st

from wageubn_sim.fixedpoint import Format, Overflow, Rounding

roundings = st.sampled_from(list(Rounding))
overflows = st.sampled_from(list(Overflow))


@st.composite
def formats(draw, min_bits=2, max_bits=32, min_frac=-8, max_frac=30, unbounded=False):
    signed = draw(st.booleans())
    if unbounded and draw(st.booleans()):
        return Format(None, draw(st.integers(min_frac, max_frac)), True)
    bits = draw(st.integers(max(min_bits, 2 if signed else 1), max_bits if signed else min(max_bits, 61)))
    return Format(bits, draw(st.integers(min_frac, max_frac)), signed)


def edge_ints(limit_bits=61):
    """Integers in the core's domain (the range of s62 for limit_bits=61), weighted toward
    powers of two, +-1 and the extremes, the most negative value included."""
    limit = 1 << limit_bits
    special = st.integers(0, limit_bits - 1).flatmap(
        lambda b: st.sampled_from([1 << b, (1 << b) - 1, (1 << b) + 1, -(1 << b), -(1 << b) + 1,
                                   -(1 << b) - 1]))
    return st.one_of(st.integers(-limit, limit - 1), special, st.integers(-300, 300),
                     st.just(-limit))


@st.composite
def int_arrays(draw, max_size=40, limit_bits=61):
    values = draw(st.lists(edge_ints(limit_bits), min_size=0, max_size=max_size))
    return np.array(values, dtype=np.int64)


def u32_words(n):
    return st.lists(st.integers(0, 2**32 - 1), min_size=n, max_size=n).map(
        lambda v: np.array(v, dtype=np.uint32))


@st.composite
def dyadic_floats(draw, max_size=40, mant_bits=40, exp_range=(-40, 20)):
    """float64 arrays of exact dyadic values with ties and zeros well represented."""
    n = draw(st.integers(0, max_size))
    mant = draw(st.lists(st.integers(-(1 << mant_bits), 1 << mant_bits), min_size=n, max_size=n))
    exps = draw(st.lists(st.integers(*exp_range), min_size=n, max_size=n))
    return np.array([m * 2.0 ** e for m, e in zip(mant, exps)], dtype=np.float64)
