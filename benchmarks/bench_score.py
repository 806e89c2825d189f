"""Images/s of ``fer-ray score`` (Ray Data) against plain single-process loops, same artifact.

    .venv/bin/python benchmarks/bench_score.py --artifact DIR [--fer ../shared/data/fer2013]
        [--photos 300] [--skip-fer] [--skip-photos]

Two inputs:
  * FER2013: every JPEG of the shared folder (32,298 48x48 face crops), ``--faces none``.
  * photos: ``--photos`` generated 640x480 grey photos with 0-3 synthetic faces each
    (160-200 px, pasted on a noisy gradient), ``--faces all`` (Haar detection per photo).

Contenders, each on a warm page cache (every file is read once before any timing):
  * plain loop, one image at a time: read, ``decode_grey``, ``find_faces``, then
    ``Predictor.predict_proba`` on that image's faces. This is how the peer libraries
    (e.g. ``fer``'s ``detect_emotions(img)``) score a folder. torch and OpenCV get 1 or 2
    threads, whichever is faster on a sample of the input (timed first); that is the baseline.
  * plain batched loop (FER2013 only): decode everything, then ``predict_proba`` in batches
    of 256, same threads. Shown for honesty: what batching alone gives, without Ray.
  * ``fer-ray score`` as a user runs it: a fresh process, Ray start, Parquet output and all
    (wall time of the command), and the same pipeline in-process with Ray already up.

Prints images/s and the ratio Ray / plain one-at-a-time (the target is >= 1.5x on 2 CPUs).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_FER = ROOT.parent / "shared" / "data" / "fer2013"


def compose_photos(count: int, seed: int = 0, faces_of=None):
    """``count`` 640x480 grey photos holding 0-3 faces of 160-200 px each, with the faces' boxes:
    yields (photo, [(x, y, side), ...]). ``faces_of(labels, side, start)`` makes the faces
    (default: synthetic faces); the layout is the same whichever faces are pasted."""
    from fer_ray.data.synthetic import synthetic_faces

    faces_of = faces_of or (lambda labels, side, start: synthetic_faces(labels, size=side, seed=seed, start=start))
    rng = np.random.default_rng(seed)
    for i in range(count):
        yy, xx = np.mgrid[0:480, 0:640]
        img = 80 + 70 * xx / 640 + 40 * yy / 480 + rng.normal(0, 6, (480, 640))
        n = int(rng.integers(0, 4))
        side = int(rng.integers(160, 201))
        boxes = []
        for j, face in enumerate(faces_of(rng.integers(0, 7, n), side, 4 * i)):  # three slots side by side,
            x = j * 213 + int(rng.integers(0, 213 - side + 1))                     # so faces never overlap
            y = int(rng.integers(0, 480 - side))
            img[y : y + side, x : x + side] = face
            boxes.append((x, y, side))
        yield np.clip(img, 0, 255).astype(np.uint8), boxes


def make_photos(folder: Path, count: int, seed: int = 0) -> list[str]:
    """``count`` 640x480 PNG photos holding 0-3 synthetic faces each (kept between runs;
    photos beyond ``count`` from an earlier run are removed). Every photo is composed, kept or
    not, so that photo i is the same image whichever photos an earlier run left."""
    from fer_ray.data.preprocess import encode_png

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, (img, _) in enumerate(compose_photos(count, seed)):
        path = folder / f"photo{i:04d}.png"
        paths.append(str(path))
        if not path.exists():
            path.write_bytes(encode_png(img))
    # The command scores the whole folder and the plain loop these paths: they must be the same
    # images, or the ratio compares two sets (a folder kept from a run with more photos did).
    extra = sorted(set(map(str, folder.iterdir())) - set(paths))
    for leftover in [e for e in extra if Path(e).name.startswith("photo") and e.endswith(".png")]:
        Path(leftover).unlink()
    foreign = [e for e in extra if Path(e).exists()]
    if foreign:
        raise SystemExit(f"--photo-dir {folder} holds {len(foreign)} other files ({foreign[0]}, ...): use a folder "
                         "of its own")
    return paths


def set_threads(n: int) -> None:
    import cv2
    import torch

    torch.set_num_threads(n)
    cv2.setNumThreads(n)


def plain_one_at_a_time(predictor, paths: list[str], mode: str) -> tuple[float, int]:
    """The peer libraries' way: each image read, detected and predicted on its own."""
    from fer_ray.data.faces import FaceDetector, find_faces
    from fer_ray.data.preprocess import ImageError, decode_grey

    detector = FaceDetector() if mode != "none" else None
    faces = 0
    t0 = time.perf_counter()
    for path in paths:
        try:
            with open(path, "rb") as fh:
                grey = decode_grey(fh.read())
        except ImageError:
            continue
        crops = [c for _, c in find_faces(grey, mode, detector)]
        if crops:
            predictor.predict_proba(crops)
            faces += len(crops)
    return time.perf_counter() - t0, faces


def plain_batched(predictor, paths: list[str]) -> float:
    """Decode every face crop, then predict in batches of 256 (no detection, no Ray)."""
    from fer_ray.data.preprocess import decode_grey

    t0 = time.perf_counter()
    crops = []
    for path in paths:
        with open(path, "rb") as fh:
            crops.append(decode_grey(fh.read()))
    for start in range(0, len(crops), 256):
        predictor.predict_proba(crops[start : start + 256])
    return time.perf_counter() - t0


def score_cli(artifact: str, input: str, out: Path, mode: str, num_cpus: int) -> float:
    """Wall time of ``fer-ray score`` in a fresh process (Ray start and output included)."""
    cmd = [sys.executable, "-m", "fer_ray.cli", "score", "--artifact", artifact, "--input", input,
           "--output", str(out), "--faces", mode, "--num-cpus", str(num_cpus), "--overwrite"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"fer-ray score failed:\n{proc.stderr[-3000:]}")
    print("   ", [line for line in proc.stdout.splitlines() if line.startswith("score: ")][-1])
    return seconds


def bench(name: str, artifact: str, input: str, paths: list[str], mode: str, work: Path, num_cpus: int,
          batched: bool) -> list[tuple[str, float]]:
    from fer_ray.inference.batch import score_folder
    from fer_ray.inference.predictor import Predictor

    for path in paths:  # warm the page cache for every contender
        with open(path, "rb") as fh:
            fh.read()
    n = len(paths)
    print(f"\n== {name}: {n} images, --faces {mode}")
    predictor = Predictor(artifact, device="cpu")
    rows = []
    # Pick the plain loops' thread count on a sample: with other load on the machine, two
    # OpenMP threads on two cores can be many times slower than one, and timing the full set
    # that way would only make the baseline look bad.
    sample = paths[: max(1, min(len(paths), 2000 if mode == "none" else 30))]
    trial = {}
    for threads in (1, 2):
        set_threads(threads)
        trial[threads] = plain_one_at_a_time(predictor, sample, mode)[0]
    threads = min(trial, key=trial.get)
    print(f"   thread trial on {len(sample)} images: " + ", ".join(f"{t} thread(s) {len(sample) / s:.0f} img/s"
                                                              for t, s in trial.items()) + f" -> {threads}")
    set_threads(threads)
    best, faces = plain_one_at_a_time(predictor, paths, mode)
    print(f"   plain one-at-a-time, {threads} thread(s): {best:.1f} s, {n / best:.0f} img/s, {faces} faces")
    rows.append((f"plain loop, one image at a time ({threads} thread(s), the faster on a sample)", best))
    if batched:
        seconds = plain_batched(predictor, paths)
        print(f"   plain batched (256), {threads} thread(s): {seconds:.1f} s, {n / seconds:.0f} img/s")
        rows.append((f"plain loop, decode all then batches of 256 ({threads} thread(s))", seconds))
    set_threads(2)
    cli = score_cli(artifact, input, work / f"{name}-cli.parquet", mode, num_cpus)
    print(f"   fer-ray score (fresh process, Ray start included): {cli:.1f} s, {n / cli:.0f} img/s")
    rows.append(("`fer-ray score` command, wall time (Ray start, listing, output included)", cli))

    from fer_ray.runtime import init_ray

    init_ray(num_cpus)
    t0 = time.perf_counter()
    summary = score_folder(artifact, input, str(work / f"{name}-warm.parquet"), faces=mode, overwrite=True,
                           log=lambda *_: None)
    warm = time.perf_counter() - t0
    import ray

    ray.shutdown()  # an idle Ray left running would take CPU from the next input's contenders
    print(f"   score_folder with Ray already up: {warm:.1f} s, {n / warm:.0f} img/s "
          f"({summary.faces} faces, {summary.no_face} without, {summary.errors} errors)")
    rows.append(("`score_folder` in-process, Ray already started", warm))
    print(f"   ratio Ray command / best plain one-at-a-time: {best / cli:.2f}x; "
          f"Ray warm / plain: {best / warm:.2f}x")
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--artifact", required=True)
    parser.add_argument("--fer", default=str(DEFAULT_FER), help="folder of FER2013 JPEGs (searched recursively)")
    parser.add_argument("--photos", type=int, default=300, help="generated 640x480 photos")
    parser.add_argument("--photo-dir", default=str(ROOT / "runs" / "bench" / "photos"))
    parser.add_argument("--num-cpus", type=int, default=2)
    parser.add_argument("--skip-fer", action="store_true")
    parser.add_argument("--skip-photos", action="store_true")
    args = parser.parse_args(argv)
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")

    from fer_ray.inference.batch import list_images

    print(f"load average at start (other users of this machine): {os.getloadavg()}")
    work = Path(tempfile.mkdtemp(prefix="bench_score_"))
    tables = {}
    try:
        if not args.skip_fer:
            paths, _ = list_images(args.fer)
            tables["FER2013"] = (len(paths), bench("fer2013", args.artifact, args.fer, paths, "none", work,
                                                   args.num_cpus, batched=True))
        if not args.skip_photos:
            paths = make_photos(Path(args.photo_dir), args.photos)
            tables["photos"] = (len(paths), bench("photos", args.artifact, args.photo_dir, paths, "all", work,
                                                  args.num_cpus, batched=False))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"\nload average at end: {os.getloadavg()}")
    for name, (n, rows) in tables.items():
        print(f"\n{name} ({n} images)\n\n| path | seconds | images/s |\n|---|---:|---:|")
        for label, seconds in rows:
            print(f"| {label} | {seconds:.1f} | {n / seconds:,.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
