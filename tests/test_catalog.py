"""The catalog through a real local Ray: Parquet shards, manifest.json and rejected.csv.

One messy folder tree (bad files, duplicates, blank images) is built twice, so the same
catalog also shows that builds are reproducible.
"""

from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest

from datagen import bad_files, face_pixels, fer_line, write_fer_csv, write_folder_tree, write_image
from fer_ray.data.catalog import Catalog, CatalogError, audit
from fer_ray.data.ingest import build_catalog
from fer_ray.data.sources import Fer2013CsvSource, FolderSource, SourceError
from fer_ray.emotions import EMOTIONS
from fer_ray.errors import FerRayError

pytestmark = [pytest.mark.ray, pytest.mark.timeout(300)]

TRAIN = {"angry": 20, "happy": 30, "sad": 12, "surprise": 10}
TEST = {"angry": 3, "happy": 4, "sad": 3}


@pytest.fixture(scope="module")
def messy(tmp_path_factory):
    """A Kaggle-layout tree with every kind of bad file, duplicates and blank images."""
    root = tmp_path_factory.mktemp("messy")
    written = write_folder_tree(root, {"train": TRAIN, "test": TEST}, seed=1)
    # Duplicates: one within test (same label), one across splits with conflicting labels.
    happy_test = min(rel for rel in written if rel.startswith("test/happy/"))
    shutil.copy(root / happy_test, root / "test/happy/copy.png")
    shutil.copy(root / "train/angry/00000.png", root / "test/sad/conflict.png")
    written["test/happy/copy.png"] = written[happy_test]
    written["test/sad/conflict.png"] = written["train/angry/00000.png"]
    # Blank (single-colour) images, which are not each other's duplicates.
    for rel, value in (("train/sad/blank.png", 128), ("test/happy/black.png", 0)):
        written[rel] = np.full((48, 48), value, np.uint8)
        write_image(root / rel, written[rel])
    bad = {}
    for name, (data, reason) in bad_files(face_pixels(1)[0]).items():
        (root / "train/happy" / name).write_bytes(data)
        bad[f"train/happy/{name}"] = reason
    write_image(root / "train/contempt/c.png", face_pixels(1)[0])
    bad["train/contempt/c.png"] = "unknown emotion folder 'contempt'"
    (root / "train/happy/Thumbs.db").write_bytes(b"\x00" * 10)
    bad["train/happy/Thumbs.db"] = "not an image file extension"
    return root, written, bad


@pytest.fixture(scope="module")
def built(messy, ray_session, tmp_path_factory):
    root, _, _ = messy
    out = tmp_path_factory.mktemp("built")
    first = build_catalog(FolderSource(str(root)), str(out / "a"))
    second = build_catalog(FolderSource(str(root)), str(out / "b"))
    return out / "a", first, out / "b", second


def test_counts_per_split_and_class(messy, built):
    _, written, _ = messy
    cat, manifest, _, _ = built
    counts = manifest["counts"]
    assert set(counts) == {"train", "val", "test"}
    expected = {"train": {}, "test": {}}
    for rel in written:
        split, emotion, _ = rel.split("/")
        expected[split][emotion] = expected[split].get(emotion, 0) + 1
    for emotion in EMOTIONS:
        # train + val together are the train folder; val is a stratified ~10% of it
        n_train = expected["train"].get(emotion, 0)
        assert counts["train"][emotion] + counts["val"][emotion] == n_train
        assert counts["val"][emotion] == round(n_train * 0.1)
        assert counts["test"][emotion] == expected["test"].get(emotion, 0)
    for split, c in counts.items():
        assert c["total"] == sum(c[e] for e in EMOTIONS)
        assert len(Catalog.open(cat).load(split)["label"]) == c["total"]
    assert manifest["split_mode"] == "source" and manifest["image_size"] == 48
    assert manifest["labels"] == list(EMOTIONS) and manifest["channels"] == 1


def test_rows_round_trip_through_parquet(messy, built):
    _, written, _ = messy
    cat, manifest, _, _ = built
    seen = {}
    for split in manifest["shards"]:
        part = Catalog.open(cat).load(split, columns=("image", "label", "split", "id", "source"))
        assert part["image"].dtype == np.uint8 and part["image"].shape[1:] == (48, 48)
        assert set(part["split"]) == {split} and set(part["source"]) == {"folders"}
        for rid, image, label in zip(part["id"], part["image"], part["label"]):
            seen[rid] = (image, label)
    assert set(seen) == set(written)  # every good file once, no bad one
    for rid, pixels in written.items():
        np.testing.assert_array_equal(seen[rid][0], pixels)
        assert seen[rid][1] == EMOTIONS.index(rid.split("/")[1])
    table = pq.read_table(cat / "train")
    assert table.schema.names == ["image", "label", "split", "source", "subject", "id", "pixel_sha1"]
    assert str(table.schema.field("label").type) == "int64"
    assert table.column("subject").null_count == table.num_rows  # folders have no identities


def test_rejections_are_counted_listed_and_in_rejected_csv(messy, built):
    _, _, bad = messy
    cat, manifest, _, _ = built
    rejected = manifest["rejected"]
    assert rejected["count"] == len(bad) == rejected["listed"]
    listed = {r["id"]: r["reason"] for r in rejected["rows"]}
    with open(cat / "rejected.csv", newline="") as fh:
        in_csv = {r["id"]: r["reason"] for r in csv.DictReader(fh)}
    assert set(listed) == set(in_csv) == set(bad)
    for rid, reason in bad.items():
        assert listed[rid].startswith(reason) and in_csv[rid] == listed[rid]
    assert rejected["by_reason"]["empty file"] == 1
    assert rejected["by_reason"]["not a decodable image"] == 2  # garbage bytes, text as .jpg
    assert rejected["by_reason"]["image too large"] == 1
    assert rejected["by_reason"]["truncated or corrupt image"] == 1
    assert sum(rejected["by_reason"].values()) == len(bad)
    assert f"rejected: {len(bad)}" in audit(manifest)


def test_pixel_statistics_match_numpy_on_the_train_split(built):
    cat, manifest, _, _ = built
    images = Catalog.open(cat).load("train")["image"].astype(np.float64) / 255.0
    assert manifest["pixel_mean"] == pytest.approx(images.mean(), abs=2e-6)
    assert manifest["pixel_std"] == pytest.approx(images.std(), abs=2e-6)
    everything = np.concatenate([Catalog.open(cat).load(s)["image"] for s in ("train", "val", "test")])
    assert abs(manifest["pixel_mean"] - everything.mean() / 255.0) > 1e-6  # train only


def test_duplicates_and_blank_images_are_found(built):
    _, manifest, _, _ = built
    d = manifest["duplicates"]
    assert d["groups"] == 2 and d["extra_copies"] == 2
    assert d["cross_split_groups"] == 1 and d["conflicting_label_groups"] == 1
    flat = [entry for group in d["examples"] for entry in group]
    assert any(e.startswith("test/sad/conflict.png (test, sad)") for e in flat)
    assert any(e.startswith("train/angry/00000.png (") and e.endswith("angry)") for e in flat)
    assert any(e.startswith("test/happy/copy.png") for e in flat)
    blanks = manifest["blank_images"]
    assert blanks["count"] == 2 and sorted(blanks["ids"]) == ["test/happy/black.png", "train/sad/blank.png"]


def test_rebuild_is_reproducible(built):
    cat_a, first, cat_b, second = built
    assert first["catalog_sha256"] == second["catalog_sha256"]
    assert first["source"]["content_sha256"] == second["source"]["content_sha256"]
    for split in ("train", "val", "test"):
        a = Catalog.open(cat_a).load(split, columns=("id",))["id"]
        b = Catalog.open(cat_b).load(split, columns=("id",))["id"]
        assert sorted(a) == sorted(b)
    assert json.loads((cat_a / "manifest.json").read_text())["catalog_sha256"] == first["catalog_sha256"]
    assert Catalog.open(cat_b).manifest["counts"] == first["counts"]


def test_output_is_never_overwritten_by_accident(messy, built, tmp_path):
    root, _, _ = messy
    cat, _, _, _ = built
    before = (cat / "manifest.json").read_text()
    with pytest.raises(FerRayError, match="exists and is not empty"):
        build_catalog(FolderSource(str(root)), str(cat))
    assert (cat / "manifest.json").read_text() == before
    target = tmp_path / "cat"
    target.mkdir()
    (target / "stale.txt").write_text("old")
    manifest = build_catalog(FolderSource(str(root)), str(target), overwrite=True)
    assert not (target / "stale.txt").exists()
    assert manifest["catalog_sha256"] == built[1]["catalog_sha256"]


def test_overwrite_never_loses_the_old_catalog_or_the_input(messy, built, tmp_path):
    """--overwrite replaces a catalog only with a complete new one: a wrong input leaves it
    as it was, and an output that is, holds or sits inside the input is refused outright."""
    root, _, _ = messy
    cat, _, _, _ = built
    before = (cat / "manifest.json").read_text()
    with pytest.raises(SourceError, match="input folder not found"):
        build_catalog(FolderSource(str(tmp_path / "typo")), str(cat), overwrite=True)
    assert (cat / "manifest.json").read_text() == before
    files = sorted(p for p in root.rglob("*"))
    for out in (root, root.parent, root / "train" / "catalog"):
        with pytest.raises(SourceError, match="overlaps the input"):
            build_catalog(FolderSource(str(root)), str(out), overwrite=True)
    assert sorted(p for p in root.rglob("*")) == files
    (tmp_path / "afile").write_text("x")
    with pytest.raises(SourceError, match="is a file"):
        build_catalog(FolderSource(str(root)), str(tmp_path / "afile"), overwrite=True)


def test_catalog_open_errors(built, tmp_path):
    cat, _, _, _ = built
    with pytest.raises(CatalogError, match="has no 'holdout' split .*; scored on it"):
        Catalog.open(cat).require("train", "holdout", why="scored on it")
    with pytest.raises(CatalogError, match="not a catalog"):
        Catalog.open(tmp_path).load("train")
    (tmp_path / "manifest.json").write_text(json.dumps({"format": "something/else"}))
    with pytest.raises(CatalogError, match="format"):
        Catalog.open(tmp_path)


def csv_catalog(tmp_path, name, lines):
    path = write_fer_csv(tmp_path / f"{name}.csv", lines)
    manifest = build_catalog(Fer2013CsvSource(str(path)), str(tmp_path / name))
    return path, manifest


def test_csv_bad_rows_through_ray_land_in_manifest_and_rejected_csv(tmp_path):
    faces = face_pixels(30)
    lines = [fer_line(i % 7, f, "Training" if i < 24 else "PublicTest") for i, f in enumerate(faces)]
    lines[3] = fer_line(1, faces[3].ravel()[:100])  # wrong pixel count
    lines[7] = fer_line(9, faces[7])  # unknown emotion
    lines[11] = fer_line(2, faces[11], "Holdout")  # unknown Usage
    lines[15] = fer_line(2, "1 2 three " * 768)  # non-numeric pixels
    lines[19] = "4," + " ".join(["0"] * 2304)  # wrong field count
    _, manifest = csv_catalog(tmp_path, "c", lines)
    assert manifest["rejected"]["count"] == 5
    assert manifest["rejected"]["by_reason"] == {
        "wrong pixel count": 1, "unknown emotion": 1, "unknown Usage": 1,
        "non-numeric pixels": 1, "wrong field count": 1}
    listed = {r["id"] for r in manifest["rejected"]["rows"]}
    assert listed == {"line:5", "line:9", "line:13", "line:17", "line:21"}  # header is line 1
    with open(tmp_path / "c" / "rejected.csv", newline="") as fh:
        assert {r["id"] for r in csv.DictReader(fh)} == listed
    assert manifest["counts"]["train"]["total"] == 24 - 5
    assert manifest["counts"]["val"]["total"] == 6
    train = Catalog.open(tmp_path / "c").load("train", columns=("image", "id"))
    by_line = dict(zip(train["id"], train["image"]))
    np.testing.assert_array_equal(by_line["line:2"], faces[0])


def test_source_hash_changes_when_one_input_byte_changes(tmp_path):
    faces = face_pixels(14)
    lines = [fer_line(i % 7, f) for i, f in enumerate(faces)]
    path, original = csv_catalog(tmp_path, "orig", lines)
    data = bytearray(path.read_bytes())
    at = data.index(b" ", data.index(b"\n")) - 1  # last digit of the first pixel value
    data[at] = data[at] - 1 if data[at] > ord("0") else data[at] + 1  # stays within 0..255
    changed_path = tmp_path / "changed.csv"
    changed_path.write_bytes(bytes(data))
    assert sum(a != b for a, b in zip(path.read_bytes(), data)) == 1
    changed = build_catalog(Fer2013CsvSource(str(changed_path)), str(tmp_path / "changed"))
    assert changed["rejected"]["count"] == 0
    assert changed["source"]["content_sha256"] != original["source"]["content_sha256"]
    assert changed["catalog_sha256"] != original["catalog_sha256"]
    assert changed["counts"] == original["counts"]


def test_input_with_nothing_usable_is_an_input_error(tmp_path):
    """... and the build fails after Ray has read everything: the old output stays as it was,
    and the half-built catalog is gone."""
    (tmp_path / "in" / "happy").mkdir(parents=True)
    (tmp_path / "in" / "happy" / "a.jpg").write_text("text, not a photo")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("old catalog")
    with pytest.raises(SourceError, match="no usable images .*1 rejected.*not a decodable image"):
        build_catalog(FolderSource(str(tmp_path / "in")), str(tmp_path / "out"), overwrite=True)
    assert (tmp_path / "out" / "keep.txt").read_text() == "old catalog"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in", "out"]


@pytest.mark.ray
def test_a_csv_of_a_header_and_blank_lines_is_a_source_error(tmp_path, ray_session):
    """The planner sees bytes after the header, the reader finds no row: a KeyError traceback before."""
    path = tmp_path / "blank.csv"
    path.write_text("emotion,pixels,Usage\n\n\n")
    with pytest.raises(SourceError, match="no usable images in the input \\(2 rejected; first reason: blank line\\)"):
        build_catalog(Fer2013CsvSource(str(path)), str(tmp_path / "cat"))
    assert not (tmp_path / "cat").exists()
