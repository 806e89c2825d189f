"""Which face is which across a video's sampled frames: a tracker that links boxes by their overlap.

The detector sees each frame alone; ``assign_tracks`` gives the same id to the boxes of one face
from one sampled frame to the next when they overlap enough (intersection over union), matched one
to one for the largest total overlap (the Hungarian method, scipy's ``linear_sum_assignment``). It
runs once over a whole video's face rows, so segments read on different workers need no stitching.

It sees boxes, not faces, and that is its limits:

- two faces that cross (or pass close) can swap ids;
- a face out of the picture, hidden or missed by the detector for more than ``max_gap`` sampled
  frames comes back with a new id;
- a face that moves by more than about half its width between two samples (fast motion, a low
  ``--fps``) no longer overlaps its last box and starts a new track;
- a track follows a box, never a person: it carries no appearance, so ids are only "the same face
  as a moment ago", never the same person across cuts or videos.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import groupby

import numpy as np
from scipy.optimize import linear_sum_assignment


def assign_tracks(frames: Sequence[int], boxes: Sequence[Sequence[float]], iou: float = 0.3,
                  max_gap: int = 2) -> list[int]:
    """A track id for each face row of one video, 0-based in order of first appearance.

    ``frames[i]``: the number of row i's sampled frame among the video's sampled frames (0, 1, 2,
    ... counting the frames where no face was found too), in time order; ``boxes[i]``: its box (x, y, width, height).
    A box continues the track whose last box it overlaps by at least ``iou``, among the tracks seen
    within the last ``max_gap + 1`` sampled frames; each track takes at most one box per frame.
    """
    if any(later < earlier for earlier, later in zip(frames, frames[1:])):
        raise ValueError("assign_tracks takes rows in time order")
    ids = [-1] * len(frames)
    last_frame: list[int] = []  # per track: the sampled frame it was last seen in
    last_box: list[Sequence[float]] = []  # ... and its box there
    for frame, group in groupby(range(len(frames)), key=frames.__getitem__):
        rows = list(group)
        live = [t for t, seen in enumerate(last_frame) if frame - seen <= max_gap + 1]
        if live:
            overlap = _iou(np.array([boxes[r] for r in rows], float), np.array([last_box[t] for t in live], float))
            for i, j in zip(*linear_sum_assignment(overlap, maximize=True)):
                if overlap[i, j] >= iou:
                    ids[rows[i]] = live[j]
        for r in rows:
            if ids[r] < 0:
                ids[r] = len(last_frame)
                last_frame.append(frame)
                last_box.append(boxes[r])
            last_frame[ids[r]], last_box[ids[r]] = frame, boxes[r]
    return ids


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Intersection over union of every box in ``a`` (N, 4) with every box in ``b`` (M, 4), (N, M)."""
    ax, ay, aw, ah = (a[:, None, k] for k in range(4))
    bx, by, bw, bh = (b[None, :, k] for k in range(4))
    inter = (np.clip(np.minimum(ax + aw, bx + bw) - np.maximum(ax, bx), 0, None)
             * np.clip(np.minimum(ay + ah, by + bh) - np.maximum(ay, by), 0, None))
    union = aw * ah + bw * bh - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def video_tracks(frames: Sequence[int | None], boxes: Sequence[Sequence[float] | None]) -> list[int | None]:
    """``assign_tracks`` over all the rows of one video in time order, as scoring and predict
    keep them: ``frames[i]`` row i's frame index (None on a row of the whole video, such as its
    error), ``boxes[i]`` its face's box, or None on a row without a face. Gaps are counted in
    sampled frames (those with a row, faces or not), whatever the video's frame rate. Returns a
    track id per row, None where there is no face."""
    samples = {frame: k for k, frame in enumerate(sorted({f for f in frames if f is not None}))}
    faces = [i for i, box in enumerate(boxes) if box is not None]
    tracks: list[int | None] = [None] * len(frames)
    for i, track in zip(faces, assign_tracks([samples[frames[i]] for i in faces], [boxes[i] for i in faces])):
        tracks[i] = track
    return tracks
