"""The fitted linear SVM (``svm`` fits it) as plain arrays, and the Predictor backend for kind "svm".

Apart from the fitting and the ``fer-ray baseline`` run, which evaluates through Predictor: this
module sits below Predictor, so Predictor can hold its backend without an import cycle.
A hinge-loss model has no probabilities: ``predict_proba`` is the softmax of the seven decision
scores. It keeps the argmax (accuracy and every metric are exact) but is not calibrated.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from fer_ray.artifacts import ArtifactError, linear_arrays, load_artifact
from fer_ray.errors import FerRayError
from fer_ray.models.forward import tta_views


def flatten(images: np.ndarray) -> np.ndarray:
    """(N, S, S) uint8 -> (N, S*S) float32 on the 0..1 scale."""
    images = np.asarray(images)
    return images.reshape(len(images), -1).astype(np.float32) / np.float32(255.0)


def softmax(scores: np.ndarray) -> np.ndarray:
    z = scores - scores.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


@dataclass
class LinearSvm:
    """A fitted linear classifier as plain arrays; the artifact stores exactly these."""

    coef: np.ndarray  # (7, D) float32
    intercept: np.ndarray  # (7,) float32
    mean: np.ndarray  # (D,) float32, train mean image on the 0..1 scale
    scale: np.ndarray  # (D,) float32 per-pixel train standard deviation (older artifacts: (1,), one for all)

    def inputs(self, flat: np.ndarray) -> np.ndarray:
        """Flattened 0..1 pixels -> the centred, scaled vectors the model was fitted on."""
        return (flat - self.mean) / self.scale

    def decision(self, images: np.ndarray) -> np.ndarray:
        """(N, 7) hinge scores for uint8 (N, S, S) faces."""
        return self.inputs(flatten(images)) @ self.coef.T + self.intercept

    def predict_proba(self, images: np.ndarray, tta: str = "none") -> np.ndarray:
        """Softmax of the scores, averaged over the test-time views (same views as the CNNs).

        Ten-crop is refused: a pixel-position model scores shifted, rescaled crops as other
        faces (on synthetic faces it cut accuracy from 0.74 to 0.45); a mirror image is fine.
        """
        if tta == "tencrop":
            raise FerRayError("svm artifacts support test-time augmentation 'none' or 'flip', not 'tencrop'")
        if tta == "none":
            return softmax(self.decision(images)).astype(np.float32)
        x = torch.tensor(np.asarray(images, np.uint8)).unsqueeze(1).float() / 255.0
        views = tta_views(x, tta)
        probs = sum(softmax(self.inputs(v.reshape(len(v), -1).numpy()) @ self.coef.T + self.intercept)
                    for v in views)
        return (probs / len(views)).astype(np.float32)

    def arrays(self) -> dict[str, np.ndarray]:
        return {"coef": self.coef, "intercept": self.intercept, "mean": self.mean,
                "scale": self.scale}

    @classmethod
    def from_arrays(cls, arrays: dict, path: str = "", width: int | None = None) -> "LinearSvm":
        return cls(*linear_arrays(path, arrays, ("coef", "intercept", "mean", "scale"), width))


class SvmBackend:
    """Predictor backend for kind "svm" artifacts (plain numpy; no device needed)."""

    def __init__(self, path: str, device=None, batch_size: int = 0):  # Predictor's backend signature
        self.meta, arrays = load_artifact(path)
        if self.meta["kind"] != "svm":
            raise ArtifactError(f"{path} is a {self.meta['kind']} artifact, not an SVM")
        self.model = LinearSvm.from_arrays(arrays, path, width=self.meta["image_size"] ** 2)

    def predict_proba(self, images: np.ndarray, tta: str = "none") -> np.ndarray:
        return self.model.predict_proba(images, tta)
