"""Videos: frames/s of ``fer-ray score`` against a plain loop, and memory on a 2-hour video.

    .venv/bin/python benchmarks/bench_video.py [--minutes 10] [--long-hours 2] [--fps 2] [--num-cpus 2]
        [--work /tmp/bench_video]

Generated videos (kept in ``--work``): a 1280x720 H.264 video of ``--minutes`` at 30 frames/s
with two faces drifting across a noisy background, and a 2-hour one at 720p and 2 frames/s
(fast to make; decoding cost per sampled frame is what differs). Detection is OpenCV's Haar
cascade, which finds these drawn faces (the default CenterFace is tuned to real ones).

  * plain loop, one process (torch and OpenCV on ``--num-cpus`` threads): PyAV frames sampled at
    ``--fps`` (``sample_frames``), ``crop_faces`` on each, ``Predictor.predict_proba`` on batches
    of 256 faces: what a user would write with the same decoder, detector and model.
  * ``score_folder`` on a local Ray of ``--num-cpus`` CPUs: segments of 60 s on parallel actors,
    parts, assembly with tracks. Wall time from the call to its return (Ray's start included)
    and the steady rate its summary gives.

The 2-hour video is scored by ``score_folder``; the peak RSS of the driver (``ru_maxrss``: run
it alone, ``--minutes 0``, for the driver's own) and of each Ray worker process (psutil, polled
every 0.5 s) are printed.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))


def make_video(path: Path, seconds: float, rate: int, size=(1280, 720)) -> Path:
    """Two drawn faces drifting over a noisy gradient, H.264 (ultrafast), ``rate`` frames/s."""
    import av

    from photos import background, detectable_faces

    if path.exists():
        return path
    width, height = size
    faces = detectable_faces(2, side=200)
    base = background(width, height)
    tmp = path.with_name("." + path.name)
    with av.open(str(tmp), "w") as container:
        stream = container.add_stream("libx264", rate=rate, options={"preset": "ultrafast"})
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for i in range(int(seconds * rate)):
            img = base.copy()
            t = i / rate
            for k, face in enumerate(faces):
                x = int(250 + 600 * k + 150 * np.sin(t / 7 + k))
                y = int(200 + 100 * np.cos(t / 5 + k))
                img[y : y + face.shape[0], x : x + face.shape[1]] = face
            container.mux(stream.encode(av.VideoFrame.from_ndarray(img, format="gray")))
        container.mux(stream.encode())
    tmp.rename(path)
    return path


def plain_loop(path: Path, fps: float, threads: int) -> tuple[float, int]:
    import cv2
    import torch

    from fer_ray.data.video import sample_frames
    from fer_ray.inference.crops import DetectConfig, crop_faces
    from fer_ray.inference.predictor import Predictor
    from fer_ray.pretrained import default_artifact

    torch.set_num_threads(threads)
    cv2.setNumThreads(threads)
    predictor = Predictor(str(default_artifact()))
    config = DetectConfig(detector="haar", image_size=predictor.image_size)
    detector = config.make_detector()
    t0, frames, crops = time.perf_counter(), 0, []
    for frame in sample_frames(os.fsencode(path), fps):
        frames += 1
        crops += [crop for _, crop in crop_faces(frame.grey, config, detector)]
        if len(crops) >= 256:
            predictor.predict_proba(np.stack(crops))
            crops = []
    if crops:
        predictor.predict_proba(np.stack(crops))
    return time.perf_counter() - t0, frames


def worker_peaks(stop: threading.Event, peaks: dict) -> None:
    """Each Ray worker process's peak RSS (VmHWM in /proc), polled until ``stop``."""
    while not stop.wait(0.5):
        for proc in Path("/proc").glob("[0-9]*"):
            try:
                if not (proc / "cmdline").read_bytes().startswith(b"ray::"):
                    continue
                hwm = next(line for line in (proc / "status").read_text().splitlines() if line.startswith("VmHWM"))
            except (OSError, StopIteration):
                continue  # gone meanwhile
            peaks[proc.name] = max(peaks.get(proc.name, 0), int(hwm.split()[1]) * 1024)


def score(path: Path, fps: float, num_cpus: int, work: Path) -> tuple[float, object, dict]:
    from fer_ray.inference.batch import score_folder
    from fer_ray.pretrained import default_artifact

    stop, peaks = threading.Event(), {}
    poller = threading.Thread(target=worker_peaks, args=(stop, peaks), daemon=True)
    poller.start()
    t0 = time.perf_counter()
    summary = score_folder(str(default_artifact()), str(path), str(work / f"{path.stem}.parquet"), fps=fps,
                           detector="haar", num_cpus=num_cpus, overwrite=True)
    seconds = time.perf_counter() - t0
    stop.set()
    poller.join()
    return seconds, summary, peaks


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10)
    parser.add_argument("--long-hours", type=float, default=2)
    parser.add_argument("--fps", type=float, default=2)
    parser.add_argument("--num-cpus", type=int, default=2)
    parser.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "bench_video"))
    args = parser.parse_args(argv)
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    print(f"load average at start: {os.getloadavg()}", flush=True)
    if args.minutes:
        t0 = time.time()
        clip = make_video(work / f"clip-{args.minutes:g}min-720p30.mp4", args.minutes * 60, 30)
        print(f"{clip.name} ready ({time.time() - t0:.0f} s)", flush=True)
        seconds, frames = plain_loop(clip, args.fps, args.num_cpus)
        print(f"plain loop ({args.num_cpus} threads): {frames} frames in {seconds:.1f} s = "
              f"{frames / seconds:.2f} frames/s", flush=True)
        seconds, summary, _ = score(clip, args.fps, args.num_cpus, work)
        print(f"fer-ray score ({args.num_cpus} CPUs): {summary.frames} frames in {seconds:.1f} s = "
              f"{summary.frames / seconds:.2f} frames/s end to end (steady {summary.images_per_s:.2f} frames/s); "
              f"{summary.faces} faces", flush=True)
    if args.long_hours:  # the driver's peak RSS is its own only when run alone: --minutes 0
        long = make_video(work / f"long-{args.long_hours:g}h-720p2.mp4", args.long_hours * 3600, 2)
        seconds, summary, peaks = score(long, args.fps, args.num_cpus, work)
        driver = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"{long.name}: {summary.frames} frames in {seconds:.0f} s; peak RSS: driver {driver:.0f} MB, "
              f"largest Ray worker {max(peaks.values(), default=0) / 2**20:.0f} MB "
              f"({len(peaks)} worker processes seen)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
