"""The catalog: prepared Parquet shards per split plus a ``manifest.json`` that audits them.

Layout::

    CATALOG/manifest.json     counts, pixel statistics, hashes, duplicates, blanks, rejections
    CATALOG/rejected.csv      every rejected input unit with its reason
    CATALOG/{train,val,test}/*.parquet
        image   uint8 (size, size) fixed-shape tensor, grey
        label   int64, FER2013 order (0 angry .. 6 neutral)
        split, source, subject (KDEF identity or null), id (path or CSV line), pixel_sha1

``build_catalog`` runs the sources on Ray Data; everything else here is plain pyarrow/numpy,
so training, evaluation and the GPU checks can read a catalog without a Ray cluster.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import shutil
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from fer_ray.data import splits as splitting
from fer_ray.data.sources import SPLIT_NAMES, SourceError
from fer_ray.emotions import EMOTIONS

FORMAT = "fer-ray-catalog/1"
MANIFEST = "manifest.json"
LISTED_LIMIT = 1000  # rejections/blanks/duplicate groups listed in the manifest itself


class CatalogError(ValueError):
    """A catalog that is missing, incomplete or lacks a requested split."""


def image_stats(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Per-row pixel hash, blank flag and pixel sums (for the train mean/std)."""
    images = batch["image"]
    flat = images.reshape(len(images), -1)
    batch["pixel_sha1"] = np.array([hashlib.sha1(r.tobytes()).hexdigest() for r in flat], dtype=object)
    batch["blank"] = flat.min(axis=1) == flat.max(axis=1) if len(flat) else np.zeros(0, bool)
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
                  overwrite: bool = False, num_cpus: int | None = None, log=print) -> dict:
    """Read ``source`` with Ray Data and write a catalog to ``output``; return its manifest.

    The input is checked (``source.plan()``) before Ray starts, so a wrong path fails fast.
    The catalog is built in a sibling folder and moved into place only once it is complete,
    so a failed build (or a wrong ``--input`` with ``--overwrite``) leaves the old one intact.
    """
    out = Path(output)
    if out.exists() and not out.is_dir():
        raise SourceError(f"output {out} is a file; the catalog is a folder")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise SourceError(f"output {out} exists and is not empty (pass --overwrite to replace it)")
    t0 = time.time()
    items = source.plan()
    _check_apart(getattr(source, "input", None), out)
    partial = out.with_name(f".{out.name}.partial")
    shutil.rmtree(partial, ignore_errors=True)  # left by a build that was killed
    try:
        manifest = _build(source, items, partial, split_mode, seed, num_cpus, log)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    manifest["prepare_seconds"] = round(time.time() - t0, 2)
    (partial / MANIFEST).write_text(json.dumps(manifest, indent=2))
    if out.exists():
        shutil.rmtree(out)
    partial.rename(out)
    return manifest


def _check_apart(input: str | None, out: Path) -> None:
    """Refuse an output that is, holds or sits inside the input: replacing it would delete
    the input, and rebuilding would read the old catalog as input."""
    if not input:
        return
    source, target = Path(input).resolve(), out.resolve()
    if source == target or target in source.parents or source in target.parents:
        raise SourceError(f"output {out} overlaps the input {input}; write the catalog to a folder outside it")


def _build(source, items: list[dict], out: Path, split_mode: str | None, seed: int, num_cpus: int | None,
           log) -> dict:
    """Read ``items`` with Ray Data and write shards and rejected.csv into ``out``."""
    import ray

    from fer_ray.runtime import init_ray

    mode = split_mode or ("subject" if source.name == "kdef" else "source")
    init_ray(num_cpus)
    log(f"prepare: {len(items)} work items from {source.name}; reading with Ray Data")
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
    out.mkdir(parents=True, exist_ok=True)
    shards = {}
    for split in SPLIT_NAMES:
        if (final == split).any():
            rows.map_batches(_keep_split, fn_kwargs={"split_of": [split_of], "keep": split},
                             batch_size=4096, batch_format="pyarrow").write_parquet(str(out / split))
            shards[split] = sorted(p.name for p in (out / split).glob("*.parquet"))
    rejected[["id", "error"]].rename(columns={"error": "reason"}).to_csv(out / "rejected.csv", index=False)
    return _manifest(source, ok, rejected, light, mode, seed, shards)


def _manifest(source, ok, rejected, light, mode, seed, shards) -> dict:
    size = source.size
    train = ok[ok["split"] == "train"]
    n_px = max(1, len(train)) * size * size
    mean = float(train["psum"].sum() / n_px)
    std = float(np.sqrt(max(0.0, train["psq"].sum() / n_px - mean * mean)))
    counts = {}
    for split in SPLIT_NAMES:
        part = ok[ok["split"] == split]
        if len(part):
            per_class = np.bincount(part["label"].to_numpy(), minlength=len(EMOTIONS))
            counts[split] = {e: int(n) for e, n in zip(EMOTIONS, per_class)} | {"total": int(len(part))}
    src_lines = sorted(f"{i}\t{h}" for i, h in zip(light["id"], light["raw_sha1"]))
    cat_lines = sorted(f"{i}\t{l}\t{s}\t{h}" for i, l, s, h in
                       zip(ok["id"], ok["label"], ok["split"], ok["pixel_sha1"]))
    description = source.describe()
    description["content_sha256"] = _sha256_lines(src_lines)
    return {
        "format": FORMAT,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "image_size": size,
        "channels": 1,
        "labels": list(EMOTIONS),
        "source": description,
        "split_mode": mode,
        "seed": seed,
        "counts": counts,
        # null without a train split: there are no statistics to normalise with (train refuses it)
        "pixel_mean": round(mean / 255.0, 6) if len(train) else None,
        "pixel_std": round(std / 255.0, 6) if len(train) else None,
        "pixel_stats_note": "train split, all pixels, on the 0..1 scale",
        "catalog_sha256": _sha256_lines(cat_lines),
        "duplicates": _duplicates(ok),
        "blank_images": _listed(ok.loc[ok["blank"].astype(bool), "id"].tolist()),
        "rejected": _rejections(rejected),
        "shards": shards,
    }


def _sha256_lines(lines: list[str]) -> str:
    h = hashlib.sha256()
    for line in lines:
        h.update(line.encode())
        h.update(b"\n")
    return h.hexdigest()


def _listed(ids: list[str]) -> dict:
    return {"count": len(ids), "ids": ids[:LISTED_LIMIT], "listed": min(len(ids), LISTED_LIMIT)}


def _duplicates(ok) -> dict:
    """Byte-identical images: how many groups, extra copies, cross-split and conflicting."""
    groups = ok[ok.duplicated("pixel_sha1", keep=False)].groupby("pixel_sha1")
    listed, cross, conflict, extra = [], 0, 0, 0
    for _, g in groups:
        extra += len(g) - 1
        cross += int(g["split"].nunique() > 1)
        conflict += int(g["label"].nunique() > 1)
        if len(listed) < LISTED_LIMIT:
            listed.append([f"{i} ({s}, {EMOTIONS[l]})" for i, s, l in zip(g["id"], g["split"], g["label"])])
    return {"groups": groups.ngroups, "extra_copies": extra, "cross_split_groups": cross,
            "conflicting_label_groups": conflict, "examples": listed}


def _rejections(rejected) -> dict:
    by_reason: dict[str, int] = {}
    for reason in rejected["error"]:
        key = reason.split(" (")[0].split(":")[0]
        by_reason[key] = by_reason.get(key, 0) + 1
    rows = [{"id": i, "reason": r} for i, r in zip(rejected["id"], rejected["error"])]
    return {"count": len(rejected), "by_reason": by_reason, "rows": rows[:LISTED_LIMIT],
            "listed": min(len(rows), LISTED_LIMIT), "all_in": "rejected.csv"}


def read_manifest(catalog: str) -> dict:
    path = Path(catalog) / MANIFEST
    if not path.exists():
        raise CatalogError(f"not a catalog (no {MANIFEST}): {catalog}; build one with `fer-ray prepare`")
    manifest = json.loads(path.read_text())
    if manifest.get("format") != FORMAT:
        raise CatalogError(f"{path} has format {manifest.get('format')!r}, expected {FORMAT!r}")
    return manifest


def split_dir(catalog: str, split: str) -> Path:
    manifest = read_manifest(catalog)
    if split not in manifest["shards"]:
        raise CatalogError(f"catalog {catalog} has no {split!r} split (it has {sorted(manifest['shards'])})")
    return Path(catalog) / split


def load_split(catalog: str, split: str, columns=("image", "label")) -> dict[str, np.ndarray]:
    """Read one split into numpy arrays (images as uint8 (N, S, S)) without Ray."""
    size = read_manifest(catalog)["image_size"]
    table = pq.read_table(split_dir(catalog, split), columns=list(columns))
    out = {}
    for name in columns:
        col = table.column(name).combine_chunks()
        if name == "image":
            out[name] = images_from_arrow(col, size)
        else:
            out[name] = col.to_numpy(zero_copy_only=False)
    return out


def images_from_arrow(col, size: int) -> np.ndarray:
    """Images from the Parquet tensor column, whether or not Ray's extension type is loaded."""
    storage = getattr(col, "storage", col)  # Ray's tensor extension wraps a list array
    flat = storage.flatten()
    return np.asarray(flat.to_numpy(zero_copy_only=False), dtype=np.uint8).reshape(-1, size, size)


def audit(manifest: dict) -> str:
    """A human-readable summary of a manifest (printed by prepare and the demo)."""
    lines = [f"catalog: {manifest['source']['kind']}  size {manifest['image_size']}px  "
             f"split mode {manifest['split_mode']}  sha256 {manifest['catalog_sha256'][:12]}"]
    header = f"{'split':<6}" + "".join(f"{e[:8]:>9}" for e in EMOTIONS) + f"{'total':>9}"
    lines.append(header)
    for split, c in manifest["counts"].items():
        lines.append(f"{split:<6}" + "".join(f"{c[e]:>9}" for e in EMOTIONS) + f"{c['total']:>9}")
    d, r = manifest["duplicates"], manifest["rejected"]
    if manifest["pixel_mean"] is None:
        lines.append("train pixel mean: none (no train split; a catalog to evaluate on, not to train on)")
    else:
        lines.append(f"train pixel mean {manifest['pixel_mean']:.4f} std {manifest['pixel_std']:.4f} (0..1 scale)")
    lines.append(f"duplicates: {d['groups']} groups ({d['extra_copies']} extra copies, "
                 f"{d['cross_split_groups']} across splits, {d['conflicting_label_groups']} with conflicting labels)")
    lines.append(f"blank images: {manifest['blank_images']['count']}")
    lines.append(f"rejected: {r['count']}" + "".join(f"\n  {n:>6}  {k}" for k, n in r["by_reason"].items()))
    return "\n".join(lines)
