"""A few images -> one record per face: ``fer-ray predict`` and ``fer_ray.predict``.

For the user who has a photo, not a cluster: no Ray, one ``Predictor`` call for all the faces
found, and the same detection, cropping and preprocessing as ``score`` and ``serve``
(``crop_faces``), so a face gets the same probabilities whichever way it is scored.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

import numpy as np

from fer_ray.data.files import display_path
from fer_ray.data.preprocess import DEFAULT_MAX_PIXELS, ImageError, has_video_extension, rgb_to_grey
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


def _pictures(item, index: int, fps: float) -> Iterator[tuple[str, int | None, float | None, np.ndarray | None, str]]:
    """(name, frame, time, grey pixels or None, error) per picture of one item: one for a photo or
    an array, one per sampled frame for a video (``fps`` a second, 0 every frame)."""
    name = _name(item, index)
    try:
        if isinstance(item, PATH_TYPES) and has_video_extension(os.fsdecode(item)):
            from fer_ray.data.video import sample_frames  # PyAV: loaded only for a video

            for frame in sample_frames(os.fsencode(item), fps, max_pixels=DEFAULT_MAX_PIXELS):
                yield name, frame.index, frame.time, frame.grey, ""
        else:
            yield name, None, None, _grey(item), ""
    except ImageError as exc:  # VideoError too: the frames before it keep their records
        yield name, None, None, None, str(exc)


def predict(images, artifact: str | None = None, predictor=None, **settings) -> list[dict]:
    """Emotion records for every face in ``images``: a path (a photo or a video), an image array,
    or a list of them.

    ``settings`` are ``PredictConfig``'s: ``faces`` (``all`` detects every face, the default;
    ``largest`` keeps one per image; ``none`` takes each image as an already cropped face),
    ``detector`` (``centerface``, the default, or ``haar``), ``small_faces``, ``margin``, ``tta``
    (test-time augmentation, ``flip`` by default), ``fps`` (a video's frames sampled a second) and
    ``top``. ``artifact`` is a folder or a shipped model's name; without it (or ``predictor``) the
    shipped default model is used.
    Each record: ``image`` (the path, or "array N"), ``frame`` and ``time`` (a video's frame index
    and its time in seconds; None for a photo), ``face`` (index, largest first), ``track`` (a face
    followed across a video's frames, see ``assign_tracks``), ``box`` (x, y, w, h in the image's
    pixels), ``detector_score`` and ``landmarks`` (five named (x, y) points; both None for haar),
    ``emotion``, ``probabilities`` (all seven) and ``top`` (the ``top`` likeliest, as
    ``{"emotion", "probability"}``, likeliest first). A photo or video frame without a face, or a
    file that cannot be read, gives one record with ``face`` None and the reason in ``error``:
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
    found, crops = [], []  # a record's fields before the model's, per record; crops of the faces
    for i, item in enumerate(items):
        for name, frame, time, grey, error in _pictures(item, i, cfg.fps):
            where = {"image": name, "frame": frame, "time": None if time is None else round(time, 3)}
            pairs = [] if error else crop_faces(grey, config, detector)
            if error or not pairs:
                found.append((where, None, None, error or NO_FACE))
            for j, (face, crop) in enumerate(pairs):
                found.append((where, j, face, None))
                crops.append(crop)
    probs = iter(predictor.predict_proba(np.stack(crops), tta=cfg.tta) if crops else [])
    records = []
    for where, index, face, error in found:
        if error is not None:
            records.append({**where, "face": None, "track": None, "box": None, "detector_score": None,
                            "landmarks": None, "emotion": None, "probabilities": None, "top": None, "error": error})
            continue
        p = next(probs)
        order = ranked_emotions(p)
        box = face.box
        records.append({**where, "face": index, "track": None, "box": {"x": box.x, "y": box.y, "w": box.w, "h": box.h},
                        **detection_fields(face), "emotion": predictor.labels[order[0]],
                        "probabilities": {label: float(v) for label, v in zip(predictor.labels, p)},
                        "top": [{"emotion": predictor.labels[k], "probability": float(p[k])} for k in order[:cfg.top]],
                        "error": None})
    _track(records)
    return records


def _track(records: list[dict]) -> None:
    """Each video's face records get their ``track`` (``video_tracks`` over the video's records)."""
    videos: dict[str, list[dict]] = {}
    for record in records:
        if record["frame"] is not None:
            videos.setdefault(record["image"], []).append(record)
    if videos:
        from fer_ray.data.tracks import video_tracks
    for rows in videos.values():
        boxes = [None if r["face"] is None else tuple(r["box"].values()) for r in rows]
        for record, track in zip(rows, video_tracks([r["frame"] for r in rows], boxes)):
            record["track"] = track


def format_table(records: list[dict]) -> str:
    """The records as an aligned text table, one line per face (or per image or video frame
    without one); a video's lines show the frame's time and the face's track."""
    video = any(r["frame"] is not None for r in records)
    rows = [("image", "time s", "face", "track", "box x,y,w,h", "emotion", "top probabilities")]
    for r in records:
        when = "-" if r["time"] is None else f"{r['time']:.2f}"
        if r["error"] is not None:
            rows.append((r["image"], when, "-", "-", "-", "-", r["error"]))
            continue
        b = r["box"]
        rows.append((r["image"], when, str(r["face"]), "-" if r["track"] is None else str(r["track"]),
                     f"{b['x']},{b['y']},{b['w']},{b['h']}", r["emotion"],
                     "  ".join(f"{t['emotion']} {t['probability']:.2f}" for t in r["top"])))
    keep = [0, 1, 2, 3, 4, 5, 6] if video else [0, 2, 4, 5, 6]
    rows = [[row[k] for k in keep] for row in rows]
    widths = [max(len(row[k]) for row in rows) for k in range(len(keep) - 1)]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row[:-1], widths)) + "  " + row[-1] for row in rows)


def check_inputs(paths: list[str]) -> None:
    """Refuse, before loading a model, what is not an image file at all (a folder, a typo, an
    empty name: ``Path("")`` is the current folder). What is there but cannot be read (a broken
    link, a FIFO) still gets its error record, as in ``score``."""
    for p in paths:
        if not p:
            raise FerRayError("an image path is empty; name image files")
        shown = display_path(p)
        if Path(p).is_dir():
            raise FerRayError(f"{shown} is a folder; `fer-ray predict` takes image or video files (score a folder with "
                              "`fer-ray score`)")
        if not os.path.lexists(p):
            raise InputNotFound(f"image not found: {shown}")
