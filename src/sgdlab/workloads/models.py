"""The models behind the workloads: linear classifiers, an MLP, a small CNN, ResNet-18.

All are plain ``torch.nn.Module`` s; their initialisation is seeded by the caller
(``torch.manual_seed`` before construction), so a workload's model is the same on every run
with the same seed.
"""

from __future__ import annotations

import torch
from torch import nn


class LinearClassifier(nn.Module):
    """Logits ``W x + b`` of a flattened input; one logit for a binary problem.

    A sparse input (a ``torch.sparse_coo`` batch) is multiplied with ``torch.sparse.mm`` so a
    47k-feature sparse problem never materialises a dense batch.
    """

    def __init__(self, in_features: int, num_classes: int) -> None:
        super().__init__()
        out = 1 if num_classes == 2 else num_classes
        self.linear = nn.Linear(in_features, out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.is_sparse:
            return torch.sparse.mm(x, self.linear.weight.t()) + self.linear.bias
        return self.linear(x.flatten(1))


class MLP(nn.Module):
    """Fully connected ReLU network on a flattened input."""

    def __init__(self, in_features: int, hidden: tuple[int, ...], num_classes: int) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        width = in_features
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        layers.append(nn.Linear(width, num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class SmallCNN(nn.Module):
    """Two conv-BatchNorm-ReLU-pool stages and two linear layers, for 28x28 grey images."""

    def __init__(self, num_classes: int = 10, channels: tuple[int, int] = (16, 32)) -> None:
        super().__init__()
        c1, c2 = channels
        self.features = nn.Sequential(
            nn.Conv2d(1, c1, 3, padding=1, bias=False),
            nn.BatchNorm2d(c1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(c1, c2, 3, padding=1, bias=False),
            nn.BatchNorm2d(c2),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.head = nn.Sequential(
            nn.Flatten(), nn.Linear(c2 * 7 * 7, 128), nn.ReLU(), nn.Linear(128, num_classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class _BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class ResNet18(nn.Module):
    """ResNet-18 for 32x32 images (3x3 stem, no max-pool), as used for CIFAR-10.

    ``width`` is the first stage's channel count (64 in the standard network); a width of 4 or
    8 gives a network that trains on a CPU in a test.
    """

    def __init__(self, num_classes: int = 10, width: int = 64) -> None:
        super().__init__()
        if width < 1:
            raise ValueError(f"Invalid width: {width}")
        self.stem = nn.Sequential(
            nn.Conv2d(3, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU()
        )
        stages: list[nn.Module] = []
        cin = width
        for i, mult in enumerate((1, 2, 4, 8)):
            cout = width * mult
            stride = 1 if i == 0 else 2
            stages += [_BasicBlock(cin, cout, stride), _BasicBlock(cout, cout, 1)]
            cin = cout
        self.stages = nn.Sequential(*stages)
        self.head = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, num_classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.stages(self.stem(x)))
