"""`fer-ray demo` (what `make demo` runs): its photos, and what it asks of the pipeline."""

from __future__ import annotations

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


def test_the_demo_runs_the_pipeline_on_synthetic_faces_and_scores_its_photos(tmp_path, monkeypatch):
    """What `fer-ray demo` asks of the pipeline; the stages themselves run end to end in
    tests/test_pipeline.py."""
    import fer_ray.runtime
    from fer_ray.pipeline import Pipeline

    ran = []

    def run(self):
        ran.append(self.cfg)
        return {"seconds": 1.0, "outputs": {"report": "r.md", "cnns": ["a", "b"]}, "protocol": "test",
                "table": [{"model": "linear SVM", "accuracy": 0.5, "macro_f1": 0.4, "paper": 0.318}]}

    monkeypatch.setattr(fer_ray.runtime, "init_ray", lambda *a, **k: None)
    monkeypatch.setattr(Pipeline, "run", run)
    lines = []
    run_demo(output=str(tmp_path / "demo"), count=700, epochs=3, log=lines.append)
    (cfg,) = ran
    assert (cfg.source, cfg.count, cfg.epochs, cfg.models) == ("synthetic", 700, 3, ("small_cnn", "small_cnn"))
    assert cfg.score_input == str(tmp_path / "demo" / "photos")
    assert len(list((tmp_path / "demo" / "photos").rglob("*.*"))) == 25  # 24 photos and a broken file
    assert "  cnns      a, b" in lines and any(line.startswith("linear SVM") for line in "\n".join(lines).splitlines())
