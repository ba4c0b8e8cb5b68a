"""Reference float models (torchvision-style), to be converted with `quantize_model`."""
from __future__ import annotations

import torch
import torch.nn as nn


class BasicBlock(nn.Module):
    """torchvision's ResNet BasicBlock (the residual add is ``out += identity``)."""

    def __init__(self, cin, cout, stride=1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                            nn.BatchNorm2d(cout))

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += identity
        return self.relu(out)


class ResNet(nn.Module):
    """ResNet with BasicBlocks; ``cifar=True`` uses the 3x3 stem without max pooling."""

    def __init__(self, layers=(2, 2, 2, 2), num_classes=1000, cifar=False, width=64):
        super().__init__()
        if cifar:
            self.conv1 = nn.Conv2d(3, width, 3, 1, 1, bias=False)
        else:
            self.conv1 = nn.Conv2d(3, width, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.Identity() if cifar else nn.MaxPool2d(3, 2, 1)
        stages, cin = [], width
        for i, blocks in enumerate(layers):
            cout = width * 2 ** i
            stride = 1 if i == 0 else 2
            stages.append(nn.Sequential(*[BasicBlock(cin if b == 0 else cout, cout, stride if b == 0 else 1)
                                          for b in range(blocks)]))
            cin = cout
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def resnet18(num_classes=1000, cifar=False) -> ResNet:
    return ResNet((2, 2, 2, 2), num_classes, cifar)


def small_cnn(num_classes=10) -> nn.Sequential:
    """A small power-of-two CNN, the size of many FPGA networks (76,288 MACs an image): 16x16x3
    -> conv 3->8 3x3 pad 1 -> ReLU -> max-pool 2 -> conv 8->16 3x3 stride 2 pad 1 -> ReLU ->
    flatten -> linear 256->num_classes."""
    return nn.Sequential(nn.Conv2d(3, 8, 3, 1, 1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(8, 16, 3, 2, 1), nn.ReLU(), nn.Flatten(),
                         nn.Linear(256, num_classes))
