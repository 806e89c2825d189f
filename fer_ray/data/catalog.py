"""The catalog: prepared Parquet shards per split plus a ``manifest.json`` that audits them.

Layout::

    CATALOG/manifest.json     counts, pixel statistics, hashes, duplicates, blanks, rejections
    CATALOG/rejected.csv      every rejected input unit with its reason
    CATALOG/{train,val,test}/*.parquet
        image   uint8 (size, size) fixed-shape tensor, grey
        label   int64, FER2013 order (0 angry .. 6 neutral)
        split, source, subject (KDEF identity or null), id (path or CSV line), pixel_sha1

Reading a catalog is plain pyarrow/numpy, here, so training, evaluation and the GPU checks
need no Ray cluster; writing one runs the sources on Ray Data (``fer_ray.data.ingest``).
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from fer_ray.data.sources import SPLIT_NAMES
from fer_ray.emotions import EMOTIONS
from fer_ray.errors import FerRayError

FORMAT = "fer-ray-catalog/1"
MANIFEST = "manifest.json"
LISTED_LIMIT = 1000  # rejections/blanks/duplicate groups listed in the manifest itself


class CatalogError(FerRayError):
    """A catalog that is missing, incomplete or lacks a requested split."""


def build_manifest(source, ok, rejected, light, mode, seed, shards) -> dict:
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
    by_reason = Counter(reason.split(" (")[0].split(":")[0] for reason in rejected["error"])
    rows = [{"id": i, "reason": r} for i, r in zip(rejected["id"], rejected["error"])]
    return {"count": len(rejected), "by_reason": dict(by_reason), "rows": rows[:LISTED_LIMIT],
            "listed": min(len(rows), LISTED_LIMIT), "all_in": "rejected.csv"}


@dataclass(frozen=True)
class Catalog:
    """A prepared catalog, opened once: its manifest read and checked, its splits at hand.

    A stage opens the catalog it is given once and passes this object on, so one run reads one
    manifest (and states one checksum) from its first check to its last report."""

    path: Path
    manifest: dict

    @classmethod
    def open(cls, path: str | Path | Catalog) -> Catalog:
        """Open the catalog at ``path`` (an open one is returned as it is)."""
        if isinstance(path, Catalog):
            return path
        file = Path(path) / MANIFEST
        if not file.exists():
            raise CatalogError(f"not a catalog (no {MANIFEST}): {path}; build one with `fer-ray prepare`")
        manifest = json.loads(file.read_text())
        if manifest.get("format") != FORMAT:
            raise CatalogError(f"{file} has format {manifest.get('format')!r}, expected {FORMAT!r}")
        return cls(Path(path), manifest)

    @property
    def sha256(self) -> str:
        return self.manifest["catalog_sha256"]

    @property
    def image_size(self) -> int:
        return self.manifest["image_size"]

    @property
    def identity(self) -> dict:
        """What an artifact's model.json records about the catalog it was fitted on."""
        return {"path": str(self.path.resolve()), "sha256": self.sha256}

    @property
    def run_settings(self) -> dict:
        """What a run's ``run.json`` records of its catalog: where it is and its checksum (a
        catalog rebuilt in place is another catalog, and a rerun on it is refused)."""
        return {"catalog": self.identity["path"], "catalog_sha256": self.sha256}

    @property
    def normalization(self) -> dict:
        """Train-split pixel mean and std on the 0..1 scale (None without a train split)."""
        return {"mean": self.manifest["pixel_mean"], "std": self.manifest["pixel_std"]}

    @property
    def held_out(self) -> str:
        """The split a report states: test, or val where the catalog has no test split."""
        return "test" if self.has("test") else "val"

    def has(self, split: str) -> bool:
        return split in self.manifest["shards"]

    def require(self, *splits: str, why: str = "") -> Catalog:
        """Refuse a catalog that lacks one of ``splits`` (``why`` says what needs it)."""
        for split in splits:
            if not self.has(split):
                raise CatalogError(f"catalog {self.path} has no {split!r} split (it has "
                                   f"{sorted(self.manifest['shards'])})" + (f"; {why}" if why else ""))
        return self

    def split_dir(self, split: str) -> Path:
        self.require(split)
        return self.path / split

    def load(self, split: str, columns=("image", "label")) -> dict[str, np.ndarray]:
        """Read one split into numpy arrays (images as uint8 (N, S, S)) without Ray."""
        table = pq.read_table(self.split_dir(split), columns=list(columns))
        out = {}
        for name in columns:
            col = table.column(name).combine_chunks()
            out[name] = (images_from_arrow(col, self.image_size) if name == "image"
                         else col.to_numpy(zero_copy_only=False))
        return out

    def protocol(self, split: str, tta: str) -> str:
        """How a figure on ``split`` was measured, in the words every report uses."""
        source = self.manifest["source"]
        where = source.get("input") or f"{source['kind']} (seed {source.get('seed')})"
        return (f"split '{split}' of catalog '{self.path.name}' ({source['kind']}: {where}; "
                f"split mode {self.manifest['split_mode']}), {self.manifest['counts'][split]['total']} images, "
                f"test-time augmentation: {tta}")


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
