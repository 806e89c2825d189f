"""Face detection: recall, precision and time per photo of detector settings, on composed
photos whose face boxes are known.

    .venv/bin/python benchmarks/bench_detect.py [--photos 200] [--faces synthetic|fer2013]
        [--sides 640,480,320] [--equalize both|on|off] [--iou 0.5] [--repeat 3]

The photos are ``bench_score.py``'s (``compose_photos``: 640x480 grey, 0-3 faces of 160-200 px
pasted side by side on a noisy gradient, seed 0), so ``--photos 200`` is the set ``bench_score
--photos 200`` scores. ``--faces fer2013`` pastes FER2013 test crops (48 px, upscaled) at the
same places instead of synthetic faces: real faces, blurred by the upscaling.

Each variant is one ``HaarDetector`` (fer-ray's, as ``fer-ray score`` and ``fer-ray serve`` use
it) with another ``detect_side`` (the longer side the photo is shrunk to before detection,
boxes mapped back to the photo) or ``equalize`` (``cv2.equalizeHist`` before the cascade or
not); the first row is fer-ray's default (HaarDetector()'s settings). A detected box matches a
pasted face when their intersection over union is at least ``--iou``, one to one, best
overlaps first: recall = matched / pasted faces, precision = matched / detected boxes.
Time is ``HaarDetector.detect`` alone on the decoded grey photo (no decoding, no cropping),
OpenCV on one thread as in score's detection tasks, the best of ``--repeat`` passes.

Prints one row per variant, then last each variant's speed and recall against the default.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # bench_score, beside this file
from bench_score import compose_photos  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_FER = ROOT.parent / "shared" / "data" / "fer2013"


def fer_faces(folder: Path, seed: int = 0):
    """``faces_of`` for ``compose_photos``: FER2013 test crops (every emotion, in a seeded
    order), upscaled to the side asked for."""
    import cv2

    files = sorted((folder / "test").rglob("*.jpg"))
    if not files:
        raise SystemExit(f"no FER2013 test crops under {folder / 'test'} (see shared/data/README.md)")
    order = np.random.default_rng(seed).permutation(len(files))

    def faces_of(labels, side, start):
        crops = [cv2.imread(str(files[order[(start + k) % len(files)]]), cv2.IMREAD_GRAYSCALE)
                 for k in range(len(labels))]
        return [cv2.resize(c, (side, side), interpolation=cv2.INTER_CUBIC) for c in crops]

    return faces_of


def iou(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> float:
    ax, ay, aw, ah = a
    bx, by, bw, bh = b
    inter = max(0, min(ax + aw, bx + bw) - max(ax, bx)) * max(0, min(ay + ah, by + bh) - max(ay, by))
    return inter / (aw * ah + bw * bh - inter)


def match(found: list[tuple[int, int, int, int]], truth: list[tuple[int, int, int, int]], threshold: float) -> int:
    """How many detected boxes match a pasted face one to one (greedy, best overlaps first)."""
    pairs = sorted(((iou(f, t), i, j) for i, f in enumerate(found) for j, t in enumerate(truth)), reverse=True)
    used_f, used_t = set(), set()
    for overlap, i, j in pairs:
        if overlap < threshold:
            break
        if i not in used_f and j not in used_t:
            used_f.add(i)
            used_t.add(j)
    return len(used_f)


def run_variant(detector, photos: list[np.ndarray], truths: list[list], threshold: float, repeat: int) -> dict:
    for grey in photos[:3]:  # warm-up: the first calls pay for allocations
        detector.detect(grey)
    best, found = float("inf"), []
    for _ in range(repeat):
        boxes, seconds = [], 0.0
        for grey in photos:
            t0 = time.perf_counter()
            got = detector.detect(grey)
            seconds += time.perf_counter() - t0
            boxes.append([(f.box.x, f.box.y, f.box.w, f.box.h) for f in got])
        if seconds < best:
            best, found = seconds, boxes
    matched = sum(match(f, t, threshold) for f, t in zip(found, truths))
    detected = sum(map(len, found))
    faces = sum(map(len, truths))
    return {"found": detected, "matched": matched, "recall": matched / max(faces, 1),
            "precision": matched / detected if detected else float("nan"), "ms": best / len(photos) * 1000}


def _ints(text: str) -> list[int]:
    values = [int(v) for v in text.split(",") if v.strip()]
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers separated by commas, got {text!r}")
    return values


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", type=int, default=200, help="composed 640x480 photos (bench_score's first N)")
    parser.add_argument("--faces", choices=("synthetic", "fer2013"), default="synthetic",
                        help="what is pasted: synthetic faces (bench_score's photos) or FER2013 test crops")
    parser.add_argument("--fer", type=Path, default=DEFAULT_FER, help="FER2013 image folders (with --faces fer2013)")
    parser.add_argument("--sides", type=_ints, default=[640, 480, 320],
                        help="detect_side values, comma-separated (besides fer-ray's default, HaarDetector().detect_side)")
    parser.add_argument("--equalize", choices=("both", "on", "off"), default="both",
                        help="equalizeHist before detection: both variants, or only on / off")
    parser.add_argument("--iou", type=float, default=0.5, help="least overlap for a box to match a pasted face")
    parser.add_argument("--repeat", type=int, default=3, help="timed passes per variant (the fastest counts)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    import cv2

    from fer_ray.data.faces import HaarDetector

    cv2.setNumThreads(1)  # as in score's detection tasks (one per CPU share)
    faces_of = fer_faces(args.fer, args.seed) if args.faces == "fer2013" else None
    photos, truths = [], []
    for grey, boxes in compose_photos(args.photos, args.seed, faces_of):
        photos.append(grey)
        truths.append([(x, y, side, side) for x, y, side in boxes])
    faces = sum(map(len, truths))
    print(f"load average at start (other users of this machine): {os.getloadavg()}")
    print(f"{len(photos)} photos 640x480, {faces} {args.faces} faces of 160-200 px "
          f"({sum(not t for t in truths)} photos without a face); match at IoU >= {args.iou:g}; "
          f"OpenCV on 1 thread, best of {args.repeat} passes\n")

    default = HaarDetector()
    variants = [(default.detect_side, default.equalize)]
    for side in args.sides:
        for equalize in {"both": (True, False), "on": (True,), "off": (False,)}[args.equalize]:
            if (side, equalize) not in variants:
                variants.append((side, equalize))
    results = {}
    for side, equalize in variants:
        results[side, equalize] = run_variant(HaarDetector(detect_side=side, equalize=equalize), photos, truths,
                                              args.iou, args.repeat)

    print("| detect side | equalizeHist | boxes found | matched | recall | precision | ms/photo |")
    print("|---:|---|---:|---:|---:|---:|---:|")
    for (side, equalize), r in results.items():
        label = f"{side}{' (default)' if (side, equalize) == variants[0] else ''}"
        print(f"| {label} | {'on' if equalize else 'off'} | {r['found']} | {r['matched']} | {r['recall']:.3f} | "
              f"{r['precision']:.3f} | {r['ms']:.2f} |")
    print(f"\nload average at end: {os.getloadavg()}\n")
    base = results[variants[0]]
    for (side, equalize), r in list(results.items())[1:]:
        print(f"ratio default / side {side}, equalizeHist {'on' if equalize else 'off'}: "
              f"{base['ms'] / r['ms']:.2f}x faster; recall {base['recall']:.3f} -> {r['recall']:.3f}, "
              f"precision {base['precision']:.3f} -> {r['precision']:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
