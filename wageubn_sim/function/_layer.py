"""What every quantized module shares: its seed-style widths, iostrict, and backward setup.

Widths follow the seed: ``<role>_dec_bit_width`` = k (k-1 fractional bits) and
``<role>_all_bit_width`` = the register's total width (symmetric saturation). All are plain
attributes read at each forward, so `config_network` may change them (iostrict included)
after construction and the change takes full effect.
"""
from __future__ import annotations

from ..fixedpoint.random_bits import BitSource
from .number import alldirectquant, backward_e1, backward_e2, gbnquant, gwquant

# Backward defaults of the official code: E1/E2 k=8, G with LR=2**(8-1) and k=15, G_BN k=15.
BACKWARD_DEFAULTS = dict(quant_backward=True, error_bit_width=8, grad_dec_bit_width=15,
                         grad_range_bit_width=8, grad_bn_bit_width=15)


class QuantModule:
    """Mixin for the torch path's modules."""

    def _init_quant(self, widths: dict, iostrict: bool, seed: int = 0) -> None:
        for role, (dec, all_) in widths.items():
            setattr(self, f"{role}_dec_bit_width", dec)
            setattr(self, f"{role}_all_bit_width", all_)
        self.iostrict = iostrict
        for name, value in BACKWARD_DEFAULTS.items():
            setattr(self, name, value)
        self.set_seed(seed)

    def set_seed(self, seed: int) -> None:
        """Restart this layer's stochastic-rounding words: the weight gradient draws from key
        ``seed``, the bias gradient from ``seed + 1``, each from stream 0 on."""
        self.grad_sources = {"weight": BitSource(seed), "bias": BitSource(seed + 1)}

    def _register(self, x, role: str):
        """The role's value in its register: Q(x, dec) saturated to all bits."""
        return alldirectquant(x, getattr(self, f"{role}_dec_bit_width"),
                              getattr(self, f"{role}_all_bit_width"))

    def _io(self, x, role: str):
        """I/O quantization, on only while iostrict is truthy."""
        return self._register(x, role) if self.iostrict else x

    def _weight_gradient(self, w, role: str = "weight"):
        if not self.quant_backward or w is None:
            return w
        decay = getattr(self, "weight_decay_shift", None) if role == "weight" else None
        return gwquant(w, self.grad_dec_bit_width, self.grad_range_bit_width,
                       self.grad_sources[role], decay)

    def _bn_gradient(self, p):
        if not self.quant_backward or p is None:
            return p
        return gbnquant(p, self.grad_bn_bit_width)

    def _error_e1(self, y):
        return backward_e1(y, self.error_bit_width) if self.quant_backward else y

    def _error_e2(self, y):
        return backward_e2(y, self.error_bit_width) if self.quant_backward else y


# The seed's defaults for conv/linear (k_dec) with register widths (k_all); weights are fw.
WEIGHT_LAYER_WIDTHS = {"weight": (8, 8), "bias": (8, 16), "input": (8, 16), "output": (12, 24)}


def pick_widths(defaults: dict, given: dict, owner: str) -> dict:
    """Merge ``<role>_{dec,all}_bit_width`` keyword arguments into the defaults."""
    widths = {role: list(pair) for role, pair in defaults.items()}
    for key, value in given.items():
        role, _, rest = key.partition("_")
        part = {"dec_bit_width": 0, "all_bit_width": 1}.get(rest)
        if role not in widths or part is None:
            known = ", ".join(f"{r}_dec_bit_width, {r}_all_bit_width" for r in defaults)
            raise TypeError(f"{owner} got an unexpected argument {key!r}; widths it takes: {known}")
        widths[role][part] = value
    return {role: tuple(pair) for role, pair in widths.items()}


class WeightLayer(QuantModule):
    """Conv2d, Linear and Adder2d: input -> op(fw weights, bias) -> output, E2 on the error."""

    def _init_weight_layer(self, given: dict, iostrict: bool, seed: int) -> None:
        self._init_quant(pick_widths(WEIGHT_LAYER_WIDTHS, given, type(self).__name__),
                         iostrict, seed)
        self.weight_decay_shift = None  # s: weight decay 2**-s added to the gradient before G

    def quantized_weight(self):
        return self._register(self._weight_gradient(self.weight), "weight")

    def quantized_bias(self):
        if self.bias is None:
            return None
        return self._register(self._weight_gradient(self.bias, "bias"), "bias")

    def forward(self, input):
        x = self._io(input, "input")
        y = self.compute(x, self.quantized_weight(), self.quantized_bias())
        return self._error_e2(self._io(y, "output"))
