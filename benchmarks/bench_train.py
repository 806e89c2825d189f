"""Training throughput through Ray Train (1 worker) against the same loop without Ray.

Both sides run ``training.loop.Run`` on the same catalog, model, batch size and precision;
each trains ``--epochs`` epochs and the last epoch's training img/s is compared (the first
epoch includes one-off warm-up). Ray's whole-run wall time, start-up included, is printed
too, since that is what a user waits for.

    python benchmarks/bench_train.py [--model small_cnn] [--batch-size 128] [--gpu]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from fer_ray.data.ingest import build_catalog
from fer_ray.data.sources import make_source
from fer_ray.runtime import init_ray
from fer_ray.training.config import Recipe, TrainConfig
from fer_ray.training.local import fit_local
from fer_ray.training.trainer import train


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--catalog", help="catalog to train on (default: a synthetic one is built)")
    ap.add_argument("--count", type=int, default=3500, help="synthetic faces when no --catalog")
    ap.add_argument("--model", default="small_cnn")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--cpus", type=int, default=2, help="CPU threads for both sides (Ray worker CPUs)")
    ap.add_argument("--gpu", action="store_true")
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench-train-"))
    init_ray(num_cpus=None if args.gpu else args.cpus)
    catalog = args.catalog or str(work / "catalog")
    if not args.catalog:
        build_catalog(make_source("synthetic", None, count=args.count), catalog)
    recipe = Recipe(epochs=args.epochs, batch_size=args.batch_size)
    device = "cuda" if args.gpu else "cpu"

    torch.set_num_threads(args.cpus)
    t0 = time.perf_counter()
    _, plain_history, _ = fit_local(catalog, args.model, recipe, device=device)
    plain_wall = time.perf_counter() - t0

    t0 = time.perf_counter()
    summary = train(TrainConfig(catalog=catalog, run_dir=str(work / "run"), model=args.model, recipe=recipe,
                                workers=1, gpu=args.gpu, cpus_per_worker=args.cpus))
    ray_wall = time.perf_counter() - t0

    plain_ips = plain_history[-1]["images_per_s"]
    ray_ips = summary["history"][-1]["images_per_s"]
    print(f"model {args.model}, batch {args.batch_size}, {device}, {args.cpus} CPU threads, "
          f"{summary['history'][-1]['epoch']} epochs of {plain_history[-1]['epoch_seconds'] * plain_ips:.0f} images")
    print(f"plain loop     : {plain_ips:9.0f} img/s (last epoch)   whole run {plain_wall:6.1f} s")
    print(f"Ray Train (1w) : {ray_ips:9.0f} img/s (last epoch)   whole run {ray_wall:6.1f} s "
          "(Ray Data read, worker start, checkpoints, final evaluation included)")
    print(f"ratio Ray/plain: {ray_ips / plain_ips:.2f}")


if __name__ == "__main__":
    main()
