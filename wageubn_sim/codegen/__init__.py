"""Backends that write the golden model as source code (`c`: portable C99)."""
from .c import CodegenError, generate_c

__all__ = ["CodegenError", "generate_c"]
