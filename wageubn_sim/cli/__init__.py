"""The `wageubn-sim` command line.

Exit codes: 0 success; 1 a check failed (engine and torch diverge, a bundle does not verify,
the demo's checks fail); 2 bad input (usage, a missing, unreadable or malformed file, a value
out of range, an existing output without --force, an output that cannot be written), with a
message that names the problem and the fix and no traceback; 3 an internal error (a bug), with
its traceback.
"""
from .main import BAD_INPUT, CHECK_FAILED, INTERNAL_ERROR, BadInput, main
from .options import load_inputs, load_model
from . import bundles, data, demo, model  # noqa: F401  (their commands join the group)

__all__ = ["BAD_INPUT", "CHECK_FAILED", "INTERNAL_ERROR", "BadInput", "load_inputs", "load_model", "main"]
