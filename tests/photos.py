"""Generated "photos" for scoring and serving tests: synthetic faces pasted on a larger
background, so the tests know exactly how many faces each image holds and where.

Not every synthetic face looks frontal enough for OpenCV's Haar cascade, so faces are
picked by running the detector on each one alone (seeded and deterministic); callers still
check the composed photo, so a detector change fails with a clear message, not a wrong row.
The drawn faces are found by the Haar cascade, not by CenterFace (trained on real faces): the
tests that score them name ``SYNTHETIC`` as their detector; tests/test_detect.py and the
real-face tests cover the default.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

from fer_ray.data.faces import HaarDetector
from fer_ray.data.synthetic import synthetic_faces

SYNTHETIC = "haar"  # the detector that finds these drawn faces


@functools.lru_cache(maxsize=8)
def detectable_faces(count: int, side: int = 192, seed: int = 0) -> tuple[np.ndarray, ...]:
    """``count`` synthetic faces of ``side`` px that the detector finds exactly once each."""
    detector = HaarDetector()
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


@functools.lru_cache(maxsize=2)
def fer_faces(fer_root: str, count: int) -> tuple[np.ndarray, ...]:
    """``count`` FER2013 test crops (48 px, in a fixed order) that the default detector finds
    confidently on their own when scaled to 160 px: real faces for the tests of the default
    detector, so a test checks placement and output, not whether a soft 48 px crop looks
    enough like a face."""
    import cv2

    from fer_ray.data.faces import make_detector

    detector, found = make_detector(), []
    for path in sorted(Path(fer_root, "test").rglob("*.jpg")):
        crop = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
        big = cv2.copyMakeBorder(cv2.resize(crop, (160, 160), interpolation=cv2.INTER_CUBIC), 80, 80, 80, 80,
                                 cv2.BORDER_REPLICATE)
        faces = detector.detect(big)
        if len(faces) == 1 and faces[0].score >= 0.8:
            found.append(crop)
        if len(found) == count:
            return tuple(found)
    raise RuntimeError("the default detector finds almost no FER2013 test crops; check fer_ray.data.centerface")


def fer_photo(fer_root: str) -> tuple[np.ndarray, list[tuple[int, int, int]]]:
    """640x480 with two real faces (160 and 120 px); returns the photo and each face's (x, y, side)."""
    import cv2

    spots = [(60, 80, 160), (400, 260, 120)]
    img = background(640, 480, seed=2)
    for crop, (x, y, side) in zip(fer_faces(fer_root, 2), spots):
        img[y : y + side, x : x + side] = cv2.resize(crop, (side, side), interpolation=cv2.INTER_CUBIC)
    return img, spots
