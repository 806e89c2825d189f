"""CenterFace detection (fer_ray.data.centerface) and FER-style alignment (fer_ray.data.align).

The photos are composed from real FER2013 test crops pasted on a noisy gradient at known
places and sizes (tests/photos.py's synthetic faces are drawn shapes CenterFace rarely takes
for faces), so these tests skip, with a reason, where shared/data/fer2013 is absent.
"""

from __future__ import annotations

import hashlib
import math
import socket

import cv2
import numpy as np
import pytest

from fer_ray.data import centerface
from fer_ray.data.align import FER_FRAMING, aligned_crop, eye_angle
from fer_ray.data.centerface import CenterFaceDetector
from fer_ray.data.geometry import Box, Face
from fer_ray.errors import FerRayError
import photos
from photos import background


@pytest.fixture(scope="module")
def detector() -> CenterFaceDetector:
    return CenterFaceDetector()


@pytest.fixture(scope="module")
def fer_faces(fer_folders) -> tuple[np.ndarray, ...]:
    """Six FER2013 test crops (48 px) that CenterFace finds confidently on their own."""
    return photos.fer_faces(str(fer_folders), 6)


def _resized(crop: np.ndarray, side: int) -> np.ndarray:
    return cv2.resize(crop, (side, side), interpolation=cv2.INTER_CUBIC)


def _padded(img: np.ndarray, pad: int) -> np.ndarray:
    return cv2.copyMakeBorder(img, pad, pad, pad, pad, cv2.BORDER_REPLICATE)


def _paste(photo: np.ndarray, crop: np.ndarray, x: int, y: int, side: int) -> None:
    photo[y : y + side, x : x + side] = _resized(crop, side)


def _matching(faces: list[Face], x: float, y: float, side: float) -> Face:
    """The one detection whose box centre lies within a quarter side of the pasted face's."""
    near = [f for f in faces
            if abs(f.box.x + f.box.w / 2 - (x + side / 2)) < side / 4
            and abs(f.box.y + f.box.h / 2 - (y + side / 2)) < side / 4]
    assert len(near) == 1, f"{len(near)} detections at the face pasted at {(x, y, side)}: {faces}"
    return near[0]


def _rotated(img: np.ndarray, centre: tuple[float, float], degrees: float) -> np.ndarray:
    """``img`` turned counter-clockwise on screen by ``degrees`` about ``centre``."""
    turn = cv2.getRotationMatrix2D(centre, degrees, 1.0)
    return cv2.warpAffine(img, turn, img.shape[::-1], flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def _correlation(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.astype(float).ravel(), b.astype(float).ravel())[0, 1])


def test_weights_load_offline_from_the_installed_package(monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("the detector tried to open a network connection")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    path = centerface.model_path()
    assert path.endswith("fer_ray/data/weights/centerface.onnx")
    with open(path, "rb") as f:
        assert hashlib.sha256(f.read()).hexdigest() == centerface.MODEL_SHA256
    assert CenterFaceDetector().detect(np.zeros((64, 64), np.uint8)) == []


def test_changed_weights_are_refused(tmp_path):
    other = tmp_path / "centerface.onnx"
    other.write_bytes(b"not the model")
    with pytest.raises(FerRayError, match="not the CenterFace model"):
        centerface.read_model(str(other))


def test_finds_faces_pasted_at_known_places_and_sizes(detector, fer_faces):
    photo = background(1024, 768, seed=3)
    spots = [(40, 40, 64), (300, 60, 96), (620, 40, 128), (60, 420, 200), (420, 470, 150), (760, 380, 180)]
    for crop, (x, y, side) in zip(fer_faces, spots):
        _paste(photo, crop, x, y, side)

    faces = detector.detect(photo)

    assert len(faces) == len(spots)
    assert [f.box.area for f in faces] == sorted((f.box.area for f in faces), reverse=True)
    for x, y, side in spots:
        face = _matching(faces, x, y, side)
        assert 0.4 * side < face.box.w < 1.2 * side  # a face box: FER2013's crops reach beyond the face
        assert face.score >= detector.threshold
        for px, py in face.landmarks:
            assert face.box.x <= px <= face.box.x + face.box.w and face.box.y <= py <= face.box.y + face.box.h
        # The person's right eye is on the image's left; the eyes sit above the mouth corners.
        assert face.right_eye[0] < face.left_eye[0]
        assert max(face.right_eye[1], face.left_eye[1]) < min(face.landmarks[3][1], face.landmarks[4][1])


def test_landmarks_are_in_the_original_photos_pixels_when_it_is_shrunk(detector, fer_faces):
    """A 2000x1500 photo is detected at 640 px (a third of its size); the face's landmarks must
    still land where detecting the same face at full size puts them."""
    side, x, y = 400, 1300, 700
    photo = background(2000, 1500, seed=4)
    _paste(photo, fer_faces[0], x, y, side)
    alone = detector.detect(_padded(_resized(fer_faces[0], side), 200))[0]

    face = _matching(detector.detect(photo), x, y, side)

    expected = np.array(alone.landmarks) + (x - 200, y - 200)
    assert np.abs(np.array(face.landmarks) - expected).max() < 0.05 * side


def _dots(side: int, points: list[tuple[float, float]]) -> np.ndarray:
    """A grey square with a white dot at each point: features whose place is known exactly."""
    img = np.full((side, side), 40, np.uint8)
    for x, y in points:
        cv2.circle(img, (round(x), round(y)), 3, 255, -1)
    return img


def _centroid(img: np.ndarray, x0: int, x1: int) -> tuple[float, float]:
    """The bright pixels' centre of mass within columns x0..x1."""
    ys, xs = np.nonzero(img[:, x0:x1] > 150)
    return float(xs.mean() + x0), float(ys.mean())


def test_aligned_crop_levels_the_eyes_and_puts_them_where_the_framing_says():
    """Known geometry: two dots as eyes, turned 25 degrees counter-clockwise on screen about a
    point off their middle; the landmarks say where they went. The crop puts them level, at
    FER_FRAMING's eye height, their midpoint at its eye_x, as far apart as eye_distance says."""
    eyes = [(170.0, 200.0), (250.0, 200.0)]  # the person's right eye on the image's left
    turn = cv2.getRotationMatrix2D((230.0, 260.0), 25.0, 1.0)
    moved = [tuple(turn @ (x, y, 1.0)) for x, y in eyes]
    photo = cv2.warpAffine(_dots(400, eyes), turn, (400, 400), flags=cv2.INTER_LINEAR)
    face = Face(Box(150, 150, 120, 150), 0.9, (moved[0], moved[1], (0, 0), (0, 0), (0, 0)))

    assert eye_angle(face) == pytest.approx(-25.0, abs=1e-6)
    crop = aligned_crop(photo, face, 192)

    side = 192
    (rx, ry), (lx, ly) = _centroid(crop, 0, side // 2), _centroid(crop, side // 2, side)
    assert abs(ry - ly) < 1.5  # level
    assert (rx + lx) / 2 == pytest.approx(FER_FRAMING.eye_x * side, abs=1.5)
    assert (ry + ly) / 2 == pytest.approx(FER_FRAMING.eye_y * side, abs=1.5)
    assert lx - rx == pytest.approx(FER_FRAMING.eye_distance * side, abs=2.0)
    wide = aligned_crop(photo, face, 192, FER_FRAMING.widened(0.25))  # --margin 0.25: 1.5x the side
    (rx2, _), (lx2, _) = _centroid(wide, 0, side // 2), _centroid(wide, side // 2, side)
    assert lx2 - rx2 == pytest.approx((lx - rx) / 1.5, abs=2.0)


def test_a_tilted_face_is_measured_and_comes_back_upright(detector, fer_faces):
    """Real faces turned 20 degrees counter-clockwise (on screen): the eye on the image's right
    rises, so eye_angle drops. CenterFace's landmarks lean towards an upright face (it measures
    about 15 of the 20 degrees on these soft upscaled crops, less on a face already tilted), so
    the levelled crop keeps a few degrees, far fewer than the 20 it had."""
    side, pad = 160, 120
    turned, residual = [], []
    for crop in fer_faces:
        upright = _padded(_resized(crop, side), pad)
        tilted = _rotated(upright, (pad + side / 2, pad + side / 2), 20.0)
        before, after = detector.detect(upright)[0], detector.detect(tilted)[0]
        turned.append(eye_angle(after) - eye_angle(before))
        levelled = aligned_crop(tilted, after, 96)
        (again,) = detector.detect(_padded(levelled, 48))
        residual.append(abs(eye_angle(again)))
    assert -24.0 < np.median(turned) < -12.0, turned
    assert np.median(residual) < 8.0, residual


def test_eye_angle_sign():
    def face(right_eye, left_eye):
        return Face(box=Box(0, 0, 100, 100), score=1.0,
                    landmarks=(right_eye, left_eye, (50, 60), (35, 75), (65, 75)))

    assert eye_angle(face((30, 40), (70, 40))) == 0.0
    assert eye_angle(face((30, 40), (70, 80))) == pytest.approx(45.0)  # image-right eye lower
    assert eye_angle(face((30, 40), (70, 40 - 40 * math.tan(math.radians(20))))) == pytest.approx(-20.0)


def test_blank_and_noise_images_have_no_faces(detector):
    assert detector.detect(np.full((480, 640), 128, np.uint8)) == []
    assert detector.detect(background(1024, 768, seed=5)) == []


def test_small_faces_mode_finds_the_same_faces_in_the_same_pixels(fer_faces):
    photo = background(1024, 768, seed=6)
    _paste(photo, fer_faces[2], 500, 300, 120)
    plain = CenterFaceDetector().detect(photo)
    upscaled = CenterFaceDetector(upscale=2.0).detect(photo)
    assert len(plain) == len(upscaled) == 1
    assert np.abs(np.array(plain[0].landmarks) - np.array(upscaled[0].landmarks)).max() < 6


def test_detection_is_deterministic(detector, fer_faces):
    photo = background(800, 600, seed=7)
    _paste(photo, fer_faces[3], 100, 100, 150)
    _paste(photo, fer_faces[4], 450, 250, 110)
    assert detector.detect(photo) == detector.detect(photo.copy()) == CenterFaceDetector().detect(photo)


def test_bad_settings_and_images_are_refused(detector):
    with pytest.raises(FerRayError, match="upscale"):
        CenterFaceDetector(upscale=0.5)
    with pytest.raises(ValueError, match="grey uint8"):
        detector.detect(np.zeros((48, 48, 3), np.uint8))
