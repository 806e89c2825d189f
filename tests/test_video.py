"""Videos without Ray: probing, sampling by time, segments read apart, files that are no video, the
tracker, and the per-track summary and plot."""

from __future__ import annotations

import math
import os
from pathlib import Path

import av
import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

from fer_ray.data.faces import HaarDetector
from fer_ray.data.preprocess import ImageError
from fer_ray.data.tracks import assign_tracks
from fer_ray.data.preprocess import has_video_extension
from fer_ray.data.video import VideoError, probe, sample_frames, segments
from fer_ray.emotions import EMOTIONS
from fer_ray.inference.timeline import track_summary, plot_timeline
from photos import detectable_faces, photo
from videos import (corrupt_video, empty_video, frameless_video, number_of, numbered, scheduled_video, shown,
                    truncated_video, write_video)

SECONDS, FPS = 4, 10  # the numbered videos: 40 frames, a keyframe every KEYINT = 10 (each second)


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("videos")


@pytest.fixture(scope="module", params=[".mp4", ".webm", ".avi", ".mov"])
def video(request, folder) -> Path:
    """40 numbered frames at 10 fps: H.264 with B-frames (mp4, mov), VP9 (webm), MPEG-4 (avi)."""
    times = [i / FPS for i in range(SECONDS * FPS)]
    return write_video(folder / f"numbered{request.param}", numbered(len(times)), times)


@pytest.fixture(scope="module")
def vfr_video(folder) -> Path:
    """A variable frame rate: frames 40 ms apart, then 120 ms apart (H.264 in Matroska)."""
    times = [i * 0.04 for i in range(25)] + [1.0 + i * 0.12 for i in range(20)]
    return write_video(folder / "vfr.mkv", numbered(len(times)), times)


def test_extensions():
    assert all(has_video_extension(f"clip{ext}") for ext in (".mp4", ".MOV", ".mkv", ".avi", ".webm", ".m4v"))
    assert not has_video_extension("photo.jpg") and not has_video_extension("mp4")


def test_probe_reads_the_containers_metadata(video):
    info = probe(video)
    assert (info.width, info.height, info.fps) == (160, 120, FPS)
    assert info.duration == pytest.approx(SECONDS, abs=0.11)
    assert probe(os.fsencode(video)) == info  # a name as bytes, as score lists them


def frames_of(source, fps, start=0.0, end=math.inf):
    return [(f.index, f.time, number_of(f.grey)) for f in sample_frames(source, fps, start, end)]


def test_every_frame_at_fps_0_with_its_number_and_time(video):
    assert frames_of(video, 0) == [(i, pytest.approx(i / FPS), i) for i in range(SECONDS * FPS)]


@pytest.mark.parametrize("fps, step", [(2, 5), (1, 10), (5, 2), (10, 1), (25, 1)])
def test_sampling_takes_the_first_frame_at_or_after_each_grid_point(video, fps, step):
    """On a 10 fps video a grid of 2 per second takes every 5th frame; a grid finer than the
    video's frames (25 per second) takes every frame once."""
    assert frames_of(video, fps) == [(i, pytest.approx(i / FPS), i) for i in range(0, SECONDS * FPS, step)]


def test_sampling_between_frames_takes_the_next_one(video):
    """3 per second: grid points 1/3 s, 2/3 s fall between frames; the frame after each is taken."""
    expected = sorted({math.ceil(k * FPS / 3) for k in range(3 * SECONDS)})
    assert [number for _, _, number in frames_of(video, 3)] == expected


@pytest.mark.parametrize("seconds", [0.35, 1.0, 0.1, 0.75, 2.5])
@pytest.mark.parametrize("fps", [0, 2, 3])
def test_segments_together_yield_the_frames_of_one_pass(video, fps, seconds):
    """Cuts between frames (0.35, 0.75), on every frame (0.1) and on the keyframes (1.0)."""
    whole = [(f.index, f.time, f.grey.tobytes()) for f in sample_frames(video, fps)]
    parts = [(f.index, f.time, f.grey.tobytes())
             for start, end in segments(probe(video).duration, seconds)
             for f in sample_frames(video, fps, start, end)]
    assert parts == whole


@pytest.mark.parametrize("seconds", [0.3, 0.5, 1.1])
@pytest.mark.parametrize("fps", [0, 2, 7])
def test_segments_of_a_variable_frame_rate(vfr_video, fps, seconds):
    whole = frames_of(vfr_video, fps)
    assert whole == [f for start, end in segments(probe(vfr_video).duration, seconds)
                     for f in frames_of(vfr_video, fps, start, end)]


def test_variable_frame_rate_times_and_indices(vfr_video):
    """Times are the stream's own; the index is the number at the average rate: it never goes
    down, and close frames may share it."""
    frames = frames_of(vfr_video, 0)
    truth = [i * 0.04 for i in range(25)] + [1.0 + i * 0.12 for i in range(20)]
    assert [number for _, _, number in frames] == list(range(len(truth)))
    assert [t for _, t, _ in frames] == pytest.approx(truth, abs=1e-3)
    rate = probe(vfr_video).fps
    indices = [index for index, _, _ in frames]
    assert indices == sorted(indices) and all(abs(index - t * rate) <= 0.5 + 1e-6 for index, t, _ in frames)
    assert [t for _, t, _ in frames_of(vfr_video, 2)] == pytest.approx([0, 0.52, 1.0, 1.6, 2.08, 2.56, 3.04])


def test_a_segment_holds_the_frames_in_its_time():
    assert segments(3.0, 1.0) == [(0.0, 1.0), (1.0, 2.0), (2.0, math.inf)]
    assert segments(2.5, 1.0) == [(0.0, 1.0), (1.0, 2.0), (2.0, math.inf)]
    assert segments(0.0, 1.0) == [(0.0, math.inf)]
    with pytest.raises(ValueError, match="segment length must be positive"):
        segments(3.0, 0)


def test_frames_are_grey_as_ffmpeg_makes_them_and_upright(folder):
    """A picture stored on its side with a display rotation of 90 degrees (how a phone held upright
    records) comes out upright; its grey levels are the picture's (video range undone)."""
    picture = np.full((120, 160), 60, np.uint8)
    picture[:30, :40] = 200  # a bright corner, top left as stored
    path = write_video(folder / "turned.mp4", [picture] * 3, [0, 0.1, 0.2], rotation=90)
    grey = next(sample_frames(path, 0)).grey
    assert grey.shape == (160, 120) and grey.flags.c_contiguous
    assert grey[-25:, :25].mean() == pytest.approx(200, abs=4)  # turned a quarter counterclockwise
    assert grey[:100, 40:].mean() == pytest.approx(60, abs=4)


@pytest.mark.parametrize("pix_fmt", ["yuv420p", "yuvj420p"])
def test_grey_is_ffmpegs_own(folder, pix_fmt):
    """fer-ray greys 8-bit YUV by table (fast); FFmpeg's swscale gives the same pixels, for video-range
    and full-range luma alike, on a width whose rows are padded in memory."""
    gradient = np.tile(np.linspace(0, 255, 150).astype(np.uint8), (100, 1))
    path = write_video(folder / f"gradient-{pix_fmt}.mp4", [gradient, gradient[::-1]], [0, 0.1], pix_fmt=pix_fmt)
    with av.open(str(path)) as container:
        assert {f.color_range for f in container.decode(video=0)} == {2 if pix_fmt == "yuvj420p" else 0}
        container.seek(0)
        swscale = [f.to_ndarray(format="gray") for f in container.decode(video=0)]
    ours = [f.grey for f in sample_frames(path, 0)]
    assert len(ours) == 2 and all(np.array_equal(a, b) for a, b in zip(ours, swscale))
    assert ours[0][:, -5:].mean() > 240 and ours[0][:, :5].mean() < 15  # the range is stretched back


def test_faces_switch_at_the_scheduled_times_and_the_detector_finds_them(folder):
    """A face that changes at 1.3 s: each frame sampled at 2 per second shows the face scheduled at
    its time, so a change lands within one sample period, and the detector finds it in place."""
    a, b = detectable_faces(2, side=96)
    schedule = [(0.0, photo([a], [(40, 30)], 240, 180)), (1.3, photo([b], [(40, 30)], 240, 180))]
    path = scheduled_video(folder / "switch.mp4", schedule, seconds=3)
    detector = HaarDetector()
    frames = list(sample_frames(path, 2))
    assert [f.time for f in frames] == pytest.approx([0, 0.5, 1.0, 1.5, 2.0, 2.5])
    for frame in frames:
        distances = [np.abs(frame.grey.astype(int) - picture).mean() for _, picture in schedule]
        assert int(np.argmin(distances)) == shown(schedule, frame.time)
        (face,) = detector.detect(frame.grey)
        assert abs(face.box.x - 40) < 20 and abs(face.box.y - 30) < 20


@pytest.mark.parametrize("make, message", [
    (corrupt_video, r"cannot decode video \(Invalid data found when processing input\)"),
    (empty_video, r"empty file \(0 bytes\)"),
])
def test_files_that_are_no_video_raise_a_one_line_video_error(folder, make, message):
    path = make(folder / f"bad-{make.__name__}.mp4")
    for read in (probe, lambda p: list(sample_frames(p, 2)), lambda p: probe(os.fsencode(p))):
        with pytest.raises(VideoError, match=f"^{message}$"):
            read(path)


def test_a_truncated_mp4_is_refused_and_an_image_error(folder):
    whole = write_video(folder / "whole.mp4", numbered(20), [i / FPS for i in range(20)])
    with pytest.raises(ImageError, match="cannot decode video"):  # every error-row path catches it
        list(sample_frames(truncated_video(folder / "cut.mp4", whole), 2))


def test_frames_above_the_pixel_limit_are_refused(video):
    with pytest.raises(VideoError, match=r"video too large: 160x120 = 19200 pixels > limit 10000"):
        next(sample_frames(video, 2, max_pixels=10_000))


def test_a_video_with_no_frames(folder):
    path = frameless_video(folder / "none.avi")
    assert probe(path).duration == 0
    with pytest.raises(VideoError, match="^video has no frames$"):
        list(sample_frames(path, 2))


# --- tracks -----------------------------------------------------------------------------------------------------


def test_two_faces_moving_keep_their_tracks():
    """Two faces drifting apart over 6 sampled frames, listed in either order within a frame."""
    frames, boxes = [], []
    for f in range(6):
        left, right = (10 + 8 * f, 50, 60, 60), (300 - 8 * f, 40, 70, 70)
        rows = [left, right] if f % 2 else [right, left]
        frames += [f, f]
        boxes += rows
    ids = assign_tracks(frames, boxes)
    assert ids[:2] == [0, 1]  # in order of first appearance: the right face came first
    assert all(ids[i] == (0 if boxes[i][0] > 150 else 1) for i in range(len(ids)))


def test_a_face_back_within_the_gap_keeps_its_id_and_later_gets_a_new_one():
    box = (100, 100, 50, 50)
    frames = [0, 1, 4, 8]  # missed in frames 2-3 (a gap of 2), then in 5-7 (a gap of 3)
    assert assign_tracks(frames, [box] * 4, max_gap=2) == [0, 0, 0, 1]
    assert assign_tracks(frames, [box] * 4, max_gap=3) == [0, 0, 0, 0]


def test_a_jump_starts_a_new_track_and_rows_must_be_in_time_order():
    assert assign_tracks([0, 1], [(0, 0, 50, 50), (40, 0, 50, 50)]) == [0, 1]  # IoU 0.11 < 0.3
    assert assign_tracks([0, 1], [(0, 0, 50, 50), (10, 0, 50, 50)]) == [0, 0]  # IoU 0.67
    assert assign_tracks([], []) == []
    with pytest.raises(ValueError, match="time order"):
        assign_tracks([1, 0], [(0, 0, 5, 5)] * 2)


# --- summary and plot -----------------------------------------------------------------------------------------


def scored(path: str, rows: list[tuple[int, float, int | None, str | None]]) -> pa.Table:
    """Rows as scoring writes them: (frame, time, track, emotion); emotion None = no face."""
    probs = {e: [(0.7 if emotion == e else 0.05) if emotion else None for *_, emotion in rows] for e in EMOTIONS}
    return pa.table({
        "path": [path] * len(rows), "frame": [r[0] for r in rows], "time": pa.array([r[1] for r in rows], pa.float64()),
        "track": pa.array([r[2] for r in rows], pa.int64()), "emotion": pa.array([r[3] for r in rows], pa.string()),
        **{e: pa.array(p, pa.float32()) for e, p in probs.items()},
        "error": pa.array([None if r[3] else "no face detected" for r in rows], pa.string()),
    })


def test_track_summary_gives_each_tracks_share_of_each_emotion():
    table = pa.concat_tables([
        scored("b.mp4", [(0, 0.0, 0, "happy"), (5, 0.5, 0, "happy"), (5, 0.5, 1, "sad"), (10, 1.0, None, None),
                         (15, 1.5, 0, "sad"), (20, 2.0, 1, "sad")]),
        scored("a.mp4", [(0, 0.0, None, None)]),
    ])
    summary = track_summary(table).to_pylist()
    assert [(r["path"], r["track"], r["frames"], r["first_time"], r["last_time"], r["dominant"]) for r in summary] \
        == [("b.mp4", 0, 3, 0.0, 1.5, "happy"), ("b.mp4", 1, 2, 0.5, 2.0, "sad")]
    assert summary[0]["happy"] == pytest.approx(2 / 3) and summary[0]["sad"] == pytest.approx(1 / 3)
    assert summary[1]["sad"] == 1.0 and sum(summary[1][e] for e in EMOTIONS) == 1.0
    assert track_summary(scored("a.mp4", [(0, 0.0, None, None)])).num_rows == 0


def test_plot_timeline_writes_a_png_per_video(tmp_path):
    rows = [(i, i / 2, 0, "happy" if i < 6 else "sad") for i in range(10)] + [(i, i / 2, 1, "fear") for i in range(4)]
    plot_timeline(scored("clip.mp4", rows), tmp_path / "clip.png")
    plot_timeline(scored("empty.mp4", [(0, 0.0, None, None)]), tmp_path / "empty.png")
    for name, least in (("clip.png", 30_000), ("empty.png", 3_000)):  # 14 lines and their labels; one line of text
        with Image.open(tmp_path / name) as png:
            assert png.format == "PNG" and png.width >= 800 and png.height >= 300
            assert np.asarray(png.convert("L")).std() > 5  # not a blank page
        assert (tmp_path / name).stat().st_size > least
    with pytest.raises(ValueError, match="one video"):
        plot_timeline(pa.concat_tables([scored("a.mp4", rows), scored("b.mp4", rows)]), tmp_path / "two.png")
