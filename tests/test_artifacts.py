"""Artifacts round-trip exactly, refuse tampering, and Predictor is their only reader."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from fer_ray.artifacts import ArtifactError, load_artifact, load_cnn, read_meta, save_cnn, update_metrics
from fer_ray.data.catalog import Catalog
from fer_ray.inference.predictor import Predictor
from fer_ray.models import build_model


def _meta():
    return {"architecture": "small_cnn", "num_classes": 7, "input_size": 48, "image_size": 48,
            "in_channels": 1, "normalization": {"mean": 0.5, "std": 0.25}}


def test_cnn_artifact_round_trips_exactly(tmp_path):
    torch.manual_seed(0)
    model = build_model("small_cnn")
    with torch.no_grad():  # give BN buffers non-default values too
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-1, 1)
    save_cnn(str(tmp_path / "a"), model, _meta())
    loaded, meta = load_cnn(tmp_path / "a")
    assert meta["kind"] == "cnn" and meta["labels"][0] == "angry"
    original = model.state_dict()
    for k, v in loaded.state_dict().items():
        assert torch.equal(v, original[k]), k
    images = np.random.default_rng(0).integers(0, 256, (4, 48, 48), dtype=np.uint8)
    a = Predictor(tmp_path / "a", device="cpu").predict_proba(images)
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    b = Predictor(tmp_path / "b", device="cpu").predict_proba(images)
    assert np.array_equal(a, b)


def test_tampered_or_broken_artifacts_are_refused(tmp_path):
    save_cnn(str(tmp_path / "a"), build_model("small_cnn"), _meta())
    weights = tmp_path / "a" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="checksum"):
        load_artifact(tmp_path / "a")
    with pytest.raises(ArtifactError, match="no model.json"):
        read_meta(tmp_path)
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "model.json").write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(ArtifactError, match="format"):
        Predictor(tmp_path / "c")
    (tmp_path / "c" / "model.json").write_text("{not json")
    with pytest.raises(ArtifactError, match="not valid JSON"):
        read_meta(tmp_path / "c")


@pytest.mark.parametrize("edit,message", [
    (lambda m: m.pop("architecture"), "'architecture' must be a string, got None"),
    (lambda m: m.pop("input_size"), "'input_size' must be a positive integer"),
    (lambda m: m.update(image_size="48"), "'image_size' must be a positive integer, got '48'"),
    (lambda m: m.update(num_classes=0), "'num_classes' must be a positive integer, got 0"),
    (lambda m: m.update(normalization="x"), "'normalization' must be a JSON object"),
    (lambda m: m.update(normalization={"mean": 0.5}), "'normalization' must be {\"mean\": number"),
    (lambda m: m.update(normalization={"mean": 0.5, "std": 0}), "'normalization' std must be a positive number"),
    (lambda m: m.update(catalog="x"), "'catalog' must be a JSON object, got 'x'"),
    (lambda m: m.update(metrics=[]), "'metrics' must be a JSON object, got \\[\\]"),
    (lambda m: m.update(architecture="vgg16"), "weights do not fit the vgg16 .*size mismatch"),
    (lambda m: m.update(num_classes=5), "'num_classes' must be 7, got 5"),
    (lambda m: m.update(in_channels=3), "'in_channels' must be 1, got 3"),
    (lambda m: m.update(input_size=100_000), "'input_size' must be 1..1024, got 100000"),
    (lambda m: m.update(image_size=1025), "'image_size' must be 1..1024, got 1025"),
    (lambda m: m.update(weights="../../x"), "'weights' must name a file in the artifact's own folder"),
    (lambda m: m.update(weights=None), "'weights' must name a file in the artifact's own folder"),
    (lambda m: [m], "must hold a JSON object, not list"),
    (lambda m: m.update(kind="svm"), "its weights lack coef, intercept, mean, scale .*'kind' right"),
    (lambda m: m.update(kind="ensemble"), "'members' must be a JSON list"),
])
def test_a_hand_edited_model_json_is_refused_by_name(tmp_path, edit, message):
    """Every loader path (Predictor, evaluate, score, serve, transfer) starts from read_meta
    and load_cnn: a damaged model.json must be one clear ArtifactError there, not a KeyError
    or a state-dict traceback later."""
    save_cnn(str(tmp_path / "a"), build_model("small_cnn"), _meta())
    meta = json.loads((tmp_path / "a" / "model.json").read_text())
    edited = edit(meta)
    (tmp_path / "a" / "model.json").write_text(json.dumps(edited if isinstance(edited, list) else meta))
    with pytest.raises(ArtifactError, match=message):
        Predictor(tmp_path / "a", device="cpu")


def test_weights_outside_the_artifact_folder_are_refused_alike_whether_they_exist_or_not(tmp_path):
    """model.json's 'weights' was read wherever it pointed, and the checksum error told whether
    e.g. /etc/shadow exists; a link inside the folder that leads out counts as outside too."""
    save_cnn(str(tmp_path / "a"), build_model("small_cnn"), _meta())
    meta = read_meta(tmp_path / "a")
    (tmp_path / "elsewhere.safetensors").write_bytes((tmp_path / "a" / "model.safetensors").read_bytes())
    (tmp_path / "a" / "link.safetensors").symlink_to(tmp_path / "elsewhere.safetensors")
    messages = set()
    for name in ("../elsewhere.safetensors", "../missing.safetensors", str(tmp_path / "elsewhere.safetensors"),
                 "/no/such/file", "link.safetensors", ".", ""):
        (tmp_path / "a" / "model.json").write_text(json.dumps(meta | {"weights": name}))
        with pytest.raises(ArtifactError) as caught:
            load_artifact(tmp_path / "a")
        messages.add(str(caught.value).replace(repr(name), "NAME"))
    assert messages == {f"{tmp_path / 'a' / 'model.json'}: 'weights' must name a file in the artifact's own "
                        "folder, got NAME"}


def test_weights_that_are_not_safetensors_are_one_artifact_error_even_with_a_matching_checksum(tmp_path):
    """A pickle (which must never be unpickled) or a cut file whose checksum was updated to
    match: a SafetensorError traceback from evaluate before."""
    from fer_ray.artifacts import file_sha256

    save_cnn(str(tmp_path / "a"), build_model("small_cnn"), _meta())
    weights, meta = tmp_path / "a" / "model.safetensors", read_meta(tmp_path / "a")
    good = weights.read_bytes()
    for data in (b"", good[:-100], b"\x80\x04K\x01."):  # the last: pickle.dumps(1)
        weights.write_bytes(data)
        (tmp_path / "a" / "model.json").write_text(json.dumps(meta | {"weights_sha256": file_sha256(weights)}))
        with pytest.raises(ArtifactError, match="model.safetensors is not a readable safetensors file"):
            Predictor(tmp_path / "a", device="cpu")


def test_a_vgg_whose_model_json_claims_a_larger_input_is_refused_before_allocating_it(tmp_path, monkeypatch):
    """vgg16's first dense layer grows with the input side: at a claimed 1024 px (weights for
    48 px) it would take 8 GB before load_state_dict said the weights do not fit. Sizes are
    compared on torch's meta device first, so no real model is built at all."""
    import fer_ray.models as models

    save_cnn(str(tmp_path / "a"), build_model("vgg16"), _meta() | {"architecture": "vgg16"})
    meta = read_meta(tmp_path / "a")
    (tmp_path / "a" / "model.json").write_text(json.dumps(meta | {"input_size": 1024}))
    built = []
    real_build = models.build_model
    monkeypatch.setattr(models, "build_model", lambda *a, **k: built.append(torch.empty(0).device) or real_build(*a, **k))
    with pytest.raises(ArtifactError, match=r"do not fit the vgg16 .*size mismatch for backbone.fc1.1.weight: "
                                            r"the weights hold \(4096, 512\), model.json implies \(4096, 524288\)"):
        load_cnn(tmp_path / "a")
    assert [d.type for d in built] == ["meta"]


def test_metrics_updates_keep_weights_valid(tmp_path):
    save_cnn(str(tmp_path / "a"), build_model("small_cnn"), _meta())
    update_metrics(tmp_path / "a", {"test": {"accuracy": 0.5}})
    update_metrics(tmp_path / "a", {"val": {"accuracy": 0.6}})
    meta, _ = load_artifact(tmp_path / "a")
    assert meta["metrics"] == {"test": {"accuracy": 0.5}, "val": {"accuracy": 0.6}}


def test_predictor_on_any_face_size(small_artifact, synthetic_catalog):
    predictor = Predictor(small_artifact, device="cpu")
    data = Catalog.open(synthetic_catalog).load("val")
    probs = predictor.predict_proba(data["image"])
    assert probs.shape == (len(data["image"]), 7)
    assert np.allclose(probs.sum(1), 1, atol=1e-5)
    assert (probs.argmax(1) == data["label"]).mean() > 0.5  # it learned something
    # Larger crops of the same faces are resized to the artifact's image size first.
    big = [np.kron(face, np.ones((3, 3), np.uint8)) for face in data["image"][:8]]
    big_probs = predictor.predict_proba(big)
    assert (big_probs.argmax(1) == probs[:8].argmax(1)).mean() >= 0.75
    flipped = predictor.predict_proba(data["image"][:8], tta="flip")
    assert flipped.shape == (8, 7)
    assert predictor.features(data["image"][:3]).shape == (3, 128)
    with pytest.raises(ValueError, match="grey uint8"):
        predictor.predict_proba([np.zeros((48, 48, 3), np.uint8)])
    with pytest.raises(ValueError, match="grey uint8 faces .*float32"):  # 0..1 floats: not silently black
        predictor.predict_proba(data["image"][:2].astype(np.float32) / 255)
    with pytest.raises(ValueError, match="test-time"):
        predictor.predict_proba(data["image"][:2], tta="rotate")
    # One colour image was scored as 100 "faces" (its rows); an empty face as a black one.
    with pytest.raises(ValueError, match=r"\(100, 80, 3\): that looks like one colour image"):
        predictor.predict_proba(np.zeros((100, 80, 3), np.uint8))
    with pytest.raises(ValueError, match=r"face 0: empty image \(0, 10\)"):
        predictor.predict_proba([np.zeros((0, 10), np.uint8)])
    mirrored = data["image"][:4][..., ::-1]  # a view with negative strides: torch refused it
    np.testing.assert_allclose(predictor.predict_proba(mirrored),
                               predictor.predict_proba(mirrored.copy()), atol=1e-6)


def test_evaluations_on_another_catalog_are_kept_apart(synthetic_catalog, tmp_path):
    from fer_ray.data.catalog import Catalog, MANIFEST
    from fer_ray.evaluation.evaluate import metrics_key

    catalog = Catalog.open(synthetic_catalog)
    checksum = catalog.sha256
    own = {"catalog": {"sha256": checksum}}
    assert metrics_key(own, catalog, "test", "none") == "test"
    assert metrics_key(own, catalog, "val", "flip") == "val+tta-flip"
    other = {"catalog": {"sha256": "0" * 64}}  # trained elsewhere (e.g. FER2013, scored on KDEF)
    key = metrics_key(other, catalog, "test", "none")
    assert key == f"{synthetic_catalog.name}@{checksum[:8]}:test"
    # Another catalog in a folder of the same name (e.g. two `kdef` folders) gets its own key.
    twin = tmp_path / "elsewhere" / synthetic_catalog.name
    shutil.copytree(synthetic_catalog, twin)
    manifest = json.loads((twin / MANIFEST).read_text())
    (twin / MANIFEST).write_text(json.dumps(manifest | {"catalog_sha256": "f" * 64}))
    assert metrics_key(other, Catalog.open(twin), "test", "none") not in (key, "test")


def test_every_artifact_kind_has_a_predictor_backend():
    import importlib

    from fer_ray.artifacts import KINDS
    from fer_ray.inference.predictor import BACKENDS

    assert set(BACKENDS) == set(KINDS)
    for target in BACKENDS.values():
        module, _, name = target.partition(":")
        assert callable(getattr(importlib.import_module(module), name))
