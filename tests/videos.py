"""Generated videos for the video tests, written with PyAV (the library fer-ray reads them with).

A "schedule" says what a video shows: pictures (grey arrays, e.g. ``tests/photos.photo`` of
``detectable_faces`` or ``fer_faces``) and the time each one starts, so a test knows which face
(and expression) every frame holds and when it changes. Beside them: files that are no video.
"""

from __future__ import annotations

from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

# The encoder for each container: H.264 where it is the usual codec, VP9 for WebM, MPEG-4 part 2
# for AVI (an old camera's). Keyframes often (KEYINT) so that a short video has several to seek to.
CODECS = {".mp4": "libx264", ".mov": "libx264", ".mkv": "libx264", ".webm": "libvpx-vp9", ".avi": "mpeg4"}
KEYINT = 10
_VP9_FAST = {"deadline": "realtime", "cpu-used": "8"}


def write_video(path: Path, pictures: Sequence[np.ndarray], times: Sequence[float], rotation: int = 0,
                pix_fmt: str = "yuv420p") -> Path:
    """Encode grey pictures shown at ``times`` (seconds; uneven times make a variable frame rate),
    with the codec ``CODECS`` gives the file's extension. ``rotation``: the display matrix's
    counterclockwise degrees (a phone held upright stores its picture turned and says so there).
    ``pix_fmt`` "yuvj420p": luma on the full 0..255 range (a JPEG's, some cameras'), not 16..235."""
    height, width = pictures[0].shape
    with av.open(str(path), "w") as container:
        stream = container.add_stream(CODECS[path.suffix], rate=_rate(times))
        stream.width, stream.height, stream.pix_fmt, stream.gop_size = width, height, pix_fmt, KEYINT
        if path.suffix == ".webm":
            stream.options = _VP9_FAST
        stream.codec_context.time_base = time_base = Fraction(1, 1000) if path.suffix == ".mkv" else 1 / _rate(times)
        if rotation:
            stream.set_display_rotation(rotation)
        for picture, t in zip(pictures, times):
            frame = av.VideoFrame.from_ndarray(picture, format="gray")
            frame.pts, frame.time_base = round(Fraction(t) / time_base), time_base
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return path


def _rate(times: Sequence[float]) -> Fraction:
    """The frame rate of evenly spaced ``times`` (for uneven ones, the rate of their finest step)."""
    return Fraction(1 / min(b - a for a, b in zip(times, times[1:]))).limit_denominator(1000)


def scheduled_video(path: Path, schedule: Sequence[tuple[float, np.ndarray]], seconds: float, fps: int = 10,
                    rotation: int = 0) -> Path:
    """A ``seconds``-long video at ``fps`` showing each ``(start, picture)`` of ``schedule`` from its
    start until the next one's."""
    times = [i / fps for i in range(round(seconds * fps))]
    return write_video(path, [schedule[shown(schedule, t)][1] for t in times], times, rotation)


def shown(schedule: Sequence[tuple[float, np.ndarray]], t: float) -> int:
    """Which picture of ``schedule`` a frame at time ``t`` shows."""
    return max(i for i, (start, _) in enumerate(schedule) if start <= t)


def numbered(count: int, width: int = 160, height: int = 120) -> list[np.ndarray]:
    """``count`` pictures, each telling its own number by the brightness of a band per bit: a test
    reads back which frame it was given, whatever the codec did to the pixels."""
    pictures = []
    for i in range(count):
        img = np.full((height, width), 128, np.uint8)
        for bit in range(8):
            img[:, bit * width // 8 : (bit + 1) * width // 8] = 230 if i >> bit & 1 else 25
        pictures.append(img)
    return pictures


def number_of(grey: np.ndarray) -> int:
    height, width = grey.shape
    return sum(1 << bit for bit in range(8) if grey[height // 2, bit * width // 8 + width // 16] > 128)


def frameless_video(path: Path) -> Path:
    """An AVI whose video stream holds no frame (an MP4 or Matroska file without frames has no
    video stream to read at all)."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=10)
        stream.width, stream.height, stream.pix_fmt = 160, 120, "yuv420p"
        container.start_encoding()
    return path


def corrupt_video(path: Path) -> Path:
    """Bytes named like a video that no demuxer takes: an MP4 box header, then noise."""
    path.write_bytes(b"\x00\x00\x00\x18ftypmp42" + np.random.default_rng(0).bytes(4000))
    return path


def truncated_video(path: Path, source: Path) -> Path:
    """The first half of a real MP4: its index (written at the end) is lost."""
    data = source.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def empty_video(path: Path) -> Path:
    path.write_bytes(b"")
    return path
