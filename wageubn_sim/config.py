"""`Config` and `config_network`: the seed's configuration API, corrected.

`Config` keeps the seed's 25 fields in the seed's order (so positional code still works),
every one with a default (the seed bound its 13 defaults to the last 13 fields), and adds
the widths the seed never exposed: the BatchNorm xhat, the backward quantizers, the
stochastic-rounding seed and the weight decay (a power of two, off by default). ``*_dec`` is
the scheme's k (k-1 fractional bits); ``*_all`` is the register's total width (symmetric
saturation).
"""
from __future__ import annotations

import warnings
from collections import namedtuple

import torch.nn as nn

from .function import Adder2d
from .function._layer import QuantModule

_FIELDS = [
    # the seed's 25 fields, in its order
    ("iostrict", False),
    ("conv_and_linear_weight", 8), ("conv_and_linear_bias", 8),
    ("conv_and_linear_in", 8), ("conv_and_linear_out", 12),
    ("bn_weight", 8), ("bn_bias", 8), ("bn_mean", 16), ("bn_var", 16),
    ("bn_in", 12), ("bn_out", 8), ("acti_in", 8), ("acti", 8),
    ("conv_and_linear_weight_all", 8), ("conv_and_linear_bias_all", 16),
    ("conv_and_linear_in_all", 16), ("conv_and_linear_out_all", 24),
    ("bn_weight_all", 16), ("bn_bias_all", 16), ("bn_mean_all", 24), ("bn_var_all", 24),
    ("bn_in_all", 24), ("bn_out_all", 16), ("acti_in_all", 16), ("acti_all", 16),
    # added here
    ("bn_xhat", 8), ("bn_xhat_all", 16),
    ("backward", True),  # quantize errors (E1, E2) and gradients (G, G_BN)
    ("error", 8),  # k of E1 and E2
    ("grad", 15), ("grad_range", 8),  # G = clip(SR(2**(grad_range-1) g/R)) / 2**(grad-1)
    ("grad_bn", 15),  # G_BN = Q(g, grad_bn)
    ("seed", 0),  # stochastic-rounding key; layer i: seed + 2i (weights), seed + 2i + 1 (bias)
    ("pool_out", 8), ("pool_out_all", 16), ("add_out", 8), ("add_out_all", 16),
    ("weight_decay_shift", None),  # s: decay 2**-s on conv/linear weights before G; None: off
]

Config = namedtuple("Config", [name for name, _ in _FIELDS], defaults=[v for _, v in _FIELDS])
Config.__doc__ = __doc__

_ROLE_FIELDS = {
    "conv_linear": {"weight": "conv_and_linear_weight", "bias": "conv_and_linear_bias",
                    "input": "conv_and_linear_in", "output": "conv_and_linear_out"},
    "bn": {"weight": "bn_weight", "bias": "bn_bias", "mean": "bn_mean", "var": "bn_var",
           "input": "bn_in", "output": "bn_out", "xhat": "bn_xhat"},
    "acti": {"input": "acti_in", "acti": "acti"},
    "pool": {"output": "pool_out"},
    "add": {"output": "add_out"},
}


def _set_widths(module, config, roles: dict) -> None:
    for role, field in roles.items():
        setattr(module, f"{role}_dec_bit_width", getattr(config, field))
        setattr(module, f"{role}_all_bit_width", getattr(config, field + "_all"))


def _set_common(module, config, index: int) -> None:
    module.iostrict = config.iostrict
    if isinstance(module, QuantModule):
        module.quant_backward = bool(config.backward)
        module.error_bit_width = config.error
        module.grad_dec_bit_width = config.grad
        module.grad_range_bit_width = config.grad_range
        module.grad_bn_bit_width = config.grad_bn
        module.set_seed(config.seed + 2 * index)


def _kind(module, bn_list, acti_list, conv_linear_list):
    from .function import Add, AdaptiveAvgPool2d, AvgPool2d
    if isinstance(module, tuple(conv_linear_list)):
        return "conv_linear"
    if isinstance(module, tuple(bn_list)):
        return "bn"
    if isinstance(module, tuple(acti_list)):
        return "acti"
    if isinstance(module, (AvgPool2d, AdaptiveAvgPool2d)):
        return "pool"
    if isinstance(module, Add):
        return "add"
    return None


def config_network(net, name, config, bn_list=(nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d),
                   acti_list=(nn.ReLU, nn.ReLU6),
                   conv_linear_list=(nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear, Adder2d),
                   show=False, exclude=()):
    """Set ``config``'s widths on every leaf module of ``net`` that the lists name.

    Every setting takes effect at the next forward, iostrict with its saturation included.
    Plain torch layers (not from `wageubn_sim.function`) cannot quantize: they are listed in a
    warning; convert them first with `wageubn_sim.quantize_model`. ``exclude``: qualified
    module names (with ``name`` as prefix) left untouched, their submodules too.
    """
    if not isinstance(config, Config):
        raise TypeError(f"config must be a wageubn_sim.config.Config, got {type(config).__name__}")
    plain = []
    index = 0
    for path, module in net.named_modules(prefix=name):
        if list(module.children()) or _excluded(path, exclude):
            continue
        kind = _kind(module, bn_list, acti_list, conv_linear_list)
        if kind is None:
            continue
        if not isinstance(module, QuantModule):
            plain.append(f"{path} ({type(module).__name__})")
        _set_widths(module, config, _ROLE_FIELDS[kind])
        _set_common(module, config, index)
        if kind == "conv_linear":
            module.weight_decay_shift = config.weight_decay_shift
        index += 1
        if show:
            print(path, "is configured")
    if plain:
        warnings.warn("these layers are plain torch modules and will not quantize: "
                      + ", ".join(plain) + "; convert the model with wageubn_sim.quantize_model",
                      stacklevel=2)
    return net


def _excluded(path: str, exclude) -> bool:
    return any(path == e or path.startswith(e + ".") for e in exclude)
