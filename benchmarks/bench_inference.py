"""Per-face CPU inference cost of a CNN artifact under each way of running it (issue 16, item 3).

    .venv/bin/python benchmarks/bench_inference.py [--artifact DIR] [--faces 4096] [--threads 1 2]

Faces: the first ``--faces`` PublicTest crops of ../shared/data/fer2013 (synthetic faces where
that is absent), already at the artifact's size, uint8. Every variant takes them through the
same ``to_model_input`` and reports faces/s at batch 256, and how far its probabilities are
from plain fp32 eager (largest absolute difference; share of faces whose argmax changes):

  fp32            eager PyTorch, channels_last, fp32
  bf16            eager PyTorch, channels_last, bf16 autocast (what ``Predictor`` runs on CPUs
                  with native bf16)
  bf16+fold       the same with every batch norm folded into its convolution (torch.fx fuse)
  jit-fp32        TorchScript trace + freeze + optimize_for_inference (oneDNN fusions), fp32
  compile-bf16    torch.compile (inductor, freezing) with bf16 autocast; its compile time shown
  onnxruntime     ONNX export run by ONNX Runtime's CPU provider, fp32 (only if installed)
"""

from __future__ import annotations

import argparse
import copy
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from fer_ray.artifacts import load_cnn
from fer_ray.models.forward import autocast
from fer_ray.models.inputs import Normalization, to_model_input

ROOT = Path(__file__).resolve().parents[1]


def faces(size: int, count: int) -> np.ndarray:
    from fer_ray.data.preprocess import decode_grey, resize

    test = ROOT.parent / "shared" / "data" / "fer2013" / "test"
    if test.is_dir():
        paths = sorted(test.rglob("*.jpg"))[:count]
        return np.stack([resize(decode_grey(p.read_bytes()), size) for p in paths])
    from fer_ray.data.synthetic import synthetic_faces

    return synthetic_faces(np.arange(count) % 7, size=size, seed=0)


def variants(model: torch.nn.Module, example: torch.Tensor) -> dict:
    """name -> (callable on a model-input batch returning logits, seconds it took to build)."""
    cpu = torch.device("cpu")
    out = {}

    def eager(m, amp):
        def run(x):
            with autocast(cpu, amp):
                return m(x).float()
        return run

    out["fp32"] = (eager(model, False), 0.0)
    out["bf16"] = (eager(model, True), 0.0)
    t0 = time.perf_counter()
    from torch.fx.experimental.optimization import fuse

    folded = fuse(copy.deepcopy(model)).to(memory_format=torch.channels_last)
    out["bf16+fold"] = (eager(folded, True), time.perf_counter() - t0)
    t0 = time.perf_counter()
    with torch.no_grad():
        traced = torch.jit.optimize_for_inference(torch.jit.freeze(torch.jit.trace(copy.deepcopy(model), example)))
        traced(example)
    out["jit-fp32"] = (lambda x: traced(x).float(), time.perf_counter() - t0)
    t0 = time.perf_counter()
    import torch._inductor.config as inductor

    inductor.freezing = True
    compiled = torch.compile(copy.deepcopy(model))
    with torch.no_grad(), autocast(cpu, True):
        compiled(example)
    out["compile-bf16"] = (eager(compiled, True), time.perf_counter() - t0)
    try:
        import onnxruntime as ort
    except ImportError:
        print("onnxruntime not installed: skipped")
        return out
    t0 = time.perf_counter()
    path = os.path.join(tempfile.mkdtemp(), "model.onnx")
    torch.onnx.export(copy.deepcopy(model), (example,), path, input_names=["x"], output_names=["y"],
                      dynamic_axes={"x": {0: "n"}}, dynamo=False)
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    out["onnxruntime"] = (lambda x: torch.from_numpy(session.run(None, {"x": x.contiguous().numpy()})[0]),
                          time.perf_counter() - t0)
    return out


@torch.no_grad()
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--artifact", default=None, help="default: the model that ships with fer-ray")
    parser.add_argument("--faces", type=int, default=4096)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--batch", type=int, default=256)
    args = parser.parse_args()
    from fer_ray.pretrained import default_artifact

    model, meta = load_cnn(args.artifact or default_artifact())
    model = model.to(memory_format=torch.channels_last)
    norm = Normalization(**meta["normalization"])
    images = torch.from_numpy(faces(meta["image_size"], args.faces))
    batches = [to_model_input(images[i : i + args.batch], meta["input_size"], norm, channels_last=True)
               for i in range(0, len(images), args.batch)]
    print(f"{meta['architecture']}, {len(images)} faces, batch {args.batch}")
    rows = []
    for threads in args.threads:
        torch.set_num_threads(threads)
        reference = None
        for name, (run, build) in variants(model, batches[0]).items():
            run(batches[0])  # warm-up
            t0 = time.perf_counter()
            probs = torch.cat([torch.softmax(run(x), 1) for x in batches])
            seconds = time.perf_counter() - t0
            reference = probs if reference is None else reference
            diff = float((probs - reference).abs().max())
            flips = float((probs.argmax(1) != reference.argmax(1)).float().mean())
            rows.append((threads, name, len(images) / seconds, build, diff, flips))
            print(f"  {threads} thread(s) {name:13s} {len(images) / seconds:8.0f} faces/s  build {build:5.1f} s  "
                  f"max |dp| {diff:.4f}  argmax changed {flips:.2%}", flush=True)
    print("\n| threads | variant | faces/s | build s | max abs prob diff vs fp32 | argmax changed |")
    print("|---:|---|---:|---:|---:|---:|")
    for threads, name, rate, build, diff, flips in rows:
        print(f"| {threads} | {name} | {rate:,.0f} | {build:.1f} | {diff:.4f} | {flips:.2%} |")


if __name__ == "__main__":
    main()
