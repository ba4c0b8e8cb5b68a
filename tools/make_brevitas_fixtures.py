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
  then a 7-bit QuantReLU, QuantLinear, QuantIdentity;
- ``conv1d``: a QuantConv1d (stride 2, padding 1), QuantReLU, QuantLinear, QuantIdentity;
- ``shifted``: a zero-point (ShiftedUint8ActPerTensorFloat) and a QuantReLU of per-channel
  scales before a QuantConv2d;
- ``conv_transpose``: QuantIdentity (int8), QuantConvTranspose2d (stride 2, padding 1,
  output_padding 1; fixed-point int8 weights, int32 bias), QuantReLU (uint8).

With ``--bnn-pynq FOLDER``, also FINN's example networks (`bnn_pynq` below).

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
                            ShiftedUint8ActPerTensorFloat, Uint8ActPerTensorFixedPoint)

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


class Conv1d(nn.Module):
    """FINN users' 1-D networks: a QuantConv1d (stride 2, padding 1) between float-scale
    quantizers."""
    shape = (3, 16)
    low = -1.0

    def __init__(self):
        super().__init__()
        self.inp = qnn.QuantIdentity()
        self.conv = qnn.QuantConv1d(3, 6, 3, stride=2, padding=1)
        self.relu = qnn.QuantReLU()
        self.fc = qnn.QuantLinear(6 * 8, 4)
        self.out = qnn.QuantIdentity()

    def forward(self, x):
        return self.out(self.fc(self.relu(self.conv(self.inp(x))).flatten(1)))


class Shifted(nn.Module):
    """A nonzero zero-point (ShiftedUint8ActPerTensorFloat) and per-channel activation scales
    (a QuantReLU scaled per output channel) before a conv that sums over those channels."""
    shape = (2, 6, 6)
    low = -1.0

    def __init__(self):
        super().__init__()
        self.inp = qnn.QuantIdentity()
        self.conv = qnn.QuantConv2d(2, 4, 3, padding=1)
        self.act = qnn.QuantIdentity(act_quant=ShiftedUint8ActPerTensorFloat)
        self.relu = qnn.QuantReLU(per_channel_broadcastable_shape=(1, 4, 1, 1), scaling_per_output_channel=True,
                                  scaling_stats_permute_dims=(1, 0, 2, 3))
        self.conv2 = qnn.QuantConv2d(4, 3, 3, padding=1)
        self.out = qnn.QuantIdentity()

    def forward(self, x):
        return self.out(self.conv2(self.relu(self.act(self.conv(self.inp(x))))))


class ConvTranspose(nn.Module):
    """A decoder's upsampling: QuantConvTranspose2d (stride 2, padding 1, output_padding 1,
    power-of-two scales, int8 weights and an int32 bias), then a QuantReLU."""
    shape = (4, 5, 5)

    def __init__(self):
        super().__init__()
        self.inp = qnn.QuantIdentity(**INT8)
        self.up = qnn.QuantConvTranspose2d(4, 3, 3, stride=2, padding=1, output_padding=1, **WEIGHTS)
        self.relu = qnn.QuantReLU(**UINT8)

    def forward(self, x):
        return _value(self.relu(self.up(self.inp(x))))


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


BNN_PYNQ = ("tfc_1w1a", "tfc_1w2a", "tfc_2w2a", "sfc_1w1a", "sfc_1w2a", "sfc_2w2a", "lfc_1w1a",
            "lfc_1w2a", "cnv_1w1a", "cnv_1w2a", "cnv_2w2a")


def bnn_pynq(out: Path) -> None:
    """FINN's example networks (``brevitas_examples.bnn_pynq``) at their real sizes: random
    weights put on their quantizer's grid (so that the export's float32 weights are exactly
    the integers, and xz stores a 1-bit weight in about a bit), BatchNorm statistics calibrated
    on seeded random images (cumulative averages), exported with export_qonnx: NAME.onnx.xz, and
    NAME.npz with ``pixels`` (uint8 images; the input is pixels / 255 in float32, the range
    the models were trained on), Brevitas's ``brevitas_output`` and ``brevitas_last`` (the last
    QuantLinear's output, before TensorNorm's float tail) and ``brevitas_divisor`` (TensorNorm's
    (var + eps) ** 0.5 as torch computes it at run time; the export holds it folded)."""
    import lzma
    from brevitas_examples.bnn_pynq.models import model_with_cfg
    out.mkdir(parents=True, exist_ok=True)
    for name in BNN_PYNQ:
        torch.manual_seed(0)
        net, _ = model_with_cfg(name, pretrained=False)
        shape = (1, 28, 28) if "fc" in name else (3, 32, 32)
        with torch.no_grad():
            for m in net.modules():
                if isinstance(m, (qnn.QuantLinear, qnn.QuantConv2d)):
                    m.weight.copy_(_value(m.quant_weight()))
                if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
                    m.momentum = None  # a cumulative average over the calibration batches
            net.train()
            for _ in range(4):
                net(torch.rand(32, *shape))
        net.eval()
        pixels = torch.randint(0, 256, (4, *shape), generator=torch.Generator().manual_seed(1),
                               dtype=torch.uint8)
        x = pixels.to(torch.float32) / 255
        last = {}
        tail = net.features[-1] if hasattr(net, "features") else net.linear_features[-1]
        hook = tail.register_forward_hook(lambda mod, inp, _: last.update(x=_value(inp[0])))  # None: output kept
        with torch.no_grad():
            want = net(x)
        hook.remove()
        data = _model_bytes(net, torch.rand(1, *shape))
        arrays = io.BytesIO()
        divisor = (tail.running_var + tail.eps).pow(0.5)  # as TensorNorm computes it at run time
        np.savez(arrays, pixels=pixels.numpy(), brevitas_output=want.numpy(),
                 brevitas_last=last["x"].numpy(), brevitas_divisor=divisor.detach().numpy())
        _write_if_changed(out / f"{name}.onnx.xz", lzma.compress(data, preset=9 | lzma.PRESET_EXTREME))
        _write_if_changed(out / f"{name}.npz", arrays.getvalue())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(Path(__file__).parent.parent / "tests" / "data" / "brevitas"))
    parser.add_argument("--bnn-pynq", help="Also write FINN's bnn_pynq networks into this folder "
                        "(tests/data/bnn_pynq).")
    args = parser.parse_args(argv)
    if args.bnn_pynq:
        bnn_pynq(Path(args.bnn_pynq))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name, cls in (("cnn", Cnn), ("mixed", Mixed), ("float_cnn", FloatCnn), ("float_pre", FloatPre),
                      ("float_res", FloatRes), ("conv1d", Conv1d), ("shifted", Shifted),
                      ("conv_transpose", ConvTranspose)):
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
