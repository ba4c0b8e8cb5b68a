"""The random bits of stochastic rounding: a counter-based hash, as hardware would build it.

Element ``i`` (row-major index) of draw ``stream`` under key ``seed`` gets the 32-bit word

    c = stream * 2**32 + i                      (a 64-bit counter; i < 2**32, stream < 2**32)
    z = (seed + (c + 1) * 0x9E3779B97F4A7C15) mod 2**64
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9 mod 2**64
    z = (z ^ (z >> 27)) * 0x94D049BB133111EB mod 2**64
    z =  z ^ (z >> 31)
    u = z >> 32

which is the SplitMix64 output function (Java's SplittableRandom) applied to a counter.
Each step is a bijection of the counter, so no two (stream, i) pairs under one seed share
a state. No state is kept: any element can be regenerated alone (a pipelined hardware unit
needs only the counter), and the torch path and the integer engine draw identical bits by
calling this one function. The value is used as the fraction u / 2**32 in [0, 1).
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

U_BITS = 32
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)
_MASK64 = (1 << 64) - 1


def random_u32(seed: int, stream: int, count: int) -> np.ndarray:
    """``count`` words of draw ``stream`` as a uint32 array (see the module docstring)."""
    _check_u("seed", seed, 64)
    _check_u("stream", stream, 32)
    if isinstance(count, bool) or not isinstance(count, (int, np.integer)) or count < 0:
        raise ValueError(f"count must be a non-negative int, got {count!r}")
    if count > 1 << 32:
        raise ValueError(f"one draw holds at most 2**32 words, asked for {count}; split the tensor")
    out = np.empty(count, np.uint32)
    _splitmix_words(np.uint64(seed), np.uint64(stream << 32), out)
    return out


@njit(cache=True, parallel=True)
def _splitmix_words(seed, base, out):
    """out[i] = the word of counter base + i: uint64 arithmetic wraps mod 2**64, as the
    definition says; one pass, in parallel (each word depends on its counter alone)."""
    for i in prange(out.size):
        z = seed + (base + np.uint64(i) + np.uint64(1)) * _GOLDEN
        z = (z ^ (z >> np.uint64(30))) * _MIX1
        z = (z ^ (z >> np.uint64(27))) * _MIX2
        z = z ^ (z >> np.uint64(31))
        out[i] = np.uint32(z >> np.uint64(32))


def random_u32_reference(seed: int, stream: int, index: int) -> int:
    """The same word in plain Python integers, one element (for tests and the docs)."""
    z = (seed + ((stream << 32) + index + 1) * 0x9E3779B97F4A7C15) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    z ^= z >> 31
    return z >> 32


class BitSource:
    """A seed plus a draw counter: each ``draw`` takes the next stream.

    Layers that must agree between the torch path and the engine name their stream
    explicitly with ``random_u32``; this class serves code that only needs reproducible runs.
    """

    def __init__(self, seed: int = 0):
        _check_u("seed", seed, 64)
        self.seed = seed
        self.next_stream = 0

    def draw(self, shape) -> np.ndarray:
        shape = tuple(int(s) for s in shape)
        count = int(np.prod(shape, dtype=np.int64))
        words = random_u32(self.seed, self.next_stream, count).reshape(shape)
        self.next_stream += 1
        return words


def _check_u(name: str, value, bits: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {value!r}")
    if not 0 <= int(value) < (1 << bits):
        raise ValueError(f"{name}={value} must lie in [0, 2**{bits})")
