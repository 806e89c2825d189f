"""Face detection and cropping for ordinary photos: which detector, and how a face is cropped.

Two detectors answer the same ``Face`` records. The default, CenterFace (``centerface``), is a
CNN that finds small and turned faces and gives five landmarks, from which each face is levelled
and framed as FER2013's crops are framed (``align``). OpenCV's frontal-face Haar cascade
(``haar``, the default before it; its model file ships inside the opencv-python-headless wheel)
stays available for one release: it finds none of the faces under about 48 px and few turned
ones (benchmarks/RESULTS.md, "Faces in photos"), and OpenCV 5 no longer has it. Photos are
detected at a bounded resolution (large photos are shrunk for detection, boxes mapped back),
which keeps a 12 MP photo as cheap as a small one. Nothing is downloaded at run time.
"""

from __future__ import annotations

import os

import cv2
import numpy as np

from fer_ray.data.align import FER_FRAMING, aligned_crop
from fer_ray.data.centerface import SMALL_FACES_UPSCALE, CenterFaceDetector
from fer_ray.data.geometry import Box, Face
from fer_ray.errors import FerRayError

FACE_MODES = ("all", "largest", "none")
DETECTORS = ("centerface", "haar")
DEFAULT_DETECTOR = "centerface"
# Haar's box is enlarged by this fraction of its side on each side before cropping; CenterFace's
# crop is framed from the eyes (align.FER_FRAMING) and a margin widens that framing instead.
MARGINS = {"centerface": 0.0, "haar": 0.2}
_CASCADE = "haarcascade_frontalface_default.xml"


# Chosen with benchmarks/bench_detect.py on 200 labelled photos (benchmarks/RESULTS.md): detecting
# on a copy shrunk to 480 px without equalizeHist finds more of the pasted faces than 640 px with
# it (recall 0.716 vs 0.682 with real FER2013 faces, 0.761 vs 0.747 with synthetic ones, the same
# precision) at a quarter of the cost. 480 is the smallest side at which the cascade's 24 px
# window still reaches the smallest face kept (8% of a 4:3 photo's shorter side).
DETECT_SIDE = 480
MIN_FACE_FRACTION = 0.08


class HaarDetector:
    """Detect frontal faces in a grey uint8 image with OpenCV's Haar cascade.

    ``detect_side`` bounds the longer side used for detection; ``min_face_fraction`` is the
    smallest face kept, as a fraction of the shorter side of the image; ``equalize`` spreads
    the image's grey levels (``cv2.equalizeHist``) before detection. ``benchmarks/bench_detect.py``
    measures what each setting costs and finds.
    """

    def __init__(
        self,
        detect_side: int = DETECT_SIDE,
        min_face_fraction: float = MIN_FACE_FRACTION,
        scale_factor: float = 1.1,
        min_neighbors: int = 5,
        equalize: bool = False,
    ):
        path = os.path.join(cv2.data.haarcascades, _CASCADE)
        self._cascade = cv2.CascadeClassifier(path)
        if self._cascade.empty():
            raise RuntimeError(f"OpenCV face cascade missing or unreadable: {path}")
        self.detect_side = detect_side
        self.min_face_fraction = min_face_fraction
        self.scale_factor = scale_factor
        self.min_neighbors = min_neighbors
        self.equalize = equalize

    def detect(self, grey: np.ndarray) -> list[Face]:
        """Faces (boxes only: no score, no landmarks), largest first."""
        h, w = grey.shape
        scale = min(1.0, self.detect_side / max(h, w))
        small = grey if scale == 1.0 else cv2.resize(
            grey, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA
        )
        min_side = max(12, int(min(small.shape) * self.min_face_fraction))
        found = self._cascade.detectMultiScale(
            cv2.equalizeHist(small) if self.equalize else small,
            scaleFactor=self.scale_factor,
            minNeighbors=self.min_neighbors,
            minSize=(min_side, min_side),
        )
        faces = [
            Face(Box(int(round(x / scale)), int(round(y / scale)), int(round(bw / scale)), int(round(bh / scale))))
            for (x, y, bw, bh) in (found if len(found) else [])
        ]
        return sorted(faces, key=lambda f: f.box.area, reverse=True)


def make_detector(kind: str = DEFAULT_DETECTOR, small_faces: bool = False):
    """The detector ``predict``, ``score`` and ``serve`` use for ``--detector``/``--small-faces``.

    ``small_faces`` (CenterFace only) detects on a copy enlarged twice as much, which finds faces
    half as small at about four times the cost (benchmarks/RESULTS.md, "Faces in photos").
    """
    if kind == "haar":
        if small_faces:
            raise FerRayError("--small-faces needs --detector centerface (the Haar cascade has no such mode)")
        return HaarDetector()
    if kind != "centerface":
        raise FerRayError(f"unknown face detector {kind!r}; expected one of {', '.join(DETECTORS)}")
    return CenterFaceDetector(upscale=SMALL_FACES_UPSCALE if small_faces else 1.0)


def crop_square(grey: np.ndarray, box: Box, margin: float) -> np.ndarray:
    """Square crop around a box, enlarged by ``margin`` on each side.

    Parts of the square that fall outside the image are filled by repeating the edge pixels,
    so a face at the border keeps its position in the crop instead of being shifted.
    """
    side = int(round(max(box.w, box.h) * (1 + 2 * margin)))
    cx, cy = box.x + box.w / 2, box.y + box.h / 2
    left, top = int(round(cx - side / 2)), int(round(cy - side / 2))
    h, w = grey.shape
    pad = max(0, -left, -top, left + side - w, top + side - h)
    if pad:
        grey = np.pad(grey, pad, mode="edge")
        left, top = left + pad, top + pad
    return grey[top : top + side, left : left + side]


def face_crop(grey: np.ndarray, face: Face, margin: float | None = None) -> np.ndarray:
    """The face's crop: levelled and framed from its landmarks like FER2013's crops where the
    detector gives them (``align``), else the box's square. ``margin`` None is the detector's own
    (``MARGINS``)."""
    if face.landmarks is None:
        return crop_square(grey, face.box, MARGINS["haar"] if margin is None else margin)
    widen = MARGINS["centerface"] if margin is None else margin
    return aligned_crop(grey, face, framing=FER_FRAMING.widened(widen))


def find_faces(
    grey: np.ndarray, mode: str, detector, margin: float | None = None
) -> list[tuple[Face, np.ndarray]]:
    """Faces of one image as (face, crop) pairs according to ``mode``; the crop at the photo's
    own resolution (``face_crop``).

    ``none``: the image is already a face crop, returned whole. ``largest``: at most one.
    ``all``: every detected face. An empty list means no face was found.
    """
    if mode not in FACE_MODES:
        raise FerRayError(f"unknown face mode {mode!r}; expected one of {FACE_MODES}")
    if mode == "none":
        h, w = grey.shape
        return [(Face(Box(0, 0, w, h)), grey)]
    if detector is None:
        raise FerRayError(f"face mode {mode!r} needs a face detector")
    faces = detector.detect(grey)
    if mode == "largest":
        faces = faces[:1]
    return [(face, face_crop(grey, face, margin)) for face in faces]
