"""The graph file, running without torch, the comparison's divergence report, and the other
kernels against exact references."""
import json
import math
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
from hypothesis import given, strategies as st

import wageubn_sim
from wageubn_sim.engine.ops.activation import ActivationParams, activation
from wageubn_sim.engine.ops.batchnorm import BatchNormParams, batchnorm2d
from wageubn_sim.engine.ops.pool import PoolParams, avg_pool2d, max_pool2d
from wageubn_sim.engine.registers import Accumulator, Events
from wageubn_sim.fixedpoint import Format, Rounding, reference as ref


def _model():
    torch.manual_seed(0)
    m = wageubn_sim.quantize_model(nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(4, 4, 3, padding=1, groups=2), nn.ReLU6(), nn.AdaptiveAvgPool2d(1),
        nn.Flatten(), nn.Linear(4, 3)))
    m.train()
    with torch.no_grad():
        m.double()(torch.randn(8, 1, 8, 8, dtype=torch.float64))
    return m.eval()


def test_saved_graph_runs_identically_without_torch(tmp_path):
    model = _model()
    x = np.random.default_rng(1).standard_normal((3, 1, 8, 8))
    graph = wageubn_sim.compile(model, x)
    path = graph.save(tmp_path / "net.wgraph")
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "want.npy", graph.run(x).q)
    script = f"""
import sys
sys.modules['torch'] = None  # any import of torch now fails
import numpy as np
import wageubn_sim
g = wageubn_sim.load_graph({str(path)!r})
got = g.run(np.load({str(tmp_path / 'x.npy')!r}, allow_pickle=False)).q
assert np.array_equal(got, np.load({str(tmp_path / 'want.npy')!r}, allow_pickle=False))
assert 'torch' not in [m for m in sys.modules if sys.modules[m] is not None]
print('ok')
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_graph_files_are_deterministic_and_never_overwritten(tmp_path):
    model = _model()
    x = np.zeros((1, 1, 8, 8))
    a = wageubn_sim.compile(model, x).save(tmp_path / "a")
    b = wageubn_sim.compile(model, x).save(tmp_path / "b")
    assert (a / "graph.json").read_bytes() == (b / "graph.json").read_bytes()
    assert (a / "arrays.npz").read_bytes() == (b / "arrays.npz").read_bytes()
    with pytest.raises(FileExistsError, match="overwrite=True"):
        wageubn_sim.compile(model, x).save(a)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b"]  # no temp left behind
    data = json.loads((a / "graph.json").read_text())
    assert data["version"] == 2 and data["nodes"][0]["params"]["weight_fmt"] == {"bits": 8, "frac_bits": 7, "signed": True}
    assert data["nodes"][0]["params"]["rounding"] == "HALF_EVEN"  # plain values


def test_version_1_graphs_still_load_and_run():
    """tests/data/v1 was written by wageubn-sim 0.1.0 (commit 478c496; tests/data/v1/make_v1.py):
    a version-1 graph (tagged params, fx names) and a bundle written from it."""
    data = Path(__file__).parent / "data" / "v1"
    g = wageubn_sim.load_graph(data / "graph")
    assert [n.name for n in g.nodes][:2] == ["_0", "_1"]
    want = np.load(data / "bundle" / "_5" / "output.npy")
    assert np.array_equal(g.run(np.load(data / "x.npy")).q, want)


def test_bad_graph_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a graph folder"):
        wageubn_sim.load_graph(tmp_path)
    g = wageubn_sim.compile(_model(), np.zeros((1, 1, 8, 8))).save(tmp_path / "g")
    data = json.loads((g / "graph.json").read_text())
    data["nodes"][0]["params"]["bogus"] = 1
    (g / "graph.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match="unknown parameters \\['bogus'\\]"):
        wageubn_sim.load_graph(g)
    data["nodes"][0]["params"].pop("bogus")
    good = json.loads(json.dumps(data))
    data["nodes"][0]["arrays"].append("missing")
    (g / "graph.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match="arrays.npz has no array '0/missing'"):
        wageubn_sim.load_graph(g)
    # a file edited by hand: each fault is one ValueError naming the file and the fix
    faults = [(lambda d: d["nodes"][0].pop("inputs"), "'inputs' is missing"),
              (lambda d: d["inputs"][0]["format"].update(bits="8"), "wrong type"),
              (lambda d: d["nodes"][0].update(op="conv3d"), "unknown op 'conv3d'"),
              (lambda d: d.update(nodes=7), "wrong type")]
    for fault, message in faults:
        data = json.loads(json.dumps(good))
        fault(data)
        (g / "graph.json").write_text(json.dumps(data))
        with pytest.raises(ValueError, match=message) as err:
            wageubn_sim.load_graph(g)
        assert str(g) in str(err.value)
    (g / "graph.json").write_text('{"format": "wageubn-sim graph", ')
    with pytest.raises(ValueError, match="not valid JSON"):
        wageubn_sim.load_graph(g)
    (g / "graph.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="graph.json is not a wageubn-sim graph of a version this tool reads"):
        wageubn_sim.load_graph(g)


def test_compare_finds_accumulator_saturation():
    model = _model()
    x = np.random.default_rng(2).standard_normal((2, 1, 8, 8)) * 4
    report = wageubn_sim.compare(model, x, accumulators={"4": Accumulator(13, "SAT")})  # 13 bits hold its bias
    assert not report.exact
    assert report.first.layer == "4" and "accumulator saturation" in report.first.cause
    assert report.layers[0].exact  # the layers before it agree
    assert "first divergence: 4" in str(report)
    assert report.to_dict()["first_divergence"]["layer"] == "4"


def test_compare_reports_float32_rounding_on_large_sums():
    torch.manual_seed(0)
    model = wageubn_sim.quantize_model(nn.Sequential(nn.Conv2d(64, 4, 3, bias=False))).eval()
    with torch.no_grad():
        model[0].weight.fill_(0.99)
    x = np.full((1, 64, 5, 5), 127.99) * np.random.default_rng(0).uniform(0.5, 1, (1, 64, 5, 5))
    report64 = wageubn_sim.compare(model, x)
    assert report64.exact
    report32 = wageubn_sim.compare(model, x, graph=None, dtype=torch.float32)
    assert not report32.exact and "float32 rounding" in report32.first.cause


@given(seed=st.integers(0, 2**31), x_frac=st.integers(4, 16), iostrict=st.booleans())
def test_batchnorm_kernel_equals_exact_reference(seed, x_frac, iostrict):
    rng = np.random.default_rng(seed)
    x = rng.integers(-2**14, 2**14, (2, 3, 3, 3))
    mean = rng.integers(-2**16, 2**16, 3)
    std = rng.integers(1, 2**16, 3)
    gamma = rng.integers(-300, 300, 3)
    beta = rng.integers(-300, 300, 3)
    xhat_fmt = Format(12, 7) if iostrict else Format(None, 7)
    p = BatchNormParams(Format(24, 15), Format(None, 15), xhat_fmt, Format(16, 7), Format(16, 7))
    got = batchnorm2d(x, x_frac, mean, std, gamma, beta, p)
    ties = saturations = 0
    for idx in np.ndindex(x.shape):
        c = idx[1]
        v = (Fraction(int(x[idx]), 2**x_frac) - Fraction(int(mean[c]), 2**15)) / Fraction(int(std[c]), 2**15)
        xh = ref.quantize(v, xhat_fmt, Rounding.HALF_EVEN, "SAT_SYM")
        want = xh * int(gamma[c]) + (int(beta[c]) << 7)
        assert got.q[idx] == want
        ties += (v * 2**7 - math.floor(v * 2**7)) == Fraction(1, 2)
        saturations += xh != ref.quantize(v, Format(None, 7), Rounding.HALF_EVEN, "SAT_SYM")
    assert got.fmt.frac_bits == 14
    # the xhat register's events, counted there (no input register; the output is exact)
    assert got.events_at("xhat") == Events(saturations=saturations, ties=ties)
    assert got.events_at("input") == got.events_at("output") == Events() and got.events == got.events_at("xhat")


def test_batchnorm_counts_xhat_ties_at_xhat():
    """x = odd multiples of 2**-8 with mean 0 and std 1: every xhat (frac 7) is an exact tie."""
    x = np.array([-5, -3, -1, 1, 3, 5, 7, 9], np.int64).reshape(1, 2, 2, 2)
    p = BatchNormParams(Format(24, 15), Format(None, 15), Format(None, 7))
    got = batchnorm2d(x, 8, np.zeros(2, np.int64), np.full(2, 2**15), None, None, p)
    assert got.events_at("xhat") == Events(ties=8) == got.events
    assert got.q.ravel().tolist() == [-2, -2, 0, 0, 2, 2, 4, 4]  # half to even


@given(seed=st.integers(0, 2**31), k=st.integers(1, 3), stride=st.integers(1, 3),
       pad=st.integers(0, 1), out_frac=st.integers(-2, 12), include_pad=st.booleans())
def test_pool_kernels_equal_exact_reference(seed, k, stride, pad, out_frac, include_pad):
    pad = min(pad, k // 2)
    rng = np.random.default_rng(seed)
    x = rng.integers(-2**10, 2**10, (1, 2, 7, 7))
    p = PoolParams((k, k), (stride, stride), (pad, pad), out_fmt=Format(None, out_frac),
                   count_include_pad=include_pad)
    got_avg, got_max = avg_pool2d(x, 5, p).q, max_pool2d(x, 5, p).q
    xt = torch.from_numpy(x.astype(np.float64))
    want_max = nn.functional.max_pool2d(xt, k, stride, pad).numpy()
    assert np.array_equal(got_max, want_max)
    ones = nn.functional.avg_pool2d(torch.ones_like(xt), k, stride, pad, count_include_pad=include_pad)
    sums = nn.functional.avg_pool2d(xt, k, stride, pad, count_include_pad=True, divisor_override=1)
    divisor = (torch.full_like(ones, k * k) if include_pad else
               nn.functional.avg_pool2d(torch.ones_like(xt), k, stride, pad, divisor_override=1))
    for idx in np.ndindex(got_avg.shape):
        want = ref.quantize(Fraction(int(sums[idx]), int(divisor[idx]) * 2**5), Format(None, out_frac),
                            Rounding.HALF_EVEN, "SAT")
        assert got_avg[idx] == want


def test_average_pool_divisors_come_from_the_geometry_alone():
    """count_include_pad=False on an empty batch (a graph's trial run when it loads): the window
    counts come from the geometry, not from a kernel that an empty batch never runs (they were
    read uninitialised: random refusals at load). A window with no cell is bad input; a divisor
    below 1 reaching the division is our bug (InternalError), never blamed on the input."""
    from wageubn_sim.engine.divide import divide_scaled
    from wageubn_sim.errors import InternalError
    p = PoolParams((3, 3), (2, 2), (1, 1), out_fmt=Format(10, 4), count_include_pad=False)
    for _ in range(20):
        assert avg_pool2d(np.zeros((0, 6, 6, 6), np.int64), 4, p).q.shape == (0, 6, 3, 3)
    x = np.arange(6 * 36, dtype=np.int64).reshape(1, 6, 6, 6)
    full = avg_pool2d(np.concatenate([np.zeros((0, 6, 6, 6), np.int64), x]), 4, p).q
    xt = torch.from_numpy(x.astype(np.float64)) * 2.0 ** -4
    assert np.array_equal(full, np.round(nn.functional.avg_pool2d(xt, 3, 2, 1, count_include_pad=False).numpy() * 16))
    with pytest.raises(ValueError, match="lies entirely in the padding"):
        avg_pool2d(x, 4, PoolParams((1, 1), (2, 2), (1, 1), out_fmt=Format(None, 4), count_include_pad=False))
    with pytest.raises(InternalError, match="positive ones"):
        divide_scaled(np.ones((1, 1, 2), np.int64), np.array([[1, 0]]), 0, Rounding.HALF_EVEN)


@given(seed=st.integers(0, 2**31), x_frac=st.integers(-2, 12), six=st.booleans(),
       out_bits=st.sampled_from([None, 6, 10]))
def test_activation_kernel(seed, x_frac, six, out_bits):
    x = np.random.default_rng(seed).integers(-2**12, 2**12, (40,))
    fmt = Format(out_bits, 7)
    got = activation(x, x_frac, ActivationParams(fmt, 6 if six else None)).q
    for v, g in zip(x.tolist(), got.tolist()):
        a = max(Fraction(v, 1) / Fraction(2) ** x_frac, 0)
        a = min(a, 6) if six else a
        assert g == ref.quantize(a, fmt, Rounding.HALF_EVEN, "SAT_SYM")


def test_single_files_are_written_whole_or_not_at_all(tmp_path):
    from wageubn_sim.files.write import write_file_atomically
    path = write_file_atomically(tmp_path / "sub" / "a.bin", b"first", overwrite=False)
    assert path.read_bytes() == b"first"
    with pytest.raises(FileExistsError, match="--force"):
        write_file_atomically(path, b"second", overwrite=False)
    with pytest.raises(TypeError):  # fails while writing: the old file stays, no temp is left
        write_file_atomically(path, "not bytes", overwrite=True)
    assert path.read_bytes() == b"first" and sorted(p.name for p in path.parent.iterdir()) == ["a.bin"]
    assert write_file_atomically(path, b"second", overwrite=True).read_bytes() == b"second"


def test_graphs_refuse_stochastic_rounding_when_built():
    """The forward engine draws no random words: a STOCHASTIC layer is refused when its graph is
    built, not when it runs (docs/arithmetic.md section 9)."""
    import dataclasses
    from wageubn_sim.fixedpoint import Rounding
    g = wageubn_sim.compile(_model(), np.zeros((1, 1, 8, 8)))
    relu = next(n for n in g.nodes if n.op == "activation")
    relu.params = dataclasses.replace(relu.params, rounding=Rounding.STOCHASTIC)
    with pytest.raises(ValueError, match=f"node {relu.name} .*rounding is STOCHASTIC"):
        type(g)(g.inputs, g.nodes, g.outputs)


def test_every_node_runs_on_an_empty_batch():
    g = wageubn_sim.compile(_model(), np.zeros((1, 1, 8, 8)))
    out = g.run(np.zeros((0, 1, 8, 8)), trace=True)
    assert out.q.shape == (0, 3)
    for node in g.nodes:
        assert out.layers[node.name].q.shape[1:] == node.out_shape
        assert out.layers[node.name].fmt == node.out_fmt


def test_function_nodes_are_named_without_addresses():
    """A function's node names it (``torch.flatten``, ``operator.add``), not by its repr, which
    holds an address that differs from run to run: the same model gives the same graph bytes."""
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 2, 3, padding=1)
            self.fc = nn.Linear(2 * 4 * 4, 3)

        def forward(self, x):
            y = self.conv(x)
            return self.fc(torch.flatten(y + y, 1))

    graph = wageubn_sim.compile(wageubn_sim.quantize_model(Net()).eval(), np.zeros((1, 1, 4, 4)))
    sources = {n.op: n.source for n in graph.nodes}
    assert sources["flatten"] == "torch.flatten" and sources["add"] == "operator.add"
    assert not any("0x" in n.source for n in graph.nodes)
