"""The paper's feature ensemble (section 3.4), and soft voting to compare it with.

Stacking: concatenate the members' penultimate features, standardise them (train mean and
standard deviation), fit one logistic regression per emotion (that emotion against the
rest: 7 binary models), choose the inverse penalty C on val, and predict the emotion whose
model scores highest. Soft voting: the mean of the members' probabilities.

The head is fitted on the train split's features. Members were trained on that split too,
so their train features are more separable than unseen ones; that is the paper's recipe,
and it is why C is chosen on val, not on train.

``MemberFeatures`` computes the members' features and probabilities for a batch of faces (the
Ray stage in ``features`` runs it on an actor pool; ``EnsembleBackend`` calls it directly). It
runs each member on ``CnnBackend``, not through Predictor: Predictor holds ``EnsembleBackend``
for kind "ensemble", so this module sits below it.
An ensemble artifact (kind "ensemble") stores the head as arrays (coefficients, intercepts,
feature mean and scale) and names its members by path with the SHA-256 of their weights.
``EnsembleBackend`` refuses a member whose weights changed since the head was fitted: the
head's coefficients only mean something on the exact features they were fitted on.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow.parquet as pq
import torch

from fer_ray.artifacts import (ArtifactError, file_sha256, linear_arrays, load_artifact, read_meta, save_artifact,
                               weights_file)
from fer_ray.data.preprocess import resize_faces
from fer_ray.emotions import NUM_CLASSES
from fer_ray.ensemble.config import C_GRID
from fer_ray.errors import FerRayError
from fer_ray.inference.cnn import CnnBackend, pick_device

if TYPE_CHECKING:  # the catalog's readers are not needed to load an ensemble
    from fer_ray.data.catalog import Catalog


@dataclass
class StackedHead:
    """Seven one-vs-rest logistic regressions on standardised concatenated features."""

    coef: np.ndarray  # (7, D)
    intercept: np.ndarray  # (7,)
    mean: np.ndarray  # (D,)
    scale: np.ndarray  # (D,)

    def scores(self, features: np.ndarray) -> np.ndarray:
        """(N, 7) log-odds of each emotion's binary model."""
        return ((features - self.mean) / self.scale) @ self.coef.T + self.intercept

    def predict_proba(self, features: np.ndarray) -> np.ndarray:
        """Each model's probability, normalised to sum to 1 (scikit-learn's one-vs-rest rule).

        The argmax is the emotion whose model scores highest, as the paper predicts.
        """
        p = 1.0 / (1.0 + np.exp(-np.clip(self.scores(features), -50, 50)))
        return (p / np.maximum(p.sum(axis=1, keepdims=True), 1e-12)).astype(np.float32)

    def arrays(self) -> dict[str, np.ndarray]:
        return {"coef": self.coef, "intercept": self.intercept, "feature_mean": self.mean,
                "feature_scale": self.scale}

    @classmethod
    def from_arrays(cls, arrays: dict, path: str = "") -> "StackedHead":
        return cls(*linear_arrays(path, arrays, ("coef", "intercept", "feature_mean", "feature_scale")))


def fit_head(features: np.ndarray, labels: np.ndarray, C: float, seed: int = 0) -> StackedHead:
    """Fit the 7 binary logistic regressions on train features."""
    from sklearn.linear_model import LogisticRegression

    features = np.asarray(features, np.float32)
    mean = features.mean(axis=0)
    scale = features.std(axis=0)
    scale[scale < 1e-6] = 1.0  # a dead unit (always 0 after ReLU) carries no information
    x = (features - mean) / scale
    coef = np.zeros((NUM_CLASSES, x.shape[1]), np.float32)
    intercept = np.full(NUM_CLASSES, -50.0, np.float32)  # an emotion never seen in train is never predicted
    for k in range(NUM_CLASSES):
        y = np.asarray(labels) == k
        if 0 < y.sum() < len(y):
            clf = LogisticRegression(C=C, max_iter=2000, random_state=seed).fit(x, y)
            coef[k], intercept[k] = clf.coef_[0], clf.intercept_[0]
    return StackedHead(coef, intercept, mean.astype(np.float32), scale.astype(np.float32))


def choose_head(train: dict, val: dict, grid=C_GRID) -> tuple[StackedHead, dict]:
    """Fit a head per C on train; keep the one with the best val accuracy (ties: smaller C)."""
    heads = {C: fit_head(train["features"], train["label"], C) for C in sorted(grid)}
    by_c = {C: float((h.scores(val["features"]).argmax(axis=1) == val["label"]).mean()) for C, h in heads.items()}
    best = max(by_c, key=by_c.get)  # the first, so the smallest, of equals
    return heads[best], {"C": best, "val_accuracy_by_C": {f"{c:g}": a for c, a in by_c.items()}}


def soft_vote(probs: np.ndarray) -> np.ndarray:
    """(N, members, 7) -> (N, 7): the mean of the members' probabilities."""
    return probs.mean(axis=1)


# ------------------------------------------------------------------ artifact and Predictor backend


def member_meta(path: str) -> dict:
    """A member's model.json, refused unless it is a CNN's: checked before any member's arrays are
    read, so an SVM or an ensemble among the members is named in the ensemble's terms, at once."""
    meta = read_meta(path)
    if meta["kind"] != "cnn":
        raise ArtifactError(f"ensemble members must be CNN artifacts; {path} is {meta['kind']}")
    return meta


def member_record(path: str) -> dict:
    """How the ensemble names a member: where it is and the hash its weights must keep."""
    from fer_ray.models import build_model

    meta = member_meta(path)
    width = build_model(meta["architecture"], meta["num_classes"], meta["input_size"], meta["in_channels"]).feature_dim
    return {"path": str(Path(path).resolve()), "weights_sha256": meta["weights_sha256"],
            "architecture": meta["architecture"], "image_size": meta["image_size"], "feature_dim": width}


def verify_members(members: list[dict]) -> list[str]:
    """Paths of the members after checking each one's weights against the recorded hash."""
    for m in members:
        weights = weights_file(m["path"], read_meta(m["path"]))
        if not weights.is_file() or file_sha256(weights) != m["weights_sha256"]:
            raise ArtifactError(f"ensemble member {m['path']} is not the artifact the ensemble was fitted on "
                                "(its weights' SHA-256 differs); refit the ensemble on the current members")
    return [m["path"] for m in members]


class EnsembleBackend:
    """Predictor backend for kind "ensemble": members' features -> stacked head, end to end."""

    def __init__(self, path: str, device: torch.device, batch_size: int = 256):
        self.meta, arrays = load_artifact(path)
        if self.meta["kind"] != "ensemble":
            raise ArtifactError(f"{path} is a {self.meta['kind']} artifact, not an ensemble")
        self.members = MemberFeatures(verify_members(self.meta["members"]), device=str(device), batch_size=batch_size)
        self.head = StackedHead.from_arrays(arrays, path)
        if sum(self.members.widths) != self.head.coef.shape[1]:
            raise ArtifactError(f"{path}: members give {sum(self.members.widths)} features, the head expects "
                                f"{self.head.coef.shape[1]}")

    def predict_proba(self, images: np.ndarray, tta: str = "none") -> np.ndarray:
        """Stacked probabilities; ``flip`` averages them over each face and its mirror image."""
        if tta == "tencrop":
            raise FerRayError("ensemble artifacts support test-time augmentation 'none' or 'flip', not 'tencrop'")
        views = [images] + ([np.ascontiguousarray(images[:, :, ::-1])] if tta == "flip" else [])
        return sum(self.head.predict_proba(self.members.features(v)) for v in views) / len(views)


def save_ensemble(path: str, head: StackedHead, members: list[dict], widths: list[int], choice: dict,
                  catalog: Catalog) -> Path:
    meta = {"architecture": "ensemble(" + "+".join(m["architecture"] for m in members) + ")",
            "num_classes": NUM_CLASSES, "image_size": catalog.image_size, "in_channels": 1,
            "members": members,
            "head": {"type": "one-vs-rest logistic regression on standardised concatenated penultimate features",
                     "feature_widths": widths, **choice},
            "catalog": catalog.identity}
    return save_artifact(path, "ensemble", head.arrays(), meta)


class MemberFeatures:
    """Callable class: a batch {"image", ...} -> {"features", "probs", plus passed-through columns}."""

    def __init__(self, members: list[str], device: str = "auto", batch_size: int = 256,
                 keep: tuple[str, ...] = ("label", "id")):
        for m in members:
            member_meta(m)
        device = pick_device(device)
        self.networks = [CnnBackend(m, device, batch_size) for m in members]
        self.keep = keep

    @property
    def widths(self) -> list[int]:
        return [n.feature_dim for n in self.networks]

    def _faces(self, network: CnnBackend, images: np.ndarray) -> np.ndarray:
        """The faces at the size this member was trained on (members may differ)."""
        return resize_faces(images, network.meta["image_size"])

    def features(self, images: np.ndarray) -> np.ndarray:
        """(N, sum of widths) float32: each member's penultimate features, in member order."""
        return np.concatenate([n.features(self._faces(n, images)) for n in self.networks], axis=1)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        images = np.asarray(batch["image"], np.uint8)
        out = {k: batch[k] for k in self.keep if k in batch}
        out["features"] = self.features(images)
        out["probs"] = np.stack([n.predict_proba(self._faces(n, images)) for n in self.networks], axis=1)
        return out


def read_features(path: str) -> dict[str, np.ndarray]:
    """A featurized split as numpy arrays, rows sorted by id (Ray Data writes in completion order)."""
    table = pq.read_table(path)
    ids = table.column("id").to_numpy(zero_copy_only=False)
    order = np.argsort(ids, kind="stable")
    n = len(ids)
    return {"id": ids[order], "label": table.column("label").to_numpy()[order],
            "features": _flat_tensor(table.column("features")).reshape(n, -1)[order],
            "probs": _flat_tensor(table.column("probs")).reshape(n, -1, NUM_CLASSES)[order]}


def _flat_tensor(col) -> np.ndarray:
    """Every value of a tensor column in row-major order, whether or not Ray's extension type is loaded."""
    values = col.combine_chunks()
    values = getattr(values, "storage", values)
    while hasattr(values, "flatten"):
        values = values.flatten()
    return np.asarray(values.to_numpy(zero_copy_only=False), dtype=np.float32)
