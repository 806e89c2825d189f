"""Requests/s and latency of the Serve app against the server a user would write by hand.

    .venv/bin/python benchmarks/bench_serve.py --artifact DIR [--concurrency 1,8,32] [--seconds 15] [--gpu]
        [--servers plain,batched[,unbatched]]

Servers (``--servers``), each loaded in turn at every ``--concurrency``:

- ``plain``: the hand-written server, one uvicorn process (one worker) running a FastAPI app
  whose endpoint reads the body, decodes it with fer-ray's ``decode_grey``, crops with
  ``crop_faces`` and calls the same ``Predictor`` once per request, torch on ``--plain-threads``
  threads (default 1, as the replica has). It runs before Ray starts, so it never shares the
  machine with Ray's own processes.
- ``batched``: fer-ray's Serve app on one local Ray, one replica (1 CPU, torch on 1 thread;
  with ``--gpu`` also one GPU), ``@serve.batch`` merging up to ``--max-batch-size`` requests
  into one forward pass after waiting up to ``--batch-wait-ms`` for them.
- ``unbatched``: the same deployment with ``max_batch_size=1`` (every request its own forward).
- ``command``: ``fer-ray serve`` as a user starts it (its own process and local Ray, one
  replica, the same batching flags; ``--direct`` with ``--direct-ingress``).

``--direct-ingress`` turns on Ray Serve's direct ingress (``RAY_SERVE_ENABLE_DIRECT_INGRESS=1``,
part of Ray's ``RAY_SERVE_THROUGHPUT_OPTIMIZED`` mode): the replica serves HTTP on a port of its
own, and the load goes there instead of through Serve's HTTP proxy, one hop and one process fewer.

Everything else is identical: the payload (one 48x48 FER2013-style face crop as a raw PNG body,
``?faces=none``, so the model, not face detection, is what the requests cost), the JSON answer,
and the load: ``--concurrency`` clients on loopback, each sending its next request as soon as
the last one is answered (a closed loop, so the load is bounded), for ``--seconds`` after a
warm-up. The load generator (aiohttp) runs in this process and shares the machine's CPUs.

Prints requests/s, p50 and p99 latency per server and concurrency, the bare forward pass's
cost, then the ratios: batched / unbatched, and last, Serve (batched) / hand-written.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
# At module level: FastAPI resolves the endpoint's annotations (strings here, see the __future__
# import) in this module's namespace, and would take an unresolved ``Request`` for a query field.
from fastapi import FastAPI, Query, Request
from fastapi.responses import JSONResponse


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
    p50, p99 = np.percentile(lat, [50, 99]) if len(lat) else (float("nan"), float("nan"))
    return {"requests": len(lat), "errors": errors, "rps": len(lat) / seconds, "p50_ms": float(p50),
            "p99_ms": float(p99)}


# ---------------------------------------------------------------------------------------
# The hand-written server: what a user would write around Predictor without Ray
# ---------------------------------------------------------------------------------------

def plain_app(artifact: str, device: str, threads: int):
    """FastAPI app: POST /predict (raw image body, ``?faces=all|largest|none``), GET /healthz.

    The same steps as the Serve app's replica, inline, one request at a time: decode_grey,
    crop_faces, one Predictor call, the same JSON. The endpoint is ``async`` and does its work
    on the event loop: with a model this small, handing each request to a thread pool (a plain
    ``def`` endpoint) only adds a thread hop and has torch threads contend.
    """
    import dataclasses

    import cv2
    import torch

    from fer_ray.data.preprocess import ImageError, decode_grey
    from fer_ray.emotions import EMOTIONS
    from fer_ray.inference.crops import DetectConfig, crop_faces
    from fer_ray.inference.predictor import Predictor

    torch.set_num_threads(threads)
    cv2.setNumThreads(1)
    predictor = Predictor(artifact, device=device)
    config = DetectConfig(image_size=predictor.image_size)
    detector = config.make_detector()
    app = FastAPI()

    @app.get("/healthz")
    async def healthz():
        return {"status": "ok"}

    @app.post("/predict")
    async def predict(request: Request, faces: str = Query("all")):
        try:
            grey = decode_grey(await request.body(), config.max_pixels)
        except ImageError as exc:
            return JSONResponse(status_code=400, content={"error": str(exc)})
        found = crop_faces(grey, dataclasses.replace(config, mode=faces), None if faces == "none" else detector)
        if not found:
            return {"width": grey.shape[1], "height": grey.shape[0], "faces": [], "message": "no face detected"}
        probs = predictor.predict_proba(np.stack([crop for _, crop in found]))
        return {"width": grey.shape[1], "height": grey.shape[0], "message": None,
                "faces": [{"face": i, "box": dataclasses.asdict(box), "emotion": EMOTIONS[int(p.argmax())],
                           "probabilities": {name: round(float(v), 6) for name, v in zip(EMOTIONS, p)}}
                          for i, ((box, _), p) in enumerate(zip(found, probs))]}

    return app


def run_plain_server(artifact: str, port: int, device: str, threads: int) -> None:
    import uvicorn

    uvicorn.run(plain_app(artifact, device, threads), host="127.0.0.1", port=port, workers=1,
                log_level="warning", access_log=False)


def start_server(name: str, args: list[str]) -> tuple[subprocess.Popen, int]:
    """``args`` + ``--port PORT`` in its own process; returns once it answers on PORT."""
    import httpx

    port = _free_port()
    proc = subprocess.Popen([*args, "--port", str(port)], stdout=subprocess.DEVNULL)
    deadline = time.time() + 180
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the {name} exited with status {proc.returncode}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200:
                return proc, port
        except httpx.TransportError:  # not listening yet
            time.sleep(0.2)
    proc.terminate()
    raise RuntimeError(f"the {name} did not answer within 180 s")


def load_server(name: str, args: list[str], body: bytes, cli) -> dict[int, dict]:
    """Start a server process, load it at every concurrency, stop it (SIGINT, as Ctrl-C)."""
    proc, port = start_server(name, args)
    try:
        url = f"http://127.0.0.1:{port}/predict?faces=none"
        return {c: asyncio.run(closed_loop(url, body, c, cli.seconds, cli.warmup)) for c in cli.concurrency}
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=120)


def batch_counts(base: str) -> dict[int, int]:
    """The replica's batches per size so far (its /model counters)."""
    import httpx

    sizes = httpx.get(f"{base}/model", timeout=60).json()["batching"]["batches_by_size"]
    return {int(k): v for k, v in sizes.items()}


def _replica_url(first: int, used: set[int]) -> str:
    """The direct-ingress port the new replica listens on: one of the range not ``used`` by an
    earlier deployment's (whose port Serve holds back, and whose replica may still be draining)."""
    deadline = time.time() + 60
    while time.time() < deadline:
        for port in set(range(first, first + 16)) - used:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    used.add(port)
                    return f"http://127.0.0.1:{port}"
        time.sleep(0.5)
    raise RuntimeError(f"no new replica listens on ports {first}-{first + 15}")


def _positive_ints(text: str) -> list[int]:
    values = [int(v) for v in text.split(",") if v.strip()]
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers separated by commas, got {text!r}")
    return values


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
    parser.add_argument("--concurrency", type=_positive_ints, default=[1, 8, 32],
                        help="clients (one request in flight each), comma-separated: one load per value")
    parser.add_argument("--servers", default="plain,batched",
                        help="comma-separated: plain (hand-written), command (fer-ray serve), batched, unbatched")
    parser.add_argument("--seconds", type=float, default=15.0, help="measured load per server and concurrency")
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--max-batch-size", type=int, default=32)
    parser.add_argument("--batch-wait-ms", type=float, default=30.0,
                        help="how long a batch waits to fill (30 ms: about one small batch forward here)")
    parser.add_argument("--plain-threads", type=int, default=1, help="torch threads of the hand-written server")
    parser.add_argument("--num-cpus", type=int, default=2, help="CPUs of the local Ray")
    parser.add_argument("--gpu", action="store_true", help="the replica (and the hand-written server) on one GPU")
    parser.add_argument("--untrained", metavar="ARCH", help="serve an untrained ARCH (e.g. vgg16) with the "
                        "artifact's metadata instead: a heavier model, for timing only")
    parser.add_argument("--direct-ingress", action="store_true",
                        help="load the replica's own HTTP port (Ray Serve's direct ingress), not the proxy")
    parser.add_argument("--plain-server", action="store_true", help=argparse.SUPPRESS)  # the child process
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--device", default="cpu", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.plain_server:
        run_plain_server(args.artifact, args.port, args.device, args.plain_threads)
        return 0
    servers = [name.strip() for name in args.servers.split(",") if name.strip()]
    unknown = set(servers) - {"plain", "command", "batched", "unbatched"}
    if unknown or not servers:
        parser.error(f"--servers takes plain, command, batched and unbatched, got {args.servers!r}")
    if args.untrained:
        import tempfile
        from pathlib import Path

        from gpu_inference import untrained_like  # benchmarks/ is on sys.path when run as a script

        args.artifact = untrained_like(args.artifact, Path(tempfile.mkdtemp()), args.untrained)
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")

    from fer_ray.data.preprocess import encode_png
    from fer_ray.data.synthetic import synthetic_faces

    print(f"load average at start (other users of this machine): {os.getloadavg()}")
    body = encode_png(synthetic_faces(np.array([3]), 48, seed=0)[0])
    device = "cuda" if args.gpu else "cpu"
    results: dict[str, dict[int, dict]] = {}
    # The processes of their own first: the in-process Ray below would share the machine with them.
    if "plain" in servers:
        results["plain"] = load_server("hand-written server", [
            sys.executable, os.path.abspath(__file__), "--plain-server", "--artifact", args.artifact,
            "--device", device, "--plain-threads", str(args.plain_threads)], body, args)
    if "command" in servers:
        results["command"] = load_server("fer-ray serve", [
            sys.executable, "-m", "fer_ray.cli", "serve", "--artifact", args.artifact, "--num-cpus", str(args.num_cpus),
            "--max-batch-size", str(args.max_batch_size), "--batch-wait-ms", str(args.batch_wait_ms),
            *(["--gpu"] if args.gpu else []), *(["--direct"] if args.direct_ingress else [])], body, args)
    serve_configs = [(name, args.max_batch_size if name == "batched" else 1)
                     for name in servers if name in ("batched", "unbatched")]
    if serve_configs:
        results.update(run_serve(args, serve_configs, body))

    print(f"load average at end: {os.getloadavg()}")
    print(f"\n{args.seconds:.0f} s per load on loopback, artifact {args.artifact}, {os.cpu_count()} CPUs, on {device}; "
          f"Serve: one replica of 1 CPU, batches up to {args.max_batch_size} after {args.batch_wait_ms:g} ms, "
          f"{'direct ingress (no proxy)' if args.direct_ingress else 'through its HTTP proxy'}; "
          f"hand-written: one uvicorn process, torch on {args.plain_threads} thread(s)")
    print("| server | clients | requests/s | p50 ms | p99 ms | mean batch | largest batch | errors |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    labels = {"plain": "hand-written (uvicorn + Predictor)", "batched": f"batched (max_batch_size={args.max_batch_size})",
              "unbatched": "unbatched (max_batch_size=1)",
              "command": "`fer-ray serve" + (" --direct`" if args.direct_ingress else "`")}
    for name in servers:
        for c, r in results[name].items():
            batch = (f"{r['mean_batch']:.1f} | {r['largest_batch']}" if "mean_batch" in r else "- | -")
            print(f"| {labels[name]} | {c} | {r['rps']:.1f} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} | {batch} | "
                  f"{r['errors']} |")
    one, many = model_ceiling(args.artifact, args.max_batch_size, device)
    print(f"\nforward pass alone ({'GPU' if args.gpu else '1 CPU thread'}): {one:.2f} ms/face at batch 1, "
          f"{many:.2f} ms/face at batch "
          f"{args.max_batch_size}: batching can save at most {one / many:.2f}x of the model's time")
    print()
    pairs = [("batched", "unbatched", "batched / unbatched"), ("batched", "plain", "Serve (batched) / hand-written"),
             ("command", "plain", f"{labels['command']} / hand-written")]
    for a, b, label in pairs:  # the comparison with the hand-written server last
        if a in results and b in results:
            for c in args.concurrency:
                x, y = results[a][c], results[b][c]
                print(f"ratio {label} at {c} clients: {x['rps'] / max(y['rps'], 1e-9):.2f}x requests/s; "
                      f"p99 {x['p99_ms']:.1f} ms vs {y['p99_ms']:.1f} ms")
    return 0


def run_serve(args, configs: list[tuple[str, int]], body: bytes) -> dict[str, dict[int, dict]]:
    """Each Serve configuration deployed in turn on one local Ray, loaded at every concurrency."""
    import httpx
    from ray import serve

    from fer_ray.inference.serve import ServeConfig, build_app
    from fer_ray.runtime import init_ray

    if args.direct_ingress:  # read by Serve's controller and replicas, which inherit this environment
        first = _free_port()  # each deployment's replica takes the lowest port of the range that is free
        os.environ.update(RAY_SERVE_ENABLE_DIRECT_INGRESS="1", RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT=str(first),
                          RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT=str(first + 16))
    used: set[int] = set()
    init_ray(args.num_cpus)  # Ray finds the GPUs itself
    port = _free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    ongoing = max(64, 2 * max(args.concurrency))
    results: dict[str, dict[int, dict]] = {}
    try:
        for name, size in configs:
            config = ServeConfig(artifact=args.artifact, max_batch_size=size, num_gpus=1 if args.gpu else 0,
                                 batch_wait_timeout_s=args.batch_wait_ms / 1000, max_ongoing_requests=ongoing)
            serve.run(build_app(config), name="bench", route_prefix="/")
            base = _replica_url(first, used) if args.direct_ingress else f"http://127.0.0.1:{port}"
            assert httpx.post(f"{base}/predict?faces=none", content=body, headers={"content-type": "image/png"},
                              timeout=60).status_code == 200
            results[name] = {}
            for c in args.concurrency:
                before = batch_counts(base)
                r = asyncio.run(closed_loop(f"{base}/predict?faces=none", body, c, args.seconds, args.warmup))
                after = batch_counts(base)  # this load's batches (its warm-up included)
                sizes = {k: after.get(k, 0) - before.get(k, 0) for k in after}
                r["mean_batch"] = sum(k * v for k, v in sizes.items()) / max(1, sum(sizes.values()))
                r["largest_batch"] = max((k for k, v in sizes.items() if v), default=0)
                results[name][c] = r
            serve.delete("bench")
    finally:
        serve.shutdown()
    return results


if __name__ == "__main__":
    raise SystemExit(main())
