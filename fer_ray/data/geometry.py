"""What a face detector answers: a box, and for detectors that give them a score and five
landmarks. Its own module so that the detectors (``faces``, ``centerface``) and the cropping
(``align``) share it without importing one another."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Box:
    """A face box in the original image's pixel coordinates."""

    x: int
    y: int
    w: int
    h: int

    @property
    def area(self) -> int:
        return self.w * self.h


# The five landmarks, in CenterFace's order. "right"/"left" are the PERSON's: for a face looking
# at the camera the person's right eye is on the image's left.
LANDMARKS = ("right_eye", "left_eye", "nose", "mouth_right", "mouth_left")


@dataclass(frozen=True)
class Face:
    """One detected face, in the original image's pixels.

    ``score``: the detector's confidence (None for the Haar cascade, which has none).
    ``landmarks``: five (x, y) points in the order of ``LANDMARKS``, or None (Haar).
    """

    box: Box
    score: float | None = None
    landmarks: tuple[tuple[float, float], ...] | None = None

    @property
    def right_eye(self) -> tuple[float, float]:
        """The person's right eye: on the image's left for a face looking at the camera."""
        return self.landmarks[0]

    @property
    def left_eye(self) -> tuple[float, float]:
        return self.landmarks[1]
