"""`fer-ray demo` (what `make demo` runs): its photos, and the whole run at a small size."""

from __future__ import annotations

import pandas as pd
import pytest

from fer_ray.data.faces import FaceDetector
from fer_ray.data.preprocess import decode_grey
from fer_ray.demo import run_demo, write_demo_photos


def test_demo_photos_have_the_faces_they_were_drawn_with(tmp_path):
    assert write_demo_photos(tmp_path, count=9) == 10
    detector = FaceDetector()
    found = {p.name: len(detector.detect(decode_grey(p.read_bytes()))) for p in tmp_path.rglob("*.png")}
    assert found.pop("photo-000.png") == 0  # the one photo drawn without a face
    assert found == {"photo-004.png": 2, "photo-008.png": 2} | {f"photo-{i:03d}.png": 1 for i in (1, 2, 3, 5, 6, 7)}
    assert (tmp_path / "broken.jpg").is_file()


@pytest.mark.ray
@pytest.mark.timeout(600)
def test_small_demo_runs_every_stage(tmp_path, ray_session):
    summary = run_demo(str(tmp_path / "demo"), count=700, epochs=3, log=lambda *_: None)
    assert set(summary["outputs"]) == {"catalog", "svm", "cnns", "ensemble", "report", "scores"}
    rows = {row["model"].split(" (")[0]: row["accuracy"] for row in summary["table"]}
    assert len(rows) == 5 and all(0 <= acc <= 1 for acc in rows.values())
    scores = pd.read_parquet(summary["outputs"]["scores"])
    assert scores["path"].nunique() == 25  # 24 photos + the broken file: nothing dropped
    assert scores["error"].str.startswith("not a decodable image").sum() == 1
    assert (scores["error"] == "no face detected").sum() == 1
