"""Featurize a catalog split through Ray Data (actor pool) and through a plain loop; print img/s.

    .venv/bin/python benchmarks/bench_featurize.py --catalog /tmp/fer-cat [--split train]
        [--members ART1 ART2 ...] [--batch-size 256] [--actors N]

Both paths run the same ``MemberFeatures`` callable (each member's penultimate features and
probabilities) on the same faces, read the split from Parquet and write the features as
Parquet, so they do the same work. Without ``--members``, two small_cnn networks with random
weights stand in for trained ones (throughput does not depend on the weights' values).
Without ``--catalog``, a 3,500-face synthetic catalog is built first.

Prints images/s for each and the ratio (Ray / plain), Ray start-up timed separately.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq


def stand_in_members(catalog: str, out: Path, count: int = 2) -> list[str]:
    """small_cnn artifacts with random weights and the catalog's normalisation."""
    import torch

    from fer_ray.artifacts import save_cnn
    from fer_ray.data.catalog import Catalog
    from fer_ray.models import build_model, parameter_counts
    from fer_ray.training.local import artifact_meta
    from fer_ray.training.config import Recipe

    catalog = Catalog.open(catalog)
    paths = []
    for i in range(count):
        torch.manual_seed(i)
        model = build_model("small_cnn", 7, catalog.image_size)
        meta = artifact_meta("small_cnn", catalog.image_size, catalog, catalog.normalization, Recipe(),
                             parameter_counts(model), note="random weights: featurize benchmark stand-in")
        paths.append(str(save_cnn(str(out / f"member{i}"), model, meta)))
    return paths


def plain_loop(members: list[str], catalog: str, split: str, batch_size: int, output: Path) -> int:
    """The baseline: one process reads the split, runs the batches in order, writes one file."""
    from fer_ray.data.catalog import Catalog
    from fer_ray.ensemble.stack import MemberFeatures

    data = Catalog.open(catalog).load(split, columns=("image", "label", "id"))
    featurizer = MemberFeatures(members, device="auto", batch_size=batch_size)
    feats, probs = [], []
    for start in range(0, len(data["label"]), batch_size):
        out = featurizer({"image": data["image"][start:start + batch_size]})
        feats.append(out["features"])
        probs.append(out["probs"].reshape(len(out["probs"]), -1))
    feats, probs = np.concatenate(feats), np.concatenate(probs)
    table = pa.table({"id": data["id"], "label": data["label"],
                      "features": pa.FixedSizeListArray.from_arrays(pa.array(feats.ravel()), feats.shape[1]),
                      "probs": pa.FixedSizeListArray.from_arrays(pa.array(probs.ravel()), probs.shape[1])})
    pq.write_table(table, output)
    return len(feats)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--catalog", help="catalog directory (default: build a synthetic one)")
    parser.add_argument("--split", default="train")
    parser.add_argument("--members", nargs="*", help="CNN artifacts (default: two random small_cnn)")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--actors", type=int, default=None, help="featurizer actors (default: GPUs, or CPUs)")
    parser.add_argument("--num-cpus", type=int, default=None, help="local Ray CPUs (default: all)")
    args = parser.parse_args(argv)
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")

    import torch

    from fer_ray.ensemble.features import featurize_split
    from fer_ray.ensemble.stack import read_features
    from fer_ray.runtime import init_ray

    with tempfile.TemporaryDirectory(prefix="bench-featurize-") as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        init_ray(args.num_cpus)
        start_s = time.perf_counter() - t0
        catalog = args.catalog
        if catalog is None:
            from fer_ray.data.ingest import build_catalog
            from fer_ray.data.sources import make_source

            catalog = str(tmp / "synthetic")
            build_catalog(make_source("synthetic", None, count=3500, seed=0), catalog)
        members = args.members or stand_in_members(catalog, tmp)
        print(f"featurizing split {args.split!r} of {catalog} with {len(members)} members, batch {args.batch_size}, "
              f"{os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}, "
              f"{'GPU' if torch.cuda.is_available() else 'no GPU'}")

        t0 = time.perf_counter()
        n_plain = plain_loop(members, catalog, args.split, args.batch_size, tmp / "plain.parquet")
        plain_s = time.perf_counter() - t0

        t0 = time.perf_counter()
        out = featurize_split(members, catalog, args.split, str(tmp / "ray"), batch_size=args.batch_size,
                              actors=args.actors)
        ray_s = time.perf_counter() - t0
        n_ray = len(read_features(str(out))["label"])
        if n_ray != n_plain:
            print(f"MISMATCH: Ray Data featurized {n_ray} rows, the plain loop {n_plain}")
            return 1

    plain_rate, ray_rate = n_plain / plain_s, n_ray / ray_s
    print()
    print(f"images                         {n_ray}")
    print(f"plain loop (read, run, write)  {plain_s:7.2f} s  {plain_rate:8.0f} img/s")
    print(f"Ray Data actor pool            {ray_s:7.2f} s  {ray_rate:8.0f} img/s")
    print(f"  Ray start (not included)     {start_s:7.2f} s")
    print(f"ratio Ray / plain              {ray_rate / plain_rate:7.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
