"""The try-it page of ``fer-ray serve`` (GET /), driven in a real headless Chromium by Playwright.

The page is checked against the JSON API it calls: the boxes it draws and the labels it shows
are the ones POST /predict answers for the same photo, and the server's own 4xx reasons reach
the page. The webcam path runs on Chromium's fake camera, fed a video made here from a photo.
Chromium comes from the system (``make browser`` installs Debian's); Playwright cannot fetch
its own browser without the internet.
"""

from __future__ import annotations

import os
import shutil
import time

import numpy as np
import pytest

from test_serve import LIMIT_BYTES, images, service  # noqa: F401 (the served app and photos, shared)

pytestmark = [pytest.mark.ray, pytest.mark.timeout(480)]  # the shared small_artifact fixture may train first
COLOURS = {"angry": (214, 39, 40), "disgust": (140, 86, 75), "fear": (148, 103, 189), "happy": (44, 160, 44),
           "sad": (31, 119, 180), "surprise": (255, 127, 14), "neutral": (127, 127, 127)}  # page.html's


def chromium_path() -> str | None:
    """FER_RAY_CHROMIUM, or a Chromium on the PATH."""
    return os.environ.get("FER_RAY_CHROMIUM") or next(
        filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None)


@pytest.fixture(scope="module")
def browser_args():
    path = chromium_path()
    if path is None:
        pytest.skip("no Chromium on this machine: `make browser` installs it (apt-get install chromium)")
    return {"executable_path": path, "headless": True, "args": ["--no-sandbox"]}


@pytest.fixture(scope="module")
def playwright():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        yield p


@pytest.fixture()
def page(playwright, browser_args, service):
    browser = playwright.chromium.launch(**browser_args)
    tab = browser.new_page()
    tab.goto(str(service.base_url).rstrip("/") + "/")
    yield tab
    browser.close()


def _faces(page) -> list[dict]:
    return page.eval_on_selector_all("#faces li", "items => items.map(i => ({box: i.dataset.box, emotion: "
                                     "i.dataset.emotion, bars: i.querySelectorAll('meter').length}))")


def _pixel(page, x: int, y: int) -> tuple[int, int, int]:
    return tuple(page.evaluate(f"Array.from(document.getElementById('view').getContext('2d')"
                               f".getImageData({x}, {y}, 1, 1).data.slice(0, 3))"))


def test_the_page_draws_the_faces_the_api_answers(page, service, images, tmp_path):
    photo = tmp_path / "two.jpg"
    photo.write_bytes(images["two"])
    api = service.post("/predict", content=images["two"], headers={"content-type": "image/jpeg"}).json()
    assert len(api["faces"]) == 2
    page.set_input_files("#file", str(photo))
    page.wait_for_function("document.querySelectorAll('#faces li').length === 2", timeout=30_000)
    shown = _faces(page)
    assert [f["box"] for f in shown] == [",".join(str(f["box"][k]) for k in "xywh") for f in api["faces"]]
    assert [f["emotion"] for f in shown] == [f["emotion"] for f in api["faces"]]
    assert all(f["bars"] == 7 for f in shown)  # one probability bar per emotion
    assert page.evaluate("[view.width, view.height]") == [api["width"], api["height"]]
    for face in api["faces"]:  # each box is stroked in its emotion's colour (its bottom edge, clear of the label)
        box = face["box"]
        assert _pixel(page, box["x"] + box["w"] // 2, box["y"] + box["h"] - 1) == COLOURS[face["emotion"]]
    label = page.get_attribute("#view", "aria-label")
    assert label == f"Image with 2 faces: {', '.join(f['emotion'] for f in api['faces'])}"
    assert "answered in" in page.text_content("#timing") and "two.jpg: 2 face(s)" in page.text_content("#status")


@pytest.mark.parametrize("name,content,reason", [
    ("huge.png", b"\x89PNG" + bytes(LIMIT_BYTES), f"413: request body of {LIMIT_BYTES + 4} bytes exceeds the limit"),
    ("notes.txt", b"not a photo", "415: unsupported content type 'text/plain'"),
    ("broken.jpg", b"\xff\xd8\xff not really a jpeg", "400: "),
])
def test_the_page_shows_the_server_s_reason_for_a_refused_file(page, tmp_path, name, content, reason):
    path = tmp_path / name
    path.write_bytes(content)
    page.set_input_files("#file", str(path))
    page.wait_for_function("document.getElementById('status').className === 'error'", timeout=30_000)
    assert page.text_content("#status").startswith(f"{name}: {reason}")
    assert _faces(page) == []


def _y4m(path, image: np.ndarray, frames: int = 8) -> None:
    """A grey still as a short YUV4MPEG2 video, the format Chromium's fake camera plays (looped)."""
    h, w = image.shape
    chroma = np.full((h // 2) * (w // 2), 128, np.uint8).tobytes()
    with open(path, "wb") as fh:
        fh.write(f"YUV4MPEG2 W{w} H{h} F4:1 Ip A1:1 C420jpeg\n".encode())
        for _ in range(frames):
            fh.write(b"FRAME\n" + image.tobytes() + chroma + chroma)


def test_the_webcam_path_shows_boxes_one_request_at_a_time_and_stops_cleanly(playwright, browser_args, service,
                                                                               tmp_path):
    from photos import two_face_photo

    video = tmp_path / "camera.y4m"
    _y4m(video, two_face_photo()[0])
    browser = playwright.chromium.launch(**browser_args | {"args": [
        "--no-sandbox", "--use-fake-device-for-media-stream", f"--use-file-for-fake-video-capture={video}"]})
    try:
        tab = browser.new_context(permissions=["camera"]).new_page()
        requests = []  # (start, end) of each POST /predict
        tab.on("request", lambda r: r.method == "POST" and requests.append([time.monotonic(), None]))
        tab.on("requestfinished", lambda r: r.method == "POST" and requests[-1].__setitem__(1, time.monotonic()))
        tab.goto(str(service.base_url).rstrip("/") + "/")
        started = time.monotonic()
        tab.click("#camera")
        tab.wait_for_function("document.querySelectorAll('#faces li').length === 2", timeout=20_000)
        assert time.monotonic() - started < 20 and tab.get_attribute("#camera", "aria-pressed") == "true"
        time.sleep(2)
        tab.click("#camera")
        stopped = time.monotonic()
        assert tab.text_content("#status") == "webcam off" and tab.get_attribute("#camera", "aria-pressed") == "false"
        assert tab.evaluate("document.getElementById('video').srcObject") is None
        time.sleep(1.5)
        assert len(requests) >= 2
        for (start, end), (next_start, _) in zip(requests, requests[1:]):
            assert end is not None and end <= next_start  # never two requests in flight
        seconds = requests[-1][0] - requests[0][0]
        assert (len(requests) - 1) / max(seconds, 1e-9) <= 4.5  # at most ~4 frames a second
        assert all(start <= stopped + 0.05 for start, _ in requests)  # nothing sent after the stop
    finally:
        browser.close()


def test_the_controls_are_reached_from_the_keyboard_in_reading_order(page):
    order = []
    for _ in range(3):
        page.keyboard.press("Tab")
        order.append(page.evaluate("document.activeElement.id"))
    assert order == ["file", "camera", "mode"]
    page.keyboard.press("Enter")  # on the <select>: it opens; Escape closes, the page stays usable
    page.keyboard.press("Escape")
    assert page.get_attribute("#view", "aria-label") == "No photo yet"
