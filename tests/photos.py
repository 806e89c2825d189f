"""Generated "photos" for scoring and serving tests: synthetic faces pasted on a larger
background, so the tests know exactly how many faces each image holds and where.

Not every synthetic face looks frontal enough for OpenCV's Haar cascade, so faces are
picked by running the detector on each one alone (seeded and deterministic); callers still
check the composed photo, so a detector change fails with a clear message, not a wrong row.
"""

from __future__ import annotations

import functools

import numpy as np

from fer_ray.data.faces import FaceDetector
from fer_ray.data.synthetic import synthetic_faces


@functools.lru_cache(maxsize=8)
def detectable_faces(count: int, side: int = 192, seed: int = 0) -> tuple[np.ndarray, ...]:
    """``count`` synthetic faces of ``side`` px that the detector finds exactly once each."""
    detector = FaceDetector()
    found, start = [], 0
    while len(found) < count:
        faces = synthetic_faces(np.arange(start, start + 14) % 7, size=side, seed=seed, start=start)
        found += [f for f in faces if len(detector.detect(f)) == 1]
        start += 14
        if start > 700:
            raise RuntimeError("the face detector finds almost no synthetic faces; check fer_ray.data.faces")
    return tuple(found[:count])


def background(width: int, height: int, seed: int = 0) -> np.ndarray:
    """A soft grey gradient with sensor-like noise and no face in it."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    base = 90 + 60 * xx / width + 30 * yy / height
    return np.clip(base + rng.normal(0, 6, base.shape), 0, 255).astype(np.uint8)


def photo(faces: list[np.ndarray], at: list[tuple[int, int]], width: int = 640, height: int = 480,
          seed: int = 0) -> np.ndarray:
    """A grey photo with ``faces[i]`` pasted with its top-left corner at ``at[i]`` = (x, y)."""
    img = background(width, height, seed)
    for face, (x, y) in zip(faces, at):
        img[y : y + face.shape[0], x : x + face.shape[1]] = face
    return img


def two_face_photo() -> tuple[np.ndarray, list[tuple[int, int, int]]]:
    """640x480 with two faces; returns the photo and each face's (x, y, side)."""
    a, b = detectable_faces(2)
    spots = [(40, 60), (400, 220)]
    return photo([a, b], spots), [(x, y, a.shape[0]) for x, y in spots]


def one_face_photo() -> np.ndarray:
    (face,) = detectable_faces(1)
    return photo([face], [(100, 50)], width=400, height=300, seed=1)
