"""Predictor: the single way from an artifact to emotion probabilities.

Evaluate, ensemble, score and serve all call ``Predictor``, so the preprocessing a model was
trained with (resize to the catalog's image size, normalisation, upscaling to the network's
input) is applied identically everywhere. It is plain Python: Ray wraps it, never the reverse.

Kinds plug in through a small backend interface: ``predict_proba(images, tta)`` on uint8
faces already at the artifact's image size, and, for networks, ``features(images)``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fer_ray.artifacts import read_meta
from fer_ray.baseline.linear import SvmBackend
from fer_ray.data.preprocess import resize_faces
from fer_ray.emotions import EMOTIONS
from fer_ray.ensemble.stack import EnsembleBackend
from fer_ray.errors import FerRayError
from fer_ray.inference.cnn import CnnBackend, pick_device
from fer_ray.models.forward import TTA_MODES

# Artifact kind -> its backend class, called ``(path, device, batch_size)``. Every backend sits in
# a layer below this module and never imports Predictor (.importlinter holds both): an ensemble
# runs its members on CnnBackend, and the SVM's backend is apart from its training and evaluation.
BACKENDS = {"cnn": CnnBackend, "svm": SvmBackend, "ensemble": EnsembleBackend}


class Predictor:
    """Load once, then ``predict_proba`` on any number of grey faces of any size."""

    def __init__(self, path: str | Path, device: str = "auto", batch_size: int = 256):
        self.path = str(path)
        self.meta = read_meta(path)
        self.kind = self.meta["kind"]
        self.image_size = int(self.meta["image_size"])
        self.labels = tuple(self.meta.get("labels", EMOTIONS))
        self.device = pick_device(device)
        self.backend = BACKENDS[self.kind](self.path, self.device, batch_size)

    def prepare(self, faces) -> np.ndarray:
        """Grey uint8 faces (a list of (H, W) arrays, or one (N, H, W) array) -> (N, S, S)."""
        return resize_faces(faces, self.image_size)

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
