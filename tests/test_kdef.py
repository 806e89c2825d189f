"""KDEF source, on generated files of the KDEF layout (real KDEF cannot be shipped)."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from datagen import KDEF_EXPRESSIONS, by_id, encode, kdef_name, kdef_photo, run_source, write_image, write_kdef
from fer_ray.data.catalog import Catalog
from fer_ray.data.ingest import build_catalog
from fer_ray.data.faces import HaarDetector, find_faces
from fer_ray.data.preprocess import decode_grey, resize
from fer_ray.data.sources import KDEF_ANGLES, KdefSource, SourceError
from fer_ray.data.synthetic import synthetic_faces
from fer_ray.emotions import EMOTIONS

CODE_LABEL = {"AF": "fear", "AN": "angry", "DI": "disgust", "HA": "happy", "NE": "neutral",
              "SA": "sad", "SU": "surprise"}


def luminance(rgb: np.ndarray) -> np.ndarray:
    return np.round(rgb.astype(np.float64) @ np.array([0.299, 0.587, 0.114]))


def touch_kdef(root, subjects, sessions="AB", angles=KDEF_ANGLES) -> list[str]:
    """Empty files with KDEF names: enough for plan(), which never opens them."""
    ids = []
    for session in sessions:
        for sex, num in subjects:
            for code in KDEF_EXPRESSIONS:
                for angle in angles:
                    rel = f"KDEF/{session}{sex}{num:02d}/{kdef_name(session, sex, num, code, angle)}"
                    (root / rel).parent.mkdir(parents=True, exist_ok=True)
                    (root / rel).write_bytes(b"")
                    ids.append(rel)
    return ids


def test_labels_subjects_and_angles_come_from_file_names(tmp_path):
    ids = touch_kdef(tmp_path, [("F", 1), ("M", 7), ("F", 35)])
    items = {it["id"]: it for it in KdefSource(str(tmp_path)).plan()}
    assert set(items) == set(ids) and len(ids) == 3 * 2 * 7 * 5
    for rel, item in items.items():
        name = rel.rsplit("/", 1)[1]  # e.g. BM07SUHR.JPG
        assert item["error"] == ""
        assert item["label"] == EMOTIONS.index(CODE_LABEL[name[4:6]])
        assert item["subject"] == name[1:4]  # sessions A and B are the same person
    assert {it["subject"] for it in items.values()} == {"F01", "M07", "F35"}


def test_angle_filter_keeps_only_the_chosen_angles(tmp_path):
    touch_kdef(tmp_path, [("F", 1), ("M", 2)])
    source = KdefSource(str(tmp_path), angles=("S",))
    items = source.plan()
    assert len(items) == 2 * 2 * 7
    assert all(it["id"].endswith("S.JPG") and not it["id"].endswith(("HRS.JPG", "FRS.JPG"))
               for it in items)
    assert source.describe()["excluded_by_angle_filter"] == 2 * 2 * 7 * 4
    assert source.describe()["angles"] == ["S"]
    profiles = KdefSource(str(tmp_path), angles=("FL", "FR")).plan()
    assert len(profiles) == 2 * 2 * 7 * 2
    assert {it["id"][-6:-4] for it in profiles} == {"FL", "FR"}
    with pytest.raises(SourceError, match="unknown KDEF angle"):
        KdefSource(str(tmp_path), angles=("S", "UP")).plan()


def test_names_outside_the_pattern_are_rejected_not_dropped(tmp_path):
    touch_kdef(tmp_path, [("F", 1)], sessions="A", angles=("S",))
    (tmp_path / "KDEF" / "AF01" / "lowercase").mkdir()
    (tmp_path / "KDEF" / "AF01" / "lowercase" / "af01has.jpg").write_bytes(b"")  # accepted
    for bad in ("AF01XXS.JPG", "AF01HAUP.JPG", "CF01HAS.JPG", "notes.txt", "AF01HAS.png"):
        (tmp_path / "KDEF" / "AF01" / bad).write_bytes(b"")
    items = {it["id"].rsplit("/", 1)[1]: it for it in KdefSource(str(tmp_path)).plan()}
    assert items["af01has.jpg"]["error"] == "" and items["af01has.jpg"]["subject"] == "F01"
    assert items["af01has.jpg"]["label"] == EMOTIONS.index("happy")
    for bad in ("AF01XXS.JPG", "AF01HAUP.JPG", "CF01HAS.JPG", "notes.txt", "AF01HAS.png"):
        assert items[bad]["error"].startswith("file name does not follow the KDEF pattern")


def test_input_level_errors(tmp_path):
    with pytest.raises(SourceError, match="not found"):
        KdefSource(str(tmp_path / "KDEF")).plan()
    (tmp_path / "KDEF").mkdir()
    with pytest.raises(SourceError, match="no KDEF images"):
        KdefSource(str(tmp_path / "KDEF")).plan()
    touch_kdef(tmp_path, [("F", 1)], angles=("HL",))
    with pytest.raises(SourceError, match="no KDEF images"):
        KdefSource(str(tmp_path), angles=("S",)).plan()  # everything filtered away


def test_colour_photos_become_luminance_grey(tmp_path):
    files = write_kdef(tmp_path, subjects=[("M", 3)], codes=("HA", "SU"), face_side=96)
    red = write_image(tmp_path / "KDEF" / "AM03" / "AM03NES.JPG", kdef_photo(None, (200, 30, 30)))
    green = write_image(tmp_path / "KDEF" / "AM03" / "AM03ANS.JPG", kdef_photo(None, (30, 200, 30)))
    rows = by_id(run_source(KdefSource(str(tmp_path), size=48)))
    for f in files:
        decoded = np.asarray(Image.open(io.BytesIO(f.path.read_bytes())).convert("RGB"))
        grey = decode_grey(f.path.read_bytes())
        assert grey.shape == (762, 562)
        assert np.abs(grey - luminance(decoded)).max() <= 1  # 0.299 R + 0.587 G + 0.114 B
        row = rows[f.id]
        assert row["error"] == "" and row["label"] == f.label and row["subject"] == "M03"
        assert row["split"] == "train"
        np.testing.assert_array_equal(row["image"], resize(grey, 48))
    # Flat colours: luminance, not the channel mean (red: 81 vs 87, green: 129 vs 87).
    assert abs(int(rows[str(red.relative_to(tmp_path))]["image"].mean().round()) - 81) <= 1
    assert abs(int(rows[str(green.relative_to(tmp_path))]["image"].mean().round()) - 129) <= 1


def detectable_faces(side=192, at=(60, 420), tries=60) -> dict[str, np.ndarray]:
    """One synthetic face per KDEF code that OpenCV's cascade finds when pasted at ``at``,
    checked after the same JPEG round trip the written photo goes through."""
    detector, found = HaarDetector(), {}
    for code, emotion in CODE_LABEL.items():
        label = EMOTIONS.index(emotion)
        for index in range(tries):
            face = synthetic_faces(np.array([label]), side, seed=0, start=index)[0]
            photo = decode_grey(encode(kdef_photo(face, at=at), "JPEG"))
            if find_faces(photo, "largest", detector):
                found[code] = face
                break
        else:
            pytest.fail(f"no detectable synthetic {emotion} face in {tries} tries")
    return found


def corr(a, b) -> float:
    return float(np.corrcoef(a.ravel().astype(float), b.ravel().astype(float))[0, 1])


def test_face_crop_follows_the_face_and_rejects_photos_without_one(tmp_path):
    x, y, side = 60, 420, 192  # face in the lower-left, far from the centre square
    faces = detectable_faces(side, (x, y))
    for code, face in faces.items():
        write_image(tmp_path / "AF02" / f"AF02{code}S.JPG", kdef_photo(face, at=(x, y)), "JPEG")
    write_image(tmp_path / "AM04" / "AM04NES.JPG", kdef_photo(None, (120, 160, 90)), "JPEG")

    cropped = by_id(run_source(KdefSource(str(tmp_path), face_crop=True)))
    centred = by_id(run_source(KdefSource(str(tmp_path), face_crop=False)))
    assert cropped["AM04/AM04NES.JPG"]["error"].startswith("no face detected")
    assert cropped["AM04/AM04NES.JPG"]["subject"] == "M04"  # rejection keeps the identity
    assert centred["AM04/AM04NES.JPG"]["error"] == ""  # without --face-crop it is kept
    margin = int(0.2 * side)
    for code in faces:
        rid = f"AF02/AF02{code}S.JPG"
        assert cropped[rid]["error"] == "" and cropped[rid]["label"] == EMOTIONS.index(CODE_LABEL[code])
        grey = decode_grey((tmp_path / rid).read_bytes())
        around_face = resize(grey[y - margin : y + side + margin, x - margin : x + side + margin], 48)
        assert corr(cropped[rid]["image"], around_face) > 0.5
        assert corr(centred[rid]["image"], around_face) < 0.3


def test_unreadable_kdef_photo_is_rejected_with_subject(tmp_path):
    write_kdef(tmp_path, subjects=[("F", 9)], codes=("HA",), face_side=48)
    (tmp_path / "KDEF" / "AF09" / "AF09SAS.JPG").write_bytes(b"")
    (tmp_path / "KDEF" / "AF09" / "AF09ANS.JPG").write_bytes(b"not a jpeg at all")
    rows = by_id(run_source(KdefSource(str(tmp_path), max_pixels=1_000_000)))
    assert rows["KDEF/AF09/AF09SAS.JPG"]["error"] == "empty file (0 bytes)"
    assert rows["KDEF/AF09/AF09ANS.JPG"]["error"].startswith("not a decodable image")
    assert rows["KDEF/AF09/AF09SAS.JPG"]["subject"] == "F09"
    assert rows["KDEF/AF09/AF09HAS.JPG"]["error"] == ""
    rows = by_id(run_source(KdefSource(str(tmp_path), max_pixels=400_000)))  # 562x762 = 428,244
    assert rows["KDEF/AF09/AF09HAS.JPG"]["error"].startswith("image too large")


# ---------------------------------------------------------------- through Ray


@pytest.fixture(scope="module")
def kdef_tree(tmp_path_factory):
    """10 subjects x 2 sessions x 7 expressions, frontal and half-left (280 photos)."""
    root = tmp_path_factory.mktemp("kdef")
    subjects = [("F", n) for n in (1, 4, 9, 12, 30)] + [("M", n) for n in (2, 5, 11, 20, 35)]
    files = write_kdef(root, subjects=subjects, sessions=("A", "B"), angles=("S", "HL"),
                       face_side=48)
    return root, files


@pytest.mark.ray
@pytest.mark.timeout(300)
def test_default_split_is_identity_disjoint(kdef_tree, ray_session, tmp_path):
    root, files = kdef_tree
    manifest = build_catalog(KdefSource(str(root), angles=("S",)), str(tmp_path / "cat"))
    assert manifest["split_mode"] == "subject"
    assert manifest["source"]["excluded_by_angle_filter"] == 140
    owner = {}
    for split in ("train", "val", "test"):
        part = Catalog.open(tmp_path / "cat").load(split, columns=("image", "label", "subject", "id"))
        assert part["image"].shape[1:] == (48, 48)
        assert manifest["counts"][split]["total"] == len(part["label"])
        for subject in set(part["subject"]):
            assert owner.setdefault(subject, split) == split, f"{subject} in two splits"
        assert all(i.endswith("S.JPG") for i in part["id"])
    assert sorted(owner.values()).count("train") == 8  # 10 subjects: 8 / 1 / 1
    assert sorted(owner.values()).count("val") == 1
    assert len(owner) == 10
    per_subject = 2 * 7  # both sessions of a person travel together
    assert manifest["counts"]["train"]["total"] == 8 * per_subject


@pytest.mark.ray
@pytest.mark.timeout(300)
def test_random_split_option_is_stratified_80_10_10(kdef_tree, ray_session, tmp_path):
    root, files = kdef_tree
    manifest = build_catalog(KdefSource(str(root)), str(tmp_path / "cat"), split_mode="random")
    assert manifest["split_mode"] == "random"
    per_class = len(files) // 7  # 40
    for emotion in EMOTIONS:
        assert manifest["counts"]["train"][emotion] == 32
        assert manifest["counts"]["val"][emotion] == 4
        assert manifest["counts"]["test"][emotion] == per_class - 36
    subjects = {s: set(Catalog.open(tmp_path / "cat").load(s, columns=("subject",))["subject"])
                for s in ("train", "val", "test")}
    assert subjects["train"] & subjects["test"]  # random mixes identities across splits
    assert Catalog.open(tmp_path / "cat").manifest["rejected"]["count"] == 0


@pytest.mark.ray
@pytest.mark.timeout(300)
def test_cli_prepares_kdef_with_angle_and_size_options(kdef_tree, ray_session, tmp_path, capsys):
    from fer_ray.cli import main

    root, _ = kdef_tree
    out = tmp_path / "cat"
    assert main(["prepare", "--source", "kdef", "--input", str(root), "--output", str(out),
                 "--angles", "hl", "--size", "32"]) == 0
    manifest = Catalog.open(out).manifest
    assert manifest["image_size"] == 32
    assert manifest["source"]["angles"] == ["HL"] and manifest["source"]["face_crop"] is False
    total = sum(c["total"] for c in manifest["counts"].values())
    assert total == 140
    assert Catalog.open(out).load("train")["image"].shape[1:] == (32, 32)
    assert "catalog written to" in capsys.readouterr().out
