"""Float chains between two integer registers, evaluated exactly (docs/arithmetic.md section 12).

A chain takes an integer x (an accumulator, or any integer tensor) through monotone per-channel
stages, each with the float parameters a model holds (read as the exact binary fractions they
are), and ends in a quantizer:

* `Affine`: y = a * x + b (a scale, a bias, a Mul, Add, Sub or Div by a constant);
* `Normalize`: y = (x - mean) * gamma / sqrt(var + eps) + beta (a float BatchNormalization: its
  square root is irrational in general, and is kept exact as a quadratic surd);
* `Clamp`: y = min(max(x, lo), hi) (ReLU, Clip);
* `Quantizer`: q = clamp(R(y / scale + zero_point)) with R one of the engine's roundings.

Every stage is monotone, so q is a step function of x: for each level L above the lowest, the
integers that reach it form a half-line, and `thresholds` gives its end, computed by pulling the
quantizer's boundary back through the stages in exact arithmetic (rationals, and one square
root at most). `evaluate` computes q of one integer forward, independently, for the tests.
"""
from __future__ import annotations

import dataclasses
import math
from fractions import Fraction

from .modes import Rounding
from .reference import round_fraction


# ---- quadratic surds: p + q * sqrt(d), exactly --------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Surd:
    """p + q * sqrt(d) with p, q rational and d rational >= 0 (d = 0: a rational)."""
    p: Fraction
    q: Fraction = Fraction(0)
    d: Fraction = Fraction(0)

    def __post_init__(self):
        if self.d < 0:
            raise ValueError("a square root of a negative number")

    @property
    def rational(self) -> bool:
        return self.q == 0 or self.d == 0 or _is_square(self.d)

    def value(self) -> Fraction:
        """The value of a rational surd."""
        if not self.rational:
            raise ValueError("an irrational value")
        return self.p + self.q * _sqrt_exact(self.d) if self.q and self.d else self.p

    def affine(self, scale: Fraction, shift: Fraction) -> "Surd":
        """scale * self + shift."""
        return Surd(self.p * scale + shift, self.q * scale, self.d)

    def sign_minus(self, r: Fraction) -> int:
        """The sign of self - r, exactly."""
        u = self.p - r
        if self.q == 0 or self.d == 0:
            return (u > 0) - (u < 0)
        w = self.q * self.q * self.d  # (q sqrt(d))**2, with q's sign apart
        if self.q > 0:  # u + sqrt(w) against 0
            if u >= 0:
                return 1 if (u > 0 or w > 0) else 0
            return (w > u * u) - (w < u * u)
        if u <= 0:  # u - sqrt(w)
            return -1 if (u < 0 or w > 0) else 0
        return (u * u > w) - (u * u < w)

    def floor(self) -> int:
        """The largest integer <= self, in closed form: with p = a/b and q^2 d = n/m (so
        |q| sqrt(d) = sqrt(S)/(bm) times b, S = b^2 n m), p + q sqrt(d) = (a m +- sqrt(S)) / (b m);
        with s = isqrt(S), no multiple of b m lies strictly between a m +- s and the exact
        numerator (they differ by less than 1), so the floor is (a m + s) // (b m) for q > 0,
        and (a m - s) // (b m), or (a m - s - 1) // (b m) where S is no square, for q < 0."""
        if self.q == 0 or self.d == 0:
            return math.floor(self.p)
        a, b = self.p.numerator, self.p.denominator
        r = self.q * self.q * self.d
        n, m = r.numerator, r.denominator
        root_of = b * b * n * m
        s = math.isqrt(root_of)
        if self.q > 0:
            return (a * m + s) // (b * m)
        return (a * m - s - (s * s != root_of)) // (b * m)


def _is_square(f: Fraction) -> bool:
    return _isqrt_exact(f.numerator) is not None and _isqrt_exact(f.denominator) is not None


def _isqrt_exact(n: int):
    r = math.isqrt(n)
    return r if r * r == n else None


def _sqrt_exact(f: Fraction) -> Fraction:
    return Fraction(_isqrt_exact(f.numerator), _isqrt_exact(f.denominator))


def _sqrt_estimate(f: Fraction, bits: int = 64) -> Fraction:
    """sqrt(f) to about ``bits`` fractional bits (an estimate; `Surd.floor` corrects it exactly)."""
    scale = 1 << bits
    return Fraction(math.isqrt(f.numerator * scale * scale // f.denominator), scale)


# ---- the stages ---------------------------------------------------------------------------------

def _at(values: tuple, channel: int):
    """A per-channel parameter: one value for every channel, or one per channel."""
    return values[0] if len(values) == 1 else values[channel]


def _fractions(values) -> tuple:
    return tuple(Fraction(v) for v in values)


@dataclasses.dataclass(frozen=True)
class Affine:
    """y = a * x + b per channel (a, b: one value, or one per channel)."""
    a: tuple
    b: tuple

    def __post_init__(self):
        object.__setattr__(self, "a", _fractions(self.a))
        object.__setattr__(self, "b", _fractions(self.b))


@dataclasses.dataclass(frozen=True)
class Normalize:
    """y = (x - mean) * gamma / sqrt(var + eps) + beta per channel; ``denominator`` = var + eps > 0."""
    mean: tuple
    gamma: tuple
    beta: tuple
    denominator: tuple

    def __post_init__(self):
        for f in ("mean", "gamma", "beta", "denominator"):
            object.__setattr__(self, f, _fractions(getattr(self, f)))
        if any(d <= 0 for d in self.denominator):
            raise ValueError("a BatchNormalization's var + eps is not positive")


@dataclasses.dataclass(frozen=True)
class Clamp:
    """y = min(max(x, lo), hi); None: no bound on that side (ReLU: lo = 0)."""
    lo: Fraction | None = None
    hi: Fraction | None = None

    def __post_init__(self):
        for f in ("lo", "hi"):
            if getattr(self, f) is not None:
                object.__setattr__(self, f, Fraction(getattr(self, f)))


@dataclasses.dataclass(frozen=True)
class Quantizer:
    """q = clamp(R(y / scale + zero_point), q_min, q_max) per channel (scale > 0)."""
    scale: tuple
    zero_point: tuple
    q_min: int
    q_max: int
    rounding: Rounding

    def __post_init__(self):
        object.__setattr__(self, "scale", _fractions(self.scale))
        object.__setattr__(self, "zero_point", _fractions(self.zero_point))
        if any(s <= 0 for s in self.scale):
            raise ValueError("a quantizer's scale must be positive")
        if self.q_max < self.q_min:
            raise ValueError("a quantizer's levels run from q_min to q_max")
        if Rounding(self.rounding) == Rounding.STOCHASTIC:
            raise ValueError("a chain ends in a deterministic rounding")


def level_boundary(level: int, rounding: Rounding) -> tuple[Fraction, bool]:
    """(u, strict): R(v) >= level exactly when v >= u (v > u when ``strict``): where the rounding
    R first reaches ``level``, and whether the tie there goes below it."""
    rounding = Rounding(rounding)
    half = Fraction(level) - Fraction(1, 2)
    if rounding == Rounding.FLOOR:
        return Fraction(level), False
    if rounding == Rounding.TOWARD_ZERO:
        return (Fraction(level), False) if level >= 1 else (Fraction(level - 1), True)
    if rounding == Rounding.HALF_UP:  # ties toward +infinity: the tie reaches the level
        return half, False
    if rounding == Rounding.HALF_AWAY:  # ties away from zero: up for a positive tie
        return half, level <= 0
    return half, level % 2 == 1  # HALF_EVEN: the tie goes to the even neighbour


# ---- pulling a half-line back through the stages ------------------------------------------------

ALL, NONE = "all", "none"  # every x, or no x, meets the condition


@dataclasses.dataclass(frozen=True)
class HalfLine:
    """The x with x >= bound (``up``) or x <= bound (not ``up``); ``strict``: > or <."""
    bound: Surd
    up: bool
    strict: bool


def _pull_affine(cond: HalfLine, a: Fraction, b: Fraction):
    """{x : a x + b in cond}."""
    if a == 0:
        return ALL if _meets(cond, Surd(b)) else NONE
    bound = cond.bound.affine(1 / a, -b / a)
    return HalfLine(bound, cond.up == (a > 0), cond.strict)


def _pull_normalize(cond: HalfLine, mean: Fraction, gamma: Fraction, beta: Fraction, denominator: Fraction):
    """{x : (x - mean) * gamma / sqrt(denominator) + beta in cond}: the bound
    mean + (bound - beta) * sqrt(denominator) / gamma, a surd."""
    if gamma == 0:
        return ALL if _meets(cond, Surd(beta)) else NONE
    if cond.bound.q != 0 and cond.bound.d != 0:
        raise ValueError("a chain with two BatchNormalizations (two square roots) has no exact "
                         "threshold here; fold one into the weights")
    r = (cond.bound.p - beta) / gamma
    return HalfLine(Surd(mean, r, denominator), cond.up == (gamma > 0), cond.strict)


def _pull_clamp(cond: HalfLine, lo: Fraction | None, hi: Fraction | None):
    """{x : clamp(x) in cond}: clamp(x) lies in [lo, hi], so the condition holds for every x
    where it holds at the end that every clamped value is beyond, for no x where it fails at the
    other end, and elsewhere it is the condition on x itself."""
    worst, best = (lo, hi) if cond.up else (hi, lo)  # the ends least and most in its favour
    if best is not None and not _meets(cond, Surd(best)):
        return NONE
    if worst is not None and _meets(cond, Surd(worst)):
        return ALL
    return cond


def _meets(cond: HalfLine, y: Surd) -> bool:
    diff = _compare(y, cond.bound)
    if cond.up:
        return diff > 0 or (diff == 0 and not cond.strict)
    return diff < 0 or (diff == 0 and not cond.strict)


def _compare(a: Surd, b: Surd) -> int:
    """The sign of a - b, where at most one of them is irrational."""
    if b.q == 0 or b.d == 0:
        return a.sign_minus(b.p)
    if a.q == 0 or a.d == 0:
        return -b.sign_minus(a.p)
    if a.d != b.d:
        raise ValueError("surds of two square roots")
    return Surd(a.p - b.p, a.q - b.q, a.d).sign_minus(Fraction(0))


def _pull_back(stages, channel: int, cond: HalfLine):
    """The x that the stages take into ``cond``: a HalfLine, ALL or NONE."""
    for stage in reversed(stages):
        if cond in (ALL, NONE):
            return cond
        if isinstance(stage, Affine):
            cond = _pull_affine(cond, _at(stage.a, channel), _at(stage.b, channel))
        elif isinstance(stage, Normalize):
            cond = _pull_normalize(cond, *(_at(getattr(stage, f), channel)
                                          for f in ("mean", "gamma", "beta", "denominator")))
        elif isinstance(stage, Clamp):
            cond = _pull_clamp(cond, stage.lo, stage.hi)
        else:
            raise TypeError(f"not a chain stage: {stage!r}")
    return cond


def direction(stages, channel: int) -> int:
    """+1 where the chain is non-decreasing in x for ``channel``, -1 where non-increasing (the
    sign of its scales; a constant stage counts as +1)."""
    sign = 1
    for stage in stages:
        if isinstance(stage, Affine):
            a = _at(stage.a, channel)
            sign *= -1 if a < 0 else 1
        elif isinstance(stage, Normalize):
            sign *= -1 if _at(stage.gamma, channel) < 0 else 1
    return sign


def level_conditions(stages, quantizer: Quantizer, channel: int) -> list:
    """For each level q_min + 1 .. q_max, the inputs that reach it: a `HalfLine` (in the chain's
    direction), ALL or NONE."""
    scale, zero = _at(quantizer.scale, channel), _at(quantizer.zero_point, channel)
    out = []
    for level in range(quantizer.q_min + 1, quantizer.q_max + 1):
        u, strict = level_boundary(level, quantizer.rounding)
        out.append(_pull_back(stages, channel, HalfLine(Surd((u - zero) * scale), True, strict)))
    return out


def thresholds(stages, quantizer: Quantizer, channel: int, lo: int, hi: int) -> tuple[int, list]:
    """(direction, T) of one channel, for integers x in [lo, hi]: the quantizer's output is
    q_min + #{L : direction * x >= T[L]}, T non-decreasing, one per level q_min + 1 .. q_max;
    each T[L] the smallest such integer (clamped to [lo, hi + 1] on direction * x's axis:
    lo means always, hi + 1 never)."""
    return _first_integers(stages, channel, level_conditions(stages, quantizer, channel), lo, hi)


def thresholds_of_reals(stages, channel: int, bounds, lo: int, hi: int) -> tuple[int, list]:
    """As `thresholds`, for the count #{l : y >= bounds[l]} of the chain's value y (a
    MultiThreshold on a float value): each level's integers, exactly."""
    conditions = [_pull_back(stages, channel, HalfLine(Surd(Fraction(b)), True, False)) for b in bounds]
    return _first_integers(stages, channel, conditions, lo, hi)


def _first_integers(stages, channel, conditions, lo, hi) -> tuple[int, list]:
    sign = direction(stages, channel)
    axis_lo, axis_hi = (lo, hi) if sign > 0 else (-hi, -lo)
    out = []
    for cond in conditions:
        if cond == ALL:
            t = axis_lo
        elif cond == NONE:
            t = axis_hi + 1
        else:  # a half-line in the chain's direction: its first integer on the direction's axis
            bound = _on_axis(cond, sign)
            k = bound.floor()  # an irrational bound is never an integer: it lies above k
            above = not bound.rational or bound.value() > k
            t = min(max(k + 1 if (above or cond.strict) else k, axis_lo), axis_hi + 1)
        out.append(t)
    return sign, _nested(out)


def float_thresholds(stages, quantizer: Quantizer, channel: int) -> tuple[int, list]:
    """(direction, T) of one channel for float64 inputs: the quantizer's output at a finite
    float64 x is q_min + #{L : direction * x >= T[L]}, each T[L] the smallest float64 that
    reaches the level (+inf: none does; -inf: all do). Exact: every float64 is a binary
    fraction, compared with the level's exact boundary."""
    return _first_floats(stages, channel, level_conditions(stages, quantizer, channel))


def float_thresholds_of_reals(stages, channel: int, bounds) -> tuple[int, list]:
    """As `float_thresholds`, for the count #{l : y >= bounds[l]} of the chain's value y."""
    conditions = [_pull_back(stages, channel, HalfLine(Surd(Fraction(b)), True, False)) for b in bounds]
    return _first_floats(stages, channel, conditions)


def _first_floats(stages, channel, conditions) -> tuple[int, list]:
    sign = direction(stages, channel)
    out = []
    for cond in conditions:
        if cond in (ALL, NONE):
            out.append(-math.inf if cond == ALL else math.inf)
            continue
        bound = _on_axis(cond, sign)
        reaches = lambda t: (bound.sign_minus(Fraction(t)) < 0 or
                             (not cond.strict and bound.sign_minus(Fraction(t)) == 0))
        estimate = bound.p + (bound.q * _sqrt_estimate(bound.d) if bound.q else 0)
        try:
            t = float(estimate)
        except OverflowError:
            t = math.inf if estimate > 0 else -math.inf
        while math.isfinite(t) and reaches(t):  # step down to the last float that does not reach
            t = math.nextafter(t, -math.inf)
        while not math.isfinite(t) or not reaches(t):  # then up to the first that does
            if t == math.inf:
                break
            t = math.nextafter(t, math.inf)
        out.append(t)
    return sign, _nested(out)


def _on_axis(cond: "HalfLine", sign: int) -> Surd:
    """The half-line's bound on the axis direction * x, where it is a lower bound."""
    if cond.up != (sign > 0):
        raise ValueError("a chain that is not monotone")  # cannot happen: every stage is
    return cond.bound if sign > 0 else cond.bound.affine(Fraction(-1), Fraction(0))


def _nested(table: list) -> list:
    """Levels nest: reaching one reaches those below it."""
    for i in range(1, len(table)):
        table[i] = max(table[i], table[i - 1])
    return table


def evaluate(stages, quantizer: Quantizer, channel: int, x: int) -> int:
    """q of the integer x through the chain, forward and exact (the tests' reference for
    `thresholds`): each stage on a surd, the quantizer's rounding on the exact value."""
    y = Surd(Fraction(x))
    for stage in stages:
        if isinstance(stage, Affine):
            y = y.affine(_at(stage.a, channel), _at(stage.b, channel))
        elif isinstance(stage, Normalize):
            mean, gamma, beta, denominator = (_at(getattr(stage, f), channel)
                                              for f in ("mean", "gamma", "beta", "denominator"))
            if y.q != 0 and y.d != 0:
                raise ValueError("two square roots")
            # (y - mean) * gamma / sqrt(d) = (y - mean) * gamma * sqrt(d) / d
            y = Surd(beta, (y.p - mean) * gamma / denominator, denominator)
        elif isinstance(stage, Clamp):
            if stage.lo is not None and _compare(y, Surd(stage.lo)) < 0:
                y = Surd(stage.lo)
            if stage.hi is not None and _compare(y, Surd(stage.hi)) > 0:
                y = Surd(stage.hi)
    scale, zero = _at(quantizer.scale, channel), _at(quantizer.zero_point, channel)
    u = y.affine(1 / scale, zero)
    floor = u.floor()
    if u.rational:
        q = round_fraction(u.value(), Rounding(quantizer.rounding))
    else:  # irrational: never a tie, never an integer
        q = floor + (Rounding(quantizer.rounding) not in (Rounding.FLOOR, Rounding.TOWARD_ZERO) and
                     u.sign_minus(floor + Fraction(1, 2)) > 0)
        if Rounding(quantizer.rounding) == Rounding.TOWARD_ZERO and floor < 0:
            q = floor + 1
    return min(max(q, quantizer.q_min), quantizer.q_max)
