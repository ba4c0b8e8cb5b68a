"""quantize_model on torchvision-style ResNets and nn.Sequential."""
import pytest
import torch
import torch.nn as nn

from wageubn_sim import function as F
from wageubn_sim import quantize_model
from wageubn_sim.config import Config
from wageubn_sim.models import BasicBlock


class TinyResNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(2)
        self.layer1 = nn.Sequential(BasicBlock(8, 8), BasicBlock(8, 16, 2))
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.avgpool(self.layer1(x))
        return self.fc(torch.flatten(x, 1))


def test_resnet_is_converted_with_weights_kept():
    torch.manual_seed(0)
    model = TinyResNet().eval()
    q = quantize_model(model)
    kinds = {type(m) for m in q.modules()}
    assert {F.Conv2d, F.BatchNorm2d, F.ReLU, F.Linear, F.AdaptiveAvgPool2d} <= kinds
    assert nn.Conv2d not in kinds and nn.BatchNorm2d not in kinds and nn.ReLU not in kinds
    for (name, p), (_, p0) in zip(q.state_dict().items(), model.state_dict().items()):
        assert torch.equal(p, p0), name
    assert type(model.conv1) is nn.Conv2d  # the original is untouched
    x = torch.randn(2, 3, 16, 16)
    y = q(x)
    assert y.shape == (2, 10) and torch.isfinite(y).all()
    # every quantized weight is an 8-bit fw value
    w = q.layer1[1].downsample[0].quantized_weight() * 128
    assert torch.equal(w, w.round()) and w.abs().max() <= 127


def test_resnet_trains_one_step():
    q = quantize_model(TinyResNet()).double().train()
    out = q(torch.randn(4, 3, 8, 8, dtype=torch.float64))
    nn.functional.cross_entropy(out, torch.tensor([1, 2, 3, 4])).backward()
    g = q.layer1[0].conv1.weight.grad * 2**14
    assert torch.equal(g, g.round()) and g.abs().max() <= 127


def test_keep_float_and_config():
    model = TinyResNet()
    q = quantize_model(model, Config(conv_and_linear_weight=4, conv_and_linear_weight_all=4),
                       keep_float=("conv1", "fc"))
    assert type(q.conv1) is nn.Conv2d and type(q.fc) is nn.Linear
    assert type(q.layer1[0].conv1) is F.Conv2d and q.layer1[0].conv1.weight_dec_bit_width == 4
    w = q.layer1[0].conv1.quantized_weight() * 8
    assert torch.equal(w, w.round()) and w.abs().max() <= 7
    with pytest.raises(ValueError, match="keep_float names.*'conv9'"):
        quantize_model(model, keep_float=("conv9",))
    with pytest.raises(TypeError, match="nn.Module"):
        quantize_model("resnet18")


def test_sequential_and_inplace():
    seq = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU6(), nn.AvgPool2d(2), nn.Flatten(), nn.Linear(8, 1))
    out = quantize_model(seq, inplace=True)
    assert out is seq and isinstance(seq[1], F.ReLU6) and isinstance(seq[2], F.AvgPool2d)
    assert seq(torch.randn(1, 1, 6, 6)).shape == (1, 1)
