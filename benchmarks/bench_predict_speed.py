"""Steady crops/s of CNN artifacts (folders or shipped names) through ``Predictor`` on the CPU,
measured back to back (A B A B A B) on 2,048 random 48 px crops after a warm-up batch; the median
of three. ``fer-ray models`` measures the shipped models alone; this compares a candidate with them.

    .venv/bin/python benchmarks/bench_predict_speed.py fer2013-fast_cnn RUN/artifact
"""

import sys
import time

import numpy as np

from fer_ray.inference.predictor import Predictor
from fer_ray.pretrained import shipped_or_path

faces = np.random.default_rng(0).integers(0, 256, (2048, 48, 48), dtype=np.uint8)
preds = {a: Predictor(shipped_or_path(a), device="cpu") for a in sys.argv[1:]}
for p in preds.values():
    p.predict_proba(faces[:256])
rates = {a: [] for a in preds}
for _ in range(3):
    for a, p in preds.items():
        start = time.perf_counter()
        p.predict_proba(faces)
        rates[a].append(len(faces) / (time.perf_counter() - start))
for a, r in rates.items():
    print(f"{a}: median {np.median(r):.0f} crops/s ({', '.join(f'{x:.0f}' for x in r)})")
