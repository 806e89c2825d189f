"""`fer-ray demo` (what `make demo` runs), for real: the installed command, a local Ray, no fakes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from fer_ray.data.faces import HaarDetector
from fer_ray.data.preprocess import decode_grey
from fer_ray.demo import write_demo_photos

FER_RAY = str(Path(sys.executable).with_name("fer-ray"))  # the console script `make demo` runs
ENV = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_ADDRESS": ""}


def test_demo_photos_have_the_faces_they_were_drawn_with(tmp_path):
    assert write_demo_photos(tmp_path, count=9) == 10
    detector = HaarDetector()
    found = {p.name: len(detector.detect(decode_grey(p.read_bytes()))) for p in tmp_path.rglob("*.png")}
    assert found.pop("photo-000.png") == 0  # the one photo drawn without a face
    assert found == {"photo-004.png": 2, "photo-008.png": 2} | {f"photo-{i:03d}.png": 1 for i in (1, 2, 3, 5, 6, 7)}
    assert (tmp_path / "broken.jpg").is_file()


def _demo(out: Path, *flags: str) -> subprocess.Popen:
    return subprocess.Popen([FER_RAY, "demo", "--output", str(out), "--count", "350", "--epochs", "1", *flags],
                            env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _table(out: str) -> list[str]:
    """The headline table the demo ends with: from its header line to the protocol line."""
    lines = out.splitlines()
    start = max(i for i, line in enumerate(lines) if line.startswith("model "))
    return lines[start:]


@pytest.mark.ray
@pytest.mark.timeout(900)
def test_the_demo_runs_in_an_empty_folder_resumes_after_ctrl_c_and_a_rerun_skips_every_stage(tmp_path):
    """The README's first command, smaller: interrupted (Ctrl+C) while its first CNN trains, run
    again to the end (the finished catalog and SVM sweep are not redone), then run a third time
    (every stage skipped, the same table, in seconds). The photos it scores lie beside the
    pipeline's folder, not in it."""
    out = tmp_path / "demo"
    first = _demo(out)
    deadline = time.time() + 400
    while not (out / "pipeline" / "cnn-1-small_cnn" / "run.json").exists():
        assert first.poll() is None, first.stdout.read()
        assert time.time() < deadline, "the demo started no training in time"
        time.sleep(0.2)
    time.sleep(3)
    first.send_signal(signal.SIGINT)
    text, _ = first.communicate(timeout=120)
    assert first.returncode == 130, text
    assert "fer-ray demo: interrupted (Ctrl+C); rerun the same command to resume" in text
    assert not (out / "pipeline" / "cnn-1-small_cnn" / "result.json").exists(), "the training was not interrupted"

    second = _demo(out)
    text, _ = second.communicate(timeout=600)
    assert second.returncode == 0, text
    assert "[pipeline] catalog: already done" in text and "[pipeline] svm: already done" in text
    assert "[pipeline] cnn-1-small_cnn ..." in text
    photos, pipeline = out / "photos", out / "pipeline"
    assert len([p for p in photos.rglob("*") if p.is_file()]) == 25  # 24 photos and a broken file
    assert (pipeline / "report.md").read_text().startswith("# fer-ray pipeline report")
    scores = pq.read_table(pipeline / "scores" / "scores.parquet").to_pylist()
    assert {Path(r["path"]).name for r in scores} == {p.name for p in photos.rglob("*") if p.is_file()}
    assert sum(r["emotion"] is not None for r in scores) == 28  # the faces drawn; one photo has none
    assert [r["error"] for r in scores if r["error"] and "broken.jpg" in r["path"]]
    table = _table(text)
    assert table[1].startswith("linear SVM") and table[-1].startswith("(split 'test'")

    t0 = time.time()
    third = _demo(out)
    again, _ = third.communicate(timeout=300)
    assert third.returncode == 0, again
    for stage in ("catalog", "svm", "cnn-1-small_cnn", "cnn-2-small_cnn", "ensemble", "scores"):
        assert f"[pipeline] {stage}: already done" in again
    assert _table(again) == table
    assert time.time() - t0 < 90, "a finished demo took long to answer"

    changed = _demo(out, "--epochs", "2")  # another setting: refused, naming the demo's own flag
    refused, _ = changed.communicate(timeout=120)
    assert changed.returncode == 2 and "--output" in refused and "--overwrite" in refused, refused
