"""Does ``fer-ray score`` scale with its input? Driver memory and the steady rate, 10k to 1M crops.

    .venv/bin/python benchmarks/bench_scale.py [--sizes 10000 100000 1000000] [--num-cpus 2]
        [--work /tmp/bench_scale] [--address ADDR] [--parts]

For each size, a folder of that many 48x48 PNG face crops (100 folders, a few distinct images
copied over and over: only the count matters here) is scored with ``--faces none`` by
``score_folder`` in a fresh Python process, which then reports its own peak RSS
(``ru_maxrss``): the driver's, since the actors are other processes. The steady rate is the
one the summary line gives (after every actor's first results). With ``--address`` the job
runs on that cluster instead of a local Ray of ``--num-cpus`` CPUs (the scale-out figure:
cluster/local.sh's two nodes against ``--num-cpus 1``). ``--parts`` writes a folder of parts
(``--output DIR/``) instead of one assembled Parquet file.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = 100

RUN = """
import json, resource, sys, time
sys.path.insert(0, {root!r})
from fer_ray.inference.batch import score_folder
from fer_ray.pretrained import default_artifact
t0 = time.time()
s = score_folder(str(default_artifact()), {input!r}, {output!r}, faces="none", overwrite=True, **{extra})
print(json.dumps({{"files": s.files, "seconds": time.time() - t0, "steady_per_s": s.images_per_s,
                   "startup_s": s.startup_seconds, "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}}))
"""


def make_crops(folder: Path, count: int) -> None:
    """``count`` PNG crops in ``FOLDERS`` sub-folders (kept between runs: writing 1M files takes minutes)."""
    from fer_ray.data.synthetic import synthetic_faces

    done = folder / f".complete-{count}"
    if done.exists():
        return
    pngs = []
    import cv2

    for face in synthetic_faces(np.arange(16) % 7, size=48, seed=1):
        pngs.append(cv2.imencode(".png", face)[1].tobytes())
    for i in range(count):
        sub = folder / f"{i % FOLDERS:03d}"
        if i < FOLDERS:
            sub.mkdir(parents=True, exist_ok=True)
        (sub / f"{i:07d}.png").write_bytes(pngs[i % len(pngs)])
    done.touch()


def run(input: Path, output: str, num_cpus: int, address: str | None) -> dict:
    extra = {} if address else {"num_cpus": num_cpus}
    env = dict(os.environ, RAY_AUTH_MODE=os.environ.get("RAY_AUTH_MODE", "disabled"))
    if address:
        env["RAY_ADDRESS"] = address
    else:
        env.pop("RAY_ADDRESS", None)
    code = RUN.format(root=str(ROOT), input=str(input), output=output, extra=extra)
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--num-cpus", type=int, default=2)
    parser.add_argument("--work", default="/tmp/bench_scale")
    parser.add_argument("--address", help="a running cluster's address (RAY_ADDRESS), e.g. cluster/local.sh's")
    parser.add_argument("--parts", action="store_true", help="output a folder of parts, nothing assembled")
    args = parser.parse_args(argv)
    work = Path(args.work)
    print(f"load average at start: {os.getloadavg()}")
    for size in args.sizes:
        folder = work / f"crops-{size}"
        t0 = time.time()
        make_crops(folder, size)
        print(f"{size} crops ready in {time.time() - t0:.0f} s", flush=True)
        output = f"{work / f'scores-{size}'}/" if args.parts else str(work / f"scores-{size}.parquet")
        result = run(folder, output, args.num_cpus, args.address)
        cpus = "cluster" if args.address else f"{args.num_cpus} CPU"
        print(f"{size:>9} crops ({cpus}): driver peak RSS {result['rss_mb']:.0f} MB, steady "
              f"{result['steady_per_s']:.0f} crops/s, start-up {result['startup_s']:.1f} s, "
              f"all {result['seconds']:.1f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
