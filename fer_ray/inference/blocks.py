"""A scoring job's work, listed as its input is walked: photos in blocks, videos in time segments.

``fer-ray score`` never holds its input's path list. ``write_listing`` walks the input one entry
at a time (``iter_files``) and cuts the stream into *blocks*, the unit that one actor call scores
and writes as one part: consecutive image files, or one time segment of one video. The blocks go
to a Parquet listing, which Ray Data reads; the driver keeps only counts.

A block is named by a hash of what it holds, so a rerun recognises the blocks whose parts exist.
Image blocks end after a file whose name's hash says so (content-defined cuts, as in rsync), not
every N files: a file added to or removed from a scored folder changes only its own block (and,
where a block had reached the size cap, the next few), and a rerun scores those again, not every
block after them.
"""

from __future__ import annotations

import hashlib
import math
import os
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from fer_ray.data.files import Entry, display_path, glob_files, iter_files
from fer_ray.data.preprocess import IMAGE_EXTENSIONS, VIDEO_EXTENSIONS, has_image_extension, has_video_extension
from fer_ray.data.video import VideoError, probe, segments
from fer_ray.errors import FerRayError, InputNotFound
from fer_ray.inference.crops import SCHEMA, DetectConfig, FaceScorer, detect_batch, detect_video, pin_threads
from fer_ray.inference.tables import table_writer, write_table


# One listing row per block: ``paths`` as rows show them, ``files`` as they are opened (the raw
# bytes of each name, see ``display_path``); ``start``/``end`` the segment of a video (seconds).
LISTING = pa.schema([("key", pa.string()), ("kind", pa.string()), ("paths", pa.list_(pa.string())),
                     ("files", pa.list_(pa.binary())), ("start", pa.float64()), ("end", pa.float64())])
IMAGES, VIDEO = "images", "video"
# Files a block holds on average: far more work than the ~50-100 ms Ray Data spends around each
# call on a small machine: 1,024 crops (~0.2 s to decode; 256 made FER2013's job 25% slower) or
# 16 photos (~2 s to detect), yet small enough that a small job still keeps every CPU busy.
FILES_PER_BLOCK = {"none": 1024, "photos": 16}


def block_sizes(mode: str, part_files: int) -> tuple[int, int]:
    """(files a block holds on average at most, and at most): ``--part-files`` bounds both."""
    target = min(part_files, FILES_PER_BLOCK["none" if mode == "none" else "photos"])
    return target, min(2 * target, part_files)


def list_inputs(input: str) -> Iterator[Entry]:
    """The entries under a folder (recursively), one file, or the files a glob matches."""
    if not input:  # Path("") is the current folder: an empty --input would score it
        raise FerRayError("--input is empty; name a folder, an image or video file, or a glob")
    root = Path(input)
    if root.is_dir():
        return iter_files(root)
    if os.path.lexists(root):
        return iter([Entry(root)])
    entries = glob_files(input)
    if not entries:
        raise InputNotFound(f"input not found: {input} (a folder, a file or a glob)")
    return iter(entries)


def classified(input: str) -> Iterator[tuple[str | None, str]]:
    """(IMAGES, VIDEO or None for another file, absolute path) of each entry of ``list_inputs``.

    Only the name decides: a broken link named ``.jpg`` is an image here and later gets an error
    row, and so does a folder that cannot be listed, whatever its name, so that what was asked
    for is always accounted for."""
    for entry in list_inputs(input):
        name = os.path.abspath(entry.path)
        if has_video_extension(name) and not entry.problem:
            yield VIDEO, name
        elif has_image_extension(name) or entry.problem:
            yield IMAGES, name
        else:
            yield None, name


def block_key(kind: str, paths: list[str], start: float = 0.0) -> str:
    digest = hashlib.sha256("\0".join([kind, *paths, repr(start)]).encode("utf-8", "surrogatepass"))
    return digest.hexdigest()[:24]


@dataclass
class Listing:
    """What ``write_listing`` found and wrote."""

    path: Path                # every block of the input: what the output is assembled from
    todo: Path                # the blocks without a part yet, read by the actors (``read_block``)
    images: int = 0
    videos: int = 0
    others: int = 0           # files skipped for their extension
    blocks: int = 0
    todo_blocks: int = 0
    todo_files: int = 0       # image files (and videos, once per segment) in the blocks to score
    todo_groups: list[int] = field(default_factory=list)  # blocks per row group of ``todo``

    def todo_refs(self) -> Iterator[dict]:
        """Where each block to score is in ``todo``: what Ray Data hands the actors, so that the
        driver sends a few bytes a block, never its paths."""
        for group, rows in enumerate(self.todo_groups):
            for row in range(rows):
                yield {"group": group, "row": row}

    @property
    def files(self) -> int:
        return self.images + self.videos


class _RowGroups:
    """Listing rows to a ``table_writer``, ``size`` rows a row group; ``sizes`` the groups written."""

    def __init__(self, write, size: int):
        self.write, self.size, self.rows, self.sizes = write, size, [], []

    def add(self, row: dict) -> None:
        self.rows.append(row)
        if len(self.rows) >= self.size:
            self.flush()

    def flush(self) -> None:
        if self.rows:
            self.write(pa.Table.from_pylist(self.rows, schema=LISTING))
            self.sizes.append(len(self.rows))
            self.rows = []


def write_listing(input: str, folder: Path, sizes: tuple[int, int], segment_seconds: float, done: set[str]) -> Listing:
    """Walk ``input`` and write its blocks to ``folder``/listing.parquet, and those whose key is
    not in ``done`` to ``folder``/todo.parquet. ``sizes``: ``block_sizes``."""
    listing = Listing(folder / "listing.parquet", folder / "todo.parquet")
    target, cap = sizes

    def emit(kind: str, paths: list[str], files: list[bytes], start: float = 0.0, end: float = math.inf):
        row = {"key": block_key(kind, paths, start), "kind": kind, "paths": paths, "files": files,
               "start": start, "end": end}
        every.add(row)
        listing.blocks += 1
        if row["key"] not in done:
            todo.add(row)
            listing.todo_blocks += 1
            listing.todo_files += len(paths)

    def walk() -> None:
        paths, files = [], []
        for kind, name in classified(input):
            if kind == VIDEO:
                listing.videos += 1
                shown, raw = display_path(name), os.fsencode(name)
                for start, end in video_segments(raw, segment_seconds):
                    emit(VIDEO, [shown], [raw], start, end)
            elif kind == IMAGES:
                listing.images += 1
                paths.append(display_path(name))
                files.append(os.fsencode(name))
                if zlib.crc32(os.path.basename(paths[-1]).encode("utf-8")) % target == 0 or len(paths) >= cap:
                    emit(IMAGES, paths, files)
                    paths, files = [], []
            else:
                listing.others += 1
        if paths:
            emit(IMAGES, paths, files)

    with table_writer(listing.path, LISTING) as write_every, table_writer(listing.todo, LISTING) as write_todo:
        # An actor reads a whole row group of ``todo`` to take its block: small groups keep that cheap.
        every, todo = _RowGroups(write_every, 1000), _RowGroups(write_todo, 16)
        walk()
        every.flush()
        todo.flush()
    listing.todo_groups = todo.sizes
    return listing


def check_input(input: str) -> None:
    """Refuse an input without a single image or video, walking only until the first one: before
    a scoring job makes its parts folder, so a wrong --input leaves nothing behind."""
    if not any(kind for kind, _ in classified(input)):
        raise InputNotFound(f"no image files ({', '.join(IMAGE_EXTENSIONS)}) or videos "
                            f"({', '.join(VIDEO_EXTENSIONS)}) in {input}")


def video_segments(file: bytes, seconds: float) -> list[tuple[float, float]]:
    """A video's time segments; one covering everything where it cannot even be probed (its
    actor then writes the error row)."""
    try:
        return segments(probe(file).duration, seconds)
    except VideoError:
        return [(0.0, math.inf)]


def listed_keys(listing: Path) -> set[str]:
    return set(pq.read_table(listing, columns=["key"])["key"].to_pylist())


def read_blocks(listing: Path) -> Iterator[dict]:
    """The listing's rows, a row group at a time."""
    source = pq.ParquetFile(listing)
    for group in range(source.num_row_groups):
        yield from source.read_row_group(group, columns=["key", "kind", "paths"]).to_pylist()


class PartStore:
    """A folder of ``part-KEY.parquet`` files, one per finished block, each written whole (or not
    at all) by the actor that scored the block: ``OUT.parts/`` beside an assembled OUT, or the
    folder OUT/ itself when the user asks for a folder of parts (``batch.Destination``).

    Why parts: an interrupted job (killed, pre-empted, out of memory) keeps every part written so
    far, and a part's name is its block's key, so a rerun scores exactly the blocks without one.
    """

    def __init__(self, folder: Path):
        self.folder = folder

    def part(self, key: str) -> Path:
        return self.folder / f"part-{key}.parquet"

    def done(self) -> set[str]:
        """The keys of the blocks with a part."""
        names = os.listdir(self.folder)
        return {name[5:-8] for name in names if name.startswith("part-") and name.endswith(".parquet")}

    def write(self, key: str, table: pa.Table) -> None:
        write_table(table, self.part(key))

    def rewrite(self, keys: list[str], table: pa.Table) -> None:
        """Replace the parts ``keys`` by ``table``'s rows in order, each part keeping its row count
        (a video's segments, given their track ids once all are scored)."""
        start = 0
        for key in keys:
            rows = pq.read_metadata(self.part(key)).num_rows
            self.write(key, table.slice(start, rows))
            start += rows

    def keep_only(self, keys: set[str]) -> None:
        """Delete the parts of blocks not in ``keys``: blocks cut by another ``--part-files``, or
        holding files removed since, would be read twice, or as if still there."""
        for key in self.done() - keys:
            self.part(key).unlink()
        for stale in self.folder.glob(".part-*.tmp"):  # a killed actor's unfinished part
            stale.unlink()

    def read(self, key: str) -> pa.Table:
        part = self.part(key)
        if not part.is_file():
            raise RuntimeError(f"block {key} of {self.folder} has no part; rerun to score it")
        return pq.read_table(part, schema=SCHEMA)


# ---------------------------------------------------------------------------------------
# Scoring one block (plain; Ray runs it as an actor pool)
# ---------------------------------------------------------------------------------------

def detect_block(block: dict, config: DetectConfig, fps: float, chunk: int) -> Iterator[dict[str, np.ndarray]]:
    """One listing row -> ``detect_batch``'s rows, in chunks of at most ``chunk`` rows for videos."""
    if block["kind"] == VIDEO:
        yield from detect_video(block["paths"][0], block["files"][0], config, fps, block["start"], block["end"], chunk)
    else:
        yield detect_batch({"path": list(block["paths"]), "file": list(block["files"])}, config)


def read_block(todo: pq.ParquetFile, ref: dict) -> dict:
    """The listing row that ``Listing.todo_refs`` points to."""
    return todo.read_row_group(int(ref["group"])).slice(int(ref["row"]), 1).to_pylist()[0]


def detect_in_task(batch: dict, todo: str, config: DetectConfig, fps: float, chunk: int) -> dict:
    """The --gpu layout's CPU tasks: each block's detected rows, as one row (Ray Data may
    regroup rows between stages, and a part must hold its whole block)."""
    pin_threads(1)
    listing = pq.ParquetFile(todo)
    blocks = [read_block(listing, ref) for ref in _refs(batch)]
    detected = np.empty(len(blocks), dtype=object)  # one list of row chunks per block
    for i, block in enumerate(blocks):
        detected[i] = list(detect_block(block, config, fps, chunk))
    return {"key": np.array([b["key"] for b in blocks], dtype=object), "detected": detected}


def _refs(batch: dict) -> list[dict]:
    return [{"group": g, "row": r} for g, r in zip(batch["group"], batch["row"])]


class BlockScorer:
    """Listing rows (blocks) -> each block's scored rows, written as its part by this actor; the
    driver gets one small row per block (its key and how many images it held).

    With ``detect`` it reads, decodes and detects too (one process does everything for its
    blocks: scoring on CPUs, see ``batch.plan_resources``); without, it takes ``detect_in_task``'s
    rows. ``threads``, given in a Ray actor, pins its threads to the CPUs it was given.
    """

    def __init__(self, artifact: str, parts: str, todo: str, device: str = "auto", batch_size: int = 256,
                 threads: int | None = None, detect: DetectConfig | None = None, tta: str = "none", fps: float = 2.0):
        self.score = FaceScorer(artifact, device, batch_size, threads, tta)
        self.store = PartStore(Path(parts))
        self.todo = pq.ParquetFile(todo) if detect is not None else None
        self.detect, self.fps, self.batch_size = detect, fps, batch_size

    def blocks(self, batch: dict) -> Iterator[tuple[str, Iterator[dict]]]:
        """(key, detected row chunks) per block of the batch: ``todo_refs`` to read and detect, or
        ``detect_in_task``'s rows."""
        if self.detect is None:
            yield from zip(batch["key"], batch["detected"])
            return
        for ref in _refs(batch):
            block = read_block(self.todo, ref)
            yield block["key"], detect_block(block, self.detect, self.fps, self.batch_size)

    def __call__(self, batch: dict) -> dict:
        keys, images = [], []
        for key, chunks in self.blocks(batch):
            # A video's segment past its last frame has none (assembly speaks for a video without any).
            table = pa.concat_tables([SCHEMA.empty_table(), *(self.score(rows) for rows in chunks)])
            self.store.write(key, table)
            keys.append(key)
            images.append(table.group_by(["path", "frame"]).aggregate([]).num_rows)  # photos, or frames
        return {"key": np.array(keys, dtype=object), "images": np.array(images, np.int64)}
