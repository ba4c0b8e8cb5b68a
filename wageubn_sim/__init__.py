"""wageubn-sim: a bit-exact integer golden model of WAGEUBN networks.

Layout: `fixedpoint` (formats, rounding, overflow, R, random bits: the arithmetic contract),
`scheme` (the WAGEUBN quantizers on integers), `function` and `config` (the PyTorch path,
the seed's API corrected), `convert` (float model -> WAGEUBN modules), `engine` (the Numba
integer kernels, one op per file), `graph` (the integer graph, its torch and QONNX importers,
the QONNX exporter, the layer-by-layer comparisons).
"""
from .memory import keep_freed_memory  # the freed-memory policy, on request (the CLI asks for it)
from .version import __version__


def load_graph(path):
    """Load a saved integer graph (no torch needed)."""
    from .graph.ir import load_graph as _load
    return _load(path)


def fold_batchnorm(graph, multiplier_bits: int = 16):
    """The graph with each conv -> BatchNorm pair folded into one node (docs/arithmetic.md §9)."""
    from .graph.fold import fold_batchnorm as _fold
    return _fold(graph, multiplier_bits)


def from_qonnx(model, input_format=None, accumulators=None):
    """The integer graph of a QONNX model: a path to an .onnx file or an onnx.ModelProto
    (docs/arithmetic.md section 11; needs onnx). `to_qonnx` goes the other way."""
    from .qonnx import from_qonnx as _from_qonnx
    return _from_qonnx(model, input_format, accumulators)


def to_qonnx(graph, path=None, batch: int = 1, allow_inexact: bool = False, overwrite: bool = False):
    """The graph as a QONNX model (written to ``path`` if given; returns the ModelProto; needs
    onnx): IntQuant and Trunc registers that qonnx executes and FINN and hls4ml read."""
    from .qonnx import to_qonnx as _to_qonnx
    return _to_qonnx(graph, path, batch, allow_inexact, overwrite)


def __getattr__(name):
    # torch is imported only when the torch path is asked for: the integer side runs without it.
    if name == "quantize_model":
        from .convert import quantize_model
        return quantize_model
    if name == "compile":
        from .graph.importer import compile_model
        return compile_model
    if name == "compare":
        from .graph.compare import compare
        return compare
    if name in ("function", "config"):
        import importlib
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'wageubn_sim' has no attribute {name!r}")
