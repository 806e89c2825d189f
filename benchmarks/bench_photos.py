"""Faces as they appear in real photos: detection recall, precision, emotion accuracy and speed
of ``fer_ray.predict`` settings, on composed photos whose faces and emotions are known.

    .venv/bin/python benchmarks/bench_photos.py [--photos 150] [--seed 0] [--out /tmp/fer-ray-bench-photos]
        [--setting NAME:key=value,key=value ...] [--iou 0.4] [--threads N] [--json PATH]

Photos: 1024x768 grey JPEGs (quality 60-95) holding 1-8 real FER2013 faces each, side 24-320 px
(log-uniform), half of them turned in-plane by an angle uniform in [-30, 30] degrees, on a
background of gradients, value-noise textures, gratings or clutter (never a face), then blur,
lighting (contrast, brightness, a linear shadow) and sensor noise over the whole photo. Seeded:
photo i is the same for a given seed whatever ``--photos`` is. Written with ``truth.json`` to
``--out`` (outside the repository).

The faces are the shipped model's held-out **val** split: the seeded, stratified 10% of the
FER2013 ``Training`` folder that its catalog carved out and training never saw (2,872 faces,
recomputed here exactly as ``fer-ray prepare`` does). ``PublicTest`` is never touched, and
training faces would be judged by a model that has learned them. Each face keeps its label.

A face is its 48x48 crop scaled to its size, turned, and pasted through a soft **circular**
mask inscribed in the square (opaque to 85% of the radius, fading to nothing at its edge): no
square edge for the detector to key on, the crop's corners (hair, background) give way to the
photo, and the whole face stays. Because the visible region is a circle, its axis-aligned
bounding square does not change when it turns: the **truth box** is the size x size square
centred where the crop's centre landed, for upright and turned faces alike. Faces never overlap
(the truth squares are disjoint; a face that does not fit after 200 tries is left out).

Settings: each ``--setting NAME:key=value,...`` is a name and the keyword arguments passed to
``fer_ray.predict(path, **kwargs)`` (values parsed as JSON when they parse, else kept as
strings; ``NAME`` alone is the defaults), so an option predict gains needs no change here.
Without ``--setting`` only ``default`` (no arguments) runs. One key is the benchmark's own:
``crop=box`` crops a detected face as fer-ray did before landmarks (the box's square, 20% margin
each side), ``crop=level`` turns it upright about the box's centre first (its eyes level), and
without it faces are cropped as fer-ray crops them (levelled and framed like FER2013's crops,
``fer_ray.data.align``). Every photo is one predict call
with one model loaded beforehand (its ``predictor=``), after one untimed warm-up call;
photos/s is the sum of those calls' wall time in this one process. The **crops** row is the
ceiling: the same faces' original 48x48 files, ``faces="none"``.

Matching: a detected box matches a truth face when their IoU is at least ``--iou`` (0.4), one
to one, greedily by IoU. recall = matched / truth faces (also by size and by |angle| < 5 vs
turned), precision = matched / detected boxes, emotion = right emotion / matched faces,
end-to-end = right emotion / all truth faces.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # bench_detect, beside this file
from bench_detect import iou  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_FER = ROOT.parent / "shared" / "data" / "fer2013"
WIDTH, HEIGHT = 1024, 768
SIZE_RANGE = (24, 320)
MAX_ANGLE = 30.0
SIZE_BUCKETS = ((24, 47), (48, 95), (96, 191), (192, 320))
UPRIGHT = 5.0  # |angle| below this counts as upright


# ---------------------------------------------------------------------------------------
# Faces and photos
# ---------------------------------------------------------------------------------------

def held_out_faces(fer: Path, seed: int) -> list[tuple[str, str]]:
    """(path relative to ``fer``, emotion) of the default model's val faces, in a seeded order.

    The split is recomputed as ``fer-ray prepare`` assigns it (rows sorted by id, a seeded
    stratified 10% of train carved into val), so these are Training faces the model never
    trained on: the crops row then matches the model card's val accuracy.
    """
    from fer_ray.data.sources import make_source
    from fer_ray.data.splits import assign
    from fer_ray.emotions import EMOTIONS

    items = sorted((i for i in make_source("folders", str(fer)).plan() if not i["error"]), key=lambda i: i["id"])
    if not items:
        raise SystemExit(f"no FER2013 images under {fer} (see shared/data/README.md)")
    labels = np.array([i["label"] for i in items])
    splits = assign("source", labels, np.array([i["split"] for i in items], dtype=object),
                    np.array([""] * len(items), dtype=object), seed=0)  # the shipped catalog's seed
    val = [(i["id"], EMOTIONS[i["label"]]) for i, s in zip(items, splits) if s == "val"]
    return [val[k] for k in np.random.default_rng(seed).permutation(len(val))]


def background(rng: np.random.Generator) -> np.ndarray:
    """A float photo-sized background of one of four kinds, none of which holds a face."""
    yy, xx = np.mgrid[0:HEIGHT, 0:WIDTH].astype(np.float32)
    gradient = rng.uniform(60, 190) + rng.uniform(-60, 60) * xx / WIDTH + rng.uniform(-60, 60) * yy / HEIGHT
    kind = rng.integers(4)
    if kind == 1:  # value noise: soft blotches at a few scales (walls, foliage out of focus)
        import cv2

        for cell in (256, 64, 16):
            coarse = rng.uniform(-1, 1, (HEIGHT // cell + 2, WIDTH // cell + 2)).astype(np.float32)
            gradient += rng.uniform(10, 40) * cv2.resize(coarse, (WIDTH, HEIGHT), interpolation=cv2.INTER_CUBIC)
    elif kind == 2:  # gratings: blinds, fabric, brick rows
        for _ in range(2):
            theta, period = rng.uniform(0, np.pi), rng.uniform(6, 120)
            gradient += rng.uniform(10, 40) * np.sin(2 * np.pi * (xx * np.cos(theta) + yy * np.sin(theta)) / period)
    elif kind == 3:  # clutter: filled rectangles and ellipses of other greys (objects, furniture)
        import cv2

        for _ in range(rng.integers(10, 40)):
            grey = float(rng.uniform(0, 255))
            x, y = int(rng.integers(0, WIDTH)), int(rng.integers(0, HEIGHT))
            a, b = int(rng.integers(10, 250)), int(rng.integers(10, 250))
            if rng.random() < 0.5:
                cv2.rectangle(gradient, (x, y), (x + a, y + b), grey, -1)
            else:
                cv2.ellipse(gradient, (x, y), (a // 2, b // 2), float(rng.uniform(0, 180)), 0, 360, grey, -1)
    return gradient


def circle_mask(side: int) -> np.ndarray:
    """Alpha of a disc inscribed in a side x side square: 1 inside 85% of the radius, 0 at it."""
    c = (side - 1) / 2
    yy, xx = np.mgrid[0:side, 0:side]
    r = np.hypot(xx - c, yy - c) / (side / 2)
    return np.clip((1 - r) / 0.15, 0, 1).astype(np.float32)


def face_layer(crop: np.ndarray, side: int, angle: float) -> tuple[np.ndarray, np.ndarray]:
    """The 48x48 crop at ``side`` px, turned ``angle`` degrees (counter-clockwise), and its alpha."""
    import cv2

    shrink = side < crop.shape[0]
    face = cv2.resize(crop, (side, side), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_CUBIC)
    face = face.astype(np.float32)
    alpha = circle_mask(side)
    if angle:
        turn = cv2.getRotationMatrix2D(((side - 1) / 2, (side - 1) / 2), angle, 1.0)
        face = cv2.warpAffine(face, turn, (side, side), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        alpha = cv2.warpAffine(alpha, turn, (side, side), flags=cv2.INTER_LINEAR, borderValue=0)
    return face, alpha


def place(rng: np.random.Generator, sides: list[int]) -> list[tuple[int, int] | None]:
    """Top-left corners for squares of ``sides`` (largest first) that do not overlap; None for
    one that does not fit in 200 tries."""
    taken, corners = [], []
    for side in sides:
        corner = None
        for _ in range(200):
            x, y = int(rng.integers(0, WIDTH - side + 1)), int(rng.integers(0, HEIGHT - side + 1))
            if all(x + side <= tx or tx + ts <= x or y + side <= ty or ty + ts <= y for tx, ty, ts in taken):
                corner = (x, y)
                taken.append((x, y, side))
                break
        corners.append(corner)
    return corners


def finish(img: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, dict]:
    """Blur, lighting and sensor noise over the whole composed photo, as a camera would add them."""
    import cv2

    blur = float(rng.uniform(0, 1.5))
    if blur > 0.3:
        img = cv2.GaussianBlur(img, (0, 0), blur)
    yy, xx = np.mgrid[0:HEIGHT, 0:WIDTH].astype(np.float32)
    contrast, brightness = float(rng.uniform(0.6, 1.3)), float(rng.uniform(-40, 40))
    theta, shadow = rng.uniform(0, 2 * np.pi), float(rng.uniform(0, 80))
    ramp = (xx * np.cos(theta) + yy * np.sin(theta)) / math.hypot(WIDTH, HEIGHT)
    noise = float(rng.uniform(0, 6))
    img = (img - 128) * contrast + 128 + brightness + shadow * ramp + rng.normal(0, noise, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8), {"blur_sigma": round(blur, 2), "contrast": round(contrast, 2),
                                                   "brightness": round(brightness, 1), "shadow": round(shadow, 1),
                                                   "noise_sigma": round(noise, 2)}


def compose_photo(index: int, seed: int, pool: list[tuple[str, str]], start: int, fer: Path):
    """Photo ``index``: (grey uint8 image, its truth dict, faces taken from ``pool``)."""
    import cv2

    rng = np.random.default_rng([seed, index])
    img = background(rng)
    count = int(rng.integers(1, 9))
    sides = sorted((int(round(math.exp(rng.uniform(*np.log(SIZE_RANGE))))) for _ in range(count)), reverse=True)
    faces = []
    for k, (side, corner) in enumerate(zip(sides, place(rng, sides))):
        angle = round(float(rng.uniform(-MAX_ANGLE, MAX_ANGLE)), 1) if rng.random() < 0.5 else 0.0
        if corner is None:
            continue
        source, emotion = pool[(start + k) % len(pool)]
        layer, alpha = face_layer(cv2.imread(str(fer / source), cv2.IMREAD_GRAYSCALE), side, angle)
        x, y = corner
        region = img[y : y + side, x : x + side]
        region += alpha * (layer - region)
        faces.append({"box": {"x": x, "y": y, "w": side, "h": side}, "size": side, "angle": angle,
                      "label": emotion, "source": source})
    img, camera = finish(img, rng)
    return img, {"faces": faces, "quality": int(rng.integers(60, 96)), **camera}, count


def compose(out: Path, count: int, seed: int, fer: Path) -> dict:
    """Write ``count`` photos and ``truth.json`` into ``out``; returns the truth."""
    import cv2

    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("photo*.jpg"):
        old.unlink()
    pool, used, photos = held_out_faces(fer, seed), 0, []
    for i in range(count):
        img, truth, taken = compose_photo(i, seed, pool, used, fer)
        used += taken
        name = f"photo{i:04d}.jpg"
        cv2.imwrite(str(out / name), img, [cv2.IMWRITE_JPEG_QUALITY, truth["quality"]])
        photos.append({"file": name, **truth})
    truth = {"seed": seed, "width": WIDTH, "height": HEIGHT, "fer": str(fer), "faces_from": "val split of Training",
             "photos": photos}
    (out / "truth.json").write_text(json.dumps(truth, indent=1))
    return truth


# ---------------------------------------------------------------------------------------
# Settings, matching and scores
# ---------------------------------------------------------------------------------------

def parse_setting(text: str) -> tuple[str, dict]:
    """``NAME:key=value,key=value`` -> (NAME, kwargs); a value is JSON when it parses (0.1,
    true, null), else the string as written (all, haar)."""
    name, _, rest = text.partition(":")
    if not name:
        raise argparse.ArgumentTypeError(f"a setting needs a name: NAME:key=value,... (got {text!r})")
    kwargs = {}
    for pair in filter(None, (p.strip() for p in rest.split(","))):
        key, eq, value = pair.partition("=")
        if not eq or not key:
            raise argparse.ArgumentTypeError(f"expected key=value in setting {name!r}, got {pair!r}")
        try:
            kwargs[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            kwargs[key.strip()] = value
    return name, kwargs


def match_pairs(found: list[tuple], truth: list[tuple], threshold: float) -> list[tuple[int, int]]:
    """(detection, truth face) index pairs, one to one, greedily by IoU, each at least ``threshold``."""
    ranked = sorted(((iou(f, t), i, j) for i, f in enumerate(found) for j, t in enumerate(truth)), reverse=True)
    pairs, used_f, used_t = [], set(), set()
    for overlap, i, j in ranked:
        if overlap < threshold:
            break
        if i not in used_f and j not in used_t:
            pairs.append((i, j))
            used_f.add(i)
            used_t.add(j)
    return pairs


def predictor_for(kwargs: dict, cache: dict):
    """One Predictor per artifact, loaded before any timing (predict would load it every call)."""
    from fer_ray.inference.predictor import Predictor
    from fer_ray.pretrained import default_artifact

    artifact = str(kwargs.get("artifact") or default_artifact())
    if artifact not in cache:
        cache[artifact] = Predictor(artifact)
    return cache[artifact]


def old_crop(grey: np.ndarray, face, margin=None, level: bool = False) -> np.ndarray:
    """A face's box square with a 20% margin each side (fer-ray's crop before landmarks),
    turned upright about the box's centre first when ``level``."""
    import cv2

    from fer_ray.data.align import eye_angle
    from fer_ray.data.faces import crop_square

    if not level or face.landmarks is None:
        return crop_square(grey, face.box, 0.2)
    box = face.box
    cx, cy, side = box.x + box.w / 2, box.y + box.h / 2, round(max(box.w, box.h) * 1.4)
    turn = cv2.getRotationMatrix2D((cx, cy), eye_angle(face), 1.0)
    turn[:, 2] += (side / 2 - cx, side / 2 - cy)
    return cv2.warpAffine(grey, turn, (side, side), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def run_setting(out: Path, truth: dict, kwargs: dict, predictor, threshold: float) -> dict:
    """Predict every photo once (timed) and score the result against the truth."""
    import fer_ray
    from fer_ray.data import faces as detection

    kwargs = dict(kwargs)
    crop = kwargs.pop("crop", None)
    if crop not in (None, "box", "level"):
        raise SystemExit(f"crop={crop!r}: expected box or level")
    framed = detection.face_crop
    if crop:
        detection.face_crop = lambda grey, face, margin=None: old_crop(grey, face, margin, level=crop == "level")
    try:
        return _run_setting(out, truth, kwargs, predictor, threshold, fer_ray.predict)
    finally:
        detection.face_crop = framed


def _run_setting(out: Path, truth: dict, kwargs: dict, predictor, threshold: float, predict) -> dict:
    """``run_setting``'s work: each photo through ``predict`` with ``kwargs``, timed."""
    paths = [str(out / p["file"]) for p in truth["photos"]]
    predict(paths[0], predictor=predictor, **kwargs)  # warm-up: cascade and model first calls
    outcomes, seconds, detected = [], 0.0, 0
    for path, photo in zip(paths, truth["photos"]):
        t0 = time.perf_counter()
        records = predict(path, predictor=predictor, **kwargs)
        seconds += time.perf_counter() - t0
        found = [r for r in records if r["face"] is not None]
        detected += len(found)
        boxes = [tuple(r["box"][k] for k in "xywh") for r in found]
        guesses = [None] * len(photo["faces"])
        for i, j in match_pairs(boxes, [tuple(f["box"][k] for k in "xywh") for f in photo["faces"]], threshold):
            guesses[j] = found[i]["emotion"]
        outcomes += [(f, g) for f, g in zip(photo["faces"], guesses)]
    return scores(outcomes, detected, len(paths) / seconds)


def run_crops(fer: Path, truth: dict, predictor) -> dict:
    """The same faces' original 48x48 files, given to the model whole: the accuracy ceiling."""
    import fer_ray

    faces = [f for p in truth["photos"] for f in p["faces"]]
    records = fer_ray.predict([str(fer / f["source"]) for f in faces], predictor=predictor, faces="none")
    return scores([(f, r["emotion"]) for f, r in zip(faces, records)], len(faces), None)


def scores(outcomes: list[tuple[dict, str | None]], detected: int, photos_per_s: float | None) -> dict:
    """Recall (overall, by size, by angle), precision, emotion and end-to-end accuracy from
    (truth face, emotion of its matched detection or None) pairs."""
    def recall(keep) -> float | None:
        chosen = [g for f, g in outcomes if keep(f)]
        return sum(g is not None for g in chosen) / len(chosen) if chosen else None

    matched = [(f, g) for f, g in outcomes if g is not None]
    right = sum(f["label"] == g for f, g in matched)
    return {
        "faces": len(outcomes), "detected": detected, "matched": len(matched),
        "recall": recall(lambda f: True),
        "recall_by_size": {f"{lo}-{hi}": recall(lambda f, lo=lo, hi=hi: lo <= f["size"] <= hi)
                           for lo, hi in SIZE_BUCKETS},
        "recall_upright": recall(lambda f: abs(f["angle"]) < UPRIGHT),
        "recall_turned": recall(lambda f: abs(f["angle"]) >= UPRIGHT),
        "precision": len(matched) / detected if detected else None,
        "emotion_accuracy": right / len(matched) if matched else None,
        "end_to_end_accuracy": right / len(outcomes),
        "photos_per_s": photos_per_s,
    }


def table(results: dict[str, dict]) -> str:
    """One markdown row per setting."""
    def pct(v):
        return "-" if v is None else f"{100 * v:.1f}%"

    sizes = [f"{lo}-{hi}" for lo, hi in SIZE_BUCKETS]
    head = ["setting", "recall", *(f"R {s} px" for s in sizes), "R upright", "R turned", "precision",
            "emotion (matched)", "end-to-end", "photos/s"]
    lines = ["| " + " | ".join(head) + " |", "|---" + "|---:" * (len(head) - 1) + "|"]
    for name, r in results.items():
        cells = [name, pct(r["recall"]), *(pct(r["recall_by_size"][s]) for s in sizes), pct(r["recall_upright"]),
                 pct(r["recall_turned"]), pct(r["precision"]), pct(r["emotion_accuracy"]),
                 pct(r["end_to_end_accuracy"]), "-" if r["photos_per_s"] is None else f"{r['photos_per_s']:.2f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", type=int, default=150, help="photos to compose and score")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("/tmp/fer-ray-bench-photos"),
                        help="folder for the photos and truth.json (rewritten each run)")
    parser.add_argument("--fer", type=Path, default=DEFAULT_FER, help="FER2013 folders (train/, test/)")
    parser.add_argument("--setting", type=parse_setting, action="append", metavar="NAME:key=value,...",
                        help="a name and fer_ray.predict keyword arguments; repeat for more (default: 'default')")
    parser.add_argument("--iou", type=float, default=0.4, help="least IoU for a detection to match a face")
    parser.add_argument("--threads", type=int, help="torch and OpenCV threads (default: the libraries' own)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    settings = dict(args.setting or [("default", {})])

    import cv2
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
        cv2.setNumThreads(args.threads)
    t0 = time.perf_counter()
    truth = compose(args.out, args.photos, args.seed, args.fer)
    faces = [f for p in truth["photos"] for f in p["faces"]]
    print(f"{len(truth['photos'])} photos {WIDTH}x{HEIGHT}, {len(faces)} faces "
          f"({sum(abs(f['angle']) >= UPRIGHT for f in faces)} turned), seed {args.seed}, in {args.out} "
          f"(composed in {time.perf_counter() - t0:.1f} s); match at IoU >= {args.iou:g}")
    print(f"torch threads {torch.get_num_threads()}, OpenCV threads {cv2.getNumThreads()}; "
          f"load average at start {os.getloadavg()}")
    predictors, results = {}, {}
    for name, kwargs in settings.items():
        results[name] = run_setting(args.out, truth, kwargs, predictor_for(kwargs, predictors), args.iou)
        results[name]["kwargs"] = kwargs
    results["crops"] = run_crops(args.fer, truth, predictor_for({}, predictors))
    print(f"load average at end {os.getloadavg()}\n")
    print(table(results))
    if args.json:
        args.json.write_text(json.dumps({"argv": sys.argv, "truth": str(args.out / "truth.json"),
                                         "torch_threads": torch.get_num_threads(),
                                         "opencv_threads": cv2.getNumThreads(), "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
