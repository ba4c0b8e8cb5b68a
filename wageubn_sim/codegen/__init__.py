"""Backends that write the golden model as source code (`c`: portable C99)."""
from .c import generate_c
from .rules import CodegenError

__all__ = ["CodegenError", "generate_c"]
