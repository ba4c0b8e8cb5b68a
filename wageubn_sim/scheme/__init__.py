"""The WAGEUBN scheme on integers: its quantizers (W, A, E1, E2, G, G_BN, LR) and its update
unit U (`update`)."""
from .quantizers import (activation_quantize, e1_quantize, e2_quantize, g_quantize,
                         gbn_quantize, lr_quantize, weight_quantize)

__all__ = ["activation_quantize", "e1_quantize", "e2_quantize", "g_quantize", "gbn_quantize",
           "lr_quantize", "weight_quantize"]
