"""Batched forward passes with mixed precision and test-time augmentation.

The single routine behind in-training validation, the Predictor and the featurizer: images
stay uint8 until they reach the device, then go through ``to_model_input``.
"""

from __future__ import annotations

import contextlib

import numpy as np
import torch
import torch.nn.functional as F

from fer_ray.choices import TTA_MODES
from fer_ray.errors import FerRayError
from fer_ray.models.inputs import Normalization, to_model_input

TENCROP_FRACTION = 0.875


def cpu_has_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX-512 BF16 or AMX).

    There, oneDNN's bf16 convolutions train small CNNs 2-2.5x faster than fp32; on CPUs
    without it bf16 is emulated and slower than fp32, so autocast stays off.
    """
    return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()


def autocast(device: torch.device, amp: bool):
    """bf16 autocast when ``amp``: on CUDA always, on a CPU when it has native bf16."""
    if amp and (device.type == "cuda" or (device.type == "cpu" and cpu_has_bf16())):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def tta_views(x: torch.Tensor, mode: str) -> list[torch.Tensor]:
    """Views of a normalised batch to average over: itself, its mirror, or ten crops."""
    if mode == "none":
        return [x]
    if mode == "flip":
        return [x, x.flip(-1)]
    if mode == "tencrop":
        size = x.shape[-1]
        c = int(round(size * TENCROP_FRACTION))
        offsets = [(0, 0), (0, size - c), (size - c, 0), (size - c, size - c), ((size - c) // 2, (size - c) // 2)]
        crops = [F.interpolate(x[..., t : t + c, l : l + c], size=(size, size), mode="bilinear",
                               align_corners=False) for t, l in offsets]
        return crops + [v.flip(-1) for v in crops]
    raise FerRayError(f"unknown test-time augmentation {mode!r}; expected one of {TTA_MODES}")


@torch.no_grad()
def run_batches(model: torch.nn.Module, images, input_size: int, norm: Normalization,
                device: torch.device, batch_size: int = 512, amp: bool = True,
                channels_last: bool = False, tta: str = "none", output: str = "probs") -> torch.Tensor:
    """Forward ``images`` ((N, H, W) uint8, numpy or tensor) in batches.

    ``output``: "probs" (softmax, averaged over TTA views), "logits" (no TTA) or "features"
    (penultimate layer, no TTA). Returns float32 on the CPU.
    """
    if output != "probs" and tta != "none":
        raise ValueError("test-time augmentation applies to probabilities only")
    was_training = model.training
    model.eval()
    head = model.features if output == "features" else model
    outs = []
    for start in range(0, len(images), batch_size):
        batch = images[start : start + batch_size]
        batch = (batch if torch.is_tensor(batch) else torch.tensor(np.asarray(batch))).to(device, non_blocking=True)
        x = to_model_input(batch, input_size, norm, channels_last)
        with autocast(device, amp):
            if output == "probs":
                views = tta_views(x, tta)
                y = sum(torch.softmax(model(v).float(), dim=1) for v in views) / len(views)
            else:
                y = head(x).float()
        outs.append(y.cpu())
    model.train(was_training)
    if not outs:
        width = getattr(model, "feature_dim", 0) if output == "features" else model.classifier.out_features
        return torch.zeros((0, width), dtype=torch.float32)
    return torch.cat(outs)
