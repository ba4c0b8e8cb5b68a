"""Make the Brevitas fixtures of tests/test_qonnx.py (the only script here that needs Brevitas):

    python -m venv /tmp/bvenv && /tmp/bvenv/bin/pip install torch==2.13.0 brevitas==0.13.4 \
        onnx==1.23.2 onnxscript
    /tmp/bvenv/bin/python tools/make_brevitas_fixtures.py [--out tests/data/brevitas]

Two small seeded networks with Brevitas's fixed-point quantizers (power-of-two scales, zero
zero-points), calibrated on seeded random data, exported with `brevitas.export.export_qonnx`:

- ``cnn``: QuantIdentity (int8) -> QuantConv2d (int8 weights, int32 bias) -> QuantReLU (uint8)
  -> MaxPool2d -> flatten -> QuantLinear;
- ``mixed``: per-channel weights, a grouped conv, a residual add, TruncAvgPool2d (Trunc),
  nearest Upsample (Resize), a concat, AdaptiveAvgPool2d (ReduceMean), QuantLinear.

and with Brevitas's default float (non-power-of-two) scales (docs/arithmetic.md section 12):

- ``float_cnn``: QuantIdentity (int8, float scale) -> QuantConv2d (per-tensor int8 weights, float
  bias) -> BatchNorm2d kept in float -> QuantReLU (uint8) -> MaxPool2d -> QuantConv2d
  (per-channel 4-bit weights) -> QuantReLU (4 bits) -> flatten -> QuantLinear (6 bits) ->
  QuantIdentity (int8);
- ``float_pre``: FINN's preprocessing 2x - 1 in float before the first quantizer (3 bits), a
  depthwise QuantConv2d (per-channel 2-bit weights) with a negative-gamma BatchNorm2d, a
  signed 5-bit QuantIdentity, a QuantConv2d, QuantReLU (8 bits), QuantLinear, QuantIdentity;
- ``float_res``: a residual block whose skip and branch have their own float scales, added,
  then a 7-bit QuantReLU, QuantLinear, QuantIdentity.

For each, MODEL.onnx (weights inside, no external data file) and MODEL.npz: ``input`` (float32:
the fixed-point models' on the input quantizer's grid, the float models' uniform in [-1, 1] or
[0, 1]), and ``brevitas_output``, Brevitas's own torch outputs for them. The files are written
only if they change (same seeds, same bytes).
"""
from __future__ import annotations

import argparse
import io
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
import torch
import torch.nn as nn

import brevitas
import brevitas.nn as qnn
from brevitas.export import export_qonnx
from brevitas.quant import (Int8ActPerTensorFixedPoint, Int8WeightPerChannelFixedPointMSE,
                            Int8WeightPerChannelFloat, Int8WeightPerTensorFixedPoint, Int32Bias,
                            Uint8ActPerTensorFixedPoint)

INT8 = dict(act_quant=Int8ActPerTensorFixedPoint, return_quant_tensor=True)
UINT8 = dict(act_quant=Uint8ActPerTensorFixedPoint, return_quant_tensor=True)
WEIGHTS = dict(weight_quant=Int8WeightPerTensorFixedPoint, bias_quant=Int32Bias, return_quant_tensor=True)


def _value(t):
    """A QuantTensor's float value (during export, layers pass plain tensors)."""
    return t.value if hasattr(t, "value") else t


class Cnn(nn.Module):
    shape = (1, 8, 8)

    def __init__(self):
        super().__init__()
        self.inp = qnn.QuantIdentity(**INT8)
        self.conv1 = qnn.QuantConv2d(1, 4, 3, padding=1, **WEIGHTS)
        self.relu1 = qnn.QuantReLU(**UINT8)
        self.pool = nn.MaxPool2d(2)
        self.fc = qnn.QuantLinear(4 * 4 * 4, 10, weight_quant=Int8WeightPerTensorFixedPoint,
                                  bias_quant=Int32Bias)

    def forward(self, x):
        x = self.pool(self.relu1(self.conv1(self.inp(x))))
        return self.fc(x.flatten(1))


class Mixed(nn.Module):
    shape = (3, 8, 8)

    def __init__(self):
        super().__init__()
        self.inp = qnn.QuantIdentity(**INT8)
        self.stem = qnn.QuantConv2d(3, 8, 3, padding=1, weight_quant=Int8WeightPerChannelFixedPointMSE,
                                    bias_quant=Int32Bias, return_quant_tensor=True)
        with torch.no_grad():  # channels of different sizes: per-channel scales that differ
            self.stem.weight *= torch.tensor([1.0, 2.0, 4.0, 8.0, 1.0, 0.5, 0.25, 2.0]).view(8, 1, 1, 1)
        self.relu0 = qnn.QuantReLU(**UINT8)
        self.conv1 = qnn.QuantConv2d(8, 8, 3, padding=1, groups=2, **WEIGHTS)
        self.relu1 = qnn.QuantReLU(**UINT8)
        self.add_q = qnn.QuantIdentity(**INT8)
        self.pool = qnn.TruncAvgPool2d(kernel_size=2, stride=2, bit_width=8, return_quant_tensor=True)
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.cat_q = qnn.QuantIdentity(**INT8)
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.gap_q = qnn.QuantIdentity(**INT8)
        self.fc = qnn.QuantLinear(16, 5, weight_quant=Int8WeightPerTensorFixedPoint, bias_quant=Int32Bias)

    def forward(self, x):
        x = self.relu0(self.stem(self.inp(x)))
        y = self.relu1(self.conv1(x))
        s = self.add_q(_value(x) + _value(y))
        p = self.up(_value(self.pool(s)))
        c = self.cat_q(torch.cat([_value(s), _value(p)], dim=1))
        g = self.gap_q(self.gap(_value(c)))
        return self.fc(g.flatten(1))


class FloatCnn(nn.Module):
    shape = (2, 8, 8)
    low = -1.0

    def __init__(self):
        super().__init__()
        self.inp = qnn.QuantIdentity()
        self.conv1 = qnn.QuantConv2d(2, 6, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(6)
        self.relu1 = qnn.QuantReLU()
        self.pool = nn.MaxPool2d(2)
        self.conv2 = qnn.QuantConv2d(6, 4, 3, padding=1, weight_quant=Int8WeightPerChannelFloat,
                                     weight_bit_width=4)
        self.relu2 = qnn.QuantReLU(bit_width=4)
        self.fc = qnn.QuantLinear(4 * 4 * 4, 10, weight_bit_width=6)
        self.out = qnn.QuantIdentity()

    def forward(self, x):
        x = self.pool(self.relu1(self.bn1(self.conv1(self.inp(x)))))
        x = self.relu2(self.conv2(x))
        return self.out(self.fc(x.flatten(1)))


class FloatPre(nn.Module):
    shape = (3, 6, 6)
    low = 0.0

    def __init__(self):
        super().__init__()
        self.inp = qnn.QuantIdentity(bit_width=3)
        self.dw = qnn.QuantConv2d(3, 3, 3, padding=1, groups=3, weight_quant=Int8WeightPerChannelFloat,
                                  weight_bit_width=2, bias=False)
        self.bn = nn.BatchNorm2d(3)
        with torch.no_grad():
            self.bn.weight.copy_(torch.tensor([1.5, -0.75, 0.3]))
            self.bn.bias.copy_(torch.tensor([0.1, -0.2, 0.05]))
        self.q1 = qnn.QuantIdentity(bit_width=5)
        self.conv = qnn.QuantConv2d(3, 5, 3, padding=1)
        self.relu = qnn.QuantReLU()
        self.fc = qnn.QuantLinear(5 * 6 * 6, 4)
        self.out = qnn.QuantIdentity()

    def forward(self, x):
        x = self.q1(self.bn(self.dw(self.inp(2.0 * x - 1.0))))
        x = self.relu(self.conv(x))
        return self.out(self.fc(x.flatten(1)))


class FloatRes(nn.Module):
    """A residual block with Brevitas's default float scales: the skip and the branch each
    quantized by their own QuantIdentity (two float scales), added in float, then a 7-bit
    QuantReLU; per-tensor weights, a float bias, a float BatchNorm."""
    shape = (4, 6, 6)
    low = -1.0

    def __init__(self):
        super().__init__()
        self.inp = qnn.QuantIdentity(bit_width=6)
        self.conv = qnn.QuantConv2d(4, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.branch_q = qnn.QuantIdentity()
        self.skip_q = qnn.QuantIdentity()
        self.relu = qnn.QuantReLU(bit_width=7)
        self.fc = qnn.QuantLinear(4 * 6 * 6, 3)
        self.out = qnn.QuantIdentity()

    def forward(self, x):
        x = self.inp(x)
        y = self.relu(self.branch_q(self.bn(self.conv(x))) + self.skip_q(x))
        return self.out(self.fc(y.flatten(1)))


def _model_bytes(net, example) -> bytes:
    """The QONNX export, its weights moved inside the one file."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.onnx"
        export_qonnx(net, example, export_path=str(path))
        model = onnx.load(str(path))  # with its external data
    for node in model.graph.node:  # keep the module names; drop stack traces (local paths)
        kept = [(p.key, p.value) for p in node.metadata_props
                if p.key in ("namespace", "pkg.torch.onnx.name_scopes", "pkg.torch.onnx.class_hierarchy")]
        del node.metadata_props[:]
        for key, value in kept:
            node.metadata_props.add(key=key, value=value)
    model.producer_version = f"brevitas {brevitas.__version__}, torch {torch.__version__}"
    return model.SerializeToString()


def _write_if_changed(path: Path, data: bytes) -> None:
    if not path.exists() or path.read_bytes() != data:
        path.write_bytes(data)
        print(f"wrote {path}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(Path(__file__).parent.parent / "tests" / "data" / "brevitas"))
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name, cls in (("cnn", Cnn), ("mixed", Mixed), ("float_cnn", FloatCnn), ("float_pre", FloatPre),
                      ("float_res", FloatRes)):
        torch.manual_seed(0)
        net = cls()
        net.train()
        floats = hasattr(cls, "low")
        with torch.no_grad():  # calibrate the activation quantizers' scales (and BatchNorm's statistics)
            for _ in range(4 if not floats else 40):
                net(torch.rand(8, *cls.shape) * 2 - 1 if floats else torch.randn(8, *cls.shape))
        net.eval()
        example = torch.randn(2, *cls.shape)
        data = _model_bytes(net, example)
        with torch.no_grad():
            if floats:  # float inputs: the model quantizes them itself, exactly in the engine
                g = torch.Generator().manual_seed(1)
                x = cls.low + (1 - cls.low) * torch.rand((64, *cls.shape), generator=g)
            else:  # inputs on the input quantizer's grid (int8 at its scale), so that rounding keeps them
                scale = float(net.inp(torch.zeros(1, *cls.shape)).scale)
                x = torch.randint(-128, 128, (4, *cls.shape), generator=torch.Generator().manual_seed(1)) * scale
            want = net(x)
        arrays = io.BytesIO()
        np.savez(arrays, input=x.numpy().astype(np.float32), brevitas_output=want.numpy())
        _write_if_changed(out / f"{name}.onnx", data)
        _write_if_changed(out / f"{name}.npz", arrays.getvalue())
    return 0


if __name__ == "__main__":
    sys.exit(main())
