"""A stand-in for clean-fid's TorchScript Inception, for offline tests of the
Inception path (the real weights cannot be downloaded here)."""

from __future__ import annotations

from pathlib import Path

import torch


class StandInInception(torch.nn.Module):
    """Shaped like clean-fid's TorchScript Inception: ``layers`` gives 2048-d
    features of x/128 - 1, forward(x, return_features, no_output_bias) a
    1008-way softmax. ``grid`` > 1 keeps a grid x grid spatial map in the
    features, so that how an image was resized shows in them."""

    def __init__(self, grid: int = 1):
        super().__init__()
        self.layers = torch.nn.Sequential(
            torch.nn.Conv2d(3, 2048 // (grid * grid), 8, stride=8),
            torch.nn.Tanh(),
            torch.nn.AdaptiveAvgPool2d(grid),
            torch.nn.Flatten(),
        )
        self.fc = torch.nn.Linear(2048, 1008)

    def forward(self, x, return_features: bool = False, no_output_bias: bool = False):
        f = self.layers(x / 128 - 1)
        if return_features:
            return f
        return torch.softmax(self.fc(f), dim=1)


def save_stand_in_inception(path: Path, grid: int = 1, seed: int = 0) -> Path:
    """Script and save a seeded stand-in where clean-fid expects its file."""
    torch.manual_seed(seed)
    torch.jit.script(StandInInception(grid)).save(str(path))
    return path
