"""Integer backward kernels and the update unit, against torch autograd (float64, exact on
integer-valued tensors) and plain int64 references."""
import numpy as np
import pytest
import torch
import torch.nn.functional as TF
from hypothesis import given, strategies as st
from int_reference import int_windows

from wageubn_sim.engine.ops.activation import activation_backward
from wageubn_sim.engine.ops.pool import max_pool2d_backward
from wageubn_sim.engine.ops.conv2d import Conv2dParams
from wageubn_sim.engine.ops.conv2d import conv2d_backward, linear_backward
from wageubn_sim.engine.ops.pool import PoolParams
from wageubn_sim.fixedpoint import FixedArray, Format, random_u32
from wageubn_sim.function.optim import WageubnSGD
from wageubn_sim.scheme import g_quantize, lr_quantize
from wageubn_sim.training import UpdateParams, momentum_update


@st.composite
def conv_backward_cases(draw):
    groups = draw(st.sampled_from([1, 2]))
    k = draw(st.integers(1, 3))
    d = draw(st.integers(1, 2))
    return dict(groups=groups, cin=groups * draw(st.integers(1, 3)), cout=groups * draw(st.integers(1, 3)),
                k=k, d=d, s=draw(st.integers(1, 2)), p=draw(st.integers(0, 2)),
                size=draw(st.integers(d * (k - 1) + 1, 8)), width=draw(st.integers(d * (k - 1) + 1, 8)),
                n=draw(st.integers(0, 3)),
                seed=draw(st.integers(0, 2**31)))


@given(c=conv_backward_cases())
def test_conv_backward_equals_torch_autograd_and_int64(c):
    rng = np.random.default_rng(c["seed"])
    x = rng.integers(-2**10, 2**10, (c["n"], c["cin"], c["size"], c["width"]))
    w = rng.integers(-127, 128, (c["cout"], c["cin"] // c["groups"], c["k"], c["k"]))
    p = Conv2dParams(Format(8, 7), stride=(c["s"],) * 2, padding=(c["p"],) * 2,
                     dilation=(c["d"],) * 2, groups=c["groups"])
    xt = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    wt = torch.tensor(w, dtype=torch.float64, requires_grad=True)
    y = TF.conv2d(xt, wt, None, c["s"], c["p"], c["d"], c["groups"])
    e = rng.integers(-2**12, 2**12, tuple(y.shape))
    y.backward(torch.tensor(e, dtype=torch.float64))
    dx, dw, db = conv2d_backward(x, w, e, p, with_bias=True)
    assert np.array_equal(dx, xt.grad.numpy()) and np.array_equal(dw, wt.grad.numpy())
    assert np.array_equal(db, e.sum(axis=(0, 2, 3)))
    # int64 reference for dw: windows of x times e
    win = int_windows(x, w.shape[2:], c["s"], c["p"], c["d"])  # N,C,OH,OW,KH,KW
    cg, og = c["cin"] // c["groups"], c["cout"] // c["groups"]
    for o in range(c["cout"]):
        g = o // og
        ref = np.einsum("nchwij,nhw->cij", win[:, g * cg:(g + 1) * cg], e[:, o], dtype=np.int64)
        assert np.array_equal(dw[o], ref)


def test_linear_backward():
    rng = np.random.default_rng(0)
    x, w, e = rng.integers(-300, 300, (4, 7)), rng.integers(-127, 128, (3, 7)), rng.integers(-99, 99, (4, 3))
    dx, dw, db = linear_backward(x, w, e, with_bias=True)
    assert np.array_equal(dx, e @ w) and np.array_equal(dw, e.T @ x) and np.array_equal(db, e.sum(0))


@given(seed=st.integers(0, 2**31), frac=st.integers(-2, 10), six=st.booleans())
def test_activation_backward_equals_torch(seed, frac, six):
    rng = np.random.default_rng(seed)
    x = rng.integers(-2**12, 2**12, (50,))
    x[:3] = [0, 6 << max(frac, 0), -1]
    e = rng.integers(-1000, 1000, (50,))
    xt = torch.tensor(x * 2.0 ** -frac, requires_grad=True)
    (TF.relu6(xt) if six else TF.relu(xt)).backward(torch.tensor(e, dtype=torch.float64))
    assert np.array_equal(activation_backward(x, frac, e, 6 if six else None), xt.grad.numpy())


@given(seed=st.integers(0, 2**31), k=st.integers(2, 3), s=st.integers(1, 3), pad=st.integers(0, 1))
def test_max_pool_backward_routes_to_the_first_maximum(seed, k, s, pad):
    rng = np.random.default_rng(seed)
    x = rng.integers(-4, 4, (2, 2, 7, 7))  # many ties
    xt = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    y = TF.max_pool2d(xt, k, s, pad)
    e = rng.integers(-50, 50, tuple(y.shape))
    y.backward(torch.tensor(e, dtype=torch.float64))
    got = max_pool2d_backward(x, e, PoolParams((k, k), (s, s), (pad, pad)))
    assert np.array_equal(got, xt.grad.numpy())


@pytest.mark.parametrize("order", ["quantize_after", "quantize_before"])
def test_update_unit_equals_torch_optimizer_over_100_steps(order):
    rng = np.random.default_rng(1)
    update = UpdateParams(order=order)
    w0 = rng.standard_normal((4, 3, 3, 3)) * 0.2
    param = torch.nn.Parameter(torch.tensor(w0, dtype=torch.float64))
    opt = WageubnSGD([param], lr=0.05, update=update)
    opt.snap_to_grid()
    w = FixedArray(np.round(param.detach().numpy() * 2**23).astype(np.int64), 23)
    acc = FixedArray(np.zeros(w.q.shape, np.int64), 12)
    lr = lr_quantize(0.05)
    assert lr.q.item() == 26
    for step in range(100):
        raw = FixedArray(rng.integers(-2**20, 2**20, w.q.shape), 30)
        g = g_quantize(raw, random_u32(5, step, raw.q.size).reshape(raw.q.shape))
        param.grad = torch.from_numpy(g.to_float())
        opt.step()
        w, acc = momentum_update(w, acc, g, lr, update)
        assert np.array_equal(param.detach().numpy(), w.to_float()), step
        assert np.array_equal(opt.state[param]["momentum"].numpy(), acc.to_float()), step
    assert w.frac_bits == 23 and acc.frac_bits == 12


def test_update_orders_differ_and_are_pinned():
    g = FixedArray(np.array([1, -3, 5]), 14)  # below the momentum grid: lost if quantized first
    w = FixedArray(np.zeros(3, np.int64), 23)
    acc = FixedArray(np.zeros(3, np.int64), 12)
    lr = lr_quantize(0.05)
    after = momentum_update(w, acc, g, lr, UpdateParams(order="quantize_after"))
    before = momentum_update(w, acc, g, lr, UpdateParams(order="quantize_before"))
    assert after[0].q.tolist() == [-26 * 1 * 1, 26 * 3, -26 * 5]  # lr * G lands on 2**-23 exactly
    assert before[0].q.tolist() == [0, 26 * 4, -26 * 4]  # G rounded to 2**-12 first (RNE)
    assert after[1].q.tolist() == before[1].q.tolist() == [0, -1, 1]
    with pytest.raises(ValueError, match="order='sometimes'"):
        UpdateParams(order="sometimes")


@given(seed=st.integers(0, 2**31), k=st.sampled_from([1, 2, 4]), s=st.integers(1, 3))
def test_avg_pool_backward_equals_torch_for_power_of_two_windows(seed, k, s):
    from wageubn_sim.engine.ops.pool import avg_pool2d_backward
    rng = np.random.default_rng(seed)
    xt = torch.zeros((2, 2, 8, 8), dtype=torch.float64, requires_grad=True)
    y = TF.avg_pool2d(xt, (k, k), s)
    e = rng.integers(-999, 999, tuple(y.shape))
    y.backward(torch.tensor(e * 2.0 ** -5, dtype=torch.float64))
    got, frac = avg_pool2d_backward(xt.shape, e, 5, PoolParams((k, k), (s, s)))
    assert np.array_equal(got * 2.0 ** -frac, xt.grad.numpy())


def test_avg_pool_backward_refuses_inexact_divisors():
    from wageubn_sim.engine.ops.pool import avg_pool2d_backward
    with pytest.raises(ValueError, match="divisor 9 is not a power of two"):
        avg_pool2d_backward((1, 1, 6, 6), np.zeros((1, 1, 2, 2), np.int64), 0, PoolParams((3, 3), (3, 3)))


def test_aligned_sum_is_exact_and_guards_the_domain():
    from wageubn_sim.fixedpoint.format import FixedArray
    from wageubn_sim.scheme.update import aligned_sum
    got = aligned_sum(FixedArray(np.array([3, -1]), 2), FixedArray(np.array([1, 5]), 4), sign=-1)
    assert got.frac_bits == 4 and got.q.tolist() == [11, -9]  # 3/4 - 1/16, -1/4 - 5/16
    assert aligned_sum(FixedArray(np.zeros(0, np.int64), 1), FixedArray(np.zeros(0, np.int64), 61)).q.size == 0
    with pytest.raises(OverflowError, match="62-bit domain"):
        aligned_sum(FixedArray(np.array([2**20]), 10), FixedArray(np.array([1]), 60))


def _update_by_definition(w, acc, g, lr, p):
    """The update unit on Python integers and Fractions, step by step as the docs state it."""
    from fractions import Fraction

    from wageubn_sim.fixedpoint import reference as ref
    from wageubn_sim.fixedpoint.modes import Overflow, Rounding

    def store(v, fmt):
        return ref.round_fraction(v * 2 ** fmt.frac_bits, Rounding.HALF_EVEN), fmt

    def fit(n, fmt):
        if fmt.bits is None:
            return n
        hi = fmt.max_int
        return max(-hi, min(hi, n))

    def value(q, f):
        return Fraction(int(q)) / 2 ** f

    a = value(acc, p.acc_k - 1) / 2 ** p.momentum_shift + value(g[0], g[1])
    if p.order == "quantize_before":
        a = value(fit(store(a, p.acc_fmt)[0], p.acc_fmt), p.acc_fmt.frac_bits)
    new_w = fit(store(value(w, p.weight_k - 1) - value(lr.q, lr.frac_bits) * a, p.weight_fmt)[0],
                p.weight_fmt)
    new_acc = (a * 2 ** p.acc_fmt.frac_bits if p.order == "quantize_before"
               else fit(store(a, p.acc_fmt)[0], p.acc_fmt))
    return new_w, int(new_acc)


@given(seed=st.integers(0, 2**31), order=st.sampled_from(["quantize_after", "quantize_before"]),
       g_frac=st.integers(0, 30), shift=st.integers(0, 4), bits=st.sampled_from([None, 12, 30]),
       register=st.sampled_from([Format(8, 7), Format(None, 5), Format(6, 9), Format(8, 7, signed=False)]))
def test_update_unit_equals_its_definition(seed, order, g_frac, shift, bits, register):
    """The fused update against the definition on Fractions, element by element, and the
    register it writes against requantize of the new master weights."""
    from wageubn_sim.fixedpoint import requantize
    rng = np.random.default_rng(seed)
    p = UpdateParams(momentum_shift=shift, order=order, acc_bits=bits, weight_bits=bits and bits + 10)
    w = FixedArray(rng.integers(-2**24, 2**24, 40), 23)
    acc = FixedArray(rng.integers(-2**14, 2**14, 40), 12)
    g = FixedArray(rng.integers(-2**12, 2**12, 40), g_frac)
    lr = lr_quantize(float(rng.choice([0.25, 0.05, 1.0])))
    new_w, new_acc, held = momentum_update(w, acc, g, lr, p, register=register)
    for i in range(40):
        assert (new_w.q[i], new_acc.q[i]) == _update_by_definition(w.q[i], acc.q[i], (g.q[i], g_frac), lr, p)
    assert held.tolist() == requantize(new_w.q, 23, register, "HALF_EVEN", "SAT_SYM").tolist()
    two = momentum_update(w, acc, g, lr, p)
    assert len(two) == 2 and np.array_equal(two[0].q, new_w.q) and np.array_equal(two[1].q, new_acc.q)


def test_update_unit_refuses_to_leave_the_domain():
    lr = lr_quantize(0.25)
    w = FixedArray(np.array([0, 2**60]), 23)
    zeros = FixedArray(np.zeros(2, np.int64), 12)
    g = FixedArray(np.array([0, -2**60]), 23)  # lr * a alone leaves the domain
    with pytest.raises(OverflowError, match="leave the 62-bit domain"):
        momentum_update(w, zeros, FixedArray(np.array([0, -2**61]), 60), lr)
    with pytest.raises(OverflowError, match="leave the 62-bit domain"):
        momentum_update(w, zeros, g, lr, UpdateParams(weight_k=24))
    empty = FixedArray(np.zeros(0, np.int64), 23)
    assert momentum_update(empty, FixedArray(np.zeros(0, np.int64), 12), empty, lr)[0].q.size == 0
    # zeros stay in the domain on grids 62 and more bits apart (the shift itself is not an error)
    far = momentum_update(FixedArray(np.zeros(2, np.int64), 23), zeros, FixedArray(np.zeros(2, np.int64), 90), lr)
    assert far[0].q.tolist() == far[1].q.tolist() == [0, 0]
