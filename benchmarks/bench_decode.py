"""Decoding videos: PyAV (fer_ray.data.video) against OpenCV's FFmpeg backend, both on one thread.

    .venv/bin/python benchmarks/bench_decode.py [--video /tmp/bench-decode-720p.mp4] [--seconds 60]
        [--seeks 30] [--repeat 2]

Writes once (kept at --video) a 1280x720, 30 fps H.264 mp4 (libx264's defaults: CRF 23, preset
medium, B-frames, a keyframe at least every 250 frames) of a noisy gradient panning 2 px a frame,
each frame carrying its own number as a 12-bit bar code of 64 px squares. Then, best of --repeat:

Speed is given as video frames (1800 for 60 s) per CPU second, the CPU time of the whole process
(one decoding thread, so it is that thread's work, and it holds on a machine busy with other work).

- every frame, decoded and greyed: ``sample_frames(path, 0)`` against ``VideoCapture.read`` +
  ``cv2.cvtColor`` (the grey a user of OpenCV gets; it decodes to BGR first);
- 2 frames a second: ``sample_frames(path, 2)`` (decodes every frame, greys the 120 picked)
  against OpenCV ``grab`` on every frame and ``retrieve`` + grey on the same 120 (picked by the same
  rule from ``CAP_PROP_POS_MSEC``), and against OpenCV seeking to each sample time;
- seeking: for --seeks seeded random times t, the first frame read after asking for t: PyAV
  ``sample_frames(path, 0, start=t)``; OpenCV ``set(CAP_PROP_POS_MSEC, t)`` then ``read``, and
  ``set(CAP_PROP_POS_FRAMES, ceil(30 t))``. The bar code says which frame came; the right one is
  the first frame at or after t (number ceil(30 t)). Prints hits, the worst miss in frames, the
  frame number each library reports against the bar code, and the mean CPU time per seek (PyAV's
opens the file each time, as a segment does; OpenCV's capture is opened once).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path

import av
import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from fer_ray.data.video import sample_frames  # noqa: E402

WIDTH, HEIGHT, FPS, BITS, SQUARE = 1280, 720, 30, 12, 64


def write_video(path: str, seconds: int) -> None:
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:HEIGHT, 0 : WIDTH + 2 * FPS * seconds]
    scene = np.clip(60 + 120 * (np.sin(xx / 97.0) + 1) / 2 + 40 * yy / HEIGHT + rng.normal(0, 6, xx.shape), 0, 255)
    scene = scene.astype(np.uint8)
    with av.open(path, "w") as container:
        stream = container.add_stream("libx264", rate=FPS)
        stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        for i in range(FPS * seconds):
            img = scene[:, 2 * i : 2 * i + WIDTH].copy()
            for bit in range(BITS):
                img[:SQUARE, bit * SQUARE : (bit + 1) * SQUARE] = 255 if i >> bit & 1 else 0
            frame = av.VideoFrame.from_ndarray(img, format="gray")
            frame.pts = i
            container.mux(stream.encode(frame))
        container.mux(stream.encode())


def bar_code(grey: np.ndarray) -> int:
    middle = SQUARE // 2
    return sum(1 << bit for bit in range(BITS) if grey[middle, bit * SQUARE + middle] > 128)


def capture(path: str) -> cv2.VideoCapture:
    cap = cv2.VideoCapture(path, cv2.CAP_FFMPEG, [cv2.CAP_PROP_N_THREADS, 1])
    assert cap.isOpened(), path
    return cap


def picked(t: float, previous: float | None, fps: float) -> bool:
    return previous is None or math.floor(t * fps) > math.floor(previous * fps)


def cv2_every(path: str) -> int:
    cap, n = capture(path), 0
    while True:
        ok, bgr = cap.read()
        if not ok:
            return n
        cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)
        n += 1


def cv2_grab(path: str, fps: float) -> int:
    cap, n, previous = capture(path), 0, None
    while cap.grab():
        t = cap.get(cv2.CAP_PROP_POS_MSEC) / 1000
        if picked(t, previous, fps):
            cv2.cvtColor(cap.retrieve()[1], cv2.COLOR_BGR2GRAY)
            n += 1
        previous = t
    return n


def cv2_seek_each(path: str, fps: float, seconds: int) -> int:
    cap, n = capture(path), 0
    for k in range(int(seconds * fps)):
        cap.set(cv2.CAP_PROP_POS_MSEC, 1000 * k / fps)
        ok, bgr = cap.read()
        n += ok
    return n


def best_time(run, repeat: int) -> tuple[float, float, int]:
    """Best wall and CPU seconds of ``repeat`` runs (on one thread, CPU time is the work whatever else
    runs on the machine) and the frames the run put out."""
    walls, cpus, n = [], [], 0
    for _ in range(repeat):
        wall, cpu = time.perf_counter(), time.process_time()
        n = run()
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return min(walls), min(cpus), n


def speed(args) -> None:
    path, s = args.video, args.seconds
    runs = {
        "every frame  PyAV sample_frames(fps=0)": lambda: sum(1 for _ in sample_frames(path, 0)),
        "every frame  OpenCV read + cvtColor": lambda: cv2_every(path),
        "2 fps        PyAV sample_frames(fps=2)": lambda: sum(1 for _ in sample_frames(path, 2)),
        "2 fps        OpenCV grab all, retrieve picked": lambda: cv2_grab(path, 2),
        "2 fps        OpenCV seek to each sample": lambda: cv2_seek_each(path, 2, s),
    }
    print(f"{'variant':48s} {'frames out':>10s} {'wall s':>7s} {'CPU s':>6s} {'video frames per CPU s':>23s}")
    for name, run in runs.items():
        wall, cpu, n = best_time(run, args.repeat)
        print(f"{name:48s} {n:10d} {wall:7.2f} {cpu:6.2f} {FPS * s / cpu:23.0f}")


def seeking(args) -> None:
    times = np.random.default_rng(1).uniform(0, args.seconds - 1, args.seeks)

    def pyav(t):
        frame = next(sample_frames(args.video, 0, start=t))
        return bar_code(frame.grey), frame.index

    cap = capture(args.video)

    def opencv(prop, value):
        def read(t):
            cap.set(prop, value(t))
            ok, bgr = cap.read()
            return bar_code(cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)), int(cap.get(cv2.CAP_PROP_POS_FRAMES)) - 1
        return read

    ways = {"PyAV sample_frames(start=t)": pyav,
            "OpenCV set POS_MSEC=t, read": opencv(cv2.CAP_PROP_POS_MSEC, lambda t: 1000 * t),
            "OpenCV set POS_FRAMES=ceil(30t), read": opencv(cv2.CAP_PROP_POS_FRAMES, lambda t: math.ceil(FPS * t))}
    print(f"\n{'seek':40s} {'right frame':>11s} {'worst miss':>10s} {'index ok':>8s} {'CPU ms/seek':>11s}")
    for name, way in ways.items():
        hits = worst = index_ok = 0
        start = time.process_time()
        for t in times:
            got, reported = way(float(t))
            miss = got - math.ceil(FPS * t)
            hits += miss == 0
            worst = max(worst, abs(miss), key=abs)
            index_ok += reported == got
        ms = 1000 * (time.process_time() - start) / len(times)
        print(f"{name:40s} {hits:5d}/{len(times):<5d} {worst:10d} {index_ok:4d}/{len(times):<3d} {ms:11.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--video", default="/tmp/bench-decode-720p.mp4")
    parser.add_argument("--seconds", type=int, default=60)
    parser.add_argument("--seeks", type=int, default=30)
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    cv2.setNumThreads(1)
    if not os.path.exists(args.video):
        start = time.perf_counter()
        write_video(args.video, args.seconds)
        print(f"wrote {args.video} in {time.perf_counter() - start:.0f} s")
    print(f"av {av.__version__} (FFmpeg libavcodec {av.library_versions['libavcodec']}), OpenCV {cv2.__version__}, "
          f"{os.cpu_count()} CPUs, one decoding thread each")
    speed(args)
    seeking(args)


if __name__ == "__main__":
    main()
