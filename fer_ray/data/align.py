"""Level a detected face and crop it framed like the faces the model was trained on.

A classifier trained on FER2013 sees faces at one scale and place: eyes at a certain height,
a certain distance apart. A photo's face cropped from a detector's box is framed differently
(CenterFace's box includes forehead and chin, FER2013's crops cut into both), and a tilted
head puts the features where the classifier never saw them. So the crop is built from the
eye landmarks: rotate the face about the eye midpoint until the eyes are level, then cut the
square that puts the eye midpoint and the inter-ocular distance where ``FER_FRAMING`` says
(measured: see there).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from fer_ray.data.geometry import Face


@dataclass(frozen=True)
class Framing:
    """Where a crop puts the face, each a fraction of the crop's side.

    ``eye_x``, ``eye_y``: the eye midpoint from the crop's left and top. ``eye_distance``:
    the distance between the two eyes. ``box_width``: the width of CenterFace's box, which
    sets the crop's side instead when the eyes alone would make it tighter (a head turned
    sideways brings its eyes closer together in the image, not its face smaller).
    """

    eye_x: float
    eye_y: float
    eye_distance: float
    box_width: float

    def widened(self, margin: float) -> "Framing":
        """The same framing with ``margin`` of the crop's side added on each side (``--margin``)."""
        grow = 1 + 2 * margin
        return Framing(eye_x=(self.eye_x + margin) / grow, eye_y=(self.eye_y + margin) / grow,
                       eye_distance=self.eye_distance / grow, box_width=self.box_width / grow)


# Two measurements. Where FER2013's own crops put the eyes: CenterFace on 2,000 Training crops
# (each upscaled 4x and padded), medians over the 311 with a face scoring >= 0.8
# (``benchmarks/measure_centerface.py framing``): eye midpoint x 0.497 and y 0.415, eye distance
# 0.303, box width 0.677 of the crop's side. And which framing the model reads best in photos:
# the shipped model on the 333 faces CenterFace finds in bench_photos.py's photos of seed 1 (not
# the seed reported in RESULTS.md), levelled and cut at eye distances 0.30-0.46 and eye heights
# 0.40-0.48 (``measure_centerface.py crops``): 0.38 and 0.40 read best, 65.8% against 59-61% at
# FER2013's own eye distance (0.30), 60.4% for the box's square and 64.9% for an oracle that
# knows where each face was pasted. The crop is tighter than FER2013's: in a photo the face's
# surroundings are not the ones FER2013's crops have around their faces. The eyes are centred
# (they are level), and the box sets the side instead only when a face turned sideways brings
# its eyes closer together, at the box-to-eyes ratio of FER2013's crops (0.677 / 0.303).
FER_FRAMING = Framing(eye_x=0.5, eye_y=0.40, eye_distance=0.38, box_width=0.38 * 0.677 / 0.303)


def eye_angle(face: Face) -> float:
    """Degrees the eye line is tilted from horizontal.

    Positive when the eye on the image's right (the person's left eye) is lower than the
    other, i.e. the head is tilted clockwise as seen on screen; rotating the image
    counter-clockwise by this angle levels the eyes.
    """
    (rx, ry), (lx, ly) = face.right_eye, face.left_eye
    return math.degrees(math.atan2(ly - ry, lx - rx))


def aligned_crop(grey: np.ndarray, face: Face, size: int | None = None, framing: Framing = FER_FRAMING) -> np.ndarray:
    """The face of ``grey`` rotated upright and cropped square as ``framing`` says, ``size`` px
    (None: at the photo's own resolution, for the caller to resize as every crop is resized).

    The rotation and the crop are one affine warp at the photo's own resolution (parts outside
    the photo repeat its edge pixels), then the square is resized to ``size``: shrinking with
    ``INTER_AREA`` after the warp avoids the aliasing a warp straight to 48 px would give.
    """
    (rx, ry), (lx, ly) = face.right_eye, face.left_eye
    mid_x, mid_y = (rx + lx) / 2, (ry + ly) / 2
    side = max(
        math.hypot(lx - rx, ly - ry) / framing.eye_distance,
        face.box.w / framing.box_width,
        1.0,
    )
    side_px = max(1, round(side))
    # getRotationMatrix2D turns counter-clockwise for a positive angle, about the eye midpoint,
    # which it leaves in place; the translation then moves the midpoint to its framed spot.
    warp = cv2.getRotationMatrix2D((mid_x, mid_y), eye_angle(face), 1.0)
    warp[:, 2] += (framing.eye_x * side_px - mid_x, framing.eye_y * side_px - mid_y)
    square = cv2.warpAffine(grey, warp, (side_px, side_px), flags=cv2.INTER_LINEAR,
                            borderMode=cv2.BORDER_REPLICATE)
    if size is None or size == side_px:
        return square
    shrinking = side_px > size
    return cv2.resize(square, (size, size), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)
