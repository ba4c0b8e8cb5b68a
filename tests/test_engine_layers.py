"""Engine kernels against int64 numpy references and against the torch path (float64)."""
import dataclasses

import numpy as np
import pytest
import torch
import torch.nn as nn
from hypothesis import given, strategies as st
from int_reference import int_adder2d, int_adder2d_backward, int_conv2d

import wageubn_sim
from wageubn_sim import function as F
from wageubn_sim.config import Config, config_network
from wageubn_sim.engine.ops.adder2d import adder2d
from wageubn_sim.engine.ops.adder2d import adder2d_backward
from wageubn_sim.engine.ops.conv2d import Conv2dParams, conv2d, linear
from wageubn_sim.engine.registers import Accumulator, Events
from wageubn_sim.fixedpoint import Format, Overflow, Rounding, requantize
from wageubn_sim.fixedpoint.arrays import requantize_counted


@st.composite
def conv_cases(draw):
    groups = draw(st.sampled_from([1, 1, 2, 3]))
    cg = draw(st.integers(1, 3))
    og = draw(st.integers(1, 3))
    k = draw(st.integers(1, 4))
    dil = draw(st.integers(1, 2))
    size = draw(st.integers(dil * (k - 1) + 1, 9))
    return dict(groups=groups, cin=groups * cg, cout=groups * og, k=k, dil=dil, size=size,
                stride=draw(st.integers(1, 3)), pad=draw(st.integers(0, 2)),
                bias=draw(st.booleans()), batch=draw(st.integers(1, 3)),
                x_frac=draw(st.integers(0, 10)), w_bits=draw(st.integers(2, 9)),
                b_frac=draw(st.integers(0, 20)), seed=draw(st.integers(0, 2**31)),
                x_bits=draw(st.integers(2, 20)))


def _random_case(c):
    rng = np.random.default_rng(c["seed"])
    lim = 1 << (c["x_bits"] - 1)
    x = rng.integers(-lim, lim, (c["batch"], c["cin"], c["size"], c["size"]))
    wl = (1 << (c["w_bits"] - 1)) - 1
    w = rng.integers(-wl, wl + 1, (c["cout"], c["cin"] // c["groups"], c["k"], c["k"]))
    b = rng.integers(-2**20, 2**20, c["cout"]) if c["bias"] else None
    return x, w, b


@given(c=conv_cases(), rounding=st.sampled_from([r for r in Rounding if r != Rounding.STOCHASTIC]),
       overflow=st.sampled_from(list(Overflow)), out_bits=st.integers(4, 30),
       out_frac=st.integers(-4, 20))
def test_conv2d_equals_int64_reference(c, rounding, overflow, out_bits, out_frac):
    x, w, b = _random_case(c)
    w_fmt = Format(c["w_bits"], c["w_bits"] - 1)
    out_fmt = Format(out_bits, out_frac)
    p = Conv2dParams(w_fmt, Format(22, c["b_frac"]) if c["bias"] else None, (c["stride"],) * 2,
                     (c["pad"],) * 2, (c["dil"],) * 2, c["groups"], out_fmt=out_fmt,
                     rounding=rounding, out_overflow=overflow)
    got = conv2d(x, c["x_frac"], w, b, p, trace=True)
    acc = int_conv2d(x, w, c["stride"], c["pad"], c["dil"], c["groups"])
    frac = c["x_frac"] + w_fmt.frac_bits
    if c["bias"]:
        to = max(frac, c["b_frac"])
        acc = (acc << (to - frac)) + (b << (to - c["b_frac"]))[None, :, None, None]
        frac = to
    assert np.array_equal(got.trace["sum"], acc)
    assert np.array_equal(got.q, requantize(acc, frac, out_fmt, rounding, overflow))
    assert got.fmt == out_fmt


@given(c=conv_cases(), order=st.sampled_from(["channel_major", "kernel_major"]),
       k_split=st.integers(1, 4), acc_bits=st.integers(8, 40),
       overflow=st.sampled_from(list(Overflow)), adder=st.booleans())
def test_narrow_accumulator_follows_the_mac_order(c, order, k_split, acc_bits, overflow, adder):
    x, w, b = _random_case(c)
    adder = adder and c["groups"] == 1  # Adder2d has no groups
    acc = Accumulator(acc_bits, overflow, order, k_split)
    p = Conv2dParams(Format(c["w_bits"], c["w_bits"] - 1), Format(22, 0) if c["bias"] else None,
                     (c["stride"],) * 2, (c["pad"],) * 2, (c["dil"],) * 2, c["groups"], accumulator=acc)
    if not _preload_fits(b, c["w_bits"] - 1, acc):  # docs §9: refused, never clamped
        with pytest.raises(ValueError, match="outside the .*saturating accumulator it preloads"):
            adder2d(x, 0, w, b, p) if adder else conv2d(x, 0, w, b, p)
        return
    got = adder2d(x, 0, w, b, p) if adder else conv2d(x, 0, w, b, p)
    want, events = _per_mac_reference(x, w, b, c, acc, adder)
    assert np.array_equal(got.q, want)
    assert got.fmt == Format(acc_bits, c["w_bits"] - 1)
    if adder or overflow != Overflow.WRAP:  # MAC by MAC: every wrap or saturation counted
        counted = got.events.wraps if overflow == Overflow.WRAP else got.events.saturations
        assert counted == events.sum()
    assert got.events_at("accumulator") == got.events and got.events_at("output") == Events()


@given(c=conv_cases(), rounding=st.sampled_from([r for r in Rounding if r != Rounding.STOCHASTIC]),
       reg_bits=st.integers(4, 20), reg_frac=st.integers(-2, 10), acc_bits=st.integers(8, 30),
       acc_overflow=st.sampled_from(list(Overflow)), out_bits=st.integers(4, 30),
       out_frac=st.integers(-4, 20), out_overflow=st.sampled_from(list(Overflow)))
def test_events_are_counted_per_register(c, rounding, reg_bits, reg_frac, acc_bits, acc_overflow,
                                         out_bits, out_frac, out_overflow):
    """Input register, accumulator and output each report their own events (each checked on
    its own), and they add up to the layer's events."""
    x, w, b = _random_case(c)
    w_fmt, b_fmt, reg = Format(c["w_bits"], c["w_bits"] - 1), Format(22, c["b_frac"]), Format(reg_bits, reg_frac)
    conv_p = Conv2dParams(w_fmt, b_fmt if c["bias"] else None, (c["stride"],) * 2, (c["pad"],) * 2,
                          (c["dil"],) * 2, c["groups"], accumulator=Accumulator(acc_bits, acc_overflow))
    p = dataclasses.replace(conv_p, input_register=reg, out_fmt=Format(out_bits, out_frac),
                            rounding=rounding, out_overflow=out_overflow)
    acc = conv_p.accumulator
    if not _preload_fits(b, max(reg_frac + w_fmt.frac_bits, c["b_frac"]) - c["b_frac"], acc):
        with pytest.raises(ValueError, match="saturating accumulator it preloads"):
            conv2d(x, c["x_frac"], w, b, p, trace=True)
        return
    got = conv2d(x, c["x_frac"], w, b, p, trace=True)

    x_reg, _, counts = requantize_counted(x, c["x_frac"], reg, rounding, Overflow.SAT_SYM)
    assert got.events_at("input") == Events.of_requantize(counts, Overflow.SAT_SYM)
    assert got.events_at("input").wraps == 0
    acc_only = conv2d(x_reg, reg_frac, w, b, conv_p)
    assert got.events_at("accumulator") == acc_only.events and got.events_at("accumulator").ties == 0
    _, _, counts = requantize_counted(acc_only.q, acc_only.fmt.frac_bits, p.out_fmt, rounding,
                                      out_overflow)
    assert got.events_at("output") == Events.of_requantize(counts, out_overflow)
    assert got.events == Events.total(got.events_at(r) for r in ("input", "accumulator", "output"))
    assert got.events_at("scaled") == Events()


def _preload_fits(b, shift, acc) -> bool:
    """Whether a saturating accumulator can be preloaded with the bias aligned by ``shift``
    (a wrapping one always can: it keeps the low bits)."""
    if b is None or acc.bits is None or acc.overflow == Overflow.WRAP:
        return True
    hi = (1 << (acc.bits - 1)) - 1
    lo = -hi if acc.overflow == Overflow.SAT_SYM else -hi - 1
    return all(lo <= int(v) << shift <= hi for v in b)


def _per_mac_reference(x, w, b, c, acc, adder=False):
    """Plain Python loops: one accumulator per output, MAC by MAC, overflow after each add.
    Returns the sums and, per (n, o), how many additions the overflow rule changed."""
    hi = (1 << (acc.bits - 1)) - 1
    lo = -hi if acc.overflow == Overflow.SAT_SYM else -hi - 1

    def fit(v):
        if acc.overflow == Overflow.WRAP:
            return (v - lo) % (1 << acc.bits) + lo
        return min(max(v, lo), hi)

    xp = np.pad(x, ((0, 0), (0, 0), (c["pad"],) * 2, (c["pad"],) * 2))
    n, _, h, _ = xp.shape
    o, cg, k, _ = w.shape
    og = o // c["groups"]
    s, d = c["stride"], c["dil"]
    oh = (h - d * (k - 1) - 1) // s + 1
    out = np.zeros((n, o, oh, oh), np.int64)
    events = np.zeros((n, o), np.int64)
    terms_order = ([(ci, i, j) for ci in range(cg) for i in range(k) for j in range(k)]
                   if acc.mac_order == "channel_major" else
                   [(ci, i, j) for i in range(k) for j in range(k) for ci in range(cg)])
    chunk = -(-len(terms_order) // acc.k_split)
    w_frac = c["w_bits"] - 1
    if adder:  # x and w meet on one grid: x (frac 0) moves to the weights' grid
        xp = xp << w_frac
    for bi in range(n):
        for oc in range(o):
            c0 = (oc // og) * cg
            for y in range(oh):
                for xo in range(oh):
                    parts = [int(b[oc]) << w_frac if b is not None else 0] + [0] * (acc.k_split - 1)
                    for t, (ci, i, j) in enumerate(terms_order):
                        xv = int(xp[bi, c0 + ci, y * s + i * d, xo * s + j * d])
                        prod = -abs(xv - int(w[oc, ci, i, j])) if adder else xv * int(w[oc, ci, i, j])
                        total = parts[t // chunk] + prod
                        parts[t // chunk] = fit(total)
                        events[bi, oc] += parts[t // chunk] != total
                    result = parts[0]
                    for extra in parts[1:]:
                        total = result + extra
                        result = fit(total)
                        events[bi, oc] += result != total
                    out[bi, oc, y, xo] = result
    return out, events


@given(c=conv_cases(), w_frac=st.integers(-2, 8), e_bits=st.integers(1, 12), bias=st.booleans())
def test_adder_backward_equals_reference_and_torch_path(c, w_frac, e_bits, bias):
    """AdderNet's gradients on integers: against the definition (Python ints) and against the
    torch path's autograd in float64, on the grid 2**-max(fx, fw, 0)."""
    from wageubn_sim.function.adder import adder2d as torch_adder2d
    c = dict(c, groups=1, cin=max(1, c["cin"] // c["groups"]), cout=max(1, c["cout"] // c["groups"]))
    x, w, _ = _random_case(c)
    x_frac = c["x_frac"] - 4  # also grids coarser than 1
    rng = np.random.default_rng(c["seed"] + 1)
    p = Conv2dParams(Format(c["w_bits"], w_frac), stride=(c["stride"],) * 2, padding=(c["pad"],) * 2,
                     dilation=(c["dil"],) * 2)
    oh = (c["size"] + 2 * c["pad"] - c["dil"] * (c["k"] - 1) - 1) // c["stride"] + 1
    e = rng.integers(-2**e_bits, 2**e_bits + 1, (x.shape[0], w.shape[0], oh, oh))
    dx, dw, db, grid = adder2d_backward(x, x_frac, w, w_frac, e, p, bias)
    assert grid == max(x_frac, w_frac, 0)
    x_g, w_g = x << (grid - x_frac), w << (grid - w_frac)
    want_dx, want_dw = int_adder2d_backward(x_g, w_g, e, c["stride"], c["pad"], c["dil"], 1 << grid)
    assert np.array_equal(dx, want_dx) and np.array_equal(dw, want_dw)
    assert (db is None) == (not bias) and (db is None or np.array_equal(db, e.sum(axis=(0, 2, 3))))
    xt = torch.tensor(x * 2.0 ** -x_frac, requires_grad=True)
    wt = torch.tensor(w * 2.0 ** -w_frac, requires_grad=True)
    y = torch_adder2d(xt, wt, c["stride"], c["pad"], c["dil"])
    y.backward(torch.from_numpy(e * 1.0))  # the error on the grid 2**0: fe = 0
    assert np.array_equal(xt.grad.numpy(), dx * 2.0 ** -grid)
    assert np.array_equal(wt.grad.numpy(), dw * 2.0 ** -grid)


def test_adder_backward_edges():
    p = Conv2dParams(Format(8, 7), padding=(1, 1))
    w = np.ones((3, 2, 3, 3), np.int64)
    dx, dw, db, grid = adder2d_backward(np.zeros((0, 2, 5, 5), np.int64), 4, w, 7,
                                        np.zeros((0, 3, 5, 5), np.int64), p, True)
    assert dx.shape == (0, 2, 5, 5) and not dw.any() and not db.any() and grid == 7  # empty batch
    with pytest.raises(OverflowError, match="62-bit domain"):
        adder2d_backward(np.full((1, 2, 5, 5), 2**40), 0, w, 7, np.full((1, 3, 5, 5), 2**20), p)
    with pytest.raises(ValueError, match="groups=1"):
        adder2d_backward(np.zeros((1, 2, 5, 5)), 0, w[:, :1], 7, np.zeros((1, 3, 5, 5)),
                         dataclasses.replace(p, groups=2))


@given(seed=st.integers(0, 2**31), n_in=st.integers(1, 40), n_out=st.integers(1, 8),
       bias=st.booleans())
def test_linear_equals_int64_reference(seed, n_in, n_out, bias):
    rng = np.random.default_rng(seed)
    x = rng.integers(-2**12, 2**12, (3, n_in))
    w = rng.integers(-127, 128, (n_out, n_in))
    b = rng.integers(-2**15, 2**15, n_out) if bias else None
    p = Conv2dParams(Format(8, 7), Format(16, 7) if bias else None)
    got = linear(x, 7, w, b, p)
    want = x @ w.T + (0 if b is None else b << 7)
    assert np.array_equal(got.q, want) and got.fmt.frac_bits == 14


def test_adder_kernel_equals_int64_reference():
    rng = np.random.default_rng(3)
    x = rng.integers(-300, 300, (2, 3, 6, 6))
    w = rng.integers(-127, 128, (4, 3, 3, 3))
    got = adder2d(x, 7, w, None, Conv2dParams(Format(8, 7), stride=(1, 1), padding=(1, 1)))
    assert np.array_equal(got.q, int_adder2d(x, w, 1, 1))


# ---- whole networks against the torch path ------------------------------------------------

class Block(nn.Module):
    def __init__(self, cin, cout, stride, groups, dilation):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, dilation, dilation, groups=groups, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=True)
        self.bn2 = nn.BatchNorm2d(cout)
        self.short = (nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
                      if stride != 1 or cin != cout else nn.Identity())

    def forward(self, x):
        out = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
        out += self.short(x)
        return self.relu(out)


class Net(nn.Module):
    def __init__(self, width, groups, dilation, six, pool):
        super().__init__()
        self.stem = nn.Conv2d(2, width, 3, padding=1)
        self.bn = nn.BatchNorm2d(width)
        self.act = nn.ReLU6() if six else nn.ReLU()
        self.pool = nn.MaxPool2d(2) if pool == "max" else nn.AvgPool2d(2)
        self.block1 = Block(width, width, 1, groups, dilation)
        self.block2 = Block(width, 2 * width, 2, 1, 1)
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(2 * width, 5)

    def forward(self, x):
        x = self.pool(self.act(self.bn(self.stem(x))))
        x = self.gap(self.block2(self.block1(x)))
        return self.fc(x.view(x.size(0), -1))


def _trained_stats(model, shape, seed):
    torch.manual_seed(seed)
    model.train()
    with torch.no_grad():
        for _ in range(2):
            model.double()(torch.randn(*shape, dtype=torch.float64) * 2)
    return model.eval()


@given(seed=st.integers(0, 2**16), groups=st.sampled_from([1, 2]), dilation=st.integers(1, 2),
       six=st.booleans(), pool=st.sampled_from(["max", "avg"]), iostrict=st.booleans(),
       size=st.sampled_from([8, 10, 12]), batch=st.integers(1, 3))
def test_small_networks_are_bit_exact_against_torch(seed, groups, dilation, six, pool, iostrict,
                                                    size, batch):
    torch.manual_seed(seed)
    model = wageubn_sim.quantize_model(Net(4, groups, dilation, six, pool),
                                       Config(iostrict=iostrict))
    model = _trained_stats(model, (4, 2, size, size), seed)
    x = torch.randn(batch, 2, size, size, dtype=torch.float64).numpy() * 3
    report = wageubn_sim.compare(model, x)
    assert report.exact, str(report)
    assert len(report.layers) >= 20


def test_engine_equals_plain_module_call():
    torch.manual_seed(1)
    model = _trained_stats(wageubn_sim.quantize_model(Net(4, 1, 1, False, "max")), (4, 2, 8, 8), 1)
    x = np.random.default_rng(0).standard_normal((2, 2, 8, 8))
    graph = wageubn_sim.compile(model, x)
    xq = graph.quantize_input(x) * 2.0 ** -graph.inputs[0].fmt.frac_bits
    with torch.no_grad():
        want = model.double()(torch.from_numpy(xq)).numpy()
    assert np.array_equal(graph.run(x).values, want)


def test_results_do_not_depend_on_thread_count():
    import numba
    rng = np.random.default_rng(0)
    x = rng.integers(0, 255, (2, 16, 12, 12))  # two int8 digits on the int8 GEMM path
    w = rng.integers(-127, 128, (16, 16, 3, 3))
    torch_threads = torch.get_num_threads()
    for acc in (Accumulator(), Accumulator(18, "SAT")):
        p = Conv2dParams(Format(8, 7), padding=(1, 1), accumulator=acc)
        outs = []
        for threads in (1, numba.config.NUMBA_NUM_THREADS):
            numba.set_num_threads(threads)
            torch.set_num_threads(threads)  # the int8 GEMM's threads
            out = conv2d(x, 7, w, None, p)
            outs.append((out.q, out.events))
        numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)
        torch.set_num_threads(torch_threads)
        assert np.array_equal(outs[0][0], outs[1][0]) and outs[0][1] == outs[1][1]


def test_iostrict_config_reaches_the_engine_formats():
    model = wageubn_sim.quantize_model(nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU()))
    config_network(model, "m", Config(iostrict=True, conv_and_linear_out=8,
                                      conv_and_linear_out_all=10))
    graph = wageubn_sim.compile(model, np.zeros((1, 1, 5, 5)))
    assert graph.nodes[0].out_fmt == Format(10, 7)
    assert graph.nodes[0].params.input_register == Format.from_seed(8, 16)
    assert isinstance(model[0], F.Conv2d)


def test_an_example_input_that_does_not_fit_gives_one_clear_error(capfd):
    model = wageubn_sim.quantize_model(nn.Sequential(nn.Conv2d(1, 2, 3)))
    with pytest.raises(ValueError, match="example input of shape \\(1, 3, 5, 5\\) does not fit"):
        wageubn_sim.compile(model, np.zeros((1, 3, 5, 5)))
    assert capfd.readouterr().err == ""  # torch.fx's own traceback is not printed


def test_unsupported_and_bad_inputs_give_clear_errors(tmp_path):
    from wageubn_sim.graph.importer import UnsupportedLayer
    float_model = nn.Sequential(nn.Conv2d(1, 1, 3))
    with pytest.raises(UnsupportedLayer, match="'0' of type torch.nn.modules.conv.Conv2d.*quantize_model"):
        wageubn_sim.compile(float_model, np.zeros((1, 1, 5, 5)))
    odd = wageubn_sim.quantize_model(nn.Sequential(nn.Conv2d(1, 1, 3), nn.Sigmoid()))
    with pytest.raises(UnsupportedLayer, match="'1' of type torch.nn.modules.activation.Sigmoid"):
        wageubn_sim.compile(odd, np.zeros((1, 1, 5, 5)))
    nan = wageubn_sim.quantize_model(nn.Sequential(nn.Conv2d(1, 1, 3)))
    with torch.no_grad():
        nan[0].weight[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="'0': weight holds NaN"):
        wageubn_sim.compile(nan, np.zeros((1, 1, 5, 5)))
    ok = wageubn_sim.quantize_model(nn.Sequential(nn.Conv2d(1, 1, 3)))
    graph = wageubn_sim.compile(ok, np.zeros((1, 1, 5, 5)))
    with pytest.raises(ValueError, match="input shape \\(1, 2, 5, 5\\) does not fit"):
        graph.run(np.zeros((1, 2, 5, 5)))
    with pytest.raises(ValueError, match="NaN or Inf"):
        graph.run(np.full((1, 1, 5, 5), np.nan))
    with pytest.raises(ValueError, match="outside the input format"):
        graph.run(np.full((1, 1, 5, 5), 2**20, dtype=np.int64))
    with pytest.raises(ValueError, match="smaller than the 3x3 window"):
        conv2d(np.zeros((1, 1, 2, 2), np.int64), 0, np.ones((1, 1, 3, 3), np.int64), None,
               Conv2dParams(Format(8, 0)))
    with pytest.raises(ValueError, match="input has 2 channels"):
        conv2d(np.zeros((1, 2, 5, 5), np.int64), 0, np.ones((1, 1, 3, 3), np.int64), None,
               Conv2dParams(Format(8, 0)))
    with pytest.raises(ValueError, match="accumulators name layers.*'conv9'"):
        wageubn_sim.compile(ok, np.zeros((1, 1, 5, 5)), accumulators={"conv9": Accumulator(16)})
    with pytest.raises(ValueError, match="mac_order"):
        Accumulator(16, "SAT", "rows_first")
