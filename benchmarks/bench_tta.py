"""Test-time augmentation: accuracy and cost of each mode where users score.

    .venv/bin/python benchmarks/bench_tta.py [--artifact DIR] [--fer ../shared/data/fer2013] [--threads 1]

Every face of FER2013's **PublicTest** (the shared ``test/`` folder, 3,589 faces, labels from
the folder names) through one ``Predictor`` (the shipped default model unless ``--artifact``),
once per mode of ``--tta`` (``none``, ``flip``, ``tencrop``): accuracy (micro), macro F1, and the
model's crops per second on ``--threads`` torch threads (the best of 3 passes over all faces,
decoding excluded), so the cost each mode adds to ``predict``, ``score`` and ``serve`` is known.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import cv2
import numpy as np
import torch
from sklearn.metrics import f1_score

from fer_ray.choices import TTA_MODES
from fer_ray.emotions import EMOTIONS
from fer_ray.inference.predictor import Predictor
from fer_ray.pretrained import default_artifact

ROOT = Path(__file__).resolve().parents[1]


def public_test(fer: Path) -> tuple[np.ndarray, np.ndarray]:
    """PublicTest's faces (N, 48, 48) uint8 and labels (EMOTIONS indices), in file-name order."""
    files = sorted((fer / "test").rglob("*.jpg"))
    if not files:
        raise SystemExit(f"no FER2013 PublicTest faces under {fer / 'test'} (see shared/data/README.md)")
    faces = np.stack([cv2.imread(str(f), cv2.IMREAD_GRAYSCALE) for f in files])
    return faces, np.array([EMOTIONS.index(f.parent.name) for f in files])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--artifact", default=str(default_artifact()))
    parser.add_argument("--fer", type=Path, default=ROOT.parent / "shared" / "data" / "fer2013")
    parser.add_argument("--threads", type=int, default=1, help="torch threads while timing")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    faces, labels = public_test(args.fer)
    predictor = Predictor(args.artifact, device="cpu")
    print(f"{Path(args.artifact).name} on PublicTest ({len(faces)} faces), torch threads {args.threads}")
    print("| --tta | accuracy | macro F1 | crops/s | cost per face vs none |")
    print("|---|---:|---:|---:|---:|")
    base = None
    for mode in TTA_MODES:
        best = float("inf")
        for _ in range(3):
            t0 = time.perf_counter()
            probs = predictor.predict_proba(faces, tta=mode)
            best = min(best, time.perf_counter() - t0)
        guess = probs.argmax(axis=1)
        rate = len(faces) / best
        base = base or rate
        print(f"| {mode} | {(guess == labels).mean():.4f} | {f1_score(labels, guess, average='macro'):.4f} "
              f"| {rate:,.0f} | {base / rate:.1f}x |")


if __name__ == "__main__":
    main()
