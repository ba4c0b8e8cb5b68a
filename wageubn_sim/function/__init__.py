"""The PyTorch WAGEUBN path: the seed's `wageubn.function`, corrected and completed."""
from torch.nn import (AvgPool1d, AvgPool3d, MaxPool1d, MaxPool3d, Module, ModuleDict,  # noqa: F401
                      ModuleList, Parameter, Sequential)

from .activation import ReLU, ReLU6
from .add import Add
from .adder import Adder2d
from .batchnorm import BatchNorm2d
from .conv import Conv2d
from .linear import Linear
from .number import (alldirectquant, backward_e1, backward_e2, constquant, directquant,
                     e1quant, errquant, gbnquant, gwquant, lrquant, quantize, shiftquant,
                     sround, weightquant)
from .pool import AdaptiveAvgPool2d, AvgPool2d, MaxPool2d

__all__ = [
    "Add", "AdaptiveAvgPool2d", "Adder2d", "AvgPool2d", "BatchNorm2d", "Conv2d", "Linear",
    "MaxPool2d", "ReLU", "ReLU6", "alldirectquant", "backward_e1", "backward_e2", "constquant",
    "directquant", "e1quant", "errquant", "gbnquant", "gwquant", "lrquant", "quantize",
    "shiftquant", "sround", "weightquant",
]
