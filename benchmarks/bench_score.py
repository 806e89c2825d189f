"""Images/s of ``fer-ray score`` (Ray Data) against the plain batched loop a user would write.

    .venv/bin/python benchmarks/bench_score.py [--artifact DIR] [--fer ../shared/data/fer2013]
        [--photos 200] [--num-cpus 2] [--skip-fer] [--skip-photos] [--limit N]

Two inputs:
  * FER2013: the JPEGs of the shared folder (32,298 48x48 face crops; ``--limit`` takes the
    first N), ``--faces none``.
  * photos: ``--photos`` generated 640x480 grey photos with 0-3 synthetic faces each
    (160-200 px, pasted on a noisy gradient), ``--faces all`` (Haar detection per photo).

Contenders, on a warm page cache (every file is read once before any timing), same artifact
(default: the shipped default model):
  * the plain batched loop, one process: read, ``decode_grey``, (detect and crop with
    ``crop_faces``, as score does,) then ``Predictor.predict_proba`` on batches of 256 faces.
    torch and OpenCV get 1 or 2 threads (``--num-cpus`` at most), whichever is faster on a
    sample: the best plain alternative, not a slow one.
  * ``fer-ray score`` as a user runs it: a fresh process (imports, Ray start, listing, Parquet
    output and all). Its summary line splits start-up (Ray, actors, first results) from the
    steady rate; both are shown.

Also printed: where one image's time goes in plain code (listing, read, decode, detect, model,
row assembly, part write; ms per image, one thread), the figures behind RESULTS.md's breakdown.
The ratio (score's steady rate / the plain loop, and the same with start-up counted) comes last.
"""

from __future__ import annotations

import argparse
import os
import re
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


def plain_batched(predictor, paths: list[str], mode: str, batch: int = 256) -> tuple[float, int]:
    """What a user writes without Ray: read, decode, (detect, crop), predict in batches of 256."""
    from fer_ray.inference.crops import DetectConfig, crop_faces, read_image

    config = DetectConfig(mode=mode, image_size=predictor.image_size)
    detector = config.make_detector()
    t0 = time.perf_counter()
    crops, faces = [], 0
    for path in paths:
        crops += [crop for _, crop in crop_faces(read_image(path, config.max_pixels), config, detector)]
        if len(crops) >= batch:
            predictor.predict_proba(np.stack(crops[:batch]))
            faces, crops = faces + batch, crops[batch:]
    if crops:
        predictor.predict_proba(np.stack(crops))
    return time.perf_counter() - t0, faces + len(crops)


def breakdown(predictor, input: str, paths: list[str], mode: str) -> dict[str, float]:
    """Milliseconds per image of each step, run one after another in this process, 1 thread."""
    from fer_ray.data.files import read_image_file
    from fer_ray.data.preprocess import decode_grey
    from fer_ray.inference.blocks import list_inputs
    from fer_ray.inference.crops import LANDMARK_COLUMNS, DetectConfig, crop_faces, scored_table
    from fer_ray.inference.tables import write_table

    set_threads(1)
    config = DetectConfig(mode=mode, image_size=predictor.image_size)
    detector = config.make_detector()
    n, ms = len(paths), {}

    def timed(name, fn):
        t0 = time.perf_counter()
        out = fn()
        ms[name] = (time.perf_counter() - t0) * 1000 / n
        return out

    timed("listing", lambda: sum(1 for _ in list_inputs(input)))
    raw = timed("read", lambda: [read_image_file(p, config.max_pixels) for p in paths])
    greys = timed("decode", lambda: [decode_grey(b) for b in raw])
    crops = timed("detect + crop" if mode != "none" else "crop", lambda: [
        c for g in greys for _, c in crop_faces(g, config, detector)])
    probs = timed("model", lambda: np.concatenate([predictor.predict_proba(np.stack(crops[i : i + 256]))
                                                   for i in range(0, len(crops), 256)]) if crops else None)
    k = len(crops)
    rows = {"path": np.array([paths[min(i, n - 1)] for i in range(k)], object), "face": np.arange(k),
            "frame": np.full(k, -1), "time": np.full(k, np.nan),
            "x": np.zeros(k), "y": np.zeros(k), "w": np.full(k, 48), "h": np.full(k, 48),
            "error": np.array([""] * k, object), "points": np.full((k, 1 + len(LANDMARK_COLUMNS)), np.nan)}
    table = timed("row assembly", lambda: scored_table(rows, probs if probs is not None else np.zeros((0, 7))))
    with tempfile.TemporaryDirectory() as tmp:
        timed("part write", lambda: write_table(table, Path(tmp) / "part.parquet"))
    return ms


def score_cli(artifact: str, input: str, out: Path, mode: str, num_cpus: int, root: Path = ROOT) -> dict:
    """``fer-ray score`` in a fresh process: wall time, and the start-up/steady split it reports.
    ``root``: the checkout whose fer_ray runs (another commit's, to time it before a change)."""
    cmd = [sys.executable, "-m", "fer_ray.cli", "score", "--artifact", artifact, "--input", input,
           "--output", str(out), "--faces", mode, "--num-cpus", str(num_cpus), "--overwrite"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=root, capture_output=True, text=True, env=os.environ | {"PYTHONPATH": str(root)})
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"fer-ray score failed:\n{proc.stderr[-3000:]}")
    line = [x for x in proc.stdout.splitlines() + proc.stderr.splitlines() if " files, " in x][-1]
    print("   ", line)
    startup = re.search(r"start-up ([0-9.]+) s", line)  # older versions print no start-up/steady split
    steady = re.search(r"then (\d+) files in ([0-9.]+) s", line)
    return {"wall": wall, "startup": float(startup.group(1)) if startup else float("nan"),
            "steady_rate": int(steady.group(1)) / float(steady.group(2)) if steady else float("nan")}


def bench(name: str, artifact: str, input: str, paths: list[str], mode: str, work: Path,
          num_cpus: int, root: Path = ROOT) -> dict:
    from fer_ray.inference.predictor import Predictor

    for path in paths:  # warm the page cache for every contender
        with open(path, "rb") as fh:
            fh.read()
    n = len(paths)
    print(f"\n== {name}: {n} images, --faces {mode}, {num_cpus} CPU(s)")
    predictor = Predictor(artifact, device="cpu")
    # The plain loop's threads: the faster of 1 and 2 on a sample (two OpenMP threads on two
    # busy cores can be many times slower than one).
    sample = paths[: max(1, min(len(paths), 3000 if mode == "none" else 40))]
    trial = {}
    for threads in sorted({1, min(2, num_cpus)}):
        set_threads(threads)
        plain_batched(predictor, sample[:64], mode)  # warm-up: first calls pay one-off costs
        trial[threads] = plain_batched(predictor, sample, mode)[0]
    threads = min(trial, key=trial.get)
    print("   thread trial: " + ", ".join(f"{t} thread(s) {len(sample) / s:.0f} img/s" for t, s in trial.items()))
    set_threads(threads)
    plain, faces = plain_batched(predictor, paths, mode)
    print(f"   plain batched loop, {threads} thread(s): {plain:.1f} s, {n / plain:.0f} img/s, {faces} faces")
    cli = score_cli(artifact, input, work / f"{name}-{num_cpus}.parquet", mode, num_cpus, root)
    print(f"   fer-ray score: {cli['wall']:.1f} s wall ({n / cli['wall']:.0f} img/s), start-up "
          f"{cli['startup']:.1f} s, steady {cli['steady_rate']:.0f} img/s")
    return {"n": n, "threads": threads, "plain": plain, "faces": faces, **cli}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--artifact", default=None, help="default: the model that ships with fer-ray")
    parser.add_argument("--fer", default=str(DEFAULT_FER), help="folder of FER2013 JPEGs (searched recursively)")
    parser.add_argument("--limit", type=int, default=None, help="FER2013: only the first N files")
    parser.add_argument("--photos", type=int, default=200, help="generated 640x480 photos")
    parser.add_argument("--photo-dir", default=str(ROOT / "runs" / "bench" / "photos"))
    parser.add_argument("--num-cpus", type=int, nargs="+", default=[2], help="e.g. 2 1: each CPU count in turn")
    parser.add_argument("--skip-fer", action="store_true")
    parser.add_argument("--skip-photos", action="store_true")
    parser.add_argument("--score-root", default=str(ROOT),
                        help="checkout whose `fer-ray score` is timed (e.g. a worktree of an older commit)")
    args = parser.parse_args(argv)
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")

    from fer_ray.data.files import files_under
    from fer_ray.inference.predictor import Predictor
    from fer_ray.pretrained import default_artifact

    artifact = args.artifact or str(default_artifact())
    print(f"load average at start: {os.getloadavg()}; artifact {artifact}")
    work = Path(tempfile.mkdtemp(prefix="bench_score_"))
    inputs = []
    if not args.skip_fer:
        fer = Path(work / "fer")
        paths = [str(e.path) for e in files_under(args.fer)][: args.limit]
        fer.mkdir()
        for i, p in enumerate(paths):  # one flat folder of links: the command scores exactly these files
            os.symlink(p, fer / f"{i:05d}{Path(p).suffix}")
        inputs.append(("FER2013 crops", str(fer), sorted(map(str, fer.iterdir())), "none"))
    if not args.skip_photos:
        inputs.append(("photos", args.photo_dir, make_photos(Path(args.photo_dir), args.photos), "all"))
    results = []
    try:
        for label, input, paths, mode in inputs:
            ms = breakdown(Predictor(artifact, device="cpu"), input, paths, mode)
            print(f"\n{label}: ms per image, one thread: " + ", ".join(f"{k} {v:.3f}" for k, v in ms.items()))
            for cpus in args.num_cpus:
                results.append((label, cpus, bench(label.split()[0].lower(), artifact, input, paths, mode, work, cpus,
                                                   Path(args.score_root))))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"\nload average at end: {os.getloadavg()}")
    print("\n| input | CPUs | plain batched loop img/s | `fer-ray score` steady img/s | start-up s | command wall img/s "
          "| **steady / plain** | wall / plain |\n|---|---:|---:|---:|---:|---:|---:|---:|")
    for label, cpus, r in results:
        plain_rate, wall_rate = r["n"] / r["plain"], r["n"] / r["wall"]
        print(f"| {label} ({r['n']}) | {cpus} | {plain_rate:,.0f} ({r['threads']} thr) | {r['steady_rate']:,.0f} | "
              f"{r['startup']:.1f} | {wall_rate:,.0f} | **{r['steady_rate'] / plain_rate:.2f}x** | "
              f"{wall_rate / plain_rate:.2f}x |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
