"""Videos through `predict` and `score`: rows per sampled frame and face, their times, tracks
that follow a face across frames (and segments), the timeline's changes where the video's are,
and a row for every video that cannot be read."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from datagen import encode
from fer_ray.emotions import EMOTIONS
from fer_ray.inference.batch import score_folder
from fer_ray.inference.crops import NO_FACE
from fer_ray.inference.assemble import tracks_path
from fer_ray.inference.predict import predict
from photos import SYNTHETIC, background, detectable_faces, photo
from videos import corrupt_video, empty_video, frameless_video, scheduled_video

SWITCH = 2.0   # when the left face changes to another expression
SECONDS = 4.0
SPOTS = [(40, 60), (400, 220)]


@functools.lru_cache(maxsize=2)
def faces_that_differ(artifact: str | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Three detectable synthetic faces: the left face before and after the switch, the pair the
    model tells apart most where they stand in the video (so the timeline must change there), and
    the right face."""
    faces = detectable_faces(14)
    right = faces[-1]
    def left(face):
        records = predict(photo([face, right], SPOTS), artifact=artifact, detector=SYNTHETIC, tta="none")
        return min(records, key=lambda r: r["box"]["x"])["probabilities"]

    probs = np.array([[left(face)[e] for e in EMOTIONS] for face in faces[:-1]])
    gaps = np.abs(probs[:, None] - probs[None]).sum(axis=2)
    before, after = np.unravel_index(gaps.argmax(), gaps.shape)
    return faces[before], faces[after], right


def two_face_video(path: Path, artifact: str | None) -> Path:
    """A 4 s, 10 frames/s video of two faces whose left one changes at ``SWITCH``."""
    before, after, right = faces_that_differ(artifact)
    schedule = [(0.0, photo([before, right], SPOTS)), (SWITCH, photo([after, right], SPOTS))]
    return scheduled_video(path, schedule, SECONDS, fps=10)


def check_timeline(rows: pd.DataFrame, fps: float) -> None:
    """Two faces at every sample; tracks follow the spots; the left face's probabilities change
    most within one sample period of ``SWITCH``, and the right face's far less."""
    period = 1 / fps
    assert sorted(rows["time"].unique()) == pytest.approx([k * period for k in range(int(SECONDS * fps))])
    assert sorted(rows["frame"].unique()) == [round(k * period * 10) for k in range(int(SECONDS * fps))]
    assert (rows.groupby("time").size() == 2).all()
    left, right = (rows[side].sort_values("time") for side in (rows["x"] < 200, rows["x"] >= 200))
    assert left["track"].nunique() == 1 and right["track"].nunique() == 1
    assert set(left["track"]) != set(right["track"])
    jumps = [np.abs(np.diff(side[list(EMOTIONS)].to_numpy(), axis=0)).sum(axis=1) for side in (left, right)]
    changed = left["time"].to_numpy()[1 + jumps[0].argmax()]
    assert SWITCH <= changed < SWITCH + period + 1e-6, left[["time", "emotion"]]
    assert jumps[0].max() > 2 * jumps[1].max() and jumps[0].max() > 0.2


def test_predict_follows_a_video_s_faces_over_time(tmp_path):
    video = two_face_video(tmp_path / "talk.mp4", None)
    records = predict(str(video), detector=SYNTHETIC, fps=2, tta="none")
    rows = pd.DataFrame([{**r, **r["box"], **r["probabilities"]} for r in records])
    assert (rows["image"] == str(video)).all() and rows["error"].isna().all()
    check_timeline(rows, fps=2)


def test_predict_gives_unreadable_videos_and_frames_without_faces_their_rows(tmp_path):
    scheduled_video(tmp_path / "empty_room.mkv", [(0.0, background(320, 240))], 1.0, fps=10)
    records = predict([str(corrupt_video(tmp_path / "bad.mp4")), str(empty_video(tmp_path / "zero.mov")),
                       str(frameless_video(tmp_path / "none.avi")), str(tmp_path / "empty_room.mkv")],
                      detector=SYNTHETIC, fps=4)
    errors = [(Path(r["image"]).name, r["time"], r["error"]) for r in records]
    assert errors[0][:2] == ("bad.mp4", None) and errors[0][2].startswith("cannot decode video")
    assert errors[1][:2] == ("zero.mov", None) and errors[1][2]
    assert errors[2] == ("none.avi", None, "video has no frames")
    assert errors[3:] == [("empty_room.mkv", t, NO_FACE) for t in (0.0, 0.3, 0.5, 0.8)]  # first frame at or after k/4 s


@pytest.mark.ray
@pytest.mark.timeout(480)  # the shared small_artifact fixture may train first
def test_score_cuts_a_video_into_segments_and_its_tracks_run_across_them(tmp_path, ray_session, small_artifact):
    root = tmp_path / "media"
    root.mkdir()
    video = two_face_video(root / "talk.mp4", str(small_artifact))
    (root / "still.png").write_bytes(encode(photo(list(faces_that_differ(str(small_artifact))[:2]), SPOTS), "PNG"))
    corrupt_video(root / "bad.webm")
    out = tmp_path / "scores.csv"
    settings = {"detector": SYNTHETIC, "fps": 2, "segment_seconds": 1.0, "plots": True}
    summary = score_folder(str(small_artifact), str(root), str(out), **settings)
    assert (summary.files, summary.videos, summary.frames, summary.errors) == (1, 2, 8, 1)
    assert summary.faces == 2 + 16
    df = pd.read_csv(out)
    talk = df[df["path"] == str(video)]
    check_timeline(talk, fps=2)
    assert df[df["path"].str.endswith("still.png")][["frame", "time", "track"]].isna().all(axis=None)
    (bad,) = df[df["path"].str.endswith("bad.webm")].itertuples()
    assert bad.error.startswith("cannot decode video") and pd.isna(bad.frame)
    # four one-second segments, each its own part; a rerun decodes none of them again
    parts = list(Path(f"{out}.parts").glob("part-*.parquet"))
    assert sum(pq.read_metadata(p).num_rows for p in parts) == len(df) and len(parts) == 1 + 4 + 1
    tracks = pd.read_csv(tracks_path(out))
    assert sorted(tracks["frames"]) == [8, 8] and (tracks["path"] == str(video)).all()
    assert [p.suffix for p in Path(tmp_path / "scores.plots").iterdir()] == [".png", ".png"]  # bad.webm: says why
    again = score_folder(str(small_artifact), str(root), str(out), **settings)
    assert again.scored_now == 0 and again.already_scored == 6
    pd.testing.assert_frame_equal(pd.read_csv(out), df)

    # As a folder of parts: each segment's part gets its video's track ids, as in the file
    folder = tmp_path / "scores"
    score_folder(str(small_artifact), str(root), f"{folder}/", **settings)
    by_row = ["path", "frame", "face"]
    parts = pq.read_table(folder).to_pandas().sort_values(by_row, ignore_index=True)
    pd.testing.assert_frame_equal(parts, df.sort_values(by_row, ignore_index=True), check_dtype=False)
    assert sorted(pd.read_parquet(folder / "_tracks.parquet")["frames"]) == [8, 8]
    assert len(list((folder / "_plots").iterdir())) == 2
