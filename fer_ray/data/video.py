"""Read videos as upright grey frames sampled in time: the one place video pixels enter fer-ray.

PyAV (FFmpeg's libraries, as a wheel) decodes: on one thread it decoded and greyed H.264 faster
than OpenCV's FFmpeg backend, and its seeks by time land where asked, which segments rely on
(benchmarks/bench_decode.py). A long video is read as time segments (``segments``), each one
on its own (``sample_frames(path, fps, start, end)``); a segment seeks to a keyframe before its
start and decodes forward one frame at a time, so memory does not grow with the video's length.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Iterator
from fractions import Fraction
from itertools import chain
from typing import NamedTuple

import av
import cv2
import numpy as np

from fer_ray.data.files import not_a_file
from fer_ray.data.preprocess import DEFAULT_MAX_PIXELS, ImageError
from fer_ray.errors import FerRayError

# The demuxers of the containers of preprocess.VIDEO_EXTENSIONS (FFmpeg's names): a file is read
# only by one of them, whatever its name says, so an untrusted file cannot make FFmpeg follow a playlist or another protocol.
_DEMUXERS = "mov,matroska,avi"


class VideoError(ImageError):
    """One video that cannot be used. The message is the reason recorded for it; an ImageError,
    so every path that records an unreadable input as an error row records a video too."""


class VideoInfo(NamedTuple):
    duration: float  # seconds, from the container (see probe)
    fps: float  # the stream's average frame rate
    width: int  # as stored: a phone's portrait video is stored landscape and comes out upright
    height: int


class Frame(NamedTuple):
    index: int  # the frame's number in the stream (see sample_frames)
    time: float  # presentation time, seconds after the stream's first frame
    grey: np.ndarray  # uint8 (H, W), upright


@contextlib.contextmanager
def _opened(source: str | os.PathLike | bytes, max_pixels: int) -> Iterator[tuple]:
    """The container of the file at ``source`` (a path; as bytes, a name in any encoding, as
    score lists them) and its first video stream, closed on exit. Every FFmpeg error, on opening
    or while decoding, becomes a VideoError."""
    try:
        problem = not_a_file(source)  # checked first: opening a FIFO would wait for a writer for ever
        if problem:
            raise VideoError(problem)
        if os.path.getsize(source) == 0:
            raise VideoError("empty file (0 bytes)")
        # Opened here, not by FFmpeg: it takes names as UTF-8 text, which a file's name need not be.
        file = open(source, "rb")
        try:
            container = av.open(file, options={"format_whitelist": _DEMUXERS})
        except BaseException:
            file.close()
            raise
    except (OSError, av.FFmpegError) as exc:
        raise VideoError(f"cannot decode video ({exc.strerror or exc})") from None
    with file, container:
        if not container.streams.video:
            raise VideoError("no video stream in the file")
        stream = container.streams.video[0]
        # One thread: a decoding task has one CPU, and a long video's parallelism is its segments.
        stream.codec_context.thread_count = 1
        _check_size(stream.codec_context.width, stream.codec_context.height, max_pixels)
        try:
            yield container, stream
        except av.FFmpegError as exc:
            raise VideoError(f"cannot decode video ({exc.strerror or exc})") from None


def _check_size(width: int, height: int, max_pixels: int) -> None:
    """Refuse frames above the image pixel limit, as an image would be: past 8K (33 MP) a video is
    a decompression bomb or a mistake, and downscaling would detach boxes from the file's pixels."""
    if width * height > max_pixels:
        raise VideoError(f"video too large: {width}x{height} = {width * height} pixels > limit {max_pixels}")


def _origin(stream) -> int:
    return stream.start_time or 0


def _rate(stream) -> Fraction:
    rate = stream.average_rate or stream.guessed_rate
    if not rate:
        raise VideoError("video stream has no frame rate")
    return rate


def probe(source: str | os.PathLike | bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> VideoInfo:
    """Duration, frame rate and size of a video from its container's metadata (no decoding).

    The duration is the video stream's, else the container's, else (a stream written live, such as
    a browser's WebM, has none in its header) the end of its last packet, read without decoding.
    It may be a little off: ``segments`` leaves the last segment open-ended for that reason.
    Raises VideoError.
    """
    with _opened(source, max_pixels) as (container, stream):
        if stream.duration:
            duration = stream.duration * stream.time_base
        elif container.duration:
            duration = Fraction(container.duration, av.time_base)
        else:
            end = max((p.pts + p.duration for p in container.demux(stream) if p.pts is not None), default=None)
            duration = (end - _origin(stream)) * stream.time_base if end is not None else Fraction(0)
        width, height = stream.codec_context.width, stream.codec_context.height
        return VideoInfo(float(duration), float(_rate(stream)), width, height)


def segments(duration: float, seconds: float) -> list[tuple[float, float]]:
    """[start, end) time segments of ``seconds`` covering [0, duration]; the last one ends at
    infinity, so frames past a container's understated duration are still read."""
    if seconds <= 0:
        raise FerRayError(f"segment length must be positive, got {seconds}")
    count = max(1, math.ceil(duration / seconds))
    return [(k * seconds, (k + 1) * seconds if k + 1 < count else math.inf) for k in range(count)]


def sample_frames(source: str | os.PathLike | bytes, fps: float, start: float = 0.0, end: float = math.inf,
                  max_pixels: int = DEFAULT_MAX_PIXELS) -> Iterator[Frame]:
    """The frames sampled at ``fps`` whose presentation time is in [start, end), upright and grey.

    Sampling: the grid t_k = k / fps (k = 0, 1, ...) picks, for each k, the first frame at or after
    t_k; a frame is picked when a grid point lies after the previous frame and at or before it, so
    a segment decides from the frame before its start, and the segments of a video together yield
    exactly the frames one pass over it yields. ``fps`` 0 takes every frame. Skipped frames are
    decoded (later frames need them) but never converted. Times are counted in the stream's own
    ticks (its time base), so every comparison is exact.

    ``index``: round(time x the stream's average frame rate). For a constant frame rate that is the
    frame's number; for a variable one it is its number at the average rate: it never decreases and
    it is the same in every segment (it depends on the timestamp alone, never on counting frames
    from a seek), but two frames closer than one average period can share it; ``time`` is exact.

    Raises VideoError: when the file cannot be opened or decoded (possibly after frames were
    yielded), and "video has no frames" when a read from the start finds none.
    """
    if fps < 0:
        raise FerRayError(f"fps must be 0 (every frame) or positive, got {fps}")
    with _opened(source, max_pixels) as (container, stream):
        origin, time_base, rate = _origin(stream), stream.time_base, _rate(stream)
        first_tick = math.ceil(Fraction(start) / time_base)
        end_tick = math.ceil(Fraction(end) / time_base) if math.isfinite(end) else math.inf
        # The grid point at or before tick t is number floor(t * time_base * fps) = t * num // den.
        num, den = (Fraction(fps) * time_base).as_integer_ratio()
        last_point = None  # the grid point at or before the frame before (None: no frame before)
        for frame in _decoded_from(container, stream, first_tick):
            if frame.pts is None:
                raise VideoError("cannot decode video (a frame without a timestamp)")
            tick = frame.pts - origin
            if tick >= end_tick:
                return
            point = tick * num // den
            picked = tick >= 0 and (fps == 0 or last_point is None or point > last_point)
            last_point = point
            if picked and tick >= first_tick:
                _check_size(frame.width, frame.height, max_pixels)
                yield Frame(round(tick * time_base * rate), float(tick * time_base), _upright_grey(frame))
        if last_point is None and first_tick <= 0:
            raise VideoError("video has no frames")


def _decoded_from(container, stream, first_tick: int) -> Iterator[av.VideoFrame]:
    """Decoded frames from a keyframe before ``first_tick`` (from the first frame when there is
    none): whether the first frame at or after it is sampled depends on the frame before it.

    The seek asks for the last keyframe one tick before; where a demuxer lands later than asked
    (its index is coarse or holds decoding times), it seeks again further back.
    """
    if first_tick <= 0:
        return container.decode(stream)
    origin, back = _origin(stream), 1
    while True:
        target = max(first_tick - back, 0)
        container.seek(origin + target, stream=stream)
        frames = container.decode(stream)
        first = next(frames, None)
        if first is None:
            return iter(())
        if target == 0 or first.pts is None or first.pts - origin < first_tick:
            return chain([first], frames)
        back = 2 * back + math.ceil(1 / stream.time_base)  # a second more, then doubling


# swscale's grey from 8-bit "video range" luma (16..235 -> 0..255), as a table: the same values
# (tests/test_video.py), in a third of the time (benchmarks/bench_decode.py).
_VIDEO_RANGE = np.clip(np.round((np.arange(256) - 16) * 255 / 219), 0, 255).astype(np.uint8)
_LUMA_PLANE_FIRST = {"yuv420p", "yuvj420p", "yuv422p", "yuvj422p", "yuv444p", "yuvj444p", "nv12", "nv21"}


def _upright_grey(frame: av.VideoFrame) -> np.ndarray:
    """The frame's grey (its luma, FFmpeg's), turned upright as a player shows it: the display
    matrix says how many degrees to turn the stored picture counterclockwise."""
    if frame.format.name in _LUMA_PLANE_FIRST:
        plane = frame.planes[0]
        luma = np.frombuffer(plane, np.uint8, frame.height * plane.line_size).reshape(frame.height, -1)
        luma = luma[:, : frame.width]
        full_range = frame.color_range == 2 or frame.format.name.startswith("yuvj")
        grey = luma.copy() if full_range else cv2.LUT(luma, _VIDEO_RANGE)
    else:  # 10-bit, RGB, palette ...
        grey = frame.to_ndarray(format="gray")
    turns = round(frame.rotation / 90) % 4
    return np.ascontiguousarray(np.rot90(grey, turns)) if turns else grey
