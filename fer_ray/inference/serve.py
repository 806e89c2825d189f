"""Ray Serve app: facial-expression prediction over HTTP, batched into one forward pass.

Endpoints (FastAPI; OpenAPI docs at ``/docs``, schema at ``/openapi.json``):

    GET  /                 a page to try the model in a browser (a photo, or the webcam):
                           ``page.html``, self-contained, calling POST /predict like any client
    POST /predict          one image, as a multipart upload (any file field) or as the raw
                           request body (Content-Type image/* or application/octet-stream)
    POST /predict/batch    several images in one multipart request (each file its own result)
    GET  /healthz          liveness: the model is loaded (HEAD too, as load balancers ask)
    GET  /model            artifact name, checksum, metadata and metrics, limits, batching counters

``?faces=all|largest|none`` picks faces as in ``fer-ray score``: ``all`` (default) detects
every face in a photo, ``largest`` keeps one, ``none`` takes the image as an already cropped
face (FER2013-style 48x48 crops have too little context for the detector: use ``none``).

Concurrent requests are merged by ``@serve.batch`` into one ``Predictor`` call; each
response says in ``batch_size`` how many requests shared its forward pass, and ``/model``
counts batches per size. Client mistakes (no image, an empty, oversize, corrupt or non-image
body, a wrong content type, too many pixels or files, a body slower than ``body_timeout_s``)
are answered 4xx with a JSON ``{"error": ..., "status": ...}``; a 500 only ever means a bug.
Load beyond what a replica takes is answered 503 with ``Retry-After`` (``FerService.admit``,
``build_app``) rather than queued without bound.

The compute is plain (``PhotoScorer``); this module only adds HTTP and Serve around it.
Deploy with ``fer-ray serve``, ``serve run fer_ray.inference.serve:app_builder artifact=DIR``
or a RayService whose ``import_path`` is ``fer_ray.inference.serve:app_builder``.
"""

import asyncio
import collections
import contextlib
import dataclasses
import logging
import os
import threading
from importlib import resources
from typing import Literal, Optional

import cv2
import numpy as np
from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from pydantic import BaseModel, Field
from ray import serve
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from python_multipart.multipart import parse_options_header
from starlette.formparsers import MultiPartException

from fer_ray.data.faces import FACE_MODES, make_detector
from fer_ray.data.geometry import LANDMARKS
from fer_ray.data.preprocess import ImageError, TooManyPixels, UnsupportedFormat, decode_grey
from fer_ray.emotions import EMOTIONS
from fer_ray.errors import FerRayError
from fer_ray.inference.crops import DetectConfig, crop_faces, detection_fields
from fer_ray.inference.config import ServeConfig, ServerOptions

FaceMode = Literal[FACE_MODES]
RAW_TYPES = ("application/octet-stream",)  # besides image/*; no Content-Type is sniffed too
# Serve's slots per replica beyond the prediction requests it takes (ServeConfig.ongoing()):
# /healthz, /model and /docs always find one free, however many uploads are in progress.
HEALTH_ROOM = 4
# GET /: the try-it page, read once (it is part of the package, like the detector's weights).
PAGE = resources.files(__package__).joinpath("page.html").read_text(encoding="utf-8")
# Seconds a client told 503 (replica or queue full) is asked to wait before trying again.
RETRY_AFTER_S = 1
# A request body's final bytes kept to look for a multipart body's closing delimiter in: the
# delimiter (a boundary has at most 70 characters) and an epilogue after it, if a client sends one.
LAST_BYTES = 1024
log = logging.getLogger(__name__)


class ApiError(Exception):
    """A request the client got wrong: answered with ``status`` and a JSON error."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


def image_error_status(exc: ImageError) -> int:
    """HTTP status for a rejected image: 415 for a format we do not take, 413 for too many
    pixels, 400 for everything else (empty, undecodable, truncated)."""
    return 415 if isinstance(exc, UnsupportedFormat) else 413 if isinstance(exc, TooManyPixels) else 400


# ---------------------------------------------------------------------------------------
# Plain core
# ---------------------------------------------------------------------------------------

class PhotoScorer:
    """Image bytes -> face boxes and crops -> probabilities, without Ray or HTTP.

    Decoding and detection run in a thread pool (so the event loop keeps taking requests). The
    replica has one detector, made as ``score`` and ``predict`` make theirs (``make_detector``),
    used by one thread at a time: neither OpenCV's cascade nor its DNN network is safe to share
    between threads, and a CenterFace detector per thread would hold its networks' activations
    (~80 MB each) once per thread of the pool. OpenCV spreads one detection over the CPUs itself.
    """

    def __init__(self, artifact: str, device: str = "auto", detect: DetectConfig = DetectConfig(),
                 threads: int | None = None, tta: str = ServeConfig.model_fields["tta"].default):
        import torch

        from fer_ray.inference.predictor import Predictor

        if threads:
            torch.set_num_threads(threads)
        self.predictor = Predictor(artifact, device=device)
        self.predictor.check_tta(tta)
        self.tta = tta
        self.config = dataclasses.replace(detect, image_size=self.predictor.image_size)
        self._detector = make_detector(self.config.detector, self.config.small_faces)
        self._detecting = threading.Lock()

    def faces(self, data: bytes, mode: str) -> tuple[tuple[int, int], list, np.ndarray]:
        """((width, height), faces (``Face``), crops (k, S, S) uint8); raises ImageError."""
        grey = decode_grey(data, self.config.max_pixels)
        config = dataclasses.replace(self.config, mode=mode)
        try:
            with self._detecting:
                found = crop_faces(grey, config, None if mode == "none" else self._detector)
        except cv2.error as exc:  # this image's problem (as in ``fer-ray score``), not a 500
            raise ImageError(f"face detection failed ({str(exc).strip()[:200]})") from None
        size = self.predictor.image_size
        crops = np.stack([c for _, c in found]) if found else np.zeros((0, size, size), np.uint8)
        return (grey.shape[1], grey.shape[0]), [face for face, _ in found], crops

    def predict(self, crops: np.ndarray) -> np.ndarray:
        return self.predictor.predict_proba(crops, tta=self.tta)


def face_results(faces: list, probs: np.ndarray) -> list[dict]:
    return [{"face": i, "box": dataclasses.asdict(face.box), **detection_fields(face),
             "emotion": EMOTIONS[int(p.argmax())],
             "probabilities": {name: round(float(v), 6) for name, v in zip(EMOTIONS, p)}}
            for i, (face, p) in enumerate(zip(faces, probs))]


# ---------------------------------------------------------------------------------------
# HTTP schema (for the OpenAPI docs)
# ---------------------------------------------------------------------------------------

class BoxModel(BaseModel):
    x: int
    y: int
    w: int
    h: int


class FaceModel(BaseModel):
    face: int = Field(description="index, largest face first")
    box: BoxModel = Field(description="in the uploaded image's pixels")
    detector_score: Optional[float] = Field(description="the face detector's confidence (null for haar)")
    landmarks: Optional[dict[str, tuple[float, float]]] = Field(
        description=f"(x, y) in the image's pixels of {', '.join(LANDMARKS)}, the person's right and left "
                    "(null for haar)")
    emotion: str
    probabilities: dict[str, float] = Field(description="one per emotion, summing to 1")


class PredictResponse(BaseModel):
    width: int
    height: int
    faces: list[FaceModel]
    message: Optional[str] = Field(None, description="e.g. 'no face detected'")
    batch_size: int = Field(description="requests that shared this forward pass (0: no face to run)")


class BatchItem(BaseModel):
    filename: Optional[str]
    status: int = Field(description="200, or the 4xx this image alone would have got")
    error: Optional[str] = None
    result: Optional[PredictResponse] = None


class BatchResponse(BaseModel):
    results: list[BatchItem]


class ErrorResponse(BaseModel):
    error: str
    status: int


_ERRORS = {code: {"model": ErrorResponse} for code in (400, 408, 413, 415, 422, 503)}
_IMAGE_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {"schema": {"type": "object", "properties": {
                "file": {"type": "string", "format": "binary"}}}},
            "image/*": {"schema": {"type": "string", "format": "binary"}},
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
        },
    }
}
_BATCH_BODY = {
    "requestBody": {
        "required": True,
        "content": {"multipart/form-data": {"schema": {"type": "object", "properties": {
            "files": {"type": "array", "items": {"type": "string", "format": "binary"}}}}}},
    }
}

api = FastAPI(
    title="fer-ray",
    description=__doc__.split("\n\n")[0] + "\n\n" + "Face modes: `all` (default), `largest`, `none` "
    "(the image is already a face crop).",
    version="1",
)


def _error(status: int, message: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse(status_code=status, content={"error": message, "status": status}, headers=headers)


@api.exception_handler(ApiError)
async def _api_error(_request, exc: ApiError):
    # After a 408 the rest of the body may still come, or never: the connection is not reused
    return _error(exc.status, exc.message, {"Connection": "close"} if exc.status == 408 else None)


@api.exception_handler(StarletteHTTPException)
async def _http_error(_request, exc: StarletteHTTPException):
    return _error(exc.status_code, str(exc.detail), exc.headers)  # a 405 keeps its Allow header


@api.exception_handler(RequestValidationError)
async def _validation_error(_request, exc: RequestValidationError):
    detail = "; ".join(f"{'.'.join(map(str, e.get('loc', ())))}: {e.get('msg')}" for e in exc.errors())
    return _error(422, detail or "invalid request")


class Body:
    """A request's body for Starlette to read (``body.request.body()``, ``.form()``), counted as it
    arrives and refused with 413 as soon as it exceeds ``limit``; ``last`` holds its final bytes."""

    def __init__(self, request: Request, limit: int):
        self.limit, self.size, self.last = limit, 0, b""
        self._receive = request.receive
        # Without "app" in the scope Starlette raises its own MultiPartException (instead of
        # a generic HTTPException), so the reply can say what was wrong with the body.
        self.request = Request({k: v for k, v in request.scope.items() if k != "app"}, self.receive)

    async def receive(self) -> dict:
        message = await self._receive()
        chunk = message.get("body", b"")
        self.size += len(chunk)
        if self.size > self.limit:
            raise ApiError(413, f"request body exceeds the limit of {self.limit} bytes")
        self.last = (self.last + chunk)[-LAST_BYTES:]
        return message


@contextlib.asynccontextmanager
async def body_within(request: Request, limit: int, timeout_s: float = 30.0):
    """``request``'s ``Body`` for the block to read: refused with 413 as soon as it is known to
    exceed ``limit`` (by its Content-Length, or as it arrives), and with 408 when the block has
    not read all of it within ``timeout_s``.

    A deadline for the whole body, not a wait per chunk: a client sending a byte every few
    seconds would otherwise hold its connection, and one of the replica's request slots, for as
    long as it likes (65 such clients took them all). 10 MiB in 30 s needs ~350 KB/s.
    """
    declared = request.headers.get("content-length")
    if declared is not None:
        if not (declared.isascii() and declared.isdigit()):  # "²" is a digit to str.isdigit
            raise ApiError(400, f"invalid Content-Length {declared!r}")
        if int(declared) > limit:
            raise ApiError(413, f"request body of {declared} bytes exceeds the limit of {limit} bytes")
    body = Body(request, limit)
    try:
        async with asyncio.timeout(timeout_s):
            yield body
    except TimeoutError:
        raise ApiError(408, f"the request body did not arrive within {timeout_s:g} s "
                            f"({body.size} bytes had come)") from None


def _media_type(value: str | None) -> str:
    return (value or "").split(";")[0].strip().lower()


def _accepted_type(media_type: str) -> bool:
    return media_type in ("", *RAW_TYPES) or media_type.startswith("image/")


async def uploaded_files(body: Body, max_files: int) -> list[tuple[str | None, bytes, str]]:
    """(filename, bytes, declared type) of every file part of a multipart body, as Starlette
    parses it.

    A body cut short (a dropped connection, a client's size cap) parses without complaint up to
    its last whole part, and the part being cut is silently left out; so a body that does not end
    with its closing delimiter (``--BOUNDARY--``) is refused rather than answered for fewer files.
    """
    try:
        async with body.request.form(max_files=max_files, max_fields=max_files) as form:
            files = [(value.filename, await value.read(), _media_type(value.content_type))
                     for _, value in form.multi_items() if isinstance(value, UploadFile)]
    except MultiPartException as exc:
        if exc.message.startswith(("Too many files", "Too many fields")):
            raise ApiError(400, f"too many files: at most {max_files} files (and form fields) per request") from None
        raise ApiError(400, f"malformed multipart body: {exc.message}") from None
    boundary = parse_options_header(body.request.headers.get("content-type", ""))[1].get(b"boundary")
    if boundary and b"--" + boundary + b"--" not in body.last:
        raise ApiError(400, "malformed multipart body: it ends before its closing boundary "
                            f"(--{boundary.decode('latin-1')}--); was the upload cut short?")
    return files


# ---------------------------------------------------------------------------------------
# The deployment
# ---------------------------------------------------------------------------------------

@serve.deployment(ray_actor_options={"num_cpus": 1})
@serve.ingress(api)
class FerService:
    """One replica: a PhotoScorer, a batch queue, and counters of the batches it ran."""

    def __init__(self, config: dict):
        self.cfg = ServeConfig(**config)
        detect = DetectConfig(margin=self.cfg.margin, max_pixels=self.cfg.max_pixels, detector=self.cfg.detector,
                              small_faces=self.cfg.small_faces)
        self.scorer = PhotoScorer(self.cfg.artifact, self.cfg.device, detect, threads=max(1, int(self.cfg.num_cpus)),
                                  tta=self.cfg.tta)
        self._forward.set_max_batch_size(self.cfg.max_batch_size)
        self._forward.set_batch_wait_timeout_s(self.cfg.batch_wait_timeout_s)
        self.batches = collections.Counter()
        self._predictions = asyncio.Semaphore(self.cfg.ongoing())

    @contextlib.asynccontextmanager
    async def admit(self):
        """One of the replica's ``ongoing()`` places for a prediction request, or a 503 at once.

        Serve gives the replica ``HEALTH_ROOM`` more slots than this, so however many uploads
        (slow ones included, until their body deadline) hold places, /healthz and /model never
        queue behind them. Refused rather than made to wait: a waiting request would hold one of
        those spare slots, and Serve's own queue in front (``max_queued_requests``) already
        bounds how many wait.
        """
        if self._predictions.locked():
            raise StarletteHTTPException(503, f"busy: {self.cfg.ongoing()} prediction requests in progress, the "
                                              f"most this replica takes; retry in {RETRY_AFTER_S} s",
                                         headers={"Retry-After": str(RETRY_AFTER_S)})
        async with self._predictions:  # no wait: a free place was just seen, and nothing ran since
            yield

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.01)
    async def _forward(self, stacks: list[np.ndarray]) -> list[tuple[np.ndarray, int]]:
        """All queued requests' faces in one Predictor call, split back per request. The
        forward runs in a thread so the event loop keeps accepting (and queueing) requests."""
        sizes = [len(s) for s in stacks]
        probs = await asyncio.to_thread(self.scorer.predict, np.concatenate(stacks))
        self.batches[len(stacks)] += 1
        return [(p, len(stacks)) for p in np.split(probs, np.cumsum(sizes)[:-1])]

    async def _score(self, data: bytes, mode: str) -> dict:
        try:
            (width, height), faces, crops = await asyncio.to_thread(self.scorer.faces, data, mode)
        except ImageError as exc:
            raise ApiError(image_error_status(exc), str(exc)) from None
        if not faces:
            return {"width": width, "height": height, "faces": [], "message": "no face detected", "batch_size": 0}
        probs, batch_size = await self._forward(crops)
        return {"width": width, "height": height, "faces": face_results(faces, probs), "message": None,
                "batch_size": batch_size}

    @api.post("/predict", response_model=PredictResponse, responses=_ERRORS, openapi_extra=_IMAGE_BODY,
              summary="Faces, boxes and emotion probabilities of one image")
    async def predict(self, request: Request, faces: FaceMode = Query("all", description="all, largest or none")):
        async with self.admit():
            return await self._predict_one(request, faces)

    def _body(self, request: Request):
        return body_within(request, self.cfg.max_body_bytes, self.cfg.body_timeout_s)

    async def _predict_one(self, request: Request, faces: str) -> dict:
        media = _media_type(request.headers.get("content-type"))
        async with self._body(request) as body:
            if media == "multipart/form-data":
                files = await uploaded_files(body, self.cfg.max_files)
            else:
                data = await body.request.body()
        if media == "multipart/form-data":
            if len(files) != 1:
                raise ApiError(400, f"send exactly one image file to /predict (got {len(files)}); "
                                    "use /predict/batch for several")
            _, data, media = files[0]
        elif not _accepted_type(media):
            raise ApiError(415, f"unsupported content type {media!r}: send an image/* body, "
                                "application/octet-stream, or a multipart upload")
        if not _accepted_type(media):
            raise ApiError(415, f"unsupported file type {media!r}: expected an image")
        return await self._score(data, faces)

    @api.post("/predict/batch", response_model=BatchResponse, responses=_ERRORS, openapi_extra=_BATCH_BODY,
              summary="Several images in one multipart request; each gets its own result or error")
    async def predict_batch(self, request: Request, faces: FaceMode = Query("all", description="all, largest or none")):
        async with self.admit():
            return await self._predict_many(request, faces)

    async def _predict_many(self, request: Request, faces: str) -> dict:
        async with self._body(request) as body:
            if _media_type(request.headers.get("content-type")) != "multipart/form-data":
                await body.request.body()  # held to the limits as any body is, before the 415
                raise ApiError(415, "send the images as multipart/form-data (one file part per image)")
            files = await uploaded_files(body, self.cfg.max_files)
        if not files:
            raise ApiError(400, "no image files in the request")
        results = await asyncio.gather(*(self._item(name, data, media, faces) for name, data, media in files))
        return {"results": results}

    async def _item(self, name: str | None, data: bytes, media: str, mode: str) -> dict:
        """One file of a batch request: its result, or the error it alone would have got."""
        if not _accepted_type(media):
            return {"filename": name, "status": 415, "error": f"unsupported file type {media!r}: expected an image"}
        try:
            return {"filename": name, "status": 200, "result": await self._score(data, mode)}
        except ApiError as exc:
            return {"filename": name, "status": exc.status, "error": exc.message}

    @api.get("/", response_class=HTMLResponse, summary="A page to try the model in a browser")
    async def page(self) -> HTMLResponse:
        return HTMLResponse(PAGE)

    @api.api_route("/healthz", methods=["GET", "HEAD"], summary="Liveness: the model is loaded")
    async def healthz(self) -> dict:
        return {"status": "ok", "kind": self.scorer.predictor.kind}

    @api.get("/model", summary="Artifact name, checksum, metadata and metrics, limits and batching counters")
    async def model(self) -> dict:
        meta = self.scorer.predictor.meta
        sizes = dict(sorted(self.batches.items()))
        return {
            # its folder's name and its weights' checksum: which model answers, without telling
            # every client where the server keeps its files
            "artifact": os.path.basename(os.path.normpath(self.cfg.artifact)),
            "weights_sha256": meta.get("weights_sha256"),
            "kind": meta["kind"],
            "architecture": meta.get("architecture"),
            "image_size": self.scorer.predictor.image_size,
            "labels": list(self.scorer.predictor.labels),
            "metrics": meta.get("metrics", {}),
            "created": meta.get("created"),
            "device": str(self.scorer.predictor.device),
            "faces": {"detector": self.cfg.detector, "small_faces": self.cfg.small_faces, "margin": self.cfg.margin,
                      "tta": self.cfg.tta},
            "limits": {"max_body_bytes": self.cfg.max_body_bytes, "max_pixels": self.cfg.max_pixels,
                       "max_files": self.cfg.max_files, "content_types": ["image/*", *RAW_TYPES, "multipart/form-data"],
                       "body_timeout_s": self.cfg.body_timeout_s, "max_ongoing_requests": self.cfg.ongoing(),
                       "max_queued_requests": self.cfg.max_queued_requests},
            "batching": {"max_batch_size": self.cfg.max_batch_size,
                         "batch_wait_timeout_s": self.cfg.batch_wait_timeout_s,
                         "batches": sum(sizes.values()), "largest_batch": max(sizes, default=0),
                         "batches_by_size": {str(k): v for k, v in sizes.items()},
                         "note": "counters of the replica that answered"},
        }


def build_app(config: ServeConfig):
    """The Serve application for ``config`` (replicas, resources, batching, limits).

    Requests beyond ``max_queued_requests`` waiting at a caller (Serve's proxy, or the replica's
    own port with direct ingress) are answered by Serve with 503 and ``Retry-After``: queued
    without bound, 200 clients through the proxy made p99 23-32 s at ~10 requests/s.
    """
    return FerService.options(
        num_replicas=config.replicas,
        max_ongoing_requests=config.ongoing() + HEALTH_ROOM,
        max_queued_requests=config.max_queued_requests,
        backpressure_config={"status_code": 503, "retry_after_s": RETRY_AFTER_S},
        ray_actor_options={"num_cpus": config.num_cpus, "num_gpus": config.num_gpus},
        logging_config={"enable_access_log": config.access_log},
    ).bind(config.model_dump())


def app_builder(args: ServeConfig):
    """Application builder for ``serve run fer_ray.inference.serve:app_builder artifact=DIR ...``
    and a RayService's ``import_path``; Serve validates ``args`` against ServeConfig."""
    return build_app(args)


def _check_port_free(host: str, port: int) -> None:
    """A busy port: one clear error instead of Serve's proxy retrying and crashing."""
    import socket

    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        try:
            s.bind((host, port))
        except OSError as exc:
            raise FerRayError(f"cannot listen on {host}:{port}: {exc.strerror}") from None


def direct_ingress_env(port: int) -> dict[str, str]:
    """Ray Serve's direct ingress (a feature flag of Ray 2.55+): the replica serves HTTP on
    ``port`` itself, so requests skip the hop through Serve's proxy process, which on a small
    machine costs more than batching saves (benchmarks/RESULTS.md). Serve's controller and
    replica read these from the environment of the Ray this process starts."""
    return {"RAY_SERVE_ENABLE_DIRECT_INGRESS": "1",
            "RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT": str(port),
            "RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT": str(port + 1),  # one port: the replica's
            # A replaced replica takes the port back at once (instead of after a quarantine), and a
            # stop does not wait 30 s for load balancers to notice: there are none in front of it.
            "RAY_SERVE_PORT_QUARANTINE_S": "0",
            "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "0"}


def _wait_for(url: str, seconds: float) -> bool:
    import time
    import urllib.request

    deadline = time.time() + seconds
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=5) as answer:
                return answer.status == 200
        except OSError:  # not listening yet
            time.sleep(0.5)
    return False


def run_server(config: ServeConfig, server: ServerOptions = ServerOptions()) -> None:
    """``fer-ray serve``: start (or join) Ray, serve on host:port until Ctrl-C, then shut down.

    Loopback is the default on purpose: the service has no authentication, so exposing it
    (``--host 0.0.0.0``) is a decision to take explicitly, behind whatever guards the network.
    ``direct``: the one replica answers on host:port itself (``direct_ingress_env``); Serve's
    proxy listens on another port.
    """
    import signal
    import sys
    import time

    import ray

    from fer_ray.inference.predictor import Predictor
    from fer_ray.runtime import free_port, init_ray, require_gpus

    host, port, direct = server.host, server.port, server.direct
    _check_port_free(host, port)
    proxy_port = port
    if direct:
        if config.replicas != 1:
            raise FerRayError(f"--direct serves one replica on --port; --replicas {config.replicas} needs "
                             "Serve's proxy (or Ray's HAProxy mode on a cluster: docs/serve.md)")
        if os.environ.get("RAY_ADDRESS") or ray.is_initialized():
            raise FerRayError("--direct needs the local Ray that fer-ray serve starts, whose environment it "
                             "sets; RAY_ADDRESS names a running cluster (unset it, or leave out --direct)")
        os.environ.update(direct_ingress_env(port))
        proxy_port = free_port()
    # Loaded whole here, as each replica will load it: a broken artifact is one error line
    # now, not replica tracebacks after Ray and Serve have started.
    Predictor(config.artifact, device="cpu")
    init_ray(server.ray_cpus)
    # A container or job runner stops us with SIGTERM: shut Serve down as for Ctrl-C. Set after
    # Ray's start, whose own handler would dump a stack and abort (exit 134) instead.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    if config.num_gpus:
        require_gpus(config.num_gpus * config.replicas)
    try:  # a stop while Serve is still starting shuts it down too
        serve.start(http_options={"host": host, "port": proxy_port})
        serve.run(build_app(config), name="fer-ray", route_prefix="/")
        via = ""
        if direct:
            if not _wait_for(f"http://{host}:{port}/healthz", 60):
                raise RuntimeError(f"the replica did not answer on port {port} (Ray Serve's direct ingress); "
                                   "leave out --direct to serve through Serve's proxy")
            via = f", answered by the replica itself (Serve's proxy: http://{host}:{proxy_port})"
        log.info(f"serving {config.artifact}: open http://{host}:{port}/ in a browser to try it (API docs: /docs)"
            f"{via}; Ctrl-C stops")
        while True:
            time.sleep(3600)
    except (KeyboardInterrupt, SystemExit):
        log.info("stopping")
    finally:
        serve.shutdown()
