"""FINN's example networks (brevitas_examples.bnn_pynq: TFC, SFC, LFC, CNV at their real sizes,
random weights, calibrated BatchNorms; tools/make_brevitas_fixtures.py --bnn-pynq) imported:
bipolar activations as thresholds of levels -1, +1, BatchNorm after Gemm, 2x - 1 and a view
before the first quantizer, TensorNorm as a float tail. Each equals Brevitas, our export of it
converts in qonnx's cleanup and channels-last passes and executes there equal to the engine,
and imports back into the same graph."""
import lzma
import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest

from wageubn_sim.qonnx import from_qonnx, to_qonnx
from wageubn_sim.qonnx.compare import compare_qonnx
from test_qonnx import canonical

DATA = Path(__file__).parent / "data" / "bnn_pynq"
NAMES = sorted(p.name[: -len(".onnx.xz")] for p in DATA.glob("*.onnx.xz"))


def _load(name):
    model = onnx.load_from_string(lzma.decompress((DATA / f"{name}.onnx.xz").read_bytes()))
    data = np.load(DATA / f"{name}.npz")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the float tail's note, tested below
        graph = from_qonnx(model)
    return model, graph, data["pixels"].astype(np.float32) / 255, data


def _tail(graph) -> dict:
    """The graph's float tail without the model's node names."""
    return dict(graph.meta["float_tail"], names=None)


def test_every_bnn_pynq_network_is_here():
    assert NAMES == sorted(["tfc_1w1a", "tfc_1w2a", "tfc_2w2a", "sfc_1w1a", "sfc_1w2a", "sfc_2w2a",
                            "lfc_1w1a", "lfc_1w2a", "cnv_1w1a", "cnv_1w2a", "cnv_2w2a"])


@pytest.fixture(scope="module", params=NAMES)
def network(request):
    return (request.param, *_load(request.param))


def test_it_equals_brevitas(network):
    """The last integer tensor (the last QuantLinear's output) equals Brevitas's on every
    element, and so does the float tail after it (TensorNorm) where the export's folded
    (var + eps) ** 0.5 is the one torch computes at run time; where the export's constant is an
    ulp away (some models), the tail follows the model it imports, within 2 ulps of Brevitas."""
    name, _, graph, x, data = network
    result = graph.run(x)
    unit = np.array([float.fromhex(v) for v in graph.meta["float_tail"]["unit"]])
    last = result.q * unit  # what one integer is worth: exact in float64 here
    np.testing.assert_array_equal(last, data["brevitas_last"].astype(np.float64))
    want = data["brevitas_output"]
    got = result.values.astype(np.float32)
    divisor = next(op["operand"] for op in graph.meta["float_tail"]["ops"] if op["op"] == "Div")
    ulps = abs(int(np.float32(float.fromhex(divisor[0])).view(np.int32)) -
               int(data["brevitas_divisor"].view(np.int32)[0]))
    if ulps == 0:
        np.testing.assert_array_equal(got, want)
    else:
        assert ulps == 1 and np.all(np.abs(got.view(np.int32) - want.view(np.int32)) <= 2)
    ops = [n.op for n in graph.nodes]
    assert "thresholds" in ops and all(
        n.params.step == 2 and n.params.first == -1 for n in graph.nodes
        if n.op == "thresholds" and n.out_fmt.bits == 2 and "1a" in name)
    assert any("float tail" in note for note in result.inexact)


def test_our_export_converts_in_qonnx_executes_equal_and_imports_back(network):
    from qonnx.core.modelwrapper import ModelWrapper
    from qonnx.core.onnx_exec import execute_onnx
    from qonnx.transformation.channels_last import ConvertToChannelsLastAndClean
    from qonnx.util.cleanup import cleanup_model
    name, _, graph, x, _ = network
    exported = to_qonnx(graph)
    with pytest.warns(UserWarning, match="the float tail tail/sub -> tail/div -> tail/mul -> tail/add"):
        again = from_qonnx(exported)
    assert canonical(again) == canonical(graph) and _tail(again) == _tail(graph)
    ops = [n.op_type for n in exported.graph.node]
    assert "IntQuant" not in ops and "MultiThreshold" in ops  # what FINN's front end reads
    model = cleanup_model(ModelWrapper(exported)).transform(ConvertToChannelsLastAndClean())
    out = execute_onnx(model, {model.graph.input[0].name: x[:1]})[model.graph.output[0].name]
    np.testing.assert_array_equal(out, graph.run(x[:1]).values.astype(np.float32))


@pytest.mark.parametrize("name", ["tfc_1w1a", "sfc_1w2a", "cnv_2w2a"])
def test_compare_against_qonnx_is_exact_and_names_the_float_tail(name):
    model, graph, x, _ = _load(name)
    report = compare_qonnx(model, graph, x[:2])
    assert report.exact, str(report)
    assert report.tail is not None and report.tail.mismatches == 0
    assert "float tail node_sub_1 -> node_div -> node_mul_1 -> node_add_1: 20 of 20 equal" in str(report)
