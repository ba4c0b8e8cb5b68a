"""QONNX in and out (docs/arithmetic.md section 11): Brevitas fixtures bit for bit, the export
executed by qonnx, round trips, `compare` against qonnx, and every refusal with its node."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
import torch.nn as nn
from click.testing import CliRunner
from hypothesis import HealthCheck, assume, given, settings, strategies as st
from onnx import TensorProto, helper, numpy_helper
from qonnx.core.modelwrapper import ModelWrapper
from qonnx.core.onnx_exec import execute_onnx

import wageubn_sim
from strategies import qonnx_graphs
from wageubn_sim.cli import main
from wageubn_sim.config import Config
from wageubn_sim.engine.ops.conv2d import Conv2dParams
from wageubn_sim.engine.registers import Accumulator
from wageubn_sim.fixedpoint import Format, Overflow, Rounding
from wageubn_sim.graph.fold import fold_batchnorm
from wageubn_sim.graph.ir import Graph, GraphInput, Node
from wageubn_sim.qonnx.compare import compare_qonnx
from wageubn_sim.qonnx import from_qonnx
from wageubn_sim.qonnx import to_qonnx
from wageubn_sim.execution.ranges import value_ranges

DATA = Path(__file__).parent / "data" / "brevitas"
FLOAT32_EXACT = 1 << 24
# qonnx runs each node in its own onnxruntime session: a property gets a third of the
# profile's examples (100 under `ci`, 1000 under `thorough`)
SLOW = settings(max_examples=max(4, settings.default.max_examples // 3), deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])


def cli(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def qonnx_run(model, x: np.ndarray) -> dict:
    """qonnx's full execution context for float inputs x (the model's declared batch)."""
    wrapper = ModelWrapper(model)
    name = wrapper.graph.input[0].name
    return execute_onnx(wrapper, {name: x.astype(np.float32)}, return_full_exec_context=True)


def canonical(graph: Graph) -> dict:
    """A graph's structure, params and arrays, without where it came from."""
    data = graph.to_json()
    data.pop("meta")
    for node in data["nodes"]:
        node.pop("source")
        params = node["params"]
        fmt = params.get("out_fmt")
        for key in ("overflow", "out_overflow"):  # unsigned, SAT_SYM is SAT (QONNX has one name)
            if fmt is not None and not fmt["signed"] and params.get(key) == "SAT_SYM":
                params[key] = "SAT"
    arrays = {f"{n.name}/{k}": v.tolist() for n in graph.nodes for k, v in n.arrays.items()}
    return {"graph": data, "arrays": arrays}


def assert_same_graph(got: Graph, want: Graph):
    a, b = canonical(got), canonical(want)
    assert a["graph"]["inputs"] == b["graph"]["inputs"]
    assert [n["name"] for n in a["graph"]["nodes"]] == [n["name"] for n in b["graph"]["nodes"]]
    for x, y in zip(a["graph"]["nodes"], b["graph"]["nodes"]):
        assert x == y, f"node {y['name']}"
    assert a == b


def grid_inputs(graph: Graph, n: int, seed: int = 0) -> np.ndarray:
    """Float inputs on the graph input's grid (every integer of its format reachable)."""
    fmt = graph.inputs[0].fmt
    q = np.random.default_rng(seed).integers(fmt.min_int, fmt.max_int + 1, (n, *graph.inputs[0].shape))
    return q * 2.0 ** -fmt.frac_bits


def static_bound(graph: Graph) -> int:
    """The largest magnitude any value (each register's input included) can take, in LSBs."""
    ranges = list(value_ranges(graph).values())
    raw = [(lo, hi) for lo, hi, _ in value_ranges(graph, before_output_register=True).values()]
    return max(max(abs(lo), abs(hi)) for lo, hi in ranges + raw)


# ---- (c) Brevitas fixtures -----------------------------------------------------------------------

@pytest.mark.parametrize("name", ["cnn", "mixed"])
def test_brevitas_models_import_bit_exact_to_brevitas_and_qonnx(name):
    """tools/make_brevitas_fixtures.py exported these with Brevitas 0.13.4; the engine equals
    Brevitas's own torch outputs and qonnx's execution, bit for bit, on on-grid inputs."""
    graph = from_qonnx(DATA / f"{name}.onnx")
    data = np.load(DATA / f"{name}.npz")
    x = data["input"].astype(np.float64)
    ours = graph.run(x).values
    np.testing.assert_array_equal(ours, data["brevitas_output"].astype(np.float64))
    report = compare_qonnx(DATA / f"{name}.onnx", graph, x)
    assert report.exact, str(report)
    assert [layer.name for layer in report.layers] == [n.name for n in graph.nodes]


@pytest.mark.parametrize("name", ["float_cnn", "float_pre", "float_res"])
def test_brevitas_float_scale_models_import_as_exact_thresholds(name):
    """Brevitas's default float scales (and a float BatchNorm, float biases, float preprocessing
    before the first quantizer): each float chain is a thresholds layer, the input quantized by
    its own thresholds, and every output equals Brevitas's (its value over the output's float
    scale, which the graph records) and qonnx's execution, on float inputs off any grid."""
    graph = from_qonnx(DATA / f"{name}.onnx")
    data = np.load(DATA / f"{name}.npz")
    x = data["input"]
    assert graph.inputs[0].levels is not None
    chains = [n for n in graph.nodes if n.op == "thresholds"]
    assert len(chains) == (4 if name == "float_res" else 3)
    if name == "float_pre":
        assert chains[0].arrays["signs"].tolist() == [1, -1, 1]  # the BatchNorm's negative gamma
    out = graph.run(x).q
    scale = float.fromhex(graph.meta["qonnx_scales"][graph.outputs[0]][0])
    brevitas = data["brevitas_output"].astype(np.float64) / scale
    np.testing.assert_allclose(brevitas, np.round(brevitas), atol=1e-4)  # on the output's grid
    np.testing.assert_array_equal(out, np.round(brevitas))
    report = compare_qonnx(DATA / f"{name}.onnx", graph, x)
    if name == "float_res":  # the skip and the branch summed exactly on their common grid:
        # beyond 2**24 LSBs of it, where qonnx's float32 sum rounds (named so)
        assert report.first.layer == "node_add" and "float32" in report.first.cause
        assert [n.op for n in graph.nodes if ".scale_" in n.name] == ["conv2d", "conv2d"]  # onto the grid
        with pytest.raises(ValueError, match="relu: thresholds of 33 bits are not float32"):
            to_qonnx(graph)  # MultiThreshold's float32 thresholds cannot hold the sum's grid
    else:
        assert report.exact, str(report)
    assert {layer.name for layer in report.layers} == {n.name for n in chains} | \
        {n.name for n in graph.nodes if n.op in ("max_pool2d", "flatten", "add")}


def test_brevitas_layers_become_engine_layers_with_their_registers():
    cnn = from_qonnx(DATA / "cnn.onnx")
    assert [(n.name, n.op) for n in cnn.nodes] == [
        ("conv1", "conv2d"), ("relu1", "activation"), ("pool", "max_pool2d"),
        ("node_view", "flatten"), ("fc", "linear")]
    fx, fw = cnn.inputs[0].fmt.frac_bits, cnn.nodes[0].params.weight_fmt.frac_bits
    assert cnn.inputs[0].fmt == Format(8, fx)  # Int8ActPerTensorFixedPoint
    assert cnn.nodes[0].params.bias_fmt == Format(32, fx + fw)  # Int32Bias: the input's scale x the weights'
    assert cnn.nodes[1].params.out_fmt.bits == 8  # the QuantReLU's Quant folded
    assert not cnn.nodes[1].params.out_fmt.signed
    assert cnn.nodes[1].params.overflow == Overflow.SAT
    mixed = from_qonnx(DATA / "mixed.onnx")
    ops = [n.op for n in mixed.nodes]
    assert {"concat", "upsample", "requantize", "add", "avg_pool2d"} <= set(ops)
    stem = mixed.nodes[0]
    assert stem.params.weight_fmt.bits > 8  # per-channel scales aligned to the finest grid
    # TruncAvgPool2d: the exact mean of 4 cells, then Trunc's own rounding as a register
    pool = ops.index("avg_pool2d")
    assert mixed.nodes[pool + 1].op == "requantize" and mixed.nodes[pool].out_fmt.bits is None


def test_done_when_compile_vectors_verify_from_a_brevitas_model(tmp_path):
    model = DATA / "mixed.onnx"
    assert cli("compile", model, "-o", tmp_path / "g.wgraph").exit_code == 0
    assert cli("vectors", tmp_path / "g.wgraph", "--random", 4, "-o", tmp_path / "b").exit_code == 0
    result = cli("verify", tmp_path / "b")
    assert result.exit_code == 0 and "all match" in result.output


# ---- (a) export executed by qonnx ----------------------------------------------------------------

@SLOW
@given(qonnx_graphs())
def test_export_executed_by_qonnx_equals_the_engine_and_imports_back(graph):
    """Below 2**24 (every value and register input, by the static ranges) qonnx's float32
    execution of our export is the engine's result; the export imports back to the graph."""
    assume(static_bound(graph) < FLOAT32_EXACT)
    model = to_qonnx(graph, batch=2)
    x = grid_inputs(graph, 2)
    ctx = qonnx_run(model, x)
    traced = graph.run(x, trace=True)
    for node in graph.nodes:
        out = traced.layers[node.name]
        np.testing.assert_array_equal(ctx[node.name].astype(np.float64) * 2.0 ** out.fmt.frac_bits,
                                      out.q, err_msg=node.name)
    assert_same_graph(from_qonnx(model), graph)  # (b)


def _wide_linear() -> Graph:
    """One Linear whose sums reach 2**40: beyond float32."""
    rng = np.random.default_rng(3)
    w = rng.integers(-2**15, 2**15, (8, 64))
    params = Conv2dParams(Format(16, 0))
    return Graph([GraphInput("x", (64,), Format(16, 0))],
                 [Node("fc", "linear", ["x"], params, {"weight": w})], ["fc"]).check()


def test_beyond_2_24_qonnx_errs_and_the_engine_stays_exact():
    graph = _wide_linear()
    x = grid_inputs(graph, 4, seed=5)
    exact = x.astype(np.int64).astype(object) @ graph.nodes[0].arrays["weight"].T.astype(object)
    ours = graph.run(x).q
    assert ours.tolist() == exact.tolist()  # the engine: Python-integer exact
    qonnx = qonnx_run(to_qonnx(graph, batch=4), x)["fc"].astype(np.float64)
    assert not np.array_equal(qonnx, ours)  # float32 rounds sums beyond 2**24
    # and within float32 summation's error bound, n * 2**-24 * sum |w x|: its rounding alone
    magnitudes = np.abs(x) @ np.abs(graph.nodes[0].arrays["weight"]).T.astype(np.float64)
    assert np.all(np.abs(qonnx - ours) <= 64 * 2.0 ** -24 * magnitudes)


# ---- (b) round trips -------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["conv1d", "shifted"])
def test_brevitas_conv1d_zero_points_and_per_channel_activation_scales(name):
    """QuantConv1d as a conv of height 1; ShiftedUint8's zero-point subtracted where its chain
    ends (the engine's integers q - z); a QuantReLU of per-channel scales summed by the next conv
    exactly (its weights times each input channel's integer factor onto their common grid).
    Every output equals Brevitas's and qonnx's."""
    graph = from_qonnx(DATA / f"{name}.onnx")
    data = np.load(DATA / f"{name}.npz")
    np.testing.assert_array_equal(graph.run(data["input"]).values.astype(np.float32), data["brevitas_output"])
    assert compare_qonnx(DATA / f"{name}.onnx", graph, data["input"]).exact
    if name == "conv1d":
        assert graph.nodes[0].arrays["weight"].shape == (6, 3, 1, 3) and graph.nodes[0].out_shape == (6, 8)
        exported = to_qonnx(graph, batch=2)
        assert canonical(from_qonnx(exported)) == canonical(graph)
        assert compare_qonnx(exported, graph, data["input"][:4]).exact
    else:
        shifted = graph.nodes[1]  # uint8 of zero-point z: levels -z .. 255 - z, signed 9 bits
        assert shifted.op == "thresholds" and shifted.params.first < 0 and shifted.out_fmt.bits == 9
        assert graph.nodes[3].params.weight_fmt.bits > 8  # widened by the per-channel factors
        with pytest.raises(ValueError, match="conv2: weight .* is not exactly a float32"):
            to_qonnx(graph)  # those factors have 24 significant bits: no float32 weight holds them


def _wageubn_model(iostrict: bool, bn: bool):
    torch.manual_seed(0)
    layers = [nn.Conv2d(1, 4, 3, padding=1)] + ([nn.BatchNorm2d(4)] if bn else []) + [
        nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(4, 4, 3, padding=1, groups=2), nn.ReLU6(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3)]
    m = wageubn_sim.quantize_model(nn.Sequential(*layers), Config(iostrict=iostrict))
    m.train()
    with torch.no_grad():
        m.double()(torch.randn(8, 1, 8, 8, dtype=torch.float64))
    return m.eval()


@pytest.mark.parametrize("iostrict", [False, True])
def test_wageubn_graphs_round_trip_and_qonnx_executes_them_exactly(iostrict):
    """A WAGEUBN network, its BatchNorm folded (plain) or without one (iostrict: every input
    and output register), exported, executed by qonnx, imported back unchanged."""
    x = np.random.default_rng(1).standard_normal((3, 1, 8, 8))
    graph = wageubn_sim.compile(_wageubn_model(iostrict, bn=not iostrict), x, Format(8, 4))
    if not iostrict:
        graph = fold_batchnorm(graph, 8)
    model = to_qonnx(graph, batch=3)
    assert canonical(from_qonnx(model)) == canonical(graph)
    marks = [n.doc_string for n in model.graph.node if n.doc_string]
    assert any("input-register" in m for m in marks) == iostrict
    assert any("unbounded" in m for m in marks) != iostrict
    xq = graph.quantize_input(x) * 2.0 ** -4
    np.testing.assert_array_equal(qonnx_run(model, xq)[graph.outputs[0]], graph.run(xq).values)


@pytest.mark.parametrize("name", ["cnn", "mixed", "float_cnn", "float_pre", "conv1d", "conv_transpose"])
def test_an_imported_brevitas_model_round_trips(name):
    """Thresholds go out as MultiThreshold (the input's too, on float64 thresholds) and come
    back the same; the export converts in qonnx's cleanup and channels-last passes and qonnx
    executes it equal to the engine."""
    from qonnx.transformation.channels_last import ConvertToChannelsLastAndClean
    from qonnx.util.cleanup import cleanup_model
    graph = from_qonnx(DATA / f"{name}.onnx")
    model = to_qonnx(graph, batch=2)
    again = from_qonnx(model)
    assert canonical(again) == canonical(graph)
    x = np.load(DATA / f"{name}.npz")["input"][:2]
    fed = x if graph.inputs[0].levels is not None else np.ldexp(graph.quantize_input(x), -graph.inputs[0].fmt.frac_bits)
    last = cleanup_model(ModelWrapper(model)).transform(ConvertToChannelsLastAndClean())
    out = execute_onnx(last, {last.graph.input[0].name: fed.astype(np.float32)})[last.graph.output[0].name]
    result = graph.run(x)  # the export's values are the integers on their grids (float scales not in it)
    np.testing.assert_array_equal(out, np.ldexp(result.q, -result.fmt.frac_bits).reshape(out.shape))
    if name.startswith("float"):
        ops = [n.op_type for n in model.graph.node]
        assert ops.count("MultiThreshold") == 1 + sum(n.op == "thresholds" for n in graph.nodes)
        x = np.load(DATA / f"{name}.npz")["input"][:8]
        assert compare_qonnx(model, again, x).exact


def test_narrow_accumulators_export_only_when_inexact_is_allowed_and_come_back():
    graph = _wide_linear()
    narrow = Graph(graph.inputs, [Node("fc", "linear", ["x"], Conv2dParams(
        Format(16, 0), accumulator=Accumulator(24, "SAT", "kernel_major", 2)), graph.nodes[0].arrays)],
        ["fc"]).check()
    with pytest.raises(ValueError, match="fc: its 24-bit SAT accumulator"):
        to_qonnx(narrow)
    model = to_qonnx(narrow, allow_inexact=True)
    props = {p.key: p.value for p in model.metadata_props}
    assert "fc: 24-bit accumulator exported as exact" in props["wageubn_sim.inexact"]
    assert canonical(from_qonnx(model)) == canonical(narrow)  # the accumulator, from the metadata
    assert from_qonnx(model, accumulators={}).nodes[0].params.accumulator == Accumulator()


def test_floor_registers_export_as_trunc(tmp_path):
    base = _wide_linear()
    params = Conv2dParams(Format(16, 0), out_fmt=Format(12, -20), rounding=Rounding.FLOOR,
                          out_overflow=Overflow.SAT)
    graph = Graph(base.inputs, [Node("fc", "linear", ["x"], params, base.nodes[0].arrays)], ["fc"]).check()
    model = to_qonnx(graph)
    assert [n.op_type for n in model.graph.node].count("Trunc") == 1
    assert canonical(from_qonnx(model)) == canonical(graph)


# ---- (d) compare against qonnx --------------------------------------------------------------

def _model_with(nodes, inits, x_shape, out_name, out_shape, opset=13, qonnx_opset=2, inputs=None):
    graph = helper.make_graph(nodes, "g", inputs or [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
                              [helper.make_tensor_value_info(out_name, TensorProto.FLOAT, out_shape)],
                              [numpy_helper.from_array(np.asarray(v, np.float32 if np.asarray(v).dtype.kind == "f"
                                                                  else np.int64), k) for k, v in inits.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset),
                                                   helper.make_opsetid("qonnx.custom_op.general", qonnx_opset)])


def _quant(x, out, scale, bits, name=None, signed=1, narrow=0, rounding="ROUND", zero="zero"):
    return helper.make_node("Quant", [x, scale, zero, bits], [out], name=name or out,
                            domain="qonnx.custom_op.general", signed=signed, narrow=narrow,
                            rounding_mode=rounding)


def _conv_model(extra_nodes=(), extra_inits=None, out="y", conv_out="y", weight_scale=2.0 ** -6,
                qonnx_opset=2, **quant):
    """x -> Quant(s8.4) -> Conv(Quant(w), Quant(b)) [-> extra]; 2 channels, 3x3."""
    rng = np.random.default_rng(0)
    inits = {"s_in": 2.0 ** -4, "s_w": weight_scale, "s_b": 2.0 ** -10, "zero": 0.0, "b8": 8.0,
             "b16": 16.0, "w": rng.standard_normal((2, 1, 3, 3)) * 0.5, "bias": rng.standard_normal(2)}
    inits.update(extra_inits or {})
    nodes = [_quant("x", "xq", "s_in", "b8", **quant), _quant("w", "wq", "s_w", "b8", narrow=1),
             _quant("bias", "bq", "s_b", "b16"),
             helper.make_node("Conv", ["xq", "wq", "bq"], [conv_out], name="conv", pads=[1, 1, 1, 1],
                              kernel_shape=[3, 3])]
    return _model_with(nodes + list(extra_nodes), inits, [2, 1, 6, 6], out, [2, 2, 6, 6],
                       qonnx_opset=qonnx_opset)


def test_a_float_batchnorm_before_a_quant_becomes_exact_thresholds(tmp_path):
    """The float BatchNormalization after a conv, up to the Quant after it, is one thresholds
    layer: equal to qonnx wherever float32 agrees with exact arithmetic, the rest named."""
    bn = helper.make_node("BatchNormalization", ["c", "gamma", "beta", "mean", "var"], ["z"], name="bn")
    act = _quant("z", "y", "s_out", "b8", name="act")
    model = _conv_model([bn, act], {"gamma": [1.3, -0.7], "beta": [0.1, -0.2], "mean": [0.05, -0.1],
                                    "var": [0.9, 1.7], "s_out": 2.0 ** -3}, conv_out="c")
    onnx.save(model, tmp_path / "bn.onnx")
    graph = from_qonnx(tmp_path / "bn.onnx")
    assert [n.op for n in graph.nodes] == ["conv2d", "thresholds"]
    assert graph.nodes[1].arrays["signs"].tolist() == [1, -1]  # gamma < 0: a non-increasing chain
    x = np.random.default_rng(2).standard_normal((6, 1, 6, 6))
    report = compare_qonnx(tmp_path / "bn.onnx", graph, x)
    assert report.exact or "float32 rounding in the reference" in report.first.cause
    result = cli("compare", tmp_path / "bn.onnx", "--random", 4, "--json", tmp_path / "r.json")
    assert result.exit_code in (0, 1) and json.loads((tmp_path / "r.json").read_text())["reference"] == "qonnx"


def test_a_float_value_no_quant_ends_is_refused(tmp_path):
    bn = helper.make_node("BatchNormalization", ["c", "gamma", "beta", "mean", "var"], ["y"], name="bn")
    model = _conv_model([bn], {"gamma": [1.3, 0.7], "beta": [0.1, -0.2], "mean": [0.05, -0.1],
                               "var": [0.9, 1.7]}, conv_out="c")
    _refused(tmp_path, model, "float value (after bn)", "no Quant ends")


def _bipolar(x, out, scale, name=None):
    return helper.make_node("BipolarQuant", [x, scale], [out], name=name or out,
                            domain="qonnx.custom_op.general")


def test_a_bipolar_activation_is_a_sign_of_levels_minus_one_and_one(tmp_path):
    """BipolarQuant of a conv's output (after a float BatchNorm): +1 where the value is >= 0,
    else -1 (0 itself: +1), on its scale; exact against qonnx, out and back the same."""
    bn = helper.make_node("BatchNormalization", ["c", "gamma", "beta", "mean", "var"], ["z"], name="bn")
    model = _conv_model([bn, _bipolar("z", "y", "s_out", name="sign")],
                        {"gamma": [1.3, -0.7], "beta": [0.1, -0.2], "mean": [0.05, -0.1],
                         "var": [0.9, 1.7], "s_out": 0.5}, conv_out="c")
    onnx.save(model, tmp_path / "sign.onnx")
    graph = from_qonnx(tmp_path / "sign.onnx")
    sign = graph.nodes[-1]
    assert sign.op == "thresholds" and (sign.params.first, sign.params.step) == (-1, 2)
    assert sign.out_fmt == Format(2, 1) and sign.arrays["thresholds"].shape == (2, 1)
    x = np.random.default_rng(3).standard_normal((6, 1, 6, 6))
    result = graph.run(x)
    assert set(np.unique(result.q).tolist()) == {-1, 1}
    report = compare_qonnx(tmp_path / "sign.onnx", graph, x)
    assert report.exact or "float32 rounding in the reference" in report.first.cause
    exported = to_qonnx(graph, batch=2)
    mt = next(n for n in exported.graph.node if n.op_type == "MultiThreshold")
    attrs = {a.name: helper.get_attribute_value(a) for a in mt.attribute}
    assert (attrs["out_dtype"], attrs["out_scale"], attrs["out_bias"]) == (b"BIPOLAR", 1.0, -0.5)
    assert canonical(from_qonnx(exported)) == canonical(graph)
    # the bipolar rule at 0 itself: a chain that is 0 at x = 0 gives +1 there
    zero = _model_with([_quant("x", "xq", "s_in", "b8"), _bipolar("xq", "y", "one", name="sign")],
                       {"s_in": 2.0 ** -4, "zero": 0.0, "b8": 8.0, "one": 1.0}, [1, 1, 1, 3], "y", [1, 1, 1, 3])
    g = from_qonnx(zero)
    assert g.run(np.array([[[[-0.0625, 0.0, 0.0625]]]])).q.tolist() == [[[[-1, 1, 1]]]]


def test_a_bipolar_float_input_after_2x_minus_1_and_a_view(tmp_path):
    """FINN's TFC front: x.view(N, -1), 2x - 1, BipolarQuant: the input's own thresholds (one
    at x = 1/2, levels -1, +1), the flatten done on the integers."""
    nodes = [helper.make_node("Reshape", ["x", "shape"], ["v"], name="view"),
             helper.make_node("Mul", ["v", "two"], ["m"], name="mul"),
             helper.make_node("Sub", ["m", "one"], ["s"], name="sub"),
             _bipolar("s", "y", "one", name="sign")]
    model = _model_with(nodes, {"shape": np.array([1, -1]), "two": 2.0, "one": 1.0}, [1, 1, 2, 3], "y", [1, 6])
    graph = from_qonnx(model)
    assert graph.inputs[0].levels.thresholds == ((0.5,),) and graph.inputs[0].levels.step == 2
    assert [n.op for n in graph.nodes] == ["flatten"]
    x = np.array([[[[0.0, 0.49999997, 0.5], [0.5000001, 1.0, 0.25]]]], np.float32)
    assert graph.run(x).q.tolist() == [[-1, -1, 1, 1, 1, -1]]
    again = from_qonnx(to_qonnx(graph))
    assert again.inputs[0].levels == graph.inputs[0].levels


def test_a_zero_point_is_subtracted_where_its_chain_ends(tmp_path):
    """An unsigned 4-bit Quant of zero-point 5 after a conv: the engine's integer is q - 5 (in
    -5..10, a signed 5-bit format), exact against qonnx; a zero-point that is no integer, or
    per channel, is refused."""
    act = _quant("c", "y", "s_out", "b4", name="act", signed=0, zero="z5")
    model = _conv_model([act], {"s_out": 2.0 ** -2, "b4": 4.0, "z5": 5.0}, conv_out="c")
    onnx.save(model, tmp_path / "zp.onnx")
    graph = from_qonnx(tmp_path / "zp.onnx")
    act_node = graph.nodes[-1]
    assert act_node.op == "thresholds" and act_node.params.first == -5 and act_node.out_fmt == Format(5, 2)
    x = np.random.default_rng(4).standard_normal((6, 1, 6, 6)) * 2
    q = graph.run(x).q
    assert q.min() == -5 and q.max() == 10  # both rails reached
    report = compare_qonnx(tmp_path / "zp.onnx", graph, x)
    assert report.exact, str(report)
    for zero, needle in ((2.5, "one integer"), ([1.0, 2.0], "one integer")):
        bad = _conv_model([act], {"s_out": 2.0 ** -2, "b4": 4.0, "z5": zero}, conv_out="c")
        _refused(tmp_path, bad, "zero-point", needle, "(Quant)")


def test_a_float_tail_is_computed_as_the_reference_does(tmp_path):
    """Mul, Sub and Div by float constants after the last integer tensor, no quantizer after
    them: the graph ends at the integers; the tail's float32 values equal qonnx's, compare names
    the tail, and the export carries it back."""
    tail = [helper.make_node("Mul", ["c", "gain"], ["m"], name="scale"),
            helper.make_node("Sub", ["m", "mean"], ["d"], name="centre"),
            helper.make_node("Div", ["d", "std"], ["y"], name="norm")]
    model = _conv_model(tail, {"gain": 0.3, "mean": np.array([0.1, -0.2], np.float32).reshape(1, 2, 1, 1),
                               "std": 1.7}, conv_out="c")
    onnx.save(model, tmp_path / "tail.onnx")
    with pytest.warns(UserWarning, match="float tail scale -> centre -> norm"):
        graph = from_qonnx(tmp_path / "tail.onnx")
    assert graph.nodes[-1].op == "conv2d" and graph.outputs == [graph.nodes[-1].name]
    x = np.random.default_rng(5).standard_normal((4, 1, 6, 6))
    report = compare_qonnx(tmp_path / "tail.onnx", graph, x)
    assert report.exact and report.tail.mismatches == 0 and report.tail.elements == 4 * 2 * 36
    assert "float tail scale -> centre -> norm: 288 of 288 equal" in str(report)
    with pytest.warns(UserWarning, match="float tail tail/mul -> tail/sub -> tail/div"):
        again = from_qonnx(to_qonnx(graph, batch=2))
    assert canonical(again) == canonical(graph)
    assert dict(again.meta["float_tail"], names=0) == dict(graph.meta["float_tail"], names=0)
    # a tail the reference has no one float32 order for is refused, with the reason
    bn = helper.make_node("BatchNormalization", ["c", "g", "b", "mean2", "var"], ["y"], name="bn")
    bad = _conv_model([bn], {"g": [1.0, 1.0], "b": [0.0, 0.0], "mean2": [0.0, 0.0], "var": [1.0, 1.0]},
                      conv_out="c")
    _refused(tmp_path, bad, "cannot be a float tail", "BatchNormalization")


@pytest.mark.parametrize("stride, pad, dilation, groups", [(1, 1, 1, 1), (2, 2, 2, 2)])
def test_a_1d_convolution_is_a_2d_one_of_height_one(tmp_path, stride, pad, dilation, groups):
    """Conv with (O, I, K) weights on (N, C, L): exact against qonnx, the plan's result the
    layer path's, and exported back as a 1-D Conv that imports into the same graph."""
    rng = np.random.default_rng(6)
    inits = {"s_in": 2.0 ** -4, "s_w": 2.0 ** -6, "s_b": 2.0 ** -10, "zero": 0.0, "b8": 8.0,
             "b16": 16.0, "w": rng.standard_normal((4, 4 // groups, 3)) * 0.5, "bias": rng.standard_normal(4),
             "s_out": 2.0 ** -3}
    nodes = [_quant("x", "xq", "s_in", "b8"), _quant("w", "wq", "s_w", "b8", narrow=1),
             _quant("bias", "bq", "s_b", "b16"),
             helper.make_node("Conv", ["xq", "wq", "bq"], ["c"], name="conv1d", kernel_shape=[3],
                              strides=[stride], pads=[pad, pad], dilations=[dilation], group=groups),
             _quant("c", "y", "s_out", "b8", name="act")]
    length = (13 + 2 * pad - dilation * 2 - 1) // stride + 1
    model = _model_with(nodes, inits, [2, 4, 13], "y", [2, 4, length])
    onnx.save(model, tmp_path / "c1.onnx")
    graph = from_qonnx(tmp_path / "c1.onnx")
    conv = graph.nodes[0]
    assert conv.op == "conv2d" and conv.out_shape == (4, length) and conv.arrays["weight"].shape == (4, 4 // groups, 1, 3)
    x = np.random.default_rng(7).standard_normal((5, 4, 13)) * 3
    assert compare_qonnx(tmp_path / "c1.onnx", graph, x).exact
    q = graph.quantize_input(x)
    planned, layered = graph.run(q, plan=True), graph.run(q, plan=False)
    assert np.array_equal(planned.q, layered.q) and planned.events == layered.events
    exported = to_qonnx(graph, batch=2)
    conv_node = next(n for n in exported.graph.node if n.op_type == "Conv")
    assert [helper.get_attribute_value(a) for a in conv_node.attribute if a.name == "kernel_shape"] == [[3]]
    assert canonical(from_qonnx(exported)) == canonical(graph)
    ctx = qonnx_run(exported, q[:2] * 2.0 ** -4)
    np.testing.assert_array_equal(ctx[graph.outputs[0]], graph.run(q[:2]).values)


def test_compare_blames_float32_beyond_2_24(tmp_path):
    path = tmp_path / "wide.onnx"
    to_qonnx(_wide_linear(), path, batch=4)
    graph = from_qonnx(path)
    report = compare_qonnx(path, graph, grid_inputs(graph, 4, seed=5))
    assert report.first.layer == "fc" and "float32" in report.first.cause


def test_compare_of_an_exact_model_exits_0(tmp_path):
    path = tmp_path / "m.onnx"
    onnx.save(_conv_model(), path)
    result = cli("compare", path, "--random", 5)
    assert result.exit_code == 0 and "bit-exact" in result.output


# ---- refusals ----------------------------------------------------------------------------------

def _refused(tmp_path, model, *needles):
    path = tmp_path / "bad.onnx"
    onnx.save(model, path)
    result = cli("compile", path, "-o", tmp_path / "g")
    assert result.exit_code == 2, result.output
    for needle in needles:
        assert needle in result.output, result.output
    assert not (tmp_path / "g").exists()
    return result.output


def test_unsupported_op_names_node_op_and_the_supported_list(tmp_path):
    out = _refused(tmp_path, _conv_model([helper.make_node("Sigmoid", ["c"], ["y"], name="squash")],
                                          conv_out="c"), "node squash (Sigmoid)", "Supported: Quant/IntQuant")
    assert "Traceback" not in out


def test_a_float_weight_scale_is_exact_up_to_the_next_quant_and_refused_without_one(tmp_path):
    """Weights of scale 0.3: the accumulator is exact integers, its scale and the bias a float
    chain that the Quant after it ends as thresholds; without that Quant the output is a float
    tail (the scale and bias in float32 after the exact accumulator), said at import."""
    with pytest.warns(UserWarning, match="the float tail conv after the last integer tensor"):
        tail = from_qonnx(_conv_model(weight_scale=0.3))
    assert [n.op for n in tail.nodes] == ["conv2d"] and tail.meta["float_tail"]["ops"] == []
    act = _quant("c", "y", "s_out", "b8", name="act")
    model = _conv_model([act], {"s_out": 0.0371}, conv_out="c", weight_scale=0.3)
    graph = from_qonnx(model)
    assert [n.op for n in graph.nodes] == ["conv2d", "thresholds"] and "bias" not in graph.nodes[0].arrays
    x = grid_inputs(graph, 2, seed=3)
    from qonnx.transformation.infer_shapes import InferShapes
    want = qonnx_run(ModelWrapper(model).transform(InferShapes()).model, x)["y"] / np.float32(0.0371)
    assert np.array_equal(np.round(want), graph.run(x).q)


def test_a_zero_point_on_the_input_is_its_quantization_and_on_a_constant_is_refused(tmp_path):
    graph = from_qonnx(_conv_model(extra_inits={"z1": 1.0}, zero="z1"))
    levels = graph.inputs[0].levels  # round(x 16 + 1) in -128..127, the engine's integer q - 1
    assert levels.first == -129 and graph.inputs[0].fmt == Format(9, 4)
    x = np.array([-9.0, -8.0, -0.03, 0.0, 0.03125, 7.9]).reshape(1, 1, 1, 6)
    # round half to even of 16 x + 1: -143 -> -128, -127, 0.52 -> 1, 1, 1.5 -> 2, 127.4 -> 127
    assert levels.quantize(x).ravel().tolist() == [-129, -128, 0, 0, 1, 126]
    weights = _conv_model(extra_inits={"z1": 1.0})
    weights.graph.node[1].input[2] = "z1"
    _refused(tmp_path, weights, "node wq (Quant)", "zero-point 1 is not zero")


@pytest.mark.parametrize("change, needles", [
    ({"rounding": "CEIL"}, ["rounding_mode CEIL has no engine rounding"]),
    ({"signed": 0, "narrow": 1}, ["unsigned narrow"]),
])
def test_input_quant_modes_without_an_engine_form_are_refused(tmp_path, change, needles):
    _refused(tmp_path, _conv_model(**change), "node xq (Quant)", *needles)


def _set_input(node: int, position: int, name: str, value=None):
    def edit(model):
        if value is not None:
            model.graph.initializer.append(numpy_helper.from_array(np.array(value, np.float32), name))
        model.graph.node[node].input[position] = name
    return edit


def _set_attribute(node, **values):
    for a in list(node.attribute):
        if a.name in values:
            node.attribute.remove(a)
    node.attribute.extend(helper.make_attribute(k, v) for k, v in values.items())


def _drop_attribute(node: int, name: str):
    def edit(model):
        attrs = model.graph.node[node].attribute
        attrs.remove(next(a for a in attrs if a.name == name))
    return edit


def _uneven_pads(model):
    _set_attribute(model.graph.node[3], pads=[1, 1, 0, 1])


@pytest.mark.parametrize("edit, needles", [
    (_set_input(0, 3, "b1", 1.0), ["node xq (Quant)", "1-bit signed Quant is bipolar"]),
    (_set_input(1, 3, "b70", 70.0), ["node wq (Quant)", "bit width 70"]),
    (_drop_attribute(1, "narrow"), ["node wq (Quant)", "attribute narrow is missing"]),
    (_set_input(3, 1, "w"), ["node conv (Conv)", "w is not a quantized constant"]),
    (_uneven_pads, ["node conv (Conv)", "pads [1, 1, 0, 1]"]),
])
def test_malformed_quantizers_and_layers_are_refused_with_their_node(tmp_path, edit, needles):
    model = _conv_model()
    edit(model)
    _refused(tmp_path, model, *needles)


def test_nan_weights_and_per_channel_activation_scales_are_refused(tmp_path):
    model = _conv_model()
    model.graph.initializer[-2].CopyFrom(numpy_helper.from_array(np.full((2, 1, 3, 3), np.nan, np.float32), "w"))
    _refused(tmp_path, model, "node wq (Quant)", "NaN")
    model = _conv_model(extra_inits={"s_pc": [2.0 ** -4, 2.0 ** -5]})
    model.graph.node[0].input[1] = "s_pc"
    _refused(tmp_path, model, "node xq (Quant)", "one per channel (1)")


def test_trunc_version_1_is_refused(tmp_path):
    trunc = helper.make_node("Trunc", ["y0", "s_b", "zero", "b16", "s_in", "b8"], ["y"], name="t",
                             domain="qonnx.custom_op.general", rounding_mode="FLOOR")
    _refused(tmp_path, _conv_model([trunc], conv_out="y0", qonnx_opset=1), "node t (Trunc)",
             "Trunc version 1")


def test_a_marker_that_would_change_a_number_is_refused(tmp_path):
    graph = _wide_linear()
    params = Conv2dParams(Format(16, 0), out_fmt=Format(None, -8))
    graph = Graph(graph.inputs, [Node("fc", "linear", ["x"], params, graph.nodes[0].arrays)], ["fc"]).check()
    model = to_qonnx(graph)
    quant = next(n for n in model.graph.node if "unbounded" in n.doc_string)
    narrow_bits = numpy_helper.from_array(np.array(4.0, np.float32), "four")
    model.graph.initializer.append(narrow_bits)
    quant.input[3] = "four"  # the register now clamps at 4 bits: no longer unbounded
    _refused(tmp_path, model, "marked unbounded", "more than its 4 bits")


def test_damaged_files_and_external_data_outside_the_folder_are_refused(tmp_path):
    good = (DATA / "cnn.onnx").read_bytes()
    (tmp_path / "cut.onnx").write_bytes(good[: len(good) // 2])
    result = cli("compile", tmp_path / "cut.onnx", "-o", tmp_path / "g")
    assert result.exit_code == 2 and "not a readable ONNX file" in result.output
    model = onnx.load(DATA / "cnn.onnx")
    onnx.save(model, tmp_path / "ext.onnx", save_as_external_data=True, all_tensors_to_one_file=True,
              location="ext.data", size_threshold=0)
    assert canonical(from_qonnx(tmp_path / "ext.onnx")) == canonical(from_qonnx(DATA / "cnn.onnx"))
    (tmp_path / "ext.data").write_bytes((tmp_path / "ext.data").read_bytes()[:100])
    result = cli("compile", tmp_path / "ext.onnx", "-o", tmp_path / "g")
    assert result.exit_code == 2 and "truncated" in result.output
    model = onnx.load(tmp_path / "ext.onnx", load_external_data=False)
    for t in model.graph.initializer:
        for e in t.external_data:
            if e.key == "location":
                e.value = "../secret.data"
    onnx.save(model, tmp_path / "escape.onnx")
    result = cli("compile", tmp_path / "escape.onnx", "-o", tmp_path / "g")
    assert result.exit_code == 2 and "not a file name beside the model" in result.output


def test_export_refusals_name_the_layer(tmp_path):
    base = _wide_linear()
    for params, needle in [
        (Conv2dParams(Format(16, 0), out_fmt=Format(8, -20), out_overflow=Overflow.WRAP), "WRAP register"),
        (Conv2dParams(Format(16, 0), out_fmt=Format(8, -20), rounding=Rounding.HALF_UP), "HALF_UP has no QONNX name"),
    ]:
        graph = Graph(base.inputs, [Node("fc", "linear", ["x"], params, base.nodes[0].arrays)], ["fc"]).check()
        with pytest.raises(ValueError, match=f"layer fc.*{needle}"):
            to_qonnx(graph)
    wide = Graph(base.inputs, [Node("fc", "linear", ["x"], Conv2dParams(Format(40, 0)),
                                    {"weight": (base.nodes[0].arrays["weight"] << 20) + 1})], ["fc"]).check()
    with pytest.raises(ValueError, match="fc: weight.*not exactly a float32"):
        to_qonnx(wide)
    x = np.random.default_rng(1).standard_normal((2, 1, 8, 8))
    unfolded = wageubn_sim.compile(_wageubn_model(False, bn=True), x, Format(8, 4))
    unfolded.save(tmp_path / "g")
    result = cli("export", tmp_path / "g", "-o", tmp_path / "m.onnx")
    assert result.exit_code == 2 and "fold it (compile --fold-bn 16)" in result.output
    assert not (tmp_path / "m.onnx").exists()
    result = cli("export", tmp_path / "g", "-o", tmp_path / "m.onnx", "--allow-inexact")
    assert result.exit_code == 0 and "inexact: 1: BatchNorm's division done in float" in result.output


@settings(max_examples=max(4, settings.default.max_examples // 3), deadline=None)
@given(st.integers(0, 2**32 - 1), st.lists(st.integers(-3, 9), min_size=3, max_size=3),
       st.integers(2, 8), st.booleans(), st.sampled_from(["ROUND", "HALF_UP", "FLOOR", "DOWN"]))
def test_quantized_constants_equal_qonnx_int_quant(seed, fracs, bits, narrow, mode):
    """A Quant of a weight with per-channel power-of-two scales gives exactly the values of
    qonnx's own int_quant, on one grid (the finest)."""
    from qonnx.custom_op.general.intquant import int_quant
    w = (np.random.default_rng(seed).standard_normal((3, 1, 1, 1)) * 4).astype(np.float32)
    scale = np.array([2.0 ** -f for f in fracs], np.float32).reshape(3, 1, 1, 1)
    model = _conv_model(extra_inits={"w": w, "s_pc": scale, "bias": np.zeros(3), "bw": float(bits)})
    model.graph.node[1].input[1] = "s_pc"
    model.graph.node[1].input[3] = "bw"
    _set_attribute(model.graph.node[1], narrow=int(narrow), rounding_mode=mode)
    _set_attribute(model.graph.node[3], kernel_shape=[1, 1], pads=[0, 0, 0, 0])
    conv = from_qonnx(model).nodes[0]
    want = int_quant(w, scale, np.float32(0), np.float32(bits), 1, int(narrow), mode)
    got = conv.arrays["weight"] * 2.0 ** -conv.params.weight_fmt.frac_bits
    np.testing.assert_array_equal(got, want.astype(np.float64))
    assert conv.params.weight_fmt == Format(bits + max(fracs) - min(fracs), max(fracs))


def test_the_audit_sizes_unsigned_registers_in_unsigned_bits():
    """A QONNX uint8 activation: 0..255 needs 8 unsigned bits (9 signed)."""
    from wageubn_sim.reports.audit import audit
    graph = from_qonnx(DATA / "cnn.onnx")
    rows = {(r.layer, r.tensor): r for r in audit(graph, grid_inputs(graph, 4)).rows}
    relu = rows[("relu1", "output")]
    assert relu.declared.startswith("u8.") and relu.observed_min >= 0
    assert relu.needed_bits == max(1, relu.observed_max.bit_length())
    assert relu.headroom_bits == 8 - relu.needed_bits and relu.proposed.startswith("u")


def _with_identities(count: int) -> onnx.ModelProto:
    """The Brevitas CNN with ``count`` Identity nodes chained before its output."""
    model = onnx.load(DATA / "cnn.onnx")
    out = model.graph.output[0].name
    last = next(n for n in model.graph.node if out in n.output)
    last.output[0] = "id0"
    model.graph.node.extend(helper.make_node("Identity", [f"id{k}"], [f"id{k + 1}" if k < count - 1 else out],
                                             name=f"identity{k}") for k in range(count))
    return model


def test_compare_runs_qonnx_without_identities_and_bounds_its_nodes(tmp_path, monkeypatch):
    """qonnx's shape inference and execution take time quadratic in the node count: the
    reference runs without Identity nodes (50k of them compare in seconds, exactly), and a
    model with more real nodes than the bound is refused, naming it."""
    from wageubn_sim.qonnx import compare as qonnx_compare
    model = _with_identities(50_000)
    path = tmp_path / "ids.onnx"
    onnx.save(model, path)
    lean = qonnx_compare.without_aliases(model)
    assert len(lean.graph.node) == len(model.graph.node) - 50_000 + 1  # the one that writes the output stays
    result = cli("compare", path, "--random", 2)
    assert result.exit_code == 0 and "bit-exact" in result.output, result.output
    monkeypatch.setattr(qonnx_compare, "MAX_REFERENCE_NODES", 5)
    result = cli("compare", DATA / "cnn.onnx", "--random", 1)
    assert result.exit_code == 2 and "the model has 11 nodes" in result.output and "at most 5" in result.output


# ---- float chains: multipliers on request, MultiThreshold in ------------------------------------

def test_multipliers_on_request_are_warned_recorded_and_near_the_exact_thresholds(tmp_path):
    """--rescale multiplier:BITS: each float chain a rescale layer (its contract is tested in
    test_thresholds.py), warned at import, listed in the graph's metadata, named by compare as
    the cause, within a few LSBs of the exact thresholds at 16 bits; its export is refused."""
    from wageubn_sim.qonnx import InexactImport
    with pytest.warns(InexactImport, match="16-bit fixed-point multipliers"):
        graph = from_qonnx(DATA / "float_cnn.onnx", rescale="multiplier:16")
    assert [n.op for n in graph.nodes].count("rescale") == 3 and len(graph.meta["inexact"]) == 3
    exact = from_qonnx(DATA / "float_cnn.onnx")
    x = np.load(DATA / "float_cnn.npz")["input"]
    first = graph.nodes[1].name
    a, b = graph.run(x, trace=True).layers[first].q, exact.run(x, trace=True).layers[first].q
    assert np.abs(a - b).max() <= 1
    with pytest.raises(ValueError, match="no exact QONNX form .* --allow-inexact"):
        to_qonnx(graph)
    model = to_qonnx(graph, batch=2, allow_inexact=True)  # Mul, Adds (offsets in float32 parts), Clip, IntQuant
    assert "relu1: 16-bit multipliers computed in float32" in \
        {p.key: p.value for p in model.metadata_props}["wageubn_sim.inexact"]
    with pytest.warns(InexactImport):
        again = from_qonnx(model)
    assert canonical(again) == canonical(graph)  # the marked chain comes back as the same multipliers
    assert compare_qonnx(model, again, x[:4]).exact
    result = cli("compare", DATA / "float_cnn.onnx", "--random", 8, "--rescale", "multiplier:6")
    assert result.exit_code == 1 and "a fixed-point multiplier approximates the float chain" in result.output
    assert "warning: relu1: the float chain" in result.output
    bad = cli("compile", DATA / "float_cnn.onnx", "-o", tmp_path / "g", "--rescale", "multiplier:99")
    assert bad.exit_code == 2 and "multiplier:BITS (BITS 2..32)" in bad.output


def test_a_finn_multithreshold_imports_exactly_and_rounds_thresholds_up_to_the_grid():
    """A MultiThreshold on a value of grid 2**-4 with thresholds off that grid: x >= T holds for
    the grid's integers from ceil(T * 16); out_scale 2**-1 and out_bias -1.5 give levels -3 + count."""
    thresholds = np.array([[-0.30, 0.0, 0.03125, 0.4], [-1.0, -0.99, 0.5, 0.51]], np.float32)
    mt = helper.make_node("MultiThreshold", ["c", "t"], ["y"], name="mt", domain="qonnx.custom_op.general",
                          out_dtype="INT4", out_scale=0.5, out_bias=-1.5, data_layout="NCHW")
    model = _conv_model([mt], {"t": thresholds}, conv_out="c")
    graph = from_qonnx(model)
    node = graph.nodes[-1]
    assert node.op == "thresholds" and node.params.first == -3 and node.out_fmt == Format(4, 1)
    x = grid_inputs(graph, 2, seed=4)
    from qonnx.transformation.infer_shapes import InferShapes
    want = qonnx_run(ModelWrapper(model).transform(InferShapes()).model, x)["y"]
    np.testing.assert_array_equal(graph.run(x).values, want)


def test_forged_input_levels_in_a_graph_file_are_bad_input(tmp_path):
    graph = from_qonnx(DATA / "float_pre.onnx")
    graph.save(tmp_path / "g")
    data = json.loads((tmp_path / "g" / "graph.json").read_text())
    for forge in ("not hex", None):
        data["inputs"][0]["levels"]["thresholds"][0][0] = forge
        (tmp_path / "g" / "graph.json").write_text(json.dumps(data))
        result = cli("simulate", tmp_path / "g", "--random", 1, "-o", tmp_path / "o.npz")
        assert result.exit_code == 2 and "input levels: threshold" in result.output, result.output
    data = json.loads(json.dumps(graph.to_json()))
    data["inputs"][0]["levels"]["thresholds"][0] = data["inputs"][0]["levels"]["thresholds"][0][::-1]
    (tmp_path / "g" / "graph.json").write_text(json.dumps(data))
    result = cli("simulate", tmp_path / "g", "--random", 1, "-o", tmp_path / "o.npz")
    assert result.exit_code == 2 and "non-decreasing" in result.output, result.output


def test_run_results_carry_the_output_scale_and_the_imports_inexact_notes(tmp_path):
    """A float-scale output's values are its integers times its scale (Brevitas's values);
    a multiplier import's notes travel with every run, and simulate warns; forged metadata
    is bad input."""
    graph = from_qonnx(DATA / "float_cnn.onnx")
    data = np.load(DATA / "float_cnn.npz")
    result = graph.run(data["input"])
    assert result.inexact == () and len(result.scale) == 1
    np.testing.assert_allclose(result.values, data["brevitas_output"], rtol=1e-6)
    with pytest.warns(UserWarning):
        inexact = from_qonnx(DATA / "float_cnn.onnx", rescale="multiplier:12")
    assert len(inexact.run(data["input"][:1]).inexact) == 3
    inexact.save(tmp_path / "g")
    np.save(tmp_path / "x.npy", data["input"][:2])
    result = cli("simulate", tmp_path / "g", "--input", tmp_path / "x.npy", "-o", tmp_path / "y.npy")
    assert result.exit_code == 0 and "warning: not bit-exact to the model it came from: relu1" in result.output
    meta = json.loads((tmp_path / "g" / "graph.json").read_text())
    meta["meta"]["qonnx_scales"] = {"out": ["-0x1p-3"]}
    (tmp_path / "g" / "graph.json").write_text(json.dumps(meta))
    result = cli("simulate", tmp_path / "g", "--input", tmp_path / "x.npy", "-o", tmp_path / "z.npy")
    assert result.exit_code == 2 and "is no positive float64 in hex" in result.output


def test_a_float_first_layer_declares_its_input_register_and_compare_names_it(tmp_path):
    """A model with no input Quant (a float first conv): --input-format is the hardware's input
    register; compare gives qonnx the float inputs and names their quantization as the cause."""
    model = _conv_model()
    model.graph.node[0].input[0] = "x0"  # the Quant now reads nothing the model feeds
    model.graph.node[0].op_type = "Identity"
    del model.graph.node[0].input[1:]
    del model.graph.node[0].attribute[:]
    model.graph.node[0].domain = ""
    model.graph.node[0].input[0] = "x"
    onnx.save(model, tmp_path / "m.onnx")
    graph = from_qonnx(tmp_path / "m.onnx", input_format=Format(8, 4))
    assert graph.meta["input_declared"] is True
    x = np.random.default_rng(0).standard_normal((2, 1, 6, 6))
    report = compare_qonnx(tmp_path / "m.onnx", graph, x)
    assert not report.exact and "the input quantization" in report.first.cause
    assert compare_qonnx(tmp_path / "m.onnx", graph, grid_inputs(graph, 2)).exact  # on its grid: exact


def test_the_sweep_narrows_a_rescales_multipliers_within_its_criterion():
    """--registers multiplier: each rescale's multipliers re-rounded to fewer bits (the same
    ratios, the shift lowered), as narrow as the criterion allows on the data."""
    from wageubn_sim.reports.sweep import sweep
    with pytest.warns(UserWarning):
        graph = from_qonnx(DATA / "float_cnn.onnx", rescale="multiplier:16")
    x = np.load(DATA / "float_cnn.npz")["input"]
    report, proposed = sweep(graph, x, "lsb:1", registers=("multiplier",))
    widths = {n.name: n.params.multiplier_bits for n in proposed.nodes if n.op == "rescale"}
    assert len(widths) == 3 and all(2 <= b <= 16 for b in widths.values()) and min(widths.values()) < 16
    assert report.combined_passes and {c.register for c in report.proposal} == {"multiplier"}
    reference, narrowed = graph.run(x).q, proposed.run(x).q
    assert np.abs(reference - narrowed).max() <= 1
    for node in proposed.nodes:
        if node.op == "rescale":
            limit = 1 << (node.params.multiplier_bits - 1)
            assert np.all(np.abs(node.arrays["multiplier"]) < limit) and np.all(node.arrays["shift"] >= 0)


def test_fold_bn_on_a_qonnx_model_is_refused_and_refusals_name_the_brevitas_quantizer(tmp_path):
    result = cli("compile", DATA / "float_cnn.onnx", "--fold-bn", 8, "-o", tmp_path / "g")
    assert result.exit_code == 2 and "--fold-bn folds the integer BatchNorm layers of a torch model" in result.output
    assert not (tmp_path / "g").exists()
    model = onnx.load(DATA / "float_cnn.onnx")
    quant = next(n for n in model.graph.node if n.name == "node__symbolic_2")  # QuantReLU relu1's
    next(a for a in quant.attribute if a.name == "rounding_mode").s = b"CEIL"
    onnx.save(model, tmp_path / "m.onnx")
    result = cli("compile", tmp_path / "m.onnx", "-o", tmp_path / "g")
    assert result.exit_code == 2 and "(Quant, relu1.act_quant)" in result.output, result.output


def test_exports_name_their_quantizers_quant_and_intquant_on_request(tmp_path):
    """Quant by default (what FINN, hls4ml and qonnx's transformations match), IntQuant with
    --int-quant; both import back into the same graph."""
    graph = from_qonnx(DATA / "cnn.onnx")
    graph.save(tmp_path / "g")
    for flag, op, other in (((), "Quant", "IntQuant"), (("--int-quant",), "IntQuant", "Quant")):
        out = tmp_path / f"{op}.onnx"
        assert cli("export", tmp_path / "g", "-o", out, *flag).exit_code == 0
        ops = [n.op_type for n in onnx.load(out).graph.node]
        assert op in ops and other not in ops
        assert canonical(from_qonnx(out)) == canonical(graph)


def test_a_batchnorm_after_a_gemm_and_scalar_arithmetic_anywhere_become_thresholds():
    """FINN's networks (issue 25): BatchNorm1d after a Gemm, a TensorNorm-like Mul and Add by
    scalars, and a Div, all in one float chain up to the Quant: one thresholds layer, equal to
    qonnx on every element."""
    rng = np.random.default_rng(7)
    inits = {"zero": 0.0, "b8": 8.0, "b4": 4.0, "s_in": 2.0 ** -5, "s_w": 0.0123, "s_out": 0.137,
             "w": rng.standard_normal((6, 12)), "g": rng.uniform(-1.5, 1.5, 6), "be": rng.normal(0, 0.3, 6),
             "mu": rng.normal(0, 0.3, 6), "var": rng.uniform(0.2, 2, 6), "k": 1.7, "c": -0.25, "d": 3.0}
    nodes = [_quant("x", "xq", "s_in", "b8"), _quant("w", "wq", "s_w", "b8", narrow=1),
             helper.make_node("Gemm", ["xq", "wq"], ["y"], name="fc", transB=1),
             helper.make_node("BatchNormalization", ["y", "g", "be", "mu", "var"], ["n"], name="bn"),
             helper.make_node("Mul", ["n", "k"], ["m"], name="scale"),
             helper.make_node("Add", ["m", "c"], ["a"], name="shift"),
             helper.make_node("Div", ["a", "d"], ["v"], name="div"),
             _quant("v", "out", "s_out", "b4", name="act")]
    model = _model_with(nodes, inits, [2, 12], "out", [2, 6])
    graph = from_qonnx(model)
    assert [n.op for n in graph.nodes] == ["linear", "thresholds"]
    assert sorted(set(graph.nodes[1].arrays["signs"].tolist())) == [-1, 1]  # gamma of both signs
    x = grid_inputs(graph, 64, seed=8)
    assert compare_qonnx(model, graph, x).exact
