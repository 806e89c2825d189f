"""A trained network on a device: the Predictor backend for kind "cnn", and the device it runs on.

It sits below ``predictor`` and ``ensemble.stack``: Predictor runs it for CNN artifacts, and an
ensemble runs one per member.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.fx.experimental.optimization import fuse

from fer_ray.artifacts import load_cnn
from fer_ray.errors import FerRayError
from fer_ray.models.forward import run_batches
from fer_ray.models.inputs import Normalization


def pick_device(device: str = "auto") -> torch.device:
    """``auto`` (a GPU when there is one), ``cpu``, ``cuda`` or ``cuda:N``; anything else, or a
    GPU this machine lacks, is a ValueError (torch's own errors read like crashes)."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        chosen = torch.device(device)
    except RuntimeError:
        raise FerRayError(f"unknown device {device!r}; expected auto, cpu, cuda or cuda:N") from None
    if chosen.type not in ("cpu", "cuda"):
        raise FerRayError(f"unknown device {device!r}; expected auto, cpu, cuda or cuda:N")
    if chosen.type == "cuda" and (not torch.cuda.is_available() or (chosen.index or 0) >= torch.cuda.device_count()):
        raise FerRayError(f"device {device!r} asked for, but this machine has {torch.cuda.device_count()} CUDA GPU(s)")
    return chosen


class CnnBackend:
    """A trained FERNet on a device."""

    def __init__(self, path: str, device: torch.device, batch_size: int = 256):
        self.model, self.meta = load_cnn(path, device)
        # Each batch norm folded into the convolution before it (eval-mode arithmetic, one pass
        # instead of two: fast_cnn 1.3x faster on a CPU), then NHWC layout: ~2x faster small-CNN
        # inference on CPUs, and what tensor cores want on GPUs. benchmarks/bench_inference.py.
        self.model.backbone = fuse(self.model.backbone)
        self.model = self.model.to(memory_format=torch.channels_last)
        self.device = device
        self.batch_size = batch_size
        self.norm = Normalization(**self.meta["normalization"])

    @property
    def feature_dim(self) -> int:
        return self.model.feature_dim

    def _run(self, images: np.ndarray, output: str, tta: str = "none") -> np.ndarray:
        return run_batches(self.model, images, self.meta["input_size"], self.norm, self.device,
                           self.batch_size, amp=True, channels_last=True,
                           tta=tta, output=output).numpy()

    def predict_proba(self, images: np.ndarray, tta: str = "none") -> np.ndarray:
        return self._run(images, "probs", tta)

    def features(self, images: np.ndarray) -> np.ndarray:
        return self._run(images, "features")
