"""A float64 numpy transcription of the official quantizers (yang-yk/wageubn `Quantize.py`).

Kept as close to the TF1 code as numpy allows, so tests can show that the integer scheme
and the torch path reproduce it. Shift() is the official float formula.
"""
import numpy as np


def Q(x, bits):
    n = 2.0 ** (bits - 1)
    return np.round(x * n) / n


def clip(x, bits):
    delta = 0.0 if bits >= 32 else 1.0 / 2.0 ** (bits - 1)
    return np.clip(x, -1 + delta, 1 - delta)


def Shift(x):
    return 2.0 ** np.round(np.log(x) / np.log(2.0))


def S(bits):
    return 2.0 ** (bits - 1)


def fw(x, bitsW=8):
    return clip(Q(x, bitsW), bitsW)


def fa(x, bitsA=8):
    return Q(x, bitsA)


def fg(x, rand_float, g_scale=128.0, bitsG=8, lr=1.0):
    xmax = np.max(np.abs(x))
    x = x / Shift(xmax)
    norm = Q(g_scale * x, 32)
    norm_sign = np.sign(norm)
    norm_abs = np.abs(norm)
    norm_int = np.floor(norm_abs)
    norm_float = norm_abs - norm_int
    norm = norm_sign * (norm_int + 0.5 * (np.sign(norm_float - rand_float) + 1))
    norm = np.clip(norm, -g_scale + 1, g_scale - 1)
    return Q(lr * norm / (128 * S(bitsG)), 15)


def fgBN(x, bits_gBN=15, lr=1.0):
    x = Q(x, bits_gBN)
    return Q(lr * x, bits_gBN)


def fe1(dy, bitsE1=8):
    dymax_shift = Shift(np.max(np.abs(dy)))
    return dymax_shift * np.clip(Q(dy / dymax_shift, bitsE1), -1, 1)


def fe2(dy, bitsE2=8):
    dymax_shift = Shift(np.max(np.abs(dy)))
    dymax_s = dymax_shift / (2 ** (bitsE2 - 1))
    dy_s = dy / dymax_s
    sign = np.sign(dy_s)
    dy_s = np.abs(dy_s)
    zero = np.zeros_like(dy_s)
    dy_s1 = np.where(dy_s < 1, dy_s, zero)
    dy_s2 = np.where(dy_s >= 1, dy_s, zero)
    dy_s1 = sign * np.clip(Q(dy_s1, bitsE2), -1, 1)
    dy_s2 = sign * np.clip(np.round(dy_s2), -2 ** (bitsE2 - 1) + 1, 2 ** (bitsE2 - 1) - 1)
    return dymax_s * (dy_s1 + dy_s2)


def flr(x, bitsLR=10):
    return clip(Q(x, bitsLR), bitsLR)
