"""A scoring job's output, assembled from its parts part by part, so that neither the actors'
rows nor the output pass through memory at once.

OUT is rebuilt from the listing and the parts at the end of every run: the input's rows in
listing order, each video's faces given track ids (``assign_tracks``: the tracker needs a
video's frames in order, which its segments, scored apart, do not have), and beside OUT a
summary of each video's tracks (and with ``--plots``, a timeline PNG per video).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from fer_ray.inference.blocks import VIDEO, PartStore, read_blocks
from fer_ray.inference.crops import NO_FACE, SCHEMA
from fer_ray.inference.tables import table_writer, write_table


@dataclass
class Counts:
    """What the assembled output holds."""

    files: int = 0        # photos (and other image files) with rows
    videos: int = 0
    frames: int = 0       # sampled video frames
    faces: int = 0        # scored faces
    no_face: int = 0      # photos or frames without a face
    errors: int = 0       # files (or videos, part-way) that could not be used
    error_examples: list = field(default_factory=list)

    def add(self, table: pa.Table) -> None:
        errors = table.column("error")
        self.faces += errors.null_count
        self.no_face += pc.sum(pc.equal(errors, NO_FACE)).as_py() or 0
        bad = table.filter(pc.and_(pc.is_valid(errors), pc.not_equal(errors, NO_FACE)))
        self.errors += bad.num_rows
        shown = bad.slice(0, 5 - len(self.error_examples))
        self.error_examples += [f"{p}: {e}" for p, e in zip(shown["path"].to_pylist(), shown["error"].to_pylist())]


def assemble(listing: Path, store: PartStore, output: Path | None, tracks: Path, plots: Path | None = None) -> Counts:
    """The listing's parts -> OUT (streamed), or, with ``output`` None, the parts as the output
    (each video's parts rewritten with its track ids); where there are videos, their track
    summary to ``tracks`` and with ``plots`` a timeline PNG per video in that folder."""
    counts, summaries = Counts(), []
    with table_writer(output, SCHEMA) if output else nullcontext(None) as write:
        for video, keys, table in _files(listing, store):
            if video is None:
                counts.files += pc.count_distinct(table["path"]).as_py()
            else:
                from fer_ray.inference.timeline import plot_timeline, track_summary  # matplotlib: only with videos

                counts.videos += 1
                counts.frames += pc.count_distinct(table["frame"]).as_py()
                summaries.append(track_summary(table))
                if plots is not None:
                    plots.mkdir(exist_ok=True)
                    plot_timeline(table, plots / plot_name(video))
            counts.add(table)
            if write:
                write(table)
            elif video is not None:
                store.rewrite(keys, table)
    if summaries:
        write_table(pa.concat_tables(summaries), tracks)
    else:  # an earlier run's, of videos no longer in the output
        tracks.unlink(missing_ok=True)
    return counts


def _files(listing: Path, store: PartStore) -> Iterator[tuple[str | None, list[str], pa.Table]]:
    """(None, [key], rows) per block of photos; (path, its segments' keys, rows with track ids)
    per video, whose segments follow one another in the listing."""
    video, keys = None, []

    def tracked_video():
        return video, list(keys), tracked(pa.concat_tables([store.read(key) for key in keys]))

    for block in read_blocks(listing):
        path = block["paths"][0]
        if video is not None and (block["kind"] != VIDEO or path != video):
            yield tracked_video()
            video, keys = None, []
        if block["kind"] == VIDEO:
            video = path
            keys.append(block["key"])
        else:
            yield None, [block["key"]], store.read(block["key"])
    if video is not None:
        yield tracked_video()


def tracked(table: pa.Table) -> pa.Table:
    """One video's rows with track ids on its faces (``video_tracks``)."""
    from fer_ray.data.tracks import video_tracks

    faces = table["error"].is_null().to_pylist()
    boxes = [box if face else None for box, face in zip(zip(*(table[k].to_pylist() for k in "xywh")), faces)]
    tracks = video_tracks(table["frame"].to_pylist(), boxes)
    return table.set_column(SCHEMA.get_field_index("track"), "track", pa.array(tracks, pa.int32()))


def tracks_path(output: Path) -> Path:
    """Where a job's track summary goes: OUT's name with ``.tracks`` before its suffix."""
    return output.with_name(f"{output.stem}.tracks{output.suffix}")


def plot_name(path: str) -> str:
    """A timeline's file name: the video's name, and a hash of its path for videos of one name."""
    return f"{Path(path).stem}-{hashlib.sha256(path.encode('utf-8')).hexdigest()[:8]}.png"
