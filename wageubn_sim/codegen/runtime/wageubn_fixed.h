/* wageubn_fixed.h: the arithmetic contract's integer primitives (docs/arithmetic.md sections 2
 * to 4), each written once, as wageubn_sim/fixedpoint/scalar.py writes them for the engine.
 *
 * Domain: every value q lies in -2**61 <= q < 2**61 (the range of s62), so a sum of two values
 * and the constant `half` stay inside int64_t. No undefined behaviour: a negative value is never
 * shifted (section 2's floor shift works on its complement), a wrap is done in uint64_t, and
 * every shift count stays below 64. int64_t is two's complement (C99 7.18.1.1).
 */
#ifndef WAGEUBN_FIXED_H
#define WAGEUBN_FIXED_H

#include <stdint.h>

/* section 2's modes and section 3's, numbered as wageubn_sim.fixedpoint.modes numbers them */
enum { WG_HALF_EVEN = 0, WG_HALF_UP = 1, WG_HALF_AWAY = 2, WG_FLOOR = 3, WG_TOWARD_ZERO = 4 };
enum { WG_WRAP = 0, WG_SAT = 1, WG_SAT_SYM = 2 };
#define WG_MAX_BITS 62

/* Why the last image was refused (0: it was not): a value the engine refuses too, such as a
 * left shift out of an unbounded register's 62-bit domain. Defined in model.c. */
extern const char *wg_error;

/* section 9, Events: what a register did (over every element it moved) */
typedef struct { int64_t wraps, saturations, ties, underflows; } wg_events;

/* 2**n - 1 for 0 <= n; all 63 magnitude bits from n = 63 on (enough in the domain). */
static inline int64_t wg_low_mask(int n) {
    return n >= 63 ? INT64_MAX : (int64_t)(((uint64_t)1 << n) - 1u);
}

/* Section 2: floor(x / 2**n), n >= 0 (fl = q >> s, arithmetic). A negative x is shifted as its
 * complement ~x = -x - 1 >= 0: floor(x / 2**n) = ~floor(~x / 2**n). */
static inline int64_t wg_shift_right_floor(int64_t x, int n) {
    if (n >= 63) return x < 0 ? -1 : 0;
    return x >= 0 ? x >> n : ~((~x) >> n);
}

/* Section 2: x - floor(x / 2**n) * 2**n, in [0, 2**n): the low n bits (0 <= n <= 62). */
static inline int64_t wg_remainder(int64_t x, int n) {
    return (int64_t)((uint64_t)x & (uint64_t)wg_low_mask(n));
}

/* Section 2, integer form: whether a deterministic rounding takes floor + 1 for
 * q = floor * 2**s + remainder, half = 2**(s-1). */
static inline int wg_rounds_up(int64_t q, int64_t floor_, int64_t remainder, int64_t half, int mode) {
    int above = remainder > half, tie = remainder == half;
    switch (mode) {
    case WG_HALF_EVEN: return above || (tie && (floor_ & 1) != 0);
    case WG_HALF_UP: return above || tie;
    case WG_HALF_AWAY: return above || (tie && q > 0);
    case WG_TOWARD_ZERO: return remainder != 0 && q < 0;
    default: return 0; /* WG_FLOOR */
    }
}

/* Section 2: q / 2**shift rounded (shift >= 0); *tie: the dropped bits were exactly one half
 * (counted for every mode, as the engine counts ties). A shift beyond 62 leaves |q / 2**s| <=
 * 1/4: -1 for FLOOR of a negative q, else 0. */
static inline int64_t wg_shift_right_rounded(int64_t q, int shift, int mode, int *tie) {
    *tie = 0;
    if (shift <= 0) return q;
    if (shift > WG_MAX_BITS) return (mode == WG_FLOOR && q < 0) ? -1 : 0;
    int64_t floor_ = wg_shift_right_floor(q, shift), remainder = wg_remainder(q, shift);
    int64_t half = (int64_t)1 << (shift - 1);
    *tie = remainder == half;
    return floor_ + wg_rounds_up(q, floor_, remainder, half, mode);
}

/* Section 3: the range saturation clamps to (SAT_SYM drops the most negative value). */
static inline void wg_range(int bits, int is_signed, int overflow, int64_t *lo, int64_t *hi) {
    if (is_signed) {
        *hi = (int64_t)(((uint64_t)1 << (bits - 1)) - 1u);
        *lo = overflow == WG_SAT_SYM ? -*hi : -*hi - 1;
    } else {
        *hi = (int64_t)(((uint64_t)1 << bits) - 1u);
        *lo = 0;
    }
}

/* Section 3: fit n into `bits` bits (bits == 0: unbounded, n as it is). WRAP keeps the low
 * bits, in uint64_t (defined for every n), then the sign. */
static inline int64_t wg_fit(int64_t n, int bits, int is_signed, int overflow) {
    int64_t lo, hi;
    if (bits == 0) return n;
    wg_range(bits, is_signed, overflow, &lo, &hi);
    if (overflow == WG_WRAP) {
        int64_t wrapped = (int64_t)((uint64_t)n & (uint64_t)wg_low_mask(bits));
        return (is_signed && wrapped > hi) ? wrapped - ((int64_t)1 << bits) : wrapped;
    }
    return n > hi ? hi : (n < lo ? lo : n);
}

/* Section 3: whether q * 2**shift leaves the format (unbounded: the domain), decided before
 * shifting: q * 2**s > hi iff q > hi >> s, q * 2**s < lo iff q < -((-lo) >> s). */
static inline int wg_left_shift_overflows(int64_t q, int shift, int bits, int is_signed, int overflow) {
    int64_t lo, hi;
    if (q == 0) return 0;
    if (bits == 0) wg_range(WG_MAX_BITS, 1, WG_SAT, &lo, &hi);
    else wg_range(bits, is_signed, overflow, &lo, &hi);
    if (shift >= WG_MAX_BITS) return 1;
    return q > (hi >> shift) || q < -((-lo) >> shift);
}

/* Section 3: q * 2**shift fitted (shift >= 0); WRAP keeps the low bits of the product (0 from
 * a shift of 64 on), computed in uint64_t. */
static inline int64_t wg_shift_left_fitted(int64_t q, int shift, int bits, int is_signed, int overflow) {
    int64_t lo, hi;
    if (q == 0) return 0;
    if (!wg_left_shift_overflows(q, shift, bits, is_signed, overflow))
        return q * ((int64_t)1 << shift); /* it fits (so shift < 62): no overflow */
    if (overflow == WG_WRAP)
        return wg_fit(shift < 64 ? (int64_t)(((uint64_t)q << shift) & (uint64_t)INT64_MAX) : 0, bits, is_signed, overflow);
    wg_range(bits, is_signed, overflow, &lo, &hi);
    return q > 0 ? hi : lo;
}

/* Section 4: a register's move of q from 2**-f_in to 2**-(f_in - shift): rounded, fitted, and
 * its events counted (a tie, an overflow: a wrap under WRAP, else a saturation, an underflow:
 * a nonzero value that became 0 without overflowing). */
static inline int64_t wg_register(int64_t q, int shift, int bits, int is_signed, int rounding,
                                  int overflow, wg_events *ev) {
    int64_t r;
    int over, tie = 0;
    if (shift >= 0) {
        int64_t rounded = wg_shift_right_rounded(q, shift, rounding, &tie);
        r = wg_fit(rounded, bits, is_signed, overflow);
        over = r != rounded;
    } else {
        over = wg_left_shift_overflows(q, -shift, bits, is_signed, overflow);
        if (over && bits == 0) {  /* section 3: an unbounded format refuses it */
            wg_error = "a left shift leaves the 62-bit domain of an unbounded register";
            return 0;
        }
        r = wg_shift_left_fitted(q, -shift, bits, is_signed, overflow);
    }
    ev->ties += tie;
    if (over) {
        if (overflow == WG_WRAP) ev->wraps++;
        else ev->saturations++;
    } else if (r == 0 && q != 0) {
        ev->underflows++;
    }
    return r;
}

/* Section 9, division: round(p / d) for d > 0: floor(p / d) (C's / truncates toward zero, so
 * one less for a negative inexact quotient), then section 2's rule on the remainder and the
 * half, both doubled (exact for an odd d); *tie: 2 r == d. |p|, d < 2**61. */
static inline int64_t wg_divide_rounded(int64_t p, int64_t d, int mode, int *tie) {
    int64_t q = p / d, r = p % d;
    if (r < 0) { q -= 1; r += d; }
    *tie = 2 * r == d;
    return q + wg_rounds_up(p, q, 2 * r, d, mode);
}

/* Section 12, TFLite's double rounding (gemmlowp's fixedpoint.h): a * b / 2**31 of int32 a, b
 * rounded to nearest, ties toward +infinity; INT32_MIN * INT32_MIN saturates to INT32_MAX. */
static inline int64_t wg_saturating_rounding_doubling_high_mul(int64_t a, int64_t b) {
    const int64_t int32_min = -((int64_t)1 << 31), int32_max = ((int64_t)1 << 31) - 1;
    if (a == int32_min && b == int32_min) return int32_max;
    int64_t ab = a * b;  /* |a|, |b| <= 2**31: the product fits */
    int64_t total = ab + (ab >= 0 ? ((int64_t)1 << 30) : 1 - ((int64_t)1 << 30));
    int64_t high = wg_shift_right_floor(total, 31);  /* C's division truncates toward zero: */
    return (total < 0 && wg_remainder(total, 31) != 0) ? high + 1 : high;
}

/* Section 12: x / 2**exponent rounded half away from zero, 0 <= exponent <= 31 (gemmlowp's
 * RoundingDivideByPOT). */
static inline int64_t wg_rounding_divide_by_pot(int64_t x, int exponent) {
    int64_t mask = ((int64_t)1 << exponent) - 1;
    int64_t threshold = (mask >> 1) + (x < 0 ? 1 : 0);
    return wg_shift_right_floor(x, exponent) + (wg_remainder(x, exponent) > threshold ? 1 : 0);
}

#endif /* WAGEUBN_FIXED_H */
