"""GPU check of the scoring/serving model path, without Ray (the device machine has none).

    python benchmarks/gpu_inference.py --artifact runs/dev/small_cnn --out $OUT

1. ``FaceScorer`` (the actor class ``fer-ray score --gpu`` runs) on CUDA agrees with the same
   class on the CPU: same rows, probabilities within bf16 tolerance, same argmax.
2. What batching buys per image on the GPU: ``Predictor.predict_proba`` on 1..256 faces for
   the given artifact and for an untrained VGG16 built here with the same metadata (speed
   does not depend on the weights). This is the model-side reason for ``@serve.batch``.

Writes gpu_inference.json to --out and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from fer_ray.artifacts import read_meta, save_cnn
from fer_ray.data.preprocess import encode_png
from fer_ray.data.synthetic import synthetic_faces
from fer_ray.inference.crops import DetectConfig, FaceScorer, detect_batch
from fer_ray.inference.predictor import Predictor
from fer_ray.models import build_model, parameter_counts

SIZES = (1, 8, 32, 128, 256)


def untrained_like(artifact: str, folder: Path, architecture: str = "vgg16") -> str:
    """An untrained ``architecture`` artifact with the given artifact's image size and
    normalisation: for timing only (speed does not depend on the weights)."""
    meta = {k: v for k, v in read_meta(artifact).items()
            if k not in ("format", "kind", "labels", "created", "weights", "weights_sha256")}
    model = build_model(architecture, meta["num_classes"], meta["input_size"], meta["in_channels"])
    meta.update(architecture=architecture, parameters=parameter_counts(model), metrics={}, untrained=True)
    return str(save_cnn(str(folder / f"{architecture}_untrained"), model, meta))


def per_batch_ms(predictor: Predictor, faces: np.ndarray, size: int, reps: int = 20) -> float:
    batch = faces[:size]
    for _ in range(3):
        predictor.predict_proba(batch)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        predictor.predict_proba(batch)  # returns numpy: the copy back synchronises
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--artifact", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--device", default="cuda", help="cpu only to smoke-test this script")
    args = parser.parse_args()
    assert args.device == "cpu" or torch.cuda.is_available(), "no CUDA device"
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp())
    report = {"device": torch.cuda.get_device_name(0) if args.device == "cuda" else "cpu",
              "torch": torch.__version__}

    faces = synthetic_faces(np.arange(256) % 7, size=48, seed=5)
    paths = []
    for i, face in enumerate(faces):
        path = work / f"f{i}.png"
        path.write_bytes(encode_png(face))
        paths.append(str(path))
    paths.append(str(work / "missing.png"))  # an error row must pass through untouched
    batch = detect_batch({"path": np.array(paths, dtype=object)}, DetectConfig(mode="none"))
    cpu = FaceScorer(args.artifact, device="cpu")(dict(batch))  # Arrow tables: null where no face
    gpu = FaceScorer(args.artifact, device=args.device)(dict(batch))
    names = [k for k in cpu.column_names if k not in ("path", "face", "n_faces", "x", "y", "w", "h", "emotion", "error")]
    p_cpu = np.stack([cpu[k].to_numpy(zero_copy_only=False) for k in names], axis=1)  # null -> NaN
    p_gpu = np.stack([gpu[k].to_numpy(zero_copy_only=False) for k in names], axis=1)
    ok = ~np.isnan(p_cpu[:, 0])
    report["agreement"] = {
        "rows": int(len(ok)), "scored": int(ok.sum()), "error_rows_nan_on_gpu": bool(np.isnan(p_gpu[~ok]).all()),
        "max_abs_diff": float(np.abs(p_cpu[ok] - p_gpu[ok]).max()),
        "argmax_agree": float((p_cpu[ok].argmax(1) == p_gpu[ok].argmax(1)).mean()),
        "emotion_equal": float(np.mean(np.array(cpu["emotion"].to_pylist())[ok] == np.array(gpu["emotion"].to_pylist())[ok])),
    }
    print(json.dumps(report["agreement"]))

    report["batching"] = {}
    for name, path in (("given", args.artifact), ("vgg16_untrained", untrained_like(args.artifact, work))):
        predictor = Predictor(path, device=args.device)
        arch = predictor.meta["architecture"]
        rows = {size: per_batch_ms(predictor, faces, size) for size in SIZES}
        report["batching"][arch] = {str(k): round(v, 3) for k, v in rows.items()}
        print(f"\n{arch} on {report['device']}\n| faces per call | ms per call | ms per face | speed-up per face vs 1 |")
        print("|---:|---:|---:|---:|")
        for size, ms in rows.items():
            print(f"| {size} | {ms:.2f} | {ms / size:.3f} | {rows[1] / (ms / size):.1f}x |")
    (out / "gpu_inference.json").write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
