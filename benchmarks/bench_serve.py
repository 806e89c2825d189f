"""Requests/s and latency of the Serve app, batched vs unbatched, under a bounded load.

    .venv/bin/python benchmarks/bench_serve.py --artifact DIR [--concurrency 32] [--seconds 15] [--gpu]

One local Ray, one replica (1 CPU, torch on 1 thread; with ``--gpu`` also one GPU), the same deployment twice: once with
``@serve.batch`` merging up to ``--max-batch-size`` requests into one forward pass, once with
``max_batch_size=1`` (every request its own forward pass). Everything else is identical:
``max_ongoing_requests``, the payload (one 48x48 FER2013-style face crop as a raw PNG body,
``?faces=none``, so the model, not face detection, is what the requests cost) and the load:
``--concurrency`` clients on loopback, each sending its next request as soon as the last one
is answered (a closed loop, so the load is bounded), for ``--seconds`` after a warm-up.
The load generator (aiohttp) runs in this process and shares the machine's CPUs with Serve.

Prints requests/s, p50 and p99 latency for each and the ratio batched / unbatched.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import time

import numpy as np


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def closed_loop(url: str, body: bytes, concurrency: int, seconds: float, warmup: float) -> dict:
    """``concurrency`` clients, each one request in flight; latencies after the warm-up."""
    import aiohttp

    latencies: list[float] = []
    errors = 0
    start = time.perf_counter()
    measure_from, stop_at = start + warmup, start + warmup + seconds

    async def client(session):
        nonlocal errors
        while True:
            t0 = time.perf_counter()
            if t0 >= stop_at:
                return
            async with session.post(url, data=body, headers={"content-type": "image/png"}) as r:
                await r.read()
                ok = r.status == 200
            t1 = time.perf_counter()
            if t0 >= measure_from:
                if ok:
                    latencies.append(t1 - t0)
                else:
                    errors += 1

    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=120)) as session:
        await asyncio.gather(*(client(session) for _ in range(concurrency)))
    lat = np.array(latencies) * 1000
    return {"requests": len(lat), "errors": errors, "rps": len(lat) / seconds,
            "p50_ms": float(np.percentile(lat, 50)), "p99_ms": float(np.percentile(lat, 99))}


def model_ceiling(artifact: str, batch: int, device: str = "cpu", reps: int = 30) -> tuple[float, float]:
    """ms per face of the bare forward pass at batch 1 and at ``batch`` (1 torch thread, like
    a replica): the most any request batching can gain on this device."""
    import torch

    from fer_ray.data.synthetic import synthetic_faces
    from fer_ray.inference.predictor import Predictor

    torch.set_num_threads(1)
    predictor = Predictor(artifact, device=device)
    faces = synthetic_faces(np.arange(batch) % 7, 48, seed=1)
    out = []
    for n in (1, batch):
        predictor.predict_proba(faces[:n])
        t0 = time.perf_counter()
        for _ in range(reps):
            predictor.predict_proba(faces[:n])
        out.append((time.perf_counter() - t0) / reps / n * 1000)
    return out[0], out[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--artifact", required=True)
    parser.add_argument("--concurrency", type=int, default=32, help="clients, one request in flight each")
    parser.add_argument("--seconds", type=float, default=15.0, help="measured load per configuration")
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--max-batch-size", type=int, default=32)
    parser.add_argument("--batch-wait-ms", type=float, default=30.0,
                        help="how long a batch waits to fill (30 ms: about one small batch forward here)")
    parser.add_argument("--num-cpus", type=int, default=2, help="CPUs of the local Ray")
    parser.add_argument("--gpu", action="store_true", help="the replica on one GPU (num_gpus=1)")
    parser.add_argument("--untrained", metavar="ARCH", help="serve an untrained ARCH (e.g. vgg16) with the "
                        "artifact's metadata instead: a heavier model, for timing only")
    args = parser.parse_args(argv)
    if args.untrained:
        import tempfile
        from pathlib import Path

        from gpu_inference import untrained_like  # benchmarks/ is on sys.path when run as a script

        args.artifact = untrained_like(args.artifact, Path(tempfile.mkdtemp()), args.untrained)
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")

    import httpx
    from ray import serve

    from fer_ray.data.preprocess import encode_png
    from fer_ray.data.synthetic import synthetic_faces
    from fer_ray.inference.serve import ServeConfig, build_app
    from fer_ray.runtime import init_ray

    print(f"load average at start (other users of this machine): {os.getloadavg()}")
    body = encode_png(synthetic_faces(np.array([3]), 48, seed=0)[0])
    init_ray(args.num_cpus)  # Ray finds the GPUs itself
    port = _free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    url = f"http://127.0.0.1:{port}/predict?faces=none"
    ongoing = max(64, 2 * args.concurrency)
    results = {}
    try:
        for name, size in (("batched", args.max_batch_size), ("unbatched", 1)):
            config = ServeConfig(artifact=args.artifact, max_batch_size=size, num_gpus=1 if args.gpu else 0,
                                 batch_wait_timeout_s=args.batch_wait_ms / 1000, max_ongoing_requests=ongoing)
            serve.run(build_app(config), name="bench", route_prefix="/")
            assert httpx.post(url, content=body, headers={"content-type": "image/png"}, timeout=60).status_code == 200
            results[name] = asyncio.run(closed_loop(url, body, args.concurrency, args.seconds, args.warmup))
            model = httpx.get(f"http://127.0.0.1:{port}/model", timeout=60).json()
            batching = model["batching"]
            results[name]["device"] = model["device"]
            results[name]["largest_batch"] = batching["largest_batch"]
            sizes = {int(k): v for k, v in batching["batches_by_size"].items()}
            results[name]["mean_batch"] = sum(k * v for k, v in sizes.items()) / max(1, sum(sizes.values()))
            serve.delete("bench")
    finally:
        serve.shutdown()

    print(f"load average at end: {os.getloadavg()}")
    print(f"\nServe on loopback, {args.concurrency} concurrent clients, {args.seconds:.0f} s each, "
          f"artifact {args.artifact}, {os.cpu_count()} CPUs, replica on {results['batched']['device']}")
    print("| configuration | requests/s | p50 ms | p99 ms | mean batch | largest batch | errors |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, r in results.items():
        label = f"{name} (max_batch_size={args.max_batch_size if name == 'batched' else 1})"
        print(f"| {label} | {r['rps']:.1f} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} | {r['mean_batch']:.1f} | "
              f"{r['largest_batch']} | {r['errors']} |")
    one, many = model_ceiling(args.artifact, args.max_batch_size, "cuda" if args.gpu else "cpu")
    print(f"\nforward pass alone ({'GPU' if args.gpu else '1 CPU thread'}): {one:.2f} ms/face at batch 1, "
          f"{many:.2f} ms/face at batch "
          f"{args.max_batch_size}: batching can save at most {one / many:.2f}x of the model's time")
    b, u = results["batched"], results["unbatched"]
    print(f"\nratio batched / unbatched: {b['rps'] / u['rps']:.2f}x requests/s; "
          f"p99 {b['p99_ms']:.1f} ms vs {u['p99_ms']:.1f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
