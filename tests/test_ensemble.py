"""The feature ensemble: featurizer = penultimate forward pass, stacking, artifact with verified members."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from fer_ray.artifacts import ArtifactError, load_cnn, save_cnn
from fer_ray.data.catalog import Catalog
from fer_ray.emotions import NUM_CLASSES
from fer_ray.ensemble.stack import (EnsembleBackend, MemberFeatures, choose_head, fit_head, member_record, save_ensemble,
                                    soft_vote)
from fer_ray.inference.predictor import Predictor
from fer_ray.models.inputs import Normalization, to_model_input



@pytest.fixture(scope="module")
def second_member(tmp_path_factory, synthetic_catalog):
    """Another small_cnn on the same catalog, with another seed and learning rate (~20 s, no Ray)."""
    from fer_ray.training.local import fit_local
    from fer_ray.training.config import Recipe

    model, _, meta = fit_local(str(synthetic_catalog), "small_cnn",
                               Recipe(epochs=4, batch_size=64, lr=0.03, seed=1), device="cpu")
    return save_cnn(str(tmp_path_factory.mktemp("artifacts") / "small_cnn_b"), model, meta)


@pytest.fixture(scope="module")
def members(small_artifact, second_member):
    return [str(small_artifact), str(second_member)]


def direct_features(path: str, images: np.ndarray) -> np.ndarray:
    """The penultimate layer computed by hand as the Predictor computes it: normalise, then the
    network's backbone with its batch norms folded, channels-last, under the same autocast."""
    from torch.fx.experimental.optimization import fuse

    from fer_ray.models.forward import autocast

    model, meta = load_cnn(path, "cpu")
    backbone = fuse(model.backbone).to(memory_format=torch.channels_last)
    x = to_model_input(torch.tensor(images), meta["input_size"], Normalization(**meta["normalization"]),
                       channels_last=True)
    with torch.no_grad(), autocast(torch.device("cpu"), True):
        return backbone(x).float().numpy()


def test_member_features_equal_a_direct_forward_pass(members, synthetic_catalog):
    images = Catalog.open(synthetic_catalog).load("val")["image"][:50]
    featurizer = MemberFeatures(members, device="cpu", batch_size=16)
    out = featurizer({"image": images, "label": np.zeros(50), "id": np.arange(50)})
    expected = np.concatenate([direct_features(m, images) for m in members], axis=1)
    assert out["features"].shape == (50, sum(featurizer.widths)) == expected.shape
    np.testing.assert_allclose(out["features"], expected, rtol=1e-4, atol=1e-5)
    assert out["probs"].shape == (50, 2, NUM_CLASSES)
    np.testing.assert_allclose(out["probs"][:, 0], Predictor(members[0], device="cpu").predict_proba(images), atol=1e-6)


def test_head_predicts_the_emotion_whose_model_scores_highest():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, NUM_CLASSES, 700)
    features = rng.normal(size=(700, 12)).astype(np.float32)
    features[np.arange(700), labels] += 3.0  # feature k carries emotion k
    head = fit_head(features, labels, C=1.0)
    assert head.coef.shape == (NUM_CLASSES, 12)
    probs = head.predict_proba(features)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(probs.argmax(axis=1), head.scores(features).argmax(axis=1))
    assert (probs.argmax(axis=1) == labels).mean() > 0.9
    split = {"features": features, "label": labels}
    _, choice = choose_head(split, split, grid=(0.01, 1.0))
    assert choice["C"] in (0.01, 1.0) and set(choice["val_accuracy_by_C"]) == {"0.01", "1"}
    assert soft_vote(np.stack([probs, probs], axis=1)).shape == probs.shape


def test_tampered_member_is_refused(members, synthetic_catalog, tmp_path):
    catalog = str(synthetic_catalog)
    copies = [shutil.copytree(m, tmp_path / f"member{i}") for i, m in enumerate(members)]
    records = [member_record(str(c)) for c in copies]
    val = Catalog.open(catalog).load("val")
    feats = MemberFeatures([str(c) for c in copies], device="cpu").features(val["image"])
    head = fit_head(feats, val["label"], C=1.0)
    artifact = save_ensemble(str(tmp_path / "ens"), head, records, [r["feature_dim"] for r in records],
                             {"C": 1.0}, Catalog.open(catalog))
    assert Predictor(artifact, device="cpu").predict_proba(val["image"][:4]).shape == (4, NUM_CLASSES)

    # A member retrained in place (consistent on its own, but not the network the head was fitted on).
    model, meta = load_cnn(copies[1])
    with torch.no_grad():
        model.classifier.bias.add_(1.0)
    save_cnn(str(copies[1]), model, {k: v for k, v in meta.items() if k not in ("weights", "weights_sha256")})
    with pytest.raises(ArtifactError, match="not the artifact the ensemble was fitted on"):
        Predictor(artifact, device="cpu")
    # A member whose weights file was altered behind its own model.json.
    shutil.rmtree(copies[1])
    shutil.copytree(members[1], copies[1])
    Predictor(artifact, device="cpu")  # the original is accepted again
    weights = copies[0] / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-8] + b"\0" * 8)
    with pytest.raises(ArtifactError):
        EnsembleBackend(str(artifact), torch.device("cpu"))


@pytest.mark.ray
@pytest.mark.timeout(420)
def test_ensemble_stage_end_to_end(members, synthetic_catalog, ray_session, tmp_path, capfd):
    """Featurize on Ray Data, fit, save, report; Predictor reproduces it on raw images after reload."""
    from fer_ray.cli import main
    from fer_ray.ensemble.stack import read_features

    catalog, run = str(synthetic_catalog), tmp_path / "ensemble"
    # 3 actors on 2 CPUs: with a whole CPU each they never all started and nothing was read
    assert main(["ensemble", "--members", *members, "--catalog", catalog, "--run-dir", str(run),
                 "--batch-size", "128", "--actors", "3"]) == 0
    # the featurizer's actors are not restartable: no Ray core error line about their arguments
    assert "constructor arguments" not in capfd.readouterr().err

    # The Ray Data featurizer wrote exactly the direct forward pass, for every val row.
    val = Catalog.open(catalog).load("val", columns=("image", "label", "id"))
    feats = read_features(str(run / "features" / "val"))
    order = np.argsort(val["id"])
    np.testing.assert_array_equal(feats["id"], val["id"][order])
    expected = np.concatenate([direct_features(m, val["image"][order]) for m in members], axis=1)
    assert feats["features"].shape[1] == sum(member_record(m)["feature_dim"] for m in members)
    np.testing.assert_allclose(feats["features"], expected, rtol=1e-4, atol=1e-5)

    summary = json.loads((run / "result.json").read_text())
    table = summary["splits"]["val"]
    names = [n for n in table if n.startswith("member")]
    stacked = next(v for n, v in table.items() if n.startswith("stacked"))
    assert len(names) == 2 and any(n.startswith("soft voting") for n in table)
    # Seeded data and members: the stacked ensemble is at least as good as its best member.
    assert stacked["accuracy"] >= max(table[n]["accuracy"] for n in names)
    assert summary["evaluations"]["val"]["accuracy"] == pytest.approx(stacked["accuracy"])  # end to end
    report = (run / "report.md").read_text()
    assert "| stacked ensemble" in report and "| soft voting" in report and "macro P" in report

    # Round trip: the saved artifact gives the same probabilities as the head on the features,
    # and a fresh load gives identical ones.
    first = Predictor(run / "artifact", device="cpu").predict_proba(val["image"][order])
    again = Predictor(run / "artifact", device="cpu").predict_proba(val["image"][order])
    np.testing.assert_array_equal(first, again)
    head = EnsembleBackend(str(run / "artifact"), torch.device("cpu")).head
    np.testing.assert_allclose(first, head.predict_proba(feats["features"]), atol=1e-4)

    # Featurizing again into the same folder (a rerun) replaces the features: Ray Data alone
    # would add a second copy of every row beside the first.
    from fer_ray.ensemble.features import featurize_split

    featurize_split(members, catalog, "val", str(run / "features" / "val"), actors=1, batch_size=128)
    assert len(read_features(str(run / "features" / "val"))["id"]) == len(val["id"])


@pytest.mark.ray
def test_ensemble_gpu_without_a_gpu_is_refused_not_waited_for(members, synthetic_catalog, ray_session, tmp_path):
    from fer_ray.ensemble.features import featurize_split

    with pytest.raises(ValueError, match="--gpu needs 1 GPU"):
        featurize_split(members, str(synthetic_catalog), "val", str(tmp_path / "f"), gpu=True)


@pytest.mark.ray
def test_featurizer_actors_always_leave_a_cpu_for_reading():
    """A one-CPU cluster (`fer-ray demo --num-cpus 1`) waited for ever: the one actor held the
    only CPU that Ray Data's read task needed."""
    from fer_ray.ensemble.features import plan_actors

    assert plan_actors(1, 0, False, None, 1.0) == (1, 0.0)
    assert plan_actors(2, 0, False, None, 1.0) == (1, 1.0)
    assert plan_actors(8, 0, False, None, 1.0) == (7, 1.0)
    assert plan_actors(2, 0, False, 3, 1.0) == (3, 0.333)
    assert plan_actors(4, 2, True, None, 1.0) == (2, 0.0)


def test_the_same_member_twice_is_refused(small_artifact, synthetic_catalog, tmp_path):
    """`--members A A` passed the two-member check as a one-model ensemble."""
    from fer_ray.ensemble.features import run_ensemble

    with pytest.raises(ValueError, match="names the same artifact more than once"):
        run_ensemble([str(small_artifact), f"{small_artifact}/"], str(synthetic_catalog), str(tmp_path / "run"))
    assert not (tmp_path / "run").exists()
