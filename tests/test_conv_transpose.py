"""ConvTranspose2d (docs/arithmetic.md section 9, transposed convolution): the engine op against
torch's conv_transpose2d and its autograd on integers (exact in float64 at these sizes), its
params' refusals, and its import from Brevitas and QONNX, executed by qonnx, out and back."""
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from hypothesis import assume, given, strategies as st

from test_qonnx import _model_with, _quant, canonical
from onnx import helper
from wageubn_sim.engine.ops.conv_transpose2d import ConvTranspose2dParams
from wageubn_sim.engine.registry import OPS
from wageubn_sim.fixedpoint import Format
from wageubn_sim.fixedpoint.format import FixedArray
from wageubn_sim.qonnx import from_qonnx, to_qonnx
from wageubn_sim.qonnx.compare import compare_qonnx

DATA = Path(__file__).parent / "data" / "brevitas"
SPEC = OPS["conv_transpose2d"]


@st.composite
def transposed(draw):
    """A random ConvTranspose2d: geometry, integer input, weights, bias, output error."""
    groups, k = draw(st.integers(1, 2)), draw(st.integers(1, 3))
    stride, dilation = draw(st.integers(1, 3)), draw(st.integers(1, 2))
    pad = draw(st.integers(0, dilation * (k - 1)))
    extra = draw(st.integers(0, max(stride, dilation) - 1))
    cin, og = groups * draw(st.integers(1, 2)), draw(st.integers(1, 3))
    h, w = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    assume((min(h, w) - 1) * stride + dilation * (k - 1) + extra + 1 - 2 * pad >= 1)  # an output
    rng = np.random.default_rng(draw(st.integers(0, 2**31)))
    p = ConvTranspose2dParams(Format(8, 0), Format(16, 0), stride=(stride, stride), padding=(pad, pad),
                              output_padding=(extra, extra), dilation=(dilation, dilation), groups=groups)
    x = rng.integers(-128, 128, (draw(st.integers(0, 2)), cin, h, w))
    arrays = {"weight": rng.integers(-128, 128, (cin, og, k, k)), "bias": rng.integers(-2**15, 2**15, og * groups)}
    return p, x, arrays, rng


def _torch(p, x, arrays):
    xt = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    wt = torch.tensor(arrays["weight"], dtype=torch.float64, requires_grad=True)
    bt = torch.tensor(arrays["bias"], dtype=torch.float64, requires_grad=True)
    y = torch.nn.functional.conv_transpose2d(xt, wt, bt, stride=p.stride, padding=p.padding,
                                             output_padding=p.output_padding, groups=p.groups,
                                             dilation=p.dilation)
    return xt, wt, bt, y


@given(transposed())
def test_forward_and_backward_equal_torch_on_integers(case):
    """Every output, input error, weight and bias gradient equals torch's (integers below
    2**53: float64 exact), for strides, paddings, output paddings, dilations and groups."""
    p, x, arrays, rng = case
    out = SPEC.run(p, arrays, [(x, 0)], True)
    xt, wt, bt, y = _torch(p, x, arrays)
    assert np.array_equal(out.q, y.detach().numpy()) and out.q.shape == tuple(y.shape)
    error = rng.integers(-100, 100, out.q.shape)
    (dx,), grads = SPEC.backward(p, arrays, [(x, 0)], out, FixedArray(error, 0))
    y.backward(torch.tensor(error, dtype=torch.float64))
    assert np.array_equal(dx.q, xt.grad.numpy())
    assert np.array_equal(grads["weight"].q, wt.grad.numpy()) and np.array_equal(grads["bias"].q, bt.grad.numpy())
    lo, hi, _ = SPEC.static_range(p, arrays, [((-128, 127), 0)])
    assert out.q.size == 0 or lo <= out.q.min() <= out.q.max() <= hi


def test_its_params_refuse_what_onnx_refuses():
    with pytest.raises(ValueError, match="output_padding=\\(2, 2\\) must be below the stride or the dilation"):
        ConvTranspose2dParams(Format(8, 0), stride=(2, 2), output_padding=(2, 2))
    with pytest.raises(ValueError, match="padding \\(3, 3\\) exceeds the kernel's reach"):
        SPEC.run(ConvTranspose2dParams(Format(8, 0), padding=(3, 3)), {"weight": np.ones((1, 1, 3, 3), np.int64)},
                 [(np.ones((1, 1, 8, 8), np.int64), 0)], False)
    with pytest.raises(ValueError, match="an input 1x1 gives an output 0x0"):
        SPEC.run(ConvTranspose2dParams(Format(8, 0), padding=(1, 1)), {"weight": np.ones((1, 1, 2, 2), np.int64)},
                 [(np.ones((1, 1, 1, 1), np.int64), 0)], False)


def test_brevitas_quant_conv_transpose_equals_brevitas_and_qonnx_and_comes_back():
    graph = from_qonnx(DATA / "conv_transpose.onnx")
    data = np.load(DATA / "conv_transpose.npz")
    assert [n.op for n in graph.nodes] == ["conv_transpose2d", "activation"]
    assert graph.nodes[0].params.output_padding == (1, 1) and graph.nodes[0].out_shape == (3, 10, 10)
    np.testing.assert_array_equal(graph.run(data["input"]).values, data["brevitas_output"])
    assert compare_qonnx(DATA / "conv_transpose.onnx", graph, data["input"]).exact
    exported = to_qonnx(graph, batch=2)
    assert "ConvTranspose" in [n.op_type for n in exported.graph.node]
    assert canonical(from_qonnx(exported)) == canonical(graph)


def test_a_grouped_transposed_convolution_from_qonnx(tmp_path):
    rng = np.random.default_rng(6)
    inits = {"s_in": 2.0 ** -4, "s_w": 2.0 ** -6, "s_b": 2.0 ** -10, "zero": 0.0, "b8": 8.0, "b16": 16.0,
             "w": rng.standard_normal((4, 3, 3, 3)) * 0.5, "bias": rng.standard_normal(6), "s_out": 2.0 ** -3}
    nodes = [_quant("x", "xq", "s_in", "b8"), _quant("w", "wq", "s_w", "b8", narrow=1),
             _quant("bias", "bq", "s_b", "b16"),
             helper.make_node("ConvTranspose", ["xq", "wq", "bq"], ["c"], name="up", kernel_shape=[3, 3],
                              strides=[2, 2], pads=[1, 1, 1, 1], output_padding=[1, 1], group=2),
             _quant("c", "y", "s_out", "b8", name="act")]
    model = _model_with(nodes, inits, [2, 4, 5, 5], "y", [2, 6, 10, 10])
    onnx.save(model, tmp_path / "up.onnx")
    graph = from_qonnx(tmp_path / "up.onnx")
    assert [n.op for n in graph.nodes] == ["conv_transpose2d"] and graph.nodes[0].params.groups == 2
    assert compare_qonnx(tmp_path / "up.onnx", graph, rng.standard_normal((3, 4, 5, 5)) * 3).exact
    assert canonical(from_qonnx(to_qonnx(graph, batch=2))) == canonical(graph)
