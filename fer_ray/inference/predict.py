"""A few images -> one record per face: ``fer-ray predict`` and ``fer_ray.predict``.

For the user who has a photo, not a cluster: no Ray, one ``Predictor`` call for all the faces
found, and the same detection, cropping and preprocessing as ``score`` and ``serve``
(``crop_faces``), so a face gets the same probabilities whichever way it is scored.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from fer_ray.data.files import display_path
from fer_ray.data.preprocess import DEFAULT_MAX_PIXELS, ImageError, rgb_to_grey
from fer_ray.emotions import ranked_emotions
from fer_ray.errors import FerRayError, InputNotFound
from fer_ray.inference.config import PredictConfig
from fer_ray.inference.crops import NO_FACE, DetectConfig, crop_faces, detection_fields, read_image


PATH_TYPES = (str, bytes, os.PathLike)


def _name(item, index: int) -> str:
    """A record's ``image``: the path as ``score`` writes it (a name that is not UTF-8 escaped,
    so that JSON and the terminal can show it), or "array N"."""
    return display_path(os.fsdecode(item)) if isinstance(item, PATH_TYPES) else f"array {index}"


def _grey(item) -> np.ndarray:
    """A path (read and decoded as ``score`` does) or an array, grey (H, W) or RGB (H, W, 3)."""
    if isinstance(item, PATH_TYPES):
        return read_image(os.fsencode(item), DEFAULT_MAX_PIXELS)
    arr = np.asarray(item)
    if arr.dtype != np.uint8:
        raise FerRayError(f"expected a uint8 image array, got {arr.dtype}")
    if arr.ndim == 3 and arr.shape[2] == 3:
        return rgb_to_grey(arr)
    if arr.ndim != 2 or arr.size == 0:
        raise FerRayError(f"expected a grey (H, W) or RGB (H, W, 3) image, got shape {arr.shape}")
    return arr


def predict(images, artifact: str | None = None, predictor=None, **settings) -> list[dict]:
    """Emotion records for every face in ``images``: a path, an image array, or a list of them.

    ``settings`` are ``PredictConfig``'s: ``faces`` (``all`` detects every face, the default;
    ``largest`` keeps one per image; ``none`` takes each image as an already cropped face),
    ``detector`` (``centerface``, the default, or ``haar``), ``small_faces``, ``margin``, ``tta``
    (test-time augmentation, ``flip`` by default) and ``top``. ``artifact`` is a folder or a
    shipped model's name; without it (or ``predictor``) the shipped default model is used.
    Each record: ``image`` (the path, or "array N"), ``face`` (index, largest first), ``box`` (x, y, w, h in the image's pixels), ``detector_score`` and ``landmarks``
    (five named (x, y) points; both None for haar), ``emotion``, ``probabilities`` (all seven)
    and ``top`` (the ``top`` likeliest, as ``{"emotion", "probability"}``, likeliest first). An image without a face, or
    one that cannot be read, gives one record with ``face`` None and the reason in ``error``:
    nothing passed in is left out.
    """
    from fer_ray.inference.predictor import Predictor
    from fer_ray.pretrained import default_artifact, shipped_or_path

    cfg = PredictConfig(**settings)
    items = list(images) if isinstance(images, (list, tuple)) else [images]
    predictor = predictor or Predictor(shipped_or_path(artifact) if artifact else default_artifact())
    config = DetectConfig(mode=cfg.faces, image_size=predictor.image_size, margin=cfg.margin,
                          detector=cfg.detector, small_faces=cfg.small_faces)
    detector = config.make_detector()
    found, crops = [], []  # (image name, face index, Face, error) per record; crops of the faces
    for i, item in enumerate(items):
        name = _name(item, i)
        try:
            pairs = crop_faces(_grey(item), config, detector)
        except ImageError as exc:
            found.append((name, None, None, str(exc)))
            continue
        if not pairs:
            found.append((name, None, None, NO_FACE))
        for j, (face, crop) in enumerate(pairs):
            found.append((name, j, face, None))
            crops.append(crop)
    probs = iter(predictor.predict_proba(np.stack(crops), tta=cfg.tta) if crops else [])
    records = []
    for name, index, face, error in found:
        if error is not None:
            records.append({"image": name, "face": None, "box": None, "detector_score": None, "landmarks": None,
                            "emotion": None, "probabilities": None, "top": None, "error": error})
            continue
        p = next(probs)
        order = ranked_emotions(p)
        box = face.box
        records.append({"image": name, "face": index, "box": {"x": box.x, "y": box.y, "w": box.w, "h": box.h},
                        **detection_fields(face), "emotion": predictor.labels[order[0]],
                        "probabilities": {label: float(v) for label, v in zip(predictor.labels, p)},
                        "top": [{"emotion": predictor.labels[k], "probability": float(p[k])} for k in order[:cfg.top]],
                        "error": None})
    return records


def format_table(records: list[dict]) -> str:
    """The records as an aligned text table, one line per face (or per image without one)."""
    rows = [("image", "face", "box x,y,w,h", "emotion", "top probabilities")]
    for r in records:
        if r["error"] is not None:
            rows.append((r["image"], "-", "-", "-", r["error"]))
            continue
        b = r["box"]
        rows.append((r["image"], str(r["face"]), f"{b['x']},{b['y']},{b['w']},{b['h']}", r["emotion"],
                     "  ".join(f"{t['emotion']} {t['probability']:.2f}" for t in r["top"])))
    widths = [max(len(row[k]) for row in rows) for k in range(4)]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row[:4], widths)) + "  " + row[4] for row in rows)


def check_inputs(paths: list[str]) -> None:
    """Refuse, before loading a model, what is not an image file at all (a folder, a typo, an
    empty name: ``Path("")`` is the current folder). What is there but cannot be read (a broken
    link, a FIFO) still gets its error record, as in ``score``."""
    for p in paths:
        if not p:
            raise FerRayError("an image path is empty; name image files")
        shown = display_path(p)
        if Path(p).is_dir():
            raise FerRayError(f"{shown} is a folder; `fer-ray predict` takes image files (score a folder with "
                              "`fer-ray score`)")
        if not os.path.lexists(p):
            raise InputNotFound(f"image not found: {shown}")
