"""Featurize catalog splits with the ensemble's member networks (Ray Data ``map_batches``).

``MemberFeatures`` is the plain piece: for a batch of faces it returns each member's
penultimate features, concatenated in member order, and each member's probabilities (which
soft voting and the per-member rows of the report need). It is what ``map_batches`` runs on
a fixed actor pool (``ActorPoolStrategy``, Ray 2.60's replacement for ``concurrency=``):
each actor loads the members once and reuses them for every batch, on a GPU when the
cluster has one. Features are written as Parquet next to the label and row id,
so the logistic head can be refitted without touching a network again.

Output columns: ``features`` float32 (sum of member widths), ``probs`` float32
(members, 7), ``label``, ``id``.
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from fer_ray.data.catalog import read_manifest, split_dir
from fer_ray.emotions import NUM_CLASSES
from fer_ray.inference.predictor import Predictor


class MemberFeatures:
    """Callable class: a batch {"image", ...} -> {"features", "probs", plus passed-through columns}."""

    def __init__(self, members: list[str], device: str = "auto", batch_size: int = 256,
                 keep: tuple[str, ...] = ("label", "id")):
        self.predictors = [Predictor(m, device=device, batch_size=batch_size) for m in members]
        for p in self.predictors:
            if p.kind != "cnn":
                raise ValueError(f"ensemble members must be CNN artifacts; {p.path} is {p.kind}")
        self.keep = keep

    @property
    def widths(self) -> list[int]:
        return [p.backend.feature_dim for p in self.predictors]

    def features(self, images: np.ndarray) -> np.ndarray:
        """(N, sum of widths) float32: each member's penultimate features, in member order."""
        return np.concatenate([p.features(images) for p in self.predictors], axis=1)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        images = np.asarray(batch["image"], np.uint8)
        out = {k: batch[k] for k in self.keep if k in batch}
        out["features"] = self.features(images)
        out["probs"] = np.stack([p.predict_proba(images) for p in self.predictors], axis=1)
        return out


def plan_actors(cpus: float, gpus: int, gpu: bool, actors: int | None, cpus_per_actor: float) -> tuple[int, float]:
    """(actors, CPUs each) for the featurizer pool.

    Ray Data's read and write tasks take one whole CPU, and the pool's actors keep theirs for
    the whole run: if the actors leave less than one CPU free, nothing is ever read and the
    job waits for ever (``--num-cpus 1`` did). So the actors' CPUs are shrunk to leave one
    free, down to 0 (sharing the cores) on a one-CPU cluster. GPU actors take no CPU.
    """
    if gpu:
        return actors or gpus, 0.0
    actors = actors or max(1, int((cpus - 1) // max(cpus_per_actor, 1)))
    return actors, max(0.0, min(cpus_per_actor, math.floor((cpus - 1) / actors * 1000) / 1000))


def featurize_split(members: list[str], catalog: str, split: str, output: str, batch_size: int = 256,
                    actors: int | None = None, gpu: bool | None = None, cpus_per_actor: float = 1.0):
    """Write ``output/*.parquet`` for one split through an actor pool; returns the output path.

    ``gpu`` None means: use one GPU per actor when the cluster has GPUs.
    """
    import ray

    from fer_ray.runtime import cluster_capacity, init_ray, require_gpus

    init_ray()
    resources = cluster_capacity()
    if gpu is None:
        gpu = resources.get("GPU", 0) >= 1
    elif gpu:
        require_gpus(1)
    actors, cpus_per_actor = plan_actors(resources.get("CPU", 1), int(resources.get("GPU", 0)), gpu, actors,
                                         cpus_per_actor)
    ds = ray.data.read_parquet(str(split_dir(catalog, split))).select_columns(["image", "label", "id"])
    ds = ds.map_batches(MemberFeatures, fn_constructor_kwargs={"members": [str(m) for m in members],
                                                               "device": "cuda" if gpu else "cpu",
                                                               "batch_size": batch_size},
                        batch_size=batch_size, compute=ray.data.ActorPoolStrategy(size=max(1, actors)),
                        num_gpus=1 if gpu else 0,
                        num_cpus=cpus_per_actor, batch_format="numpy")
    out = Path(output)
    # Ray Data appends new files to a folder: a rerun (after an interruption, or with other
    # members) would otherwise read every face twice, or mix two models' features.
    shutil.rmtree(out, ignore_errors=True)
    ds.write_parquet(str(out))
    return out


def featurize(members: list[str], catalog: str, output: str, splits: tuple[str, ...] = ("train", "val", "test"),
              **kwargs) -> dict[str, Path]:
    """Featurize every requested split the catalog has into ``output/<split>/``."""
    present = read_manifest(catalog)["shards"]
    return {s: featurize_split(members, catalog, s, str(Path(output) / s), **kwargs) for s in splits if s in present}


def read_features(path: str) -> dict[str, np.ndarray]:
    """A featurized split as numpy arrays, rows sorted by id (Ray Data writes in completion order)."""
    table = pq.read_table(path)
    ids = table.column("id").to_numpy(zero_copy_only=False)
    order = np.argsort(ids, kind="stable")
    n = len(ids)
    return {"id": ids[order], "label": table.column("label").to_numpy()[order],
            "features": _flat_tensor(table.column("features")).reshape(n, -1)[order],
            "probs": _flat_tensor(table.column("probs")).reshape(n, -1, NUM_CLASSES)[order]}


def _flat_tensor(col) -> np.ndarray:
    """Every value of a tensor column in row-major order, whether or not Ray's extension type is loaded."""
    storage = getattr(col.combine_chunks(), "storage", None)
    values = storage if storage is not None else col.combine_chunks()
    while hasattr(values, "flatten"):
        values = values.flatten()
    return np.asarray(values.to_numpy(zero_copy_only=False), dtype=np.float32)
