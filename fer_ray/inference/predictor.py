"""Predictor: the single way from an artifact to emotion probabilities.

Evaluate, ensemble, score and serve all call ``Predictor``, so the preprocessing a model was
trained with (resize to the catalog's image size, normalisation, upscaling to the network's
input) is applied identically everywhere. It is plain Python: Ray wraps it, never the reverse.

Kinds plug in through a small backend interface: ``predict_proba(images, tta)`` on uint8
faces already at the artifact's image size, and, for networks, ``features(images)``.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import numpy as np
import torch
from torch.fx.experimental.optimization import fuse

from fer_ray.artifacts import load_cnn, read_meta
from fer_ray.data.preprocess import resize
from fer_ray.emotions import EMOTIONS
from fer_ray.errors import FerRayError
from fer_ray.models.forward import TTA_MODES, run_batches
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


# Artifact kind -> its backend class, ``(path, device, batch_size)``. Named, not imported: the
# SVM and ensemble backends sit in layers above this one (the ensemble's members are Predictors,
# the SVM module also trains and evaluates), so importing them here would close an import cycle.
BACKENDS = {"cnn": "fer_ray.inference.predictor:CnnBackend",
            "svm": "fer_ray.baseline.svm:SvmBackend",
            "ensemble": "fer_ray.ensemble.stack:EnsembleBackend"}


def _backend(path: str, kind: str, device: torch.device, batch_size: int):
    module, _, name = BACKENDS[kind].partition(":")
    return getattr(importlib.import_module(module), name)(path, device, batch_size)


class Predictor:
    """Load once, then ``predict_proba`` on any number of grey faces of any size."""

    def __init__(self, path: str | Path, device: str = "auto", batch_size: int = 256):
        self.path = str(path)
        self.meta = read_meta(path)
        self.kind = self.meta["kind"]
        self.image_size = int(self.meta["image_size"])
        self.labels = tuple(self.meta.get("labels", EMOTIONS))
        self.device = pick_device(device)
        self.backend = _backend(self.path, self.kind, self.device, batch_size)

    def prepare(self, faces) -> np.ndarray:
        """Grey uint8 faces (a list of (H, W) arrays, or one (N, H, W) array) -> (N, S, S)."""
        if isinstance(faces, np.ndarray):
            if faces.ndim != 3 or faces.dtype != np.uint8:  # a 0..1 float array would become black faces
                raise FerRayError(f"expected grey uint8 faces (N, H, W), got {faces.dtype} {faces.shape}")
            if faces.shape[2] in (3, 4) and faces.shape[1] > 4:  # rows of one colour image, not N faces
                raise FerRayError(f"expected grey faces (N, H, W), got {faces.shape}: that looks like one "
                                  "colour image (H, W, channels); convert it to grey first")
            if faces.shape[1:] == (self.image_size,) * 2:
                return np.ascontiguousarray(faces)  # a mirrored view (negative strides) is copied
        out = np.empty((len(faces), self.image_size, self.image_size), dtype=np.uint8)
        for i, face in enumerate(faces):
            face = np.asarray(face)
            if face.ndim != 2 or face.dtype != np.uint8:
                raise FerRayError(f"face {i}: expected a grey uint8 (H, W) array, got {face.dtype} {face.shape}")
            if face.size == 0:
                raise FerRayError(f"face {i}: empty image {face.shape}")
            out[i] = resize(face, self.image_size)
        return out

    def predict_proba(self, faces, tta: str = "none") -> np.ndarray:
        """(N, 7) float32 probabilities in EMOTIONS order."""
        if tta not in TTA_MODES:
            raise FerRayError(f"unknown test-time augmentation {tta!r}; expected one of {TTA_MODES}")
        faces = self.prepare(faces)
        if not len(faces):  # every kind answers an empty batch alike (the SVM's scaler would raise)
            return np.zeros((0, len(self.labels)), dtype=np.float32)
        return np.asarray(self.backend.predict_proba(faces, tta), dtype=np.float32)

    def check_tta(self, tta: str) -> None:
        """Refuse, with the backend's own one-line reason, a mode this artifact does not take
        (tencrop on an SVM or an ensemble): one blank face through it, before any real work."""
        self.predict_proba(np.zeros((1, self.image_size, self.image_size), np.uint8), tta)

    def predict(self, faces, tta: str = "none") -> np.ndarray:
        return self.predict_proba(faces, tta).argmax(axis=1)

    def features(self, faces) -> np.ndarray:
        """Penultimate-layer features (CNN artifacts only), (N, D) float32."""
        if not hasattr(self.backend, "features"):
            raise FerRayError(f"{self.kind} artifacts have no penultimate features; use a CNN artifact")
        return np.asarray(self.backend.features(self.prepare(faces)), dtype=np.float32)
