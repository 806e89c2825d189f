"""The linear SVM baseline: it learns, its artifact round-trips through Predictor, the CLI reports."""

from __future__ import annotations

import json

import numpy as np
import pytest
from safetensors.numpy import load_file

from fer_ray.artifacts import ArtifactError
from fer_ray.baseline.linear import LinearSvm, SvmBackend
from fer_ray.baseline.svm import MIN_SCALE_FRACTION, fit_svm, save_svm, solver_parameter
from fer_ray.data.catalog import Catalog
from fer_ray.emotions import NUM_CLASSES
from fer_ray.inference.predictor import Predictor

CHANCE = 1 / NUM_CLASSES
# Synthetic faces v2 move and turn, so a linear model on pixels reaches only ~25-30% on 1,120 of
# them (the CNNs ~95%+): that is the paper's gap. Data and fits are seeded, so these are exact.
MARGIN = 0.07


def accuracy(model, split) -> float:
    return float((model.decision(split["image"]).argmax(axis=1) == split["label"]).mean())


@pytest.fixture(scope="module")
def synthetic_svm(synthetic_catalog):
    train = Catalog.open(synthetic_catalog).load("train")
    model, info = fit_svm(train["image"], train["label"], lam=1.0)
    return model, info


def test_lambda_maps_to_each_solver_the_same_objective():
    # LinearSVC: 1/2 |w|^2 + C sum hinge, divided by C N, is (1/N) sum hinge + lambda |w|^2.
    n, lam = 1000, 0.5
    C = solver_parameter("liblinear", lam, n)["C"]
    assert 1 / (2 * C * n) == pytest.approx(lam)
    # SGDClassifier: (1/N) sum hinge + alpha/2 |w|^2.
    assert solver_parameter("sgd", lam, n)["alpha"] / 2 == pytest.approx(lam)
    with pytest.raises(ValueError):
        solver_parameter("liblinear", 0.0, n)


def test_pixels_are_standardised_each_with_a_floor():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (200, 8, 8)).astype(np.uint8)
    images[:, 0, 0] = 7  # constant in training: its scale must come from the floor, not zero
    images[:, 0, 1] = rng.integers(100, 104, 200)  # barely varies
    labels = rng.integers(0, NUM_CLASSES, 200)
    model, _ = fit_svm(images, labels, lam=1.0)
    flat = images.reshape(200, -1) / 255.0
    floor = MIN_SCALE_FRACTION * flat.std()
    assert model.scale.shape == (64,)
    np.testing.assert_allclose(model.scale[2:], flat.std(axis=0)[2:], rtol=1e-5)
    np.testing.assert_allclose(model.scale[:2], floor, rtol=1e-5)
    unseen = images[:5].copy()
    unseen[:, 0, 0] = 255  # a test image that differs where training never did stays finite
    assert np.isfinite(model.decision(unseen)).all()


def test_an_artifact_with_one_global_scale_still_loads():
    """Artifacts written before per-pixel scaling stored one (1,) scale; it broadcasts."""
    rng = np.random.default_rng(1)
    arrays = {"coef": rng.normal(size=(NUM_CLASSES, 16)), "intercept": rng.normal(size=NUM_CLASSES),
              "mean": rng.random(16), "scale": np.array([0.25])}
    model = LinearSvm.from_arrays(arrays)
    images = rng.integers(0, 256, (3, 4, 4)).astype(np.uint8)
    expected = ((images.reshape(3, -1) / 255.0 - arrays["mean"]) / 0.25) @ arrays["coef"].T + arrays["intercept"]
    np.testing.assert_allclose(model.decision(images), expected, rtol=1e-4, atol=1e-4)


def test_svm_beats_chance_on_synthetic(synthetic_svm, synthetic_catalog):
    model, info = synthetic_svm
    val = Catalog.open(synthetic_catalog).load("val")
    assert info["converged"]
    assert accuracy(model, val) > CHANCE + MARGIN
    assert model.coef.shape == (NUM_CLASSES, 48 * 48)


def test_sgd_solver_also_learns(synthetic_catalog):
    train, val = (Catalog.open(synthetic_catalog).load(s) for s in ("train", "val"))
    model, info = fit_svm(train["image"], train["label"], lam=0.01, solver="sgd", max_iter=30)
    assert info["solver"] == "sgd" and "alpha" in info
    assert accuracy(model, val) > CHANCE + MARGIN


def test_svm_artifact_round_trips_through_predictor(synthetic_svm, synthetic_catalog, tmp_path):
    model, info = synthetic_svm
    catalog = str(synthetic_catalog)
    path = save_svm(str(tmp_path / "svm"), model, info, Catalog.open(catalog))
    meta = json.loads((path / "model.json").read_text())
    assert meta["kind"] == "svm" and meta["fit"]["lambda"] == 1.0
    assert set(load_file(str(path / "model.safetensors"))) == {"coef", "intercept", "mean", "scale"}

    val = Catalog.open(catalog).load("val")
    predictor = Predictor(path, device="cpu")
    probs = predictor.predict_proba(val["image"])
    assert probs.shape == (len(val["label"]), NUM_CLASSES)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(probs.argmax(axis=1), model.decision(val["image"]).argmax(axis=1))
    np.testing.assert_allclose(SvmBackend(str(path)).predict_proba(val["image"]), probs, atol=1e-6)
    flipped = predictor.predict_proba(val["image"], tta="flip")
    assert flipped.shape == probs.shape and not np.allclose(flipped, probs)
    with pytest.raises(ValueError, match="svm artifacts support .*not 'tencrop'"):
        predictor.predict_proba(val["image"][:2], tta="tencrop")
    from fer_ray.inference.batch import score_folder

    with pytest.raises(ValueError, match="svm artifacts support .*not 'tencrop'"):  # before Ray, as one line
        score_folder(str(path), str(tmp_path), str(tmp_path / "scores.csv"), tta="tencrop")
    # Faces of another size are resized by the Predictor, like for every other kind.
    assert predictor.predict(np.zeros((2, 96, 96), np.uint8)).shape == (2,)
    assert predictor.predict_proba([]).shape == (0, NUM_CLASSES)  # like a CNN's

    # A model.json edited to another image size no longer matches the coefficients: refused by
    # name, not a broadcasting error on the first prediction.
    meta["image_size"] = 24
    (path / "model.json").write_text(json.dumps(meta))
    with pytest.raises(ArtifactError, match=r"coef \(7, 2304\).* do not make a 7-class linear model on 576 inputs"):
        Predictor(path, device="cpu")


def test_baseline_cli_writes_artifact_and_reports(synthetic_catalog, tmp_path, capsys):
    from fer_ray.cli import main

    run = tmp_path / "baseline"
    assert main(["baseline", "--catalog", str(synthetic_catalog), "--run-dir", str(run), "--lambda", "1.0"]) == 0
    summary = json.loads((run / "result.json").read_text())
    for split in ("val", "test"):
        assert (run / f"eval-{split}" / "report.md").is_file()
        assert summary["evaluations"][split]["accuracy"] > CHANCE + 0.05
    meta = json.loads((run / "artifact" / "model.json").read_text())
    assert meta["metrics"]["test"]["accuracy"] == summary["evaluations"]["test"]["accuracy"]

    # Another lambda into the same run directory would replace this SVM: refused, then --overwrite.
    other = ["baseline", "--catalog", str(synthetic_catalog), "--run-dir", str(run), "--lambda", "0.1"]
    assert main(other) == 2
    assert "different lambda" in capsys.readouterr().err
    assert json.loads((run / "run.json").read_text())["settings"]["lambda"] == 1.0
    assert main([*other, "--overwrite"]) == 0
    assert json.loads((run / "run.json").read_text())["settings"]["lambda"] == 0.1
    assert json.loads((run / "result.json").read_text())["fit"]["lambda"] == 0.1


@pytest.mark.ray
@pytest.mark.realdata
@pytest.mark.timeout(180)
def test_svm_beats_chance_on_real_csv_sample(fer_csv_sample, ray_session, tmp_path):
    from fer_ray.data.ingest import build_catalog
    from fer_ray.data.sources import Fer2013CsvSource

    catalog = str(tmp_path / "cat")
    build_catalog(Fer2013CsvSource(str(fer_csv_sample)), catalog)
    train, val = (Catalog.open(catalog).load(s) for s in ("train", "val"))
    model, _ = fit_svm(train["image"], train["label"], lam=0.5)
    # 500 real training faces give 28% on the 100 val faces: P(>= 28 right | p = 1/7) < 0.001.
    # (Always answering the commonest emotion would score 32% here; the SVM needs more data.)
    assert accuracy(model, val) > CHANCE + 0.08


def test_baseline_refusals_leave_the_run_directory_unclaimed(synthetic_catalog, tmp_path):
    """A bad --lambda or a catalog without train fails before run.json is written."""
    import shutil

    from fer_ray.baseline.svm import run_baseline
    from fer_ray.data.catalog import MANIFEST

    run = tmp_path / "run"
    for lam, message in ((float("inf"), "finite number"), (float("nan"), "finite number"), (0.0, "greater than 0")):
        with pytest.raises(ValueError, match=f"lam\n  Input should be (a )?{message}"):
            run_baseline(str(synthetic_catalog), str(run), lam=lam)
    no_train = tmp_path / "no-train"
    shutil.copytree(synthetic_catalog, no_train)
    manifest = json.loads((no_train / MANIFEST).read_text())
    manifest["shards"].pop("train")
    (no_train / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="has no 'train' split"):
        run_baseline(str(no_train), str(run))
    assert not run.exists()


def test_a_catalog_rebuilt_in_place_is_not_resumed_as_the_old_one(synthetic_catalog, tmp_path):
    """Runs compare the catalog's checksum, not only its path: the same folder with other
    images would otherwise pass as the run's own catalog."""
    import shutil

    from fer_ray.baseline.svm import run_baseline
    from fer_ray.data.catalog import MANIFEST

    catalog, run = tmp_path / "catalog", tmp_path / "run"
    shutil.copytree(synthetic_catalog, catalog)
    run_baseline(str(catalog), str(run))
    manifest = json.loads((catalog / MANIFEST).read_text())
    (catalog / MANIFEST).write_text(json.dumps(manifest | {"catalog_sha256": "e" * 64}))  # "rebuilt"
    with pytest.raises(ValueError, match="different catalog_sha256"):
        run_baseline(str(catalog), str(run))
