"""The exact fast paths of the MAC core: the int8 digit GEMM, BLAS chunks and the int64 loop
give the same sums, equal to plain int64 numpy, at the digit and chunk edges."""
import contextlib

import numpy as np
import pytest
from hypothesis import given, strategies as st

from wageubn_sim.engine import mac
from wageubn_sim.engine.conv2d import Conv2dParams, conv2d
from wageubn_sim.fixedpoint import Format


@contextlib.contextmanager
def int8_gemm(enabled: bool, digit_chunk: int = mac.DIGIT_CHUNK):
    """The int8 GEMM on or off (and its reduction chunk) inside the block; restored after."""
    saved = mac.DIGIT_CHUNK
    mac.use_int8_gemm(enabled)
    mac.DIGIT_CHUNK = digit_chunk
    try:
        yield
    finally:
        mac.use_int8_gemm(True)
        mac.DIGIT_CHUNK = saved


def test_int8_gemm_is_available_here():
    # torch is a test dependency, so the fast path must be the one under test
    assert mac.int8_gemm() is not None


@pytest.mark.parametrize("v_max, digits", [(0, 1), (127, 1), (128, 2), (2**14 - 1, 2),
                                           (2**14, 3), (2**21 - 1, 3), (2**61 - 1, 9)])
def test_digit_count_edges(v_max, digits):
    assert mac.digit_count(v_max) == digits


def test_split_digits_rebuilds_every_edge_value():
    for count in (1, 2, 3, 9):
        top = 1 << (7 * count)
        v = np.array([0, 1, -1, 127, -128, top - 1, -top, top // 2, -top // 2 - 1], np.int64)
        d = mac.split_digits(v, count)
        assert d.dtype == np.int8 and d.shape == (count,) + v.shape
        assert (d[:-1] >= 0).all()  # lower digits unsigned, the top one signed
        rebuilt = sum(d[i].astype(object) * (1 << (7 * i)) for i in range(count))
        assert list(rebuilt) == v.tolist()


@given(seed=st.integers(0, 2**31), x_bits=st.integers(1, 40), w_bits=st.integers(2, 16),
       c=st.sampled_from([1, 2, 3, 5, 16, 19]), k=st.integers(1, 3), stride=st.integers(1, 2),
       pad=st.integers(0, 2),
       dil=st.integers(1, 2), batch=st.integers(1, 3), chunk=st.sampled_from([3, 7, mac.DIGIT_CHUNK]))
def test_every_exact_method_gives_the_int64_sums(seed, x_bits, w_bits, c, k, stride, pad, dil,
                                                  batch, chunk):
    rng = np.random.default_rng(seed)
    size = dil * (k - 1) + 1 + rng.integers(0, 5)
    x = rng.integers(-(1 << (x_bits - 1)), 1 << (x_bits - 1), (batch, c, size, size), endpoint=True)
    w = rng.integers(-(1 << (w_bits - 1)), 1 << (w_bits - 1), (5, c * k * k), endpoint=True)
    x.flat[0], w.flat[0] = -(1 << (x_bits - 1)), -(1 << (w_bits - 1))  # the most negative values
    oh = (size + 2 * pad - dil * (k - 1) - 1) // stride + 1
    cols = mac.WindowMatrix(x, 0, c, (k, k), (stride,) * 2, (pad,) * 2, (dil,) * 2, (oh, oh))
    assert cols.prefers_rows == (c >= 16)  # both digit layouts: rows (NHWC) and columns
    want = (w @ cols(np.int64)).reshape(5, batch, -1).transpose(1, 0, 2)
    x_max = int(np.abs(x).max())
    for enabled in (True, False):  # short int32 chunks: the chunk edges
        with int8_gemm(enabled, chunk):
            assert np.array_equal(mac.exact_matmul(w, cols, x_max, batch), want)
            # a plain builder (no digit rows): the generic digit split of the window matrix
            assert np.array_equal(mac.exact_matmul(w, lambda dtype: cols(dtype), x_max, batch),
                                  want)


def test_zero_and_empty_inputs():
    w = np.arange(-4, 5).reshape(1, 1, 3, 3)
    p = Conv2dParams(Format(8, 7), padding=(1, 1))
    for enabled in (True, False):
        with int8_gemm(enabled):
            assert not conv2d(np.zeros((2, 1, 4, 4), np.int64), 0, w, None, p).q.any()
            assert conv2d(np.zeros((0, 1, 4, 4), np.int64), 0, w, None, p).q.shape == (0, 1, 4, 4)
