"""The embedded demo: a small residual CNN through the WAGEUBN torch path, checked in integers."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn

from . import function as F
from .convert import quantize_model
from .fixedpoint import Format, quantize


class ResidualBlock(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.add = F.Add()
        self.relu2 = nn.ReLU()

    def forward(self, x):
        y = self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x)))))
        return self.relu2(self.add(x, y))


def demo_model(channels: int = 8, classes: int = 10) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, channels, 3, padding=1, bias=False), nn.BatchNorm2d(channels), nn.ReLU(),
        ResidualBlock(channels), nn.MaxPool2d(2), ResidualBlock(channels),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, classes))


def run_demo(seed: int = 0, echo=print) -> bool:
    """One float64 training step; per conv layer, check the torch path's fw weights against the
    integer core and the weight gradients against the G grid (n * 2**-14, |n| <= 127)."""
    torch.manual_seed(seed)
    model = quantize_model(demo_model()).double().train()
    x = torch.randn(16, 1, 8, 8, dtype=torch.float64)
    labels = torch.randint(0, 10, (16,))
    loss = nn.functional.cross_entropy(model(x), labels)
    loss.backward()
    echo(f"wageubn-sim demo (seed {seed}): one float64 training step, loss {loss.item():.4f}")
    echo(f"{'layer':<12}{'weights':>9}{'fw == integer core':>20}{'G on its grid':>15}")
    ok = True
    for name, m in model.named_modules():
        if not isinstance(m, F.Conv2d):
            continue
        w = m.weight.detach().numpy()
        fw = quantize(w, Format(8, 7), "HALF_EVEN", "SAT_SYM") * 2.0 ** -7
        w_ok = np.array_equal(m.quantized_weight().detach().numpy(), fw)
        g = m.weight.grad.numpy() * 2**14
        g_ok = bool(np.array_equal(g, np.round(g)) and np.abs(g).max() <= 127)
        ok &= w_ok and g_ok
        echo(f"{name:<12}{w.size:>9}{'yes' if w_ok else 'NO':>20}{'yes' if g_ok else 'NO':>15}")
    echo("all checks passed" if ok else "a check FAILED")
    return ok
