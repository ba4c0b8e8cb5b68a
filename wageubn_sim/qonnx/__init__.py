"""QONNX in and out (docs/arithmetic.md section 11): `reader` reads and checks a model,
`importer` walks it into an integer graph through one handler per op type (`handlers`) and the
rewrites of `passes`, `exporter` writes a graph back, `compare` runs qonnx beside the engine;
`protocol` is what importer and exporter agree on."""
from .exporter import ExportError, to_qonnx
from .importer import InexactImport, from_qonnx
from .reader import UnsupportedModel, read_qonnx

__all__ = ["ExportError", "InexactImport", "UnsupportedModel", "from_qonnx", "read_qonnx", "to_qonnx"]
