"""Seeded synthetic grey faces whose expression shows in mouth, brows and eyes.

The demo and the tests need data that exists everywhere, is labelled, and is learnable by a
small CNN on two CPUs in minutes, yet is not trivial: each face has random position, size,
rotation, skin tone, lighting gradient, background and sensor noise, and every expression
parameter is jittered so neighbouring expressions (fear/surprise, angry/disgust, sad/neutral)
overlap a little. Faces are drawn at 4x resolution and downsampled, so edges are antialiased
like a real camera crop.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from fer_ray.emotions import EMOTIONS

GENERATOR_VERSION = 2
_SUPER = 4  # supersampling factor
# Difficulty: how much pose, framing and expression vary. Tuned so that a linear model on
# pixels is far from perfect (faces move and turn) while a small CNN still learns >= 90%.
SHAPE_JITTER = 0.02  # std of each expression parameter, face-width units
SHIFT = (0.10, 0.08)  # max face-centre offset (x, y), fraction of the image
HALF_WIDTH = (0.28, 0.44)  # face ellipse half-width range, fraction of the image
ROTATE_DEG = 20.0

# Per-expression shape parameters (face-relative units); each is jittered per sample.
#   brow_raise: + is higher; brow_tilt: + lifts the inner ends; eye_open: eye height;
#   mouth_curve: + smiles; mouth_open: opening height; mouth_width: half-width.
_SHAPES = {
    "angry":    dict(brow_raise=-0.05, brow_tilt=-0.10, eye_open=0.055, mouth_curve=-0.01, mouth_open=0.00, mouth_width=0.16),
    "disgust":  dict(brow_raise=-0.03, brow_tilt=-0.03, eye_open=0.035, mouth_curve=-0.04, mouth_open=0.03, mouth_width=0.20),
    "fear":     dict(brow_raise=0.06, brow_tilt=0.08, eye_open=0.100, mouth_curve=-0.02, mouth_open=0.07, mouth_width=0.25),
    "happy":    dict(brow_raise=0.01, brow_tilt=0.00, eye_open=0.045, mouth_curve=0.10, mouth_open=0.02, mouth_width=0.26),
    "sad":      dict(brow_raise=0.00, brow_tilt=0.09, eye_open=0.050, mouth_curve=-0.09, mouth_open=0.00, mouth_width=0.20),
    "surprise": dict(brow_raise=0.10, brow_tilt=0.00, eye_open=0.110, mouth_curve=0.00, mouth_open=0.17, mouth_width=0.12),
    "neutral":  dict(brow_raise=0.00, brow_tilt=0.00, eye_open=0.060, mouth_curve=0.00, mouth_open=0.00, mouth_width=0.20),
}


def synthetic_faces(
    labels: np.ndarray, size: int = 48, seed: int = 0, start: int = 0
) -> np.ndarray:
    """Render one face per label. Face ``i`` depends only on (seed, start + i, label).

    Returns uint8 (N, size, size). Rendering is deterministic, so any chunk of a dataset can
    be produced by any worker and the whole catalog is reproducible from its seed.
    """
    out = np.empty((len(labels), size, size), dtype=np.uint8)
    for i, label in enumerate(labels):
        rng = np.random.default_rng([seed, start + i])
        out[i] = _render(int(label), size, rng)
    return out


def balanced_labels(count: int, seed: int = 0) -> np.ndarray:
    """``count`` labels cycling through the 7 emotions, shuffled with ``seed``."""
    labels = np.arange(count) % len(EMOTIONS)
    np.random.default_rng(seed).shuffle(labels)
    return labels.astype(np.int64)


def _render(label: int, size: int, rng: np.random.Generator) -> np.ndarray:
    s = size * _SUPER
    shape = {k: v + rng.normal(0, SHAPE_JITTER) for k, v in _SHAPES[EMOTIONS[label]].items()}

    # Background: a random-direction gradient.
    yy, xx = np.mgrid[0:s, 0:s] / s
    angle = rng.uniform(0, 2 * math.pi)
    bg = rng.uniform(30, 200) + rng.uniform(-40, 40) * (np.cos(angle) * xx + np.sin(angle) * yy)
    img = Image.fromarray(np.clip(bg, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(img)

    # Face geometry in supersampled pixels.
    fw = s * rng.uniform(*HALF_WIDTH)  # half-width of the face ellipse
    fh = fw * rng.uniform(1.22, 1.35)
    cx = s / 2 + rng.uniform(-SHIFT[0], SHIFT[0]) * s
    cy = s / 2 + rng.uniform(-SHIFT[1], SHIFT[1]) * s
    skin = rng.uniform(120, 225)
    draw.ellipse([cx - fw, cy - fh, cx + fw, cy + fh], fill=int(skin))

    feature = int(max(0, skin - rng.uniform(85, 120)))  # eyes, brows, mouth are darker
    unit = 2 * fw  # features are placed in face-width units
    eye_dx, eye_y = 0.21 * unit, cy - 0.12 * unit
    line = max(2, int(0.035 * unit))

    # Eyes: ellipses whose height carries the expression.
    eye_w = 0.075 * unit
    eye_h = max(0.012, shape["eye_open"]) * unit
    for side in (-1, 1):
        ex = cx + side * eye_dx
        draw.ellipse([ex - eye_w, eye_y - eye_h / 2, ex + eye_w, eye_y + eye_h / 2], fill=feature)

    # Brows: straight segments; tilt lifts or lowers the inner end.
    brow_y = eye_y - (0.12 + shape["brow_raise"]) * unit
    for side in (-1, 1):
        inner = (cx + side * 0.07 * unit, brow_y - shape["brow_tilt"] * unit)
        outer = (cx + side * 0.32 * unit, brow_y + shape["brow_tilt"] * 0.3 * unit)
        draw.line([inner, outer], fill=feature, width=line + 1)

    # Nose: a short shadow; disgust adds wrinkle lines beside it.
    nose_top, nose_bottom = eye_y + 0.08 * unit, eye_y + 0.28 * unit
    draw.line([(cx, nose_top), (cx + 0.03 * unit, nose_bottom)], fill=int(skin * 0.75), width=line)
    if EMOTIONS[label] == "disgust":
        for side in (-1, 1):
            x0 = cx + side * 0.07 * unit
            draw.line([(x0, nose_top + 0.05 * unit), (x0 + side * 0.05 * unit, nose_top + 0.12 * unit)],
                      fill=int(skin * 0.7), width=line)

    # Mouth: a parabola (curve) plus an optional dark opening.
    mouth_y = cy + 0.40 * unit
    half = shape["mouth_width"] * unit
    curve = shape["mouth_curve"] * unit
    lift = 0.04 * unit if EMOTIONS[label] == "disgust" else 0.0  # one-sided sneer
    points = [(cx + t * half, mouth_y - curve * (t * t) + curve * 0.5 - lift * max(0.0, t))
              for t in np.linspace(-1, 1, 17)]
    opening = shape["mouth_open"] * unit
    if opening > 0.02 * unit:
        draw.ellipse([cx - half * 0.8, mouth_y - opening / 2, cx + half * 0.8, mouth_y + opening / 2],
                     fill=max(0, feature - 20))
    draw.line(points, fill=feature, width=line, joint="curve")

    # Pose, lighting and camera: rotate, shade across the face, blur, downsample, add noise.
    img = img.rotate(rng.uniform(-ROTATE_DEG, ROTATE_DEG), resample=Image.Resampling.BICUBIC, center=(cx, cy),
                     fillcolor=int(np.clip(bg.mean(), 0, 255)))
    shade_angle = rng.uniform(0, 2 * math.pi)
    shade = 1 + rng.uniform(0, 0.35) * (np.cos(shade_angle) * (xx - 0.5) + np.sin(shade_angle) * (yy - 0.5))
    arr = np.asarray(img, dtype=np.float64) * shade
    img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).filter(
        ImageFilter.GaussianBlur(rng.uniform(0.5, 2.0))
    )
    small = np.asarray(img.resize((size, size), Image.Resampling.BOX), dtype=np.float64)
    small += rng.normal(0, rng.uniform(2, 8), small.shape)
    return np.clip(np.round(small), 0, 255).astype(np.uint8)
