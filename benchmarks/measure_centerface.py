"""CenterFace measurements behind the defaults in fer_ray/data/centerface.py and align.py.

    .venv/bin/python benchmarks/bench_photos.py --photos 150 --seed 0    # composes the photos first
    .venv/bin/python benchmarks/measure_centerface.py sweep [--photos 60] [--variants 640x1,800x1,640x2]
    .venv/bin/python benchmarks/measure_centerface.py crops [--photos-dir DIR] [--eye-distances 0.30,0.34,...]
    .venv/bin/python benchmarks/measure_centerface.py framing [--crops 2000] [--min-score 0.8]

``sweep``: on bench_photos.py's photos (real FER2013 faces, 1024x768), ms per photo of
``CenterFaceDetector.detect`` (OpenCV on one thread, restored afterwards) for each detection
side and upscale, and for each score threshold the recall by face size and the precision
(detections matched to faces as bench_photos matches them, IoU >= 0.4): the numbers behind
``DETECT_SIDE``, ``THRESHOLD`` and ``SMALL_FACES_UPSCALE``.

``crops``: emotion accuracy of the shipped model on the faces found in bench_photos.py's photos,
for each framing of the levelled crop (eye distance and eye height as fractions of the crop's
side, eyes centred), beside the faces' own crops and crops cut from the photos by the box or by
an oracle that knows where each face was pasted and how far it was turned. Run it on photos of
another seed than those reported on.

``framing``: where FER2013's crops put the face. Each of ``--crops`` Training crops (seeded
sample over all emotions) is upscaled 4x to 192 px and padded with a replicated border of 96 px,
so the face is not at the image's edge; the largest detection scoring at least ``--min-score`` gives the eye
midpoint (x, y), the inter-ocular distance and the box's width as fractions of the crop's side. Prints the
medians (these go into ``align.FER_FRAMING``), the quartiles and how many crops had a face.
"""

from __future__ import annotations

import argparse
import contextlib
import time
from pathlib import Path

import cv2
import numpy as np

from fer_ray.data.centerface import CenterFaceDetector

ROOT = Path(__file__).resolve().parents[1]
FER = ROOT.parent / "shared" / "data" / "fer2013"
UPSCALE, PAD = 4, 96


@contextlib.contextmanager
def opencv_threads(count: int):
    """OpenCV on ``count`` threads inside the block; the process's setting is restored after."""
    before = cv2.getNumThreads()
    cv2.setNumThreads(count)
    try:
        yield
    finally:
        cv2.setNumThreads(before)


def crops(split: str, count: int, seed: int = 0) -> list[np.ndarray]:
    """``count`` FER2013 crops of ``split`` (train or test), a seeded sample of all emotions."""
    files = sorted((FER / split).rglob("*.jpg"))
    if not files:
        raise SystemExit(f"no FER2013 crops under {FER / split} (see shared/data/README.md)")
    pick = np.random.default_rng(seed).permutation(len(files))[:count]
    return [cv2.imread(str(files[i]), cv2.IMREAD_GRAYSCALE) for i in pick]


def sweep(args) -> None:
    """Recall by face size and precision per (detect_side, upscale, threshold) on the photos
    bench_photos.py composed, detections matched to faces as it matches them (IoU >= 0.4)."""
    import json
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    from bench_photos import match_pairs

    truth = json.loads((args.photos_dir / "truth.json").read_text())["photos"][: args.photos]
    images = [cv2.imread(str(args.photos_dir / p["file"]), cv2.IMREAD_GRAYSCALE) for p in truth]
    faces = [f for p in truth for f in p["faces"]]
    print(f"{len(images)} photos of {args.photos_dir} ({len(faces)} faces), OpenCV on 1 thread")
    print(f"{'side':>5} {'upscale':>7} {'threshold':>9} {'ms/photo':>9} {'recall':>7} {'24-47':>6} {'48-95':>6} "
          f"{'96+':>6} {'precision':>9}")
    with opencv_threads(1):
        for variant in args.variants.split(","):
            side, up = (float(v) for v in variant.split("x"))
            detector = CenterFaceDetector(detect_side=int(side), upscale=up, threshold=min(args.thresholds))
            detected, t0 = [], time.perf_counter()
            for img in images:
                detected.append(detector.detect(img))
            ms = 1000 * (time.perf_counter() - t0) / len(images)
            for threshold in sorted(args.thresholds, reverse=True):
                hits, kept = {}, 0
                for photo, found in zip(truth, detected):
                    boxes = [(f.box.x, f.box.y, f.box.w, f.box.h) for f in found if f.score >= threshold]
                    kept += len(boxes)
                    matched = {j for _, j in match_pairs(boxes, [tuple(f["box"][k] for k in "xywh")
                                                                 for f in photo["faces"]], 0.4)}
                    for j, face in enumerate(photo["faces"]):
                        band = "24-47" if face["size"] < 48 else "48-95" if face["size"] < 96 else "96+"
                        hits.setdefault(band, []).append(j in matched)
                total = sum(sum(v) for v in hits.values())
                print(f"{int(side):>5} {up:>7g} {threshold:>9g} {ms:>9.0f} {total / len(faces):>7.3f} "
                      + " ".join(f"{np.mean(hits.get(b, [0])):>6.3f}" for b in ("24-47", "48-95", "96+"))
                      + f" {total / max(kept, 1):>9.3f}")


def crop_sweep(args) -> None:
    """Emotion accuracy of the shipped model on the detected faces of bench_photos.py's photos
    (those matched to a face, IoU >= 0.4) for each framing of the levelled crop, beside the
    faces' own FER2013 crops and two references cut from the same photos: the box's square
    (fer-ray's crop before landmarks, margin 0 and 0.2) and an oracle, the pasted square
    turned back by its true angle."""
    import json
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    from bench_photos import match_pairs

    from fer_ray.data.align import Framing, aligned_crop
    from fer_ray.data.faces import crop_square, make_detector
    from fer_ray.data.preprocess import resize
    from fer_ray.emotions import EMOTIONS
    from fer_ray.inference.predictor import Predictor
    from fer_ray.pretrained import default_artifact

    predictor, detector = Predictor(str(default_artifact())), make_detector()
    truth = json.loads((args.photos_dir / "truth.json").read_text())
    faces = []  # (photo, detected face, truth face)
    for photo in truth["photos"]:
        grey = cv2.imread(str(args.photos_dir / photo["file"]), cv2.IMREAD_GRAYSCALE)
        found = detector.detect(grey)
        boxes = [(f.box.x, f.box.y, f.box.w, f.box.h) for f in found]
        for i, j in match_pairs(boxes, [tuple(f["box"][k] for k in "xywh") for f in photo["faces"]], 0.4):
            faces.append((grey, found[i], photo["faces"][j]))
    labels = np.array([EMOTIONS.index(t["label"]) for _, _, t in faces])

    def accuracy(crop) -> float:
        crops = np.stack([resize(crop(grey, face, t), 48) for grey, face, t in faces])
        return float((predictor.predict(crops) == labels).mean())

    def oracle(grey, face, t):
        b = t["box"]
        cx, cy, side = b["x"] + b["w"] / 2, b["y"] + b["h"] / 2, b["w"]
        turn = cv2.getRotationMatrix2D((cx, cy), -t["angle"], 1.0)
        turn[:, 2] += (side / 2 - cx, side / 2 - cy)
        return cv2.warpAffine(grey, turn, (side, side), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)

    own = np.stack([cv2.imread(str(Path(truth["fer"]) / t["source"]), cv2.IMREAD_GRAYSCALE) for _, _, t in faces])
    print(f"{len(faces)} detected faces matched in {len(truth['photos'])} photos of {args.photos_dir}")
    print(f"their own FER2013 crops: {float((predictor.predict(own) == labels).mean()):.3f}")
    print(f"oracle (pasted square, turned back): {accuracy(oracle):.3f}")
    for margin in (0.0, 0.2):
        print(f"box square, margin {margin}: {accuracy(lambda g, f, t: crop_square(g, f.box, margin)):.3f}")
    print(f"{'eye_distance':>12} {'eye_y':>6} {'accuracy':>8}")
    for distance in args.eye_distances:
        for eye_y in args.eye_ys:
            # the box sets the side only for a face turned sideways: its share shrinks with the eyes'
            framing = Framing(eye_x=0.5, eye_y=eye_y, eye_distance=distance,
                              box_width=args.box_per_eye * distance)
            framed = accuracy(lambda g, f, t: aligned_crop(g, f, None, framing))
            print(f"{distance:>12.3f} {eye_y:>6.3f} {framed:>8.3f}")


def framing(args) -> None:
    detector = CenterFaceDetector(detect_side=UPSCALE * 48 + 2 * PAD)  # detect at full size
    side = UPSCALE * 48
    rows = []
    for crop in crops("train", args.crops, args.seed):
        big = cv2.resize(crop, (side, side), interpolation=cv2.INTER_CUBIC)
        faces = [f for f in detector.detect(cv2.copyMakeBorder(big, PAD, PAD, PAD, PAD, cv2.BORDER_REPLICATE))
                 if f.score >= args.min_score]
        if not faces:
            continue
        (rx, ry), (lx, ly) = faces[0].right_eye, faces[0].left_eye
        rows.append(((rx + lx) / 2 - PAD, (ry + ly) / 2 - PAD, np.hypot(lx - rx, ly - ry), faces[0].box.w))
    values = np.array(rows) / side
    print(f"{len(values)} of {args.crops} Training crops with a face scoring >= {args.min_score} (seed {args.seed})")
    for name, column in zip(("eye_x", "eye_y", "eye_distance", "box_width"), values.T):
        q1, median, q3 = np.percentile(column, [25, 50, 75])
        print(f"{name:>13}: median {median:.3f}  quartiles {q1:.3f}-{q3:.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="what", required=True)
    s = sub.add_parser("sweep")
    s.add_argument("--photos-dir", type=Path, default=Path("/tmp/fer-ray-bench-photos"),
                   help="bench_photos.py's --out (photos and truth.json)")
    s.add_argument("--photos", type=int, default=60)
    s.add_argument("--variants", default="640x1,800x1,640x2", help="SIDExUPSCALE, comma-separated")
    s.add_argument("--thresholds", type=lambda t: [float(v) for v in t.split(",")],
                   default=[0.5, 0.3, 0.2, 0.15, 0.1])
    c = sub.add_parser("crops")
    c.add_argument("--photos-dir", type=Path, default=Path("/tmp/fer-ray-bench-photos"))
    floats = lambda t: [float(v) for v in t.split(",")]  # noqa: E731
    c.add_argument("--eye-distances", type=floats, default=[0.30, 0.34, 0.38, 0.42])
    c.add_argument("--eye-ys", type=floats, default=[0.40, 0.44, 0.48])
    c.add_argument("--box-per-eye", type=float, default=0.677 / 0.303,
                   help="box width per eye distance of the framing (FER2013's medians: 0.677 / 0.303)")
    f = sub.add_parser("framing")
    f.add_argument("--crops", type=int, default=2000)
    f.add_argument("--seed", type=int, default=0)
    f.add_argument("--min-score", type=float, default=0.8)
    args = parser.parse_args()
    {"sweep": sweep, "crops": crop_sweep, "framing": framing}[args.what](args)


if __name__ == "__main__":
    main()
