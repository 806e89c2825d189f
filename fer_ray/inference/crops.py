"""Photos -> face crops -> emotion probabilities: the plain per-file work of score, serve and predict.

``fer-ray score`` runs ``detect_batch`` (or ``detect_video``) and ``FaceScorer`` in its actors
(``blocks.BlockScorer``), ``serve``
calls ``crop_faces`` per request, ``predict`` for a few files; all three share these
functions, so a photo gives the same faces, the same pixels and the same probabilities
whichever way it arrives.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Iterator

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
# What ``fer-ray score`` writes: one row per face, or one per file (or video frame) without a
# usable face (its face, box, emotion and probabilities null, ``error`` saying why). ``frame``
# (the frame's index in its video), ``time`` (seconds) and ``track`` (a face followed across a
# video's frames, assigned when the output is assembled) are null for photos. ``detector_score``
# and the landmarks are null where the detector gives none (Haar, or faces "none").
SCHEMA = pa.schema(
    [("path", pa.string()), ("frame", pa.int32()), ("time", pa.float64()), ("face", pa.int32()),
     ("track", pa.int32()), ("x", pa.int32()), ("y", pa.int32()),
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


class Rows:
    """The rows of ``detect_batch`` and ``detect_video`` as they are found: one per face (with
    its crop), or one per file or frame without a usable face (``error`` saying why)."""

    KEYS = ("path", "frame", "face", "x", "y", "w", "h", "error")

    def __init__(self, image_size: int):
        self.size = image_size
        self.cols: dict[str, list] = {k: [] for k in self.KEYS}
        self.times: list[float] = []
        self.points: list[list[float]] = []  # detector score and 10 landmark coordinates; NaN where none
        self.images: list[np.ndarray] = []

    def __len__(self) -> int:
        return len(self.times)

    def add(self, path: str, face_index: int, face, crop, error: str, frame: int = -1, time: float = np.nan):
        for key, value in zip(("path", "frame", "face", "error"), (path, frame, face_index, error)):
            self.cols[key].append(value)
        for key in ("x", "y", "w", "h"):
            self.cols[key].append(getattr(face.box, key) if face is not None else 0)
        self.times.append(time)
        self.points.append(face_points(face))
        self.images.append(crop if crop is not None else np.zeros((self.size, self.size), np.uint8))

    def add_faces(self, path: str, pairs: list, frame: int = -1, time: float = np.nan) -> None:
        if not pairs:
            self.add(path, 0, None, None, NO_FACE, frame, time)
        for i, (face, crop) in enumerate(pairs):
            self.add(path, i, face, crop, "", frame, time)

    def take(self) -> dict[str, np.ndarray]:
        """The rows so far as columns (and a fresh start)."""
        out = {k: np.array(v, dtype=object if k in ("path", "error") else np.int32) for k, v in self.cols.items()}
        out["time"] = np.array(self.times, np.float64)
        out["points"] = np.array(self.points, np.float32).reshape(-1, 1 + len(LANDMARK_COLUMNS))
        out["image"] = np.stack(self.images) if self.images else np.zeros((0, self.size, self.size), np.uint8)
        self.__init__(self.size)
        return out


def _problem(exc: Exception) -> str:
    """An error row's reason for what went wrong with one image or video: one odd file must not
    fail the task (and every rerun with it)."""
    if isinstance(exc, ImageError):
        return str(exc)
    if isinstance(exc, cv2.error):
        return f"face detection failed ({str(exc).strip()[:200]})"
    return f"could not process the file ({type(exc).__name__}: {exc})"[:300]


def detect_batch(batch: dict[str, np.ndarray], config: DetectConfig) -> dict[str, np.ndarray]:
    """Image paths -> one row per face (crop resized to the artifact's image size), or one row
    per file that has no face or cannot be used (see ``Rows``).

    ``error`` is the reason on the rows of a file without a usable face, and empty on a face's
    row. Those rows' face, box and image are zeros that ``scored_table`` turns into nulls.
    ``path`` is what the rows carry; an optional ``file`` column (the name's raw bytes) is
    what is opened, for names that ``path`` shows escaped (see ``display_path``).
    """
    detector = config.make_detector()
    rows = Rows(config.image_size)
    for path, file in zip(batch["path"], batch.get("file", batch["path"])):
        try:
            grey = read_image(file if isinstance(file, bytes) else str(file), config.max_pixels)
            rows.add_faces(str(path), crop_faces(grey, config, detector))
        except Exception as exc:  # noqa: BLE001 - an error row, see _problem
            rows.add(str(path), 0, None, None, _problem(exc))
    return rows.take()


def detect_video(path: str, file: str | bytes, config: DetectConfig, fps: float, start: float = 0.0,
                 end: float = float("inf"), chunk: int = 256) -> Iterator[dict[str, np.ndarray]]:
    """The sampled frames of one video's [start, end) segment -> ``detect_batch``'s rows, with
    each frame's index and time: one per face, or one per frame without a face; chunks of at
    most ``chunk`` rows, so that a segment's crops never pile up. A video that cannot be decoded
    (from the start or part-way) gets one more row saying so, without a frame."""
    from fer_ray.data.video import sample_frames

    detector = config.make_detector()
    rows = Rows(config.image_size)
    try:
        for frame in sample_frames(file, fps, start, end, config.max_pixels):
            rows.add_faces(path, crop_faces(frame.grey, config, detector), frame.index, frame.time)
            if len(rows) >= chunk:
                yield rows.take()
    except Exception as exc:  # noqa: BLE001 - an error row, see _problem
        rows.add(path, 0, None, None, _problem(exc))
    if len(rows):
        yield rows.take()


# ---------------------------------------------------------------------------------------
# The model stage (plain callable class; Ray runs it as an actor pool)
# ---------------------------------------------------------------------------------------

def scored_table(rows: dict[str, np.ndarray], probs: np.ndarray) -> pa.Table:
    """``detect_batch``'s rows and their probabilities -> the output's ``SCHEMA``: on a row with
    an ``error`` the face, box, emotion and probabilities are null."""
    void = np.array([bool(e) for e in rows["error"]], dtype=bool)
    cols = {"path": pa.array(rows["path"], pa.string())}
    frame = np.asarray(rows["frame"], np.int32)
    cols["frame"] = pa.array(frame, pa.int32(), mask=frame < 0)
    cols["time"] = pa.array(np.asarray(rows["time"], np.float64), pa.float64(), from_pandas=True)  # NaN: null
    cols["face"] = pa.array(np.asarray(rows["face"], np.int32), pa.int32(), mask=void)
    cols["track"] = pa.nulls(len(void), pa.int32())
    for key in ("x", "y", "w", "h"):
        cols[key] = pa.array(np.asarray(rows[key], np.int32), pa.int32(), mask=void)
    points = np.asarray(rows["points"], np.float32).reshape(len(void), 1 + len(LANDMARK_COLUMNS))
    for j, key in enumerate(("detector_score", *LANDMARK_COLUMNS)):
        cols[key] = pa.array(points[:, j], pa.float32(), mask=void | np.isnan(points[:, j]))
    cols["emotion"] = pa.array(np.array(EMOTIONS, dtype=object)[ranked_emotions(probs)[:, 0]], pa.string(),
                               mask=void)
    for j, name in enumerate(EMOTIONS):
        cols[name] = pa.array(probs[:, j], pa.float32(), mask=void)
    cols["error"] = pa.array(rows["error"], pa.string(), mask=~void)
    return pa.table(cols, schema=SCHEMA)


class FaceScorer:
    """Probabilities for the face rows of ``detect_batch``'s (or ``detect_video``'s) rows through
    ``Predictor``, as ``scored_table``: the model stage of every ``BlockScorer``.

    ``threads``, given in a Ray actor, pins its threads to the CPUs it was given (``pin_threads``).
    ``tta`` is the test-time augmentation of every prediction.
    """

    def __init__(self, artifact: str, device: str = "auto", batch_size: int = 256, threads: int | None = None,
                 tta: str = "none"):
        from fer_ray.inference.predictor import Predictor

        if threads:
            pin_threads(threads)
        self.predictor = Predictor(artifact, device=device, batch_size=batch_size)
        self.tta = tta

    def __call__(self, rows: dict[str, np.ndarray]) -> pa.Table:
        ok = np.array([not e for e in rows["error"]], dtype=bool)
        probs = np.zeros((len(ok), len(EMOTIONS)), dtype=np.float32)
        if ok.any():
            probs[ok] = self.predictor.predict_proba(np.asarray(rows["image"])[ok], tta=self.tta)
        return scored_table(rows, probs)
