"""The default model that ships in the package, and ``predict`` on top of it (no Ray)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

import fer_ray
from fer_ray.artifacts import load_artifact, read_meta
from fer_ray.data.preprocess import decode_grey, resize
from fer_ray.emotions import EMOTIONS
from fer_ray.inference.predict import format_table, predict
from fer_ray.inference.predictor import Predictor
from fer_ray.pretrained import DEFAULT_MODEL, default_artifact
from photos import SYNTHETIC, fer_photo, two_face_photo

FER_RAY = [sys.executable, "-m", "fer_ray.cli"]


@pytest.fixture(scope="module")
def default_predictor() -> Predictor:
    return Predictor(default_artifact(), device="cpu")


def test_the_default_model_ships_small_and_checksummed():
    folder = default_artifact()
    assert folder.name == DEFAULT_MODEL and folder.is_dir()
    meta, arrays = load_artifact(folder)  # refuses a weights file that does not match its checksum
    assert meta["kind"] == "cnn" and meta["labels"] == list(EMOTIONS)
    assert (folder / "model.safetensors").stat().st_size <= 10 * 1024 * 1024
    assert sum(a.numel() for a in arrays.values()) > 100_000
    card = (folder / "MODEL_CARD.md").read_text()
    test = meta["metrics"]["test"]
    assert f"{test['accuracy']:.1%}" in card  # the card states what model.json records
    assert "PublicTest" in card and "fer-ray train" in card


def test_the_default_model_scores_publictest_at_its_recorded_accuracy(default_predictor, fer_folders):
    """Decoded as `prepare` decodes them, the 3,589 PublicTest faces score what the model card says."""
    images, labels = [], []
    for k, emotion in enumerate(EMOTIONS):
        for path in sorted((fer_folders / "test" / emotion).iterdir()):
            images.append(resize(decode_grey(path.read_bytes()), 48))
            labels.append(k)
    assert len(images) == 3589
    accuracy = float((default_predictor.predict(np.stack(images)) == np.array(labels)).mean())
    recorded = read_meta(default_artifact())["metrics"]["test"]["accuracy"]
    # bf16 on CPUs that have it, fp32 elsewhere: a handful of near-ties may flip, no more
    assert accuracy == pytest.approx(recorded, abs=0.003)
    assert accuracy > 0.66


def test_predict_finds_the_faces_of_a_composed_photo(default_predictor, tmp_path):
    from PIL import Image

    img, spots = two_face_photo()
    path = tmp_path / "two.png"  # lossless: the file holds exactly the array's pixels
    Image.fromarray(img).save(path)
    records = predict(str(path), predictor=default_predictor, detector=SYNTHETIC)
    assert [r["face"] for r in records] == [0, 1]
    for r in records:
        assert r["error"] is None and r["image"] == str(path)
        assert list(r["probabilities"]) == list(EMOTIONS)
        assert sum(r["probabilities"].values()) == pytest.approx(1, abs=1e-3)
        assert r["emotion"] == r["top"][0]["emotion"] == max(r["probabilities"], key=r["probabilities"].get)
        assert len(r["top"]) == 3
        # each box lies on one pasted face: its centre within a quarter face of the face's centre
        b = r["box"]
        centre = (b["x"] + b["w"] / 2, b["y"] + b["h"] / 2)
        assert any(abs(centre[0] - (x + s / 2)) < s / 4 and abs(centre[1] - (y + s / 2)) < s / 4
                   for x, y, s in spots)
    # the same photo as an RGB array, and one face crop with faces="none", through the one-liner
    rgb = np.repeat(img[..., None], 3, axis=2)
    as_array = fer_ray.predict(rgb, predictor=default_predictor, detector=SYNTHETIC)
    assert [r["image"] for r in as_array] == ["array 0", "array 0"]
    np.testing.assert_allclose([list(r["probabilities"].values()) for r in as_array],
                               [list(r["probabilities"].values()) for r in records], atol=1e-6)
    (crop,) = fer_ray.predict(img[60:252, 40:232], faces="none", predictor=default_predictor)
    assert crop["box"] == {"x": 0, "y": 0, "w": 192, "h": 192}


def test_the_default_detector_gives_each_face_its_score_and_landmarks(default_predictor, fer_folders):
    """Real faces with the default detector (CenterFace): each record has the detector's score
    and five named landmarks inside its box, eyes above the mouth, the person's right eye on the
    image's left; the table and JSON of ``fer-ray predict`` come from these records."""
    img, spots = fer_photo(str(fer_folders))
    records = predict(img, predictor=default_predictor)
    assert [r["face"] for r in records] == [0, 1]
    for r, (x, y, side) in zip(records, spots):  # largest first, as the spots are
        b = r["box"]
        assert abs(b["x"] + b["w"] / 2 - (x + side / 2)) < side / 4
        assert abs(b["y"] + b["h"] / 2 - (y + side / 2)) < side / 4
        assert 0.15 <= r["detector_score"] <= 1
        marks = r["landmarks"]
        assert list(marks) == ["right_eye", "left_eye", "nose", "mouth_right", "mouth_left"]
        assert all(b["x"] <= px <= b["x"] + b["w"] and b["y"] <= py <= b["y"] + b["h"] for px, py in marks.values())
        assert marks["right_eye"][0] < marks["left_eye"][0]
        assert max(marks["right_eye"][1], marks["left_eye"][1]) < min(marks["mouth_right"][1], marks["mouth_left"][1])
    haar = predict(img, predictor=default_predictor, detector="haar")
    assert all(r["detector_score"] is None and r["landmarks"] is None for r in haar)
    with pytest.raises(ValueError, match="--small-faces needs --detector centerface"):
        predict(img, predictor=default_predictor, detector="haar", small_faces=True)


def test_predict_flips_by_default_and_takes_any_test_time_augmentation(default_predictor):
    """``fer_ray.predict`` (and ``fer-ray predict``) default to flip: each face's probabilities
    are the Predictor's flip ones; ``tta`` picks another mode."""
    face = np.random.default_rng(5).integers(0, 256, (48, 48), dtype=np.uint8)
    for settings, tta in (({}, "flip"), ({"tta": "none"}, "none"), ({"tta": "tencrop"}, "tencrop")):
        (record,) = predict(face, faces="none", predictor=default_predictor, **settings)
        expected = default_predictor.predict_proba(face[None], tta=tta)[0]
        np.testing.assert_allclose(list(record["probabilities"].values()), expected, atol=1e-6)


def test_predict_accounts_for_every_image(default_predictor, tmp_path):
    blank = np.full((100, 100), 128, np.uint8)
    bad = tmp_path / "bad.jpg"
    bad.write_text("not an image")
    records = predict([blank, str(bad)], predictor=default_predictor)
    assert [(r["image"], r["face"], r["error"]) for r in records] == [
        ("array 0", None, "no face detected"), (str(bad), None, "not a decodable image (unrecognised content)")]
    table = format_table(records)
    assert "no face detected" in table and str(bad) in table
    with pytest.raises(ValueError, match="faces"):
        predict(blank, faces="some", predictor=default_predictor)
    with pytest.raises(ValueError, match="uint8"):
        predict(blank.astype(np.float32), predictor=default_predictor)


def test_predict_command_uses_the_default_model_and_says_so(tmp_path):
    from PIL import Image

    img, _ = two_face_photo()
    Image.fromarray(img).save(tmp_path / "two.png")
    done = subprocess.run([*FER_RAY, "predict", str(tmp_path / "two.png"), "--json", "--detector", SYNTHETIC],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert f"using the default model {DEFAULT_MODEL}" in done.stderr
    records = json.loads(done.stdout)
    assert len(records) == 2 and all(len(r["probabilities"]) == 7 for r in records)

    table = subprocess.run([*FER_RAY, "predict", str(tmp_path / "two.png"), "--detector", SYNTHETIC],
                           capture_output=True, text=True)
    assert table.returncode == 0 and table.stdout.splitlines()[0].split()[:2] == ["image", "face"]
    assert len(table.stdout.splitlines()) == 3

    folder = subprocess.run([*FER_RAY, "predict", str(tmp_path)], capture_output=True, text=True)
    assert folder.returncode == 2 and "is a folder" in folder.stderr and "fer-ray score" in folder.stderr
    missing = subprocess.run([*FER_RAY, "predict", str(tmp_path / "nope.jpg")], capture_output=True, text=True)
    assert missing.returncode == 2 and "image not found" in missing.stderr


@pytest.mark.parametrize("stage, target, argv", [
    ("score", "fer_ray.inference.batch.score_folder", ["--input", "photos", "--output", "out.parquet"]),
    ("serve", "fer_ray.inference.serve.run_server", []),
])
def test_the_cli_hands_score_and_serve_the_default_model_when_no_artifact_is_given(stage, target, argv, monkeypatch,
                                                                                   capsys, tmp_path):
    """What the command line passes on (the stage functions are replaced to see it): the real
    `fer-ray score` runs the default model in tests/test_signals.py, and serve's app serves
    whichever artifact it is handed (tests/test_serve.py)."""
    from fer_ray.cli import main

    monkeypatch.chdir(tmp_path)
    seen = []
    if stage == "score":
        monkeypatch.setattr(target, lambda artifact, *a, **k: seen.append(artifact))
    else:
        monkeypatch.setattr(target, lambda config, *a, **k: seen.append(config.artifact))
    assert main([stage, *argv]) == 0
    assert seen == [str(default_artifact())]
    assert f"fer-ray {stage}: no --artifact given: using the default model {DEFAULT_MODEL}" in capsys.readouterr().err


def test_evaluate_falls_back_to_the_default_model_and_leaves_it_unchanged(synthetic_catalog, tmp_path, capsys):
    from fer_ray.cli import main

    before = (default_artifact() / "model.json").read_bytes()
    assert main(["evaluate", "--catalog", str(synthetic_catalog), "--split", "val", "--output", str(tmp_path)]) == 0
    assert "using the default model" in capsys.readouterr().err
    assert json.loads((tmp_path / "metrics.json").read_text())["count"] > 0
    assert (default_artifact() / "model.json").read_bytes() == before  # the installed package is not written to


GLOBAL_STATE = """
import json, logging, sys, warnings
sys.path.insert(0, sys.argv[1])
import cv2, torch
from PIL import Image
from photos import two_face_photo

def state():
    root = logging.getLogger()
    return {"pillow_max_pixels": Image.MAX_IMAGE_PIXELS, "opencv_threads": cv2.getNumThreads(),
            "torch_threads": torch.get_num_threads(), "warnings_filters": repr(warnings.filters),
            "logging_root": [root.level, repr(root.handlers)], "logging_disable": logging.root.manager.disable,
            "loggers": sorted(name for name, lg in logging.Logger.manager.loggerDict.items()
                              if isinstance(lg, logging.Logger) and (lg.level or lg.handlers or not lg.propagate))}

before = state()
import fer_ray
after_import = state()
records = fer_ray.predict(two_face_photo()[0], detector="haar")  # the drawn faces: found by the cascade
fer_ray.predict(two_face_photo()[0])  # and the default detector (OpenCV's DNN module) on the same photo
print(json.dumps({"before": before, "import": after_import, "predict": state(), "faces": len(records)}))
"""


def test_import_and_predict_leave_other_libraries_settings_alone():
    """``import fer_ray`` and a ``fer_ray.predict()`` call change no process-wide setting of the
    user's program: Pillow's decompression-bomb guard, OpenCV's and torch's thread counts, the
    warning filters and logging's configuration (checked in a fresh interpreter)."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    done = subprocess.run([sys.executable, "-c", GLOBAL_STATE, str(Path(__file__).parent)], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    seen = json.loads(done.stdout.splitlines()[-1])
    assert seen["faces"] == 2  # predict really ran: detection and the model
    assert seen["import"] == seen["before"]
    assert seen["predict"] == seen["before"]


def test_a_shipped_model_is_named_by_its_name_unless_a_folder_has_that_path(tmp_path, monkeypatch, capsys):
    from PIL import Image

    from fer_ray.cli import main
    from fer_ray.pretrained import artifact_or_default, shipped_models

    assert shipped_models() == {DEFAULT_MODEL: default_artifact()}
    monkeypatch.chdir(tmp_path)
    assert artifact_or_default(DEFAULT_MODEL) == str(default_artifact())
    crop = np.full((48, 48), 128, np.uint8)
    by_name = predict([crop], artifact=DEFAULT_MODEL, faces="none", tta="none")
    assert by_name[0]["probabilities"] == predict([crop], faces="none", tta="none")[0]["probabilities"]
    (tmp_path / DEFAULT_MODEL).mkdir()  # one's own folder of that name is what the name means now
    assert artifact_or_default(DEFAULT_MODEL) == DEFAULT_MODEL
    Image.fromarray(crop).save(tmp_path / "x.png")
    assert main(["predict", "x.png", "--artifact", "no-such-model"]) == 2
    assert f"artifact no-such-model not found: neither a folder nor the name of a model that ships with fer-ray " \
           f"({DEFAULT_MODEL};" in capsys.readouterr().err


def test_models_lists_each_shipped_model_with_its_recorded_accuracy_and_a_measured_speed(capsys):
    from fer_ray.cli import main

    assert main(["models"]) == 0
    header, row = capsys.readouterr().out.splitlines()[:2]
    assert header.split()[:5] == ["model", "architecture", "parameters", "weights", "PublicTest"]
    test = read_meta(default_artifact())["metrics"]["test"]["accuracy"]
    assert row.startswith(f"{DEFAULT_MODEL} (default)") and f"{test:.1%}" in row
    assert float(row.split()[-1].replace(",", "")) > 0  # crops/s, measured now
