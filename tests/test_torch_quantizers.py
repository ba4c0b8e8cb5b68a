"""The torch path's quantizers in float64 equal the integer core, bit for bit."""
import numpy as np
import pytest
import torch
from hypothesis import given, strategies as st
from strategies import formats, int_arrays, overflows, roundings, u32_words

from wageubn_sim import function as F
from wageubn_sim.fixedpoint import Format, Rounding, quantize, requantize


@given(q=int_arrays(limit_bits=50), frac_in=st.integers(-8, 40), fmt=formats(unbounded=True),
       rounding=roundings, overflow=overflows, data=st.data())
def test_torch_quantize_equals_integer_core(q, frac_in, fmt, rounding, overflow, data):
    u = data.draw(u32_words(len(q))) if rounding == Rounding.STOCHASTIC else None
    x = torch.from_numpy(q.astype(np.float64) * 2.0 ** -frac_in)
    if not fmt.bounded and frac_in - fmt.frac_bits < -8:
        fmt = Format(None, frac_in + 8)  # keep unbounded left shifts inside the domain
    got = F.quantize(x, fmt, rounding, overflow, u=u)
    want = requantize(q, frac_in, fmt, rounding, overflow, u)
    assert got.dtype == torch.float64
    assert got.numpy().tolist() == (want * 2.0 ** -fmt.frac_bits).tolist()


@given(x=st.lists(st.floats(-1e6, 1e6, allow_subnormal=False), max_size=30),
       kdec=st.integers(1, 24), kall=st.integers(2, 32))
def test_seed_quantizers_equal_integer_core(x, kdec, kall):
    x = np.array(x, dtype=np.float64)
    t = torch.from_numpy(x)
    fmt = Format.from_seed(kdec, kall)
    assert F.alldirectquant(t, kdec, kall).numpy().tolist() == \
        (quantize(x, fmt, "HALF_EVEN", "SAT_SYM") * 2.0 ** -(kdec - 1)).tolist()
    assert F.directquant(t, kdec).numpy().tolist() == \
        (quantize(x, Format.from_seed(kdec)) * 2.0 ** -(kdec - 1)).tolist()


def test_float32_cast_is_exact_for_8_bit_values():
    x = torch.randn(1000)
    got = F.weightquant(x, 8)
    assert got.dtype == torch.float32
    assert torch.equal(got.double(), F.weightquant(x.double(), 8))


def test_straight_through_gradients():
    x = torch.tensor([0.3, 5.0, -7.0], requires_grad=True)
    (F.weightquant(x, 8) * torch.tensor([1.0, 2.0, 3.0])).sum().backward()
    assert x.grad.tolist() == [1.0, 2.0, 3.0]  # STE through Q and clip, as the official fw


def test_sround_draws_contract_bits():
    from wageubn_sim.fixedpoint import BitSource, random_u32
    x = torch.full((1000,), 2.25, dtype=torch.float64)
    got = F.sround(x, source=BitSource(3))
    want = requantize(np.full(1000, 9), 2, Format(None, 0), "STOCHASTIC", u=random_u32(3, 0, 1000))
    assert got.numpy().tolist() == want.tolist()


def test_bad_widths_raise():
    with pytest.raises(ValueError, match="k=0"):
        F.directquant(torch.ones(2), 0)
    with pytest.raises(ValueError, match="kall=1"):
        F.alldirectquant(torch.ones(2), 8, 1)
    with pytest.raises(ValueError, match="unknown rounding"):
        F.quantize(torch.ones(2), Format(8, 7), "bankers")


def test_gwquant_adds_the_weight_decay_before_g():
    """gwquant(w, decay_shift=s) backward: G of (dy + w * 2**-s), the same words as without."""
    from wageubn_sim.fixedpoint.random_bits import BitSource
    w = torch.tensor([0.5, -0.25, 0.0, 1.0], dtype=torch.float64, requires_grad=True)
    dy = torch.tensor([2.0**-10, 0.0, -2.0**-9, 0.0], dtype=torch.float64)
    F.gwquant(w, 15, 8, BitSource(3), decay_shift=6).backward(dy)
    w2 = w.detach().clone().requires_grad_(True)
    F.gwquant(w2, 15, 8, BitSource(3)).backward(dy + w.detach() * 2.0**-6)
    assert torch.equal(w.grad, w2.grad) and w.grad[1] != 0  # the decay alone moves w[1]
    for bad in (-1, 63, 2.5, True):
        with pytest.raises(ValueError, match="decay_shift"):
            F.gwquant(w, decay_shift=bad)


@given(q=int_arrays(limit_bits=50), frac_in=st.integers(-20, 60), k=st.integers(2, 10),
       dtype=st.sampled_from([torch.float32, torch.float64]), odd=st.sampled_from([None, "tiny", "huge"]))
def test_e2_one_pass_equals_its_torch_operations(q, frac_in, k, dtype, odd):
    """E2's fused CPU pass (flag_values) equals the same formula in torch operations, value
    for value, float32 and float64, with values the pass hands back to the general path."""
    from wageubn_sim.fixedpoint.scale import scale_exponent_of_floats
    from wageubn_sim.function.number import _flag_values_general, flag_values
    x = torch.from_numpy(q.astype(np.float64) * 2.0 ** -frac_in).to(dtype)
    if odd is not None and len(q) > 1:  # the smallest subnormal, the largest finite value
        x[0] = torch.finfo(dtype).tiny * torch.finfo(dtype).eps if odd == "tiny" else torch.finfo(dtype).max
    if not torch.isfinite(x).all():  # float32 overflowed: R(x) is undefined
        return
    frac = 2 * (k - 1) - scale_exponent_of_floats(x)
    try:  # both grids must be formats (flag_values checks them first)
        Format(None, frac), Format(None, frac - (k - 1))
        want = _flag_values_general(x, k, frac)
    except ValueError as err:  # the general path refuses: so must the fused one
        with pytest.raises(ValueError, match=str(err)[:20]):
            flag_values(x, k)
        return
    got = flag_values(x, k)
    assert got.dtype == dtype and torch.equal(got, want)
