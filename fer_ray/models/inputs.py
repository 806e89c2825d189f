"""What a network sees: uint8 grey faces -> normalised float tensors at its input size.

Training, evaluation, featurizing, scoring and serving all call ``to_model_input``, so the
mean-centring (the paper's preprocessing), scaling and upscaling (the paper's larger ResNet
inputs) can never differ between them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class Normalization:
    """Train-split pixel statistics on the 0..1 scale (from the catalog manifest)."""

    mean: float
    std: float

    def to_dict(self) -> dict:
        return {"mean": self.mean, "std": self.std}


def to_model_input(images: torch.Tensor, input_size: int, norm: Normalization,
                   channels_last: bool = False) -> torch.Tensor:
    """(N, H, W) or (N, 1, H, W) uint8 -> (N, 1, input_size, input_size) float32, normalised.

    Runs on whatever device ``images`` is on, so on a GPU the whole transform is on-device.
    """
    x = images if images.dim() == 4 else images.unsqueeze(1)
    x = (x.float() / 255.0 - norm.mean) / max(norm.std, 1e-6)
    if x.shape[-1] != input_size or x.shape[-2] != input_size:
        x = F.interpolate(x, size=(input_size, input_size), mode="bilinear", align_corners=False,
                          antialias=x.shape[-1] > input_size)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x
