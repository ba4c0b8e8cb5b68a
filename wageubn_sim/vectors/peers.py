"""The peer layouts of a bundle, written and read here side by side: the network's input and
output as hls4ml's C-simulation data (``tb_data/*.dat``) and as ONNX backend-test tensors
(``test_data_set_0/*.pb``), each value exact (a decimal that reads back as the float64, a
float32 where the value is one)."""
from __future__ import annotations

import numpy as np

from ..fixedpoint.format import Format
from .formats import ImageError


def _real_values(q: np.ndarray, fmt: Format, what: str) -> np.ndarray:
    """q * 2**-f as float64, refusing values float64 cannot hold exactly."""
    if q.size and int(np.abs(q).max()) >= 1 << 53:
        raise ValueError(f"{what}: values beyond 2**53 have no exact float64 for a peer layout")
    return q.astype(np.float64) * 2.0 ** -fmt.frac_bits


def hls4ml_dat(q: np.ndarray, fmt: Format) -> bytes:
    """hls4ml's tb_data: one sample per line, its values (in the bundle's layout) as decimal
    reals, space-separated; each the shortest decimal that reads back as the exact value."""
    values = _real_values(q, fmt, "hls4ml tb_data").reshape(len(q), -1)
    return "".join(" ".join(repr(float(v)) for v in row) + "\n" for row in values).encode()


def onnx_tensor(q: np.ndarray, fmt: Format, name: str) -> bytes:
    """An ONNX TensorProto (as in an ONNX backend test's test_data_set_0) of the real values,
    float32 when every value is a float32, else float64."""
    try:
        from onnx import numpy_helper
    except ImportError:
        raise ValueError("the onnx file kind needs the onnx package: pip install 'wageubn-sim[onnx]'") from None
    values = _real_values(q, fmt, "ONNX test data")
    single = values.astype(np.float32)
    return numpy_helper.from_array(single if np.array_equal(single, values) else values,
                                   name).SerializeToString()


def read_dat(data: bytes, samples: int) -> np.ndarray:
    """hls4ml's tb_data .dat: one sample per line, space-separated decimal reals."""
    lines = data.decode("ascii").split("\n")
    if lines[-1] != "" or len(lines) - 1 != samples:
        raise ImageError(f"{len(lines) - 1} lines (each ended by a newline), {samples} samples expected")
    rows = [line.split(" ") for line in lines[:-1]]
    if len({len(r) for r in rows}) > 1:
        raise ImageError("its lines hold different numbers of values")
    try:
        return np.array([[float(v) for v in r] for r in rows], np.float64).reshape(samples, -1)
    except ValueError as err:
        raise ImageError(f"a value is not a decimal number ({err})") from None


def read_onnx_tensor(data: bytes, shape: tuple) -> np.ndarray:
    from onnx import TensorProto, numpy_helper
    tensor = TensorProto()
    try:
        tensor.ParseFromString(data)
    except Exception as err:  # protobuf's DecodeError and kin
        raise ImageError(f"is not an ONNX TensorProto ({type(err).__name__})") from None
    if tuple(tensor.dims) != tuple(shape):
        raise ImageError(f"declares dims {list(tensor.dims)}, the tensor has {list(shape)}")
    if tensor.data_type not in (TensorProto.FLOAT, TensorProto.DOUBLE):
        raise ImageError(f"holds ONNX data type {tensor.data_type}, not float or double")
    try:
        return numpy_helper.to_array(tensor).astype(np.float64)
    except ValueError as err:
        raise ImageError(f"its data does not fit its dims ({err})") from None
