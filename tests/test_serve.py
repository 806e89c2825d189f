"""The Serve app over real HTTP on loopback: uploads, raw bodies, batches, every client
mistake answered 4xx with a JSON error, and concurrent requests merged into one forward pass."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import httpx
import numpy as np
import pytest

from datagen import encode, pickled_weights_artifact, truncated_jpeg, untrained_artifact
from fer_ray.data.preprocess import ImageError
from fer_ray.emotions import EMOTIONS
from fer_ray.inference.crops import DetectConfig
from fer_ray.inference.serve import PhotoScorer, ServeConfig, app_builder, build_app, image_error_status
from fer_ray.runtime import free_port
from photos import SYNTHETIC, background, detectable_faces, fer_photo, two_face_photo

LIMIT_BYTES = 300_000
LIMIT_PIXELS = 1_000_000
BODY_DEADLINE_S = 4


@pytest.fixture(scope="module")
def service(ray_session, small_artifact):
    """The app on a free loopback port; batches wait 50 ms so concurrent requests meet. Through
    Serve's proxy, as ``fer-ray serve`` without ``--direct``."""
    from ray import serve

    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    config = ServeConfig(artifact=str(small_artifact), max_batch_size=8, batch_wait_timeout_s=0.05,
                         max_body_bytes=LIMIT_BYTES, max_pixels=LIMIT_PIXELS, max_files=4,
                         body_timeout_s=BODY_DEADLINE_S, detector=SYNTHETIC)
    serve.run(build_app(config), name="fer-test", route_prefix="/")
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
        yield client
    serve.shutdown()


@pytest.fixture(scope="module")
def images():
    two, spots = two_face_photo()
    face = detectable_faces(1)[0]
    crop = face[::4, ::4].copy()  # 48 px: an already-cropped face, for ?faces=none
    return {"two": encode(two, "JPEG"), "spots": spots, "crop": encode(crop, "PNG"),
            "gif": encode(crop, "GIF"), "corrupt": truncated_jpeg(two),
            "huge": encode(np.full((1000, 1200), 128, np.uint8), "PNG"),
            "landscape": encode(background(320, 240, seed=3), "PNG")}


def _is_error(r: httpx.Response, status: int, text: str = "") -> None:
    assert r.status_code == status, (r.status_code, r.text)
    body = r.json()
    assert body["status"] == status and text.lower() in body["error"].lower(), body


# ------------------------------------------------------------------ plain pieces, no Ray


def test_photo_scorer_without_ray(small_artifact, images):
    scorer = PhotoScorer(str(small_artifact), detect=DetectConfig(detector=SYNTHETIC))
    (w, h), boxes, crops = scorer.faces(images["two"], "all")
    assert (w, h) == (640, 480) and len(boxes) == 2 and crops.shape == (2, 48, 48)
    np.testing.assert_allclose(scorer.predict(crops).sum(axis=1), 1.0, atol=1e-5)
    from fer_ray.data.preprocess import decode_grey

    for data, status in ((encode(np.zeros((4, 4), np.uint8), "GIF"), 415), (encode(np.zeros((40, 40), np.uint8)), 413),
                         (b"", 400), (b"not an image", 400)):
        with pytest.raises(ImageError) as exc:
            decode_grey(data, max_pixels=1000)
        assert image_error_status(exc.value) == status, exc.value


def test_the_default_detector_answers_scores_and_landmarks_in_the_served_schema(small_artifact, fer_folders):
    """``serve``'s default (CenterFace): the faces of a photo of real faces, as the endpoint
    answers them (``face_results``), fit the OpenAPI schema with the detector's score and five
    landmarks each."""
    from fer_ray.inference.serve import PredictResponse, face_results

    img, spots = fer_photo(str(fer_folders))
    scorer = PhotoScorer(str(small_artifact))
    (w, h), faces, crops = scorer.faces(encode(img, "PNG"), "all")
    assert len(faces) == len(spots) and crops.shape == (2, 48, 48)
    answer = PredictResponse(width=w, height=h, faces=face_results(faces, scorer.predict(crops)), batch_size=1)
    for face in answer.faces:
        assert 0 < face.detector_score <= 1 and len(face.landmarks) == 5
        x, y = face.landmarks["nose"]
        assert face.box.x < x < face.box.x + face.box.w and face.box.y < y < face.box.y + face.box.h


def test_served_predictions_use_the_configured_test_time_augmentation(tmp_path):
    """serve's default is flip (a client waits on few faces); --tta none and tencrop reach the
    model, and a mode the artifact does not take stops the replica at start with its reason."""
    from fer_ray.inference.predictor import Predictor

    artifact = str(untrained_artifact(tmp_path / "model"))
    crops = np.random.default_rng(4).integers(0, 256, (3, 48, 48), dtype=np.uint8)
    predictor = Predictor(artifact)
    assert ServeConfig(artifact=artifact).tta == "flip"
    for tta in ("flip", "none", "tencrop"):
        np.testing.assert_allclose(PhotoScorer(artifact, tta=tta).predict(crops), predictor.predict_proba(crops, tta),
                                   atol=1e-6)
    with pytest.raises(ValueError, match="unknown test-time augmentation"):
        PhotoScorer(artifact, tta="sideways")


def test_a_detector_failure_is_the_image_s_error_not_a_500(small_artifact, images, monkeypatch):
    import cv2

    from fer_ray.data.faces import HaarDetector

    def fail(self, grey):
        raise cv2.error("OpenCV(4.x) cascadedetect.cpp: error: (-215:Assertion failed)")

    monkeypatch.setattr(HaarDetector, "detect", fail)
    scorer = PhotoScorer(str(small_artifact), detect=DetectConfig(detector="haar"))
    with pytest.raises(ImageError, match="face detection failed") as exc:
        scorer.faces(images["two"], "all")
    assert image_error_status(exc.value) == 400
    assert scorer.faces(images["two"], "none")[2].shape == (1, 48, 48)  # no detector, no failure


async def _read_body(declared: bytes | None, receive, limit: int, timeout_s: float = 30.0) -> bytes:
    """The body of a request with Content-Length ``declared`` (None: none, as when chunked) whose
    client sends what ``receive`` returns, read as the service reads a raw one."""
    from starlette.requests import Request

    from fer_ray.inference.serve import body_within

    scope = {"type": "http", "method": "POST", "headers": [(b"content-length", declared)] if declared else []}
    async with body_within(Request(scope, receive), limit, timeout_s) as body:
        return await body.request.body()


@pytest.mark.parametrize("declared", ["\u00b2", "12a", "-1"])
def test_a_content_length_of_anything_but_ascii_digits_is_a_400(declared):
    from fer_ray.inference.serve import ApiError

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    with pytest.raises(ApiError, match="invalid Content-Length") as exc:
        asyncio.run(_read_body(declared.encode("latin-1"), receive, 100))
    assert exc.value.status == 400


def test_a_body_without_a_length_is_refused_once_it_exceeds_the_limit():
    """A chunked upload declares no length: it is counted as it arrives, not read to its end."""
    from fer_ray.inference.serve import ApiError

    sent = []

    async def endless():
        sent.append(40)
        return {"type": "http.request", "body": b"x" * 40, "more_body": True}

    with pytest.raises(ApiError, match="request body exceeds the limit of 100 bytes") as exc:
        asyncio.run(_read_body(None, endless, 100))
    assert exc.value.status == 413 and sum(sent) == 120


async def _never():  # a client that declared a body and sends nothing
    await asyncio.Event().wait()


async def _a_byte_every_50_ms():  # one that sends it a byte at a time, never finishing
    await asyncio.sleep(0.05)
    return {"type": "http.request", "body": b"x", "more_body": True}


@pytest.mark.parametrize("receive,came", [(_never, 0), (_a_byte_every_50_ms, None)])
def test_a_body_not_all_there_by_the_deadline_is_a_408_not_a_slot_held_for_ever(receive, came):
    """The deadline is for the whole body: a byte every few seconds reset a per-chunk timeout,
    so such clients held their slots for as long as they liked."""
    from fer_ray.inference.serve import ApiError

    started = time.monotonic()
    with pytest.raises(ApiError, match=r"did not arrive within 0.5 s \((\d+) bytes had come\)") as exc:
        asyncio.run(_read_body(b"1000", receive, 10_000, timeout_s=0.5))
    assert exc.value.status == 408 and time.monotonic() - started < 2
    got = int(re.search(r"\((\d+) bytes", exc.value.message).group(1))
    assert got == came if came is not None else 3 <= got < 12


def test_app_builder_validates_string_args(small_artifact):
    from ray import serve

    config = ServeConfig.model_validate({"artifact": str(small_artifact), "max_batch_size": "4"})
    assert config.max_batch_size == 4 and config.ongoing() >= 4
    assert isinstance(app_builder(config), serve.Application)


# ------------------------------------------------------------------ over HTTP


@pytest.mark.ray
@pytest.mark.timeout(480)  # the shared small_artifact fixture may train first
def test_health_model_and_docs(service, small_artifact):
    assert service.get("/healthz").json()["status"] == "ok"
    assert service.head("/healthz").status_code == 200  # load balancers ask with HEAD
    model = service.get("/model").json()
    # which model answers, by name and checksum; not where the server keeps its files
    assert model["artifact"] == small_artifact.name and len(model["weights_sha256"]) == 64
    assert str(small_artifact.parent) not in json.dumps(model)
    assert model["kind"] == "cnn" and model["labels"] == list(EMOTIONS) and model["image_size"] == 48
    assert model["limits"]["max_body_bytes"] == LIMIT_BYTES and "batching" in model
    paths = service.get("/openapi.json").json()["paths"]
    assert {"/predict", "/predict/batch", "/healthz", "/model"} <= set(paths)
    assert "multipart/form-data" in paths["/predict"]["post"]["requestBody"]["content"]
    assert service.get("/docs").status_code == 200


@pytest.mark.ray
@pytest.mark.timeout(120)
def test_multipart_upload_finds_both_faces(service, images):
    r = service.post("/predict", files={"file": ("party.jpg", images["two"], "image/jpeg")})
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["width"], body["height"]) == (640, 480) and len(body["faces"]) == 2
    for face, (x, y, side) in zip(body["faces"], images["spots"]):
        box = face["box"]
        assert abs(box["x"] + box["w"] / 2 - (x + side / 2)) < side / 4
        assert abs(sum(face["probabilities"].values()) - 1) < 1e-3
        assert face["emotion"] == max(face["probabilities"], key=face["probabilities"].get)
    largest = service.post("/predict?faces=largest", files={"file": ("p.jpg", images["two"])}).json()
    assert len(largest["faces"]) == 1


@pytest.mark.ray
@pytest.mark.timeout(120)
def test_raw_body_with_and_without_content_type(service, images):
    for headers in ({"content-type": "image/png"}, {"content-type": "application/octet-stream"}, {}):
        r = service.post("/predict?faces=none", content=images["crop"], headers=headers)
        assert r.status_code == 200, r.text
        assert r.json()["faces"][0]["box"] == {"x": 0, "y": 0, "w": 48, "h": 48}
    no_face = service.post("/predict", content=images["landscape"], headers={"content-type": "image/png"}).json()
    assert no_face["faces"] == [] and no_face["message"] == "no face detected"


@pytest.mark.ray
@pytest.mark.timeout(120)
def test_batch_endpoint_reports_each_file(service, images):
    files = [("files", ("a.png", images["crop"], "image/png")), ("files", ("b.jpg", images["corrupt"], "image/jpeg")),
             ("files", ("c.txt", b"hello", "text/plain")), ("files", ("d.gif", images["gif"], "image/gif"))]
    r = service.post("/predict/batch?faces=none", files=files)
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert [x["filename"] for x in results] == ["a.png", "b.jpg", "c.txt", "d.gif"]
    assert [x["status"] for x in results] == [200, 400, 415, 415]
    assert len(results[0]["result"]["faces"]) == 1 and "truncated" in results[1]["error"]
    _is_error(service.post("/predict/batch", files=[("files", ("a.png", images["crop"]))] * 5), 400,
              "too many files: at most 4 files")  # --max-files 4: a limit, not a "malformed" body
    _is_error(service.post("/predict/batch", content=images["crop"], headers={"content-type": "image/png"}), 415)


@pytest.mark.ray
@pytest.mark.timeout(120)
def test_client_mistakes_are_4xx_json_never_500(service, images):
    _is_error(service.post("/predict", content=b""), 400, "empty")
    _is_error(service.post("/predict", content=images["corrupt"], headers={"content-type": "image/jpeg"}), 400,
              "truncated")
    _is_error(service.post("/predict", content=b"just text", headers={"content-type": "image/png"}), 400,
              "not a decodable image")
    # malformed multipart: no boundary, garbage parts, a form without a file
    _is_error(service.post("/predict", content=b"--x\r\nbad", headers={"content-type": "multipart/form-data"}), 400,
              "multipart")
    _is_error(service.post("/predict", content=b"--xx\r\ngarbage",
                           headers={"content-type": "multipart/form-data; boundary=xx"}), 400)
    _is_error(service.post("/predict", data={"note": "no file here"}, files={"x": ("", b"", "")}), 400)
    _is_error(service.post("/predict", files=[("file", ("a.png", images["crop"]))] * 2), 400, "exactly one")
    # oversize: the body, then the pixels behind a small body
    _is_error(service.post("/predict", content=b"\xff" * (2 * LIMIT_BYTES), headers={"content-type": "image/jpeg"}),
              413, "limit")
    assert len(images["huge"]) < LIMIT_BYTES
    _is_error(service.post("/predict", files={"file": ("big.png", images["huge"], "image/png")}), 413, "too large")
    # wrong types
    _is_error(service.post("/predict", content=b"hello", headers={"content-type": "text/plain"}), 415)
    _is_error(service.post("/predict", json={"image": "base64?"}), 415)
    _is_error(service.post("/predict", files={"file": ("a.txt", b"hello", "text/plain")}), 415)
    _is_error(service.post("/predict", content=images["gif"], headers={"content-type": "image/gif"}), 415, "GIF")
    _is_error(service.post("/predict?faces=sideways", content=images["crop"]), 422, "faces")
    _is_error(service.get("/predict"), 405)
    assert service.head("/predict").headers.get("allow") == "POST"
    _is_error(service.get("/nowhere"), 404)


async def _slow_upload(port: int) -> tuple[int, dict, float]:
    """A client that declares a 1,000-byte PNG body and sends a byte of it every 0.5 s until it is
    answered: (status, headers, seconds it took); status 0 if it is not answered within the body
    deadline and 5 s more."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"POST /predict?faces=none HTTP/1.1\r\nHost: test\r\nContent-Type: image/png\r\n"
                 b"Content-Length: 1000\r\n\r\n")
    started = time.monotonic()
    head = asyncio.ensure_future(reader.readuntil(b"\r\n\r\n"))
    while not head.done() and time.monotonic() - started < BODY_DEADLINE_S + 5:
        writer.write(b"x")
        await writer.drain()
        await asyncio.wait([head], timeout=0.5)
    writer.close()
    if not head.done():
        head.cancel()
        return 0, {}, time.monotonic() - started
    status, *lines = head.result().decode("latin-1").strip().split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in lines)
    return int(status.split()[1]), headers, time.monotonic() - started


@pytest.mark.ray
@pytest.mark.timeout(480)  # the shared small_artifact fixture may train first
def test_slow_uploads_get_408_by_the_deadline_and_never_starve_healthz_or_queue_without_bound(service, images):
    """~65 clients sending a byte every 5 s took all of a replica's request slots and /healthz
    stopped answering. Now: a replica takes ``ongoing()`` predictions at once, the rest get 503 with
    Retry-After (from the replica, or from Serve's bounded queue in front of it); /healthz has slots
    of its own; an upload not all there by ``body_timeout_s`` gets 408 and its place is free again."""
    from fer_ray.inference.serve import RETRY_AFTER_S

    port = service.base_url.port
    places = service.get("/model").json()["limits"]["max_ongoing_requests"]
    assert places == 32  # ServeConfig.ongoing(): 4x max_batch_size 8, and at least 32

    async def scenario():
        uploads = [asyncio.ensure_future(_slow_upload(port)) for _ in range(places + 8)]
        await asyncio.sleep(1.5)  # all admitted or refused; none at its deadline yet
        async with httpx.AsyncClient(base_url=str(service.base_url), timeout=30) as client:
            started = time.monotonic()
            health = await client.get("/healthz")
            health_s = time.monotonic() - started
            refused = await client.post("/predict?faces=none", content=images["crop"],
                                        headers={"content-type": "image/png"})
        return health, health_s, refused, await asyncio.gather(*uploads)

    health, health_s, refused, uploads = asyncio.run(scenario())
    statuses = sorted(status for status, _, _ in uploads)
    assert statuses == [408] * places + [503] * 8, uploads
    assert health.status_code == 200 and health_s < 2, (health.status_code, health_s)
    _is_error(refused, 503, "busy")
    assert refused.headers["retry-after"] == str(RETRY_AFTER_S)
    for status, headers, seconds in uploads:
        if status == 408:  # at the deadline, counted from the request's admission
            assert BODY_DEADLINE_S - 0.5 < seconds < BODY_DEADLINE_S + 3 and headers["connection"] == "close"
        else:  # at once, with when to try again
            assert seconds < BODY_DEADLINE_S and headers["retry-after"] == str(RETRY_AFTER_S), (seconds, headers)
    # their places are free again
    answer = service.post("/predict?faces=none", content=images["crop"], headers={"content-type": "image/png"})
    assert answer.status_code == 200, answer.text


def _multipart(parts: list[tuple[bytes, bytes]], boundary: bytes = b"abc") -> bytes:
    """A multipart/form-data body, closing delimiter included, built by hand so it can be cut."""
    head = b'--%s\r\nContent-Disposition: form-data; name="files"; filename="%s"\r\nContent-Type: image/png\r\n\r\n'
    return b"".join(head % (boundary, name) + data + b"\r\n" for name, data in parts) + b"--" + boundary + b"--\r\n"


def test_a_multipart_body_cut_short_is_refused_not_answered_for_fewer_files(service, images):
    """The multipart parser stops quietly at a body's end: a cut upload would lose its last file."""
    headers = {"content-type": "multipart/form-data; boundary=abc"}
    body = _multipart([(b"a.png", images["crop"]), (b"b.png", images["crop"])])
    whole = service.post("/predict/batch?faces=none", content=body, headers=headers)
    assert whole.status_code == 200 and [r["filename"] for r in whole.json()["results"]] == ["a.png", "b.png"]
    without_close = body[:body.rindex(b"--abc--")]
    for cut in (without_close, body[:-4], without_close[:-len(images["crop"]) // 2]):
        _is_error(service.post("/predict/batch?faces=none", content=cut, headers=headers), 400, "closing boundary")
        _is_error(service.post("/predict?faces=none", content=cut, headers=headers), 400, "closing boundary")


@pytest.mark.ray
@pytest.mark.timeout(120)
def test_concurrent_requests_share_a_forward_pass(service, images):
    async def burst(n: int) -> list[int]:
        async with httpx.AsyncClient(base_url=str(service.base_url), timeout=60) as client:
            rs = await asyncio.gather(*(client.post("/predict?faces=none", content=images["crop"],
                                                    headers={"content-type": "image/png"}) for _ in range(n)))
        assert all(r.status_code == 200 for r in rs), [r.text for r in rs if r.status_code != 200]
        return [r.json()["batch_size"] for r in rs]

    sizes = asyncio.run(burst(16))
    assert max(sizes) > 1 and max(sizes) <= 8, sizes
    batching = service.get("/model").json()["batching"]
    assert batching["largest_batch"] > 1 and batching["max_batch_size"] == 8


@pytest.mark.parametrize("device", ["gpu", "tpu:0", "cuda:99"])
def test_an_unknown_or_absent_device_is_a_value_error(device):
    from fer_ray.inference.predictor import pick_device

    with pytest.raises(ValueError, match="device"):
        pick_device(device)


def test_serve_refuses_a_non_artifact_and_a_busy_or_impossible_port_before_starting(small_artifact, tmp_path, capsys):
    from fer_ray.cli import main

    def serve(*args):
        rc = main(["serve", *args])
        return rc, capsys.readouterr().err

    rc, err = serve("--artifact", str(tmp_path), "--port", "18999")
    assert rc == 2 and "not a fer-ray artifact" in err
    with pytest.raises(SystemExit) as exc:  # a usage error, from ServerOptions' port range
        serve("--artifact", str(small_artifact), "--port", "99999")
    assert exc.value.code == 2 and "--port: input should be less than or equal to 65535" in capsys.readouterr().err
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        rc, err = serve("--artifact", str(small_artifact), "--port", str(busy.getsockname()[1]))
    assert rc == 2 and "cannot listen on 127.0.0.1" in err


def test_serve_refuses_an_artifact_it_cannot_load_before_ray_starts(tmp_path, monkeypatch, capsys):
    """Weights that are no safetensors file failed in every replica, after Ray and Serve had
    started (~60 s and hundreds of log lines); the driver loads the artifact first."""
    import fer_ray.runtime
    from fer_ray.cli import main

    monkeypatch.setattr(fer_ray.runtime, "init_ray", lambda *a, **k: pytest.fail("Ray was started"))
    artifact = pickled_weights_artifact(tmp_path / "artifact")
    assert main(["serve", "--artifact", str(artifact), "--port", str(free_port())]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "model.safetensors is not a readable safetensors file" in err[0]


def _healthy(port: int) -> bool:
    try:
        return httpx.head(f"http://127.0.0.1:{port}/healthz", timeout=5).status_code == 200
    except httpx.TransportError:  # not listening yet
        return False


@pytest.mark.ray
@pytest.mark.timeout(300)
def test_serve_direct_answers_on_its_port_and_sigterm_stops_it_cleanly(tmp_path, images):
    """``--direct``: the replica itself listens on --port (Serve's proxy on another port, named
    in the start line). SIGTERM is how Kubernetes and systemd stop a server: it exited 134 with
    a stack dump from Ray's own handler; it must stop as Ctrl-C does."""
    artifact = untrained_artifact(tmp_path / "model")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} | {"RAY_AUTH_MODE": "disabled"}
    cmd = [sys.executable, "-u", "-m", "fer_ray.cli", "serve", "--artifact", str(artifact), "--port", str(port),
           "--num-cpus", "1", "--replica-cpus", "0.5", "--direct"]
    with open(tmp_path / "out", "w") as out, open(tmp_path / "err", "w") as err:  # files: Ray logs a lot
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=err, start_new_session=True)
    try:
        deadline = time.time() + 240
        while proc.poll() is None and time.time() < deadline and not (
                "serving" in (tmp_path / "out").read_text() and _healthy(port)):
            time.sleep(1)
        assert _healthy(port), (tmp_path / "err").read_text()[-3000:]
        proxy = int(re.search(r"Serve's proxy: http://127.0.0.1:(\d+)", (tmp_path / "out").read_text()).group(1))
        assert proxy != port and _healthy(proxy)  # both answer: the replica on --port, the proxy beside it
        answer = httpx.post(f"http://127.0.0.1:{port}/predict?faces=none", content=images["crop"],
                            headers={"content-type": "image/png"}, timeout=60)
        assert answer.status_code == 200 and answer.json()["faces"][0]["emotion"] in EMOTIONS
        page = httpx.get(f"http://127.0.0.1:{port}/", timeout=60)  # the try-it page, on the port the line names
        assert f"open http://127.0.0.1:{port}/ in a browser" in (tmp_path / "out").read_text()
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert "<title>fer-ray" in page.text
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    errors = (tmp_path / "err").read_text()
    assert proc.returncode in (0, 143), errors[-3000:]
    assert "SIGTERM received" not in errors and "stopping" in (tmp_path / "out").read_text()


@pytest.mark.parametrize("extra,env,message", [
    (["--replicas", "2"], {}, "--direct serves one replica on --port; --replicas 2 needs Serve's proxy"),
    ([], {"RAY_ADDRESS": "127.0.0.1:1"}, "--direct needs the local Ray that fer-ray serve starts"),
])
def test_direct_is_refused_where_it_cannot_hold_before_ray_starts(tmp_path, monkeypatch, capsys, extra, env, message):
    import fer_ray.runtime
    from fer_ray.cli import main

    monkeypatch.setattr(fer_ray.runtime, "init_ray", lambda *a, **k: pytest.fail("Ray was started"))
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    artifact = str(untrained_artifact(tmp_path / "model"))
    assert main(["serve", "--artifact", artifact, "--port", str(free_port()), "--direct", *extra]) == 2
    assert message in capsys.readouterr().err
