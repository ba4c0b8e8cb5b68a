"""The exact fast paths of the MAC core: the int8 digit GEMM, BLAS chunks and the int64 loop
give the same sums, equal to plain int64 numpy, at the digit and chunk edges."""
import contextlib

import numpy as np
import pytest
from hypothesis import given, strategies as st

from wageubn_sim.engine.mac import digits as base256, gemm, phases, windows
from wageubn_sim.engine.ops.conv2d import Conv2dParams, conv2d
from wageubn_sim.fixedpoint import Format


@contextlib.contextmanager
def int8_gemm(enabled: bool, digit_chunk: int = gemm.DIGIT_CHUNK,
              sparse_top: float = gemm.SPARSE_TOP_DENSITY):
    """The int8 GEMM on or off, its reduction chunk and its sparse top digit threshold (0:
    never, 2: always) inside the block; restored after."""
    saved = gemm.DIGIT_CHUNK, gemm.SPARSE_TOP_DENSITY
    gemm.use_int8_gemm(enabled)
    gemm.DIGIT_CHUNK, gemm.SPARSE_TOP_DENSITY = digit_chunk, sparse_top
    try:
        yield
    finally:
        gemm.use_int8_gemm(True)
        gemm.DIGIT_CHUNK, gemm.SPARSE_TOP_DENSITY = saved


def test_int8_gemm_is_available_here():
    # torch is a test dependency, so the fast path must be the one under test
    assert gemm.int8_gemm() is not None


@pytest.mark.parametrize("lo, hi, digits", [(0, 0, 1), (-128, 127, 1), (-129, 0, 2), (0, 128, 2),
                                            (-128 * 257, 127 * 257, 2), (0, 127 * 257 + 1, 3),
                                            (-2**61, 2**61, 8)])
def test_balanced_digit_count_edges(lo, hi, digits):
    assert base256.balanced_digits(lo, hi)[0] == digits


@pytest.mark.parametrize("lo, hi, digits, top_from_lo", [
    (0, 0, 1, True), (0, 127, 1, True), (0, 128, 1, False), (0, 255, 1, False), (0, 256, 2, True),
    (-5, -1, 1, True), (-128, 127, 1, False), (5, 260, 2, True), (0, 2**15 - 1, 2, True),
    (0, 2**15, 2, False), (-2**15, 2**16 - 1, 3, True), (-2**61, 2**61, 8, True)])
def test_offset_digit_count_and_origin_edges(lo, hi, digits, top_from_lo):
    # zero (padding) is always in range; the top digit counts from min(lo, 0) when it can
    count, origin = base256.offset_digits(lo, hi)
    assert count == digits
    base = min(lo, 0)
    assert origin == (base - 128 * 256 ** (count - 1) if top_from_lo else base)


def rebuilt(digits, count, origin):
    return [base256.digit_offset(count, origin) + sum(int(digits[d][i]) << (8 * d) for d in range(count))
            for i in range(digits.shape[1])]


def test_split_digits_rebuilds_every_edge_value():
    for count in (1, 2, 3, 6):
        low, high = -128 * base256._repunit(count), 127 * base256._repunit(count)  # balanced digits' range
        v = np.array([0, 1, -1, 127, -128, 128, -129, high, low, high // 2, low // 2 - 1], np.int64)
        v = v[(v >= low) & (v <= high)]
        count_b, origin = base256.balanced_digits(int(v.min()), int(v.max()))
        assert count_b == count and base256.digit_offset(count, origin) == 0
        d = base256.split_digits(v, count, origin)
        assert d.dtype == np.int8 and d.shape == (count,) + v.shape
        assert rebuilt(d, count, origin) == v.tolist()
        for lo, hi in ((int(v.min()), int(v.max())), (0, int(v.max())), (-5, 300)):
            vs = v[(v >= lo) & (v <= hi)]
            count_o, origin = base256.offset_digits(lo, hi)
            d = base256.split_digits(vs, count_o, origin)
            assert rebuilt(d, count_o, origin) == vs.tolist()
            # padding: the digits of zero rebuild zero
            zero = np.array([[base256.digit_of_zero(i, origin)] for i in range(count_o)], np.int8)
            assert rebuilt(zero, count_o, origin) == [0]


def test_a_relu_byte_is_one_digit_and_a_small_top_digit_is_mostly_zero():
    count, origin = base256.offset_digits(0, 255)
    assert count == 1 and base256.digit_offset(count, origin) == 128
    count, origin = base256.offset_digits(0, 400)
    d = base256.split_digits(np.arange(401), count, origin)
    assert count == 2 and (d[1, :256] == 0).all() and (d[1, 256:] == 1).all()


@given(seed=st.integers(0, 2**31), x_bits=st.integers(1, 40), w_bits=st.integers(2, 16),
       c=st.sampled_from([1, 2, 3, 5, 16, 19]), k=st.integers(1, 3), stride=st.integers(1, 2),
       pad=st.integers(0, 2),
       dil=st.integers(1, 2), batch=st.integers(1, 3), chunk=st.sampled_from([3, 7, gemm.DIGIT_CHUNK]),
       x_kind=st.sampled_from(["signed", "unsigned", "positive", "negative"]))
def test_every_exact_method_gives_the_int64_sums(seed, x_bits, w_bits, c, k, stride, pad, dil,
                                                  batch, chunk, x_kind):
    rng = np.random.default_rng(seed)
    size = dil * (k - 1) + 1 + rng.integers(0, 5)
    # the input's range decides its digits' origin: symmetric, a ReLU's 0..2**b - 1, or away
    # from zero on either side (the padding's zeros then widen the range)
    lo, hi = {"signed": (-(1 << (x_bits - 1)), (1 << (x_bits - 1)) - 1),
              "unsigned": (0, (1 << x_bits) - 1),
              "positive": (1 << x_bits, (1 << (x_bits + 1)) - 1),
              "negative": (-(1 << (x_bits + 1)), -(1 << x_bits))}[x_kind]
    x = rng.integers(lo, hi, (batch, c, size, size), endpoint=True)
    w = rng.integers(-(1 << (w_bits - 1)), 1 << (w_bits - 1), (5, c * k * k), endpoint=True)
    x.flat[0], w.flat[0] = lo, -(1 << (w_bits - 1))  # the most negative values
    x.flat[-1], w.flat[-1] = hi, (1 << (w_bits - 1)) - 1  # and the largest
    oh = (size + 2 * pad - dil * (k - 1) - 1) // stride + 1
    cols = windows.WindowMatrix(x, 0, c, (k, k), (stride,) * 2, (pad,) * 2, (dil,) * 2, (oh, oh))
    assert cols.prefers_rows == ((c * k if dil == 1 else c) >= 16)  # both layouts: rows, columns
    want = (w @ cols(np.int64)).reshape(5, batch, -1).transpose(1, 0, 2)
    x_range = (int(x.min()), int(x.max()))
    # short int32 chunks: the chunk edges; the input's top digit by GEMM or element by element
    for enabled, sparse_top in ((True, 0), (True, 2), (False, 0)):
        with int8_gemm(enabled, chunk, sparse_top):
            assert np.array_equal(gemm.exact_matmul(w, cols, x_range, batch), want)
            # a plain builder (no digit rows): the generic digit split of the window matrix
            assert np.array_equal(gemm.exact_matmul(w, lambda dtype: cols(dtype), x_range, batch),
                                  want)


def test_int8_gemm_reads_strided_transposed_and_degenerate_operands():
    rng = np.random.default_rng(3)
    a = rng.integers(-128, 128, (7, 12)).astype(np.int8)
    b = rng.integers(-128, 128, (12, 5)).astype(np.int8)
    int8_matmul = gemm.int8_gemm()
    one_row = np.lib.stride_tricks.as_strided(a[0], (1, 12), (1, 1))  # numpy's size-1 strides
    cases = [(a, b), (a[:, 3:9], b[3:9]), (b.T.copy().T, b.T),  # column-major views
             (a.T.copy().T[:, 2:7], b[2:7]), (one_row, b), (a[:1, 4:5].T, a[:1, :3])]
    for x, y in cases:
        want = x.astype(np.int64) @ y.astype(np.int64)
        assert np.array_equal(int8_matmul(x, y), want)
        out = np.empty(want.shape, np.int32)
        int8_matmul(x, y, out)
        assert np.array_equal(out, want)


def test_zero_and_empty_inputs():
    w = np.arange(-4, 5).reshape(1, 1, 3, 3)
    p = Conv2dParams(Format(8, 7), padding=(1, 1))
    for enabled in (True, False):
        with int8_gemm(enabled):
            assert not conv2d(np.zeros((2, 1, 4, 4), np.int64), 0, w, None, p).q.any()
            assert conv2d(np.zeros((0, 1, 4, 4), np.int64), 0, w, None, p).q.shape == (0, 1, 4, 4)


def test_python_threads_sharing_the_scratch_buffer_get_their_own_sums():
    """exact_matmul's parts live in a per-thread scratch buffer: convs run from several Python
    threads at once (as Dask's threaded workers do) give the serial result."""
    import concurrent.futures
    rng = np.random.default_rng(7)
    cases = []
    for size in (9, 14, 20, 27):
        x = rng.integers(-300, 300, (2, 8, size, size))
        w = rng.integers(-127, 128, (16, 8, 3, 3))
        cases.append((x, w))
    p = Conv2dParams(Format(8, 7), padding=(1, 1))
    serial = [conv2d(x, 0, w, None, p).q for x, w in cases]
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        for _ in range(3):
            parallel = list(pool.map(lambda case: conv2d(case[0], 0, case[1], None, p).q, cases))
            assert all(np.array_equal(a, b) for a, b in zip(serial, parallel))


def test_kernel_major_sums_land_in_channel_major_columns():
    """exact_matmul(columns=...) puts window column p at columns[p], in every method."""
    rng = np.random.default_rng(3)
    w = rng.integers(-127, 128, (5, 12))
    cols = rng.integers(-1000, 1000, (12, 7))
    perm = rng.permutation(7)
    want = np.empty((1, 5, 7), np.int64)
    want[0][:, perm] = w @ cols
    for enabled in (True, False):
        with int8_gemm(enabled):
            got = gemm.exact_matmul(w, lambda dtype: cols.astype(dtype), (-1000, 999), 1, columns=perm)
            assert np.array_equal(got, want)
    big = rng.integers(-2**40, 2**40, (12, 7))  # beyond every float: the int64 loop
    want[0][:, perm] = w @ big
    got = gemm.exact_matmul(w, lambda dtype: big.astype(dtype), (-2**40, 2**40), 1, columns=perm)
    assert np.array_equal(got, want)


@given(st.integers(1, 9), st.integers(1, 9), st.integers(0, 4), st.integers(0, 4), st.integers(1, 4),
       st.integers(1, 4), st.sampled_from([np.float32, np.float64, np.int64]))
def test_stride_phase_planes_are_the_padded_input_sliced_by_phase(h, w, ph, pw, sh, sw, dtype):
    """`phases.stride_phase_planes` (filled row by row per phase) against numpy's padding and
    slicing: plane c*sh*sw + r*sw + s is the padded x[c, r::sh, s::sw], then a zero row."""
    x = np.arange(1, 2 * 3 * h * w + 1).reshape(2, 3, h, w)
    planes, pitch = phases.stride_phase_planes(x, (ph, pw), (sh, sw), dtype)
    rows, cols = phases.stride_phase_geometry(h, w, (ph, pw), (sh, sw))
    assert pitch == cols and planes.dtype == dtype
    padded = np.zeros((2, 3, (rows + 1) * sh, cols * sw), np.int64)
    padded[:, :, ph:ph + h, pw:pw + w] = x
    want = np.zeros((2, 3, sh, sw, rows + 1, cols), np.int64)
    for r in range(sh):
        for s in range(sw):
            want[:, :, r, s, :rows] = padded[:, :, r::sh, s::sw][:, :, :rows, :cols]
    assert np.array_equal(planes.reshape(want.shape), want)
