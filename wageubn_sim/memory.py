"""Freed memory: what the process keeps for reuse (glibc only).

The engine's temporaries, and the torch path's quantizer outputs, are megabytes to tens of
megabytes per layer. glibc hands the free top of its heap back to the system once 2x its mmap
threshold (at most 64 MB) lies there, so the next step's temporaries page-fault afresh: on the
project machine that took about a third of an integer training step (a page fault costs
microseconds in a VM). `keep_freed_memory()` asks glibc to keep up to 1 GiB of freed memory
for reuse and to map blocks from 32 MB up (glibc's largest automatic threshold, made fixed),
unless the user set MALLOC_TRIM_THRESHOLD_ or MALLOC_MMAP_THRESHOLD_ themselves, or
WAGEUBN_SIM_MALLOC=system asks to leave glibc's defaults. The cost: the process may keep up
to 1 GiB that it no longer uses. Importing the package changes nothing process-wide: the
`wageubn-sim` command calls it at start, and a program that uses the API opts in with one
call, `wageubn_sim.keep_freed_memory()`.
"""
from __future__ import annotations

import ctypes
import os
import platform

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt's parameter numbers (malloc.h)
KEEP_FREED_BYTES = 1 << 30
MMAP_FROM_BYTES = 32 << 20


_applied: bool | None = None  # None: not asked yet


def keep_freed_memory() -> bool:
    """Apply the policy of the module docstring (once; later calls return the first answer);
    True if glibc took it."""
    global _applied
    if _applied is None:
        _applied = _apply()
    return _applied


def applied() -> bool:
    """Whether the policy is in force in this process."""
    return bool(_applied)


def _apply() -> bool:
    if (os.environ.get("WAGEUBN_SIM_MALLOC", "reuse") == "system"
            or {"MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_"} & set(os.environ)
            or platform.libc_ver()[0] != "glibc"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_FROM_BYTES)) and bool(mallopt(_M_TRIM_THRESHOLD, KEEP_FREED_BYTES))

