"""The MNIST classifier of the authors' code: two 5x5 conv + max-pool blocks, FC 1024, FC 10."""
from __future__ import annotations

import torch
from torch import nn

__all__ = ["MnistClassifier"]


class MnistClassifier(nn.Module):
    """conv 5x5x32, max-pool, conv 5x5x64, max-pool, FC 1024, FC 10.

    Takes images in [0, 1] of shape (N, 1, 28, 28) and returns logits (N, num_classes).
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 1, image_size: int = 28):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 32, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        )
        side = image_size // 4
        self.head = nn.Sequential(
            nn.Flatten(), nn.Linear(64 * side * side, 1024), nn.ReLU(), nn.Linear(1024, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))
