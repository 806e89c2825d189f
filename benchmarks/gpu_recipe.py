"""Train a CNN on real FER2013 on one GPU without Ray; report accuracy, time and throughput.

Protocol: train on FER2013's Training usage (the 28,709 images of ``train/``), evaluate on
PublicTest (the 3,589 images of ``test/``, FER2013's usual validation set); PrivateTest is
withheld. Same ``Run``, augmentation and metrics as ``fer-ray train`` (Ray Train adds only
the distribution), so the figures carry over. Two measurements:

1. throughput: training img/s of the plain loop at a fixed batch (bf16 on CUDA);
2. the recipe: full training, val accuracy each epoch, final accuracy with and without
   flip test-time augmentation, wall time.

``--compile MODE`` runs the training steps through ``torch.compile`` (the weights and the
evaluation stay those of the plain module): at 48 px a VGG16 step is a few hundred small
kernels, so launch overhead, not GPU arithmetic, bounds eager throughput. ``results.json``
is rewritten after every epoch, so a run stopped by a time limit still leaves its history.

    python benchmarks/gpu_recipe.py --data ../shared/data/fer2013 --out results/
    python benchmarks/gpu_recipe.py --data ../shared/data/fer2013 --pack .gpu/fer2013.npz  # to carry
"""

from __future__ import annotations

import argparse
import json
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch

from fer_ray.data.preprocess import decode_grey, resize
from fer_ray.data.sources import FolderSource
from fer_ray.evaluation.metrics import classification_metrics
from fer_ray.inference.predictor import pick_device
from fer_ray.models import build_model, parameter_counts
from fer_ray.models.forward import run_batches
from fer_ray.models.inputs import Normalization
from fer_ray.training.config import Augment, Recipe
from fer_ray.training.loop import Run, epoch_line, make_optimizer, make_scheduler, to_device, train_epoch


def load_folders(root: str, workers: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Decode the Kaggle layout (or its ``--pack`` file) with the catalog's own decoder."""
    if root.endswith(".npz"):
        packed = dict(np.load(root))  # read each array once (NpzFile re-reads per access)
        ends = packed["ends"]
        starts = np.concatenate([[0], ends[:-1]])
        data = packed["bytes"].tobytes()
        blobs = [data[a:b] for a, b in zip(starts, ends)]
        labels, splits = packed["labels"], packed["splits"].astype(str)
    else:
        items = FolderSource(root).plan()
        blobs = [Path(it["path"]).read_bytes() for it in items]
        labels = np.array([it["label"] for it in items])
        splits = np.array([it["split"] for it in items])
    with ProcessPoolExecutor(workers) as pool:
        images = np.stack(list(pool.map(_decode48, blobs, chunksize=256)))
    return {s: (images[splits == s], labels[splits == s]) for s in ("train", "test")}


def _decode48(blob: bytes) -> np.ndarray:
    return resize(decode_grey(blob), 48)


def pack(root: str, output: str) -> None:
    """All JPEG bytes of a Kaggle-layout folder in one .npz (a GPU machine gets one file)."""
    items = FolderSource(root).plan()
    blobs = [Path(it["path"]).read_bytes() for it in items]
    np.savez(output, bytes=np.frombuffer(b"".join(blobs), np.uint8), ends=np.cumsum([len(b) for b in blobs]),
             labels=np.array([it["label"] for it in items]), splits=np.array([it["split"] for it in items]))


def compiled(model: torch.nn.Module, mode: str) -> torch.nn.Module:
    """``model`` itself for ``none``, else a ``torch.compile`` wrapper sharing its parameters."""
    return model if mode == "none" else torch.compile(model, mode=None if mode == "default" else mode)


def throughput(arch: str, images, labels, device, batch_size: int, steps: int, norm,
               compile_mode: str = "none") -> float:
    """Training img/s of the plain loop on ``steps`` batches after a warm-up (which also
    compiles, with ``compile_mode``)."""
    recipe = Recipe(epochs=1, batch_size=batch_size)
    steps = min(steps, len(images) // batch_size)
    model = build_model(arch, 7, 48).to(device).to(memory_format=torch.channels_last)
    net = compiled(model, compile_mode)
    opt = make_optimizer(model.parameters(), recipe)
    sched = make_scheduler(opt, recipe, steps * 2)
    gen = torch.Generator(device=device)
    gen.manual_seed(0)
    train_epoch(net, images, labels, opt, sched, recipe, 48, norm, gen, min(20, steps))  # warm-up
    stats = train_epoch(net, images, labels, opt, sched, recipe, 48, norm, gen, steps)
    return stats["train_images"] / stats["train_seconds"]


COMPILE_MODES = ("none", "default", "reduce-overhead", "max-autotune-no-cudagraphs")


def train_recipe(args, train, val, norm, device, results: dict, out: Path) -> None:
    """The full recipe; ``results["recipe"]`` is rewritten after every epoch and at the end."""
    augment = Augment(rotate_deg=args.rotate, scale=args.scale, translate_px=args.translate, erase_p=args.erase_p)
    recipe = Recipe(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay,
                    label_smoothing=args.label_smoothing, augment=augment)
    torch.manual_seed(recipe.seed)
    model = build_model(args.model, 7, 48).to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    run = Run(model, recipe, 48, norm, train, val, net=compiled(model, args.compile))
    summary = {"model": args.model, "parameters": parameter_counts(model)["total"], "compile": args.compile,
               "recipe": recipe.model_dump()}
    results["recipe"] = {**summary, "history": run.history}
    t1 = time.time()
    while not run.done:
        print(epoch_line(run.epoch(), recipe.epochs), flush=True)
        results["recipe"]["train_seconds_so_far"] = round(time.time() - t1, 1)
        (out / "results.json").write_text(json.dumps(results, indent=2))
        if args.time_limit and time.time() - t1 > args.time_limit:
            print(f"time limit {args.time_limit:.0f} s reached after epoch {len(run.history)}", flush=True)
            break
    train_seconds = time.time() - t1
    metrics = {}
    for tta in ("none", "flip"):
        probs = run_batches(model, val[0], 48, norm, device, 1024, tta=tta, channels_last=device.type == "cuda")
        metrics[tta] = classification_metrics(val[1].cpu().numpy(), probs.argmax(1).numpy())
    results["recipe"] = {
        **summary, "epochs_done": len(run.history), "train_seconds": round(train_seconds, 1),
        "val_accuracy": round(metrics["none"]["accuracy"], 4),
        "val_accuracy_flip_tta": round(metrics["flip"]["accuracy"], 4),
        "val_macro_f1": round(metrics["none"]["macro"]["f1"], 4),
        "history": run.history,
    }
    (out / "results.json").write_text(json.dumps(results, indent=2))
    print(json.dumps({k: v for k, v in results["recipe"].items() if k != "history"}), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="../shared/data/fer2013")
    ap.add_argument("--out", default="gpu-results")
    ap.add_argument("--model", default="vgg16_bn")
    ap.add_argument("--epochs", type=int, default=100)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--lr", type=float, default=0.05)
    ap.add_argument("--weight-decay", type=float, default=5e-4)
    ap.add_argument("--label-smoothing", type=float, default=0.1)
    ap.add_argument("--rotate", type=float, default=10.0, help="max rotation, degrees")
    ap.add_argument("--scale", type=float, default=0.10, help="max relative scale change")
    ap.add_argument("--translate", type=float, default=4.0, help="max shift, pixels")
    ap.add_argument("--erase-p", type=float, default=0.0, help="random-erasing probability")
    ap.add_argument("--compile", default="none", choices=COMPILE_MODES, help="torch.compile mode for the recipe")
    ap.add_argument("--time-limit", type=float, default=0,
                    help="stop training after the epoch that passes this many seconds (0: none); "
                         "the model is still evaluated and the stop recorded")
    ap.add_argument("--throughput-compile", nargs="*", default=["none"], choices=COMPILE_MODES,
                    help="measure training img/s with each of these torch.compile modes (none: skip)")
    ap.add_argument("--throughput-batch", type=int, default=256)
    ap.add_argument("--throughput-steps", type=int, default=200)
    ap.add_argument("--skip-recipe", action="store_true", help="only measure throughput")
    ap.add_argument("--limit", type=int, default=0, help="use only this many training images (smoke test)")
    ap.add_argument("--workers", type=int, default=8)
    ap.add_argument("--pack", metavar="OUT.npz", help="only pack --data into one .npz file and exit")
    args = ap.parse_args()
    if args.pack:
        pack(args.data, args.pack)
        return

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    device = pick_device()
    t0 = time.time()
    data = load_folders(args.data, args.workers)
    train_x, train_y = data["train"]
    if args.limit:  # a random subset: the folders come sorted by emotion
        keep = np.random.default_rng(0).permutation(len(train_x))[: args.limit]
        train_x, train_y = train_x[keep], train_y[keep]
    val_x, val_y = data["test"]
    norm = Normalization(float(train_x.mean() / 255.0), float(train_x.std() / 255.0))
    results = {"device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
               "torch": torch.__version__, "train_images": len(train_x), "val_images": len(val_x),
               "load_seconds": round(time.time() - t0, 1), "protocol": "train: FER2013 Training (train/); "
               "val: PublicTest (test/); accuracy = micro P = micro R", "throughput": []}
    print(json.dumps(results), flush=True)
    train = to_device(train_x, train_y, device)
    val = to_device(val_x, val_y, device)

    for mode in args.throughput_compile:
        t1 = time.time()
        ips = throughput(args.model, *train, device, args.throughput_batch, args.throughput_steps, norm, mode)
        row = {"model": args.model, "batch": args.throughput_batch, "bf16": device.type == "cuda",
               "compile": mode, "train_images_per_s": round(ips), "seconds_with_compile": round(time.time() - t1, 1)}
        results["throughput"].append(row)
        print(json.dumps(row), flush=True)
        (out / "results.json").write_text(json.dumps(results, indent=2))
    if not args.skip_recipe:
        train_recipe(args, train, val, norm, device, results, out)


if __name__ == "__main__":
    main()
