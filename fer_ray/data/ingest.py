"""``build_catalog``: a source read on Ray Data and written as a catalog (see ``fer_ray.data.catalog``).

The Ray wiring of ``prepare``: the sources' ``read_batch`` and ``image_stats`` run as Ray Data
tasks, the split assignment and manifest are plain code (``splits``, ``catalog.build_manifest``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from fer_ray.data import splits as splitting
from fer_ray.data.catalog import MANIFEST, build_manifest
from fer_ray.data.sources import SPLIT_NAMES, SourceError
from fer_ray.rundir import open_run

log = logging.getLogger(__name__)


def image_stats(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Per-row pixel hash, blank flag and pixel sums (for the train mean/std)."""
    images = batch["image"]
    flat = images.reshape(len(images), -1)
    batch["pixel_sha1"] = np.array([hashlib.sha1(r.tobytes()).hexdigest() for r in flat], dtype=object)
    batch["blank"] = flat.min(axis=1) == flat.max(axis=1)
    f = flat.astype(np.float64)
    batch["psum"] = f.sum(axis=1)
    batch["psq"] = (f * f).sum(axis=1)
    return batch


def _keep_split(table: pa.Table, split_of, keep: str) -> pa.Table:
    """Rows whose final split is ``keep``, with exactly the catalog's columns and types.

    Works on Arrow tables so every shard gets the same schema (``subject`` a nullable string
    even when all are null) and the image tensor column passes through untouched.
    """
    import ray

    mapping = ray.get(split_of[0])
    mask = pa.array([mapping.get(i) == keep for i in table.column("id").to_pylist()], pa.bool_())
    t = table.filter(mask)
    subject = pc.if_else(pc.equal(t["subject"], ""), pa.scalar(None, pa.string()), t["subject"])
    return pa.table({
        "image": t["image"], "label": t["label"], "split": pa.array([keep] * len(t), pa.string()),
        "source": t["source"], "subject": subject, "id": t["id"], "pixel_sha1": t["pixel_sha1"],
    })


def build_catalog(source, output: str, split_mode: str | None = None, seed: int = 0,
                  overwrite: bool = False, num_cpus: int | None = None) -> dict:
    """Read ``source`` with Ray Data and write a catalog to ``output``; return its manifest.

    The input is checked (``source.plan()``) before Ray starts, so a wrong path fails fast.
    The catalog is built in a hidden folder beside ``output`` and moved into place only once it
    is complete (``open_run``'s ``aside``), so a failed build (or a wrong ``--input`` with
    ``--overwrite``) leaves the old one intact.
    """
    out = Path(output)
    if out.exists() and not out.is_dir():
        raise SourceError(f"output {out} is a file; the catalog is a folder")
    with open_run(out, overwrite=overwrite, flag="--output", aside=True) as run:
        t0 = time.time()
        items = source.plan()
        _check_apart(getattr(source, "input", None), out)
        manifest = _build(source, items, run.claim(), split_mode, seed, num_cpus)
        manifest["prepare_seconds"] = round(time.time() - t0, 2)
        (run.path / MANIFEST).write_text(json.dumps(manifest, indent=2))
    return manifest


def _check_apart(input: str | None, out: Path) -> None:
    """Refuse an output that is, holds or sits inside the input: replacing it would delete
    the input, and rebuilding would read the old catalog as input."""
    if not input:
        return
    source, target = Path(input).resolve(), out.resolve()
    if source == target or target in source.parents or source in target.parents:
        raise SourceError(f"output {out} overlaps the input {input}; write the catalog to a folder outside it")


def _build(source, items: list[dict], out: Path, split_mode: str | None, seed: int, num_cpus: int | None) -> dict:
    """Read ``items`` with Ray Data and write shards and rejected.csv into ``out``."""
    import ray

    from fer_ray.runtime import init_ray

    mode = split_mode or ("subject" if source.name == "kdef" else "source")
    init_ray(num_cpus)
    log.info(f"prepare: {len(items)} work items from {source.name}; reading with Ray Data")
    per_batch = 1 if source.name == "fer2013-csv" else 64
    # A few blocks per CPU: enough to balance load, few enough that per-task overhead does
    # not dominate (on 2 CPUs, 200 tiny blocks made the read ~2x slower than 16).
    cpus = int(ray.cluster_resources().get("CPU", 1))
    blocks = max(1, min(len(items) // per_batch, 200, 8 * cpus))
    rows = (
        ray.data.from_items(items, override_num_blocks=blocks)
        .map_batches(source.read_batch, batch_size=per_batch)
        .map_batches(image_stats, batch_size=1024)
        .materialize()
    )
    light = rows.drop_columns(["image"]).to_pandas()
    if "id" not in light.columns:  # every batch came back without rows (a source that gives none for an item)
        raise SourceError("no rows in the input (only blank lines?)")
    # Ray Data hands blocks back in completion order; sort so that the seeded split
    # assignment (which indexes rows by position) and the manifest are reproducible.
    light = light.sort_values("id", kind="stable").reset_index(drop=True)
    rejected = light[light["error"] != ""]
    ok = light[light["error"] == ""].reset_index(drop=True)
    if ok.empty:
        first = f"; first reason: {rejected['error'].iloc[0]}" if len(rejected) else ""
        raise SourceError(f"no usable images in the input ({len(rejected)} rejected{first})")
    final = splitting.assign(mode, ok["label"].to_numpy(), ok["split"].to_numpy(),
                             ok["subject"].to_numpy(), seed=seed)
    ok["split"] = final
    split_of = ray.put(dict(zip(ok["id"], final)))
    shards = {}
    for split in SPLIT_NAMES:
        if (final == split).any():
            rows.map_batches(_keep_split, fn_kwargs={"split_of": [split_of], "keep": split},
                             batch_size=4096, batch_format="pyarrow").write_parquet(str(out / split))
            shards[split] = sorted(p.name for p in (out / split).glob("*.parquet"))
    rejected[["id", "error"]].rename(columns={"error": "reason"}).to_csv(out / "rejected.csv", index=False)
    return build_manifest(source, ok, rejected, light, mode, seed, shards)


