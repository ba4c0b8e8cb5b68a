"""`quantize_model`: a float torch model turned into the torch path's WAGEUBN modules."""
from __future__ import annotations

import copy

import torch.nn as nn

from . import function as wnn
from .config import Config, config_network


def _conv(m: nn.Conv2d):
    return wnn.Conv2d(m.in_channels, m.out_channels, m.kernel_size, m.stride, m.padding,
                      m.dilation, m.groups, m.bias is not None, m.padding_mode)


def _linear(m: nn.Linear):
    return wnn.Linear(m.in_features, m.out_features, m.bias is not None)


def _batchnorm(m: nn.BatchNorm2d):
    return wnn.BatchNorm2d(m.num_features, m.eps, m.momentum, m.affine, m.track_running_stats,
                           bias=m.bias is not None or not m.affine)


_CONVERTERS = {
    nn.Conv2d: _conv,
    nn.Linear: _linear,
    nn.BatchNorm2d: _batchnorm,
    nn.ReLU: lambda m: wnn.ReLU(),
    nn.ReLU6: lambda m: wnn.ReLU6(),
    nn.AvgPool2d: lambda m: wnn.AvgPool2d(m.kernel_size, m.stride, m.padding, m.ceil_mode,
                                          m.count_include_pad, m.divisor_override),
    nn.AdaptiveAvgPool2d: lambda m: wnn.AdaptiveAvgPool2d(m.output_size),
}


def _converted(module: nn.Module) -> nn.Module | None:
    convert = _CONVERTERS.get(type(module))  # exact type: our subclasses stay as they are
    if convert is None:
        return None
    new = convert(module)
    new.load_state_dict(module.state_dict())
    param = next(iter(module.parameters()), None)
    if param is not None:
        new = new.to(device=param.device, dtype=param.dtype)
    new.train(module.training)
    return new


def quantize_model(model: nn.Module, config: Config | None = None, keep_float=(),
                   inplace: bool = False) -> nn.Module:
    """Replace Conv2d, Linear, BatchNorm2d, ReLU, ReLU6, AvgPool2d and AdaptiveAvgPool2d by the
    WAGEUBN modules (weights and running statistics kept), then apply ``config``.

    ``keep_float``: qualified names of modules to leave in float (the official code keeps
    the first conv and the last dense layer float: e.g. ``("conv1", "fc")``). The model is
    copied unless ``inplace``. Residual additions written as ``a + b`` stay exact float sums,
    which is what the scheme specifies for the residual stream.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"quantize_model takes a torch.nn.Module, got {type(model).__name__}")
    names = dict(model.named_modules())
    missing = [n for n in keep_float if n not in names]
    if missing:
        raise ValueError(f"keep_float names modules the model does not have: {missing}; "
                         f"names look like {list(names)[1:6]}")
    if not inplace:
        model = copy.deepcopy(model)
    keep = set(keep_float)
    for path, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            full = f"{path}.{child_name}" if path else child_name
            if full in keep:
                continue
            new = _converted(child)
            if new is not None:
                setattr(module, child_name, new)
    config_network(model, "", config or Config(), exclude=keep)
    return model
