"""Photos -> face crops -> emotion probabilities: the plain per-file work of score, serve and predict.

``fer-ray score`` runs ``detect_batch`` and ``FaceScorer`` on Ray Data (``batch``), ``serve``
calls ``crop_faces`` per request, ``predict`` for a few files; all three share these
functions, so a photo gives the same faces, the same pixels and the same probabilities
whichever way it arrives.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import cv2
import numpy as np
import pyarrow as pa

from fer_ray.data.faces import DEFAULT_DETECTOR, FACE_MODES, find_faces, make_detector
from fer_ray.data.geometry import LANDMARKS
from fer_ray.data.files import read_image_file
from fer_ray.data.preprocess import DEFAULT_MAX_PIXELS, ImageError, decode_grey, resize
from fer_ray.emotions import EMOTIONS, ranked_emotions
from fer_ray.errors import FerRayError

NO_FACE = "no face detected"
# The landmark columns of ``fer-ray score``'s output: right_eye_x, right_eye_y, ... (flat, so
# that CSV output holds them too).
LANDMARK_COLUMNS = tuple(f"{name}_{axis}" for name in LANDMARKS for axis in "xy")
# What ``fer-ray score`` writes: one row per face, or one per file without a usable face (its
# face, box, emotion and probabilities null, ``error`` saying why). ``detector_score`` and the
# landmarks are null where the detector gives none (Haar, or faces "none").
SCHEMA = pa.schema(
    [("path", pa.string()), ("face", pa.int32()), ("x", pa.int32()), ("y", pa.int32()),
     ("w", pa.int32()), ("h", pa.int32()), ("detector_score", pa.float32())]
    + [(name, pa.float32()) for name in LANDMARK_COLUMNS]
    + [("emotion", pa.string())]
    + [(name, pa.float32()) for name in EMOTIONS]
    + [("error", pa.string())]
)


@functools.lru_cache(maxsize=4)
def cached_detector(kind: str = DEFAULT_DETECTOR, small_faces: bool = False):
    """One detector per process and setting: loading it costs more than detecting in a small
    image. Only for one thread at a time (``serve`` keeps its own, behind a lock)."""
    return make_detector(kind, small_faces)


def pin_threads(threads: int) -> None:
    """Pin torch to ``threads`` and OpenCV to one thread, in a Ray worker given that many CPUs.

    Only for processes fer-ray owns (Ray's actors and tasks), never the caller's process: on a
    shared machine more OpenMP threads than cores spin against each other (a single small_cnn
    forward went from 1 ms to ~90 ms with 2 threads on 2 busy cores), and OpenCV's own pool on
    top of Ray's one process per CPU share only contends (measured slower on 2 busy cores).
    """
    import torch

    torch.set_num_threads(threads)
    cv2.setNumThreads(1)


@dataclass(frozen=True)
class DetectConfig:
    """How photos become face crops; the same settings must be used for a whole job."""

    mode: str = "all"
    image_size: int = 48
    margin: float | None = None  # None: the detector's own (faces.MARGINS)
    max_pixels: int = DEFAULT_MAX_PIXELS
    detector: str = DEFAULT_DETECTOR
    small_faces: bool = False

    def __post_init__(self):
        if self.mode not in FACE_MODES:
            raise FerRayError(f"unknown face mode {self.mode!r}; expected one of {FACE_MODES}")

    def make_detector(self):
        """This job's detector (cached per process), or None where images are crops already."""
        return None if self.mode == "none" else cached_detector(self.detector, self.small_faces)


def read_image(path: str | bytes, max_pixels: int) -> np.ndarray:
    """Grey pixels of one file, or ImageError with the reason (unreadable files included)."""
    return decode_grey(read_image_file(path, max_pixels), max_pixels)


def crop_faces(grey: np.ndarray, config: DetectConfig, detector) -> list:
    """(face, crop) per face of one grey image, crops resized to the artifact's image size.

    Scoring and serving both call this, so a photo gives the same faces and the same
    pixels to the Predictor whichever way it arrives. ``detector`` may be None for ``none``.
    """
    return [(face, resize(crop, config.image_size))
            for face, crop in find_faces(grey, config.mode, detector, config.margin)]


def face_points(face) -> list[float]:
    """A face's detector score and landmarks (x, y in ``LANDMARKS`` order) as 11 floats, NaN
    where the detector gives none (Haar, no face)."""
    nan = float("nan")
    if face is None:
        return [nan] * (1 + len(LANDMARK_COLUMNS))
    score = nan if face.score is None else face.score
    points = [nan] * len(LANDMARK_COLUMNS) if face.landmarks is None else [v for p in face.landmarks for v in p]
    return [score, *points]


def detection_fields(face) -> dict:
    """A face's ``detector_score`` and named ``landmarks`` for JSON records (predict, serve):
    None where the detector gives none."""
    named = None if face.landmarks is None else {
        name: (round(x, 2), round(y, 2)) for name, (x, y) in zip(LANDMARKS, face.landmarks)}
    return {"detector_score": None if face.score is None else round(face.score, 4), "landmarks": named}


def detect_batch(batch: dict[str, np.ndarray], config: DetectConfig) -> dict[str, np.ndarray]:
    """Paths -> one row per face (crop resized to the artifact's image size), or one row
    per file that has no face or cannot be used. ``n_faces`` is the file's row count.

    ``error`` is the reason on the rows of a file without a usable face, and empty on a face's
    row (a string either way: with ``--gpu`` these rows cross Ray Data, where a column of only
    None would lose its type). Those rows' face, box and image are zeros that ``scored_table``
    turns into nulls.

    ``path`` is what the rows carry; an optional ``file`` column (the name's raw bytes) is
    what is opened, for names that ``path`` shows escaped (see ``display_path``).
    """
    size = config.image_size
    detector = config.make_detector()
    cols = {k: [] for k in ("path", "face", "n_faces", "x", "y", "w", "h", "error")}
    points = []  # (detector score, 10 landmark coordinates) per row; NaN where there are none
    images = []

    def add(path, index, n, face, crop, error):
        for key, value in zip(("path", "face", "n_faces", "error"), (path, index, n, error)):
            cols[key].append(value)
        for key in ("x", "y", "w", "h"):
            cols[key].append(getattr(face.box, key) if face is not None else 0)
        points.append(face_points(face))
        images.append(crop if crop is not None else np.zeros((size, size), np.uint8))

    for path, file in zip(batch["path"], batch.get("file", batch["path"])):
        path = str(path)
        try:
            grey = read_image(file if isinstance(file, bytes) else str(file), config.max_pixels)
            faces = crop_faces(grey, config, detector)
        except ImageError as exc:
            add(path, 0, 1, None, None, str(exc))
            continue
        except cv2.error as exc:  # one odd image must not fail the task (and every rerun with it)
            add(path, 0, 1, None, None, f"face detection failed ({str(exc).strip()[:200]})")
            continue
        except Exception as exc:  # noqa: BLE001 - likewise for anything else: an error row
            add(path, 0, 1, None, None, f"could not process the image ({type(exc).__name__}: {exc})"[:300])
            continue
        if not faces:
            add(path, 0, 1, None, None, NO_FACE)
        for i, (face, crop) in enumerate(faces):
            add(path, i, len(faces), face, crop, "")
    out = {k: np.array(v, dtype=object if k in ("path", "error") else np.int32) for k, v in cols.items()}
    out["points"] = np.array(points, np.float32).reshape(-1, 1 + len(LANDMARK_COLUMNS))
    out["image"] = np.stack(images) if images else np.zeros((0, size, size), np.uint8)
    return out


# ---------------------------------------------------------------------------------------
# The model stage (plain callable class; Ray runs it as an actor pool)
# ---------------------------------------------------------------------------------------

def scored_table(rows: dict[str, np.ndarray], probs: np.ndarray) -> pa.Table:
    """``detect_batch``'s rows and their probabilities -> the output's ``SCHEMA`` (plus
    ``n_faces``): on a row with an ``error`` the face, box, emotion and probabilities are null."""
    void = np.array([bool(e) for e in rows["error"]], dtype=bool)
    cols = {"path": pa.array(rows["path"], pa.string())}
    for key in ("face", "x", "y", "w", "h"):
        cols[key] = pa.array(np.asarray(rows[key], np.int32), pa.int32(), mask=void)
    points = np.asarray(rows["points"], np.float32).reshape(len(void), 1 + len(LANDMARK_COLUMNS))
    for j, key in enumerate(("detector_score", *LANDMARK_COLUMNS)):
        cols[key] = pa.array(points[:, j], pa.float32(), mask=void | np.isnan(points[:, j]))
    cols["emotion"] = pa.array(np.array(EMOTIONS, dtype=object)[ranked_emotions(probs)[:, 0]], pa.string(),
                               mask=void)
    for j, name in enumerate(EMOTIONS):
        cols[name] = pa.array(probs[:, j], pa.float32(), mask=void)
    cols["error"] = pa.array(rows["error"], pa.string(), mask=~void)
    cols["n_faces"] = pa.array(np.asarray(rows["n_faces"], np.int32), pa.int32())
    return pa.table(cols)


class FaceScorer:
    """Probabilities for the face rows of a batch through ``Predictor``, as ``scored_table``.

    With ``detect`` it takes paths and runs ``detect_batch`` first, so that one process reads,
    decodes, detects and predicts: what each CPU does when scoring on CPUs (see ``plan_resources``).
    ``threads``, given in a Ray actor, pins its threads to the CPUs it was given (``pin_threads``).
    ``tta`` is the test-time augmentation of every prediction.
    """

    def __init__(self, artifact: str, device: str = "auto", batch_size: int = 256, threads: int | None = None,
                 detect: DetectConfig | None = None, tta: str = "none"):
        from fer_ray.inference.predictor import Predictor

        if threads:
            pin_threads(threads)
        self.predictor = Predictor(artifact, device=device, batch_size=batch_size)
        self.detect = detect
        self.tta = tta

    def __call__(self, batch: dict[str, np.ndarray]) -> pa.Table:
        if self.detect is not None:
            batch = detect_batch(batch, self.detect)
        ok = np.array([not e for e in batch["error"]], dtype=bool)
        probs = np.zeros((len(ok), len(EMOTIONS)), dtype=np.float32)
        if ok.any():
            probs[ok] = self.predictor.predict_proba(np.asarray(batch["image"])[ok], tta=self.tta)
        return scored_table(batch, probs)
