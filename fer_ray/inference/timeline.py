"""A video's scores told per face over time: a summary table per track and an emotion-over-time plot.

Both read the rows scoring writes for videos: path, frame, time (seconds), track, emotion, the
probability of each emotion (columns named as in ``EMOTIONS``) and error (null on a face's row;
a sampled frame without a face, or a video that could not be read, has a row with the reason).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from matplotlib.figure import Figure

from fer_ray.emotions import EMOTIONS, ranked_emotions

MAX_PANELS = 6  # tracks drawn per video, the longest ones: more panels would each be too small to read


def track_summary(table: pa.Table) -> pa.Table:
    """One row per (path, track): the sampled frames it is in, its first and last time, the share of
    those frames given each emotion (a column per emotion, as named in ``EMOTIONS``) and the dominant
    emotion (the largest share; a tie goes to the earlier emotion, as everywhere in fer-ray). A video
    without any face has no row."""
    faces = table.filter(pc.is_null(table["error"]))
    grouped = pa.table(
        {"path": faces["path"], "track": faces["track"], "time": faces["time"],
         **{e: pc.cast(pc.equal(faces["emotion"], e), pa.float64()) for e in EMOTIONS}}
    ).group_by(["path", "track"]).aggregate(
        [("time", "count"), ("time", "min"), ("time", "max")] + [(e, "mean") for e in EMOTIONS]
    ).sort_by([("path", "ascending"), ("track", "ascending")])
    shares = np.column_stack([grouped[f"{e}_mean"].to_numpy() for e in EMOTIONS]).reshape(-1, len(EMOTIONS))
    return pa.table({
        "path": grouped["path"], "track": grouped["track"], "frames": grouped["time_count"],
        "first_time": grouped["time_min"], "last_time": grouped["time_max"],
        **{e: grouped[f"{e}_mean"] for e in EMOTIONS},
        "dominant": pa.array([EMOTIONS[i] for i in ranked_emotions(shares)[:, 0]], pa.string()),
    })


def plot_timeline(table: pa.Table, png_path: str | Path) -> None:
    """Draw one video's emotion probabilities over time to a PNG: a panel per track (the
    ``MAX_PANELS`` longest, in order of appearance), a line per emotion; a video without faces gets
    a figure that says why. Matplotlib's Agg canvas, no display and no pyplot state."""
    paths = set(table["path"].to_pylist())
    if len(paths) != 1:
        raise ValueError(f"plot_timeline draws one video, got {len(paths)}")
    faces = table.filter(pc.is_null(table["error"])).sort_by([("track", "ascending"), ("time", "ascending")])
    tracks = faces["track"].to_numpy()
    ids, counts = np.unique(tracks, return_counts=True)
    shown = sorted(ids[np.argsort(-counts, kind="stable")][:MAX_PANELS])
    fig = Figure(figsize=(10, 1.0 + 2.2 * max(1, len(shown))), layout="constrained")
    title = Path(paths.pop()).name
    if len(shown) < len(ids):
        title += f" ({len(shown)} longest of {len(ids)} tracks)"
    fig.suptitle(title)
    axes = fig.subplots(max(1, len(shown)), 1, sharex=True, squeeze=False)[:, 0]
    if not shown:
        errors = [e for e in table["error"].to_pylist() if e]  # one row: the video's own error (undecodable ...)
        axes[0].text(0.5, 0.5, errors[0] if len(errors) == 1 else "no face in any sampled frame",
                     ha="center", va="center", transform=axes[0].transAxes)
        axes[0].set_axis_off()
    for ax, track in zip(axes, shown):
        rows = faces.filter(pc.equal(faces["track"], track))
        time = rows["time"].to_numpy()
        for emotion in EMOTIONS:
            ax.plot(time, rows[emotion].to_numpy(), marker=".", label=emotion)
        ax.set_ylim(0, 1)
        ax.set_ylabel(f"track {track}\nprobability")
        ax.grid(alpha=0.3)
    axes[-1].set_xlabel("time (s)")
    if shown:
        fig.legend(*axes[0].get_legend_handles_labels(), loc="outside right upper")
    fig.savefig(png_path, dpi=100)
