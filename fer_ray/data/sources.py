"""Readers that turn each supported input into catalog rows.

A source has two halves so that Ray can parallelise it:

* ``plan()`` runs on the driver. It checks the input (missing, empty, wrong layout -> a clear
  ``SourceError``) and returns small work items: file paths with their labels, or byte ranges
  of a CSV. Nothing large is read here.
* ``read_batch(items)`` turns a batch of work items into rows. It is a plain function of its
  input, run by Ray Data ``map_batches`` in parallel (or called directly in tests).

Every input unit ends as exactly one row (or, for a CSV chunk, one row per line): either an
image, or a rejection whose ``error`` column says why. Nothing is dropped silently.

Inside the pipeline "no error" and "no subject" are empty strings, not None: Ray Data turns
an all-None numpy column into float NaN between stages, which would read as an error.
"""

from __future__ import annotations

import csv
import hashlib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fer_ray.choices import MAX_SIDE
from fer_ray.data.faces import HaarDetector, find_faces
from fer_ray.data.files import display_path, files_under, not_a_file, read_image_file
from fer_ray.data.preprocess import DEFAULT_MAX_PIXELS, ImageError, decode_grey, has_image_extension, resize
from fer_ray.data.synthetic import GENERATOR_VERSION, balanced_labels, synthetic_faces
from fer_ray.emotions import KDEF_CODES, EMOTIONS, label_from_index, label_from_name
from fer_ray.errors import FerRayError

SOURCES = ("fer2013-csv", "folders", "kdef", "synthetic")
SPLIT_NAMES = ("train", "val", "test")
FER_USAGE = {"training": "train", "publictest": "val", "privatetest": "test"}
FOLDER_SPLITS = {
    "train": "train", "training": "train",
    "val": "val", "valid": "val", "validation": "val", "publictest": "val",
    "test": "test", "testing": "test", "privatetest": "test",
}
KDEF_PATTERN = re.compile(
    r"^(?P<session>[AB])(?P<sex>[FM])(?P<num>\d\d)(?P<code>AF|AN|DI|HA|NE|SA|SU)(?P<angle>FL|HL|S|HR|FR)\.JPE?G$",
    re.IGNORECASE,
)
KDEF_ANGLES = ("FL", "HL", "S", "HR", "FR")
CSV_CHUNK_BYTES = 4 << 20
HEADER_LIMIT = 1 << 16  # bytes; FER2013's header is 21
SIZE_RANGE = (8, MAX_SIDE)  # catalog image side: below 8 px nothing is left of a face; above 1024 a
# catalog of FER2013's size would not fit in memory


class SourceError(FerRayError):
    """The input as a whole cannot be read (missing, empty, wrong layout)."""


class RowBuilder:
    """Collects rows (or rejections) of one batch and emits Ray Data's column dict."""

    COLUMNS = ("image", "label", "split", "source", "subject", "id", "error", "raw_sha1")

    def __init__(self, size: int, source: str):
        self.size, self.source = size, source
        self.rows: list[tuple] = []  # one value per column of COLUMNS

    def add(self, image, label, split, row_id, subject="", raw=b"", error=""):
        self.rows.append((image, label, split, self.source, subject, row_id, error, hashlib.sha1(raw).hexdigest()))

    def reject(self, row_id, reason, split="", subject="", raw=b""):
        self.add(np.zeros((self.size, self.size), np.uint8), -1, split, row_id, subject, raw, error=reason)

    def batch(self) -> dict[str, np.ndarray]:
        cols = dict(zip(self.COLUMNS, zip(*self.rows))) if self.rows else dict.fromkeys(self.COLUMNS, ())
        out = {k: np.array(v, dtype=object) for k, v in cols.items() if k != "image"}
        out["image"] = np.stack(cols["image"]) if self.rows else np.zeros((0, self.size, self.size), np.uint8)
        out["label"] = np.array(cols["label"], dtype=np.int64)
        return out


def _require_dir(path: str) -> Path:
    root = Path(path)
    if not root.exists():
        raise SourceError(f"input folder not found: {root}")
    if not root.is_dir():
        raise SourceError(f"input must be a folder: {root}")
    return root


@dataclass
class FolderSource:
    """``<root>/<split>/<emotion>/*.jpg`` (the Kaggle FER2013 layout) or ``<root>/<emotion>/``.

    Split folders: train/training, val/valid/validation/publictest, test/testing/privatetest.
    Emotion folders are matched case-insensitively with the usual synonyms.
    """

    input: str
    size: int = 48
    max_pixels: int = DEFAULT_MAX_PIXELS
    name: str = "folders"

    def plan(self) -> list[dict]:
        root = _require_dir(self.input)
        try:
            subdirs = sorted(p.name for p in root.iterdir() if p.is_dir())
        except OSError as exc:
            raise SourceError(f"cannot list the input folder {root} ({exc.strerror})") from None
        if not subdirs:
            raise SourceError(f"no split or emotion folders under {root}")
        flat = not any(n.lower() in FOLDER_SPLITS for n in subdirs) and any(_is_emotion(n) for n in subdirs)
        unknown = [] if flat else [n for n in subdirs if n.lower() not in FOLDER_SPLITS]
        if unknown:
            raise SourceError(
                f"unknown split folder {unknown[0]!r} in {root}; expected one of "
                f"{sorted(FOLDER_SPLITS)} (or emotion folders directly)")
        # One walk of the whole tree, each file labelled by the folders its own name is in: a
        # link from one emotion folder to another (or to the root) lists nothing twice or
        # under another label, as files_under lists each file under its name without links.
        items, at = [], 0 if flat else 1  # at: where the emotion folder is in a file's relative path
        for entry in files_under(root):
            rel = entry.path.relative_to(root)
            split = "train" if flat else FOLDER_SPLITS[rel.parts[0].lower()] if len(rel.parts) > 1 else ""
            label, error = -1, ""
            if len(rel.parts) == 1 and not flat:
                error = "file is not inside a split folder"
            elif len(rel.parts) == at + 1:
                error = "file is not inside an emotion folder"
            elif _is_emotion(rel.parts[at]):
                label = label_from_name(rel.parts[at])
            else:
                error = f"unknown emotion folder {rel.parts[at]!r}"
            reason = entry.problem or error or not_a_file(entry.path) or (
                "" if has_image_extension(rel.name) else "not an image file extension")
            # Opened by its bytes, shown by a name Arrow can store (a Latin-1 file name made
            # the whole prepare fail in pandas).
            items.append({"path": os.fsencode(entry.path), "id": display_path(rel), "label": label,
                          "split": split, "error": reason})
        if not items:
            raise SourceError(f"no files found under {root}")
        return items

    def describe(self) -> dict:
        return {"kind": self.name, "input": str(Path(self.input).resolve()), "layout": "<split>/<emotion>/*"}

    def read_batch(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        rows = RowBuilder(self.size, self.name)
        for path, row_id, label, split, error in zip(
                batch["path"], batch["id"], batch["label"], batch["split"], batch["error"]):
            if error:
                rows.reject(row_id, error, split)
                continue
            raw = b""
            try:
                raw = read_image_file(path, self.max_pixels)
                rows.add(resize(decode_grey(raw, self.max_pixels), self.size), int(label), split, row_id, raw=raw)
            except (ImageError, OSError) as exc:
                rows.reject(row_id, str(exc), split, raw=raw)  # raw keeps the source hash honest
        return rows.batch()


def _is_emotion(name: str) -> bool:
    try:
        label_from_name(name)
        return True
    except ValueError:
        return False


@dataclass
class Fer2013CsvSource:
    """The challenge's ``emotion,pixels,Usage`` CSV, read in parallel byte-range chunks.

    The driver only scans the file for line breaks (streaming, to give every row its line
    number); workers parse the chunks. Usage Training/PublicTest/PrivateTest -> train/val/test.
    """

    input: str
    size: int = 48
    chunk_bytes: int = CSV_CHUNK_BYTES
    name: str = "fer2013-csv"
    columns: dict = field(default_factory=dict)

    def plan(self) -> list[dict]:
        path = Path(self.input)
        if not path.exists():
            raise SourceError(f"input CSV not found: {path}")
        if not path.is_file():
            raise SourceError(f"input must be a CSV file: {path}")
        if path.stat().st_size == 0:
            raise SourceError(f"input CSV is empty: {path}")
        items = []
        with open(path, "rb") as fh:
            header = fh.readline(HEADER_LIMIT)  # bounded: a binary file may have no line break at all
            if b"\x00" in header or (len(header) == HEADER_LIMIT and not header.endswith(b"\n")):
                raise SourceError(f"{path} is not a FER2013 CSV: its first line starts {_prefix(header)}, "
                                  "which is no CSV header (a binary file?)")
            if b"\r" in header.rstrip(b"\r\n"):
                raise SourceError(f"{path} has CR-only line endings (old Mac style); "
                                  "convert it to LF or CRLF line endings")
            self.columns = _csv_header(header.decode("utf-8-sig", "replace"), path)  # Excel adds a BOM
            start, line = fh.tell(), 2
            while block := fh.read(self.chunk_bytes) + fh.readline():  # a chunk, to the end of its last line
                items.append({"path": str(path), "start": start, "end": start + len(block), "first_line": line})
                start, line = start + len(block), line + block.count(b"\n")
        if not items:
            raise SourceError(f"CSV has a header but no rows: {path}")
        return items

    def describe(self) -> dict:
        return {"kind": self.name, "input": str(Path(self.input).resolve()), "columns": self.columns}

    def read_batch(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        rows = RowBuilder(self.size, self.name)
        ci = self.columns
        for path, start, end, first in zip(batch["path"], batch["start"], batch["end"], batch["first_line"]):
            with open(path, "rb") as fh:
                fh.seek(int(start))
                chunk = fh.read(int(end) - int(start))
            lines = chunk.split(b"\n")
            if not lines[-1]:
                lines.pop()  # what follows the chunk's last line break: no line
            for offset, raw in enumerate(lines):
                row_id = f"line:{int(first) + offset}"
                if not raw.strip():  # counted like any other line that is no row
                    rows.reject(row_id, "blank line", raw=raw)
                    continue
                try:
                    label, values, split = _parse_fer_row(raw, ci)
                except ValueError as exc:
                    rows.reject(row_id, str(exc), raw=raw)
                    continue
                image = resize(values.astype(np.uint8).reshape(48, 48), self.size)
                rows.add(image, label, split, row_id, raw=raw)
        return rows.batch()


def _parse_fer_row(raw: bytes, ci: dict) -> tuple[int, np.ndarray, str]:
    """Parse one CSV line; ValueError messages start with the rejection category."""
    try:
        fields = next(csv.reader([raw.decode("utf-8").rstrip("\r")]))
    except (UnicodeDecodeError, csv.Error) as exc:
        raise FerRayError(f"unreadable CSV line: {exc}") from None
    if len(fields) != ci["n"]:
        raise FerRayError(f"wrong field count: expected {ci['n']}, got {len(fields)}")
    try:
        label = label_from_index(int(fields[ci["emotion"]]))
    except ValueError:
        raise FerRayError(f"unknown emotion: {_prefix(fields[ci['emotion']])} (expected 0..6)") from None
    try:
        values = np.array(fields[ci["pixels"]].split(), dtype=np.int64)
    except (ValueError, OverflowError):  # OverflowError: an integer beyond 64 bits
        raise FerRayError("non-numeric pixels: the pixels field must be space-separated integers") from None
    if values.size != 48 * 48:
        raise FerRayError(f"wrong pixel count: expected {48 * 48}, got {values.size}")
    if values.min() < 0 or values.max() > 255:
        raise FerRayError("pixel values outside 0..255")
    usage = "training" if ci["usage"] is None else fields[ci["usage"]]
    split = FER_USAGE.get(usage.strip().lower())
    if split is None:
        raise FerRayError(f"unknown Usage: {_prefix(usage)} (expected Training, PublicTest or PrivateTest)")
    return label, values, split


def _csv_header(line: str, path: Path) -> dict:
    try:
        names = [n.strip().lower() for n in next(csv.reader([line.strip()]))]
    except csv.Error as exc:
        raise SourceError(f"{path} is not a FER2013 CSV: unreadable header ({exc})") from None
    missing = {"emotion", "pixels"} - set(names)
    if missing:
        raise SourceError(
            f"{path} is not a FER2013 CSV: header {_prefix(line.strip())} lacks {sorted(missing)} "
            "(expected 'emotion,pixels,Usage')")
    return {"n": len(names), "emotion": names.index("emotion"), "pixels": names.index("pixels"),
            "usage": names.index("usage") if "usage" in names else None}


def _prefix(text: str | bytes, width: int = 60) -> str:
    """``text`` quoted with every odd character escaped, cut to ``width`` characters: what a
    message may show of input that could be any bytes (a binary file given as a CSV printed
    ~500 of them)."""
    quoted = ascii(text[:width])
    return quoted if len(quoted) <= width + 2 and len(text) <= width else quoted[:width] + "..."


@dataclass
class KdefSource:
    """KDEF: ``KDEF/AF01/AF01AFS.JPG`` = session A/B, sex F/M, subject 01-35, expression, angle.

    Colour photos become luminance grey; ``face_crop`` crops the largest detected face (a
    photo with none is rejected, saying so), otherwise the central square is used. The
    subject (sex + number, e.g. ``F01``) is kept for identity-disjoint splits.
    """

    input: str
    size: int = 48
    angles: tuple[str, ...] = KDEF_ANGLES
    face_crop: bool = False
    max_pixels: int = DEFAULT_MAX_PIXELS
    name: str = "kdef"
    excluded: int = 0

    def plan(self) -> list[dict]:
        root = _require_dir(self.input)
        unknown = set(self.angles) - set(KDEF_ANGLES)
        if unknown:
            raise SourceError(f"unknown KDEF angle(s) {sorted(unknown)}; expected {KDEF_ANGLES}")
        items, self.excluded = [], 0
        for entry in files_under(root):
            f = entry.path
            m = KDEF_PATTERN.match(f.name)
            error = entry.problem or not_a_file(f)  # kept as a rejection, whatever its name
            if not error and m is None:
                error = "file name does not follow the KDEF pattern (e.g. AF01AFS.JPG)"
            if not error and m["angle"].upper() not in self.angles:
                self.excluded += 1
                continue
            items.append({"path": os.fsencode(f), "id": display_path(f.relative_to(root)),
                          "label": -1 if error else EMOTIONS.index(KDEF_CODES[m["code"].upper()]),
                          "subject": "" if error else (m["sex"] + m["num"]).upper(), "error": error})
        if not items:
            raise SourceError(f"no KDEF images found under {root} (angles {list(self.angles)})")
        return items

    def describe(self) -> dict:
        return {"kind": self.name, "input": str(Path(self.input).resolve()), "angles": list(self.angles),
                "face_crop": self.face_crop, "excluded_by_angle_filter": self.excluded}

    def read_batch(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        rows = RowBuilder(self.size, self.name)
        detector = HaarDetector() if self.face_crop else None
        for path, row_id, label, subject, error in zip(
                batch["path"], batch["id"], batch["label"], batch["subject"], batch["error"]):
            if error:
                rows.reject(row_id, error, subject=subject)
                continue
            raw = b""
            try:
                raw = read_image_file(path, self.max_pixels)
                grey = decode_grey(raw, self.max_pixels)
            except (ImageError, OSError) as exc:
                rows.reject(row_id, str(exc), subject=subject, raw=raw)
                continue
            if detector is not None:
                faces = find_faces(grey, "largest", detector)
                if not faces:
                    rows.reject(row_id, "no face detected (prepare without --face-crop to keep it)",
                                subject=subject, raw=raw)
                    continue
                grey = faces[0][1]
            rows.add(resize(grey, self.size), int(label), "train", row_id, subject=subject, raw=raw)
        return rows.batch()


@dataclass
class SyntheticSource:
    """Seeded synthetic faces (see ``fer_ray.data.synthetic``), split 80/10/10 by index."""

    count: int = 3500
    size: int = 48
    seed: int = 0
    chunk: int = 250
    name: str = "synthetic"

    def plan(self) -> list[dict]:
        if self.count < 7:
            raise SourceError("synthetic source needs a count of at least 7 (one face per emotion)")
        return [{"start": s, "count": min(self.chunk, self.count - s)} for s in range(0, self.count, self.chunk)]

    def describe(self) -> dict:
        return {"kind": self.name, "count": self.count, "seed": self.seed,
                "generator_version": GENERATOR_VERSION}

    def read_batch(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        rows = RowBuilder(self.size, self.name)
        all_labels = balanced_labels(self.count, self.seed)
        n_train, n_val = int(self.count * 0.8), int(self.count * 0.1)
        for start, count in zip(batch["start"], batch["count"]):
            start, count = int(start), int(count)
            labels = all_labels[start : start + count]
            faces = synthetic_faces(labels, self.size, self.seed, start)
            for i, (face, label) in enumerate(zip(faces, labels)):
                index = start + i
                split = "train" if index < n_train else "val" if index < n_train + n_val else "test"
                rows.add(face, int(label), split, f"synthetic:{index}", raw=face.tobytes())
        return rows.batch()


def make_source(kind: str, input: str | None, size: int = 48, **options):
    """Build a source by name; ``options`` are the source-specific settings."""
    if kind not in SOURCES:
        raise SourceError(f"unknown source {kind!r}; expected one of {SOURCES}")
    if not SIZE_RANGE[0] <= size <= SIZE_RANGE[1]:
        raise SourceError(f"image size {size} is outside {SIZE_RANGE[0]}..{SIZE_RANGE[1]} pixels")
    if kind == "synthetic":
        return SyntheticSource(size=size, **options)
    if not input:
        raise SourceError(f"source {kind!r} needs --input")
    cls = {"fer2013-csv": Fer2013CsvSource, "folders": FolderSource, "kdef": KdefSource}[kind]
    return cls(input=input, size=size, **options)
