"""Artifacts round-trip exactly, refuse tampering, and Predictor is their only reader."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from datagen import face_pixels, untrained_artifact, write_image
from fer_ray.artifacts import (ArtifactError, load_artifact, load_cnn, read_meta, save_artifact, save_cnn,
                               update_metrics, write_meta)
from fer_ray.choices import MAX_INPUT_SIZE
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
    with pytest.raises(ArtifactError, match="must hold a JSON object whose 'kind' is one of"):
        Predictor(tmp_path / "c")
    (tmp_path / "c" / "model.json").write_text("{not json")
    with pytest.raises(ArtifactError, match="not valid JSON"):
        read_meta(tmp_path / "c")


@pytest.mark.parametrize("edit,message", [
    (lambda m: m.pop("architecture"), "architecture: Field required$"),
    (lambda m: m.update(architecture="alexnet"), "architecture: Input should be 'vgg16', .*got 'alexnet'"),
    (lambda m: m.pop("input_size"), "input_size: Field required"),
    (lambda m: m.update(image_size="48"), "image_size: Input should be a valid integer, got '48'"),
    (lambda m: m.update(image_size=48.0), "image_size: Input should be a valid integer, got 48.0"),
    (lambda m: m.update(in_channels=True), "in_channels: Input should be a valid integer, got True"),
    (lambda m: m.update(num_classes=0), "num_classes: Input should be greater than or equal to 7, got 0"),
    (lambda m: m.update(normalization="x"), "normalization: Input should be a valid dictionary or instance"),
    (lambda m: m.update(normalization={"mean": 0.5}), "normalization.std: Field required"),
    (lambda m: m.update(normalization={"mean": 0.5, "std": 0.2, "max": 1}),
     "normalization.max: Extra inputs are not permitted"),
    (lambda m: m.update(normalization={"mean": 0.5, "std": 0}), "normalization.std: Input should be greater than 0"),
    (lambda m: m.update(normalization={"mean": 0.5, "std": -1}), "normalization.std: Input should be greater than 0"),
    (lambda m: m.update(normalization={"mean": float("nan"), "std": 0.2}),
     "normalization.mean: Input should be a finite number, got nan"),
    (lambda m: m.update(normalization={"mean": 0.5, "std": float("inf")}),
     "normalization.std: Input should be a finite number, got inf"),
    (lambda m: m.update(normalization={"mean": float("-inf"), "std": 0.2}), "normalization.mean: .*finite"),
    (lambda m: m.update(catalog="x"), "catalog: Input should be a valid dictionary, got 'x'"),
    (lambda m: m.update(metrics=[]), "metrics: Input should be a valid dictionary, got \\[\\]"),
    (lambda m: m.update(architecture="vgg16"), "weights do not fit the vgg16 .*size mismatch"),
    (lambda m: m.update(num_classes=5), "num_classes: Input should be greater than or equal to 7, got 5"),
    (lambda m: m.update(in_channels=3), "in_channels: Input should be less than or equal to 1, got 3"),
    (lambda m: m.update(input_size=1024), "input_size: Input should be less than or equal to 256, got 1024"),
    (lambda m: m.update(input_size=4), "small_cnn needs an input of at least 8 px"),
    (lambda m: m.update(image_size=1025), "image_size: Input should be less than or equal to 1024, got 1025"),
    (lambda m: m.update(weights="../../x"), "'weights' must name a file in the artifact's own folder"),
    (lambda m: m.update(weights=None), "weights: Input should be a valid string, got None"),
    (lambda m: m.update(weights_sha256="abc"), "weights_sha256: String should match pattern"),
    (lambda m: m.update(labels=m["labels"][:6]), "labels: must be the seven emotions in order: angry, disgust, "),
    (lambda m: m.update(labels=m["labels"][::-1]), "labels: must be the seven emotions in order"),
    (lambda m: m.update(labels=[*m["labels"], "contempt"]), "labels: must be the seven emotions in order"),
    (lambda m: m.update(labels="angry"), "labels: Input should be a valid list"),
    (lambda m: [m], "model.json: must hold a JSON object whose 'kind' is one of cnn, svm, ensemble$"),
    (lambda m: m.update(kind="rnn"), "model.json: must hold a JSON object whose 'kind' is one of"),
    (lambda m: m.pop("kind"), "model.json: must hold a JSON object whose 'kind' is one of"),
    (lambda m: m.update(format="fer-ray-artifact/2"), "format: Input should be 'fer-ray-artifact/1'"),
    (lambda m: m.update(kind="svm"), "its weights lack coef, intercept, mean, scale .*'kind' right"),
    (lambda m: m.update(kind="ensemble"), "members: Field required"),
    (lambda m: m.update(kind="ensemble", members=[]), "members: List should have at least 1 item"),
    (lambda m: m.update(kind="ensemble", members=[{"path": "x"}]), "members.0.weights_sha256: Field required"),
])
def test_a_hand_edited_model_json_is_refused_by_name(tmp_path, edit, message):
    """Every loader path (Predictor, evaluate, score, serve, transfer) starts from read_meta
    and load_cnn: a damaged model.json must be one clear ArtifactError there, not a KeyError
    or a state-dict traceback later."""
    save_cnn(str(tmp_path / "a"), build_model("small_cnn"), _meta())
    meta = json.loads((tmp_path / "a" / "model.json").read_text())
    edited = edit(meta)
    (tmp_path / "a" / "model.json").write_text(json.dumps(edited if isinstance(edited, list) else meta))
    with pytest.raises(ArtifactError, match=message) as caught:
        Predictor(tmp_path / "a", device="cpu")
    assert "\n" not in str(caught.value)


def test_the_input_size_bound_is_the_one_training_keeps(tmp_path):
    """fast_cnn at a claimed 1024 px took 134 MB a face per layer: model.json's input_size is
    held to MAX_INPUT_SIZE, and so is training, so no artifact is made that cannot be loaded."""
    from fer_ray.training.config import TrainConfig

    with pytest.raises(ValueError, match="input_size"):
        TrainConfig(catalog="c", run_dir="r", input_size=MAX_INPUT_SIZE + 1)
    with pytest.raises(ValueError, match=f"input size {MAX_INPUT_SIZE + 1} is above"):
        build_model("fast_cnn", input_size=MAX_INPUT_SIZE + 1)
    with torch.device("meta"):  # a model at the bound is built and saved as any other
        model = build_model("fast_cnn", input_size=MAX_INPUT_SIZE)
    assert read_meta(save_cnn(str(tmp_path / "at-the-bound"), model.to_empty(device="cpu"), _meta() | {
        "architecture": "fast_cnn", "input_size": MAX_INPUT_SIZE}))["input_size"] == MAX_INPUT_SIZE


def _cnn_with(path, change) -> str:
    """An untrained small_cnn artifact whose state dict ``change`` edited, checksum to match."""
    state = dict(build_model("small_cnn").state_dict())
    change(state)
    return str(save_artifact(str(path), "cnn", state, _meta()))


def _set(name, value):
    return lambda state: state[name].view(-1)[0].fill_(value)


@pytest.mark.parametrize("change,message", [
    (_set("classifier.weight", float("nan")), "array 'classifier.weight' holds NaN or infinite values"),
    (_set("classifier.bias", float("-inf")), "array 'classifier.bias' holds NaN or infinite values"),
    (_set("backbone.block1.1.running_var", float("inf")), "'backbone.block1.1.running_var' holds NaN or infinite"),
    (lambda s: s.update({k: v.double() for k, v in s.items() if v.is_floating_point()}),
     "array '.*' is torch.float64; fer-ray artifacts hold float32"),
    (lambda s: s.update({"classifier.bias": s["classifier.bias"].half()}), "'classifier.bias' is torch.float16"),
    (lambda s: s.update({"classifier.bias": s["classifier.bias"].long()}),
     "dtype mismatch for classifier.bias: the weights hold torch.int64, the network takes torch.float32"),
    (lambda s: s.update({k: v.float() for k, v in s.items() if k.endswith("num_batches_tracked")}),
     "dtype mismatch for .*num_batches_tracked: the weights hold torch.float32, the network takes torch.int64"),
])
def test_weights_the_network_cannot_run_on_are_refused_at_load(tmp_path, change, message):
    """NaN or infinite weights made every face "angry" with NaN probabilities; float64 weights
    loaded, then every served request was a 500 while /healthz said ok. Each is one line now."""
    with pytest.raises(ArtifactError, match=message) as caught:
        Predictor(_cnn_with(tmp_path / "a", change), device="cpu")
    assert "\n" not in str(caught.value)


def test_the_untouched_state_dict_loads_and_gives_finite_probabilities(tmp_path):
    """The control for the test above: ``_cnn_with`` itself makes a working artifact."""
    probs = Predictor(_cnn_with(tmp_path / "a", lambda state: None), device="cpu").predict_proba(face_pixels(3))
    assert probs.shape == (3, 7) and np.isfinite(probs).all()


@pytest.mark.parametrize("dtype,value,message", [
    (np.float32, np.nan, "array 'coef' holds NaN or infinite values"),
    (np.float64, 0.0, "array 'coef' is torch.float64"),
])
def test_every_kind_s_arrays_are_float32_and_finite(tmp_path, dtype, value, message):
    """The same check for an SVM's (and an ensemble head's) arrays as for a network's."""
    def svm(coef):
        arrays = {"coef": coef, "intercept": np.zeros(7, np.float32), "mean": np.zeros(48 * 48, np.float32),
                  "scale": np.ones(48 * 48, np.float32)}
        return save_artifact(str(tmp_path / "svm"), "svm", arrays, {"architecture": "linear_svm", "image_size": 48})

    clean = Predictor(svm(np.zeros((7, 48 * 48), np.float32)), device="cpu")
    assert clean.predict_proba(face_pixels(2)).shape == (2, 7)
    coef = np.zeros((7, 48 * 48), dtype)
    coef[0, 0] = value
    with pytest.raises(ArtifactError, match=message):
        Predictor(svm(coef), device="cpu")


def test_a_model_json_nested_too_deep_or_not_text_is_one_line(tmp_path):
    """100,000 nested lists made json.loads raise RecursionError: a traceback, not exit 2."""
    untrained_artifact(tmp_path / "a")
    file = tmp_path / "a" / "model.json"
    for text, message in ((b'{"recipe": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "maximum recursion depth"),
                          (b"\xff\xfe\xfa", "codec can't decode")):
        file.write_bytes(text)
        with pytest.raises(ArtifactError, match=f"model.json is not valid JSON: .*{message}") as caught:
            Predictor(tmp_path / "a", device="cpu")
        assert "\n" not in str(caught.value)


def _ensemble(path, members: list[dict]) -> str:
    """An ensemble artifact over ``members`` (records as ``member_record`` writes them), with
    a zero head on one small_cnn's 128 features."""
    arrays = {"coef": np.zeros((7, 128), np.float32), "intercept": np.zeros(7, np.float32),
              "feature_mean": np.zeros(128, np.float32), "feature_scale": np.ones(128, np.float32)}
    return str(save_artifact(str(path), "ensemble", arrays, {"architecture": "ensemble(small_cnn)", "image_size": 48,
                                                             "members": members}))


def _point_members_at(ensemble: str, *others: str) -> None:
    """Rewrite ``ensemble``'s members to ``others``, each with its weights' true checksum."""
    meta = read_meta(ensemble)
    meta["members"] = [{"path": o, "weights_sha256": read_meta(o)["weights_sha256"]} for o in others]
    write_meta(ensemble, meta)


def test_an_ensemble_among_its_own_members_is_refused_not_a_recursion_error(tmp_path):
    """An ensemble naming itself, or two naming each other, loaded members without end
    (RecursionError); members are refused unless they are CNNs, before any is loaded."""
    from fer_ray.ensemble.stack import member_record

    cnn = str(untrained_artifact(tmp_path / "cnn"))
    first = _ensemble(tmp_path / "first", [member_record(cnn)])
    assert Predictor(first, device="cpu").predict_proba(face_pixels(2)).shape == (2, 7)  # a sound one loads
    second = _ensemble(tmp_path / "second", [member_record(cnn)])
    _point_members_at(second, first)
    _point_members_at(first, second)  # a cycle: first -> second -> first
    for ensemble, member in ((first, second), (second, first)):
        with pytest.raises(ArtifactError, match=f"ensemble members must be CNN artifacts; {member} is ensemble"):
            Predictor(ensemble, device="cpu")
    _point_members_at(first, first)  # itself
    with pytest.raises(ArtifactError, match=f"ensemble members must be CNN artifacts; {first} is ensemble"):
        Predictor(first, device="cpu")


@pytest.mark.parametrize("stage", ["score", "serve"])
def test_a_hostile_model_json_is_exit_2_and_one_line_before_ray_starts(tmp_path, monkeypatch, capsys, stage):
    """The commands that start Ray read the artifact first, through the same schema."""
    import fer_ray.runtime
    from fer_ray.cli import main

    monkeypatch.setattr(fer_ray.runtime, "init_ray", lambda *a, **k: pytest.fail("Ray was started"))
    artifact = untrained_artifact(tmp_path / "artifact")
    meta = read_meta(artifact)
    write_meta(artifact, meta | {"normalization": {"mean": 0.5, "std": float("nan")}})
    write_image(tmp_path / "in" / "a.png", face_pixels(1)[0])
    args = {"score": ["--input", str(tmp_path / "in"), "--output", str(tmp_path / "scores.csv")],
            "serve": ["--port", str(fer_ray.runtime.free_port())]}[stage]
    assert main([stage, "--artifact", str(artifact), *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "model.json: normalization.std: Input should be a finite number, got nan" in err[0]


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
    """vgg16's first dense layer grows with the input side: at a claimed 256 px (weights for
    48 px) it would take 537 MB before load_state_dict said the weights do not fit. Sizes are
    compared on torch's meta device first, so no real model is built at all."""
    import fer_ray.models as models

    save_cnn(str(tmp_path / "a"), build_model("vgg16"), _meta() | {"architecture": "vgg16"})
    meta = read_meta(tmp_path / "a")
    (tmp_path / "a" / "model.json").write_text(json.dumps(meta | {"input_size": 256}))
    built = []
    real_build = models.build_model
    monkeypatch.setattr(models, "build_model", lambda *a, **k: built.append(torch.empty(0).device) or real_build(*a, **k))
    with pytest.raises(ArtifactError, match=r"do not fit the vgg16 .*size mismatch for backbone.fc1.1.weight: "
                                            r"the weights hold \(4096, 512\), model.json implies \(4096, 32768\)"):
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
    from fer_ray.artifacts import KINDS
    from fer_ray.inference.predictor import BACKENDS

    assert set(BACKENDS) == set(KINDS)
    for backend in BACKENDS.values():
        assert callable(backend.predict_proba)
